//! THE error table: every error a client can get from detcd, with etcd's gRPC code and exact
//! message. Each row names etcd's `rpctypes` error it mirrors (etcd
//! `api/v3rpc/rpctypes/error.go`), so clients that match on messages behave the same.

use tonic::{Code, Status};

/// An error that reaches a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// `ErrGRPCEmptyKey`
    EmptyKey,
    /// `ErrGRPCRequestTooLarge`
    RequestTooLarge,
    /// `ErrGRPCKeyNotFound`
    KeyNotFound,
    /// `ErrGRPCLeaseNotFound`
    LeaseNotFound,
    /// `ErrGRPCLeaseExist`
    LeaseExists,
    /// `ErrGRPCLeaseTTLTooLarge`
    LeaseTtlTooLarge,
    /// `ErrGRPCValueProvided`
    ValueProvided,
    /// `ErrGRPCLeaseProvided`
    LeaseProvided,
    /// `ErrGRPCNoLeader`
    NoLeader,
    /// `ErrGRPCFutureRev`
    FutureRevision,
    /// `ErrGRPCCompacted`
    Compacted,
    /// `ErrGRPCTooManyOps`
    TooManyOps,
    /// `ErrGRPCDuplicateKey`
    DuplicateKey,
    /// `ErrGRPCInvalidSortOption` (etcd 3.5)
    InvalidSortOption,
    /// `ErrGRPCTimeout`
    Timeout,
    /// `ErrGRPCStopped`
    Stopped,
    /// `ErrGRPCLeaderChanged`
    LeaderChanged,
    /// A storage failure: the member stops serving (never an etcd code a client could act on).
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::EmptyKey
            | ApiError::RequestTooLarge
            | ApiError::KeyNotFound
            | ApiError::ValueProvided
            | ApiError::LeaseProvided
            | ApiError::InvalidSortOption
            | ApiError::TooManyOps
            | ApiError::DuplicateKey => Code::InvalidArgument,
            ApiError::LeaseNotFound => Code::NotFound,
            ApiError::LeaseExists => Code::FailedPrecondition,
            ApiError::LeaseTtlTooLarge => Code::OutOfRange,
            ApiError::FutureRevision | ApiError::Compacted => Code::OutOfRange,
            ApiError::NoLeader
            | ApiError::Timeout
            | ApiError::Stopped
            | ApiError::LeaderChanged => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::EmptyKey => "etcdserver: key is not provided".into(),
            ApiError::RequestTooLarge => "etcdserver: request is too large".into(),
            ApiError::KeyNotFound => "etcdserver: key not found".into(),
            ApiError::LeaseNotFound => "etcdserver: requested lease not found".into(),
            ApiError::LeaseExists => "etcdserver: lease already exists".into(),
            ApiError::LeaseTtlTooLarge => "etcdserver: too large lease TTL".into(),
            ApiError::ValueProvided => "etcdserver: value is provided".into(),
            ApiError::LeaseProvided => "etcdserver: lease is provided".into(),
            ApiError::NoLeader => "etcdserver: no leader".into(),
            ApiError::InvalidSortOption => "etcdserver: invalid sort option".into(),
            ApiError::FutureRevision => {
                "etcdserver: mvcc: required revision is a future revision".into()
            }
            ApiError::Compacted => "etcdserver: mvcc: required revision has been compacted".into(),
            ApiError::TooManyOps => "etcdserver: too many operations in txn request".into(),
            ApiError::DuplicateKey => "etcdserver: duplicate key given in txn request".into(),
            ApiError::Timeout => "etcdserver: request timed out".into(),
            ApiError::Stopped => "etcdserver: server stopped".into(),
            ApiError::LeaderChanged => "etcdserver: leader changed".into(),
            ApiError::Internal(detail) => format!("detcd: internal error: {detail}"),
        }
    }
}

impl From<crate::apply::ApplyError> for ApiError {
    fn from(error: crate::apply::ApplyError) -> Self {
        use crate::apply::ApplyError;
        match error {
            ApplyError::KeyNotFound => ApiError::KeyNotFound,
            ApplyError::LeaseNotFound => ApiError::LeaseNotFound,
            ApplyError::LeaseExists => ApiError::LeaseExists,
            ApplyError::Compacted => ApiError::Compacted,
            ApplyError::FutureRevision => ApiError::FutureRevision,
            // Only the lessor's own proposals can be stale; no client sees it.
            ApplyError::StaleLessorTerm => ApiError::NoLeader,
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        Status::new(error.code(), error.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes_match_etcd() {
        let table = [
            (
                ApiError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ApiError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ApiError::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                ApiError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                ApiError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                ApiError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
        ];
        for (error, code, message) in table {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
