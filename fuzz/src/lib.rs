//! The fuzz drivers, shared by the cargo-fuzz targets (`fuzz_targets/`) and by the corpus replay
//! under `cargo test` (`madsim-tests/fuzz_corpus.rs` includes this file).
//!
//! - [`mvcc_ops`]: a list of puts, deletes, txns, compactions, reads at revisions and crashes
//!   (with reopen) run through detcd's `apply` on a `SimDisk`, checked after every step against
//!   [`Model`], an in-memory reference of etcd's MVCC written independently of `src/mvcc`.
//! - [`requests`]: arbitrary bytes decoded as each etcd request type, validated as the API does
//!   and, if valid, applied: no panic, the same answer on two identical stores, and a valid put
//!   is then readable.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase};

use detcd::api::validate;
use detcd::apply::{self, ApplyError, ApplyOutcome, CommandResult, ReadOnly};
use detcd::env::sim_disk::CrashMode;
use detcd::env::{Disk, SimDisk};
use detcd::mvcc;
use detcd::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use detcd::pb::etcdserverpb::request_op::Request;
use detcd::pb::etcdserverpb::response_op::Response;
use detcd::pb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseCheckpointRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use detcd::pb::mvccpb;
use detcd::pb::raft::{command, Command};
use detcd::storage::{self, encoding, SM_META};

const FILE: &str = "fuzz.redb";
/// How many ops a store has applied, so a crash can be matched to a model state.
const META_OPS: &str = "fuzz_ops";

/// A small key space, so ops collide: single letters, a key with a longer common prefix, and a
/// key with a NUL byte.
fn key(n: u8) -> Vec<u8> {
    match n % 8 {
        6 => b"ab".to_vec(),
        7 => b"b\0".to_vec(),
        n => vec![b'a' + n],
    }
}

/// An etcd `range_end`: none (one key), `"\0"` (from the key on) or another key.
fn range_end(end: Option<u8>) -> Vec<u8> {
    match end {
        None => Vec::new(),
        Some(0) => vec![0],
        Some(n) => key(n),
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum TxnStep {
    Put {
        key: u8,
        value: u8,
    },
    Delete {
        key: u8,
        end: Option<u8>,
        prev_kv: bool,
    },
    Range {
        key: u8,
        end: Option<u8>,
        back: u8,
    },
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Guard {
    key: u8,
    end: Option<u8>,
    target: u8,
    result: u8,
    number: i8,
    value: u8,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    Put {
        key: u8,
        value: u8,
        prev_kv: bool,
        ignore_value: bool,
    },
    Delete {
        key: u8,
        end: Option<u8>,
        prev_kv: bool,
    },
    Txn {
        guards: Vec<Guard>,
        success: Vec<TxnStep>,
        failure: Vec<TxnStep>,
    },
    Compact {
        back: u8,
    },
    Range {
        key: u8,
        end: Option<u8>,
        back: u8,
        limit: u8,
        keys_only: bool,
    },
    /// Later commits are (or are not) fsynced.
    Durable(bool),
    Crash {
        mode: u8,
        seed: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// The reference model: every change of every key, kept in full; compaction only moves the
// floor below which reads are refused.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create: i64,
    pub modified: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    /// key -> (main revision, value after it; None = deleted), in order.
    changes: BTreeMap<Vec<u8>, Vec<(i64, Option<Kv>)>>,
    pub revision: i64,
    pub compacted: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Compacted,
    Future,
}

impl Model {
    pub fn new() -> Self {
        Model {
            changes: BTreeMap::new(),
            revision: 1,
            compacted: -1,
        }
    }

    fn in_range(candidate: &[u8], start: &[u8], end: &[u8]) -> bool {
        match end {
            [] => candidate == start,
            [0] => candidate >= start,
            end => candidate >= start && candidate < end,
        }
    }

    fn live(&self, key: &[u8], at: i64) -> Option<Kv> {
        self.changes
            .get(key)?
            .iter()
            .rev()
            .find(|(main, _)| *main <= at)
            .and_then(|(_, kv)| kv.clone())
    }

    pub fn range(&self, start: &[u8], end: &[u8], at: i64) -> Vec<Kv> {
        self.changes
            .keys()
            .filter(|k| Self::in_range(k, start, end))
            .filter_map(|k| self.live(k, at))
            .collect()
    }

    pub fn check_read(&self, revision: i64, current: i64) -> Result<i64, Refused> {
        if revision > current {
            return Err(Refused::Future);
        }
        if revision <= 0 {
            return Ok(current);
        }
        if revision < self.compacted {
            return Err(Refused::Compacted);
        }
        Ok(revision)
    }

    /// Applies a put at revision `at` (the revision of the request it belongs to).
    fn put(&mut self, key: &[u8], value: &[u8], at: i64) -> Option<Kv> {
        let previous = self.live(key, at);
        let kv = Kv {
            key: key.to_vec(),
            value: value.to_vec(),
            create: previous.as_ref().map_or(at, |p| p.create),
            modified: at,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
        };
        self.changes
            .entry(key.to_vec())
            .or_default()
            .push((at, Some(kv)));
        previous
    }

    fn delete(&mut self, start: &[u8], end: &[u8], at: i64) -> Vec<Kv> {
        let doomed = self.range(start, end, at);
        for kv in &doomed {
            self.changes
                .get_mut(&kv.key)
                .expect("a live key has changes")
                .push((at, None));
        }
        doomed
    }

    fn compare(&self, guard: &Compare) -> bool {
        let kvs = self.range(&guard.key, &guard.range_end, self.revision);
        let zero = Kv {
            key: Vec::new(),
            value: Vec::new(),
            create: 0,
            modified: 0,
            version: 0,
        };
        if kvs.is_empty() && guard.target == CompareTarget::Value as i32 {
            return false;
        }
        let all = if kvs.is_empty() { vec![zero] } else { kvs };
        all.iter().all(|kv| {
            let ordering = match &guard.target_union {
                Some(TargetUnion::Value(v)) => kv.value.as_slice().cmp(v),
                Some(TargetUnion::Version(v)) => kv.version.cmp(v),
                Some(TargetUnion::CreateRevision(v)) => kv.create.cmp(v),
                Some(TargetUnion::ModRevision(v)) => kv.modified.cmp(v),
                _ => std::cmp::Ordering::Equal,
            };
            match CompareResult::try_from(guard.result) {
                Ok(CompareResult::Equal) => ordering.is_eq(),
                Ok(CompareResult::NotEqual) => ordering.is_ne(),
                Ok(CompareResult::Greater) => ordering.is_gt(),
                Ok(CompareResult::Less) => ordering.is_lt(),
                Err(_) => true,
            }
        })
    }
}

fn kv_of(kv: &mvccpb::KeyValue) -> Kv {
    Kv {
        key: kv.key.clone(),
        value: kv.value.clone(),
        create: kv.create_revision,
        modified: kv.mod_revision,
        version: kv.version,
    }
}

// ---------------------------------------------------------------------------------------------
// The store under test.

struct Store {
    disk: SimDisk,
    db: Database,
    /// The key index, rebuilt from the database whenever it is opened.
    index: mvcc::Index,
    durable: bool,
    ops: u64,
}

fn open(disk: &SimDisk) -> Database {
    let db = Disk::Sim(disk.clone())
        .open_database(FILE)
        .expect("a store reopens after any crash");
    storage::create_tables(&db).expect("tables");
    db
}

fn read_u64(db: &Database, name: &str) -> Option<u64> {
    let txn = db.begin_read().expect("read");
    let meta = txn.open_table(SM_META).expect("meta");
    let value = meta.get(name).expect("get")?;
    encoding::decode_u64(value.value())
}

impl Store {
    fn new() -> Self {
        let disk = SimDisk::new();
        let db = open(&disk);
        Store {
            disk,
            index: mvcc::Index::load(&db).expect("index"),
            db,
            durable: true,
            ops: 0,
        }
    }

    fn revision(&self) -> i64 {
        read_u64(&self.db, storage::META_REVISION).map_or(1, |r| r as i64)
    }

    /// Applies `op` as the state machine does, recording the revision and the op count.
    fn apply(&mut self, op: command::Op) -> CommandResult {
        let current = self.revision();
        let mut txn = self.db.begin_write().expect("write");
        let durability = if self.durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).expect("durability");
        let mut changes = Vec::new();
        // Every other op as with a prev_kv watcher (puts read what they replace), the rest as
        // without one: the store must end up the same either way.
        let read_prev = self.ops.is_multiple_of(2);
        let (response, after_commit) = apply::apply(
            &txn,
            &self.index,
            current,
            &Command {
                op: Some(op),
                ..Default::default()
            },
            &mut changes,
            read_prev,
        )
        .expect("apply");
        self.ops += 1;
        {
            let mut meta = txn.open_table(SM_META).expect("meta");
            let revision = encoding::encode_u64(response.revision as u64);
            meta.insert(storage::META_REVISION, revision.as_slice())
                .expect("revision");
            let ops = encoding::encode_u64(self.ops);
            meta.insert(META_OPS, ops.as_slice()).expect("ops");
        }
        txn.commit().expect("commit");
        after_commit.apply(&self.index);
        // What a watcher is sent live equals what one catching up reads back from history.
        if response.revision > current {
            let stored = self
                .index
                .read(&self.db, |reader| {
                    mvcc::View::open(reader)
                        .expect("view")
                        .changes(response.revision, response.revision, true)
                        .expect("changes")
                })
                .expect("read");
            // A change whose previous key-value was left unread has none, and is otherwise the
            // same.
            let unread: Vec<mvcc::Change> = stored
                .iter()
                .zip(&changes)
                .map(|(stored, live)| match live.prev_read {
                    true => stored.clone(),
                    false => mvcc::Change {
                        prev: None,
                        prev_read: false,
                        ..stored.clone()
                    },
                })
                .collect();
            assert_eq!(
                stored.len(),
                changes.len(),
                "live changes differ from history"
            );
            assert_eq!(unread, changes, "live changes differ from history");
            if read_prev {
                assert!(changes.iter().all(|change| change.prev_read));
            }
        } else {
            assert!(changes.is_empty(), "changes without a new revision");
        }
        response.result
    }

    fn read<T>(&self, f: impl FnOnce(ReadOnly<apply::ReadView>) -> T) -> T {
        let mut f = Some(f);
        self.index
            .read(&self.db, |reader| {
                let f = f
                    .take()
                    .expect("nothing moves the index of a store used by one thread");
                f(ReadOnly::open(reader).expect("open view"))
            })
            .expect("read")
    }

    fn range(&self, request: &RangeRequest) -> Result<Vec<Kv>, Refused> {
        self.read(|store| match store.range(request) {
            Ok(response) => Ok(response.kvs.iter().map(kv_of).collect()),
            Err(ApplyOutcome::Refused(ApplyError::Compacted)) => Err(Refused::Compacted),
            Err(ApplyOutcome::Refused(ApplyError::FutureRevision)) => Err(Refused::Future),
            Err(other) => panic!("range failed: {other:?}"),
        })
    }
}

fn everything(revision: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    }
}

/// The store and the model agree on the revision, the compaction and every readable revision.
fn check_state(store: &Store, model: &Model) {
    assert_eq!(store.revision(), model.revision, "current revision");
    let compacted = store.read(|s| s.compacted());
    assert_eq!(compacted, model.compacted, "compacted revision");
    let first = model.compacted.max(1);
    for revision in first..=model.revision {
        assert_eq!(
            store.range(&everything(revision)),
            Ok(model.range(&[0], &[0], revision)),
            "everything at revision {revision}"
        );
    }
    if model.compacted > 1 {
        assert_eq!(
            store.range(&everything(model.compacted - 1)),
            Err(Refused::Compacted)
        );
    }
    // A hash is a pure function of the store: asked twice, the same answer.
    let hash = store.read(|s| s.hash_kv(0).expect("hash"));
    assert_eq!(hash, store.read(|s| s.hash_kv(0).expect("hash")));
}

fn guard(g: &Guard) -> Compare {
    let target = match g.target % 4 {
        0 => CompareTarget::Version,
        1 => CompareTarget::Create,
        2 => CompareTarget::Mod,
        _ => CompareTarget::Value,
    };
    let target_union = match target {
        CompareTarget::Version => TargetUnion::Version(i64::from(g.number)),
        CompareTarget::Create => TargetUnion::CreateRevision(i64::from(g.number)),
        CompareTarget::Mod => TargetUnion::ModRevision(i64::from(g.number)),
        _ => TargetUnion::Value(vec![b'0' + g.value % 4]),
    };
    Compare {
        result: i32::from(g.result % 4),
        target: target as i32,
        key: key(g.key),
        range_end: range_end(g.end),
        target_union: Some(target_union),
    }
}

fn txn_op(step: &TxnStep, current: i64) -> RequestOp {
    let request = match step {
        TxnStep::Put { key: k, value } => Request::RequestPut(PutRequest {
            key: key(*k),
            value: vec![b'0' + value % 4].into(),
            ..Default::default()
        }),
        TxnStep::Delete {
            key: k,
            end,
            prev_kv,
        } => Request::RequestDeleteRange(DeleteRangeRequest {
            key: key(*k),
            range_end: range_end(*end),
            prev_kv: *prev_kv,
        }),
        TxnStep::Range { key: k, end, back } => Request::RequestRange(RangeRequest {
            key: key(*k),
            range_end: range_end(*end),
            revision: if *back == 0 {
                0
            } else {
                current - i64::from(*back % 8) + 1
            },
            ..Default::default()
        }),
    };
    RequestOp {
        request: Some(request),
    }
}

/// The model's txn: the branch by the guards on the state before, then each op in order at one
/// revision, ranges seeing earlier ops. Answers the branch and what each op returned.
fn model_txn(model: &mut Model, request: &TxnRequest) -> Result<(bool, Vec<String>), Refused> {
    let succeeded = request.compare.iter().all(|c| model.compare(c));
    let ops = if succeeded {
        &request.success
    } else {
        &request.failure
    };
    let before = model.revision;
    for op in ops {
        if let Some(Request::RequestRange(range)) = &op.request {
            if range.revision > before {
                return Err(Refused::Future);
            }
            if range.revision != 0 && range.revision < model.compacted {
                return Err(Refused::Compacted);
            }
        }
    }
    let at = before + 1;
    let mut changed = false;
    let mut out = Vec::new();
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(put)) => {
                model.put(&put.key, &put.value, at);
                changed = true;
                out.push("put".to_string());
            }
            Some(Request::RequestDeleteRange(delete)) => {
                let deleted = model.delete(&delete.key, &delete.range_end, at);
                changed |= !deleted.is_empty();
                out.push(format!("del {}", deleted.len()));
            }
            Some(Request::RequestRange(range)) => {
                let read_at = if range.revision <= 0 {
                    if changed {
                        at
                    } else {
                        before
                    }
                } else {
                    range.revision
                };
                let kvs = model.range(&range.key, &range.range_end, read_at);
                out.push(format!("get {kvs:?}"));
            }
            _ => unreachable!("the fuzzer builds no other op"),
        }
    }
    if changed {
        model.revision = at;
    } else {
        // No change: nothing was recorded at `at` (a delete of nothing records nothing).
    }
    Ok((succeeded, out))
}

fn store_txn(result: &CommandResult) -> Result<(bool, Vec<String>), Refused> {
    let response = match result {
        CommandResult::Txn(response) => response,
        CommandResult::Rejected(ApplyError::Compacted) => return Err(Refused::Compacted),
        CommandResult::Rejected(ApplyError::FutureRevision) => return Err(Refused::Future),
        other => panic!("txn answered {other:?}"),
    };
    let out = response
        .responses
        .iter()
        .map(|r| match &r.response {
            Some(Response::ResponsePut(_)) => "put".to_string(),
            Some(Response::ResponseDeleteRange(d)) => format!("del {}", d.deleted),
            Some(Response::ResponseRange(r)) => {
                format!("get {:?}", r.kvs.iter().map(kv_of).collect::<Vec<_>>())
            }
            other => panic!("unexpected txn response {other:?}"),
        })
        .collect();
    Ok((response.succeeded, out))
}

/// Runs `ops` against a fresh store and the model; panics on any disagreement.
pub fn run_ops(ops: &[Op]) {
    let mut store = Store::new();
    let mut model = Model::new();
    // The model after each op count, for matching a crash; and how many ops were fsynced.
    let mut history = vec![model.clone()];
    let mut durable_ops = 0u64;
    for op in ops {
        match op {
            Op::Put {
                key: k,
                value,
                prev_kv,
                ignore_value,
            } => {
                let request = PutRequest {
                    key: key(*k),
                    value: if *ignore_value {
                        Vec::new()
                    } else {
                        vec![b'0' + value % 4]
                    }
                    .into(),
                    prev_kv: *prev_kv,
                    ignore_value: *ignore_value,
                    ..Default::default()
                };
                let result = store.apply(command::Op::Put(request.clone()));
                let current = model.live(&request.key, model.revision);
                match (result, current) {
                    (CommandResult::Rejected(ApplyError::KeyNotFound), None) if *ignore_value => {}
                    (CommandResult::Put(response), previous) => {
                        let at = model.revision + 1;
                        let value = match (&previous, ignore_value) {
                            (Some(p), true) => p.value.clone(),
                            _ => request.value.to_vec(),
                        };
                        model.put(&request.key, &value, at);
                        model.revision = at;
                        let expected = previous.filter(|_| *prev_kv);
                        assert_eq!(response.prev_kv.as_ref().map(kv_of), expected, "prev_kv");
                    }
                    (result, previous) => panic!("put answered {result:?}; model had {previous:?}"),
                }
            }
            Op::Delete {
                key: k,
                end,
                prev_kv,
            } => {
                let request = DeleteRangeRequest {
                    key: key(*k),
                    range_end: range_end(*end),
                    prev_kv: *prev_kv,
                };
                let result = store.apply(command::Op::DeleteRange(request.clone()));
                let at = model.revision + 1;
                let deleted = model.delete(&request.key, &request.range_end, at);
                if !deleted.is_empty() {
                    model.revision = at;
                }
                let CommandResult::DeleteRange(response) = result else {
                    panic!("delete answered {result:?}");
                };
                assert_eq!(response.deleted, deleted.len() as i64, "deleted");
                let prev: Vec<Kv> = response.prev_kvs.iter().map(kv_of).collect();
                assert_eq!(prev, if *prev_kv { deleted } else { Vec::new() });
            }
            Op::Txn {
                guards,
                success,
                failure,
            } => {
                let request = TxnRequest {
                    compare: guards.iter().take(4).map(guard).collect(),
                    success: success
                        .iter()
                        .take(6)
                        .map(|s| txn_op(s, model.revision))
                        .collect(),
                    failure: failure
                        .iter()
                        .take(6)
                        .map(|s| txn_op(s, model.revision))
                        .collect(),
                };
                if validate::txn(&request, 128, 1 << 20).is_err() {
                    continue;
                }
                let result = store.apply(command::Op::Txn(request.clone()));
                let mut next = model.clone();
                let expected = model_txn(&mut next, &request);
                if expected.is_ok() {
                    model = next;
                }
                assert_eq!(store_txn(&result), expected, "txn {request:?}");
            }
            Op::Compact { back } => {
                let at = model.revision - i64::from(*back % 12) + 2;
                let result = store.apply(command::Op::Compaction(CompactionRequest {
                    revision: at,
                    physical: false,
                }));
                let expected = if at <= model.compacted {
                    Err(Refused::Compacted)
                } else if at > model.revision {
                    Err(Refused::Future)
                } else {
                    model.compacted = at;
                    Ok(())
                };
                let actual = match result {
                    CommandResult::Compaction => Ok(()),
                    CommandResult::Rejected(ApplyError::Compacted) => Err(Refused::Compacted),
                    CommandResult::Rejected(ApplyError::FutureRevision) => Err(Refused::Future),
                    other => panic!("compaction answered {other:?}"),
                };
                assert_eq!(actual, expected, "compaction at {at}");
            }
            Op::Range {
                key: k,
                end,
                back,
                limit,
                keys_only,
            } => {
                let revision = if *back == 0 {
                    0
                } else {
                    model.revision - i64::from(*back % 12) + 2
                };
                let request = RangeRequest {
                    key: key(*k),
                    range_end: range_end(*end),
                    revision,
                    limit: i64::from(*limit % 4),
                    keys_only: *keys_only,
                    ..Default::default()
                };
                let expected = model.check_read(revision, model.revision).map(|at| {
                    let mut kvs = model.range(&request.key, &request.range_end, at);
                    if request.limit > 0 {
                        kvs.truncate(request.limit as usize);
                    }
                    if *keys_only {
                        kvs.iter_mut().for_each(|kv| kv.value.clear());
                    }
                    kvs
                });
                assert_eq!(store.range(&request), expected, "range {request:?}");
                continue;
            }
            Op::Durable(durable) => {
                store.durable = *durable;
                continue;
            }
            Op::Crash { mode, seed } => {
                let mode = match mode % 4 {
                    0 => CrashMode::DropUnsynced,
                    1 => CrashMode::KeepPrefix,
                    2 => CrashMode::TearNext,
                    _ => CrashMode::KeepSubset,
                };
                store.disk.crash(mode, *seed);
                let disk = store.disk.clone();
                let durable = store.durable;
                drop(store);
                let db = open(&disk);
                let ops = read_u64(&db, META_OPS).unwrap_or(0);
                assert!(
                    ops >= durable_ops && (ops as usize) < history.len(),
                    "after a {mode:?} crash the store has {ops} ops; {durable_ops} were durable, {} applied",
                    history.len() - 1
                );
                history.truncate(ops as usize + 1);
                model = history[ops as usize].clone();
                store = Store {
                    disk,
                    index: mvcc::Index::load(&db).expect("index"),
                    db,
                    durable,
                    ops,
                };
                check_state(&store, &model);
                continue;
            }
        }
        history.push(model.clone());
        if store.durable {
            durable_ops = store.ops;
        }
        check_state(&store, &model);
    }
}

/// The `mvcc_ops` target: at most 48 ops from `data`.
pub fn mvcc_ops(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let mut ops = Vec::new();
    while ops.len() < 48 {
        match Op::arbitrary(&mut input) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    run_ops(&ops);
}

/// The `requests` target: the first byte picks an etcd request type, the rest is its
/// protobuf encoding.
pub fn requests(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let op = match kind % 8 {
        0 => PutRequest::decode(bytes)
            .ok()
            .filter(|r| validate::put(r, 1 << 20).is_ok())
            .map(command::Op::Put),
        1 => DeleteRangeRequest::decode(bytes)
            .ok()
            .filter(|r| validate::delete_range(r, 1 << 20).is_ok())
            .map(command::Op::DeleteRange),
        2 => TxnRequest::decode(bytes)
            .ok()
            .filter(|r| validate::txn(r, 128, 1 << 20).is_ok())
            .map(command::Op::Txn),
        3 => CompactionRequest::decode(bytes)
            .ok()
            .map(command::Op::Compaction),
        5 => LeaseGrantRequest::decode(bytes)
            .ok()
            .map(command::Op::LeaseGrant),
        6 => LeaseRevokeRequest::decode(bytes)
            .ok()
            .map(command::Op::LeaseRevoke),
        7 => LeaseCheckpointRequest::decode(bytes)
            .ok()
            .map(command::Op::LeaseCheckpoint),
        _ => {
            let Ok(request) = RangeRequest::decode(bytes) else {
                return;
            };
            if validate::range(&request, 1 << 20).is_err() {
                return;
            }
            let (a, b) = (seeded_store(), seeded_store());
            let answer = |s: &Store| s.read(|r| format!("{:?}", r.range(&request)));
            assert_eq!(answer(&a), answer(&b), "a read answers the same twice");
            return;
        }
    };
    let Some(op) = op else {
        return;
    };
    // Two identical stores answer identically (apply is deterministic) and stay readable.
    let (mut a, mut b) = (seeded_store(), seeded_store());
    let before = a.revision();
    let first = a.apply(op.clone());
    let second = b.apply(op.clone());
    assert_eq!(first, second, "apply is deterministic");
    assert!(a.revision() >= before, "the revision never goes back");
    assert!(
        a.revision() <= before + 1,
        "one request takes at most one revision"
    );
    assert_eq!(
        a.read(|s| s.hash_kv(0).expect("hash")),
        b.read(|s| s.hash_kv(0).expect("hash"))
    );
    if let (command::Op::Put(put), CommandResult::Put(_)) = (&op, &first) {
        let read = a.range(&RangeRequest {
            key: put.key.clone(),
            ..Default::default()
        });
        let kv = read
            .expect("read after put")
            .pop()
            .expect("the put key exists");
        if !put.ignore_value {
            assert_eq!(kv.value, put.value.to_vec(), "a put is readable");
        }
        assert_eq!(kv.modified, a.revision());
    }
}

/// A store with a little history: a few keys, an overwrite, a delete, a compaction and a lease.
fn seeded_store() -> Store {
    let mut store = Store::new();
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
        store.apply(command::Op::Put(PutRequest {
            key: k.into(),
            value: v.to_owned().into_bytes().into(),
            ..Default::default()
        }));
    }
    store.apply(command::Op::DeleteRange(DeleteRangeRequest {
        key: b"b".to_vec(),
        ..Default::default()
    }));
    store.apply(command::Op::Compaction(CompactionRequest {
        revision: 3,
        physical: false,
    }));
    // Lease 1 with key d attached, so revokes and puts with a lease meet a real one.
    store.apply(command::Op::LeaseGrant(LeaseGrantRequest {
        id: 1,
        ttl: 60,
    }));
    store.apply(command::Op::Put(PutRequest {
        key: b"d".to_vec(),
        value: b"5".to_vec().into(),
        lease: 1,
        ..Default::default()
    }));
    store
}
