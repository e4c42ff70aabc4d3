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
//! a later put starts a new generation with `version = 1` and a fresh `create_revision`.
//!
//! Compaction at revision `C` forgets history that no read at `C` or later can see: for each
//! key, every change at or below `C` except the newest one, and that one too if it is a tombstone
//! (etcd's `keyIndex.keep`). A worked example, one key across three generations:
//!
//! ```text
//! rev 2 put foo=a   history: (2,0) put     foo{create 2, mod 2, version 1}
//! rev 3 put foo=b   history: (3,0) put     foo{create 2, mod 3, version 2}
//! rev 4 del foo     history: (4,0) tomb    foo is gone; generation 1 ended
//! rev 5 put foo=c   history: (5,0) put     foo{create 5, mod 5, version 1}
//! rev 6 del foo     history: (6,0) tomb    generation 2 ended
//! rev 7 put foo=d   history: (7,0) put     foo{create 7, mod 7, version 1}
//!
//! compact 3: keeps 3 (newest <= 3, a put: a read at 3 sees foo=b); drops 2.
//! compact 4: drops 3; keeps the tombstone at exactly 4 (a watch from 4 must see the delete).
//! compact 5: drops 4, keeps 5.   compact 6: drops 5, keeps 6.   compact 7: drops 6, keeps 7.
//! ```
//!
//! Where things are: `kv_revisions` (see `storage`) holds every retained change by revision,
//! the one copy of each key-value; the key index (`index.rs`, in memory, rebuilt from history
//! when a member starts) names each key's retained changes, so a read at any revision finds
//! each key's newest change at or below it without scanning history. A read goes through a
//! [`Reader`] (a read transaction and the index, consistent), a write through a [`Writer`].
//!
//! Architecture Invariant: mvcc never reads the clock and never decides a byte layout (that is
//! `storage::encoding`).

mod hash;
mod index;
pub mod leases;
mod range;
mod view;
mod writer;

pub use hash::crc32c;
pub use index::{AfterCommit, Index, KeyIndex, Reader};
pub use range::{RangeOptions, RangeResult, SortOrder, SortTarget};
pub use view::{check_revision, compacted_revision, View, NEVER_COMPACTED};
pub use writer::{Compacted, LeaseRecord, MetaTable, Writer};

pub use crate::storage::encoding::HistoryEvent;
use crate::storage::StorageError;

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

/// What a put needs of a key's live generation, which the key index keeps for each live key:
/// everything but the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Live {
    pub fn of(kv: &KeyValue) -> Self {
        Self {
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// One change a write request made, with the key's live generation before it: what a watch
/// sends as an event and, when asked, its `prev_kv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: Revision,
    pub event: HistoryEvent,
    /// The key's live generation before the change (`None`: it had none), if `prev_read`.
    pub prev: Option<KeyValue>,
    /// Whether `prev` was read. A put leaves it unread (`prev` is then `None`) when no watcher
    /// of the member asks for previous key-values: reading it from history was a third of the
    /// applier's time. A watcher that wants it reads these changes from history instead.
    pub prev_read: bool,
}

/// Why a read or a compaction at a revision cannot be served (etcd's `mvcc.ErrCompacted` and
/// `mvcc.ErrFutureRev`), or the store failed.
#[derive(Debug)]
pub enum MvccError {
    Compacted,
    FutureRevision,
    Storage(StorageError),
}

impl From<StorageError> for MvccError {
    fn from(error: StorageError) -> Self {
        MvccError::Storage(error)
    }
}

/// Which keys a request names, with etcd's conventions: an empty `range_end` is the single `key`;
/// `range_end = "\0"` is every key `>= key`; otherwise the half-open `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

pub(crate) enum Span<'a> {
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

    /// Every key that starts with `prefix`, as etcdctl's `--prefix` computes it: the prefix with
    /// its last byte below 0xff raised by one (0xff bytes after it dropped); a prefix of only 0xff
    /// bytes, or none, names every key from it on.
    pub fn prefix(prefix: &[u8]) -> Self {
        let mut range_end = prefix.to_vec();
        while let Some(last) = range_end.pop() {
            if last < 0xff {
                range_end.push(last + 1);
                return Self::new(prefix, range_end);
            }
        }
        Self::new(prefix, vec![0])
    }

    pub(crate) fn span(&self) -> Span<'_> {
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

pub(crate) fn decode(bytes: &[u8]) -> Result<KeyValue, StorageError> {
    crate::storage::encoding::decode_key_value(bytes)
        .ok_or_else(|| StorageError("corrupt key-value record".to_string()))
}

#[cfg(test)]
mod tests;
