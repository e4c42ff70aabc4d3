//! The state machine: `(state, command) -> (state', response)`.
//!
//! `apply` is handed the redb write transaction of the entries being applied and the current
//! revision; it reads and writes only through that transaction. It never reads the clock, never
//! does I/O of its own, and never fails for a reason a client caused: requests were validated
//! before they were proposed (`api::validate`), and the few checks that depend on state (a put
//! with `ignore_value` on a missing key) answer an error without changing anything, identically
//! on every member.
//!
//! Architecture Invariant: apply is deterministic. The same entries on the same state give the
//! same state and responses on every member, in simulation and for real.

use redb::WriteTransaction;

use crate::mvcc::{KeyRange, KeyValue, Writer};
use crate::pb::raft::{command, Command};
use crate::storage::StorageError;

/// What a write request did, as the API layer turns into etcd's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResponse {
    /// The store's revision after this request (unchanged if it changed nothing).
    pub revision: i64,
    pub result: CommandResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    Put {
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
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
}

/// Applies one client command on top of `current_revision`.
pub fn apply(
    txn: &WriteTransaction,
    current_revision: i64,
    command: &Command,
) -> Result<CommandResponse, StorageError> {
    let mut writer = Writer::new(txn, current_revision)?;
    let result = match &command.op {
        Some(command::Op::Put(put)) => {
            let previous = writer.get(&put.key)?;
            match (&previous, put.ignore_value || put.ignore_lease) {
                (None, true) => CommandResult::Rejected(ApplyError::KeyNotFound),
                _ => {
                    let value: &[u8] = match (&previous, put.ignore_value) {
                        (Some(prev), true) => &prev.value,
                        _ => &put.value,
                    };
                    let lease = match (&previous, put.ignore_lease) {
                        (Some(prev), true) => prev.lease,
                        _ => put.lease,
                    };
                    writer.put_over(previous.as_ref(), &put.key, value, lease)?;
                    CommandResult::Put {
                        prev_kv: previous.filter(|_| put.prev_kv),
                    }
                }
            }
        }
        Some(command::Op::DeleteRange(delete)) => {
            let deleted = writer
                .delete_range(&KeyRange::new(delete.key.clone(), delete.range_end.clone()))?;
            CommandResult::DeleteRange {
                deleted: deleted.len() as i64,
                prev_kvs: if delete.prev_kv { deleted } else { Vec::new() },
            }
        }
        None => CommandResult::None,
    };
    Ok(CommandResponse {
        revision: writer.revision(),
        result,
    })
}
