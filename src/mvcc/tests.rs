//! Worked examples of etcd's revision, generation, history and compaction rules.

use super::view;
use super::writer::Compacted;
use super::*;
use crate::storage::encoding;
use crate::storage::KV_REVISIONS;
use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable};

/// A store: the database and its key index.
struct Store {
    db: Database,
    index: Index,
}

impl std::ops::Deref for Store {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

impl Store {
    fn view(&self) -> (Reader, ReadView) {
        let reader = self.index.reader(&self.db).unwrap();
        let view = View::open(&reader).unwrap();
        (reader, view)
    }
}

type ReadView = View<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>;

fn database() -> Store {
    let db = Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap();
    crate::storage::create_tables(&db).unwrap();
    let index = Index::load(&db).unwrap();
    Store { db, index }
}

/// Runs one write request; returns the revision it ended at.
fn write(db: &Store, current: i64, f: impl FnOnce(&mut Writer)) -> i64 {
    let txn = db.begin_write().unwrap();
    let (revision, after_commit) = {
        let mut writer = Writer::new(&txn, &db.index, current).unwrap();
        f(&mut writer);
        (writer.revision(), writer.finish())
    };
    txn.commit().unwrap();
    after_commit.apply(&db.index);
    revision
}

/// A read at the newest revision.
fn read(db: &Store, key: &str, range_end: &str, limit: i64) -> RangeResult {
    let options = RangeOptions {
        limit,
        ..RangeOptions::default()
    };
    db.view()
        .1
        .range(&KeyRange::new(key, range_end), &options, i64::MAX)
        .unwrap()
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
fn prefixes_end_as_etcdctl_computes_them() {
    assert_eq!(
        KeyRange::prefix(b"kvb/w/"),
        KeyRange::new("kvb/w/", "kvb/w0")
    );
    assert_eq!(KeyRange::prefix(b"a\xff").range_end, b"b");
    assert_eq!(KeyRange::prefix(b"\xff\xff").range_end, b"\0");
    assert_eq!(KeyRange::prefix(b"").range_end, b"\0");
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
    let (_reader, view) = db.view();
    let all = KeyRange::new("\0", "\0");
    let keys = |options: RangeOptions| -> (Vec<String>, i64, bool) {
        let r = view.range(&all, &options, i64::MAX).unwrap();
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
    // Keys only: no values in the result, and a sort by value still sees them (etcd sorts,
    // then strips).
    let keys_only = RangeOptions {
        keys_only: true,
        ..by(SortTarget::Value, SortOrder::Descend)
    };
    let result = view.range(&all, &keys_only, i64::MAX).unwrap();
    let seen: Vec<_> = result
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (b"a".to_vec(), vec![]),
            (b"b".to_vec(), vec![]),
            (b"c".to_vec(), vec![])
        ]
    );
    let keys_only_by_key = RangeOptions {
        keys_only: true,
        ..RangeOptions::default()
    };
    let result = view.range(&all, &keys_only_by_key, i64::MAX).unwrap();
    assert!(result.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(result.kvs.len(), 3);
}

fn read_at(
    db: &Store,
    key: &str,
    range_end: &str,
    at: i64,
) -> Vec<(String, String, i64, i64, i64)> {
    let result = db
        .view()
        .1
        .range(&KeyRange::new(key, range_end), &RangeOptions::default(), at)
        .unwrap();
    result
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

fn hash_at(db: &Store, at: i64) -> u32 {
    let (reader, view) = db.view();
    view.hash_kv(at, reader.compacted()).unwrap()
}

fn compact(db: &Store, current: i64, at: i64) -> Result<Compacted, MvccError> {
    let txn = db.begin_write().unwrap();
    let mut writer = Writer::new(&txn, &db.index, current).unwrap();
    let result = writer.compact(at);
    let after_commit = writer.finish();
    txn.commit().unwrap();
    after_commit.apply(&db.index);
    result
}

/// etcd 3.4.23, fresh member: `put foo a; put foo b; del foo; put foo c; put bar x`.
fn etcd_probe_history(db: &Store) -> i64 {
    let mut rev = INITIAL_REVISION;
    rev = write(db, rev, |w| drop(w.put(b"foo", b"a", 0).unwrap()));
    rev = write(db, rev, |w| drop(w.put(b"foo", b"b", 0).unwrap()));
    rev = write(db, rev, |w| {
        drop(w.delete_range(&KeyRange::new("foo", "")).unwrap())
    });
    rev = write(db, rev, |w| drop(w.put(b"foo", b"c", 0).unwrap()));
    rev = write(db, rev, |w| drop(w.put(b"bar", b"x", 0).unwrap()));
    assert_eq!(rev, 6);
    rev
}

#[test]
fn history_reads_see_each_key_as_it_was() {
    let db = database();
    etcd_probe_history(&db);
    let foo =
        |v: &str, create, modr, version| ("foo".to_string(), v.to_string(), create, modr, version);
    assert_eq!(read_at(&db, "foo", "", 2), [foo("a", 2, 2, 1)]);
    assert_eq!(read_at(&db, "foo", "", 3), [foo("b", 2, 3, 2)]);
    // Deleted at 4: gone at 4, a new generation at 5.
    assert_eq!(read_at(&db, "foo", "", 4), []);
    assert_eq!(read_at(&db, "foo", "", 5), [foo("c", 5, 5, 1)]);
    assert_eq!(read_at(&db, "\0", "\0", 5), [foo("c", 5, 5, 1)]);
    let everything = read_at(&db, "\0", "\0", 6);
    assert_eq!(everything.len(), 2);
    assert_eq!(everything[0].0, "bar");
    // A key that sorts as a prefix of another ("fo" < "foo") stays its own key.
    write(&db, 6, |w| drop(w.put(b"fo", b"p", 0).unwrap()));
    assert_eq!(read_at(&db, "fo", "", 6), []);
    assert_eq!(read_at(&db, "fo", "fop", 7).len(), 2);
    assert_eq!(read_at(&db, "fo", "fop", 6), [foo("c", 5, 5, 1)]);
}

#[test]
fn hash_kv_equals_etcd_before_and_after_compaction() {
    let db = database();
    assert_eq!(hash_at(&db, 1), 1_084_519_789);
    let rev = etcd_probe_history(&db);
    // Figures printed by `etcdctl endpoint hashkv [--rev N]` against etcd 3.4.23.
    assert_eq!(hash_at(&db, 6), 2_165_369_016);
    assert_eq!(hash_at(&db, 3), 3_418_819_038);
    compact(&db, rev, 3).unwrap();
    assert_eq!(hash_at(&db, 6), 1_381_194_701);
    compact(&db, rev, 4).unwrap();
    assert_eq!(hash_at(&db, 6), 2_697_150_936);
    assert_eq!(hash_at(&db, 5), 2_276_368_441);
}

#[test]
fn compaction_keeps_what_reads_at_or_after_it_can_see() {
    // The worked example of the module documentation.
    let db = database();
    let mut rev = INITIAL_REVISION;
    for (op, value) in [
        ("put", "a"),
        ("put", "b"),
        ("del", ""),
        ("put", "c"),
        ("del", ""),
        ("put", "d"),
    ] {
        rev = write(&db, rev, |w| {
            if op == "put" {
                w.put(b"foo", value.as_bytes(), 0).unwrap();
            } else {
                w.delete_range(&KeyRange::new("foo", "")).unwrap();
            }
        });
    }
    assert_eq!(rev, 7);
    let retained = |db: &Store| -> Vec<i64> {
        let txn = db.begin_read().unwrap();
        let history = txn.open_table(KV_REVISIONS).unwrap();
        history
            .iter()
            .unwrap()
            .map(|item| {
                encoding::decode_revision(item.unwrap().0.value())
                    .unwrap()
                    .main
            })
            .collect()
    };
    assert_eq!(retained(&db), [2, 3, 4, 5, 6, 7]);
    let expected: [(i64, &[i64]); 5] = [
        (3, &[3, 4, 5, 6, 7]),
        (4, &[4, 5, 6, 7]),
        (5, &[5, 6, 7]),
        (6, &[6, 7]),
        (7, &[7]),
    ];
    for (at, left) in expected {
        compact(&db, rev, at).unwrap();
        assert_eq!(retained(&db), left, "after compacting at {at}");
        // The index names exactly what history holds.
        let indexed: Vec<i64> = db
            .index
            .read_keys()
            .revisions()
            .iter()
            .map(|revision| revision.main)
            .collect();
        assert_eq!(indexed, left);
    }
    assert_eq!(read_at(&db, "foo", "", 7).len(), 1);
}

#[test]
fn compaction_refuses_the_past_and_the_future() {
    let db = database();
    let rev = etcd_probe_history(&db);
    assert!(matches!(
        compact(&db, rev, 7),
        Err(MvccError::FutureRevision)
    ));
    // etcd's first compaction may be at 0; then 0 is compacted.
    compact(&db, rev, 0).unwrap();
    assert!(matches!(compact(&db, rev, 0), Err(MvccError::Compacted)));
    compact(&db, rev, 3).unwrap();
    assert!(matches!(compact(&db, rev, 3), Err(MvccError::Compacted)));
    assert!(matches!(compact(&db, rev, 2), Err(MvccError::Compacted)));
    // Reads below the compaction are refused; at it, served.
    assert!(matches!(
        view::check_revision(2, rev, 3),
        Err(MvccError::Compacted)
    ));
    assert_eq!(view::check_revision(3, rev, 3).unwrap(), 3);
    assert_eq!(view::check_revision(0, rev, 3).unwrap(), rev);
    assert!(matches!(
        view::check_revision(7, rev, 3),
        Err(MvccError::FutureRevision)
    ));
    compact(&db, rev, 6).unwrap();
    assert_eq!(read_at(&db, "\0", "\0", 6).len(), 2);
}

#[test]
fn compacted_history_space_is_reused() {
    use crate::env::disk::Disk;
    use crate::env::sim_disk::SimDisk;
    let disk = Disk::Sim(SimDisk::new());
    let db = disk.open_database("t.redb").unwrap();
    crate::storage::create_tables(&db).unwrap();
    let index = Index::load(&db).unwrap();
    let db = Store { db, index };
    let value = vec![b'v'; 4096];
    let mut rev = INITIAL_REVISION;
    let mut rounds = Vec::new();
    for _round in 0..6 {
        for _ in 0..200 {
            rev = write(&db, rev, |w| drop(w.put(b"k", &value, 0).unwrap()));
        }
        compact(&db, rev, rev).unwrap();
        rounds.push(disk.file_len("t.redb").unwrap());
    }
    // 200 x 4 KiB of history per round: without reuse the file would grow ~800 KiB a round.
    let growth = rounds[5] - rounds[1];
    assert!(
        growth < 400 << 10,
        "file grew {growth} bytes over 4 compacted rounds: {rounds:?}"
    );
}

#[test]
fn a_key_changed_twice_in_one_revision_compacts_cleanly() {
    // etcd's duplicate-key check does not see a from-key delete, so one txn may delete a key and
    // put it again (or put and then delete it) at one main revision.
    let db = database();
    let mut rev = write(&db, INITIAL_REVISION, |w| {
        drop(w.put(b"a", b"1", 0).unwrap());
        drop(w.put(b"b", b"1", 0).unwrap());
    });
    rev = write(&db, rev, |w| {
        w.delete_range(&KeyRange::new("a", "\0")).unwrap();
        drop(w.put(b"a", b"2", 0).unwrap());
    });
    assert_eq!(
        read_at(&db, "a", "", rev),
        [("a".into(), "2".into(), rev, rev, 1)]
    );
    assert_eq!(read_at(&db, "b", "", rev), []);
    rev = write(&db, rev, |w| {
        drop(w.put(b"b", b"2", 0).unwrap());
        w.delete_range(&KeyRange::new("b", "\0")).unwrap();
    });
    assert_eq!(read_at(&db, "\0", "\0", rev).len(), 1);
    rev = write(&db, rev, |w| drop(w.put(b"c", b"1", 0).unwrap()));
    compact(&db, rev, rev).unwrap();
    let txn = db.begin_read().unwrap();
    let history = txn.open_table(KV_REVISIONS).unwrap();
    let left: Vec<(i64, i64)> = history
        .iter()
        .unwrap()
        .map(|item| {
            let r = encoding::decode_revision(item.unwrap().0.value()).unwrap();
            (r.main, r.sub)
        })
        .collect();
    // Only the live a (rev 3: deletes of a and b at subs 0 and 1, then the put at sub 2) and c
    // remain: no orphaned change of either double-changed key.
    assert_eq!(left, [(3, 2), (5, 0)]);
}

#[test]
fn older_formats_are_upgraded_and_an_unknown_format_is_refused() {
    use crate::storage::{create_tables, FORMAT, META_FORMAT, SM_META};
    use redb::TableDefinition;
    const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
    const KV_INDEX: TableDefinition<(&[u8], u64, u64), u8> = TableDefinition::new("kv_index");
    for old_format in [None, Some(2)] {
        let db = database();
        let mut revision = INITIAL_REVISION;
        revision = write(&db, revision, |w| {
            w.put(b"a", b"1", 0).unwrap();
        });
        revision = write(&db, revision, |w| {
            w.put(b"b", b"2", 0).unwrap();
            w.put(b"a", b"3", 0).unwrap();
        });
        revision = write(&db, revision, |w| {
            w.delete_range(&KeyRange::new("b", "")).unwrap();
        });
        write(&db, revision, |w| {
            w.put(b"c", b"4", 0).unwrap();
        });
        let before = read(&db, "\0", "\0", 0);
        assert_eq!(before.kvs.len(), 2);
        // Format 1 had no format row and a copy of each live key-value in `kv`; format 2 the
        // revision of its newest put there. Both had `kv_index`.
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            for live in &before.kvs {
                kv.insert(
                    live.key.as_slice(),
                    encoding::encode_key_value(live).as_slice(),
                )
                .unwrap();
            }
            let mut index = txn.open_table(KV_INDEX).unwrap();
            index.insert((&b"a"[..], 2, 0), 0).unwrap();
            let mut meta = txn.open_table(SM_META).unwrap();
            match old_format {
                None => drop(meta.remove(META_FORMAT).unwrap()),
                Some(format) => drop(
                    meta.insert(META_FORMAT, encoding::encode_u64(format).as_slice())
                        .unwrap(),
                ),
            }
        }
        txn.commit().unwrap();
        create_tables(&db).unwrap();
        let reopened = Store {
            index: Index::load(&db.db).unwrap(),
            db: db.db,
        };
        assert_eq!(
            read(&reopened, "\0", "\0", 0),
            before,
            "from {old_format:?}"
        );
        let txn = reopened.begin_read().unwrap();
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|table| redb::TableHandle::name(&table).to_string())
            .collect();
        assert!(
            !tables.iter().any(|name| name == "kv" || name == "kv_index"),
            "{tables:?}"
        );
        drop(txn);
        // A format from a newer detcd is not misread.
        let txn = reopened.begin_write().unwrap();
        txn.open_table(SM_META)
            .unwrap()
            .insert(META_FORMAT, encoding::encode_u64(FORMAT + 1).as_slice())
            .unwrap();
        txn.commit().unwrap();
        let refused = create_tables(&reopened).unwrap_err().to_string();
        assert!(refused.contains("data format 4"), "{refused}");
        assert_eq!(read(&reopened, "\0", "\0", 0), before);
    }
}

#[test]
fn a_read_that_a_compaction_overtakes_starts_again() {
    // A reader opens its transaction, then a compaction commits and the index forgets what it
    // removed before the reader looks at the index: the answer would mix two states, so the
    // read runs again on a new transaction (real mode: readers and the applier on different
    // threads; the simulation runs both inline, so only this test takes the path).
    let db = database();
    let rev = etcd_probe_history(&db);
    let mut attempts = 0;
    let answer = db
        .index
        .read(&db, |reader| {
            attempts += 1;
            if attempts == 1 {
                compact(&db, rev, 5).unwrap();
            }
            let view = View::open(reader).unwrap();
            let at = view::check_revision(3, rev, reader.compacted());
            at.map(|at| view.range(&KeyRange::new("foo", ""), &RangeOptions::default(), at))
        })
        .unwrap();
    assert_eq!(attempts, 2);
    assert!(matches!(answer, Err(MvccError::Compacted)));
    // A read that began after the compaction committed is not repeated.
    let mut attempts = 0;
    db.index
        .read(&db, |reader| {
            attempts += 1;
            assert_eq!(reader.compacted(), 5);
        })
        .unwrap();
    assert_eq!(attempts, 1);
}

#[test]
fn a_read_that_a_snapshot_install_overtakes_starts_again() {
    let db = database();
    etcd_probe_history(&db);
    let mut attempts = 0;
    let count = db
        .index
        .read(&db, |reader| {
            attempts += 1;
            if attempts == 1 {
                // An install of an empty store: its commit and its index replace the old ones.
                let txn = db.begin_write().unwrap();
                txn.open_table(KV_REVISIONS)
                    .unwrap()
                    .retain(|_, _| false)
                    .unwrap();
                db.index
                    .replace(KeyIndex::default(), || txn.commit())
                    .unwrap();
            }
            let view = View::open(reader).unwrap();
            let everything = KeyRange::new("\0", "\0");
            view.range(&everything, &RangeOptions::default(), i64::MAX)
                .map(|result| result.count)
        })
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(count.unwrap(), 0);
}
