//! Every redb table of a detcd member and every key/value encoding, in one place; the
//! write-ahead log's format is in [`wal`].
//!
//! A member's data directory holds one redb database (`detcd.redb`) with the state machine, and
//! the write-ahead log's segments (`wal-<id>.log`) with the Raft log and votes. The state machine
//! commits with `Durability::None` and durably only now and then (`raft/state_machine.rs`): what
//! a crash takes back is replayed from the log.
//!
//! | table | key | value |
//! |---|---|---|
//! | `sm_meta` | `"last_applied"`, `"membership"`, `"revision"` | protobuf / big-endian u64 |
//! | `kv_revisions` | [`encoding::RevisionKey`] (main, sub) big-endian | [`encoding::encode_event`] |
//! | `leases` | lease ID | [`encoding::encode_lease`]: granted TTL, checkpointed remaining TTL |
//! | `lease_keys` | (lease ID, user key) | 0: the key is attached to the lease |
//!
//! `sm_meta` also holds `"compacted"` (big-endian u64), the revision of the last compaction,
//! and `"format"` (big-endian u64), the layout of these tables ([`FORMAT`]).
//! Each change is stored once, in its history row; a live key's value is its newest put's
//! row, which compaction never removes. Which keys are live at a revision is derived from
//! history in memory (`mvcc/index.rs`), and `lease_keys` from the live keys.
//!
//! Architecture Invariant: no other module defines a table or decides a byte layout.

pub mod encoding;
pub mod wal;

use redb::{ReadableTable, TableDefinition};

pub const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub const KV_REVISIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_revisions");
pub const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
pub const LEASE_KEYS: TableDefinition<(i64, &[u8]), u8> = TableDefinition::new("lease_keys");

pub const META_LAST_APPLIED: &str = "last_applied";
pub const META_MEMBERSHIP: &str = "membership";
pub const META_REVISION: &str = "revision";
pub const META_COMPACTED: &str = "compacted";
pub const META_FORMAT: &str = "format";

/// The layout of the tables that this detcd writes and reads. Formats 1 and 2 had two more
/// tables derived from history: `kv` (each live key with a copy of its key-value in format 1,
/// with its revision in format 2, up to 2026-12-06) and `kv_index` (every change by key).
/// Format 3 derives both in memory. An older database is upgraded when it is opened: the two
/// tables are dropped.
pub const FORMAT: u64 = 3;

/// The tables of formats 1 and 2 that format 3 drops (by name: their types do not matter).
const DROPPED_TABLES: [&str; 2] = ["kv", "kv_index"];

/// The database file of a member, inside its data directory.
pub const DATABASE_FILE: &str = "detcd.redb";

/// A storage failure. Fatal for the member: detcd stops rather than go on after an I/O error it
/// cannot trust (an fsync that failed may have lost data).
#[derive(Debug)]
pub struct StorageError(pub String);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage: {}", self.0)
    }
}
impl std::error::Error for StorageError {}

macro_rules! storage_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self { StorageError(e.to_string()) }
        }
    )*};
}
storage_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    prost::DecodeError
);

/// Begins a write transaction that commits with `durability`; an `Immediate` (fsynced) commit
/// is a two-phase one.
///
/// Why two phases: redb's default single-phase commit tells a torn commit only by its checksums,
/// so after an unclean shutdown it quietly rolls back to the previous commit when the newest one
/// fails them, and one flipped bit in the newest commit looks just like a torn write. (When the
/// Raft log lived in redb this lost acknowledged entries: `corrupted_disk_is_fenced` in the
/// simulation.) The state machine could replay a rolled-back commit from the log, but not once
/// a purge has passed it. After a two-phase commit the newest commit is known complete, so a
/// checksum failure is reported as corruption and the member refuses to start. The price is a
/// second fsync per durable commit, which the state machine makes only now and then.
pub fn begin_write(
    db: &redb::Database,
    durability: redb::Durability,
) -> Result<redb::WriteTransaction, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(matches!(durability, redb::Durability::Immediate));
    txn.set_durability(durability)?;
    Ok(txn)
}

/// Creates every table, so readers never meet a missing one, and brings an older format's
/// tables up to [`FORMAT`]; a database of a format this detcd does not know is refused rather
/// than misread.
pub fn create_tables(db: &redb::Database) -> Result<(), StorageError> {
    let txn = begin_write(db, redb::Durability::Immediate)?;
    let mut meta = txn.open_table(SM_META)?;
    txn.open_table(KV_REVISIONS)?;
    txn.open_table(LEASES)?;
    txn.open_table(LEASE_KEYS)?;
    let format = match meta.get(META_FORMAT)? {
        Some(bytes) => Some(
            encoding::decode_u64(bytes.value())
                .ok_or_else(|| StorageError("corrupt data format".into()))?,
        ),
        None => None,
    };
    match format {
        Some(FORMAT) => {}
        // Format 1 (no format row), 2, or a new database.
        None | Some(2) => {
            for name in DROPPED_TABLES {
                txn.delete_table(redb::TableDefinition::<&[u8], &[u8]>::new(name))?;
            }
            meta.insert(META_FORMAT, encoding::encode_u64(FORMAT).as_slice())?;
        }
        Some(other) => {
            return Err(StorageError(format!(
                "{DATABASE_FILE} has data format {other}; this detcd reads format {FORMAT} \
                 (and upgrades formats 1 and 2)"
            )))
        }
    }
    drop(meta);
    txn.commit()?;
    Ok(())
}
