//! The Raft log, vote and committed index, in the write-ahead log (`storage/wal.rs`).
//!
//! Durability: `save_vote`, `append`, `truncate_after` and `purge` write their record and
//! fsync before they return; `append` returns once its entries are in memory and queued, and
//! tells openraft they are flushed only after their fsync. One writer task takes the queue in
//! order (`run_writer`), so openraft goes on while a write is in flight: a leader sends the
//! entries to its followers while its own fsync runs, and the state machine applies one batch
//! while the next is written. The queue holds one job: an `append` behind a queued one waits,
//! and openraft gathers the client requests that arrive meanwhile into its next `append`, so
//! under load one write and one fsync cover many requests (group commit) and there are never
//! more than two writes' worth of entries in flight. The committed index is a
//! hint for faster recovery: kept in memory and written with the next entries, so after a crash
//! it may be older than what this member had acknowledged. That is safe only because a restarted
//! member never resumes leadership of its old term (`enable_leader_restore` is off in `node`).
//!
//! What is in memory: every entry's log id and frame (24 bytes or so an entry, until purged),
//! and the bodies of the newest [`CACHED_ENTRIES`], which replication and the state machine
//! read right after they are appended. Older entries are read back from their frames.
//!
//! Replay. The records of every segment, oldest first, rebuild the log: a segment header sets
//! the vote, the purge point and the last entry before it (on the oldest segment; on the others
//! it must match what replay has reached), entries replace any entry at their index and after,
//! a truncation drops the entries after its point, a purge those up to it. A gap between the
//! purge point and the first entry is corruption: entries that were durable are missing.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::codec;
use super::{io_error, Entry, LogId, Membership, TypeConfig, Vote};
use crate::env::bugs::{self, Bug};
use crate::env::probe::{self, Probe};
use crate::env::{self, Disk};
use crate::pb::raft as pb;
use crate::pb::raft::wal_record::Record;
use crate::storage::wal::{FrameLoc, Wal, WalError, WalReader};
use crate::storage::StorageError;

/// How many of the newest entries keep their bodies in memory.
pub const CACHED_ENTRIES: usize = 4096;

/// One entry of the log.
#[derive(Debug, Clone)]
struct Slot {
    log_id: LogId,
    /// Where its frame is; `None` while its write is in flight.
    frame: Option<FrameLoc>,
    /// Its body, for the newest entries and those not yet written.
    entry: Option<Entry>,
}

/// The log as replayed and kept up to date.
#[derive(Debug, Default)]
struct Log {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    /// The index of `slots[0]`.
    first_index: u64,
    slots: VecDeque<Slot>,
    /// How many slots from the back still have their bodies.
    cached: usize,
    /// The highest entry index each segment ever held: a segment goes once a purge passes it.
    segment_max_index: BTreeMap<u64, u64>,
}

impl Log {
    fn last_log_id(&self) -> Option<LogId> {
        self.slots
            .back()
            .map(|slot| slot.log_id)
            .or(self.last_purged)
    }

    /// The index the next appended entry may have at most.
    fn next_index(&self) -> u64 {
        self.first_index + self.slots.len() as u64
    }

    /// Drops every entry at `index` and after.
    fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first_index) as usize;
        if keep < self.slots.len() {
            let dropped = self.slots.len() - keep;
            self.slots.truncate(keep);
            self.cached = self.cached.saturating_sub(dropped);
        }
    }

    /// Drops every entry up to and including `log_id` and records the purge.
    fn purge_to(&mut self, log_id: LogId) {
        let drop = (log_id.index + 1).saturating_sub(self.first_index) as usize;
        let drop = drop.min(self.slots.len());
        self.slots.drain(..drop);
        self.cached = self.cached.min(self.slots.len());
        self.first_index = self.first_index.max(log_id.index + 1);
        if self.slots.is_empty() {
            self.first_index = log_id.index + 1;
        }
        self.last_purged = Some(log_id);
    }

    /// Appends `entries` (consecutive), replacing any entry at the first one's index and after.
    fn push(&mut self, entries: Vec<(LogId, Option<Entry>)>) -> Result<(), String> {
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        if self.slots.is_empty() && first.index >= self.first_index {
            // An empty log may start anywhere after its purge point (openraft's conformance
            // suite appends so); replay checks separately that purged segments left no gap.
            self.first_index = first.index;
        }
        if first.index > self.next_index() {
            return Err(format!(
                "entry {} follows entry {} with a gap",
                first.index,
                self.next_index().saturating_sub(1)
            ));
        }
        if first.index < self.first_index {
            return Err(format!(
                "entry {} is at or before the purge point {:?}",
                first.index, self.last_purged
            ));
        }
        self.truncate_from(first.index);
        for (log_id, entry) in entries {
            if entry.is_some() {
                self.cached += 1;
            }
            self.slots.push_back(Slot {
                log_id,
                frame: None,
                entry,
            });
        }
        Ok(())
    }

    /// Drops the bodies of written entries beyond the newest [`CACHED_ENTRIES`].
    fn evict(&mut self) {
        while self.cached > CACHED_ENTRIES {
            let position = self.slots.len() - self.cached;
            let slot = &mut self.slots[position];
            if slot.frame.is_none() {
                break;
            }
            slot.entry = None;
            self.cached -= 1;
        }
    }

    fn note_frame(&mut self, index: u64, loc: FrameLoc) {
        let max = self.segment_max_index.entry(loc.segment).or_insert(index);
        *max = (*max).max(index);
    }

    /// The state a segment started now begins with.
    fn segment_header(&self) -> pb::WalSegment {
        pb::WalSegment {
            segment: 0,
            vote: self.vote.as_ref().map(codec::vote_to_pb),
            last_purged: self.last_purged.as_ref().map(codec::log_id_to_pb),
            last_log_id: self.last_log_id().as_ref().map(codec::log_id_to_pb),
            committed: self.committed.as_ref().map(codec::log_id_to_pb),
        }
    }
}

fn wal_io(error: WalError) -> io::Error {
    io_error(error)
}

fn decode_error(e: impl std::fmt::Display) -> WalError {
    WalError::Corrupted(format!("a record does not decode: {e}"))
}

/// Rebuilds the log from the replayed frames (see the module comment).
fn replay(frames: Vec<crate::storage::wal::Frame>) -> Result<Log, WalError> {
    let mut log = Log::default();
    // On the oldest segment: the last entry before it, which a purge must cover.
    let mut missing_upto: Option<u64> = None;
    let mut started = false;
    for frame in frames {
        let loc = frame.loc;
        match frame.record.record {
            Some(Record::Segment(header)) => {
                let last_log_id = codec::opt_log_id_from_pb(&header.last_log_id);
                if !started {
                    started = true;
                    log.vote = match &header.vote {
                        Some(_) => Some(codec::vote_from_pb(&header.vote).map_err(decode_error)?),
                        None => None,
                    };
                    log.committed = codec::opt_log_id_from_pb(&header.committed);
                    log.last_purged = codec::opt_log_id_from_pb(&header.last_purged);
                    let next = last_log_id.map_or(0, |log_id| log_id.index + 1);
                    log.first_index = next;
                    missing_upto = last_log_id.map(|log_id| log_id.index);
                } else if last_log_id != log.last_log_id() {
                    return Err(WalError::Corrupted(format!(
                        "segment {} starts after {last_log_id:?}, but the log before it ends at {:?}",
                        header.segment,
                        log.last_log_id()
                    )));
                }
            }
            Some(Record::Entries(entries)) => {
                let mut decoded = Vec::with_capacity(entries.entries.len());
                for entry in entries.entries {
                    let entry = codec::entry_from_pb(entry).map_err(decode_error)?;
                    decoded.push((entry.log_id, None));
                }
                let indexes: Vec<u64> = decoded.iter().map(|(id, _)| id.index).collect();
                if indexes.windows(2).any(|pair| pair[1] != pair[0] + 1) {
                    return Err(WalError::Corrupted(
                        "a frame's entries are not consecutive".into(),
                    ));
                }
                log.push(decoded).map_err(WalError::Corrupted)?;
                for index in indexes {
                    let position = (index - log.first_index) as usize;
                    log.slots[position].frame = Some(loc);
                    log.note_frame(index, loc);
                }
                if let Some(committed) = codec::opt_log_id_from_pb(&entries.committed) {
                    log.committed = log.committed.max(Some(committed));
                }
            }
            Some(Record::Truncate(truncate)) => {
                let after = codec::opt_log_id_from_pb(&truncate.after);
                log.truncate_from(after.map_or(0, |log_id| log_id.index + 1));
                // Entries past the truncation need not have been there.
                missing_upto = match after {
                    Some(after) => missing_upto.map(|missing| missing.min(after.index)),
                    None => None,
                };
            }
            Some(Record::Purged(purged)) => log.purge_to(codec::log_id_from_pb(&purged)),
            Some(Record::Vote(vote)) => {
                log.vote = Some(codec::vote_from_pb(&Some(vote)).map_err(decode_error)?)
            }
            None => return Err(WalError::Corrupted("an empty record".into())),
        }
    }
    let purged = log.last_purged.map(|log_id| log_id.index);
    if let Some(missing) = missing_upto {
        if purged.is_none_or(|purged| purged < missing) {
            return Err(WalError::Corrupted(format!(
                "entries up to {missing} were in segments that are gone, but only {purged:?} \
                 were purged"
            )));
        }
    }
    log.cached = 0;
    Ok(log)
}

/// Reads the entries at `wanted` (index, frame) back from their frames, each frame once.
fn read_entries(
    reader: &WalReader,
    wanted: Vec<(u64, FrameLoc)>,
) -> Result<Vec<(u64, Entry)>, WalError> {
    let mut frames: BTreeMap<(u64, u64), Vec<pb::Entry>> = BTreeMap::new();
    let mut out = Vec::with_capacity(wanted.len());
    for (index, loc) in wanted {
        let frame = match frames.entry((loc.segment, loc.offset)) {
            std::collections::btree_map::Entry::Occupied(frame) => frame.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let Some(Record::Entries(entries)) = reader.read(loc)?.record else {
                    return Err(WalError::Corrupted(format!("no entries at {loc:?}")));
                };
                slot.insert(entries.entries)
            }
        };
        let entry = frame
            .iter()
            .find(|e| e.log_id.as_ref().is_some_and(|id| id.index == index))
            .cloned()
            .ok_or_else(|| WalError::Corrupted(format!("entry {index} is not at {loc:?}")))?;
        out.push((index, codec::entry_from_pb(entry).map_err(decode_error)?));
    }
    Ok(out)
}

/// What the store's clones and its writer task share.
struct Shared {
    log: Mutex<Log>,
    writer: Mutex<Wal>,
    reader: WalReader,
}

/// Records for the writer task, and who waits for them.
struct Job {
    records: Vec<pb::WalRecord>,
    sync: bool,
    /// The log's state before these records, for a segment started on the way.
    header: pb::WalSegment,
    done: Done,
}

enum Done {
    /// `append`: note where its entries went, then tell openraft they are flushed.
    Appended {
        ids: Vec<LogId>,
        callback: IOFlushed<TypeConfig>,
    },
    /// Everything else waits for its write to be done.
    Written(oneshot::Sender<Result<Vec<FrameLoc>, io::Error>>),
}

/// The log store of one member. Clones share the log (the log reader is a clone) and the
/// writer task, which ends when the last clone goes.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Job>,
}

/// The writer task: takes every job queued so far, writes their records in one write (one
/// fsync if any asked for it), then completes them in order. After a failed write nothing more
/// is written: each later job gets the same error (what reached the disk is no longer known).
async fn run_writer(shared: Arc<Shared>, disk: Disk, mut queue: mpsc::Receiver<Job>) {
    let mut failed: Option<String> = None;
    while let Some(first) = queue.recv().await {
        // The member runs on one thread and the write blocks it (`env::inline_io`): let the
        // tasks already runnable go first, so the leader's sends to its followers leave before
        // its fsync rather than after, and requests already read can join this write.
        tokio::task::yield_now().await;
        let mut jobs = vec![first];
        while let Ok(job) = queue.try_recv() {
            jobs.push(job);
        }
        if let Some(error) = &failed {
            fail_all(jobs, error, &shared);
            continue;
        }
        let sync = jobs.iter().any(|job| job.sync);
        let counts: Vec<usize> = jobs.iter().map(|job| job.records.len()).collect();
        let header = jobs[0].header;
        let records: Vec<pb::WalRecord> = jobs
            .iter_mut()
            .flat_map(|job| std::mem::take(&mut job.records))
            .collect();
        let written = env::inline_io(|| {
            let mut wal = shared.writer.lock().expect("wal writer lock");
            wal.append(&records, sync, || header)
        });
        match written {
            Ok((locs, _started)) => {
                if sync {
                    disk.after_sync().await;
                }
                let mut locs = locs.into_iter();
                for (job, count) in jobs.into_iter().zip(counts) {
                    let mine: Vec<FrameLoc> = locs.by_ref().take(count).collect();
                    job.done.complete(Ok(mine), &shared);
                }
            }
            Err(error) => {
                let error = error.to_string();
                fail_all(jobs, &error, &shared);
                failed = Some(error);
            }
        }
    }
}

fn fail_all(jobs: Vec<Job>, error: &str, shared: &Shared) {
    for job in jobs {
        job.done.complete(Err(io::Error::other(error)), shared);
    }
}

fn writer_stopped() -> io::Error {
    io_error("the log's writer stopped")
}

impl Done {
    fn complete(self, result: Result<Vec<FrameLoc>, io::Error>, shared: &Shared) {
        match self {
            Done::Written(sender) => {
                // The waiter may be gone (its member is stopping); nothing else needs to know.
                _ = sender.send(result);
            }
            Done::Appended { ids, callback } => match result {
                Ok(locs) => {
                    let loc = locs[0];
                    let mut log = shared.log.lock().expect("log lock");
                    for id in ids {
                        // The entry may have been replaced or purged since it was queued:
                        // only the entry this write holds gets its frame.
                        if id.index >= log.first_index && id.index < log.next_index() {
                            let position = (id.index - log.first_index) as usize;
                            let slot = &mut log.slots[position];
                            if slot.log_id == id {
                                slot.frame = Some(loc);
                            }
                        }
                        log.note_frame(id.index, loc);
                    }
                    log.evict();
                    drop(log);
                    callback.io_completed(Ok(()));
                }
                Err(error) => callback.io_completed(Err(error)),
            },
        }
    }
}

impl LogStore {
    /// Opens the member's log on `disk`, replaying it.
    pub async fn open(disk: Disk) -> Result<LogStore, StorageError> {
        let opener = disk.clone();
        let opened = env::blocking(move || -> Result<_, WalError> {
            let segment_bytes = opener.wal_segment_bytes();
            let (wal, frames) = Wal::open(&opener, segment_bytes, Log::default().segment_header())?;
            let log = replay(frames)?;
            Ok((wal, log))
        })
        .await;
        let (wal, log) = opened.map_err(|e| {
            let hint = match e {
                WalError::Corrupted(_) => {
                    "; this member's data cannot be trusted: the member must be replaced, not \
                     restarted on it"
                }
                WalError::Io(_) => "",
            };
            StorageError(format!("open the log on {}: {e}{hint}", disk.describe()))
        })?;
        let shared = Arc::new(Shared {
            log: Mutex::new(log),
            reader: wal.reader(),
            writer: Mutex::new(wal),
        });
        let (queue, jobs) = mpsc::channel(1);
        env::spawn(run_writer(shared.clone(), disk.clone(), jobs));
        Ok(LogStore { shared, queue })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.shared.log.lock().expect("log lock")
    }

    /// Writes `records` durably (unless `sync` is false) after everything queued before them,
    /// in one write; answers where they went. `header` is the log's state before them, for a
    /// segment started on the way.
    async fn write(
        &self,
        records: Vec<pb::WalRecord>,
        sync: bool,
        header: pb::WalSegment,
    ) -> Result<Vec<FrameLoc>, io::Error> {
        let (done, written) = oneshot::channel();
        self.submit(Job {
            records,
            sync,
            header,
            done: Done::Written(done),
        })
        .await?;
        written.await.map_err(|_| writer_stopped())?
    }

    async fn submit(&self, job: Job) -> Result<(), io::Error> {
        self.queue.send(job).await.map_err(|_| writer_stopped())
    }

    /// Writes the first boot's state, as etcd bootstraps a member: the initial membership as
    /// the log's first entry and a vote in term 1, so the first election is for term 2 (etcd's
    /// first leader also has term 2). Returns false, changing nothing, if the store is not new.
    ///
    /// Voting for itself in term 1 is safe: no member campaigns in term 1, every member starts
    /// there, so no leader of term 1 can exist.
    pub async fn bootstrap(&self, id: u64, membership: Membership) -> Result<bool, io::Error> {
        if !self.is_fresh() {
            return Ok(false);
        }
        let entry = Entry {
            log_id: LogId::new_term_index(0, 0),
            payload: openraft::EntryPayload::Membership(membership),
        };
        let vote = Vote::new(1, id);
        let records = vec![
            pb::WalRecord {
                record: Some(Record::Entries(pb::WalEntries {
                    entries: vec![codec::entry_to_pb(&entry)],
                    committed: None,
                })),
            },
            pb::WalRecord {
                record: Some(Record::Vote(codec::vote_to_pb(&vote))),
            },
        ];
        let header = {
            let mut log = self.log();
            let header = log.segment_header();
            log.push(vec![(entry.log_id, Some(entry.clone()))])
                .map_err(io_error)?;
            header
        };
        let locs = self.write(records, true, header).await?;
        let mut log = self.log();
        log.slots[0].frame = Some(locs[0]);
        log.note_frame(0, locs[0]);
        log.vote = Some(vote);
        Ok(true)
    }

    /// Whether this store has never been written (no log entry, no vote).
    pub fn is_fresh(&self) -> bool {
        let log = self.log();
        log.vote.is_none() && log.slots.is_empty() && log.last_purged.is_none()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // What is in memory now, and which frames to read for the rest.
        let (start, mut found, wanted) = {
            let log = self.log();
            let start = match range.start_bound() {
                Bound::Included(&i) => i,
                Bound::Excluded(&i) => i + 1,
                Bound::Unbounded => 0,
            }
            .max(log.first_index);
            let end = match range.end_bound() {
                Bound::Included(&i) => i.saturating_add(1),
                Bound::Excluded(&i) => i,
                Bound::Unbounded => u64::MAX,
            }
            .min(log.next_index());
            let mut found: Vec<Option<Entry>> = Vec::new();
            let mut wanted: Vec<(u64, FrameLoc)> = Vec::new();
            for index in start..end {
                let slot = &log.slots[(index - log.first_index) as usize];
                match (&slot.entry, slot.frame) {
                    (Some(entry), _) => found.push(Some(entry.clone())),
                    (None, Some(frame)) => {
                        wanted.push((index, frame));
                        found.push(None);
                    }
                    (None, None) => unreachable!("an entry in flight keeps its body"),
                }
            }
            (start, found, wanted)
        };
        if !wanted.is_empty() {
            let reader = self.shared.reader.clone();
            let read = env::blocking(move || read_entries(&reader, wanted))
                .await
                .map_err(wal_io)?;
            for (index, entry) in read {
                found[(index - start) as usize] = Some(entry);
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.log().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.log();
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let pb = codec::vote_to_pb(vote);
        if !bugs::enabled(Bug::VoteNotDurable) {
            let record = pb::WalRecord {
                record: Some(Record::Vote(pb)),
            };
            let header = self.log().segment_header();
            self.write(vec![record], true, header).await?;
            self.log().vote = Some(*vote);
        }
        probe::record(|| Probe::Vote {
            term: pb.term,
            voted_for: pb.voted_for.unwrap_or(0),
            committed: pb.committed,
        });
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        if committed.is_some() {
            self.log().committed = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.log().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let record = pb::WalRecord {
            record: Some(Record::Entries(pb::WalEntries {
                entries: entries.iter().map(codec::entry_to_pb).collect(),
                committed: self.log().committed.as_ref().map(codec::log_id_to_pb),
            })),
        };
        let ids: Vec<LogId> = entries.iter().map(|e| e.log_id).collect();
        // Readable (replication reads them) before they are written.
        let pushed = {
            let mut log = self.log();
            let header = log.segment_header();
            log.push(entries.into_iter().map(|e| (e.log_id, Some(e))).collect())
                .map(|()| header)
        };
        let header = match pushed {
            Ok(header) => header,
            Err(why) => {
                let error = io_error(why);
                callback.io_completed(Err(io::Error::other(error.to_string())));
                return Err(error);
            }
        };
        let sync = !bugs::enabled(Bug::AckBeforeDurable);
        let job = Job {
            records: vec![record],
            sync,
            header,
            done: Done::Appended { ids, callback },
        };
        // Queued (waiting while another job is queued), not written: the callback is called
        // once the write's fsync is done.
        if let Err(error) = self.queue.send(job).await {
            let Done::Appended { callback, .. } = error.0.done else {
                unreachable!("the job just made")
            };
            callback.io_completed(Err(writer_stopped()));
            return Err(writer_stopped());
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let record = pb::WalRecord {
            record: Some(Record::Truncate(pb::WalTruncate {
                after: last_log_id.as_ref().map(codec::log_id_to_pb),
            })),
        };
        let header = self.log().segment_header();
        self.write(vec![record], true, header).await?;
        self.log()
            .truncate_from(last_log_id.map_or(0, |log_id| log_id.index + 1));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let record = pb::WalRecord {
            record: Some(Record::Purged(codec::log_id_to_pb(&log_id))),
        };
        let header = self.log().segment_header();
        self.write(vec![record], true, header).await?;
        // Segments whose entries are all purged now go; the oldest one kept still starts with
        // the state replay needs (its header), and the purge record is in the newest.
        let keep_from = {
            let mut log = self.log();
            log.purge_to(log_id);
            let keep_from = log
                .segment_max_index
                .iter()
                .find(|(_, max)| **max > log_id.index)
                .map(|(segment, _)| *segment);
            log.segment_max_index
                .retain(|segment, _| keep_from.is_none_or(|keep| *segment >= keep));
            keep_from
        };
        let shared = self.shared.clone();
        env::blocking(move || {
            let mut wal = shared.writer.lock().expect("wal writer lock");
            let keep_from = keep_from.unwrap_or(wal.current_segment());
            wal.remove_segments_before(keep_from)
        })
        .await
        .map_err(wal_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state_machine::StateMachine;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;
    use openraft::StorageError;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for Builder {
        async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
            let db = redb::Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
            crate::storage::create_tables(&db)
                .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
            let db = Arc::new(db);
            let disk = crate::env::SimDisk::new();
            disk.set_sync_latency(crate::env::Duration::ZERO);
            let disk = Disk::Sim(disk);
            let log = LogStore::open(disk.clone())
                .await
                .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
            Ok((
                (),
                log,
                StateMachine::open(db, disk, crate::env::Clock::new())
                    .await
                    .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?,
            ))
        }
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new_term_index(term, index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn put(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new_term_index(term, index),
            payload: openraft::EntryPayload::Normal(pb::Command {
                op: Some(pb::command::Op::Put(crate::pb::etcdserverpb::PutRequest {
                    key: format!("k{index}").into_bytes(),
                    value: vec![index as u8; 8000].into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
        }
    }

    /// A new log on a simulated disk whose fsyncs take no time.
    async fn new_store() -> (crate::env::SimDisk, Disk, LogStore) {
        let sim = crate::env::SimDisk::new();
        sim.set_sync_latency(crate::env::Duration::ZERO);
        let disk = Disk::Sim(sim.clone());
        let store = LogStore::open(disk.clone()).await.unwrap();
        (sim, disk, store)
    }

    /// Appends `entries` and answers how their flush went (`append` itself returns before).
    async fn append_and_flush(
        store: &mut LogStore,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), io::Error> {
        let (tx, rx) = TypeConfig::oneshot();
        store
            .append(
                entries.into_iter().collect::<Vec<_>>(),
                IOFlushed::signal(tx),
            )
            .await
            .unwrap();
        rx.await.unwrap()
    }

    async fn append_flushed(store: &mut LogStore, entries: impl IntoIterator<Item = Entry>) {
        append_and_flush(store, entries).await.unwrap();
    }

    async fn everything(store: &mut LogStore) -> (LogState<TypeConfig>, Option<Vote>, Vec<Entry>) {
        let state = store.get_log_state().await.unwrap();
        let vote = store.read_vote().await.unwrap();
        let entries = store.try_get_log_entries(0..).await.unwrap();
        (state, vote, entries)
    }

    /// A restart (or a power loss: everything was fsynced) gives back the log as it was: votes,
    /// entries over several segments, a truncation and a purge that removed whole segments.
    #[test]
    fn the_log_replays_after_a_restart() {
        TypeConfig::run(async {
            let (sim, disk, mut store) = new_store().await;
            assert!(store.is_fresh());
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            append_flushed(&mut store, [blank(2, 0)]).await;
            for batch in 0..40u64 {
                let entries = (1..=10).map(|i| put(2, batch * 10 + i));
                append_flushed(&mut store, entries).await;
            }
            store
                .save_committed(Some(LogId::new_term_index(2, 380)))
                .await
                .unwrap();
            store
                .truncate_after(Some(LogId::new_term_index(2, 390)))
                .await
                .unwrap();
            store.save_vote(&Vote::new(3, 2)).await.unwrap();
            append_flushed(&mut store, (391..=395).map(|i| put(3, i))).await;
            let segments = disk.list_files("wal-").unwrap().len();
            assert!(segments >= 4, "{segments} segments");
            store.purge(LogId::new_term_index(2, 250)).await.unwrap();
            let left = disk.list_files("wal-").unwrap().len();
            assert!(
                left < segments,
                "purge removed no segment ({left} of {segments})"
            );
            let before = everything(&mut store).await;
            assert_eq!(
                before.0.last_purged_log_id,
                Some(LogId::new_term_index(2, 250))
            );
            assert_eq!(before.0.last_log_id, Some(LogId::new_term_index(3, 395)));
            assert_eq!(before.2.len(), 145);
            assert_eq!(before.2[0].log_id, LogId::new_term_index(2, 251));
            assert!(before
                .2
                .iter()
                .all(|e| e.log_id.index <= 390 || e.log_id.leader_id.term == 3));
            drop(store);
            for restart in 0..2 {
                if restart == 1 {
                    sim.crash(crate::env::sim_disk::CrashMode::DropUnsynced, 7);
                }
                let mut again = LogStore::open(disk.clone()).await.unwrap();
                let after = everything(&mut again).await;
                assert_eq!(
                    format!("{:?}", after),
                    format!("{before:?}"),
                    "restart {restart}"
                );
                assert!(!again.is_fresh());
            }
        });
    }

    /// `append` returns before its fsync and reports the flush only after it, in order; an
    /// entry replaced while the write of the one before it was in flight keeps its own body
    /// once both are written and evicted from memory (the older write must not claim its slot).
    #[test]
    fn appends_are_flushed_in_order_after_their_fsync() {
        TypeConfig::run(async {
            let (sim, disk, mut store) = new_store().await;
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            sim.set_stalled(true);
            let (first_tx, mut first_rx) = TypeConfig::oneshot();
            store
                .append((0..=5).map(|i| blank(2, i)), IOFlushed::signal(first_tx))
                .await
                .unwrap();
            let (second_tx, mut second_rx) = TypeConfig::oneshot();
            store
                .append((4..=6).map(|i| put(3, i)), IOFlushed::signal(second_tx))
                .await
                .unwrap();
            // Readable at once, from memory, with the replacement in place.
            let entries = store.try_get_log_entries(0..).await.unwrap();
            let terms: Vec<u64> = entries.iter().map(|e| e.log_id.leader_id.term).collect();
            assert_eq!(terms, [2, 2, 2, 2, 3, 3, 3]);
            for _ in 0..20 {
                TypeConfig::sleep(crate::env::Duration::from_millis(5)).await;
            }
            assert!(
                first_rx.try_recv().is_err(),
                "flushed while the disk stalls"
            );
            assert!(
                second_rx.try_recv().is_err(),
                "flushed while the disk stalls"
            );
            sim.set_stalled(false);
            first_rx.await.unwrap().unwrap();
            second_rx.await.unwrap().unwrap();
            // Push the bodies out of memory so entries 4..=6 are read from their frames.
            let filler = (7..7 + CACHED_ENTRIES as u64 + 10).map(|i| blank(3, i));
            append_flushed(&mut store, filler).await;
            let mut expected: Vec<Entry> = (0..=3).map(|i| blank(2, i)).collect();
            expected.extend((4..=6).map(|i| put(3, i)));
            let read = store.try_get_log_entries(0..=6).await.unwrap();
            assert_eq!(format!("{read:?}"), format!("{expected:?}"));
            // And a restart replays the same log (the two writes' frames overlap at 4 and 5).
            drop(store);
            let mut again = LogStore::open(disk.clone()).await.unwrap();
            let read = again.try_get_log_entries(0..=6).await.unwrap();
            assert_eq!(format!("{read:?}"), format!("{expected:?}"));
            let last = again.get_log_state().await.unwrap().last_log_id;
            assert_eq!(
                last,
                Some(LogId::new_term_index(3, 6 + CACHED_ENTRIES as u64 + 10))
            );
        });
    }

    /// A write that fails fails its append and every later one: after a failed fsync what
    /// reached the disk is unknown, so nothing more may be acknowledged.
    #[test]
    fn a_failed_write_fails_every_later_append() {
        TypeConfig::run(async {
            let (sim, _disk, mut store) = new_store().await;
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            append_flushed(&mut store, [blank(2, 0)]).await;
            sim.set_fail_syncs(true);
            let flushed = append_and_flush(&mut store, [blank(2, 1)]).await;
            assert!(flushed.is_err(), "a failed fsync was acknowledged");
            sim.set_fail_syncs(false);
            let flushed = append_and_flush(&mut store, [blank(2, 2)]).await;
            assert!(flushed.is_err(), "written after a failed write");
            assert!(store.save_vote(&Vote::new(3, 1)).await.is_err());
        });
    }

    /// openraft's conformance suite for log stores and state machines, on ours.
    #[test]
    fn openraft_log_storage_suite() {
        TypeConfig::run(async { Suite::test_all(Builder).await }).expect("suite passes");
    }
}
