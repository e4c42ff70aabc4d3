//! The state machine: `(state, command) -> (state', response)`.
//!
//! `apply` is handed the redb write transaction of the entries being applied and the current
//! revision; it reads and writes only through that transaction. It never reads the clock, never
//! does I/O of its own, and never fails for a reason a client caused: requests were validated
//! before they were proposed (`api::validate`), and the checks that depend on state (a put with
//! `ignore_value` on a missing key, a txn range below the compaction) answer an error without
//! changing anything, identically on every member.
//!
//! Responses are etcd's messages. The API layer fills the top-level header's cluster, member and
//! term; everything else (revisions, nested txn responses) is decided here.
//!
//! Architecture Invariant: apply is deterministic. The same entries on the same state give the
//! same state and responses on every member, in simulation and for real.

use redb::WriteTransaction;

use crate::mvcc::{self, KeyRange, KeyValue, MvccError, RangeOptions, RangeResult, View, Writer};
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::response_op::Response as OpResponse;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use crate::pb::mvccpb;
use crate::pb::raft::{command, Command};
use crate::storage::{StorageError, SM_META};

/// What a write request did, as the API layer answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResponse {
    /// The store's revision after this request (unchanged if it changed nothing).
    pub revision: i64,
    pub result: CommandResult,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction,
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// The request was refused by a state-dependent check; nothing changed.
    Rejected(ApplyError),
    /// A Raft-internal entry (blank or membership): no client response.
    None,
}

/// State-dependent refusals, decided identically on every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyError {
    /// `ignore_value` or `ignore_lease` on a key that does not exist (etcd's `ErrKeyNotFound`).
    KeyNotFound,
    /// A put or a revoke names a lease that does not exist (`ErrLeaseNotFound`).
    LeaseNotFound,
    /// A grant names a lease that already exists (`ErrLeaseExist`).
    LeaseExists,
    /// A read or compaction below the last compaction (`ErrCompacted`).
    Compacted,
    /// A read or compaction above the current revision (`ErrFutureRev`).
    FutureRevision,
    /// A lessor's revoke or checkpoint appended in a later term than it was decided in.
    StaleLessorTerm,
}

fn refused(error: MvccError) -> Result<ApplyError, StorageError> {
    match error {
        MvccError::Compacted => Ok(ApplyError::Compacted),
        MvccError::FutureRevision => Ok(ApplyError::FutureRevision),
        MvccError::Storage(error) => Err(error),
    }
}

/// Applies one client command on top of `current_revision`, appending what it changed to
/// `changes` (for watchers; with the key-values puts replace if `read_prev`). What it answers
/// besides the response is for `index` once `txn` has committed.
pub fn apply(
    txn: &WriteTransaction,
    index: &mvcc::Index,
    current_revision: i64,
    command: &Command,
    changes: &mut Vec<mvcc::Change>,
    read_prev: bool,
) -> Result<(CommandResponse, mvcc::AfterCommit), StorageError> {
    let mut writer = Writer::new(txn, index, current_revision)?;
    writer.set_read_prev(read_prev);
    let response = apply_on(&mut writer, current_revision, command, changes)?;
    Ok((response, writer.finish()))
}

/// [`apply`] with a writer opened once for a whole batch of commands in one transaction:
/// opening its six tables for every command was a tenth of the apply's time.
pub fn apply_on(
    writer: &mut Writer,
    current_revision: i64,
    command: &Command,
    changes: &mut Vec<mvcc::Change>,
) -> Result<CommandResponse, StorageError> {
    writer.begin(current_revision);
    let result = match &command.op {
        Some(command::Op::Put(put)) => match check_put(writer, put)? {
            Some(error) => CommandResult::Rejected(error),
            None => CommandResult::Put(do_put(writer, put)?),
        },
        Some(command::Op::DeleteRange(delete)) => {
            CommandResult::DeleteRange(do_delete(writer, delete)?)
        }
        Some(command::Op::Txn(request)) => match run_txn(writer, request)? {
            Ok(response) => CommandResult::Txn(response),
            Err(error) => CommandResult::Rejected(error),
        },
        Some(command::Op::Compaction(request)) => match writer.compact(request.revision) {
            Ok(_) => CommandResult::Compaction,
            Err(error) => CommandResult::Rejected(refused(error)?),
        },
        // ID 0 means "no lease" (etcd's lessor refuses to grant it).
        Some(command::Op::LeaseGrant(grant)) if grant.id == 0 => {
            CommandResult::Rejected(ApplyError::LeaseNotFound)
        }
        Some(command::Op::LeaseGrant(grant)) => match writer.lease(grant.id)? {
            Some(_) => CommandResult::Rejected(ApplyError::LeaseExists),
            None => {
                // The proposer chose the ID and applied the minimum TTL: apply only records.
                let record = mvcc::LeaseRecord {
                    ttl: grant.ttl,
                    remaining: 0,
                };
                writer.set_lease(grant.id, record)?;
                CommandResult::LeaseGrant(LeaseGrantResponse {
                    header: revision_header(writer.revision()),
                    id: grant.id,
                    ttl: grant.ttl,
                    error: String::new(),
                })
            }
        },
        Some(command::Op::LeaseRevoke(revoke)) => match writer.lease(revoke.id)? {
            None => CommandResult::Rejected(ApplyError::LeaseNotFound),
            Some(_) => {
                writer.revoke_lease(revoke.id)?;
                CommandResult::LeaseRevoke(LeaseRevokeResponse {
                    header: revision_header(writer.revision()),
                })
            }
        },
        Some(command::Op::LeaseCheckpoint(request)) => {
            // A checkpoint of a lease revoked meanwhile is moot.
            for checkpoint in &request.checkpoints {
                if let Some(mut record) = writer.lease(checkpoint.id)? {
                    record.remaining = checkpoint.remaining_ttl;
                    writer.set_lease(checkpoint.id, record)?;
                }
            }
            CommandResult::None
        }
        None => CommandResult::None,
    };
    let revision = writer.revision();
    changes.append(&mut writer.take_changes());
    Ok(CommandResponse { revision, result })
}

/// Where a txn runs: a write request's [`Writer`], or a read-only view for a txn without
/// writes (answered without Raft, as etcd does).
trait TxnStore {
    /// The revision reads see: the current one, including this request's own changes.
    fn revision(&self) -> i64;
    fn compacted(&self) -> Result<i64, StorageError>;
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError>;
    fn range(
        &self,
        range: &KeyRange,
        options: &RangeOptions,
        revision: i64,
    ) -> Result<(RangeResult, i64), MvccError>;
    fn lease_exists(&mut self, id: i64) -> Result<bool, StorageError>;
    fn put(&mut self, request: &PutRequest) -> Result<PutResponse, StorageError>;
    fn delete(&mut self, request: &DeleteRangeRequest)
        -> Result<DeleteRangeResponse, StorageError>;
}

impl TxnStore for Writer<'_> {
    fn revision(&self) -> i64 {
        Writer::revision(self)
    }
    fn compacted(&self) -> Result<i64, StorageError> {
        Writer::compacted(self)
    }
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        Writer::get(self, key)
    }
    fn range(
        &self,
        range: &KeyRange,
        options: &RangeOptions,
        revision: i64,
    ) -> Result<(RangeResult, i64), MvccError> {
        Writer::range(self, range, options, revision)
    }
    fn lease_exists(&mut self, id: i64) -> Result<bool, StorageError> {
        Ok(Writer::lease(self, id)?.is_some())
    }
    fn put(&mut self, request: &PutRequest) -> Result<PutResponse, StorageError> {
        do_put(self, request)
    }
    fn delete(
        &mut self,
        request: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StorageError> {
        do_delete(self, request)
    }
}

/// A read-only view at the current revision, for txns that only read.
pub struct ReadOnly<V> {
    view: V,
    revision: i64,
    compacted: i64,
}

pub type ReadView = View<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>;

impl ReadOnly<ReadView> {
    pub fn open(reader: &mvcc::Reader) -> Result<Self, StorageError> {
        let meta = reader.txn().open_table(SM_META)?;
        Ok(Self {
            view: View::open(reader)?,
            revision: crate::raft::state_machine::revision_in(&meta)
                .map_err(|e| StorageError(e.to_string()))?,
            compacted: reader.compacted(),
        })
    }

    /// A range read at the current revision or (`request.revision`) a past one.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, ApplyOutcome> {
        range_op(self, request)
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision of the last compaction, `NEVER_COMPACTED` (-1, as etcd reports) if none.
    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// etcd's `HashByRev`: the hash of history at `revision` (0: the current one). A revision at
    /// or below the last compaction is `Compacted`, above the current one `FutureRevision`.
    pub fn hash_kv(&self, revision: i64) -> Result<u32, ApplyOutcome> {
        if revision > 0 && revision <= self.compacted {
            return Err(ApplyOutcome::Refused(ApplyError::Compacted));
        }
        if revision > self.revision {
            return Err(ApplyOutcome::Refused(ApplyError::FutureRevision));
        }
        let at = if revision > 0 {
            revision
        } else {
            self.revision
        };
        self.view
            .hash_kv(at, self.compacted)
            .map_err(ApplyOutcome::Storage)
    }

    /// A hash of every key-value and all retained history (etcd's deprecated `Hash`, which
    /// covers its whole backend; for tests that compare members).
    pub fn hash_all(&self) -> Result<u32, ApplyOutcome> {
        let kv_hash = self
            .view
            .hash_kv(self.revision, self.compacted)
            .map_err(ApplyOutcome::Storage)?;
        let mut crc = mvcc::crc32c(0, &kv_hash.to_be_bytes());
        crc = mvcc::crc32c(crc, &self.compacted.to_be_bytes());
        Ok(mvcc::crc32c(crc, &self.revision.to_be_bytes()))
    }

    /// A txn that only reads.
    pub fn txn(&mut self, request: &TxnRequest) -> Result<TxnResponse, ApplyOutcome> {
        match run_txn(self, request) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(refusal)) => Err(ApplyOutcome::Refused(refusal)),
            Err(error) => Err(ApplyOutcome::Storage(error)),
        }
    }
}

/// Why a read-only request failed: refused by state, or the store failed.
#[derive(Debug)]
pub enum ApplyOutcome {
    Refused(ApplyError),
    Storage(StorageError),
}

impl TxnStore for ReadOnly<ReadView> {
    fn revision(&self) -> i64 {
        self.revision
    }
    fn compacted(&self) -> Result<i64, StorageError> {
        Ok(self.compacted)
    }
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        let (result, _) = TxnStore::range(
            self,
            &KeyRange::new(key, Vec::new()),
            &RangeOptions::default(),
            0,
        )
        .map_err(|e| match e {
            MvccError::Storage(e) => e,
            other => StorageError(format!("read at the current revision: {other:?}")),
        })?;
        Ok(result.kvs.into_iter().next())
    }
    fn range(
        &self,
        range: &KeyRange,
        options: &RangeOptions,
        revision: i64,
    ) -> Result<(RangeResult, i64), MvccError> {
        let at = mvcc::check_revision(revision, self.revision, self.compacted)?;
        Ok((self.view.range(range, options, at)?, self.revision))
    }
    fn lease_exists(&mut self, _: i64) -> Result<bool, StorageError> {
        Err(StorageError("a read-only txn checked a put's lease".into()))
    }
    fn put(&mut self, _: &PutRequest) -> Result<PutResponse, StorageError> {
        Err(StorageError("a read-only txn tried to put".into()))
    }
    fn delete(&mut self, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse, StorageError> {
        Err(StorageError("a read-only txn tried to delete".into()))
    }
}

/// The range options of a request. Sort options were validated at the edge; an unknown one here
/// (which `api::validate` refuses) reads unsorted.
pub fn range_options(request: &RangeRequest) -> RangeOptions {
    RangeOptions {
        limit: request.limit,
        count_only: request.count_only,
        sort_order: match SortOrder::try_from(request.sort_order) {
            Ok(SortOrder::Ascend) => mvcc::SortOrder::Ascend,
            Ok(SortOrder::Descend) => mvcc::SortOrder::Descend,
            _ => mvcc::SortOrder::None,
        },
        sort_target: match SortTarget::try_from(request.sort_target) {
            Ok(SortTarget::Version) => mvcc::SortTarget::Version,
            Ok(SortTarget::Create) => mvcc::SortTarget::Create,
            Ok(SortTarget::Mod) => mvcc::SortTarget::Mod,
            Ok(SortTarget::Value) => mvcc::SortTarget::Value,
            _ => mvcc::SortTarget::Key,
        },
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
        keys_only: request.keys_only,
    }
}

pub fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A header carrying only a revision: what etcd's applier puts in every response; the server
/// fills the rest of the top-level one.
fn revision_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn range_op<S: TxnStore + ?Sized>(
    store: &S,
    request: &RangeRequest,
) -> Result<RangeResponse, ApplyOutcome> {
    let range = KeyRange::new(request.key.clone(), request.range_end.clone());
    let (result, revision) = store
        .range(&range, &range_options(request), request.revision)
        .map_err(|e| match refused(e) {
            Ok(refusal) => ApplyOutcome::Refused(refusal),
            Err(storage) => ApplyOutcome::Storage(storage),
        })?;
    let kvs = result.kvs.into_iter().map(key_value).collect();
    Ok(RangeResponse {
        header: revision_header(revision),
        kvs,
        more: result.more,
        count: result.count,
    })
}

/// etcd's `checkPut`: state-dependent refusals of a put, before anything changes.
fn check_put<S: TxnStore + ?Sized>(
    store: &mut S,
    request: &PutRequest,
) -> Result<Option<ApplyError>, StorageError> {
    if request.lease != 0 && !store.lease_exists(request.lease)? {
        return Ok(Some(ApplyError::LeaseNotFound));
    }
    if (request.ignore_value || request.ignore_lease) && store.get(&request.key)?.is_none() {
        return Ok(Some(ApplyError::KeyNotFound));
    }
    Ok(None)
}

/// The answer to `request` applied on a store at `revision`, if it depends on nothing but that
/// revision: a put without a lease, `prev_kv` or `ignore_*` always succeeds and makes revision
/// `revision + 1` (what [`apply_on`] answers for it, with no store to read).
pub fn plain_put_answer(request: &PutRequest, revision: i64) -> Option<CommandResponse> {
    let plain =
        request.lease == 0 && !request.prev_kv && !request.ignore_value && !request.ignore_lease;
    plain.then(|| CommandResponse {
        revision: revision + 1,
        result: CommandResult::Put(PutResponse {
            header: revision_header(revision + 1),
            prev_kv: None,
        }),
    })
}

fn do_put(writer: &mut Writer, request: &PutRequest) -> Result<PutResponse, StorageError> {
    if !(writer.reads_prev() || request.prev_kv || request.ignore_value) {
        // Nobody needs the value this put replaces: the index has the rest.
        let live = writer.live(&request.key);
        let lease = match (live, request.ignore_lease) {
            (Some(live), true) => live.lease,
            _ => request.lease,
        };
        writer.put_unread(live, &request.key, &request.value, lease)?;
        return Ok(PutResponse {
            header: revision_header(writer.revision()),
            prev_kv: None,
        });
    }
    let previous = writer.get(&request.key)?;
    let value: &[u8] = match (&previous, request.ignore_value) {
        (Some(prev), true) => &prev.value,
        _ => &request.value,
    };
    let lease = match (&previous, request.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => request.lease,
    };
    writer.put_over(previous.as_ref(), &request.key, value, lease)?;
    Ok(PutResponse {
        header: revision_header(writer.revision()),
        prev_kv: previous.filter(|_| request.prev_kv).map(key_value),
    })
}

fn do_delete(
    writer: &mut Writer,
    request: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, StorageError> {
    let deleted = writer.delete_range(&KeyRange::new(
        request.key.clone(),
        request.range_end.clone(),
    ))?;
    Ok(DeleteRangeResponse {
        header: revision_header(writer.revision()),
        deleted: deleted.len() as i64,
        prev_kvs: if request.prev_kv {
            deleted.into_iter().map(key_value).collect()
        } else {
            Vec::new()
        },
    })
}

/// Whether a txn writes nothing on any branch (etcd's `isTxnReadonly`).
pub fn txn_is_read_only(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| match &op.request {
            Some(Op::RequestPut(_)) | Some(Op::RequestDeleteRange(_)) => false,
            Some(Op::RequestTxn(nested)) => txn_is_read_only(nested),
            Some(Op::RequestRange(_)) | None => true,
        })
}

/// Whether every range of a read-only txn is serializable (etcd's `isTxnSerializable`).
pub fn txn_is_serializable(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(range)) => range.serializable,
            Some(Op::RequestTxn(nested)) => txn_is_serializable(nested),
            _ => true,
        })
}

/// Runs a txn: every compare, at every nesting level, is evaluated first against the state
/// before the txn (etcd's `compareToPath`); then the chosen branches' puts and ranges are checked
/// (nothing changes if one is refused); then the chosen ops run in order, each seeing the
/// changes of those before it. The whole txn takes one revision.
fn run_txn<S: TxnStore + ?Sized>(
    store: &mut S,
    request: &TxnRequest,
) -> Result<Result<TxnResponse, ApplyError>, StorageError> {
    let mut path = Vec::new();
    compare_to_path(store, request, &mut path)?;
    let mut at = 0;
    if let Some(error) = check_path(store, request, &path, &mut at, true)? {
        return Ok(Err(error));
    }
    let mut at = 0;
    if let Some(error) = check_path(store, request, &path, &mut at, false)? {
        return Ok(Err(error));
    }
    let mut at = 0;
    let mut response = run(store, request, &path, &mut at)?;
    response.header = revision_header(store.revision());
    Ok(Ok(response))
}

fn branch(request: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &request.success
    } else {
        &request.failure
    }
}

fn compare_to_path<S: TxnStore + ?Sized>(
    store: &S,
    request: &TxnRequest,
    path: &mut Vec<bool>,
) -> Result<(), StorageError> {
    let mut succeeded = true;
    for compare in &request.compare {
        if !compare_holds(store, compare)? {
            succeeded = false;
            break;
        }
    }
    path.push(succeeded);
    for op in branch(request, succeeded) {
        if let Some(Op::RequestTxn(nested)) = &op.request {
            compare_to_path(store, nested, path)?;
        }
    }
    Ok(())
}

/// etcd's `applyCompare`: every key in the compare's range must satisfy it; with no key, a
/// `VALUE` compare fails and the others compare against a zero key-value.
fn compare_holds<S: TxnStore + ?Sized>(store: &S, compare: &Compare) -> Result<bool, StorageError> {
    let range = KeyRange::new(compare.key.clone(), compare.range_end.clone());
    let kvs = match store.range(&range, &RangeOptions::default(), 0) {
        Ok((result, _)) => result.kvs,
        Err(MvccError::Storage(error)) => return Err(error),
        Err(_) => return Ok(false),
    };
    if kvs.is_empty() {
        if compare.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(compare, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
}

/// etcd's `compareKV`. A target union that does not match the target compares against zero.
fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let number = |wanted: fn(&TargetUnion) -> Option<i64>| {
        compare.target_union.as_ref().and_then(wanted).unwrap_or(0)
    };
    let ordering = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Value) => {
            let wanted: &[u8] = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value,
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&number(|t| match t {
            TargetUnion::CreateRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&number(|t| match t {
            TargetUnion::ModRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&number(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&number(|t| match t {
            TargetUnion::Lease(l) => Some(*l),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true,
    }
}

/// etcd's `checkRequests` along the chosen path: puts (`puts = true`) or ranges.
fn check_path<S: TxnStore + ?Sized>(
    store: &mut S,
    request: &TxnRequest,
    path: &[bool],
    at: &mut usize,
    puts: bool,
) -> Result<Option<ApplyError>, StorageError> {
    let succeeded = path[*at];
    *at += 1;
    for op in branch(request, succeeded) {
        let refusal = match &op.request {
            Some(Op::RequestPut(put)) if puts => check_put(store, put)?,
            Some(Op::RequestRange(range)) if !puts => {
                let revision = store.revision();
                if range.revision > revision {
                    Some(ApplyError::FutureRevision)
                } else if range.revision != 0 && range.revision < store.compacted()? {
                    Some(ApplyError::Compacted)
                } else {
                    None
                }
            }
            Some(Op::RequestTxn(nested)) => check_path(store, nested, path, at, puts)?,
            _ => None,
        };
        if refusal.is_some() {
            return Ok(refusal);
        }
    }
    Ok(None)
}

fn run<S: TxnStore + ?Sized>(
    store: &mut S,
    request: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<TxnResponse, StorageError> {
    let succeeded = path[*at];
    *at += 1;
    let mut responses = Vec::new();
    for op in branch(request, succeeded) {
        let response = match &op.request {
            Some(Op::RequestRange(range)) => match range_op(store, range) {
                Ok(response) => OpResponse::ResponseRange(response),
                Err(ApplyOutcome::Storage(error)) => return Err(error),
                Err(ApplyOutcome::Refused(refusal)) => {
                    return Err(StorageError(format!(
                        "a checked txn range was refused: {refusal:?}"
                    )))
                }
            },
            Some(Op::RequestPut(put)) => OpResponse::ResponsePut(store.put(put)?),
            Some(Op::RequestDeleteRange(delete)) => {
                OpResponse::ResponseDeleteRange(store.delete(delete)?)
            }
            Some(Op::RequestTxn(nested)) => {
                // etcd leaves a nested txn's header all zero (only the top one is filled).
                let mut response = run(store, nested, path, at)?;
                response.header = Some(ResponseHeader::default());
                OpResponse::ResponseTxn(response)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}
