//! Conversions from detcd's internal types to etcd's wire messages.

use crate::pb::etcdserverpb::ResponseHeader;

/// The header of an answer from `node` at `revision`, in its current term.
pub fn member_header(node: &crate::node::Node, revision: i64) -> ResponseHeader {
    header(node.cluster_id, node.id, revision, node.term())
}

pub fn header(cluster_id: u64, member_id: u64, revision: i64, raft_term: u64) -> ResponseHeader {
    ResponseHeader {
        cluster_id,
        member_id,
        revision,
        raft_term,
    }
}
