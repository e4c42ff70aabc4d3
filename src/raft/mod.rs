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

use std::fmt;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;

use crate::apply::CommandResponse;
use crate::pb::raft::{command, Command};

/// A member as Raft knows it: etcd's name and URLs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MemberNode {
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
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
