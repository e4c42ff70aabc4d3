//! Rejects bad requests at the edge, before anything is proposed: nothing invalid ever reaches
//! the Raft log. The order of checks is etcd's (`checkPutRequest` and friends in etcd's
//! `v3rpc/key.go`), so the same bad request gets the same error.

use prost::Message;

use super::status::ApiError;
use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

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

pub fn range(request: &RangeRequest, max_request_bytes: usize) -> Result<(), ApiError> {
    if request.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    size(request, max_request_bytes)
}

pub fn put(request: &PutRequest, max_request_bytes: usize) -> Result<(), ApiError> {
    if request.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    size(request, max_request_bytes)?;
    // No lease can exist until the lease service lands, so any lease ID is unknown; etcd gives
    // this answer for a lease it does not have.
    if request.lease != 0 {
        return Err(ApiError::LeaseNotFound);
    }
    Ok(())
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
}
