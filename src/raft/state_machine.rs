//! The Raft state machine: applies committed entries to the MVCC store in redb, and builds and
//! installs snapshots of it.
//!
//! Durability: a batch of applied entries commits with `Durability::None`, and one batch a
//! [`SYNC_INTERVAL`] (or every [`SYNC_EVERY_ENTRIES`] entries) commits durably, which makes
//! the ones before it durable too. What a crash takes back is re-applied from the write-ahead
//! log: an entry is applied only after it is durably in this member's log, and the log is
//! purged only up to a snapshot, which is built after a durable commit (so never past what the
//! state machine has made durable). Snapshot installation commits durably.
//!
//! Pipelining: openraft hands each committed range to [`RaftStateMachine::apply`], which queues
//! it for this member's applier task and returns. The applier takes everything queued, applies
//! it in one redb transaction off the async path (`env::blocking`: another thread in real mode),
//! answers the clients (each entry is durable in the log already), commits while the answers
//! travel, and only then records the batch in the hub ([`Applied`], with its log index) and
//! announces it to the watch streams. Between the answer and the commit the hub knows the batch
//! as answered, and every read and every watch created waits for the commit
//! ([`Hub::settled`]): what a client was told is written is readable when it asks next. So
//! openraft's `last_applied` runs ahead of what readers can see, and nothing waits on
//! it: reads wait for the hub's applied index ([`crate::node::Node::await_applied`]), and every
//! call that needs the store to be up to date (a snapshot build or install, `applied_state`,
//! `sync`) first drains the queue (`Work::Barrier`). A batch of one or two entries (a single
//! client) is applied on the applier's own task: the hand-off to another thread cost more.
//! Measured (one node, `put --clients 64`): applying on the runtime thread kept it ~90 % busy,
//! half of it in apply, and the pipeline gives 1.24x; applying each of openraft's calls on the
//! blocking pool without merging them collapsed batches to 2 entries and throughput to 0.4x.
//!
//! Why not more often: a durable commit is two fsyncs of everything written since the last
//! one, and the batch that makes it waits for them. Once every 64 batches it was a single
//! client's p99 (7-9 ms against 1.0 ms without; `put --clients 1` on one node). redb reuses at
//! once the pages that non-durable commits wrote and later freed, so the file does not grow
//! with the interval, only with what was written since the last durable commit.

use std::io;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::codec;
use super::{io_error, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::apply::{self, CommandResponse, CommandResult};
use crate::env::bugs::{self, Bug};
use crate::env::probe::{self, Probe};
use crate::env::{self, Clock, Disk, Duration, Instant};
use crate::mvcc::leases::{LeaseEvent, LeaseFeed};
use crate::mvcc::{self, LeaseRecord, INITIAL_REVISION};
use crate::pb::raft as pb;
use crate::storage::{self, encoding};
use crate::storage::{
    KV_REVISIONS, LEASES, LEASE_KEYS, META_COMPACTED, META_LAST_APPLIED, META_MEMBERSHIP,
    META_REVISION, SM_META,
};
use crate::watch::{Applied, Hub};

/// Time between two durable commits, at most (while entries are applied).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Applied entries between two durable commits, at most: bounds the replay after a crash.
pub const SYNC_EVERY_ENTRIES: u64 = 65536;

/// The applier stops merging queued work into one transaction at this many entries.
const MERGED_ENTRIES: usize = 4096;
/// The longest batch applied on the applier's own task (the runtime thread in real mode).
const INLINE_APPLY_ENTRIES: usize = 2;
/// openraft's calls queued for the applier, at most (then `apply` waits).
const APPLIER_QUEUE: usize = 256;

/// The state machine of one member. Clones share the database, the applier and the current
/// snapshot.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    /// The key index of the store in `db` (in memory, rebuilt at open and at an install).
    index: mvcc::Index,
    /// The applier task's queue, in log order.
    applier: mpsc::Sender<Work>,
    /// Why the applier stopped, once it has: every later call fails (openraft then stops).
    failed: Arc<Mutex<Option<String>>>,
    current_snapshot: Arc<Mutex<Option<Snapshot>>>,
    /// Told about every applied batch (after it is committed) and every installed snapshot.
    pub hub: Arc<Hub>,
    /// Lease grants and revokes as they are applied, for the leader's lessor.
    pub leases: Arc<LeaseFeed>,
}

/// What the applier is asked to do, in the order openraft asked.
enum Work {
    /// Committed entries to apply, each with the client waiting for it (on the proposer).
    Apply(Vec<EntryResponder<TypeConfig>>),
    /// Answered once everything queued before it is applied and committed, durably if `sync`.
    Barrier {
        sync: bool,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The applier task's state: it alone writes applied entries to the database.
struct Applier {
    db: Arc<Database>,
    index: mvcc::Index,
    /// Where `db` lives: a simulated fsync takes simulated time.
    disk: Disk,
    clock: Clock,
    /// The last durable commit, and the entries applied since.
    synced_at: Instant,
    unsynced_entries: u64,
    hub: Arc<Hub>,
    leases: Arc<LeaseFeed>,
    failed: Arc<Mutex<Option<String>>>,
}

/// A batch applied in a transaction not committed yet, with what to do once it is.
struct Prepared {
    /// The transaction and what to do after its commit, if the commit is still to be done.
    uncommitted: Option<(WriteTransaction, mvcc::AfterCommit)>,
    batch: Vec<EntryResponder<TypeConfig>>,
    responses: Vec<CommandResponse>,
    changes: Vec<mvcc::Change>,
    lease_events: Vec<(u64, LeaseEvent)>,
    applied: Applied,
}

/// What the state machine has applied, read in one transaction.
#[derive(Debug, Clone)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: i64,
}

/// What the simulation's Raft checker compares between members for one applied entry. A command
/// hashes its protobuf encoding (no maps in it, so the encoding is deterministic); a membership
/// hashes its Debug form (its protobuf map of nodes encodes in hash order). Only under
/// `--cfg madsim` does [`probe::record`] call this.
fn payload_digest(entry: &super::Entry) -> u64 {
    match &entry.payload {
        EntryPayload::Normal(command) => crate::fnv::hash(&command.encode_to_vec()),
        other => crate::fnv::hash(format!("{other:?}").as_bytes()),
    }
}

/// The lease change an applied command made, if any.
fn lease_event(command: &pb::Command, result: &CommandResult) -> Option<LeaseEvent> {
    use pb::command::Op;
    match (&command.op, result) {
        (Some(Op::LeaseGrant(grant)), CommandResult::LeaseGrant(_)) => Some(LeaseEvent::Granted {
            id: grant.id,
            ttl: grant.ttl,
        }),
        (Some(Op::LeaseRevoke(revoke)), CommandResult::LeaseRevoke(_)) => {
            Some(LeaseEvent::Revoked { id: revoke.id })
        }
        _ => None,
    }
}

fn read_applied_state<T>(meta: &T) -> Result<AppliedState, io::Error>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    let last_applied = match meta.get(META_LAST_APPLIED).map_err(io_error)? {
        Some(bytes) => Some(codec::log_id_from_pb(
            &pb::LogId::decode(bytes.value()).map_err(io_error)?,
        )),
        None => None,
    };
    // The membership is stored as a `SnapshotMeta` message holding only the membership fields.
    let membership = match meta.get(META_MEMBERSHIP).map_err(io_error)? {
        Some(bytes) => {
            let stored = pb::SnapshotMeta::decode(bytes.value()).map_err(io_error)?;
            codec::stored_membership_from_pb(
                &stored.last_membership_log_id,
                &stored.last_membership,
            )
            .map_err(io_error)?
        }
        None => StoredMembership::default(),
    };
    Ok(AppliedState {
        last_applied,
        membership,
        revision: revision_in(meta)?,
    })
}

/// Records what has been applied. The membership is written only when it changed (`Some`): it
/// rarely does, and re-encoding it for every applied batch would be wasted work.
fn write_applied_state(
    meta: &mut mvcc::MetaTable,
    last_applied: Option<LogId>,
    revision: i64,
    membership: Option<&StoredMembership>,
) -> Result<(), io::Error> {
    if let Some(log_id) = &last_applied {
        meta.insert(
            META_LAST_APPLIED,
            codec::log_id_to_pb(log_id).encode_to_vec().as_slice(),
        )
        .map_err(io_error)?;
    }
    if let Some(membership) = membership {
        let (membership_log_id, membership) = codec::stored_membership_to_pb(membership);
        let stored = pb::SnapshotMeta {
            last_membership_log_id: membership_log_id,
            last_membership: Some(membership),
            ..Default::default()
        };
        meta.insert(META_MEMBERSHIP, stored.encode_to_vec().as_slice())
            .map_err(io_error)?;
    }
    meta.insert(
        META_REVISION,
        encoding::encode_u64(revision as u64).as_slice(),
    )
    .map_err(io_error)?;
    Ok(())
}

/// The store's current revision, read from the state machine's meta table. Every range read
/// asks, so this reads just that one row.
pub fn revision_in<T>(meta: &T) -> Result<i64, io::Error>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    match meta.get(META_REVISION).map_err(io_error)? {
        Some(bytes) => Ok(
            encoding::decode_u64(bytes.value()).ok_or_else(|| io_error("corrupt revision"))? as i64
        ),
        None => Ok(INITIAL_REVISION),
    }
}

impl StateMachine {
    /// The state machine over `db` (on `disk`), its watch hub starting at what `db` has applied.
    pub async fn open(db: Arc<Database>, disk: Disk, clock: Clock) -> Result<Self, io::Error> {
        let reader = db.clone();
        let (applied, index) = env::blocking(move || {
            let txn = reader.begin_read().map_err(io_error)?;
            let meta = txn.open_table(SM_META).map_err(io_error)?;
            let applied = Applied {
                revision: revision_in(&meta)?,
                compacted: mvcc::compacted_revision(&meta).map_err(io_error)?,
                index: read_applied_state(&meta)?
                    .last_applied
                    .map_or(0, |log_id| log_id.index),
            };
            // The key index, from the same commit's history.
            let index = mvcc::Index::load(&reader).map_err(io_error)?;
            Ok::<_, io::Error>((applied, index))
        })
        .await?;
        let hub = Hub::new(applied);
        let leases: Arc<LeaseFeed> = Arc::default();
        let failed = Arc::new(Mutex::new(None));
        let (applier, queue) = mpsc::channel(APPLIER_QUEUE);
        env::spawn(run_applier(
            Applier {
                db: db.clone(),
                index: index.clone(),
                disk,
                synced_at: clock.monotonic(),
                clock,
                unsynced_entries: 0,
                hub: hub.clone(),
                leases: leases.clone(),
                failed: failed.clone(),
            },
            queue,
        ));
        Ok(Self {
            db,
            index,
            applier,
            failed,
            current_snapshot: Arc::new(Mutex::new(None)),
            hub,
            leases,
        })
    }

    /// Why the applier stopped, if it has.
    fn failure(&self) -> Option<io::Error> {
        let failed = self.failed.lock().expect("applier failure");
        failed
            .as_ref()
            .map(|why| io_error(format!("state machine failed: {why}")))
    }

    /// Returns once everything queued so far is applied and committed (durably if `sync`).
    async fn barrier(&self, sync: bool) -> Result<(), io::Error> {
        let (done, answer) = oneshot::channel();
        let stopped = || io_error("the state machine's applier stopped");
        self.applier
            .send(Work::Barrier { sync, done })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(io_error)
    }

    /// Every lease, with the log index the state machine had applied when it was read.
    pub async fn lease_snapshot(&self) -> Result<(u64, Vec<(i64, LeaseRecord)>), io::Error> {
        self.read(|txn| {
            let meta = txn.open_table(SM_META).map_err(io_error)?;
            let index = read_applied_state(&meta)?
                .last_applied
                .map_or(0, |log_id| log_id.index);
            let all = mvcc::leases::all(txn).map_err(io_error)?;
            Ok((index, all))
        })
        .await
    }

    /// Returns once everything this member has answered is committed and readable
    /// ([`Hub::settled`]), or fails if the applier stopped first.
    async fn settled(&self) -> Result<(), io::Error> {
        self.hub.settled().await;
        match self.failure() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Runs `f` on a consistent read view of the store (off the async path in real mode),
    /// which includes every write this member has answered.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, io::Error> + Send + 'static,
    ) -> Result<T, io::Error> {
        self.settled().await?;
        let db = self.db.clone();
        env::blocking(move || {
            let txn = db.begin_read().map_err(io_error)?;
            f(&txn)
        })
        .await
    }

    /// Runs `f` on a consistent read of the MVCC store (off the async path in real mode), which
    /// includes every write this member has answered, again if a compaction or a snapshot
    /// install moved the key index under it ([`mvcc::Index::read`]), so `f` may run more than
    /// once.
    pub async fn read_mvcc<T: Send + 'static>(
        &self,
        f: impl Fn(&mvcc::Reader) -> Result<T, io::Error> + Send + 'static,
    ) -> Result<T, io::Error> {
        self.settled().await?;
        let db = self.db.clone();
        let index = self.index.clone();
        env::blocking(move || index.read(&db, f).map_err(io_error)?).await
    }

    /// The store's current revision, with the log id it was applied at.
    pub async fn current_revision(&self) -> Result<i64, io::Error> {
        self.read(|txn| {
            let meta = txn.open_table(SM_META).map_err(io_error)?;
            revision_in(&meta)
        })
        .await
    }

    /// Makes everything applied so far durable, including what is still queued.
    pub async fn sync(&self) -> Result<(), io::Error> {
        self.barrier(true).await
    }

    /// The meta of a snapshot of `txn`'s view: what it had applied, and its membership.
    fn snapshot_meta(txn: &redb::ReadTransaction) -> Result<SnapshotMeta, io::Error> {
        let meta_table = txn.open_table(SM_META).map_err(io_error)?;
        let state = read_applied_state(&meta_table)?;
        Ok(SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership,
        })
    }

    /// The encoded snapshot (`pb::SnapshotData`) of `txn`'s view; its meta is [`Self::snapshot_meta`].
    fn dump(txn: &redb::ReadTransaction) -> Result<Vec<u8>, io::Error> {
        let meta_table = txn.open_table(SM_META).map_err(io_error)?;
        let state = read_applied_state(&meta_table)?;
        let mut data = pb::SnapshotData {
            revision: state.revision,
            compacted: Some(mvcc::compacted_revision(&meta_table).map_err(io_error)?)
                .filter(|&compacted| compacted != mvcc::NEVER_COMPACTED),
            ..Default::default()
        };
        let history = txn.open_table(KV_REVISIONS).map_err(io_error)?;
        for item in history.iter().map_err(io_error)? {
            let (revision, event) = item.map_err(io_error)?;
            data.kv_revisions.push(pb::KeyValuePair {
                key: revision.value().to_vec(),
                value: event.value().to_vec(),
            });
        }
        // The live key-values in full, as format 1 stored them (what `install_data` checks):
        // each live key's newest put, found with an index of this view's own history (the
        // member's index has moved on since the view was pinned).
        let live = mvcc::KeyIndex::of(txn).map_err(io_error)?.live_revisions();
        for revision in live {
            let row = history
                .get(encoding::encode_revision(revision).as_slice())
                .map_err(io_error)?
                .ok_or_else(|| io_error(format!("history has no put at {revision:?}")))?;
            let record = row
                .value()
                .strip_prefix(b"P")
                .ok_or_else(|| io_error(format!("history has no put at {revision:?}")))?;
            let kv = mvcc::decode(record).map_err(io_error)?;
            data.kv.push(pb::KeyValuePair {
                key: kv.key,
                value: record.to_vec(),
            });
        }
        let leases = txn.open_table(LEASES).map_err(io_error)?;
        for item in leases.iter().map_err(io_error)? {
            let (id, record) = item.map_err(io_error)?;
            data.leases.push(pb::KeyValuePair {
                key: id.value().to_be_bytes().to_vec(),
                value: record.value().to_vec(),
            });
        }
        Ok(data.encode_to_vec())
    }
}

/// Replaces the state machine with a snapshot's data, durably, and the key index with one
/// built from the snapshot's history.
fn install_data(
    db: &Database,
    index: &mvcc::Index,
    data: &pb::SnapshotData,
    state: &AppliedState,
) -> Result<(), io::Error> {
    let txn = storage::begin_write(db, Durability::Immediate).map_err(io_error)?;
    let mut history = txn.open_table(KV_REVISIONS).map_err(io_error)?;
    history.retain(|_, _| false).map_err(io_error)?;
    for row in &data.kv_revisions {
        history
            .insert(row.key.as_slice(), row.value.as_slice())
            .map_err(io_error)?;
    }
    drop(history);
    // The index is derived from history; the snapshot's copy of the live keys must agree.
    let keys = mvcc::KeyIndex::from_rows(
        data.kv_revisions
            .iter()
            .map(|row| (row.key.as_slice(), row.value.as_slice())),
        data.compacted.unwrap_or(mvcc::NEVER_COMPACTED),
    )
    .map_err(io_error)?;
    let live = keys.live_revisions().len();
    if live != data.kv.len() {
        return Err(io_error(format!(
            "corrupt snapshot: {} live keys, but its history has {live}",
            data.kv.len()
        )));
    }
    // Leases, and which keys each has (derived from the live keys' lease fields).
    let mut leases = txn.open_table(LEASES).map_err(io_error)?;
    leases.retain(|_, _| false).map_err(io_error)?;
    for row in &data.leases {
        let id: [u8; 8] = row
            .key
            .as_slice()
            .try_into()
            .map_err(|_| io_error("corrupt lease ID in snapshot"))?;
        leases
            .insert(i64::from_be_bytes(id), row.value.as_slice())
            .map_err(io_error)?;
    }
    drop(leases);
    let mut lease_keys = txn.open_table(LEASE_KEYS).map_err(io_error)?;
    lease_keys.retain(|_, _| false).map_err(io_error)?;
    for row in &data.kv {
        let kv = encoding::decode_key_value(&row.value)
            .ok_or_else(|| io_error("corrupt key-value in snapshot"))?;
        if kv.lease != 0 {
            lease_keys
                .insert((kv.lease, kv.key.as_slice()), 0)
                .map_err(io_error)?;
        }
    }
    drop(lease_keys);
    let mut meta = txn.open_table(SM_META).map_err(io_error)?;
    if let Some(compacted) = data.compacted {
        meta.insert(
            META_COMPACTED,
            encoding::encode_u64(compacted as u64).as_slice(),
        )
        .map_err(io_error)?;
    } else {
        meta.remove(META_COMPACTED).map_err(io_error)?;
    }
    write_applied_state(
        &mut meta,
        state.last_applied,
        state.revision,
        Some(&state.membership),
    )?;
    drop(meta);
    if bugs::enabled(Bug::InstallKeepsIndex) {
        return txn.commit().map_err(io_error);
    }
    index.replace(keys, || txn.commit().map_err(io_error))
}

/// A snapshot's data. One this member built is a pinned redb view of the state machine at the
/// snapshot's index, encoded only when a follower needs it, so a member never holds a second,
/// encoded copy of its whole state (at 100,000 keys of 256 B that copy was 66 MB, and openraft
/// builds one at every start). One received from a leader is its encoded bytes until installed.
///
/// The cost moves to the disk: pages the view pins are not reused until the next snapshot
/// replaces it (`--snapshot-count` entries later), so a store whose every key is rewritten in
/// that span holds up to two versions of its pages.
#[derive(Clone)]
pub enum SnapshotData {
    View(Arc<redb::ReadTransaction>),
    Encoded(Vec<u8>),
}

impl SnapshotData {
    /// The encoded snapshot (`pb::SnapshotData`); a view is dumped off the async path.
    pub async fn encode(self) -> Result<Vec<u8>, io::Error> {
        match self {
            SnapshotData::Encoded(bytes) => Ok(bytes),
            SnapshotData::View(view) => env::blocking(move || StateMachine::dump(&view)).await,
        }
    }
}

/// Makes `snapshot` the current one unless a newer one is already there: a build runs in its
/// own task, so an installed (newer) snapshot may land before an older build finishes.
fn keep_newest(current: &Mutex<Option<Snapshot>>, snapshot: Snapshot) {
    let mut current = current.lock().expect("snapshot lock");
    let newer = current
        .as_ref()
        .is_none_or(|existing| existing.meta.last_log_id <= snapshot.meta.last_log_id);
    if newer {
        *current = Some(snapshot);
    }
}

/// Builds a snapshot from the view captured when it was created.
pub struct SnapshotBuilder {
    /// A consistent view of the state machine, taken when openraft asked for the builder; the
    /// dump itself runs in `build_snapshot`, which openraft runs off the apply path, so writes
    /// go on meanwhile (dumping in `get_snapshot_builder` stalled every write for the whole
    /// dump: 47 ms with snapshots every 2,000 entries, ~100 ms on a 100k-key state).
    view: Option<redb::ReadTransaction>,
    current_snapshot: Arc<Mutex<Option<Snapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let view = self
            .view
            .take()
            .ok_or_else(|| io_error("snapshot builder used twice, or no view to build from"))?;
        let snapshot = Snapshot {
            meta: StateMachine::snapshot_meta(&view)?,
            snapshot: SnapshotData::View(Arc::new(view)),
        };
        keep_newest(&self.current_snapshot, snapshot.clone());
        Ok(snapshot)
    }
}

impl Applier {
    /// Applies `batch` in one transaction, answers its clients, commits it (durably once a
    /// [`SYNC_INTERVAL`]), then records and announces it. A short batch of plain puts is
    /// answered before it is applied ([`Applier::answer_early`]). Answers whether the commit
    /// was durable.
    async fn apply(
        &mut self,
        mut batch: Vec<EntryResponder<TypeConfig>>,
    ) -> Result<bool, io::Error> {
        if batch.is_empty() {
            return Ok(false);
        }
        self.unsynced_entries += batch.len() as u64;
        let now = self.clock.monotonic();
        let durable = self.unsynced_entries >= SYNC_EVERY_ENTRIES
            || now.since(self.synced_at) >= SYNC_INTERVAL;
        let durability = if durable {
            self.unsynced_entries = 0;
            self.synced_at = now;
            Durability::Immediate
        } else {
            Durability::None
        };
        // A batch of one or two entries is what a single client waits for: handing it to another
        // thread would cost more than it saves (put --clients 1: 1,920 -> 2,050 ops/s).
        let inline = !durable
            && batch.len() <= INLINE_APPLY_ENTRIES
            && !batch.iter().any(|(entry, _)| {
                matches!(
                    &entry.payload,
                    EntryPayload::Normal(pb::Command {
                        op: Some(pb::command::Op::Compaction(_)),
                        ..
                    })
                )
            });
        // What the answers of a short batch of plain puts are does not depend on the store:
        // they leave before it is applied (one client's put: ~33 us of its latency), and the
        // apply below checks each against what its entry applies as.
        let early = if inline {
            self.answer_early(&mut batch).await
        } else {
            None
        };
        let answered_early = early.is_some();
        let db = self.db.clone();
        let index = self.index.clone();
        // Puts read the value they replace only for a watcher that wants it (`prev_kv`).
        let read_prev = self.hub.wants_prev();
        let work = move || -> Result<_, io::Error> {
            let txn = storage::begin_write(&db, durability).map_err(io_error)?;
            // Opened once for the batch: the writer borrows it while commands apply.
            let mut meta = Some(txn.open_table(SM_META).map_err(io_error)?);
            let mut revision = revision_in(meta.as_ref().expect("opened above"))?;
            let mut new_membership = None;
            let mut last_applied = None;
            let mut responses = Vec::with_capacity(batch.len());
            let mut changes = Vec::new();
            let mut lease_events = Vec::new();
            // Opened at the batch's first command and kept for the rest of it.
            let mut writer: Option<mvcc::Writer> = None;
            for (entry, _) in &batch {
                let response = match &entry.payload {
                    EntryPayload::Normal(command)
                        if command.lessor_term != 0
                            && command.lessor_term != entry.log_id.leader_id.term =>
                    {
                        CommandResponse {
                            revision,
                            result: CommandResult::Rejected(apply::ApplyError::StaleLessorTerm),
                        }
                    }
                    EntryPayload::Normal(command) => {
                        let writer = match &mut writer {
                            Some(writer) => writer,
                            None => {
                                let meta = meta.take().expect("meta is the writer's");
                                let mut new = mvcc::Writer::with_meta(&txn, meta, &index, revision)
                                    .map_err(io_error)?;
                                new.set_read_prev(read_prev);
                                writer.insert(new)
                            }
                        };
                        let response = apply::apply_on(writer, revision, command, &mut changes)
                            .map_err(io_error)?;
                        assert!(response.revision >= revision, "revision went back");
                        revision = response.revision;
                        if let Some(event) = lease_event(command, &response.result) {
                            lease_events.push((entry.log_id.index, event));
                        }
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        new_membership = Some(StoredMembership::new(
                            Some(entry.log_id),
                            membership.clone(),
                        ));
                        CommandResponse {
                            revision,
                            result: CommandResult::None,
                        }
                    }
                    EntryPayload::Blank => CommandResponse {
                        revision,
                        result: CommandResult::None,
                    },
                };
                if let Some(early) = early
                    .as_ref()
                    .filter(|_| !bugs::enabled(Bug::EarlyAnswerStale))
                {
                    if early[responses.len()] != response {
                        return Err(io_error(format!(
                            "entry {} was answered {:?} before it was applied, and applies as {:?}",
                            entry.log_id.index,
                            early[responses.len()],
                            response
                        )));
                    }
                }
                last_applied = Some(entry.log_id);
                probe::record(|| Probe::Applied {
                    index: entry.log_id.index,
                    term: entry.log_id.leader_id.term,
                    digest: payload_digest(entry),
                });
                responses.push(response);
            }
            let (after_commit, mut meta) = match (writer, meta) {
                (Some(writer), _) => writer.finish_with_meta(),
                (None, meta) => (Default::default(), meta.expect("no writer took it")),
            };
            write_applied_state(&mut meta, last_applied, revision, new_membership.as_ref())?;
            let compacted = mvcc::compacted_revision(&meta).map_err(io_error)?;
            drop(meta);
            let applied = Applied {
                revision,
                compacted,
                index: last_applied.map_or(0, |log_id| log_id.index),
            };
            // A batch applied on another thread commits there too: a second hop for the commit
            // would cost more than answering before it saves.
            let uncommitted = if inline {
                Some((txn, after_commit))
            } else {
                txn.commit().map_err(io_error)?;
                after_commit.apply(&index);
                None
            };
            Ok(Prepared {
                uncommitted,
                batch,
                responses,
                changes,
                lease_events,
                applied,
            })
        };
        let prepared = if inline {
            env::inline_io(work)
        } else {
            env::blocking(work).await
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) if answered_early => return Err(self.stop_answered(error)),
            Err(error) => return Err(error),
        };
        let (batch, responses, applied) = (prepared.batch, prepared.responses, prepared.applied);
        let (uncommitted, changes) = (prepared.uncommitted, prepared.changes);
        self.leases.publish(prepared.lease_events);
        // A short batch's clients are answered before its commit: each entry is already durable
        // in the log (a crash re-applies it), and the commit then runs while the answers travel
        // and the clients send their next requests (one client's put: ~30 us of its latency).
        // Until the batch is recorded after the commit the hub reports the state before it, so
        // the hub is told first: every read, and every watch created, waits for the record
        // (`Hub::settled`) and sees what was answered.
        let answers = batch.iter().any(|(_, responder)| responder.is_some());
        if answers {
            self.hub.answering(applied.index);
            for ((_, responder), response) in batch.into_iter().zip(responses) {
                if let Some(responder) = responder {
                    responder.send(response);
                }
            }
            // The member runs on one thread: let the answers leave before the commit and the
            // watch streams' events (a hundred watchers' deliveries took ~0.4 ms ahead of the
            // put's answer, so a serial writer waited for them; watch events/s 1.25x, README).
            // Not when there is neither (yielding after every batch: put at 64 clients 0.90x in
            // one A/B of three runs).
            if uncommitted.is_some() || (!changes.is_empty() && self.hub.has_subscribers()) {
                tokio::task::yield_now().await;
            }
        }
        if let Some((txn, after_commit)) = uncommitted {
            self.disk.before_commit().await;
            let committed = env::inline_io(|| txn.commit().map_err(io_error));
            if let Err(error) = committed {
                return Err(self.stop_answered(error));
            }
            after_commit.apply(&self.index);
        }
        if durable {
            self.disk.after_sync().await;
        }
        self.hub.record(changes, applied);
        self.hub.announce();
        Ok(durable)
    }

    /// A batch whose clients were answered failed to apply or commit. Readers waiting for what
    /// was answered must not wait for ever: the applier stops, its failure fails them, and so
    /// does the member. Returns `error` for the caller to pass on.
    fn stop_answered(&self, error: io::Error) -> io::Error {
        *self.failed.lock().expect("applier failure") = Some(error.to_string());
        self.hub.abandon();
        error
    }

    /// Answers the clients of a batch of plain puts (and entries that change nothing) before it
    /// is applied: their answers depend only on the store's revision, which the hub holds (every
    /// earlier batch is recorded). The applier then checks each answer against what the entry
    /// applies as, and stops on a difference. Returns the answers given, or `None` when the
    /// batch has another command or nobody to answer.
    async fn answer_early(
        &mut self,
        batch: &mut [EntryResponder<TypeConfig>],
    ) -> Option<Vec<CommandResponse>> {
        if batch.iter().all(|(_, responder)| responder.is_none()) {
            return None;
        }
        let mut revision = self.hub.applied().revision;
        if bugs::enabled(Bug::EarlyAnswerStale) {
            revision -= 1;
        }
        let mut answers = Vec::with_capacity(batch.len());
        for (entry, _) in batch.iter() {
            let answer = match &entry.payload {
                EntryPayload::Normal(pb::Command {
                    op: Some(pb::command::Op::Put(put)),
                    lessor_term: 0,
                    ..
                }) => apply::plain_put_answer(put, revision)?,
                EntryPayload::Normal(_) => return None,
                EntryPayload::Membership(_) | EntryPayload::Blank => CommandResponse {
                    revision,
                    result: CommandResult::None,
                },
            };
            revision = answer.revision;
            answers.push(answer);
        }
        let last = batch.last().map_or(0, |(entry, _)| entry.log_id.index);
        self.hub.answering(last);
        for ((_, responder), answer) in batch.iter_mut().zip(&answers) {
            if let Some(responder) = responder.take() {
                responder.send(answer.clone());
            }
        }
        // Let the answers leave before the batch is applied and committed.
        tokio::task::yield_now().await;
        Some(answers)
    }

    /// Makes every commit so far durable: an empty commit with `Immediate` durability fsyncs
    /// the earlier `Durability::None` commits of applied entries with it.
    async fn sync(&mut self) -> Result<(), io::Error> {
        let db = self.db.clone();
        env::blocking(move || {
            let txn = storage::begin_write(&db, Durability::Immediate).map_err(io_error)?;
            txn.commit().map_err(io_error)
        })
        .await?;
        self.disk.after_sync().await;
        self.unsynced_entries = 0;
        self.synced_at = self.clock.monotonic();
        Ok(())
    }
}

/// The applier task: takes every piece of work queued so far (up to [`MERGED_ENTRIES`]
/// entries), applies it in one transaction, then answers the barriers among it. After a failure
/// nothing more is applied: clients waiting for the entries are dropped (their requests fail)
/// and every barrier gets the error, as does openraft's next `apply`, which stops the member.
async fn run_applier(mut applier: Applier, mut queue: mpsc::Receiver<Work>) {
    let mut failed: Option<String> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        let mut barriers = Vec::new();
        let mut next = Some(first);
        while let Some(work) = next {
            match work {
                Work::Apply(entries) => batch.extend(entries),
                Work::Barrier { sync, done } => barriers.push((sync, done)),
            }
            next = if batch.len() < MERGED_ENTRIES {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        let result = match &failed {
            Some(error) => Err(error.clone()),
            None => {
                let mut result = applier.apply(batch).await;
                let sync = barriers.iter().any(|(sync, _)| *sync);
                if sync && matches!(result, Ok(false)) {
                    result = applier.sync().await.map(|()| true);
                }
                result.map(|_| ()).map_err(|error| error.to_string())
            }
        };
        if let Err(error) = &result {
            if failed.is_none() {
                *applier.failed.lock().expect("applier failure") = Some(error.clone());
                failed = Some(error.clone());
            }
        }
        for (_, done) in barriers {
            let _ = done.send(result.clone());
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.barrier(false).await?;
        let state = self
            .read(|txn| {
                let meta = txn.open_table(SM_META).map_err(io_error)?;
                read_applied_state(&meta)
            })
            .await?;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if let Some(error) = self.failure() {
            return Err(error);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.applier
            .send(Work::Apply(batch))
            .await
            .map_err(|_| io_error("the state machine's applier stopped"))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Durable first: the log is purged up to the snapshot once it is built, and what the
        // state machine holds only in non-durable commits could not be replayed after that.
        let durable = self.sync().await.is_ok();
        SnapshotBuilder {
            view: durable.then(|| self.db.begin_read().ok()).flatten(),
            current_snapshot: self.current_snapshot.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        // Nothing applied before may commit after the snapshot is in.
        self.barrier(false).await?;
        let encoded = snapshot.encode().await?;
        let data = pb::SnapshotData::decode(encoded.as_slice()).map_err(io_error)?;
        drop(encoded);
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision: data.revision,
        };
        let db = self.db.clone();
        let index = self.index.clone();
        let applied = Applied {
            revision: data.revision,
            compacted: data.compacted.unwrap_or(mvcc::NEVER_COMPACTED),
            index: meta.last_log_id.map_or(0, |log_id| log_id.index),
        };
        // The installed state, pinned as this member's current snapshot (applies wait for this).
        let view = env::blocking(move || {
            install_data(&db, &index, &data, &state)?;
            db.begin_read().map_err(io_error)
        })
        .await?;
        self.hub.reset(applied);
        let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
        probe::record(|| Probe::SnapshotInstalled { index });
        self.leases.publish([(index, LeaseEvent::Reset)]);
        keep_newest(
            &self.current_snapshot,
            Snapshot {
                meta: meta.clone(),
                snapshot: SnapshotData::View(Arc::new(view)),
            },
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.current_snapshot.lock().expect("snapshot lock").clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ReadOnly;
    use crate::pb::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest,
    };
    use redb::backends::InMemoryBackend;

    /// A store: the database and its key index.
    struct Store {
        db: Database,
        index: mvcc::Index,
    }

    impl std::ops::Deref for Store {
        type Target = Database;
        fn deref(&self) -> &Database {
            &self.db
        }
    }

    impl Store {
        fn reader(&self) -> mvcc::Reader {
            self.index.reader(&self.db).unwrap()
        }
    }

    fn database() -> Store {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        crate::storage::create_tables(&db).unwrap();
        let index = mvcc::Index::load(&db).unwrap();
        Store { db, index }
    }

    fn apply_all(db: &Store, ops: Vec<pb::command::Op>) -> i64 {
        let txn = db.begin_write().unwrap();
        let mut revision = INITIAL_REVISION;
        let mut after_commit = Vec::new();
        for op in ops {
            let command = pb::Command {
                op: Some(op),
                ..Default::default()
            };
            let (response, after) =
                apply::apply(&txn, &db.index, revision, &command, &mut Vec::new(), true).unwrap();
            revision = response.revision;
            after_commit.push(after);
        }
        write_applied_state(&mut txn.open_table(SM_META).unwrap(), None, revision, None).unwrap();
        txn.commit().unwrap();
        for after in after_commit {
            after.apply(&db.index);
        }
        revision
    }

    fn observe(db: &Store) -> (u32, i64, Vec<i64>) {
        let reader = db.reader();
        let store = ReadOnly::open(&reader).unwrap();
        let hash = store.hash_kv(0).unwrap();
        let counts = (store.compacted()..=store.revision())
            .map(|revision| {
                let request = RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    revision,
                    ..Default::default()
                };
                store.range(&request).unwrap().count
            })
            .collect();
        (hash, store.compacted(), counts)
    }

    /// What `Applier::answer_early` tells a client before the put is applied is what the put
    /// applies as: `plain_put_answer` gives apply's own response for a plain put (a new key,
    /// another, then over the first), and nothing for a put whose answer reads the store.
    #[test]
    fn plain_puts_are_answered_as_they_apply() {
        use pb::command::Op;
        let plain = |key: &str| PutRequest {
            key: key.into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        };
        let db = database();
        let txn = db.begin_write().unwrap();
        let mut revision = INITIAL_REVISION;
        for put in [plain("a"), plain("b"), plain("a")] {
            let expected = apply::plain_put_answer(&put, revision).expect("a plain put");
            let command = pb::Command {
                op: Some(Op::Put(put)),
                ..Default::default()
            };
            let (response, _) =
                apply::apply(&txn, &db.index, revision, &command, &mut Vec::new(), false).unwrap();
            assert_eq!(response, expected);
            revision = response.revision;
        }
        for put in [
            PutRequest {
                prev_kv: true,
                ..plain("a")
            },
            PutRequest {
                lease: 7,
                ..plain("a")
            },
            PutRequest {
                ignore_value: true,
                ..plain("a")
            },
            PutRequest {
                ignore_lease: true,
                ..plain("a")
            },
        ] {
            assert_eq!(apply::plain_put_answer(&put, revision), None, "{put:?}");
        }
    }

    #[test]
    fn a_snapshot_carries_history_and_compaction_and_rebuilds_the_index() {
        use pb::command::Op;
        let put = |k: &str, v: &str| {
            Op::Put(PutRequest {
                key: k.into(),
                value: v.to_owned().into_bytes().into(),
                ..Default::default()
            })
        };
        let source = database();
        apply_all(
            &source,
            vec![
                put("a", "1"),
                put("b", "1"),
                put("a", "2"),
                Op::DeleteRange(DeleteRangeRequest {
                    key: "b".into(),
                    ..Default::default()
                }),
                put("c", "1"),
                Op::Compaction(CompactionRequest {
                    revision: 4,
                    physical: false,
                }),
                put("a", "3"),
            ],
        );
        let view = source.begin_read().unwrap();
        let (meta, bytes) = (
            StateMachine::snapshot_meta(&view).unwrap(),
            StateMachine::dump(&view).unwrap(),
        );
        let data = pb::SnapshotData::decode(bytes.as_slice()).unwrap();
        assert_eq!(data.compacted, Some(4));
        let target = database();
        // Whatever the target held before is replaced.
        apply_all(&target, vec![put("zzz", "old")]);
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision: data.revision,
        };
        install_data(&target, &target.index, &data, &state).unwrap();
        let expected = observe(&source);
        assert_eq!(expected.1, 4);
        assert_eq!(observe(&target), expected);
        // The live table is derived from history, values included.
        let live = |db: &Store| {
            let request = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            };
            ReadOnly::open(&db.reader())
                .unwrap()
                .range(&request)
                .unwrap()
                .kvs
        };
        assert_eq!(live(&source).len(), 2);
        assert_eq!(live(&target), live(&source));
        // A snapshot whose live keys disagree with its history is refused.
        let mut short = data.clone();
        short.kv.pop();
        let refused = install_data(&target, &target.index, &short, &state).unwrap_err();
        assert!(refused.to_string().contains("1 live keys"), "{refused}");
        assert_eq!(live(&target), live(&source));
    }

    /// Applies one command on top of `revision` in its own transaction.
    fn apply_one(
        db: &Store,
        revision: i64,
        op: pb::command::Op,
    ) -> (apply::CommandResponse, Vec<mvcc::Change>) {
        let txn = db.begin_write().unwrap();
        let mut changes = Vec::new();
        let command = pb::Command {
            op: Some(op),
            ..Default::default()
        };
        let (response, after_commit) =
            apply::apply(&txn, &db.index, revision, &command, &mut changes, true).unwrap();
        let mut meta = txn.open_table(SM_META).unwrap();
        write_applied_state(&mut meta, None, response.revision, None).unwrap();
        drop(meta);
        txn.commit().unwrap();
        after_commit.apply(&db.index);
        (response, changes)
    }

    mod lease_ops {
        use crate::pb::etcdserverpb::{
            LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest,
            PutRequest,
        };
        use crate::pb::raft::command::Op;

        pub fn grant(id: i64, ttl: i64) -> Op {
            Op::LeaseGrant(LeaseGrantRequest { id, ttl })
        }
        pub fn revoke(id: i64) -> Op {
            Op::LeaseRevoke(LeaseRevokeRequest { id })
        }
        pub fn checkpoint(id: i64, remaining_ttl: i64) -> Op {
            Op::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint { id, remaining_ttl }],
            })
        }
        pub fn put(key: &str, lease: i64) -> Op {
            Op::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec().into(),
                lease,
                ..Default::default()
            })
        }
    }

    fn lease_of(db: &Store, id: i64) -> Option<(i64, i64)> {
        let txn = db.begin_read().unwrap();
        let leases = txn.open_table(LEASES).unwrap();
        let record = leases.get(id).unwrap()?;
        encoding::decode_lease(record.value())
    }

    fn keys_of(db: &Store, id: i64) -> Vec<String> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(LEASE_KEYS).unwrap();
        let mut keys = Vec::new();
        for item in table.iter().unwrap() {
            let (entry, _) = item.unwrap();
            let (lease, key) = entry.value();
            if lease == id {
                keys.push(String::from_utf8(key.to_vec()).unwrap());
            }
        }
        keys
    }

    #[test]
    fn leases_attach_keys_and_a_revoke_deletes_them_at_one_revision() {
        use apply::{ApplyError, CommandResult};
        use lease_ops::*;
        let db = database();
        let rejected = |response: apply::CommandResponse| match response.result {
            CommandResult::Rejected(error) => error,
            other => panic!("not rejected: {other:?}"),
        };
        // A put naming a lease that does not exist changes nothing.
        let (response, _) = apply_one(&db, 1, put("a", 7));
        assert_eq!(rejected(response.clone()), ApplyError::LeaseNotFound);
        assert_eq!(response.revision, 1);
        // A grant records the lease without a new revision; a second grant of the ID fails.
        let (response, _) = apply_one(&db, 1, grant(7, 10));
        assert!(
            matches!(response.result, CommandResult::LeaseGrant(ref g) if g.id == 7 && g.ttl == 10)
        );
        assert_eq!(response.revision, 1);
        assert_eq!(
            rejected(apply_one(&db, 1, grant(7, 30)).0),
            ApplyError::LeaseExists
        );
        assert_eq!(lease_of(&db, 7), Some((10, 0)));
        apply_one(&db, 1, grant(8, 10));
        // Puts attach keys; re-putting with another lease or none moves or detaches them.
        assert_eq!(apply_one(&db, 1, put("a", 7)).0.revision, 2);
        apply_one(&db, 2, put("b", 7));
        apply_one(&db, 3, put("c", 0));
        apply_one(&db, 4, put("d", 7));
        apply_one(&db, 5, put("b", 0));
        apply_one(&db, 6, put("d", 8));
        assert_eq!(keys_of(&db, 7), ["a"]);
        assert_eq!(keys_of(&db, 8), ["d"]);
        // A checkpoint records the remaining TTL; one for an unknown lease is ignored.
        apply_one(&db, 7, checkpoint(7, 4));
        apply_one(&db, 7, checkpoint(99, 4));
        assert_eq!(lease_of(&db, 7), Some((10, 4)));
        assert_eq!(lease_of(&db, 99), None);
        // Revoking deletes what is attached, at one new revision, as delete events with their
        // previous generations (what watchers are sent).
        apply_one(&db, 7, put("e", 7));
        let (response, changes) = apply_one(&db, 8, revoke(7));
        assert!(matches!(response.result, CommandResult::LeaseRevoke(_)));
        assert_eq!(response.revision, 9);
        let deleted: Vec<(String, i64, bool)> = changes
            .iter()
            .map(|c| match &c.event {
                mvcc::HistoryEvent::Delete(kv) => (
                    String::from_utf8(kv.key.clone()).unwrap(),
                    c.revision.main,
                    c.prev.as_ref().is_some_and(|p| p.lease == 7),
                ),
                other => panic!("not a delete: {other:?}"),
            })
            .collect();
        assert_eq!(
            deleted,
            [("a".to_string(), 9, true), ("e".to_string(), 9, true)]
        );
        assert_eq!(lease_of(&db, 7), None);
        assert!(keys_of(&db, 7).is_empty());
        assert_eq!(
            rejected(apply_one(&db, 9, revoke(7)).0),
            ApplyError::LeaseNotFound
        );
        // A lease with nothing attached is revoked without a new revision.
        apply_one(&db, 9, put("d", 0));
        let (response, changes) = apply_one(&db, 10, revoke(8));
        assert_eq!((response.revision, changes.len()), (10, 0));
    }

    #[test]
    fn a_snapshot_carries_leases_and_rebuilds_their_keys() {
        use lease_ops::*;
        let source = database();
        apply_all(
            &source,
            vec![
                grant(5, 60),
                put("x", 5),
                put("y", 5),
                put("z", 0),
                checkpoint(5, 42),
            ],
        );
        let view = source.begin_read().unwrap();
        let (meta, bytes) = (
            StateMachine::snapshot_meta(&view).unwrap(),
            StateMachine::dump(&view).unwrap(),
        );
        let data = pb::SnapshotData::decode(bytes.as_slice()).unwrap();
        let target = database();
        apply_all(&target, vec![grant(9, 5), put("old", 9)]);
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision: data.revision,
        };
        install_data(&target, &target.index, &data, &state).unwrap();
        assert_eq!(lease_of(&target, 5), Some((60, 42)));
        assert_eq!(lease_of(&target, 9), None);
        assert_eq!(keys_of(&target, 5), ["x", "y"]);
        assert!(keys_of(&target, 9).is_empty());
        let (response, changes) = apply_one(&target, data.revision, revoke(5));
        assert_eq!(response.revision, data.revision + 1);
        assert_eq!(changes.len(), 2);
    }
}
