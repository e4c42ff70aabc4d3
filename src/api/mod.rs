//! The etcd v3 gRPC services. Only `api` and `raft/network` know tonic.
//!
//! RPCs not built yet answer gRPC `Unimplemented` with a message naming the RPC: nothing
//! pretends to work. They are written out explicitly (the simulated codegen of madsim-tonic has
//! no default stubs), so real and simulated builds serve exactly the same code.

pub mod cluster;
pub mod convert;
pub mod forward;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod read_index;
pub mod status;
pub mod validate;
pub mod watch;

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::apply::{ApplyOutcome, ReadOnly, ReadView};
use crate::pb::etcdserverpb::*;
use status::ApiError;

/// The answer of an RPC that detcd does not implement yet.
pub fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("detcd: {rpc} is not implemented yet"))
}

/// Runs `f` on a read-only view of this member's state machine (off the async path; again on a
/// new view if a compaction or snapshot install moved under it), mapping its refusals to
/// etcd's errors.
pub async fn read_store<T: Send + 'static>(
    node: &crate::node::Node,
    f: impl Fn(ReadOnly<ReadView>) -> Result<T, ApplyOutcome> + Send + 'static,
) -> Result<T, Status> {
    let outcome = node
        .state_machine
        .read_mvcc(move |reader| {
            let store = ReadOnly::open(reader).map_err(crate::raft::io_error)?;
            Ok(f(store))
        })
        .await
        .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
    outcome.map_err(|e| match e {
        ApplyOutcome::Refused(refusal) => ApiError::from(refusal).into(),
        ApplyOutcome::Storage(error) => ApiError::Internal(error.to_string()).into(),
    })
}

/// A server stream of `T` (what streaming RPCs return).
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What `receiver` receives, as a stream that ends once every sender is gone: the messages a
/// task hands to a gRPC stream.
pub fn received<T: Send + 'static>(
    receiver: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// [`received`] for an unbounded channel.
pub fn received_unbounded<T: Send + 'static>(
    receiver: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// The services of etcd's API that detcd does not implement yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct NotYetImplemented;

/// Implements a service whose every RPC is unary and not built yet.
macro_rules! not_yet_implemented {
    ($service:path { $($rpc:ident($request:ty) -> $response:ty;)* }) => {
        #[tonic::async_trait]
        impl $service for NotYetImplemented {
            $(
                async fn $rpc(&self, _: Request<$request>) -> Result<Response<$response>, Status> {
                    Err(not_yet(stringify!($rpc)))
                }
            )*
        }
    };
}

not_yet_implemented!(auth_server::Auth {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    auth_status(AuthStatusRequest) -> AuthStatusResponse;
    authenticate(AuthenticateRequest) -> AuthenticateResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
});
