//! Conversions from detcd's internal types to etcd's wire messages.

use crate::pb::etcdserverpb::ResponseHeader;

pub fn header(cluster_id: u64, member_id: u64, revision: i64, raft_term: u64) -> ResponseHeader {
    ResponseHeader {
        cluster_id,
        member_id,
        revision,
        raft_term,
    }
}
