//! etcd's `Maintenance` service: `Status` (for `etcdctl endpoint status`), `HashKV` (for
//! `etcdctl endpoint hashkv` and the simulation's state checker) and `Hash`. The other RPCs
//! answer `Unimplemented` until their issues land.

use tonic::{Request, Response, Status};

use super::convert;
use super::status::ApiError;
use super::{not_yet, ResponseStream};
use crate::node::Node;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};

/// The etcd version whose API detcd serves, as `Status` reports it.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    node: Node,
}

impl MaintenanceService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

impl MaintenanceService {
    fn header(&self, revision: i64) -> ResponseHeader {
        convert::member_header(&self.node, revision)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = ResponseStream<SnapshotResponse>;

    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Err(not_yet("alarm"))
    }
    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_yet("defragment"))
    }
    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, revision) = super::read_store(&self.node, |store| {
            Ok((store.hash_all()?, store.revision()))
        })
        .await?;
        Ok(Response::new(HashResponse {
            header: Some(self.header(revision)),
            hash,
        }))
    }

    /// Answered from this member's state, as etcd: members that applied the same revision
    /// answer the same hash.
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let (hash, current, compacted) = super::read_store(&self.node, move |store| {
            Ok((
                store.hash_kv(revision)?,
                store.revision(),
                store.compacted(),
            ))
        })
        .await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.header(current)),
            hash,
            compact_revision: compacted,
        }))
    }
    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("snapshot"))
    }
    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(not_yet("move_leader"))
    }
    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_yet("downgrade"))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let revision = self
            .node
            .state_machine
            .current_revision()
            .await
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        let raft = self.node.raft_status();
        let db_size = self.node.db_size_bytes();
        Ok(Response::new(StatusResponse {
            header: Some(convert::header(
                self.node.cluster_id,
                self.node.id,
                revision,
                raft.term,
            )),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: raft.leader,
            raft_index: raft.last_log_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }
}
