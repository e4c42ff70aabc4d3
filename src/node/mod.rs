//! One member: its Raft instance, its state machine, and the two paths every request takes —
//! writes through Raft, reads after a ReadIndex barrier.
//!
//! A write is proposed with `client_write` and answered when this member has applied it. A
//! linearizable read first gets a read index from the leader (`raft::read_index`, which confirms
//! leadership with a quorum round) and waits until the local state machine has applied up to it,
//! so it never returns data older than a write acknowledged before it started, even across a
//! leader change. A member that is not the leader says who is: the API layer forwards writes
//! there, and asks it for the read index of a read (as etcd followers do).

pub mod compactor;
pub mod lessor;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::WaitError;

use crate::apply::CommandResponse;
use crate::env::{Clock, Disk, Duration};
use crate::pb::raft::Command;
use crate::raft::log_store::LogStore;
use crate::raft::network::NetworkFactory;
use crate::raft::state_machine::StateMachine;
use crate::raft::{DetcdRaft, MemberNode, Membership, Published};
use crate::storage::{self, StorageError};

/// How long a request waits for Raft before it answers `etcdserver: request timed out`
/// (etcd: 5 s plus two election timeouts).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// Log entries kept after a snapshot for followers to catch up from, at most (etcd's
/// `--snapshot-catchup-entries` is 5,000; fewer if snapshots are taken more often).
const CATCHUP_ENTRIES: u64 = 1000;

/// Why a request could not be served here.
#[derive(Debug, Clone)]
pub enum NodeError {
    /// Another member leads: send the request there (its peer URL serves clients' forwarded
    /// requests).
    ForwardToLeader(MemberNode),
    /// No leader is known right now.
    NoLeader,
    /// The request may or may not have happened (leader lost while it was in flight, deadline).
    Timeout,
    /// The member is stopping or has failed; it serves nothing more.
    Stopped(String),
}

/// This member's view of Raft, for `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftStatus {
    pub term: u64,
    /// 0 when no leader is known.
    pub leader: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
}

/// What a node needs to start.
pub struct NodeConfig {
    pub id: u64,
    /// `--initial-cluster-state new`: a member with no data bootstraps the initial membership.
    /// With `existing` it must already have data (joining a running cluster needs MemberAdd).
    pub bootstrap: bool,
    pub cluster_id: u64,
    pub members: BTreeMap<u64, MemberNode>,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// `--snapshot-count`: applied entries between two snapshots.
    pub snapshot_count: u64,
    /// `--experimental-lease-checkpoint-interval`; `None` with checkpoints disabled.
    pub lease_checkpoint_interval: Option<Duration>,
}

/// A running member.
#[derive(Clone)]
pub struct Node {
    pub id: u64,
    pub cluster_id: u64,
    pub raft: DetcdRaft,
    pub state_machine: StateMachine,
    pub clock: Clock,
    /// The leader's lease expiries (empty on followers).
    pub lessor: Arc<lessor::Lessor>,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    disk: Disk,
}

impl Node {
    /// Opens the member's storage and starts Raft; on first boot writes the initial membership
    /// (every initial member writes the same one, so no member has to go first).
    pub async fn start(
        config: NodeConfig,
        disk: Disk,
        db: Arc<redb::Database>,
        clock: Clock,
    ) -> Result<Node, StorageError> {
        {
            let db = db.clone();
            crate::env::blocking(move || storage::create_tables(&db)).await?;
        }
        let heartbeat_ms = config.heartbeat_interval.as_millis() as u64;
        let election_ms = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: format!("{:x}", config.cluster_id),
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 1024,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: CATCHUP_ENTRIES.min(config.snapshot_count),
            // A restarted leader must not resume its old term: its committed index and state
            // machine are only as new as its last fsync, which may predate writes it had
            // acknowledged, and a ReadIndex from them would serve stale reads. Without restore
            // it wins a new term and commits in it first (`leader_crash_after_ack` scenario).
            enable_leader_restore: Some(crate::env::bugs::enabled(
                crate::env::bugs::Bug::LeaderRestore,
            )),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StorageError(format!("raft config: {e}")))?;
        let log_store = LogStore::open(disk.clone()).await?;
        let membership = Membership::new(
            vec![config.members.keys().copied().collect::<BTreeSet<u64>>()],
            config.members.clone(),
        )
        .map_err(|e| StorageError(format!("initial membership: {e}")))?;
        if config.bootstrap {
            log_store
                .bootstrap(config.id, membership)
                .await
                .map_err(|e| StorageError(format!("bootstrap: {e}")))?;
        } else if log_store.is_fresh() {
            // A member that lost its data must not come back as a new one: it would have forgotten
            // its vote and could vote twice in one term.
            return Err(StorageError(
                "--initial-cluster-state=existing with an empty data directory: joining a running \
                 cluster (MemberAdd) is not supported yet; restore the member's data directory"
                    .to_string(),
            ));
        }
        let state_machine = StateMachine::open(db.clone(), disk.clone(), clock.clone())
            .await
            .map_err(|e| StorageError(format!("open state machine: {e}")))?;
        crate::env::probe::record(|| crate::env::probe::Probe::Started);
        let raft = DetcdRaft::new(
            config.id,
            Arc::new(raft_config),
            NetworkFactory {
                clock: clock.clone(),
            },
            log_store,
            state_machine.clone(),
        )
        .await
        .map_err(|e| StorageError(format!("start raft: {e}")))?;
        Ok(Node {
            id: config.id,
            cluster_id: config.cluster_id,
            raft,
            state_machine,
            clock,
            lessor: Arc::new(lessor::Lessor::new(lessor::LessorConfig {
                checkpoint_interval: config.lease_checkpoint_interval,
                grace: config.election_timeout,
            })),
            heartbeat_interval: config.heartbeat_interval,
            election_timeout: config.election_timeout,
            disk,
        })
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    pub fn raft_status(&self) -> RaftStatus {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        RaftStatus {
            term: metrics.current_term,
            leader: metrics.current_leader.unwrap_or(0),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: self.state_machine.hub.applied().index,
        }
    }

    /// Whether this member leads and no other member can have been elected since: a quorum
    /// acknowledged its heartbeats within the last election timeout, and a follower that heard
    /// from it refuses to vote for anyone else for twice that (openraft's leader lease). A
    /// leader cut off by a partition stops answering keep-alives when this turns false, before
    /// a new leader starts counting the TTLs down.
    ///
    /// Answers the term it leads in, read from the same metrics as the quorum contact.
    pub fn leads_with_quorum(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.current_leader != Some(self.id) {
            return None;
        }
        let membership = metrics.membership_config.membership();
        let fresh = membership.voter_ids().count() <= 1
            || crate::env::bugs::enabled(crate::env::bugs::Bug::KeepAliveWithoutQuorum)
            || metrics.last_quorum_acked.as_ref().is_some_and(|acked| {
                let now = <crate::env::runtime::RuntimeInstant as openraft_rt::Instant>::now();
                now - **acked < self.election_timeout
            });
        fresh.then_some(metrics.current_term)
    }

    /// The leader this member knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Member `id` of the current membership, if it is one.
    pub fn member(&self, id: u64) -> Option<MemberNode> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// The members, by ID, as this member knows them (the membership entry it appended last),
    /// each with whether it is a learner.
    pub fn members(&self) -> Vec<(u64, MemberNode, bool)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, node.clone(), !voters.contains(id)))
            .collect()
    }

    /// Whether the committed membership already holds these client URLs for this member.
    pub fn published(&self, client_urls: &[String]) -> bool {
        crate::raft::published(&self.raft, self.id, client_urls)
    }

    /// Records this member's client URLs in the membership, if this member leads.
    pub async fn publish_as_leader(&self, client_urls: Vec<String>) -> Published {
        crate::raft::publish(&self.raft, self.id, client_urls).await
    }

    /// Who to forward to, or that there is no leader.
    fn redirect(&self, leader: Option<u64>) -> NodeError {
        match leader
            .filter(|id| *id != self.id)
            .and_then(|id| self.member(id))
        {
            Some(node) => NodeError::ForwardToLeader(node),
            None => NodeError::NoLeader,
        }
    }

    /// Waits, within the request timeout, for a leader to be known (after startup or an
    /// election), so a request does not fail just because it arrived mid-election.
    async fn wait_for_leader(&self, deadline: crate::env::clock::Instant) -> Option<u64> {
        loop {
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            if self.clock.now() >= deadline {
                return None;
            }
            self.clock.sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes `command` and returns its result once this member has applied it.
    pub async fn write(&self, command: Command) -> Result<CommandResponse, NodeError> {
        let deadline = self.clock.now().plus(REQUEST_TIMEOUT);
        let leader = self.wait_for_leader(deadline).await;
        if leader != Some(self.id) {
            return Err(self.redirect(leader));
        }
        let remaining = deadline.since(self.clock.now());
        match self
            .clock
            .timeout(remaining, self.raft.client_write(command))
            .await
        {
            Err(_elapsed) => Err(NodeError::Timeout),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(self.redirect(forward.leader_id))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Err(NodeError::Timeout)
            }
            Ok(Err(RaftError::APIError(other))) => Err(NodeError::Stopped(other.to_string())),
            Ok(Err(RaftError::Fatal(fatal))) => Err(NodeError::Stopped(fatal.to_string())),
        }
    }

    /// Proposes `command` only if this member leads in `term`, without waiting for a leader:
    /// for the leader's own loops (lessor, compactor), which decide from their term's state.
    pub async fn write_as_leader(
        &self,
        command: Command,
        term: u64,
    ) -> Result<CommandResponse, NodeError> {
        let status = self.raft_status();
        if status.leader != self.id || status.term != term {
            return Err(NodeError::NoLeader);
        }
        self.write(command).await
    }

    /// Returns once this member's state machine has applied everything acknowledged before the
    /// call: the ReadIndex barrier of a linearizable read. Only the leader can do it; a follower
    /// learns the leader to ask for a read index (`ForwardToLeader`) and then calls
    /// [`Node::await_applied`].
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let deadline = self.clock.now().plus(REQUEST_TIMEOUT);
        let leader = self.wait_for_leader(deadline).await;
        if leader != Some(self.id) {
            return Err(self.redirect(leader));
        }
        let remaining = deadline.since(self.clock.now());
        let index = match self
            .clock
            .timeout(remaining, crate::raft::read_index(&self.raft))
            .await
        {
            Err(_elapsed) => return Err(NodeError::Timeout),
            Ok(Ok(index)) => index,
            Ok(Err(error)) => {
                return Err(match (error.forward_to_leader(), &error) {
                    (Some(forward), _) => self.redirect(forward.leader_id),
                    (None, RaftError::Fatal(fatal)) => NodeError::Stopped(fatal.to_string()),
                    (None, RaftError::APIError(_)) => NodeError::Timeout,
                })
            }
        };
        self.await_applied(index, deadline).await
    }

    /// Returns once this member's state machine has applied and committed log index `index`
    /// (a leader's read index), or times out at `deadline`. It waits on the state machine's own
    /// announcement, not on openraft's `last_applied`: that one counts entries handed to the
    /// applier, which a read could not see yet.
    pub async fn await_applied(
        &self,
        index: u64,
        deadline: crate::env::clock::Instant,
    ) -> Result<(), NodeError> {
        if crate::env::bugs::enabled(crate::env::bugs::Bug::ReadBeforeCommitted) {
            return self.await_raft_applied(index, deadline).await;
        }
        self.await_hub(self.state_machine.hub.reached(index), deadline)
            .await
    }

    /// Returns once this member's state machine has applied and committed revision
    /// `revision` (a write the leader answered for it), or times out at `deadline`.
    pub async fn await_revision(
        &self,
        revision: i64,
        deadline: crate::env::clock::Instant,
    ) -> Result<(), NodeError> {
        if crate::env::bugs::enabled(crate::env::bugs::Bug::ForwardedAnswerNotApplied) {
            return Ok(());
        }
        self.await_hub(self.state_machine.hub.reached_revision(revision), deadline)
            .await
    }

    async fn await_hub(
        &self,
        reached: impl std::future::Future<Output = bool>,
        deadline: crate::env::clock::Instant,
    ) -> Result<(), NodeError> {
        let wait = async {
            if reached.await {
                Ok(())
            } else {
                Err(NodeError::Stopped("the state machine stopped".to_string()))
            }
        };
        let remaining = deadline.since(self.clock.now());
        self.clock
            .timeout(remaining, wait)
            .await
            .unwrap_or(Err(NodeError::Timeout))
    }

    /// `await_applied` on openraft's `last_applied`: the bug `ReadBeforeCommitted`.
    async fn await_raft_applied(
        &self,
        index: u64,
        deadline: crate::env::clock::Instant,
    ) -> Result<(), NodeError> {
        let remaining = deadline.since(self.clock.now());
        let wait = self.raft.wait(None);
        match self
            .clock
            .timeout(
                remaining,
                wait.applied_index_at_least(Some(index), "read index"),
            )
            .await
        {
            Err(_elapsed) => Err(NodeError::Timeout),
            Ok(Ok(_metrics)) => Ok(()),
            Ok(Err(WaitError::ShuttingDown)) => {
                Err(NodeError::Stopped("raft is shutting down".to_string()))
            }
            Ok(Err(WaitError::Timeout(..))) => Err(NodeError::Timeout),
        }
    }

    /// Size of the member's database file in bytes, for `Status`.
    pub fn db_size_bytes(&self) -> i64 {
        self.disk.file_len(storage::DATABASE_FILE).unwrap_or(0) as i64
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
