//! The `Lease` service. Grants and revokes go through Raft (any member proposes; a follower
//! forwards to the leader). Keep-alives and time-to-live are answered by the leader from its
//! lessor without a Raft round trip; followers forward them to the leader, as etcd's do. Listing
//! reads this member's own state.

use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::forward::{self, Forwarder};
use super::kv::{applied_here, node_status};
use super::read_index::ReadIndexer;
use super::status::ApiError;
use super::{convert, ResponseStream};
use crate::apply::CommandResult;
use crate::env::rng;
use crate::mvcc::leases;
use crate::node::lessor::{min_ttl, RenewStep, Renewal, MAX_TTL};
use crate::node::{Node, NodeError, REQUEST_TIMEOUT};
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};
use crate::pb::raft::{command, Command};
use crate::raft::{io_error, MemberNode};

#[derive(Clone)]
pub struct LeaseService {
    node: Node,
    forwarder: Forwarder,
    read_indexer: ReadIndexer,
}

/// Keep-alive responses a stream may have queued before it waits for the client.
const STREAM_BUFFER: usize = 16;

/// How long a keep-alive the leader cannot answer yet waits before it looks again.
const RETRY: crate::env::Duration = crate::env::Duration::from_millis(20);

impl LeaseService {
    pub fn new(node: Node, forwarder: Forwarder, read_indexer: ReadIndexer) -> Self {
        Self {
            node,
            forwarder,
            read_indexer,
        }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(convert::member_header(&self.node, revision))
    }

    /// The revision for a response header: at least that of every write this member answered.
    async fn current_revision(&self) -> i64 {
        let hub = &self.node.state_machine.hub;
        hub.settled().await;
        hub.applied().revision
    }

    /// The leader to ask, if this member is not it.
    fn leader_elsewhere(&self) -> Result<Option<MemberNode>, Status> {
        let status = self.node.raft_status();
        if status.leader == self.node.id {
            return Ok(None);
        }
        match self.node.member(status.leader) {
            Some(leader) => Ok(Some(leader)),
            None => Err(ApiError::NoLeader.into()),
        }
    }

    /// Proposes `op`; answers its result, or the leader to forward the request to.
    async fn propose(
        &self,
        op: command::Op,
        forwarded: bool,
    ) -> Result<Result<CommandResult, MemberNode>, Status> {
        match self
            .node
            .write(Command {
                op: Some(op),
                ..Default::default()
            })
            .await
        {
            Ok(response) => match response.result {
                CommandResult::Rejected(error) => Err(ApiError::from(error).into()),
                result => Ok(Ok(result)),
            },
            Err(NodeError::ForwardToLeader(leader)) if !forwarded => Ok(Err(leader)),
            Err(error) => Err(node_status(error)),
        }
    }

    /// One keep-alive, answered here if this member leads, else by the leader.
    ///
    /// The leader answers only while no other member can have been elected (it heard from a
    /// quorum within an election timeout), and only once its lessor has taken over this term's
    /// leases; until then, or while a checkpoint reset is in flight, the keep-alive waits (at
    /// most a request timeout, then `etcdserver: no leader`).
    ///
    /// A follower forwards on `forwarded`, the client stream's own stream to the leader, opened
    /// on its first forwarded keep-alive and kept while the same member leads.
    async fn keep_alive(
        &self,
        id: i64,
        forwarded: &mut Option<ForwardedKeepAlives>,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let deadline = self.node.clock.monotonic().plus(REQUEST_TIMEOUT);
        loop {
            let renewal = match self.leader_elsewhere() {
                Ok(Some(leader)) => return self.forward_keep_alive(leader, id, forwarded).await,
                Ok(None) => self.renew_as_leader(id).await?,
                // No leader known (an election): wait for one.
                Err(_) => None,
            };
            if let Some(renewal) = renewal {
                let ttl = match renewal {
                    Renewal::Renewed(ttl) => ttl,
                    // Unknown, expired or being revoked: TTL 0, and the stream goes on (as etcd).
                    Renewal::Expired => 0,
                    Renewal::NotLeading => unreachable!("renew_as_leader retries it"),
                };
                return Ok(LeaseKeepAliveResponse {
                    header: self.header(self.current_revision().await),
                    id,
                    ttl,
                });
            }
            if self.node.clock.monotonic() >= deadline {
                return Err(ApiError::NoLeader.into());
            }
            self.node.clock.sleep(RETRY).await;
        }
    }

    /// Renews `id` on this member as the leader; `None` when it cannot answer yet.
    async fn renew_as_leader(&self, id: i64) -> Result<Option<Renewal>, Status> {
        let Some(term) = self.node.leads_with_quorum() else {
            return Ok(None);
        };
        let record = self
            .node
            .state_machine
            .read(move |txn| leases::get(txn, id).map_err(io_error))
            .await
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        let renewal = match self
            .node
            .lessor
            .renew(term, id, record, self.node.clock.monotonic())
        {
            RenewStep::Done(renewal) => renewal,
            // The reset was applied in this term: leadership is proven by that commit.
            RenewStep::Wait(reset) => reset.await.unwrap_or(Renewal::NotLeading),
        };
        Ok((renewal != Renewal::NotLeading).then_some(renewal))
    }

    /// Forwards one keep-alive to `leader` on the client stream's forwarded stream, opening it
    /// first if there is none to this leader. Any failure, or no answer within the request
    /// timeout, closes it (the next keep-alive opens another) and ends the client's stream
    /// with the error, as a keep-alive the leader cannot answer does.
    async fn forward_keep_alive(
        &self,
        leader: MemberNode,
        id: i64,
        forwarded: &mut Option<ForwardedKeepAlives>,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        if forwarded.as_ref().is_some_and(|f| f.leader != leader) {
            *forwarded = None;
        }
        let stream = match forwarded {
            Some(stream) => stream,
            None => forwarded.insert(self.open_forwarded(leader).await?),
        };
        let answer = self
            .node
            .clock
            .timeout(REQUEST_TIMEOUT, stream.renew(id))
            .await;
        match answer {
            Ok(Ok(mut response)) => {
                as_this_member(&mut response.header, self.node.id);
                Ok(response)
            }
            Ok(Err(status)) => {
                *forwarded = None;
                Err(status)
            }
            Err(_elapsed) => {
                *forwarded = None;
                Err(ApiError::Timeout.into())
            }
        }
    }

    async fn open_forwarded(&self, leader: MemberNode) -> Result<ForwardedKeepAlives, Status> {
        let mut client = self.forwarder.lease(&leader)?;
        let (requests, outgoing) = mpsc::channel(1);
        let outgoing = super::received(outgoing);
        let responses = client
            .lease_keep_alive(forward::mark(outgoing))
            .await?
            .into_inner();
        Ok(ForwardedKeepAlives {
            leader,
            requests,
            responses,
        })
    }
}

/// A follower's stream of one client's keep-alives to the leader: one message each way per
/// keep-alive instead of a stream opened for each (the leader answers a stream's keep-alives in
/// order, one at a time).
struct ForwardedKeepAlives {
    leader: MemberNode,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl ForwardedKeepAlives {
    async fn renew(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        self.requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Status::from(ApiError::NoLeader))?;
        self.responses
            .message()
            .await?
            .ok_or_else(|| Status::from(ApiError::NoLeader))
    }
}

/// Answers a forwarded call as this member's own.
fn as_this_member(header: &mut Option<ResponseHeader>, member_id: u64) {
    if let Some(header) = header {
        header.member_id = member_id;
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = ResponseStream<LeaseKeepAliveResponse>;

    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let mut request = request.into_inner();
        if request.ttl > MAX_TTL {
            return Err(ApiError::LeaseTtlTooLarge.into());
        }
        // etcd picks a positive 63-bit ID for the client that leaves it to the server, and
        // raises a TTL below the cluster's minimum to it.
        while request.id == 0 {
            request.id = (rng::random_u64() >> 1) as i64;
        }
        request.ttl = request.ttl.max(min_ttl(
            self.node.heartbeat_interval,
            self.node.election_timeout,
        ));
        match self
            .propose(command::Op::LeaseGrant(request), forwarded)
            .await?
        {
            Ok(CommandResult::LeaseGrant(mut response)) => {
                response.header = self.header(self.current_revision().await);
                Ok(Response::new(response))
            }
            Ok(other) => Err(ApiError::Internal(format!("grant answered {other:?}")).into()),
            Err(leader) => {
                let deadline = self.node.clock.now().plus(REQUEST_TIMEOUT);
                let mut response = self
                    .forwarder
                    .lease(&leader)?
                    .lease_grant(forward::mark(request))
                    .await?
                    .into_inner();
                // A grant changes no revision to wait for: a read index asked after its answer
                // covers it, so a lease list through this member right after shows the lease.
                self.read_indexer.caught_up(&self.node, deadline).await?;
                as_this_member(&mut response.header, self.node.id);
                Ok(Response::new(response))
            }
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let request = request.into_inner();
        match self
            .propose(command::Op::LeaseRevoke(request), forwarded)
            .await?
        {
            Ok(CommandResult::LeaseRevoke(mut response)) => {
                let revision = response.header.map_or(0, |h| h.revision);
                response.header = self.header(revision);
                Ok(Response::new(response))
            }
            Ok(other) => Err(ApiError::Internal(format!("revoke answered {other:?}")).into()),
            Err(leader) => {
                let deadline = self.node.clock.now().plus(REQUEST_TIMEOUT);
                let mut response = self
                    .forwarder
                    .lease(&leader)?
                    .lease_revoke(forward::mark(request))
                    .await?
                    .into_inner();
                // As a forwarded KV write: a serializable read through this member right after
                // misses the lease's keys.
                applied_here(&self.node, &response.header, deadline).await?;
                as_this_member(&mut response.header, self.node.id);
                Ok(Response::new(response))
            }
        }
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let service = self.clone();
        tokio::spawn(async move {
            let mut forwarded = None;
            while let Ok(Some(request)) = requests.message().await {
                let answer = service.keep_alive(request.id, &mut forwarded).await;
                let failed = answer.is_err();
                if sender.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(super::received(receiver))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        if let Some(leader) = self.leader_elsewhere()? {
            let mut response = self
                .forwarder
                .lease(&leader)?
                .lease_time_to_live(forward::mark(request))
                .await?
                .into_inner();
            as_this_member(&mut response.header, self.node.id);
            return Ok(Response::new(response));
        }
        let term = self.node.raft_status().term;
        let (id, with_keys) = (request.id, request.keys);
        let (record, keys) = self
            .node
            .state_machine
            .read(move |txn| {
                let record = leases::get(txn, id).map_err(io_error)?;
                let keys = if with_keys && record.is_some() {
                    leases::keys(txn, id).map_err(io_error)?
                } else {
                    Vec::new()
                };
                Ok((record, keys))
            })
            .await
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        let header = self.header(self.current_revision().await);
        let response = match record {
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(record) => {
                // Whole seconds left, truncated (as etcd); a lease not yet synced has all.
                let ttl = match self
                    .node
                    .lessor
                    .remaining(term, id, self.node.clock.monotonic())
                {
                    Some(left) => left.as_secs() as i64,
                    None => record.ttl,
                };
                LeaseTimeToLiveResponse {
                    header,
                    id,
                    ttl,
                    granted_ttl: record.ttl,
                    keys,
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let all = self
            .node
            .state_machine
            .read(|txn| leases::all(txn).map_err(io_error))
            .await
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        // The leader lists by remaining time, soonest first, as etcd's does (a lease granted
        // since the lessor's last sync has its whole TTL); a follower, with or without a
        // leader, lists its own state by ID.
        let status = self.node.raft_status();
        let term = status.term;
        let now = self.node.clock.monotonic();
        let mut order: Vec<(crate::env::Duration, i64)> = all
            .iter()
            .map(|&(id, record)| {
                let left = self
                    .node
                    .lessor
                    .remaining(term, id, now)
                    .unwrap_or_else(|| crate::env::Duration::from_secs(record.ttl.max(0) as u64));
                (left, id)
            })
            .collect();
        if status.leader == self.node.id {
            order.sort();
        }
        let ids: Vec<i64> = order.into_iter().map(|(_, id)| id).collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.header(self.current_revision().await),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}
