//! etcd's multi-version key-value model over redb.
//!
//! Revisions. The store starts at revision 1 (as etcd). Every write request that changes
//! something — a put, a delete that deletes at least one key, a txn with such writes — takes the
//! next main revision; `sub` numbers the changes inside that request from 0. A delete that matches
//! nothing does not advance the revision.
//!
//! Generations. Each live key has `create_revision` (the main revision of the put that created
//! this generation), `mod_revision` (its last change) and `version` (puts in this generation,
//! from 1). A delete ends the generation: it writes a tombstone to history and removes the key, so
//! a later put starts a new generation with `version = 1` and a fresh `create_revision`:
//!
//! ```text
//! rev 2 put foo=a   -> foo{create 2, mod 2, version 1}
//! rev 3 put foo=b   -> foo{create 2, mod 3, version 2}
//! rev 4 del foo     -> history (4,0) = tombstone(foo); foo is gone
//! rev 5 put foo=c   -> foo{create 5, mod 5, version 1}
//! ```
//!
//! The `kv` table holds the live generation of every key (what a read at the current revision
//! sees); `kv_revisions` holds every change by revision, for history reads, watch and compaction.
//!
//! Architecture Invariant: mvcc never reads the clock and never decides a byte layout (that is
//! `storage::encoding`).

use redb::{ReadableTable, Table, WriteTransaction};

use crate::storage::encoding::{self, HistoryEvent};
use crate::storage::{StorageError, KV, KV_REVISIONS};

/// etcd's revision: `main` per write request, `sub` per change inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// The revision of an empty store, as etcd.
pub const INITIAL_REVISION: i64 = 1;

/// A key at one of its versions; etcd's `mvccpb.KeyValue` without the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

/// Which keys a request names, with etcd's conventions: an empty `range_end` is the single `key`;
/// `range_end = "\0"` is every key `>= key`; otherwise the half-open `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

enum Span<'a> {
    Single(&'a [u8]),
    From(&'a [u8]),
    Between(&'a [u8], &'a [u8]),
    Empty,
}

impl KeyRange {
    pub fn new(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    fn span(&self) -> Span<'_> {
        if self.range_end.is_empty() {
            Span::Single(&self.key)
        } else if self.range_end == [0] {
            Span::From(&self.key)
        } else if self.range_end.as_slice() > self.key.as_slice() {
            Span::Between(&self.key, &self.range_end)
        } else {
            Span::Empty
        }
    }

    /// Whether `candidate` is one of the keys this range names.
    pub fn contains(&self, candidate: &[u8]) -> bool {
        match self.span() {
            Span::Single(key) => candidate == key,
            Span::From(key) => candidate >= key,
            Span::Between(start, end) => candidate >= start && candidate < end,
            Span::Empty => false,
        }
    }
}

/// The answer to a range read at the current revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Every key in the range, whatever the limit.
    pub count: i64,
    /// Whether the limit left keys out.
    pub more: bool,
}

/// Visits the live keys of `range` in key order until `visit` returns false.
fn for_each_live<T>(
    table: &T,
    range: &KeyRange,
    mut visit: impl FnMut(&[u8]) -> Result<bool, StorageError>,
) -> Result<(), StorageError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let iter = match range.span() {
        Span::Single(key) => {
            if let Some(value) = table.get(key)? {
                visit(value.value())?;
            }
            return Ok(());
        }
        Span::Empty => return Ok(()),
        Span::From(start) => table.range::<&[u8]>(start..)?,
        Span::Between(start, end) => table.range::<&[u8]>(start..end)?,
    };
    for item in iter {
        let (_key, value) = item?;
        if !visit(value.value())? {
            break;
        }
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<KeyValue, StorageError> {
    encoding::decode_key_value(bytes)
        .ok_or_else(|| StorageError("corrupt key-value record".to_string()))
}

/// How results are ordered (etcd's `RangeRequest.SortOrder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

/// What results are ordered by (etcd's `RangeRequest.SortTarget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// The options of a range read that shape its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeOptions {
    /// At most this many key-values (0: no limit).
    pub limit: i64,
    /// Only count: no key-values are fetched, so `more` is false (as etcd).
    pub count_only: bool,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Each filter is off when 0.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl RangeOptions {
    fn has_filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    /// etcd sorts ascending when a target other than the key is named without an order.
    fn effective_order(&self) -> SortOrder {
        match (self.sort_order, self.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        }
    }

    fn keeps(&self, kv: &KeyValue) -> bool {
        let within = |value: i64, min: i64, max: i64| {
            (min == 0 || value >= min) && (max == 0 || value <= max)
        };
        within(
            kv.mod_revision,
            self.min_mod_revision,
            self.max_mod_revision,
        ) && within(
            kv.create_revision,
            self.min_create_revision,
            self.max_create_revision,
        )
    }
}

/// Reads the live keys of `range` (at the current revision), in etcd's order of operations
/// (`v3_server.go` `Range`):
///
/// 1. fetch: every key if an order was requested or a filter is set, otherwise the first
///    `limit + 1` keys in key order (all of them without a limit);
/// 2. drop keys outside the min/max mod and create revision filters;
/// 3. sort (stably: ties stay in key order) by the target, ascending if a target other than the
///    key is named with order NONE — which, as in etcd, sorts only the keys fetched in step 1;
/// 4. cut to `limit`, with `more` if that cut any.
///
/// `count` is every key in the range, whatever the limit and the filters. With `count_only` no
/// key-value is fetched at all, so nothing is cut and `more` is false.
pub fn range<T>(
    table: &T,
    range: &KeyRange,
    options: &RangeOptions,
) -> Result<RangeResult, StorageError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let limit = options.limit;
    let fetch_all = options.sort_order != SortOrder::None || options.has_filters() || limit <= 0;
    let mut result = RangeResult::default();
    for_each_live(table, range, |bytes| {
        result.count += 1;
        if options.count_only {
            return Ok(true);
        }
        if fetch_all || (result.kvs.len() as i64) <= limit {
            let kv = decode(bytes)?;
            if options.keeps(&kv) {
                result.kvs.push(kv);
            }
        }
        Ok(true)
    })?;
    let compare = |a: &KeyValue, b: &KeyValue| match options.sort_target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match options.effective_order() {
        SortOrder::Ascend => result.kvs.sort_by(compare),
        SortOrder::Descend => result.kvs.sort_by(|a, b| compare(b, a)),
        SortOrder::None => {}
    }
    if limit > 0 && result.kvs.len() as i64 > limit {
        result.kvs.truncate(limit as usize);
        result.more = true;
    }
    Ok(result)
}

/// Applies the changes of one write request, all at one main revision.
pub struct Writer<'txn> {
    kv: Table<'txn, &'static [u8], &'static [u8]>,
    history: Table<'txn, &'static [u8], &'static [u8]>,
    main: i64,
    next_sub: i64,
}

impl<'txn> Writer<'txn> {
    /// A writer for the request after `current_revision`.
    pub fn new(txn: &'txn WriteTransaction, current_revision: i64) -> Result<Self, StorageError> {
        Ok(Self {
            kv: txn.open_table(KV)?,
            history: txn.open_table(KV_REVISIONS)?,
            main: current_revision + 1,
            next_sub: 0,
        })
    }

    /// The revision this request ends at: the new one if it changed anything, else the old.
    pub fn revision(&self) -> i64 {
        if self.next_sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }

    fn next_revision(&mut self) -> Revision {
        let revision = Revision {
            main: self.main,
            sub: self.next_sub,
        };
        self.next_sub += 1;
        revision
    }

    /// The live generation of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        match self.kv.get(key)? {
            Some(bytes) => Ok(Some(decode(bytes.value())?)),
            None => Ok(None),
        }
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
        self.kv
            .insert(key, encoding::encode_key_value(&kv).as_slice())?;
        self.history.insert(
            encoding::encode_revision(revision).as_slice(),
            encoding::encode_event(&HistoryEvent::Put(kv)).as_slice(),
        )?;
        Ok(())
    }

    /// Deletes every live key in `range`; returns the deleted generations in key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>, StorageError> {
        let mut doomed = Vec::new();
        for_each_live(&self.kv, range, |bytes| {
            doomed.push(decode(bytes)?);
            Ok(true)
        })?;
        for kv in &doomed {
            let revision = self.next_revision();
            self.kv.remove(kv.key.as_slice())?;
            let tombstone = KeyValue {
                key: kv.key.clone(),
                mod_revision: revision.main,
                ..KeyValue::default()
            };
            self.history.insert(
                encoding::encode_revision(revision).as_slice(),
                encoding::encode_event(&HistoryEvent::Delete(tombstone)).as_slice(),
            )?;
        }
        Ok(doomed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    fn database() -> Database {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        crate::storage::create_tables(&db).unwrap();
        db
    }

    /// Runs one write request; returns the revision it ended at.
    fn write(db: &Database, current: i64, f: impl FnOnce(&mut Writer)) -> i64 {
        let txn = db.begin_write().unwrap();
        let revision = {
            let mut writer = Writer::new(&txn, current).unwrap();
            f(&mut writer);
            writer.revision()
        };
        txn.commit().unwrap();
        revision
    }

    fn read(db: &Database, key: &str, range_end: &str, limit: i64) -> RangeResult {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(KV).unwrap();
        let options = RangeOptions {
            limit,
            ..RangeOptions::default()
        };
        range(&table, &KeyRange::new(key, range_end), &options).unwrap()
    }

    #[test]
    fn generations_follow_etcd_revision_rules() {
        let db = database();
        let mut rev = INITIAL_REVISION;
        rev = write(&db, rev, |w| {
            assert_eq!(w.put(b"foo", b"a", 0).unwrap(), None)
        });
        assert_eq!(rev, 2);
        rev = write(&db, rev, |w| {
            let prev = w.put(b"foo", b"b", 0).unwrap().unwrap();
            assert_eq!((prev.value.as_slice(), prev.version), (&b"a"[..], 1));
        });
        let foo = read(&db, "foo", "", 0).kvs.remove(0);
        assert_eq!(
            (foo.create_revision, foo.mod_revision, foo.version),
            (2, 3, 2)
        );
        rev = write(&db, rev, |w| {
            assert_eq!(w.delete_range(&KeyRange::new("foo", "")).unwrap().len(), 1)
        });
        assert_eq!(rev, 4);
        rev = write(&db, rev, |w| {
            assert_eq!(w.put(b"foo", b"c", 0).unwrap(), None);
        });
        let foo = read(&db, "foo", "", 0).kvs.remove(0);
        assert_eq!(
            (foo.create_revision, foo.mod_revision, foo.version),
            (5, 5, 1)
        );
        assert_eq!(rev, 5);
    }

    #[test]
    fn a_delete_that_matches_nothing_keeps_the_revision() {
        let db = database();
        let rev = write(&db, 7, |w| {
            assert!(w.delete_range(&KeyRange::new("a", "z")).unwrap().is_empty())
        });
        assert_eq!(rev, 7);
    }

    #[test]
    fn one_request_with_many_changes_takes_one_main_revision() {
        let db = database();
        let rev = write(&db, INITIAL_REVISION, |w| {
            w.put(b"a", b"1", 0).unwrap();
            w.put(b"b", b"2", 0).unwrap();
        });
        assert_eq!(rev, 2);
        let rev = write(&db, rev, |w| {
            assert_eq!(w.delete_range(&KeyRange::new("a", "\0")).unwrap().len(), 2)
        });
        assert_eq!(rev, 3);
        let txn = db.begin_read().unwrap();
        let history = txn.open_table(KV_REVISIONS).unwrap();
        let revisions: Vec<_> = history
            .iter()
            .unwrap()
            .map(|item| encoding::decode_revision(item.unwrap().0.value()).unwrap())
            .map(|r| (r.main, r.sub))
            .collect();
        assert_eq!(revisions, vec![(2, 0), (2, 1), (3, 0), (3, 1)]);
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        let db = database();
        write(&db, 1, |w| {
            for key in ["testkey01", "testkey02", "testkey03", "testkey04", "z"] {
                w.put(key.as_bytes(), b"v", 0).unwrap();
            }
        });
        let keys = |r: RangeResult| -> Vec<String> {
            r.kvs
                .into_iter()
                .map(|kv| String::from_utf8(kv.key).unwrap())
                .collect()
        };
        // Half-open [a, b), as the tutorial's `get testkey01 testkey03`.
        assert_eq!(
            keys(read(&db, "testkey01", "testkey03", 0)),
            ["testkey01", "testkey02"]
        );
        // Prefix: range_end = prefix + 1.
        let limited = read(&db, "testke", "testkf", 2);
        assert_eq!((limited.count, limited.more), (4, true));
        assert_eq!(keys(limited), ["testkey01", "testkey02"]);
        // "\0" means every key from `key` on.
        assert_eq!(read(&db, "testkey04", "\0", 0).count, 2);
        assert_eq!(read(&db, "\0", "\0", 0).count, 5);
        // range_end before key names nothing.
        assert_eq!(read(&db, "z", "a", 0).count, 0);
        // A limit equal to the count leaves nothing out.
        assert!(!read(&db, "testke", "testkf", 4).more);
    }

    #[test]
    fn sorting_filters_and_limit_follow_etcd_order_of_operations() {
        let db = database();
        // a=1 (rev 2), b=3 (rev 3), c=2 (rev 4), then a again (rev 5): a{create 2, mod 5, version 2}
        let mut rev = INITIAL_REVISION;
        for (key, value) in [("a", "1"), ("b", "3"), ("c", "2"), ("a", "4")] {
            rev = write(&db, rev, |w| {
                w.put(key.as_bytes(), value.as_bytes(), 0).unwrap();
            });
        }
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(KV).unwrap();
        let all = KeyRange::new("\0", "\0");
        let keys = |options: RangeOptions| -> (Vec<String>, i64, bool) {
            let r = range(&table, &all, &options).unwrap();
            let keys = r
                .kvs
                .into_iter()
                .map(|kv| String::from_utf8(kv.key).unwrap())
                .collect();
            (keys, r.count, r.more)
        };
        let by = |sort_target, sort_order| RangeOptions {
            sort_target,
            sort_order,
            ..RangeOptions::default()
        };
        assert_eq!(
            keys(by(SortTarget::Value, SortOrder::Ascend)).0,
            ["c", "b", "a"]
        );
        assert_eq!(
            keys(by(SortTarget::Mod, SortOrder::Descend)).0,
            ["a", "c", "b"]
        );
        // A target without an order sorts ascending, as etcd.
        assert_eq!(
            keys(by(SortTarget::Create, SortOrder::None)).0,
            ["a", "b", "c"]
        );
        assert_eq!(
            keys(by(SortTarget::Key, SortOrder::Descend)).0,
            ["c", "b", "a"]
        );
        // Ties (version 1 for b and c) keep key order, ascending and descending.
        assert_eq!(
            keys(by(SortTarget::Version, SortOrder::Ascend)).0,
            ["b", "c", "a"]
        );
        assert_eq!(
            keys(by(SortTarget::Version, SortOrder::Descend)).0,
            ["a", "b", "c"]
        );
        // A target without an order sorts only the first limit + 1 keys in key order (etcd).
        let quirk = RangeOptions {
            limit: 1,
            ..by(SortTarget::Value, SortOrder::None)
        };
        assert_eq!(keys(quirk), (vec!["b".to_string()], 3, true));
        // Sort, then limit; count is every key in the range.
        let limited = RangeOptions {
            limit: 1,
            ..by(SortTarget::Value, SortOrder::Descend)
        };
        assert_eq!(keys(limited), (vec!["a".to_string()], 3, true));
        // Count only: nothing fetched, nothing cut.
        let count_only = RangeOptions {
            limit: 1,
            count_only: true,
            ..RangeOptions::default()
        };
        assert_eq!(keys(count_only), (vec![], 3, false));
        // Filters drop keys but not from the count.
        let filtered = RangeOptions {
            min_mod_revision: 3,
            max_create_revision: 3,
            ..RangeOptions::default()
        };
        assert_eq!(
            keys(filtered),
            (vec!["a".to_string(), "b".to_string()], 3, false)
        );
    }
}
