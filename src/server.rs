//! The composition root: Env -> storage -> node -> services -> serve, and graceful shutdown.
//!
//! One member serves two listeners: clients (etcd's KV, Maintenance, and `Unimplemented` stubs
//! for the rest) on `--listen-client-urls`, and peers (`detcd.raft.Raft`, plus KV for requests
//! forwarded by followers) on `--listen-peer-urls`. The same function runs for real (called by
//! `main`) and inside a simulated node (called by the simulation harness).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::api::cluster::ClusterService;
use crate::api::forward::{ForwardService, Forwarder};
use crate::api::kv::{KvLimits, KvService};
use crate::api::lease::LeaseService;
use crate::api::maintenance::MaintenanceService;
use crate::api::read_index::ReadIndexer;
use crate::api::validate::GRPC_OVERHEAD_BYTES;
use crate::api::watch::WatchService;
use crate::api::NotYetImplemented;
use crate::config::{socket_addr, ClusterState, Config};
use crate::env::net::Services;
use crate::env::{Clock, Disk, SocketAddr};
use crate::node::{Node, NodeConfig, REQUEST_TIMEOUT};
use crate::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::pb::raft::forward_server::ForwardServer;
use crate::pb::raft::raft_server::RaftServer;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;
use crate::raft::service::RaftService;
use crate::raft::MemberNode;
use crate::storage::{StorageError, DATABASE_FILE};

/// Why a member could not start or stopped serving.
#[derive(Debug)]
pub enum ServerError {
    Config(String),
    Storage(StorageError),
    Transport(String),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Config(e) => write!(f, "config: {e}"),
            ServerError::Storage(e) => write!(f, "{e}"),
            ServerError::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}
impl std::error::Error for ServerError {}

impl From<StorageError> for ServerError {
    fn from(e: StorageError) -> Self {
        ServerError::Storage(e)
    }
}

/// Addresses a member listens on, resolved from its config.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub clients: Vec<SocketAddr>,
    pub peers: Vec<SocketAddr>,
}

fn resolve(urls: &[String]) -> Result<Vec<SocketAddr>, ServerError> {
    urls.iter()
        .map(|url| socket_addr(url).map_err(|e| ServerError::Config(e.0)))
        .collect()
}

/// The initial membership, as Raft nodes. Every member must build exactly the same one (it is
/// the log's first entry), so it holds only what `--initial-cluster` says: names and peer URLs.
fn initial_members(config: &Config) -> BTreeMap<u64, MemberNode> {
    config
        .initial_members()
        .into_iter()
        .map(|(id, (name, peer_urls))| {
            let peer_url = peer_urls.first().cloned().unwrap_or_default();
            let member = MemberNode {
                name,
                peer_url,
                client_urls: Vec::new(),
            };
            (id, member)
        })
        .collect()
}

/// What damage to its file opening the database failed on, if any.
#[derive(Debug, PartialEq, Eq)]
enum Damage {
    /// A page whose checksum fails (redb says corrupted).
    Pages,
    /// A header that is not redb's any more: the file is detcd's own, so nothing else was there.
    Header,
}

fn damage(error: &redb::DatabaseError) -> Option<Damage> {
    match error {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => Some(Damage::Pages),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            Some(Damage::Header)
        }
        _ => None,
    }
}

/// Serves `services` on `addr` (the `kind` listener: client or peer) until `stop` turns true.
fn spawn_listener(
    kind: &'static str,
    services: Services,
    addr: SocketAddr,
    mut stop: crate::env::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), ServerError>> {
    tokio::spawn(async move {
        crate::env::net::serve(services, addr, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
        .map_err(|e| ServerError::Transport(format!("{kind} listener {addr}: {e}")))
    })
}

/// Runs one member until `shutdown` resolves. `on_ready` is called once it listens.
pub async fn run(
    config: Config,
    disk: Disk,
    clock: Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Node, &Listeners),
) -> Result<(), ServerError> {
    let listeners = Listeners {
        clients: resolve(&config.listen_client_urls)?,
        peers: resolve(&config.listen_peer_urls)?,
    };
    let db = {
        let opener = disk.clone();
        crate::env::blocking(move || opener.open_database(DATABASE_FILE))
            .await
            .map_err(|e| {
                let hint = match damage(&e) {
                    Some(Damage::Pages) => {
                        "; this member's data cannot be trusted: the member must be replaced, \
                         not restarted on it"
                    }
                    Some(Damage::Header) => {
                        "; its header is corrupted: this member's data cannot be trusted: the \
                         member must be replaced, not restarted on it"
                    }
                    None => "",
                };
                StorageError(format!(
                    "open {DATABASE_FILE} on {}: {e}{hint}",
                    disk.describe()
                ))
            })?
    };
    let node = Node::start(
        NodeConfig {
            id: config.member_id(),
            bootstrap: config.initial_cluster_state == ClusterState::New,
            cluster_id: config.cluster_id(),
            members: initial_members(&config),
            heartbeat_interval: config.heartbeat_interval,
            election_timeout: config.election_timeout,
            snapshot_count: config.snapshot_count,
            lease_checkpoint_interval: config.lease_checkpoint_interval,
        },
        disk,
        Arc::new(db),
        clock,
    )
    .await?;

    let max_request_bytes = config.max_request_bytes;
    let max_message_bytes = max_request_bytes + GRPC_OVERHEAD_BYTES;
    let forwarder = Forwarder::new(max_message_bytes);
    let (read_indexer, read_queue) = ReadIndexer::new();
    let kv_service = |node: &Node| {
        KvService::new(
            node.clone(),
            forwarder.clone(),
            read_indexer.clone(),
            KvLimits {
                max_request_bytes,
                max_txn_ops: config.max_txn_ops,
            },
        )
    };
    let kv = |node: &Node| {
        KvServer::new(kv_service(node))
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    };

    let (stop_tx, stop_rx) = crate::env::watch::channel(false);
    let mut servers = Vec::new();
    for addr in &listeners.clients {
        let services = Services::new()
            .add_service(kv(&node))
            .add_service(MaintenanceServer::new(MaintenanceService::new(
                node.clone(),
            )))
            .add_service(
                WatchServer::new(WatchService::new(
                    node.clone(),
                    max_message_bytes,
                    config.watch_progress_notify_interval,
                    config.watch_pace_interval,
                    stop_rx.clone(),
                ))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            )
            .add_service(LeaseServer::new(LeaseService::new(
                node.clone(),
                forwarder.clone(),
                read_indexer.clone(),
            )))
            .add_service(ClusterServer::new(ClusterService::new(
                node.clone(),
                kv_service(&node),
            )))
            .add_service(AuthServer::new(NotYetImplemented));
        servers.push(spawn_listener("client", services, *addr, stop_rx.clone()));
    }
    for addr in &listeners.peers {
        let services = Services::new()
            .add_service(
                RaftServer::new(RaftService::new(node.raft.clone(), REQUEST_TIMEOUT))
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            )
            .add_service(kv(&node))
            .add_service(
                ForwardServer::new(ForwardService::new(kv_service(&node), stop_rx.clone()))
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            )
            .add_service(LeaseServer::new(LeaseService::new(
                node.clone(),
                forwarder.clone(),
                read_indexer.clone(),
            )));
        servers.push(spawn_listener("peer", services, *addr, stop_rx.clone()));
    }
    let compactor = tokio::spawn(crate::node::compactor::run(
        node.clone(),
        config.auto_compaction,
        stop_rx.clone(),
    ));
    let lessor = tokio::spawn(crate::node::lessor::run(node.clone(), stop_rx.clone()));
    let publisher = tokio::spawn(crate::api::cluster::publish(
        node.clone(),
        forwarder.clone(),
        config.advertise_client_urls.clone(),
        stop_rx.clone(),
    ));
    let read_indexes = tokio::spawn(crate::api::read_index::run(
        node.clone(),
        forwarder.clone(),
        read_queue,
        stop_rx.clone(),
    ));
    on_ready(&node, &listeners);

    shutdown.await;
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for server in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(ServerError::Transport(e.to_string())),
        }
    }
    let _ = compactor.await;
    let _ = lessor.await;
    let _ = read_indexes.await;
    let _ = publisher.await;
    node.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::{damage, Damage};

    #[test]
    fn a_database_whose_header_is_not_redbs_is_damaged() {
        let storage = |e: redb::StorageError| redb::DatabaseError::Storage(e);
        let checksum = storage(redb::StorageError::Corrupted("checksum".into()));
        assert_eq!(damage(&checksum), Some(Damage::Pages));
        // What redb answers for a flipped bit in its magic number.
        let not_redb = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "Not a redb database: magic number mismatch",
        );
        let not_redb = storage(redb::StorageError::Io(not_redb));
        assert_eq!(damage(&not_redb), Some(Damage::Header));
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space");
        assert_eq!(damage(&storage(redb::StorageError::Io(full))), None);
    }
}
