//! etcd's `KV` service: Range, Put and DeleteRange. Txn and Compact answer `Unimplemented` until
//! their issue lands.
//!
//! Every request is validated first (`validate`), then either proposed through Raft (writes) or
//! read after a ReadIndex barrier (linearizable reads) or straight from the local state machine
//! (`serializable` reads). A member that is not the leader forwards the request to the leader
//! and answers with its own member ID in the header, as etcd does.

use tonic::{Request, Response, Status};

use super::convert;
use super::forward::{self, Forwarder};
use super::not_yet;
use super::status::ApiError;
use super::validate;
use crate::apply::{ApplyError, CommandResponse, CommandResult};
use crate::mvcc::{self, KeyRange};
use crate::node::{Node, NodeError};
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::pb::raft::{self as pb_raft, command};
use crate::raft::{io_error, MemberNode};
use crate::storage::{KV, SM_META};

pub struct KvService {
    node: Node,
    forwarder: Forwarder,
    max_request_bytes: usize,
}

impl KvService {
    pub fn new(node: Node, forwarder: Forwarder, max_request_bytes: usize) -> Self {
        Self {
            node,
            forwarder,
            max_request_bytes,
        }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(convert::header(
            self.node.cluster_id,
            self.node.id,
            revision,
            self.node.term(),
        ))
    }

    /// Proposes `command`; answers the applied result, or the leader to forward the request to.
    async fn propose(
        &self,
        command: pb_raft::Command,
        forwarded: bool,
    ) -> Result<Result<CommandResponse, MemberNode>, Status> {
        match self.node.write(command).await {
            Ok(response) => match response.result {
                CommandResult::Rejected(ApplyError::KeyNotFound) => {
                    Err(ApiError::KeyNotFound.into())
                }
                _ => Ok(Ok(response)),
            },
            Err(NodeError::ForwardToLeader(leader)) if !forwarded => Ok(Err(leader)),
            Err(error) => Err(node_status(error)),
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

/// A failed call to the leader: a deadline is etcd's request timeout, anything else passes on.
fn forward_status(status: Status) -> Status {
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

/// The range options of a request; unknown enum values are etcd 3.5's
/// `ErrGRPCInvalidSortOption`.
fn range_options(request: &RangeRequest) -> Result<mvcc::RangeOptions, Status> {
    let (Ok(sort_order), Ok(sort_target)) = (
        SortOrder::try_from(request.sort_order),
        SortTarget::try_from(request.sort_target),
    ) else {
        return Err(ApiError::InvalidSortOption.into());
    };
    Ok(mvcc::RangeOptions {
        limit: request.limit,
        count_only: request.count_only,
        sort_order: match sort_order {
            SortOrder::None => mvcc::SortOrder::None,
            SortOrder::Ascend => mvcc::SortOrder::Ascend,
            SortOrder::Descend => mvcc::SortOrder::Descend,
        },
        sort_target: match sort_target {
            SortTarget::Key => mvcc::SortTarget::Key,
            SortTarget::Version => mvcc::SortTarget::Version,
            SortTarget::Create => mvcc::SortTarget::Create,
            SortTarget::Mod => mvcc::SortTarget::Mod,
            SortTarget::Value => mvcc::SortTarget::Value,
        },
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(not_yet("txn"))
    }

    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(not_yet("compact"))
    }

    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let request = request.into_inner();
        validate::range(&request, self.max_request_bytes)?;
        let options = range_options(&request)?;
        if !request.serializable {
            match self.node.read_barrier().await {
                Ok(()) => {}
                Err(NodeError::ForwardToLeader(leader)) if !forwarded => {
                    let mut response = self
                        .forwarder
                        .kv(&leader)?
                        .range(forward::mark(request))
                        .await
                        .map_err(forward_status)?
                        .into_inner();
                    self.rewrite_header(&mut response.header);
                    return Ok(Response::new(response));
                }
                Err(error) => return Err(node_status(error)),
            }
        }
        let key_range = KeyRange::new(request.key.clone(), request.range_end.clone());
        let (result, revision) = self
            .node
            .state_machine
            .read(move |txn| {
                let kv = txn.open_table(KV).map_err(io_error)?;
                let result = mvcc::range(&kv, &key_range, &options).map_err(io_error)?;
                let meta = txn.open_table(SM_META).map_err(io_error)?;
                let revision = crate::raft::state_machine::revision_in(&meta)?;
                Ok((result, revision))
            })
            .await
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        if request.revision > revision {
            return Err(ApiError::FutureRevision.into());
        }
        if request.revision > 0 && request.revision < revision {
            return Err(Status::unimplemented(
                "detcd: reading at a past revision is not supported yet",
            ));
        }
        let kvs = if request.count_only {
            Vec::new()
        } else {
            result
                .kvs
                .into_iter()
                .map(|mut kv| {
                    if request.keys_only {
                        kv.value.clear();
                    }
                    convert::key_value(kv)
                })
                .collect()
        };
        Ok(Response::new(RangeResponse {
            header: self.header(revision),
            kvs,
            more: result.more,
            count: result.count,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let request = request.into_inner();
        validate::put(&request, self.max_request_bytes)?;
        let command = pb_raft::Command {
            op: Some(command::Op::Put(pb_raft::Put {
                key: request.key.clone(),
                value: request.value.clone(),
                lease: request.lease,
                prev_kv: request.prev_kv,
                ignore_value: request.ignore_value,
                ignore_lease: request.ignore_lease,
            })),
        };
        let response = match self.propose(command, forwarded).await? {
            Ok(response) => response,
            Err(leader) => {
                let mut response = self
                    .forwarder
                    .kv(&leader)?
                    .put(forward::mark(request))
                    .await
                    .map_err(forward_status)?
                    .into_inner();
                self.rewrite_header(&mut response.header);
                return Ok(Response::new(response));
            }
        };
        let prev_kv = match response.result {
            CommandResult::Put { prev_kv } => prev_kv.map(convert::key_value),
            other => return Err(ApiError::Internal(format!("put answered {other:?}")).into()),
        };
        Ok(Response::new(PutResponse {
            header: self.header(response.revision),
            prev_kv,
        }))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let request = request.into_inner();
        validate::delete_range(&request, self.max_request_bytes)?;
        let command = pb_raft::Command {
            op: Some(command::Op::DeleteRange(pb_raft::DeleteRange {
                key: request.key.clone(),
                range_end: request.range_end.clone(),
                prev_kv: request.prev_kv,
            })),
        };
        let response = match self.propose(command, forwarded).await? {
            Ok(response) => response,
            Err(leader) => {
                let mut response = self
                    .forwarder
                    .kv(&leader)?
                    .delete_range(forward::mark(request))
                    .await
                    .map_err(forward_status)?
                    .into_inner();
                self.rewrite_header(&mut response.header);
                return Ok(Response::new(response));
            }
        };
        let (deleted, prev_kvs) = match response.result {
            CommandResult::DeleteRange { deleted, prev_kvs } => (deleted, prev_kvs),
            other => return Err(ApiError::Internal(format!("delete answered {other:?}")).into()),
        };
        Ok(Response::new(DeleteRangeResponse {
            header: self.header(response.revision),
            deleted,
            prev_kvs: prev_kvs.into_iter().map(convert::key_value).collect(),
        }))
    }
}
