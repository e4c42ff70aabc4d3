//! The key index: every key's retained changes, by revision, in memory (etcd's `treeIndex`).
//!
//! Why in memory: a put used to write three B-trees in redb (the history row, the live table's
//! row and the index row), two of them at the key's random place, so at 64 clients on one node
//! the applier spent most of its time copying and checksumming redb pages and evicting dirty
//! ones (1.2 page writes and 1.2 page reads a put). Now redb holds each change once, in
//! `kv_revisions` (appended in revision order), and this index is derived from it: rebuilt from
//! history when a member starts or installs a snapshot, and kept up to date by the writer.
//!
//! What a key holds: its retained changes in revision order, each a put or a tombstone. The
//! live generation of a key at revision `at` is its newest change at or below `at`, if that is
//! a put (see `mvcc/mod.rs` for generations and compaction).
//!
//! Readers and the writer share one index ([`Index`]) while the writer runs ahead of them:
//! - The writer adds a change before its transaction commits, so the index may hold changes
//!   above what a reader's read transaction has; a reader only looks at or below its revision.
//! - Compaction is the one removal. The writer removes the rows from history in its
//!   transaction and the index forgets them only after that commits ([`AfterCommit`]), so the
//!   index holds at least what any read transaction's history holds, at or above its
//!   compaction, and the reads at or above that compaction find the same newest changes either
//!   way. A reader whose index was compacted past its transaction's compaction (it opened
//!   before the compaction committed and read after the index forgot) starts again
//!   ([`Index::read`]), as does one that met a snapshot install (`epoch`).
//!
//! Architecture Invariant: every change in history is in the index. A change enters the index
//! before its transaction commits and leaves it only after its removal has committed; what the
//! index names beyond history (the open transaction's changes, what a committed compaction
//! removed a moment ago) no read at or above that compaction looks for.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use super::{KeyRange, Live, Revision, Span};
use crate::storage::encoding;
use crate::storage::{StorageError, KV_REVISIONS, SM_META};

/// One retained change of a key. `sub` is 32 bits: a request makes at most one change a key,
/// and no request changes four billion keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    main: i64,
    sub: u32,
    tombstone: bool,
}

impl Entry {
    fn revision(self) -> Revision {
        Revision {
            main: self.main,
            sub: i64::from(self.sub),
        }
    }
}

/// How long a key [`IndexKey`] keeps in the map's own nodes.
const INLINE: usize = 22;

/// A key of the index, ordered and compared as its bytes. A key of up to [`INLINE`] bytes lives
/// in the map's node itself: a lookup compares it where it finds it instead of following a
/// pointer for each comparison (a cache miss each, once the index outgrows the cache: at
/// 100,000 keys the lookup of a put's key was 6 % of a member's CPU), and it needs no
/// allocation of its own (24 bytes in the node instead of 16 plus a 32-byte heap block).
#[derive(Clone, PartialEq, Eq)]
enum IndexKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<IndexKey>() == 24);

impl IndexKey {
    fn new(key: &[u8]) -> Self {
        if key.len() > INLINE {
            return Self::Heap(key.into());
        }
        let mut bytes = [0; INLINE];
        bytes[..key.len()].copy_from_slice(key);
        // At most INLINE (22) bytes: the length fits a u8.
        Self::Inline {
            len: key.len() as u8,
            bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }
}

// `Borrow<[u8]>` lets the map be searched by `&[u8]`, which requires the key's order to be its
// bytes' order. (Equality may stay derived: equal bytes have one representation.)
impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// A key's retained changes, oldest first, and what a put needs of its newest change if that
/// is a put.
#[derive(Debug, Default)]
struct KeyState {
    changes: Vec<Entry>,
    live: Option<Live>,
}

/// How many times [`Index::read`] tries before it gives up.
const READ_ATTEMPTS: usize = 1000;

/// The index itself; see [`Index`] for the shared handle.
#[derive(Debug)]
pub struct KeyIndex {
    keys: BTreeMap<IndexKey, KeyState>,
    /// The revision of the last compaction applied to the index.
    compacted: i64,
    /// Changed by every snapshot install: a reader from before it must start again.
    epoch: u64,
}

/// The newest change of `changes` at or below main revision `at`.
fn newest_at(changes: &[Entry], at: i64) -> Option<Entry> {
    changes.iter().rev().find(|entry| entry.main <= at).copied()
}

/// The index of an empty store, never compacted.
impl Default for KeyIndex {
    fn default() -> Self {
        Self::new(super::NEVER_COMPACTED)
    }
}

impl KeyIndex {
    fn new(compacted: i64) -> Self {
        Self {
            keys: BTreeMap::new(),
            compacted,
            epoch: 0,
        }
    }

    /// Records a change of `key` at `revision`, which must be newer than the key's others: a
    /// put, with what it made of the key (`Some`), or a delete (`None`).
    pub(crate) fn add(&mut self, key: &[u8], revision: Revision, live: Option<Live>) {
        let entry = Entry {
            main: revision.main,
            sub: u32::try_from(revision.sub).expect("a request changes fewer than 2^32 keys"),
            tombstone: live.is_none(),
        };
        match self.keys.get_mut(key) {
            Some(state) => {
                let last = state
                    .changes
                    .last()
                    .expect("a key in the index has changes");
                assert!(
                    last.revision() < revision,
                    "index: change at {revision:?} after one at {:?}",
                    last.revision()
                );
                state.changes.push(entry);
                state.live = live;
            }
            None => {
                let state = KeyState {
                    changes: vec![entry],
                    live,
                };
                self.keys.insert(IndexKey::new(key), state);
            }
        }
    }

    /// The revision of `key`'s live generation's newest put at main revision `at`, if the key
    /// is live there.
    pub(crate) fn live_at(&self, key: &[u8], at: i64) -> Option<Revision> {
        let entry = newest_at(&self.keys.get(key)?.changes, at)?;
        (!entry.tombstone).then(|| entry.revision())
    }

    /// What a put needs of `key`'s live generation after every change the index has, if the
    /// key is live.
    pub(crate) fn live(&self, key: &[u8]) -> Option<Live> {
        self.keys.get(key)?.live
    }

    /// Calls `visit` with the revision of each key of `range` live at `at`, in key order,
    /// until it answers false.
    pub(crate) fn for_each_live_at(
        &self,
        range: &KeyRange,
        at: i64,
        visit: &mut dyn FnMut(&[u8], Revision) -> bool,
    ) {
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = match range.span() {
            Span::Empty => return,
            Span::Single(key) => {
                if let Some(revision) = self.live_at(key, at) {
                    visit(key, revision);
                }
                return;
            }
            Span::From(start) => (Bound::Included(start), Bound::Unbounded),
            Span::Between(start, end) => (Bound::Included(start), Bound::Excluded(end)),
        };
        for (key, state) in self.keys.range::<[u8], _>(bounds) {
            let Some(entry) = newest_at(&state.changes, at).filter(|entry| !entry.tombstone) else {
                continue;
            };
            if !visit(key.as_bytes(), entry.revision()) {
                return;
            }
        }
    }

    /// The revisions of the keys of `range` live at `at`, in key order.
    pub(crate) fn live_revisions_at(&self, range: &KeyRange, at: i64) -> Vec<Revision> {
        let mut revisions = Vec::new();
        self.for_each_live_at(range, at, &mut |_, revision| {
            revisions.push(revision);
            true
        });
        revisions
    }

    /// The put that was `key`'s live generation just before `revision`, if the index still has
    /// it (what etcd reads at `mod_revision - 1` for a watcher's `prev_kv`).
    pub(crate) fn put_before(&self, key: &[u8], revision: Revision) -> Option<Revision> {
        let entry = self
            .keys
            .get(key)?
            .changes
            .iter()
            .rev()
            .find(|entry| entry.revision() < revision)?;
        (!entry.tombstone).then(|| entry.revision())
    }

    /// Whether `key` changed after revision `after`, up to main revision `upto`.
    pub(crate) fn changed_after(&self, key: &[u8], after: Revision, upto: i64) -> bool {
        self.keys.get(key).is_some_and(|state| {
            state
                .changes
                .iter()
                .any(|entry| entry.revision() > after && entry.main <= upto)
        })
    }

    /// Whether no key is live at `at`.
    pub(crate) fn nothing_live_at(&self, at: i64) -> bool {
        let mut any = false;
        self.for_each_live_at(&KeyRange::new(vec![0], vec![0]), at, &mut |_, _| {
            any = true;
            false
        });
        !any
    }

    /// The changes compaction at `at` removes, in key order: of each key, every change at or
    /// below `at` but the newest, and that one too if it is a tombstone below `at` (etcd's
    /// `keyIndex.compact`; a tombstone at exactly `at` stays, so a watch from `at` sees it).
    pub(crate) fn doomed_by(&self, at: i64) -> Vec<Revision> {
        let mut doomed = Vec::new();
        for KeyState { changes, .. } in self.keys.values() {
            let upto = changes.partition_point(|entry| entry.main <= at);
            if upto == 0 {
                continue;
            }
            doomed.extend(changes[..upto - 1].iter().map(|entry| entry.revision()));
            let newest = changes[upto - 1];
            if newest.tombstone && newest.main < at {
                doomed.push(newest.revision());
            }
        }
        doomed
    }

    /// Forgets what compaction at `at` removes from history ([`Self::doomed_by`]).
    fn compact(&mut self, at: i64) {
        // The newest change stays unless it is a tombstone, so `live` stays true.
        self.keys.retain(|_, KeyState { changes, .. }| {
            let upto = changes.partition_point(|entry| entry.main <= at);
            if upto > 0 {
                let newest = changes[upto - 1];
                let keep_newest = !(newest.tombstone && newest.main < at);
                let drop = if keep_newest { upto - 1 } else { upto };
                changes.drain(..drop);
            }
            !changes.is_empty()
        });
        self.compacted = self.compacted.max(at);
    }

    /// How many keys have changes in the index.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Every change the index names, in revision order.
    #[cfg(test)]
    pub(crate) fn revisions(&self) -> Vec<Revision> {
        let mut all: Vec<Revision> = self
            .keys
            .values()
            .flat_map(|state| state.changes.iter().map(|entry| entry.revision()))
            .collect();
        all.sort();
        all
    }
}

/// The member's key index, shared by its writer and its readers (clones share it).
#[derive(Debug, Clone, Default)]
pub struct Index(Arc<RwLock<KeyIndex>>);

/// What the index has to forget once the writer's transaction has committed: the changes its
/// compactions removed from history ([`super::Writer::finish`]).
#[must_use = "the index must forget what the committed compactions removed"]
#[derive(Debug, Default)]
pub struct AfterCommit {
    pub(crate) compactions: Vec<i64>,
}

impl AfterCommit {
    /// Call after the transaction committed.
    pub fn apply(self, index: &Index) {
        if self.compactions.is_empty() {
            return;
        }
        let mut keys = index.write();
        for at in self.compactions {
            keys.compact(at);
        }
    }
}

/// A consistent read of the store: a redb read transaction and the index as of the same
/// snapshot install. Opened by [`Index::read`].
pub struct Reader {
    txn: ReadTransaction,
    index: Index,
    epoch: u64,
    /// The compaction `txn` has: the index must not have forgotten more.
    compacted: i64,
}

impl Reader {
    pub fn txn(&self) -> &ReadTransaction {
        &self.txn
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The compaction of this read's transaction.
    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// Whether everything read through this reader's index was consistent with its
    /// transaction (no snapshot install, no compaction past the transaction's).
    fn is_consistent(&self) -> bool {
        let keys = self.index.read_keys();
        keys.epoch == self.epoch && keys.compacted <= self.compacted
    }
}

impl Index {
    /// Builds the index from the history of `db`'s last commit.
    pub fn load(db: &Database) -> Result<Self, StorageError> {
        Ok(Self(Arc::new(RwLock::new(KeyIndex::of(
            &db.begin_read()?,
        )?))))
    }

    /// Replaces the index with `keys`, the index of a snapshot being installed: `commit`
    /// (the install's) runs with the index locked, so no reader opens a transaction between
    /// the new store and the new index, and readers from before start again.
    pub fn replace<E>(
        &self,
        mut keys: KeyIndex,
        commit: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut current = self.write();
        commit()?;
        keys.epoch = current.epoch + 1;
        *current = keys;
        Ok(())
    }

    pub(crate) fn read_keys(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.0.read().expect("key index lock")
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.0.write().expect("key index lock")
    }

    /// Runs `read` on a consistent read of `db` and this index, and again on a new one if a
    /// compaction or a snapshot install moved the index under it (what it answered then is
    /// thrown away, errors included). Both are rare, and a new read sees them committed.
    pub fn read<T>(
        &self,
        db: &Database,
        mut read: impl FnMut(&Reader) -> T,
    ) -> Result<T, StorageError> {
        // Each retry follows a compaction or an install that committed meanwhile; so many in a
        // row mean the index and the store disagree for good, which must not spin forever.
        for _ in 0..READ_ATTEMPTS {
            let reader = self.reader(db)?;
            let answer = read(&reader);
            if reader.is_consistent() {
                return Ok(answer);
            }
        }
        let keys = self.read_keys();
        Err(StorageError(format!(
            "the key index (compacted at {}) is ahead of the store's compaction",
            keys.compacted
        )))
    }

    /// A read of `db` with this index, consistent as long as nothing moves the index under it
    /// ([`Self::read`] checks that afterwards).
    pub(crate) fn reader(&self, db: &Database) -> Result<Reader, StorageError> {
        let keys = self.read_keys();
        let txn = db.begin_read()?;
        let compacted = super::compacted_revision(&txn.open_table(SM_META)?)?;
        Ok(Reader {
            txn,
            index: self.clone(),
            epoch: keys.epoch,
            compacted,
        })
    }
}

impl KeyIndex {
    /// The index of `txn`'s history.
    pub fn of(txn: &ReadTransaction) -> Result<Self, StorageError> {
        let compacted = super::compacted_revision(&txn.open_table(SM_META)?)?;
        let mut keys = KeyIndex::new(compacted);
        for item in txn.open_table(KV_REVISIONS)?.iter()? {
            let (revision, event) = item?;
            add_row(&mut keys, revision.value(), event.value())?;
        }
        Ok(keys)
    }
}

/// Adds one history row (encoded revision and event) to `keys`.
fn add_row(keys: &mut KeyIndex, revision: &[u8], event: &[u8]) -> Result<(), StorageError> {
    let corrupt = || StorageError("corrupt history row".into());
    let revision = encoding::decode_revision(revision).ok_or_else(corrupt)?;
    let summary = encoding::event_summary(event).ok_or_else(corrupt)?;
    let live = (!summary.delete).then_some(Live {
        create_revision: summary.create_revision,
        version: summary.version,
        lease: summary.lease,
    });
    keys.add(summary.key, revision, live);
    Ok(())
}

impl KeyIndex {
    /// The index of history rows (encoded revision, encoded event) given in revision order, of
    /// a store compacted at `compacted`: a snapshot being installed or sent.
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        compacted: i64,
    ) -> Result<Self, StorageError> {
        let mut keys = KeyIndex::new(compacted);
        for (revision, event) in rows {
            add_row(&mut keys, revision, event)?;
        }
        Ok(keys)
    }

    /// The revisions of every key live at the newest revision, in key order.
    pub fn live_revisions(&self) -> Vec<Revision> {
        self.live_revisions_at(&KeyRange::new(vec![0], vec![0]), i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    /// A put at `main` (its own generation, for these tests), or a delete.
    fn put(main: i64, tombstone: bool) -> Option<Live> {
        (!tombstone).then_some(Live {
            create_revision: main,
            version: 1,
            lease: 0,
        })
    }

    /// The worked example of `mvcc/mod.rs`: foo across three generations.
    fn foo() -> KeyIndex {
        let mut keys = KeyIndex::default();
        for (main, tombstone) in [(2, false), (3, false), (4, true), (5, false), (6, true)] {
            keys.add(b"foo", rev(main, 0), put(main, tombstone));
        }
        keys.add(b"foo", rev(7, 0), put(7, false));
        keys
    }

    #[test]
    fn the_live_generation_is_the_newest_change_at_or_below_a_revision() {
        let keys = foo();
        let live: Vec<Option<i64>> = (1..=8)
            .map(|at| keys.live_at(b"foo", at).map(|r| r.main))
            .collect();
        assert_eq!(
            live,
            [
                None,
                Some(2),
                Some(3),
                None,
                Some(5),
                None,
                Some(7),
                Some(7)
            ]
        );
        assert_eq!(keys.put_before(b"foo", rev(3, 0)), Some(rev(2, 0)));
        assert_eq!(keys.put_before(b"foo", rev(5, 0)), None, "deleted at 4");
        assert!(keys.changed_after(b"foo", rev(3, 0), 4));
        assert!(!keys.changed_after(b"foo", rev(7, 0), 9));
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_above_it_need() {
        for (at, left) in [
            (3, vec![3, 4, 5, 6, 7]),
            (4, vec![4, 5, 6, 7]),
            (5, vec![5, 6, 7]),
            (6, vec![6, 7]),
            (7, vec![7]),
        ] {
            let mut keys = foo();
            let doomed: Vec<i64> = keys.doomed_by(at).iter().map(|r| r.main).collect();
            keys.compact(at);
            let kept: Vec<i64> = keys.keys[&b"foo"[..]]
                .changes
                .iter()
                .map(|e| e.main)
                .collect();
            assert_eq!(kept, left, "compact {at}");
            assert_eq!(doomed.len() + kept.len(), 6, "compact {at}: {doomed:?}");
            assert_eq!(keys.compacted, at);
        }
        // A key whose newest change below the compaction is a tombstone goes entirely.
        let mut keys = KeyIndex::default();
        keys.add(b"gone", rev(2, 0), put(2, false));
        keys.add(b"gone", rev(3, 0), put(3, true));
        keys.compact(4);
        assert_eq!(keys.keys(), 0);
    }

    #[test]
    fn ranges_visit_live_keys_in_key_order() {
        let mut keys = KeyIndex::default();
        keys.add(b"a", rev(2, 0), put(2, false));
        keys.add(b"b", rev(2, 1), put(2, false));
        keys.add(b"c", rev(3, 0), put(3, false));
        keys.add(b"b", rev(4, 0), put(4, true));
        let everything = KeyRange::new(vec![0], vec![0]);
        assert_eq!(
            keys.live_revisions_at(&everything, 4),
            [rev(2, 0), rev(3, 0)]
        );
        assert_eq!(
            keys.live_revisions_at(&everything, 3),
            [rev(2, 0), rev(2, 1), rev(3, 0)]
        );
        assert_eq!(
            keys.live_revisions_at(&KeyRange::new("b", "c"), 3),
            [rev(2, 1)]
        );
        assert!(keys.nothing_live_at(1));
        assert!(!keys.nothing_live_at(2));
    }

    #[test]
    fn keys_long_and_short_keep_byte_order() {
        // Around the inline length, with zero bytes (the inline padding) and 0xff.
        let mut all: Vec<Vec<u8>> = Vec::new();
        for len in [1, 2, INLINE - 1, INLINE, INLINE + 1, 40] {
            for fill in [0u8, b'k', 0xff] {
                let mut key = vec![fill; len];
                all.push(key.clone());
                key.push(0);
                all.push(key.clone());
                if let Some(last) = key.last_mut() {
                    *last = 1;
                }
                all.push(key);
            }
        }
        all.sort();
        all.dedup();
        let mut keys = KeyIndex::default();
        for (main, key) in (2..).zip(all.iter().rev()) {
            keys.add(key, rev(main, 0), put(main, false));
        }
        let mut seen = Vec::new();
        keys.for_each_live_at(&KeyRange::new(vec![0], vec![0]), i64::MAX, &mut |key, _| {
            seen.push(key.to_vec());
            true
        });
        assert_eq!(seen, all);
        for (main, key) in (2..).zip(all.iter().rev()) {
            assert_eq!(keys.live(key).map(|live| live.create_revision), Some(main));
            let from = KeyRange::new(key.clone(), vec![0]);
            let count = keys.live_revisions_at(&from, i64::MAX).len();
            assert_eq!(count, all.len() - all.binary_search(key).unwrap());
        }
        assert_eq!(keys.live(&[b'k'; INLINE + 2]), None);
    }

    #[test]
    #[should_panic(expected = "index: change at")]
    fn a_change_older_than_the_newest_is_refused() {
        let mut keys = KeyIndex::default();
        keys.add(b"a", rev(3, 0), put(3, false));
        keys.add(b"a", rev(2, 0), put(2, false));
    }
}
