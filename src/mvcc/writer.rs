//! Applies the changes of one write request at one main revision, and compaction.
//!
//! A change goes to history (in the writer's redb transaction) and to the key index (at once,
//! ahead of the commit: readers look only at or below their own revision). What a compaction
//! removes leaves history in the transaction and the index after the commit
//! ([`Writer::finish`]).

use redb::{Key, ReadableTable, Table, TableDefinition, Value, WriteTransaction};

use super::index::{AfterCommit, Index};
use super::range::{RangeOptions, RangeResult};
use super::view::{self, View};
use super::{Change, KeyRange, KeyValue, Live, MvccError, Revision};
use crate::storage::encoding::{self, HistoryEvent};
use crate::storage::{StorageError, KV_REVISIONS, LEASES, LEASE_KEYS, META_COMPACTED, SM_META};

type ByteTable<'txn> = Table<'txn, &'static [u8], &'static [u8]>;
/// The state machine's meta table (revision, compaction, applied state).
pub type MetaTable<'txn> = Table<'txn, &'static str, &'static [u8]>;
type LeaseTable<'txn> = Table<'txn, i64, &'static [u8]>;
type LeaseKeysTable<'txn> = Table<'txn, (i64, &'static [u8]), u8>;

/// A lease as the state machine records it (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The TTL it was granted with (after etcd's minimum).
    pub ttl: i64,
    /// The remaining TTL of its last checkpoint; 0 if it has none since its last renewal.
    pub remaining: i64,
}

/// Applies the changes of one write request, all at one main revision.
pub struct Writer<'txn> {
    txn: &'txn WriteTransaction,
    view: View<ByteTable<'txn>>,
    meta: MetaTable<'txn>,
    /// Opened at first use: most writes touch no lease, and opening a table is a lookup in
    /// redb's table tree now and a root update at the commit.
    leases: Option<LeaseTable<'txn>>,
    /// Which keys each lease has attached (derived from `kv`'s lease fields); opened at first
    /// use.
    lease_keys: Option<LeaseKeysTable<'txn>>,
    main: i64,
    next_sub: i64,
    changes: Vec<Change>,
    /// The compactions of this transaction, for the index once it commits.
    compactions: Vec<i64>,
    /// Whether a put reads the key-value it replaces when its request does not need it (for
    /// watchers' `prev_kv`; [`Change::prev_read`]).
    read_prev: bool,
}

/// What a compaction removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compacted {
    pub revisions_removed: u64,
}

impl<'txn> Writer<'txn> {
    /// A writer for the request after `current_revision`, changing `index` with `txn`.
    pub fn new(
        txn: &'txn WriteTransaction,
        index: &Index,
        current_revision: i64,
    ) -> Result<Self, StorageError> {
        Self::with_meta(txn, txn.open_table(SM_META)?, index, current_revision)
    }

    /// [`Writer::new`] for a caller that has opened the transaction's meta table already (the
    /// state machine reads its revision there first and records its applied state there after):
    /// the writer keeps it, and [`Writer::finish_with_meta`] gives it back.
    pub fn with_meta(
        txn: &'txn WriteTransaction,
        meta: MetaTable<'txn>,
        index: &Index,
        current_revision: i64,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            txn,
            view: View {
                history: txn.open_table(KV_REVISIONS)?,
                index: index.clone(),
            },
            meta,
            leases: None,
            lease_keys: None,
            main: current_revision + 1,
            next_sub: 0,
            changes: Vec::new(),
            compactions: Vec::new(),
            read_prev: true,
        })
    }

    /// Whether puts read the key-value they replace when their request does not need it
    /// (default: they do). Off when no watcher wants previous key-values.
    pub fn set_read_prev(&mut self, read_prev: bool) {
        self.read_prev = read_prev;
    }

    pub fn reads_prev(&self) -> bool {
        self.read_prev
    }

    /// Ends the writer; what it answers must be applied to the index once the transaction has
    /// committed.
    pub fn finish(self) -> AfterCommit {
        self.finish_with_meta().0
    }

    /// [`Writer::finish`], giving back the meta table for more writes in the transaction.
    pub fn finish_with_meta(self) -> (AfterCommit, MetaTable<'txn>) {
        let after_commit = AfterCommit {
            compactions: self.compactions,
        };
        (after_commit, self.meta)
    }

    fn leases(&mut self) -> Result<&mut LeaseTable<'txn>, StorageError> {
        opened(self.txn, &mut self.leases, LEASES)
    }

    fn lease_keys_table(&mut self) -> Result<&mut LeaseKeysTable<'txn>, StorageError> {
        opened(self.txn, &mut self.lease_keys, LEASE_KEYS)
    }

    /// Starts the next request of the same transaction, after `current_revision`.
    pub fn begin(&mut self, current_revision: i64) {
        self.main = current_revision + 1;
        self.next_sub = 0;
        self.changes.clear();
    }

    /// The changes of the request so far, taken (the writer may go on with the next one).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The revision before this request.
    pub fn begin_revision(&self) -> i64 {
        self.main - 1
    }

    /// The revision this request ends at: the new one if it changed anything, else the old.
    pub fn revision(&self) -> i64 {
        if self.next_sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }

    /// Whether this request has changed anything yet.
    pub fn changed(&self) -> bool {
        self.next_sub > 0
    }

    /// The revision of the last compaction (`NEVER_COMPACTED`: none).
    pub fn compacted(&self) -> Result<i64, StorageError> {
        view::compacted_revision(&self.meta)
    }

    fn next_revision(&mut self) -> Revision {
        let revision = Revision {
            main: self.main,
            sub: self.next_sub,
        };
        self.next_sub += 1;
        revision
    }

    /// The live generation of `key`, if any (including this request's own changes).
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        self.view.live(key, self.revision())
    }

    /// What a put needs of the live generation of `key` (everything but its value), from the
    /// key index: no read of history.
    pub fn live(&self, key: &[u8]) -> Option<Live> {
        self.view.index.read_keys().live(key)
    }

    /// A range read inside this request: at `revision` 0 it sees this request's own earlier
    /// changes (etcd's txn reads do); at an explicit revision it reads that revision's history.
    pub fn range(
        &self,
        range: &KeyRange,
        options: &RangeOptions,
        revision: i64,
    ) -> Result<(RangeResult, i64), MvccError> {
        let at = view::check_revision(revision, self.revision(), self.compacted()?)?;
        Ok((self.view.range(range, options, at)?, self.revision()))
    }

    /// Puts `key = value` with `lease`; returns the previous live generation.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<Option<KeyValue>, StorageError> {
        let previous = self.get(key)?;
        self.put_over(previous.as_ref(), key, value, lease)?;
        Ok(previous)
    }

    /// [`Writer::put`] for a caller that has just read `previous` with [`Writer::get`] (in this
    /// request), so the key is not looked up twice.
    pub fn put_over(
        &mut self,
        previous: Option<&KeyValue>,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<(), StorageError> {
        // Pair assertion: what the index keeps of the key is what history holds.
        debug_assert_eq!(self.live(key), previous.map(Live::of), "index and history");
        let live = previous.map(Live::of);
        self.write_put(live, key, value, lease, Some(previous.cloned()))
    }

    /// [`Writer::put_over`] without the key-value it replaces: `live` is [`Writer::live`] of
    /// the key, and the change leaves its `prev` unread.
    pub fn put_unread(
        &mut self,
        live: Option<Live>,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<(), StorageError> {
        self.write_put(live, key, value, lease, None)
    }

    /// A put of `key` over its live generation `previous`; `prev` is the change's previous
    /// key-value, `None` if unread.
    fn write_put(
        &mut self,
        previous: Option<Live>,
        key: &[u8],
        value: &[u8],
        lease: i64,
        prev: Option<Option<KeyValue>>,
    ) -> Result<(), StorageError> {
        let revision = self.next_revision();
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: previous.map_or(revision.main, |prev| prev.create_revision),
            mod_revision: revision.main,
            version: previous.map_or(1, |prev| prev.version + 1),
            value: value.to_vec(),
            lease,
        };
        assert!(
            kv.create_revision <= kv.mod_revision,
            "create after mod: {kv:?}"
        );
        if let Some(old) = previous.map(|prev| prev.lease).filter(|&old| old != 0) {
            if old != lease {
                self.lease_keys_table()?.remove((old, key))?;
            }
        }
        if lease != 0 {
            self.lease_keys_table()?.insert((lease, key), 0)?;
        }
        self.record(revision, HistoryEvent::Put(kv), prev)
    }

    /// Writes a change to history and the index; `prev` as in [`Writer::write_put`].
    fn record(
        &mut self,
        revision: Revision,
        event: HistoryEvent,
        prev: Option<Option<KeyValue>>,
    ) -> Result<(), StorageError> {
        self.view.history.insert(
            encoding::encode_revision(revision).as_slice(),
            encoding::encode_event(&event).as_slice(),
        )?;
        let live = match &event {
            HistoryEvent::Put(kv) => Some(Live::of(kv)),
            HistoryEvent::Delete(_) => None,
        };
        self.view.index.write().add(&event.kv().key, revision, live);
        self.changes.push(Change {
            revision,
            event,
            prev_read: prev.is_some(),
            prev: prev.flatten(),
        });
        Ok(())
    }

    /// Deletes every live key in `range`; returns the deleted generations in key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>, StorageError> {
        let doomed = self.view.live_in(range, self.revision())?;
        for kv in &doomed {
            let revision = self.next_revision();
            if kv.lease != 0 {
                self.lease_keys_table()?
                    .remove((kv.lease, kv.key.as_slice()))?;
            }
            let tombstone = KeyValue {
                key: kv.key.clone(),
                mod_revision: revision.main,
                ..KeyValue::default()
            };
            self.record(
                revision,
                HistoryEvent::Delete(tombstone),
                Some(Some(kv.clone())),
            )?;
        }
        Ok(doomed)
    }

    /// Compacts history at revision `at` (etcd's `Compact`): afterwards no read below `at` is
    /// served, and every change no read at `at` or later can see is gone — for each key, all its
    /// changes at or below `at` except the newest, and that one too if it is a tombstone below
    /// `at`. A tombstone at exactly `at` is kept (as etcd >= 3.4.34), so a watch from `at`
    /// still sees that delete. Compacting at or below the last compaction is `Compacted`; above
    /// the current revision, `FutureRevision`.
    pub fn compact(&mut self, at: i64) -> Result<Compacted, MvccError> {
        if at <= self.compacted()? {
            return Err(MvccError::Compacted);
        }
        if at > self.revision() {
            return Err(MvccError::FutureRevision);
        }
        // The index forgets these once the transaction commits; until then it names changes
        // that history no longer has, which no read at or above `at` looks for.
        let doomed = self.view.index.read_keys().doomed_by(at);
        let mut removed = 0;
        for revision in &doomed {
            let revision = encoding::encode_revision(*revision);
            if self
                .view
                .history
                .remove(revision.as_slice())
                .map_err(StorageError::from)?
                .is_some()
            {
                removed += 1;
            }
        }
        self.meta
            .insert(META_COMPACTED, encoding::encode_u64(at as u64).as_slice())
            .map_err(StorageError::from)?;
        self.compactions.push(at);
        Ok(Compacted {
            revisions_removed: removed,
        })
    }

    /// The lease `id`, if it exists.
    pub fn lease(&mut self, id: i64) -> Result<Option<LeaseRecord>, StorageError> {
        match self.leases()?.get(id)? {
            Some(bytes) => {
                let (ttl, remaining) = encoding::decode_lease(bytes.value())
                    .ok_or_else(|| StorageError(format!("corrupt lease {id:x}")))?;
                Ok(Some(LeaseRecord { ttl, remaining }))
            }
            None => Ok(None),
        }
    }

    /// Records lease `id` (which the caller has checked does not exist).
    pub fn set_lease(&mut self, id: i64, record: LeaseRecord) -> Result<(), StorageError> {
        let bytes = encoding::encode_lease(record.ttl, record.remaining);
        self.leases()?.insert(id, bytes.as_slice())?;
        Ok(())
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&mut self, id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
        super::leases::keys_in(self.lease_keys_table()?, id)
    }

    /// Revokes lease `id`: deletes every key attached to it, all at this request's revision (as
    /// etcd), then the lease. Returns the deleted generations.
    pub fn revoke_lease(&mut self, id: i64) -> Result<Vec<KeyValue>, StorageError> {
        let mut deleted = Vec::new();
        for key in self.lease_keys(id)? {
            deleted.extend(self.delete_range(&KeyRange::new(key, Vec::new()))?);
        }
        self.leases()?.remove(id)?;
        Ok(deleted)
    }

    /// etcd's `HashKV` at `at` over this request's view.
    pub fn hash_kv(&self, at: i64) -> Result<u32, StorageError> {
        self.view.hash_kv(at, self.compacted()?)
    }
}

/// The table in `slot`, opened in `txn` at first use.
fn opened<'slot, 'txn, K: Key + 'static, V: Value + 'static>(
    txn: &'txn WriteTransaction,
    slot: &'slot mut Option<Table<'txn, K, V>>,
    definition: TableDefinition<K, V>,
) -> Result<&'slot mut Table<'txn, K, V>, StorageError> {
    if slot.is_none() {
        *slot = Some(txn.open_table(definition)?);
    }
    Ok(slot.as_mut().expect("opened above"))
}
