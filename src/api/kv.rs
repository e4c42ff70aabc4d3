//! etcd's `KV` service: Range, Put, DeleteRange, Txn and Compact.
//!
//! Every request is validated first (`validate`), then either proposed through Raft (writes,
//! compaction) or read after a ReadIndex barrier (linearizable reads, read-only txns) or straight
//! from the local state machine (`serializable` reads). A member that is not the leader forwards
//! writes to the leader and answers with its own member ID in the header, as etcd does; for a
//! linearizable read it asks the leader only for the read index and reads its own state.

use tonic::{Request, Response, Status};

use super::convert;
use super::forward::{self, Forwarder};
use super::read_index::ReadIndexer;
use super::status::ApiError;
use super::validate;
use crate::apply::{self, CommandResponse, CommandResult};
use crate::env::clock::Instant;
use crate::node::{Node, NodeError, REQUEST_TIMEOUT};
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::pb::raft::{self as pb_raft, command, forward_request, forward_response};
use crate::raft::MemberNode;

/// The request limits of the KV service (`--max-request-bytes`, `--max-txn-ops`).
#[derive(Debug, Clone, Copy)]
pub struct KvLimits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

pub struct KvService {
    node: Node,
    forwarder: Forwarder,
    read_indexer: ReadIndexer,
    limits: KvLimits,
}

impl KvService {
    pub fn new(
        node: Node,
        forwarder: Forwarder,
        read_indexer: ReadIndexer,
        limits: KvLimits,
    ) -> Self {
        Self {
            node,
            forwarder,
            read_indexer,
            limits,
        }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(convert::member_header(&self.node, revision))
    }

    /// Proposes `command`; answers the applied result, or the leader to forward the request to.
    async fn propose(
        &self,
        op: command::Op,
        forwarded: bool,
    ) -> Result<Result<CommandResponse, MemberNode>, Status> {
        let command = pb_raft::Command {
            op: Some(op),
            ..Default::default()
        };
        match self.node.write(command).await {
            Ok(response) => match response.result {
                CommandResult::Rejected(error) => Err(ApiError::from(error).into()),
                _ => Ok(Ok(response)),
            },
            Err(NodeError::ForwardToLeader(leader)) if !forwarded => Ok(Err(leader)),
            Err(error) => Err(node_status(error)),
        }
    }

    /// Waits until this member may answer a linearizable read from its own state machine. On a
    /// follower that means asking the leader for a read index and applying up to it; answers the
    /// leader to forward the whole read to instead if the leader cannot give read indexes (a
    /// member of an older version).
    pub(crate) async fn barrier(&self, forwarded: bool) -> Result<Option<MemberNode>, Status> {
        let deadline = self.node.clock.now().plus(REQUEST_TIMEOUT);
        match self.node.read_barrier().await {
            Ok(()) => Ok(None),
            Err(NodeError::ForwardToLeader(leader)) if !forwarded => {
                self.follower_barrier(leader, deadline).await
            }
            Err(error) => Err(node_status(error)),
        }
    }

    /// A follower's half of a linearizable read: the leader's read index (one call for all the
    /// reads waiting, `read_index`), then this member's state machine applied that far.
    async fn follower_barrier(
        &self,
        leader: MemberNode,
        deadline: Instant,
    ) -> Result<Option<MemberNode>, Status> {
        if self.read_indexer.caught_up(&self.node, deadline).await? {
            Ok(None)
        } else {
            Ok(Some(leader))
        }
    }

    /// Answers as this member: the header of a forwarded response names the member the client
    /// talked to (etcd's followers answer with their own ID).
    fn rewrite_header(&self, header: &mut Option<ResponseHeader>) {
        if let Some(header) = header {
            header.member_id = self.node.id;
        }
    }
}

/// Sends `$request` to `$leader` as a `$variant` request and answers its response as this
/// member's, once this member has applied the revision the leader answered at ([`applied_here`]).
macro_rules! forward_to {
    ($self:ident, $leader:expr, $variant:ident, $request:expr) => {{
        let deadline = $self.node.clock.now().plus(REQUEST_TIMEOUT);
        let answered = $self
            .forwarder
            .kv(
                &$leader,
                &$self.node.clock,
                forward_request::Request::$variant($request),
            )
            .await
            .map_err(forward_status)?;
        let forward_response::Response::$variant(mut response) = answered else {
            return Err(ApiError::Internal(format!(
                "the leader answered a forwarded {} with {answered:?}",
                stringify!($variant)
            ))
            .into());
        };
        applied_here(&$self.node, &response.header, deadline).await?;
        $self.rewrite_header(&mut response.header);
        return Ok(Response::new(response));
    }};
}

/// Returns once this member has applied the revision of a response the leader answered for it
/// (a forwarded write's): as etcd's follower, which answers a write after its own apply, so that
/// a serializable read through it right after sees the write.
pub(super) async fn applied_here(
    node: &Node,
    header: &Option<ResponseHeader>,
    deadline: Instant,
) -> Result<(), Status> {
    match header {
        Some(header) => node
            .await_revision(header.revision, deadline)
            .await
            .map_err(node_status),
        None => Ok(()),
    }
}

/// A failed call to the leader: a deadline is etcd's request timeout, anything else passes on.
pub(super) fn forward_status(status: Status) -> Status {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ApiError::Timeout.into(),
        _ => status,
    }
}

/// The status for a node error; `forwarded` requests are never forwarded again.
pub fn node_status(error: NodeError) -> Status {
    match error {
        NodeError::ForwardToLeader(_) | NodeError::NoLeader => ApiError::NoLeader.into(),
        NodeError::Timeout => ApiError::Timeout.into(),
        NodeError::Stopped(_) => ApiError::Stopped.into(),
    }
}

fn unexpected(what: &str, result: CommandResult) -> Status {
    ApiError::Internal(format!("{what} answered {result:?}")).into()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let request = request.into_inner();
        validate::range(&request, self.limits.max_request_bytes)?;
        let stale_bug = crate::env::bugs::enabled(crate::env::bugs::Bug::StaleFollowerRead)
            && self.node.leader() != Some(self.node.id);
        if !request.serializable && !stale_bug {
            if let Some(leader) = self.barrier(forwarded).await? {
                forward_to!(self, leader, Range, request);
            }
        }
        let mut response =
            super::read_store(&self.node, move |store| store.range(&request)).await?;
        response.header = self.header(response.header.map_or(0, |h| h.revision));
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let mut request = request.into_inner();
        validate::put(&request, self.limits.max_request_bytes)?;
        own_value(&mut request);
        let response = match self
            .propose(command::Op::Put(request.clone()), forwarded)
            .await?
        {
            Ok(response) => response,
            Err(leader) => forward_to!(self, leader, Put, request),
        };
        match response.result {
            CommandResult::Put(mut put) => {
                put.header = self.header(response.revision);
                Ok(Response::new(put))
            }
            other => Err(unexpected("put", other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let request = request.into_inner();
        validate::delete_range(&request, self.limits.max_request_bytes)?;
        let response = match self
            .propose(command::Op::DeleteRange(request.clone()), forwarded)
            .await?
        {
            Ok(response) => response,
            Err(leader) => forward_to!(self, leader, DeleteRange, request),
        };
        match response.result {
            CommandResult::DeleteRange(mut delete) => {
                delete.header = self.header(response.revision);
                Ok(Response::new(delete))
            }
            other => Err(unexpected("delete", other)),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let mut request = request.into_inner();
        validate::txn(
            &request,
            self.limits.max_txn_ops,
            self.limits.max_request_bytes,
        )?;
        own_txn_values(&mut request);
        if apply::txn_is_read_only(&request) {
            if !apply::txn_is_serializable(&request) {
                if let Some(leader) = self.barrier(forwarded).await? {
                    forward_to!(self, leader, Txn, request);
                }
            }
            let mut response =
                super::read_store(&self.node, move |mut store| store.txn(&request)).await?;
            response.header = self.header(response.header.map_or(0, |h| h.revision));
            return Ok(Response::new(response));
        }
        let response = match self
            .propose(command::Op::Txn(request.clone()), forwarded)
            .await?
        {
            Ok(response) => response,
            Err(leader) => forward_to!(self, leader, Txn, request),
        };
        match response.result {
            CommandResult::Txn(mut txn) => {
                txn.header = self.header(response.revision);
                Ok(Response::new(txn))
            }
            other => Err(unexpected("txn", other)),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let request = request.into_inner();
        let response = match self
            .propose(command::Op::Compaction(request), forwarded)
            .await?
        {
            Ok(response) => response,
            Err(leader) => forward_to!(self, leader, Compact, request),
        };
        match response.result {
            CommandResult::Compaction => {}
            other => return Err(unexpected("compaction", other)),
        }
        if request.physical {
            // etcd answers a physical compaction once it is committed to disk.
            self.node
                .state_machine
                .sync()
                .await
                .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        }
        Ok(Response::new(CompactionResponse {
            header: self.header(response.revision),
        }))
    }
}

/// Gives a put's value its own allocation. Decoded values are slices of the buffer gRPC read the
/// request into (8 KiB and up), and a value kept in the Raft log's cache of recent entries would
/// keep that whole buffer alive: 4,096 cached puts of 256 B held 34 MB so.
fn own_value(put: &mut PutRequest) {
    put.value = bytes::Bytes::copy_from_slice(&put.value);
}

/// [`own_value`] for every put of a txn, nested txns included.
fn own_txn_values(txn: &mut TxnRequest) {
    use crate::pb::etcdserverpb::request_op::Request as Op;
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match &mut op.request {
            Some(Op::RequestPut(put)) => own_value(put),
            Some(Op::RequestTxn(nested)) => own_txn_values(nested),
            _ => {}
        }
    }
}
