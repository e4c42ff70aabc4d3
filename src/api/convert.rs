//! Conversions from detcd's internal types to etcd's wire messages.

use crate::mvcc::KeyValue;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::pb::mvccpb;

pub fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn header(cluster_id: u64, member_id: u64, revision: i64, raft_term: u64) -> ResponseHeader {
    ResponseHeader {
        cluster_id,
        member_id,
        revision,
        raft_term,
    }
}
