//! A read view of the MVCC store: range reads at a revision, the changes of a span of
//! revisions (what a watch catches up from), and etcd's `HashKV`. The same code reads through a
//! read transaction ([`super::Reader`]) and, inside a write request (a txn's ranges see its own
//! earlier writes), through the writer's tables. Which keys are live at a revision comes from
//! the key index (`index.rs`); their key-values from history.

use redb::ReadableTable;

use super::index::Index;
use super::range::{self, RangeOptions, RangeResult};
use super::{hash, Change, KeyRange, KeyValue, MvccError, Revision};
use crate::storage::encoding::{self, HistoryEvent};
use crate::storage::{StorageError, KV_REVISIONS, META_COMPACTED};

type ByteTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// History and the key index, readable.
pub struct View<H> {
    pub(crate) history: H,
    pub(crate) index: Index,
}

impl View<ByteTable> {
    /// The view of a consistent read.
    pub fn open(reader: &super::Reader) -> Result<Self, StorageError> {
        Ok(Self {
            history: reader.txn().open_table(KV_REVISIONS)?,
            index: reader.index().clone(),
        })
    }
}

/// The revision of the last compaction, [`NEVER_COMPACTED`] if there was none.
pub fn compacted_revision<T>(meta: &T) -> Result<i64, StorageError>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    match meta.get(META_COMPACTED)? {
        Some(bytes) => Ok(encoding::decode_u64(bytes.value())
            .ok_or_else(|| StorageError("corrupt compacted revision".into()))?
            as i64),
        None => Ok(NEVER_COMPACTED),
    }
}

/// The compacted revision of a store never compacted (etcd's initial `compactMainRev`): so the
/// first compaction may be at revision 0, and HashKV reports -1.
pub const NEVER_COMPACTED: i64 = -1;

/// Checks a read at `revision` (0: the current one) against the store's current and compacted
/// revisions, as etcd's `rangeKeys`: below the compaction is gone, above the current is the future.
/// Answers the revision to read at.
pub fn check_revision(revision: i64, current: i64, compacted: i64) -> Result<i64, MvccError> {
    if revision > current {
        return Err(MvccError::FutureRevision);
    }
    if revision <= 0 {
        return Ok(current);
    }
    if revision < compacted {
        return Err(MvccError::Compacted);
    }
    Ok(revision)
}

impl<H> View<H>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
{
    /// Reads `range` as it was at revision `at`, which the caller has checked
    /// ([`check_revision`]).
    pub fn range(
        &self,
        range: &KeyRange,
        options: &RangeOptions,
        at: i64,
    ) -> Result<RangeResult, StorageError> {
        let revisions = self.index.read_keys().live_revisions_at(range, at);
        range::select(&revisions, |revision| self.put_at(revision), options)
    }

    /// The key-values of `range` live at `at`, in key order.
    pub(crate) fn live_in(&self, range: &KeyRange, at: i64) -> Result<Vec<KeyValue>, StorageError> {
        let revisions = self.index.read_keys().live_revisions_at(range, at);
        revisions
            .into_iter()
            .map(|revision| self.put_at(revision))
            .collect()
    }

    /// The live generation of `key` at `at`, if any.
    pub(crate) fn live(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>, StorageError> {
        let revision = self.index.read_keys().live_at(key, at);
        revision.map(|revision| self.put_at(revision)).transpose()
    }

    /// The key-value of the put at `revision`, which the index names.
    fn put_at(&self, revision: Revision) -> Result<KeyValue, StorageError> {
        let missing = || StorageError(format!("history has no put at revision {revision:?}"));
        let event = self
            .history
            .get(encoding::encode_revision(revision).as_slice())?
            .ok_or_else(missing)?;
        match event.value().split_first() {
            Some((b'P', kv)) => super::decode(kv),
            _ => Err(missing()),
        }
    }

    /// Every retained change of main revisions `from..=to`, in revision order, each with the
    /// key's generation before it when `with_prev` (what etcd reads at `mod_revision - 1`).
    /// The caller has checked `from` against the compaction: below it, changes are gone.
    pub fn changes(
        &self,
        from: i64,
        to: i64,
        with_prev: bool,
    ) -> Result<Vec<Change>, StorageError> {
        let lower = encoding::encode_revision(Revision { main: from, sub: 0 });
        let upper = encoding::encode_revision(Revision {
            main: to,
            sub: i64::MAX,
        });
        let mut changes = Vec::new();
        for item in self
            .history
            .range::<&[u8]>(lower.as_slice()..=upper.as_slice())?
        {
            let (revision, event) = item?;
            let revision = encoding::decode_revision(revision.value())
                .ok_or_else(|| StorageError("corrupt revision key".into()))?;
            let event = encoding::decode_event(event.value())
                .ok_or_else(|| StorageError("corrupt history event".into()))?;
            let prev = if with_prev {
                let before = self.index.read_keys().put_before(&event.kv().key, revision);
                before.map(|before| self.put_at(before)).transpose()?
            } else {
                None
            };
            changes.push(Change {
                revision,
                event,
                prev,
                prev_read: with_prev,
            });
        }
        Ok(changes)
    }

    /// etcd's `HashKV` at revision `at` on a store compacted at `compacted`: CRC-32C over
    /// history rows, byte for byte as etcd hashes its `key` bucket (`HashByRev`), so equal
    /// histories give equal hashes on every member and against etcd itself.
    ///
    /// etcd's row selection: rows above `at` are skipped; rows in `(compacted, at]` are hashed;
    /// a row at or below `compacted` (what compaction kept) is hashed only if it is still a
    /// live key's newest change at `at` (etcd's `keep` set) — or if no key at all is live at
    /// `at` (etcd skips the test when `keep` is empty). A tombstone kept at exactly
    /// `compacted` is never hashed (etcd >= 3.4.34 keeps it and skips it the same way).
    pub fn hash_kv(&self, at: i64, compacted: i64) -> Result<u32, StorageError> {
        let mut hasher = hash::EtcdKvHasher::new();
        let upper = encoding::encode_revision(Revision {
            main: at,
            sub: i64::MAX,
        });
        let mut keep_is_empty: Option<bool> = None;
        for item in self.history.range::<&[u8]>(..=upper.as_slice())? {
            let (revision, event) = item?;
            let revision = encoding::decode_revision(revision.value())
                .ok_or_else(|| StorageError("corrupt revision key".into()))?;
            let event = encoding::decode_event(event.value())
                .ok_or_else(|| StorageError("corrupt history event".into()))?;
            if revision.main <= compacted {
                let HistoryEvent::Put(kv) = &event else {
                    continue;
                };
                let index = self.index.read_keys();
                let empty = *keep_is_empty.get_or_insert_with(|| index.nothing_live_at(at));
                if !empty && index.changed_after(&kv.key, revision, at) {
                    continue;
                }
            }
            hasher.add(revision, &event);
        }
        Ok(hasher.finish())
    }
}
