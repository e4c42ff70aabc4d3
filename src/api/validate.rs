//! Rejects bad requests at the edge, before anything is proposed: nothing invalid ever reaches
//! the Raft log. The order of checks is etcd's (`checkPutRequest` and friends in etcd's
//! `v3rpc/key.go`), so the same bad request gets the same error.

use prost::Message;

use super::status::ApiError;
use std::collections::BTreeSet;

use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Requests larger than this many bytes are refused (`--max-request-bytes`, etcd's default).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// etcd lets gRPC accept messages this much larger than `--max-request-bytes`, so that a
/// slightly-too-large request gets etcd's own error rather than a transport one.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

fn size(request: &impl Message, max_request_bytes: usize) -> Result<(), ApiError> {
    if request.encoded_len() > max_request_bytes {
        return Err(ApiError::RequestTooLarge);
    }
    Ok(())
}

/// A txn may have at most this many compares, and as many ops per branch (`--max-txn-ops`).
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// etcd's `checkRangeRequest` (3.5: unknown sort options are refused).
fn range_fields(request: &RangeRequest) -> Result<(), ApiError> {
    if request.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if SortOrder::try_from(request.sort_order).is_err()
        || SortTarget::try_from(request.sort_target).is_err()
    {
        return Err(ApiError::InvalidSortOption);
    }
    Ok(())
}

pub fn range(request: &RangeRequest, max_request_bytes: usize) -> Result<(), ApiError> {
    range_fields(request)?;
    size(request, max_request_bytes)
}

/// etcd's `checkPutRequest`.
fn put_fields(request: &PutRequest) -> Result<(), ApiError> {
    if request.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    Ok(())
}

pub fn put(request: &PutRequest, max_request_bytes: usize) -> Result<(), ApiError> {
    put_fields(request)?;
    // Whether the lease exists depends on state: apply checks it (etcd's `checkPut`).
    size(request, max_request_bytes)
}

pub fn delete_range(
    request: &DeleteRangeRequest,
    max_request_bytes: usize,
) -> Result<(), ApiError> {
    if request.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    size(request, max_request_bytes)
}

/// etcd's `Txn` checks, in etcd's order: `checkTxnReq` (op count, compare keys, every op of
/// both branches, recursively), then `checkIntervals` on each branch (duplicate keys), then size.
/// A put's lease is checked when the txn runs, on the branch it takes.
pub fn txn(
    request: &TxnRequest,
    max_txn_ops: usize,
    max_request_bytes: usize,
) -> Result<(), ApiError> {
    txn_fields(request, max_txn_ops)?;
    intervals(&request.success)?;
    intervals(&request.failure)?;
    size(request, max_request_bytes)
}

fn txn_fields(request: &TxnRequest, max_txn_ops: usize) -> Result<(), ApiError> {
    let ops = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len());
    if ops > max_txn_ops {
        return Err(ApiError::TooManyOps);
    }
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(ApiError::EmptyKey);
    }
    for op in request.success.iter().chain(&request.failure) {
        match &op.request {
            Some(Op::RequestRange(range)) => range_fields(range)?,
            Some(Op::RequestPut(put)) => put_fields(put)?,
            Some(Op::RequestDeleteRange(delete)) => {
                if delete.key.is_empty() {
                    return Err(ApiError::EmptyKey);
                }
            }
            // etcd checks a nested txn against what the outer one left of the budget.
            Some(Op::RequestTxn(nested)) => txn_fields(nested, max_txn_ops - ops)?,
            // An op with no request: etcd answers this.
            None => return Err(ApiError::KeyNotFound),
        }
    }
    Ok(())
}

/// A delete's keys as etcd's interval tree sees them: one key, or `[key, range_end)` compared
/// as byte strings — so `range_end = "\0"` (every key from `key` on) and an inverted range
/// overlap no put, exactly as in etcd 3.4.
#[derive(Debug)]
enum Deleted {
    Key(Vec<u8>),
    Between(Vec<u8>, Vec<u8>),
}

impl Deleted {
    fn hits(&self, key: &[u8]) -> bool {
        match self {
            Deleted::Key(deleted) => deleted.as_slice() == key,
            Deleted::Between(start, end) => start.as_slice() <= key && key < end.as_slice(),
        }
    }
}

/// etcd's `checkIntervals`: within one branch (and the branches nested in it) no key may be put
/// twice or both put and deleted; a key put in both the success and failure branch of one nested
/// txn is fine, as only one of them runs. Answers the branch's puts and deletes.
fn intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Deleted>), ApiError> {
    let mut deletes: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Op::RequestDeleteRange(delete)) if delete.range_end.is_empty() => {
                Some(Deleted::Key(delete.key.clone()))
            }
            Some(Op::RequestDeleteRange(delete)) => Some(Deleted::Between(
                delete.key.clone(),
                delete.range_end.clone(),
            )),
            _ => None,
        })
        .collect();
    let deleted = |deletes: &[Deleted], key: &[u8]| deletes.iter().any(|d| d.hits(key));
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(Op::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = intervals(&nested.success)?;
        let (puts_else, deletes_else) = intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deleted(&deletes, key) {
                return Err(ApiError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            if (puts.contains(key) && !puts_then.contains(key)) || deleted(&deletes, key) {
                return Err(ApiError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let Some(Op::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || deleted(&deletes, &put.key) {
            return Err(ApiError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_keys_are_refused_everywhere() {
        let max = DEFAULT_MAX_REQUEST_BYTES;
        assert_eq!(
            range(&RangeRequest::default(), max),
            Err(ApiError::EmptyKey)
        );
        assert_eq!(put(&PutRequest::default(), max), Err(ApiError::EmptyKey));
        assert_eq!(
            delete_range(&DeleteRangeRequest::default(), max),
            Err(ApiError::EmptyKey)
        );
    }

    #[test]
    fn oversized_put_is_refused_and_exact_limit_passes() {
        let max = 1000;
        let mut request = PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        request.value = vec![b'v'; max].into();
        assert_eq!(put(&request, max), Err(ApiError::RequestTooLarge));
        while request.encoded_len() > max {
            request.value.truncate(request.value.len() - 1);
        }
        assert_eq!(put(&request, max), Ok(()));
    }

    #[test]
    fn ignore_flags_conflicting_with_values_follow_etcd_order() {
        let max = DEFAULT_MAX_REQUEST_BYTES;
        let request = PutRequest {
            key: b"k".to_vec(),
            value: bytes::Bytes::from_static(b"v"),
            ignore_value: true,
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(put(&request, max), Err(ApiError::ValueProvided));
        let request = PutRequest {
            value: bytes::Bytes::new(),
            ..request
        };
        assert_eq!(put(&request, max), Err(ApiError::LeaseProvided));
    }

    fn put_op(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn delete_op(key: &str, range_end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..Default::default()
            })),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn check(success: Vec<RequestOp>) -> Result<(), ApiError> {
        let request = TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        };
        txn(&request, DEFAULT_MAX_TXN_OPS, DEFAULT_MAX_REQUEST_BYTES)
    }

    #[test]
    fn duplicate_keys_follow_etcd_check_intervals() {
        let dup = Err(ApiError::DuplicateKey);
        assert_eq!(check(vec![put_op("a"), put_op("a")]), dup);
        assert_eq!(check(vec![put_op("b"), delete_op("a", "c")]), dup);
        assert_eq!(check(vec![put_op("a"), delete_op("a", "")]), dup);
        // Deletes may overlap deletes; the end of a range is not in it.
        assert_eq!(check(vec![delete_op("a", "c"), delete_op("b", "")]), Ok(()));
        assert_eq!(check(vec![put_op("c"), delete_op("a", "c")]), Ok(()));
        // etcd's interval tree sees "\0" as a byte string, not "to the end".
        assert_eq!(check(vec![put_op("b"), delete_op("a", "\0")]), Ok(()));
        // A nested txn's branches exclude each other, but not the level above.
        assert_eq!(
            check(vec![nested(vec![put_op("a")], vec![put_op("a")])]),
            Ok(())
        );
        assert_eq!(
            check(vec![put_op("a"), nested(vec![put_op("a")], vec![])]),
            dup
        );
        assert_eq!(
            check(vec![delete_op("a", "b"), nested(vec![], vec![put_op("a")])]),
            dup
        );
        assert_eq!(
            check(vec![put_op("a"), nested(vec![delete_op("a", "")], vec![])]),
            dup
        );
        assert_eq!(
            check(vec![
                nested(vec![put_op("a")], vec![]),
                nested(vec![], vec![put_op("a")])
            ]),
            dup
        );
    }

    #[test]
    fn txn_limits_and_empty_ops_are_refused() {
        let ops = (0..=DEFAULT_MAX_TXN_OPS)
            .map(|i| put_op(&format!("k{i}")))
            .collect();
        assert_eq!(check(ops), Err(ApiError::TooManyOps));
        assert_eq!(
            check(vec![RequestOp { request: None }]),
            Err(ApiError::KeyNotFound)
        );
        assert_eq!(check(vec![put_op("")]), Err(ApiError::EmptyKey));
        assert_eq!(
            check(vec![nested(vec![], vec![delete_op("", "")])]),
            Err(ApiError::EmptyKey)
        );
        // A nested txn gets what its parent left: 100 outer ops leave 28.
        let mut outer: Vec<RequestOp> = (0..99).map(|i| put_op(&format!("o{i}"))).collect();
        outer.push(nested(
            (0..28).map(|i| put_op(&format!("n{i}"))).collect(),
            vec![],
        ));
        assert_eq!(check(outer.clone()), Ok(()));
        outer.pop();
        outer.push(nested(
            (0..29).map(|i| put_op(&format!("n{i}"))).collect(),
            vec![],
        ));
        assert_eq!(check(outer), Err(ApiError::TooManyOps));
    }
}
