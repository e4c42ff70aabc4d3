//! The Raft state machine: applies committed entries to the MVCC store in redb, and builds and
//! installs snapshots of it.
//!
//! Durability: a batch of applied entries commits with `Durability::None`. What it records as
//! applied may therefore be lost in a crash — but never gets ahead of the log: an entry is
//! applied only after it is durably in this member's log, and the log store's next `Immediate`
//! commit (same database) persists every earlier state-machine commit. After a crash openraft
//! re-applies from the durable `last_applied` onwards. Snapshots and their installation commit
//! with `Durability::Immediate`.

use std::io;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::codec;
use super::{io_error, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::apply::{self, CommandResponse, CommandResult};
use crate::env;
use crate::mvcc::{self, INITIAL_REVISION};
use crate::pb::raft as pb;
use crate::storage::encoding;
use crate::storage::{
    KV, KV_INDEX, KV_REVISIONS, META_COMPACTED, META_LAST_APPLIED, META_MEMBERSHIP, META_REVISION,
    SM_META,
};
use crate::watch::{Applied, Hub};

/// The state machine of one member. Clones share the database and the current snapshot.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    current_snapshot: Arc<Mutex<Option<Snapshot>>>,
    /// Told about every applied batch (after it is committed) and every installed snapshot.
    pub hub: Arc<Hub>,
}

/// What the state machine has applied, read in one transaction.
#[derive(Debug, Clone)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: i64,
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
    txn: &WriteTransaction,
    last_applied: Option<LogId>,
    revision: i64,
    membership: Option<&StoredMembership>,
) -> Result<(), io::Error> {
    let mut meta = txn.open_table(SM_META).map_err(io_error)?;
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
    /// The state machine over `db`, its watch hub starting at what `db` has applied.
    pub async fn open(db: Arc<Database>) -> Result<Self, io::Error> {
        let reader = db.clone();
        let applied = env::blocking(move || {
            let txn = reader.begin_read().map_err(io_error)?;
            let meta = txn.open_table(SM_META).map_err(io_error)?;
            Ok::<_, io::Error>(Applied {
                revision: revision_in(&meta)?,
                compacted: mvcc::compacted_revision(&meta).map_err(io_error)?,
            })
        })
        .await?;
        Ok(Self {
            db,
            current_snapshot: Arc::new(Mutex::new(None)),
            hub: Hub::new(applied),
        })
    }

    /// Runs `f` on a consistent read view of the store (off the async path in real mode).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, io::Error> + Send + 'static,
    ) -> Result<T, io::Error> {
        let db = self.db.clone();
        env::blocking(move || {
            let txn = db.begin_read().map_err(io_error)?;
            f(&txn)
        })
        .await
    }

    /// The store's current revision, with the log id it was applied at.
    pub async fn current_revision(&self) -> Result<i64, io::Error> {
        self.read(|txn| {
            let meta = txn.open_table(SM_META).map_err(io_error)?;
            revision_in(&meta)
        })
        .await
    }

    /// Makes every commit so far durable: an empty commit with `Immediate` durability fsyncs
    /// the earlier `Durability::None` commits of applied entries with it.
    pub async fn sync(&self) -> Result<(), io::Error> {
        let db = self.db.clone();
        env::blocking(move || {
            let mut txn = db.begin_write().map_err(io_error)?;
            txn.set_durability(Durability::Immediate)
                .map_err(io_error)?;
            txn.commit().map_err(io_error)
        })
        .await
    }

    fn dump(db: &Database) -> Result<(SnapshotMeta, Vec<u8>), io::Error> {
        let txn = db.begin_read().map_err(io_error)?;
        let meta_table = txn.open_table(SM_META).map_err(io_error)?;
        let state = read_applied_state(&meta_table)?;
        let mut data = pb::SnapshotData {
            revision: state.revision,
            compacted: Some(mvcc::compacted_revision(&meta_table).map_err(io_error)?)
                .filter(|&compacted| compacted != mvcc::NEVER_COMPACTED),
            ..Default::default()
        };
        for (table, rows) in [(KV, &mut data.kv), (KV_REVISIONS, &mut data.kv_revisions)] {
            let table = txn.open_table(table).map_err(io_error)?;
            for item in table.iter().map_err(io_error)? {
                let (key, value) = item.map_err(io_error)?;
                rows.push(pb::KeyValuePair {
                    key: key.value().to_vec(),
                    value: value.value().to_vec(),
                });
            }
        }
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership,
        };
        Ok((meta, data.encode_to_vec()))
    }
}

/// Replaces the state machine with a snapshot's data (and rebuilds the history index from it),
/// durably.
fn install_data(
    db: &Database,
    data: &pb::SnapshotData,
    state: &AppliedState,
) -> Result<(), io::Error> {
    let txn = db.begin_write().map_err(io_error)?;
    for (table, rows) in [(KV, &data.kv), (KV_REVISIONS, &data.kv_revisions)] {
        let mut table = txn.open_table(table).map_err(io_error)?;
        table.retain(|_, _| false).map_err(io_error)?;
        for row in rows {
            table
                .insert(row.key.as_slice(), row.value.as_slice())
                .map_err(io_error)?;
        }
    }
    // The index is derived from history.
    let mut index = txn.open_table(KV_INDEX).map_err(io_error)?;
    index.retain(|_, _| false).map_err(io_error)?;
    for row in &data.kv_revisions {
        let corrupt = || io_error("corrupt history row in snapshot");
        let revision = encoding::decode_revision(&row.key).ok_or_else(corrupt)?;
        let event = encoding::decode_event(&row.value).ok_or_else(corrupt)?;
        let (key, tombstone) = match &event {
            encoding::HistoryEvent::Put(kv) => (kv.key.as_slice(), false),
            encoding::HistoryEvent::Delete(kv) => (kv.key.as_slice(), true),
        };
        index
            .insert(
                (key, revision.main as u64, revision.sub as u64),
                u8::from(tombstone),
            )
            .map_err(io_error)?;
    }
    drop(index);
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
    drop(meta);
    write_applied_state(
        &txn,
        state.last_applied,
        state.revision,
        Some(&state.membership),
    )?;
    txn.commit().map_err(io_error)?;
    Ok(())
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
    snapshot: Option<Snapshot>,
    current_snapshot: Arc<Mutex<Option<Snapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let snapshot = self
            .snapshot
            .take()
            .ok_or_else(|| io_error("snapshot builder used twice"))?;
        keep_newest(&self.current_snapshot, snapshot.clone());
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
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
        if batch.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let (batch, responses, changes, applied) =
            env::blocking(move || -> Result<_, io::Error> {
                let mut txn = db.begin_write().map_err(io_error)?;
                txn.set_durability(Durability::None).map_err(io_error)?;
                let mut revision = {
                    let meta = txn.open_table(SM_META).map_err(io_error)?;
                    revision_in(&meta)?
                };
                let mut new_membership = None;
                let mut last_applied = None;
                let mut responses = Vec::with_capacity(batch.len());
                let mut changes = Vec::new();
                for (entry, _) in &batch {
                    let response = match &entry.payload {
                        EntryPayload::Normal(command) => {
                            let response = apply::apply(&txn, revision, command, &mut changes)
                                .map_err(io_error)?;
                            assert!(response.revision >= revision, "revision went back");
                            revision = response.revision;
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
                    last_applied = Some(entry.log_id);
                    responses.push(response);
                }
                write_applied_state(&txn, last_applied, revision, new_membership.as_ref())?;
                let compacted = {
                    let meta = txn.open_table(SM_META).map_err(io_error)?;
                    mvcc::compacted_revision(&meta).map_err(io_error)?
                };
                txn.commit().map_err(io_error)?;
                let applied = Applied {
                    revision,
                    compacted,
                };
                Ok((batch, responses, changes, applied))
            })
            .await?;
        self.hub.publish(changes, applied);
        for ((_, responder), response) in batch.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let db = self.db.clone();
        let dumped = env::blocking(move || Self::dump(&db)).await;
        SnapshotBuilder {
            snapshot: dumped
                .ok()
                .map(|(meta, snapshot)| Snapshot { meta, snapshot }),
            current_snapshot: self.current_snapshot.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = pb::SnapshotData::decode(snapshot.as_slice()).map_err(io_error)?;
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision: data.revision,
        };
        let db = self.db.clone();
        let applied = Applied {
            revision: data.revision,
            compacted: data.compacted.unwrap_or(mvcc::NEVER_COMPACTED),
        };
        env::blocking(move || install_data(&db, &data, &state)).await?;
        self.hub.reset(applied);
        keep_newest(
            &self.current_snapshot,
            Snapshot {
                meta: meta.clone(),
                snapshot,
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

    fn database() -> Database {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        crate::storage::create_tables(&db).unwrap();
        db
    }

    fn apply_all(db: &Database, ops: Vec<pb::command::Op>) -> i64 {
        let txn = db.begin_write().unwrap();
        let mut revision = INITIAL_REVISION;
        for op in ops {
            let command = pb::Command { op: Some(op) };
            revision = apply::apply(&txn, revision, &command, &mut Vec::new())
                .unwrap()
                .revision;
        }
        write_applied_state(&txn, None, revision, None).unwrap();
        txn.commit().unwrap();
        revision
    }

    fn observe(db: &Database) -> (u32, i64, Vec<i64>) {
        let txn = db.begin_read().unwrap();
        let store = ReadOnly::open(&txn).unwrap();
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
        let (meta, bytes) = StateMachine::dump(&source).unwrap();
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
        install_data(&target, &data, &state).unwrap();
        let expected = observe(&source);
        assert_eq!(expected.1, 4);
        assert_eq!(observe(&target), expected);
    }
}
