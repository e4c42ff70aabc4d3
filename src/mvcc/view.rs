//! A read view of the MVCC store: range reads at the current or a past revision, and etcd's
//! `HashKV`. The same code reads through a read transaction and, inside a write request (a txn's
//! ranges see its own earlier writes), through the writer's tables.

use redb::{ReadTransaction, ReadableTable};

use super::range::{self, RangeOptions, RangeResult};
use super::{hash, Change, KeyRange, KeyValue, MvccError, Revision, Span};
use crate::storage::encoding::{self, HistoryEvent};
use crate::storage::{StorageError, KV, KV_INDEX, KV_REVISIONS, META_COMPACTED};

type ByteTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
type IndexTable = redb::ReadOnlyTable<(&'static [u8], u64, u64), u8>;

/// A visitor of `(encoded revision, encoded key-value)`; false stops the walk.
type VisitWithRevision<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StorageError> + 'a;

/// The three MVCC tables, readable.
pub struct View<K, H, I> {
    pub(crate) kv: K,
    pub(crate) history: H,
    pub(crate) index: I,
}

impl View<ByteTable, ByteTable, IndexTable> {
    pub fn open(txn: &ReadTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            kv: txn.open_table(KV)?,
            history: txn.open_table(KV_REVISIONS)?,
            index: txn.open_table(KV_INDEX)?,
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

impl<K, H, I> View<K, H, I>
where
    K: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<&'static [u8], &'static [u8]>,
    I: ReadableTable<(&'static [u8], u64, u64), u8>,
{
    /// Reads `range` as it was at revision `at`, or as it is now (`None`: the live table). The
    /// caller has checked `at` ([`check_revision`]).
    pub fn range(
        &self,
        range: &KeyRange,
        options: &RangeOptions,
        at: Option<i64>,
    ) -> Result<RangeResult, StorageError> {
        match at {
            None => range::select(|visit| self.for_each_live(range, visit), options),
            Some(at) => range::select(|visit| self.for_each_at(range, at, visit), options),
        }
    }

    /// Visits the encoded live key-values of `range` in key order until `visit` returns false.
    pub(crate) fn for_each_live(
        &self,
        range: &KeyRange,
        visit: &mut dyn FnMut(&[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let iter = match range.span() {
            Span::Single(key) => {
                if let Some(revision) = self.kv.get(key)? {
                    self.visit_put(revision.value(), visit)?;
                }
                return Ok(());
            }
            Span::Empty => return Ok(()),
            Span::From(start) => self.kv.range::<&[u8]>(start..)?,
            Span::Between(start, end) => self.kv.range::<&[u8]>(start..end)?,
        };
        for item in iter {
            let (_key, revision) = item?;
            if !self.visit_put(revision.value(), visit)? {
                break;
            }
        }
        Ok(())
    }

    /// The live generation of `key`, if any.
    pub(crate) fn live(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        let Some(revision) = self.kv.get(key)? else {
            return Ok(None);
        };
        let mut found = None;
        self.visit_put(revision.value(), &mut |record| {
            found = Some(super::decode(record)?);
            Ok(false)
        })?;
        Ok(found)
    }

    /// Visits the encoded key-value of the put at `revision` (an encoded [`Revision`] that the
    /// live table or the index names); answers what `visit` does.
    fn visit_put(
        &self,
        revision: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> Result<bool, StorageError>,
    ) -> Result<bool, StorageError> {
        let missing = || {
            let main = encoding::decode_revision(revision).map_or(-1, |revision| revision.main);
            StorageError(format!("history has no put at revision {main}"))
        };
        let event = self.history.get(revision)?.ok_or_else(missing)?;
        match event.value().split_first() {
            Some((b'P', kv)) => visit(kv),
            _ => Err(missing()),
        }
    }

    /// Visits, in key order, the encoded key-value each key of `range` had at revision `at`:
    /// its newest change at or below `at`, unless that change was a delete.
    fn for_each_at(
        &self,
        range: &KeyRange,
        at: i64,
        visit: &mut dyn FnMut(&[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        self.for_each_newest_put(range, at, &mut |_revision, record| visit(record))
    }

    /// [`Self::for_each_at`], with each key-value's encoded [`Revision`] (its history key).
    pub(crate) fn for_each_newest_put(
        &self,
        range: &KeyRange,
        at: i64,
        visit: &mut VisitWithRevision<'_>,
    ) -> Result<(), StorageError> {
        let at = at as u64;
        let iter = match range.span() {
            Span::Empty => return Ok(()),
            Span::Single(key) => self.index.range((key, 0u64, 0u64)..=(key, at, u64::MAX))?,
            Span::From(start) => self.index.range((start, 0u64, 0u64)..)?,
            Span::Between(start, end) => {
                self.index.range((start, 0u64, 0u64)..(end, 0u64, 0u64))?
            }
        };
        // Index rows come sorted by (key, main, sub): the last row of a key at or below `at`
        // wins.
        let mut current_key: Vec<u8> = Vec::new();
        let mut newest: Option<(i64, i64, bool)> = None;
        let mut visit_newest = |newest: Option<(i64, i64, bool)>| -> Result<bool, StorageError> {
            let Some((main, sub, tombstone)) = newest else {
                return Ok(true);
            };
            if tombstone {
                return Ok(true);
            }
            let revision = encoding::encode_revision(Revision { main, sub });
            self.visit_put(&revision, &mut |record| visit(&revision, record))
        };
        for item in iter {
            let (key, entry) = item?;
            let (user_key, main, sub) = key.value();
            if user_key != current_key.as_slice() {
                if !visit_newest(newest.take())? {
                    return Ok(());
                }
                current_key.clear();
                current_key.extend_from_slice(user_key);
            }
            if main <= at {
                newest = Some((main as i64, sub as i64, entry.value() == 1));
            }
        }
        visit_newest(newest)?;
        Ok(())
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
                self.before(&event.kv().key, revision)?
            } else {
                None
            };
            changes.push(Change {
                revision,
                event,
                prev,
            });
        }
        Ok(changes)
    }

    /// The live generation `key` had just before `revision`, if history still has it.
    fn before(&self, key: &[u8], revision: Revision) -> Result<Option<KeyValue>, StorageError> {
        let upto = (key, revision.main as u64, revision.sub as u64);
        let Some(item) = self.index.range((key, 0u64, 0u64)..upto)?.next_back() else {
            return Ok(None);
        };
        let (entry, tombstone) = item?;
        if tombstone.value() == 1 {
            return Ok(None);
        }
        let (_, main, sub) = entry.value();
        let at = encoding::encode_revision(Revision {
            main: main as i64,
            sub: sub as i64,
        });
        match self.history.get(at.as_slice())? {
            Some(event) => match encoding::decode_event(event.value()) {
                Some(HistoryEvent::Put(kv)) => Ok(Some(kv)),
                _ => Err(StorageError(format!(
                    "index and history disagree at {main}"
                ))),
            },
            None => Err(StorageError(format!("index names missing revision {main}"))),
        }
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
                let empty = match keep_is_empty {
                    Some(empty) => empty,
                    None => *keep_is_empty.insert(self.nothing_live_at(at)?),
                };
                if !empty && self.changed_after(&kv.key, revision, at)? {
                    continue;
                }
            }
            hasher.add(revision, &event);
        }
        Ok(hasher.finish())
    }

    /// Whether no key is live at revision `at`.
    fn nothing_live_at(&self, at: i64) -> Result<bool, StorageError> {
        let mut any = false;
        self.for_each_at(&KeyRange::new(vec![0u8], vec![0u8]), at, &mut |_| {
            any = true;
            Ok(false)
        })?;
        Ok(!any)
    }

    /// Whether `key` changed after revision `after`, up to main revision `upto`.
    fn changed_after(&self, key: &[u8], after: Revision, upto: i64) -> Result<bool, StorageError> {
        if upto < after.main {
            return Ok(false);
        }
        let from = (key, after.main as u64, after.sub as u64 + 1);
        Ok(self
            .index
            .range(from..=(key, upto as u64, u64::MAX))?
            .next()
            .is_some())
    }
}
