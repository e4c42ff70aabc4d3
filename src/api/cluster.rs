//! etcd's `Cluster` service: `MemberList` (for `etcdctl member list` and `endpoint status |
//! health --cluster`), and the member's publish of its client URLs that the list shows.
//!
//! Membership changes (`MemberAdd`, `MemberRemove`, `MemberUpdate`, `MemberPromote`) answer
//! `Unimplemented`: a cluster's members are the ones `--initial-cluster` names.
//!
//! As in etcd, the initial membership knows each member's name and peer URL only; a member
//! records its `--advertise-client-urls` through Raft once it runs ([`publish`]), and until then
//! the list shows it without client URLs.

use tonic::{Request, Response, Status};

use super::forward::Forwarder;
use super::kv::KvService;
use super::not_yet;
use crate::env::watch;
use crate::env::Duration;
use crate::node::{Node, REQUEST_TIMEOUT};
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::pb::raft::PublishRequest;
use crate::raft::Published;

/// How long the publisher waits before it asks again (no leader yet, or another membership
/// entry still uncommitted).
pub const PUBLISH_RETRY: Duration = Duration::from_millis(100);

pub struct ClusterService {
    node: Node,
    /// For a linearizable list: the same read barrier as a KV read.
    kv: KvService,
}

impl ClusterService {
    pub fn new(node: Node, kv: KvService) -> Self {
        Self { node, kv }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_yet("member_add"))
    }
    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_yet("member_remove"))
    }
    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_yet("member_update"))
    }
    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_yet("member_promote"))
    }

    /// The members by ID, from this member's membership (etcd 3.4 answers from its local
    /// cluster store too); `linearizable` (etcd 3.5) waits for the same read barrier as a
    /// linearizable range first. The header has no revision, as etcd's.
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            // A leader of an older build cannot give a read index (`Some(leader)`): the list is
            // answered from this member's membership then, as a serializable one.
            self.kv.barrier(false).await?;
        }
        let members = self
            .node
            .members()
            .into_iter()
            .map(|(id, node, learner)| Member {
                id,
                name: node.name,
                peer_ur_ls: vec![node.peer_url],
                client_ur_ls: node.client_urls,
                is_learner: learner,
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            header: Some(super::convert::member_header(&self.node, 0)),
            members,
        }))
    }
}

/// Records this member's client URLs in the membership, asking the leader it knows of (itself
/// included) every [`PUBLISH_RETRY`] until the committed membership holds them or `stop`.
/// Nothing is written when they are there already (a restart with the same URLs).
pub async fn publish(
    node: Node,
    forwarder: Forwarder,
    client_urls: Vec<String>,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = stop.wait_for(|stopped| *stopped);
    let publish = async {
        while !publish_once(&node, &forwarder, &client_urls).await {
            node.clock.sleep(PUBLISH_RETRY).await;
        }
    };
    tokio::select! {
        biased;
        _ = stopped => {}
        () = publish => {}
    }
}

/// One attempt; true once the URLs are committed.
async fn publish_once(node: &Node, forwarder: &Forwarder, client_urls: &[String]) -> bool {
    if node.published(client_urls) {
        return true;
    }
    let Some(leader) = node.leader() else {
        return false;
    };
    if leader == node.id {
        let publish = node.publish_as_leader(client_urls.to_vec());
        return matches!(
            node.clock.timeout(REQUEST_TIMEOUT, publish).await,
            Ok(Published::Done)
        );
    }
    let Some(leader) = node.member(leader) else {
        return false;
    };
    let Ok(mut client) = forwarder.raft(&leader) else {
        return false;
    };
    let call = client.publish(PublishRequest {
        member_id: node.id,
        client_urls: client_urls.to_vec(),
    });
    match node.clock.timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(response)) => response.get_ref().leader,
        _ => false,
    }
}
