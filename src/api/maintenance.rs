//! etcd's `Maintenance` service: `Status` (for `etcdctl endpoint status`). The other RPCs
//! answer `Unimplemented` until their issues land.

use openraft::async_runtime::WatchReceiver;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::ApiError;
use crate::node::Node;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{StatusRequest, StatusResponse};

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

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let revision = self
            .node
            .state_machine
            .current_revision()
            .await
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        let metrics = self.node.raft.metrics();
        let metrics = metrics.borrow_watched().clone();
        let db_size = self.node.db_size_bytes();
        Ok(Response::new(StatusResponse {
            header: Some(convert::header(
                self.node.cluster_id,
                self.node.id,
                revision,
                metrics.current_term,
            )),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }
}
