//! The Raft log, vote and committed index, in redb.
//!
//! Durability: `save_vote`, `append`, `truncate_after` and `purge` commit with
//! `Durability::Immediate` (fsynced, in a two-phase commit: see [`storage::begin_write`]) before
//! they return, and `append` tells openraft the entries are flushed only after that commit.
//! openraft hands `append` every entry that queued up while the previous write was in flight, so
//! one commit covers many client requests (group commit).
//! `save_committed` is a hint for faster recovery and commits without fsync, so after a crash it
//! may be older than what this member had acknowledged. That is safe only because a restarted
//! member never resumes leadership of its old term (`enable_leader_restore` is off in `node`).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::codec;
use super::{io_error, Entry, LogId, Membership, TypeConfig, Vote};
use crate::env::bugs::{self, Bug};
use crate::env::probe::{self, Probe};
use crate::env::{self, Disk};
use crate::pb::raft as pb;
use crate::storage::{self, META_COMMITTED, META_LAST_PURGED, META_VOTE, RAFT_LOG, RAFT_META};

/// The log store of one member. Clones share the database (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    disk: Disk,
}

impl LogStore {
    pub fn new(db: Arc<Database>, disk: Disk) -> Self {
        Self { db, disk }
    }

    async fn write<T: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, io::Error> + Send + 'static,
    ) -> Result<T, io::Error> {
        let db = self.db.clone();
        let write = move || -> Result<T, io::Error> {
            let txn = storage::begin_write(&db, durability).map_err(io_error)?;
            let value = f(&txn)?;
            txn.commit().map_err(io_error)?;
            Ok(value)
        };
        let value = env::blocking(write).await?;
        if matches!(durability, Durability::Immediate) {
            self.disk.after_sync().await;
        }
        Ok(value)
    }

    /// Writes the first boot's state, as etcd bootstraps a member: the initial membership as
    /// the log's first entry and a vote in term 1, so the first election is for term 2 (etcd's
    /// first leader also has term 2). Returns false, changing nothing, if the store is not new.
    ///
    /// Voting for itself in term 1 is safe: no member campaigns in term 1, every member starts
    /// there, so no leader of term 1 can exist.
    pub async fn bootstrap(&self, id: u64, membership: Membership) -> Result<bool, io::Error> {
        let entry = Entry {
            log_id: LogId::new_term_index(0, 0),
            payload: openraft::EntryPayload::Membership(membership),
        };
        let entry = codec::entry_to_pb(&entry).encode_to_vec();
        let vote = codec::vote_to_pb(&Vote::new(1, id)).encode_to_vec();
        self.write(Durability::Immediate, move |txn| {
            let mut log = txn.open_table(RAFT_LOG).map_err(io_error)?;
            let mut meta = txn.open_table(RAFT_META).map_err(io_error)?;
            let fresh = log.first().map_err(io_error)?.is_none()
                && meta.get(META_VOTE).map_err(io_error)?.is_none();
            if fresh {
                log.insert(0, entry.as_slice()).map_err(io_error)?;
                meta.insert(META_VOTE, vote.as_slice()).map_err(io_error)?;
            }
            Ok(fresh)
        })
        .await
    }

    /// Whether this store has never been written (no log entry, no vote).
    pub async fn is_fresh(&self) -> Result<bool, io::Error> {
        let has_vote = self.read_meta(META_VOTE).await?.is_some();
        let db = self.db.clone();
        let has_log = env::blocking(move || -> Result<bool, io::Error> {
            let txn = db.begin_read().map_err(io_error)?;
            let log = txn.open_table(RAFT_LOG).map_err(io_error)?;
            let first = log.first().map_err(io_error)?;
            Ok(first.is_some())
        })
        .await?;
        Ok(!has_vote && !has_log)
    }

    async fn read_meta(&self, key: &'static str) -> Result<Option<Vec<u8>>, io::Error> {
        let db = self.db.clone();
        env::blocking(move || {
            let txn = db.begin_read().map_err(io_error)?;
            let table = txn.open_table(RAFT_META).map_err(io_error)?;
            Ok(table
                .get(key)
                .map_err(io_error)?
                .map(|value| value.value().to_vec()))
        })
        .await
    }

    async fn read_log_id(&self, key: &'static str) -> Result<Option<LogId>, io::Error> {
        match self.read_meta(key).await? {
            Some(bytes) => {
                let log_id = pb::LogId::decode(bytes.as_slice()).map_err(io_error)?;
                Ok(Some(codec::log_id_from_pb(&log_id)))
            }
            None => Ok(None),
        }
    }
}

fn put_meta(txn: &redb::WriteTransaction, key: &str, value: &[u8]) -> Result<(), io::Error> {
    let mut table = txn.open_table(RAFT_META).map_err(io_error)?;
    table.insert(key, value).map_err(io_error)?;
    Ok(())
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, io::Error> {
    let entry = pb::Entry::decode(bytes).map_err(io_error)?;
    codec::entry_from_pb(entry).map_err(io_error)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db.clone();
        env::blocking(move || {
            let txn = db.begin_read().map_err(io_error)?;
            let table = txn.open_table(RAFT_LOG).map_err(io_error)?;
            let mut entries = Vec::new();
            for item in table.range::<u64>(bounds).map_err(io_error)? {
                let (index, bytes) = item.map_err(io_error)?;
                let entry = decode_entry(bytes.value())?;
                assert_eq!(
                    entry.log_id.index,
                    index.value(),
                    "log entry stored at wrong index"
                );
                entries.push(entry);
            }
            Ok(entries)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.read_meta(META_VOTE).await? {
            Some(bytes) => {
                let vote = pb::Vote::decode(bytes.as_slice()).map_err(io_error)?;
                Ok(Some(codec::vote_from_pb(&Some(vote)).map_err(io_error)?))
            }
            None => Ok(None),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged = self.read_log_id(META_LAST_PURGED).await?;
        let db = self.db.clone();
        let last = env::blocking(move || -> Result<Option<LogId>, io::Error> {
            let txn = db.begin_read().map_err(io_error)?;
            let table = txn.open_table(RAFT_LOG).map_err(io_error)?;
            let last = match table.last().map_err(io_error)? {
                Some((_, bytes)) => Some(decode_entry(bytes.value())?.log_id),
                None => None,
            };
            Ok(last)
        })
        .await?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let pb = codec::vote_to_pb(vote);
        let bytes = pb.encode_to_vec();
        if !bugs::enabled(Bug::VoteNotDurable) {
            self.write(Durability::Immediate, move |txn| {
                put_meta(txn, META_VOTE, &bytes)
            })
            .await?;
        }
        probe::record(|| Probe::Vote {
            term: pb.term,
            voted_for: pb.voted_for.unwrap_or(0),
            committed: pb.committed,
        });
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let Some(committed) = committed else {
            return Ok(());
        };
        let bytes = codec::log_id_to_pb(&committed).encode_to_vec();
        self.write(Durability::None, move |txn| {
            put_meta(txn, META_COMMITTED, &bytes)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.read_log_id(META_COMMITTED).await
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
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| {
                (
                    entry.log_id.index,
                    codec::entry_to_pb(&entry).encode_to_vec(),
                )
            })
            .collect();
        let durability = if bugs::enabled(Bug::AckBeforeDurable) {
            Durability::None
        } else {
            Durability::Immediate
        };
        let result = self
            .write(durability, move |txn| {
                let mut table = txn.open_table(RAFT_LOG).map_err(io_error)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(io_error)?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.io_completed(Err(io::Error::other(error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |log_id| log_id.index + 1);
        self.write(Durability::Immediate, move |txn| {
            let mut table = txn.open_table(RAFT_LOG).map_err(io_error)?;
            table
                .retain_in::<u64, _>(from.., |_, _| false)
                .map_err(io_error)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = codec::log_id_to_pb(&log_id).encode_to_vec();
        self.write(Durability::Immediate, move |txn| {
            let mut table = txn.open_table(RAFT_LOG).map_err(io_error)?;
            table
                .retain_in::<u64, _>(..=log_id.index, |_, _| false)
                .map_err(io_error)?;
            drop(table);
            put_meta(txn, META_LAST_PURGED, &bytes)
        })
        .await
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
            Ok((
                (),
                LogStore::new(db.clone(), Disk::Sim(crate::env::SimDisk::new())),
                StateMachine::open(db)
                    .await
                    .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?,
            ))
        }
    }

    /// openraft's conformance suite for log stores and state machines, on ours.
    #[test]
    fn openraft_log_storage_suite() {
        TypeConfig::run(async { Suite::test_all(Builder).await }).expect("suite passes");
    }
}
