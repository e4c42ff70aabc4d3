//! The etcd v3 gRPC services. Only `api` and `raft/network` know tonic.
//!
//! Services not built yet (Watch, Lease, Cluster, Auth, and the unbuilt RPCs of KV and
//! Maintenance) are served by the generated default stubs, which answer gRPC `Unimplemented`:
//! nothing pretends to work.

pub mod convert;
pub mod forward;
pub mod kv;
pub mod maintenance;
pub mod status;
pub mod validate;

use crate::pb::etcdserverpb::{auth_server, cluster_server, lease_server, watch_server};

/// The services of etcd's API that detcd does not implement yet: every RPC answers
/// `Unimplemented` (the generated default stubs).
#[derive(Debug, Default, Clone, Copy)]
pub struct NotYetImplemented;

impl watch_server::Watch for NotYetImplemented {}
impl lease_server::Lease for NotYetImplemented {}
impl cluster_server::Cluster for NotYetImplemented {}
impl auth_server::Auth for NotYetImplemented {}
