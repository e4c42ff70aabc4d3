//! openraft glue: the type configuration, the redb log store and state machine, the gRPC network
//! between members, and the Raft service that receives it.
//!
//! Architecture Invariant: only `raft/` names openraft. Everything above it (`node`, `api`) sees
//! [`DetcdRaft`] through the node's small API, and everything below it (`apply`, `mvcc`) sees
//! plain commands.

pub mod codec;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;

use std::collections::BTreeMap;
use std::fmt;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, ReadPolicy};

use crate::apply::CommandResponse;
use crate::pb::raft::{command, Command};

/// A member as Raft knows it: etcd's name and URLs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MemberNode {
    pub name: String,
    pub peer_url: String,
    /// Its advertised client URLs, once it has published them ([`publish`]); empty until then.
    pub client_urls: Vec<String>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Some(command::Op::Put(put)) => write!(f, "put({} bytes)", put.key.len()),
            Some(command::Op::DeleteRange(delete)) => {
                write!(f, "delete_range({} bytes)", delete.key.len())
            }
            Some(command::Op::Txn(txn)) => write!(
                f,
                "txn({} compares, {} success, {} failure)",
                txn.compare.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Some(command::Op::Compaction(compaction)) => {
                write!(f, "compaction({})", compaction.revision)
            }
            Some(command::Op::LeaseGrant(grant)) => {
                write!(f, "lease_grant({:x}, {}s)", grant.id, grant.ttl)
            }
            Some(command::Op::LeaseRevoke(revoke)) => write!(f, "lease_revoke({:x})", revoke.id),
            Some(command::Op::LeaseCheckpoint(checkpoint)) => {
                write!(
                    f,
                    "lease_checkpoint({} leases)",
                    checkpoint.checkpoints.len()
                )
            }
            None => f.write_str("empty"),
        }
    }
}

openraft::declare_raft_types!(
    /// detcd's Raft types: standard leader ids (at most one leader per term, as the Raft paper).
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = MemberNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        Vote = openraft::impls::Vote<Self::LeaderId>,
        Entry = openraft::Entry<<Self::LeaderId as openraft::vote::RaftLeaderId>::Committed, Self::Payload>,
        AsyncRuntime = crate::env::runtime::DetcdRuntime,
);

pub type DetcdRaft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::Membership<u64, MemberNode>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot =
    openraft::type_config::alias::SnapshotOf<TypeConfig, state_machine::SnapshotData>;

/// An I/O error for openraft from any error of ours.
pub(crate) fn io_error(error: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// The log index a linearizable read must wait for: confirms through a quorum round that this
/// member still leads (openraft's ReadIndex) and answers an index at or past every write
/// acknowledged before the call. Any member that has applied that index may then serve the read
/// from its own state machine: the leader itself, or a follower that asked it.
pub async fn read_index(
    raft: &DetcdRaft,
) -> Result<u64, RaftError<TypeConfig, LinearizableReadError<TypeConfig>>> {
    if crate::env::bugs::enabled(crate::env::bugs::Bug::LeaderReadWithoutQuorum) {
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.current_leader == Some(metrics.id) {
            return Ok(metrics.last_applied.map_or(0, |log_id| log_id.index));
        }
    }
    let linearizer = raft.get_read_linearizer(ReadPolicy::ReadIndex).await?;
    Ok(linearizer.read_log_id().index())
}

/// What asking a member to [`publish`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The membership, as committed, holds those client URLs.
    Done,
    /// This member does not lead: ask the leader.
    NotLeader,
    /// Not a member of the cluster: membership changes (`MemberAdd`) are not served.
    UnknownMember,
    /// Raft has stopped on this member.
    Stopped(String),
    /// Not now (another membership entry is not committed yet, the leader has not committed an
    /// entry of its term yet, or leadership moved while it was proposed): ask again.
    Retry(String),
}

/// Whether the committed membership gives member `id` exactly these client URLs.
pub fn published(raft: &DetcdRaft, id: u64, client_urls: &[String]) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    let membership = &metrics.membership_config;
    let committed = membership.log_id().as_ref() <= metrics.last_applied.as_ref();
    committed
        && membership
            .membership()
            .get_node(&id)
            .is_some_and(|node| node.client_urls == client_urls)
}

/// Records member `id`'s client URLs in the membership, as etcd's members publish their
/// attributes through Raft when they start: one membership entry that moves no voter and
/// changes nothing else of any member (openraft's `SetNodes` for that one member, taken from
/// the leader's current membership). Only the leader can propose it; answers once it is
/// committed.
pub async fn publish(raft: &DetcdRaft, id: u64, client_urls: Vec<String>) -> Published {
    if published(raft, id, &client_urls) {
        return Published::Done;
    }
    let node = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.current_leader != Some(metrics.id) {
            return Published::NotLeader;
        }
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    };
    let Some(node) = node else {
        return Published::UnknownMember;
    };
    let node = MemberNode {
        client_urls,
        ..node
    };
    let change = ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
    match raft.change_membership(change, false).await {
        Ok(_) => Published::Done,
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Published::NotLeader,
        Err(RaftError::APIError(other)) => Published::Retry(other.to_string()),
        Err(RaftError::Fatal(fatal)) => Published::Stopped(fatal.to_string()),
    }
}
