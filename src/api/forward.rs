//! Forwarding a client request from a follower to the leader, as etcd followers do.
//!
//! The leader's peer URL serves the KV service too, so no client URL has to be known for it. A
//! forwarded request carries the `detcd-forwarded` metadata; a member that receives one and is
//! not the leader answers instead of forwarding again, so a request never loops. A forwarded call
//! gives up after the request timeout (a stale leader behind a partition never answers), which
//! the client sees as `etcdserver: request timed out`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::env::Duration;
use crate::node::REQUEST_TIMEOUT;
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::raft::raft_client::RaftClient;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;
use crate::raft::MemberNode;

pub const FORWARDED_METADATA: &str = "detcd-forwarded";

/// Whether `request` was already forwarded once.
pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_METADATA)
}

/// Marks a request as forwarded.
pub fn mark<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_METADATA,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

/// KV, Lease and Raft clients to other members' peer URLs, connected lazily and kept.
#[derive(Clone, Default)]
pub struct Forwarder {
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
    max_message_bytes: usize,
}

impl Forwarder {
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            channels: Arc::default(),
            max_message_bytes,
        }
    }

    pub fn kv(&self, leader: &MemberNode) -> Result<KvClient<Channel>, Status> {
        // Requests are bounded by --max-request-bytes; responses (a large range) are not.
        Ok(KvClient::new(self.channel(leader)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn lease(&self, leader: &MemberNode) -> Result<LeaseClient<Channel>, Status> {
        Ok(LeaseClient::new(self.channel(leader)?))
    }

    /// The leader's Raft service, for a follower's read index.
    pub fn raft(&self, leader: &MemberNode) -> Result<RaftClient<Channel>, Status> {
        Ok(RaftClient::new(self.channel(leader)?))
    }

    fn channel(&self, leader: &MemberNode) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("forwarder lock");
        let channel = match channels.get(&leader.peer_url) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(leader.peer_url.clone())
                    .map_err(|e| Status::unavailable(format!("bad leader URL: {e}")))?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(REQUEST_TIMEOUT)
                    .connect_lazy();
                channels.insert(leader.peer_url.clone(), channel.clone());
                channel
            }
        };
        Ok(channel)
    }
}
