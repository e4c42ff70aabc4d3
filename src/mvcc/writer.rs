//! Applies the changes of one write request at one main revision, and compaction.

use redb::{ReadableTable, Table, WriteTransaction};

use super::range::{RangeOptions, RangeResult};
use super::view::{self, View};
use super::{decode, Change, KeyRange, KeyValue, MvccError, Revision};
use crate::storage::encoding::{self, HistoryEvent};
use crate::storage::{
    StorageError, KV, KV_INDEX, KV_REVISIONS, LEASES, LEASE_KEYS, META_COMPACTED, SM_META,
};

type ByteTable<'txn> = Table<'txn, &'static [u8], &'static [u8]>;
type IndexTable<'txn> = Table<'txn, (&'static [u8], u64, u64), u8>;

/// A lease as the state machine records it (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The TTL it was granted with (after etcd's minimum).
    pub ttl: i64,
    /// The remaining TTL of its last checkpoint; 0 if it has none since its last renewal.
    pub remaining: i64,
}

/// Applies the changes of one write request, all at one main revision.
pub struct Writer<'txn> {
    view: View<ByteTable<'txn>, ByteTable<'txn>, IndexTable<'txn>>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    leases: Table<'txn, i64, &'static [u8]>,
    /// Which keys each lease has attached (derived from `kv`'s lease fields).
    lease_keys: Table<'txn, (i64, &'static [u8]), u8>,
    main: i64,
    next_sub: i64,
    changes: Vec<Change>,
}

/// What a compaction removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compacted {
    pub revisions_removed: u64,
}

impl<'txn> Writer<'txn> {
    /// A writer for the request after `current_revision`.
    pub fn new(txn: &'txn WriteTransaction, current_revision: i64) -> Result<Self, StorageError> {
        Ok(Self {
            view: View {
                kv: txn.open_table(KV)?,
                history: txn.open_table(KV_REVISIONS)?,
                index: txn.open_table(KV_INDEX)?,
            },
            meta: txn.open_table(SM_META)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            main: current_revision + 1,
            next_sub: 0,
            changes: Vec::new(),
        })
    }

    /// Starts the next request of the same transaction, after `current_revision`.
    pub fn begin(&mut self, current_revision: i64) {
        self.main = current_revision + 1;
        self.next_sub = 0;
        self.changes.clear();
    }

    /// The changes of the request so far, taken (the writer may go on with the next one).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The revision before this request.
    pub fn begin_revision(&self) -> i64 {
        self.main - 1
    }

    /// The revision this request ends at: the new one if it changed anything, else the old.
    pub fn revision(&self) -> i64 {
        if self.next_sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }

    /// Whether this request has changed anything yet.
    pub fn changed(&self) -> bool {
        self.next_sub > 0
    }

    /// The revision of the last compaction (`NEVER_COMPACTED`: none).
    pub fn compacted(&self) -> Result<i64, StorageError> {
        view::compacted_revision(&self.meta)
    }

    fn next_revision(&mut self) -> Revision {
        let revision = Revision {
            main: self.main,
            sub: self.next_sub,
        };
        self.next_sub += 1;
        revision
    }

    /// The live generation of `key`, if any (including this request's own changes).
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        self.view.live(key)
    }

    /// A range read inside this request: at `revision` 0 it sees this request's own earlier
    /// changes (etcd's txn reads do); at an explicit revision it reads that revision's history.
    pub fn range(
        &self,
        range: &KeyRange,
        options: &RangeOptions,
        revision: i64,
    ) -> Result<(RangeResult, i64), MvccError> {
        let at = view::check_revision(revision, self.revision(), self.compacted()?)?;
        let result = if at == self.revision() {
            self.view.range(range, options, None)?
        } else {
            self.view.range(range, options, Some(at))?
        };
        Ok((result, self.revision()))
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
        self.view
            .kv
            .insert(key, encoding::encode_revision(revision).as_slice())?;
        if let Some(old) = previous.map(|prev| prev.lease).filter(|&old| old != 0) {
            if old != lease {
                self.lease_keys.remove((old, key))?;
            }
        }
        if lease != 0 {
            self.lease_keys.insert((lease, key), 0)?;
        }
        self.record(revision, HistoryEvent::Put(kv), previous.cloned())
    }

    fn record(
        &mut self,
        revision: Revision,
        event: HistoryEvent,
        prev: Option<KeyValue>,
    ) -> Result<(), StorageError> {
        self.view.index.insert(
            (
                event.kv().key.as_slice(),
                revision.main as u64,
                revision.sub as u64,
            ),
            u8::from(event.is_delete()),
        )?;
        self.view.history.insert(
            encoding::encode_revision(revision).as_slice(),
            encoding::encode_event(&event).as_slice(),
        )?;
        self.changes.push(Change {
            revision,
            event,
            prev,
        });
        Ok(())
    }

    /// Deletes every live key in `range`; returns the deleted generations in key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>, StorageError> {
        let mut doomed = Vec::new();
        self.view.for_each_live(range, &mut |bytes| {
            doomed.push(decode(bytes)?);
            Ok(true)
        })?;
        for kv in &doomed {
            let revision = self.next_revision();
            self.view.kv.remove(kv.key.as_slice())?;
            if kv.lease != 0 {
                self.lease_keys.remove((kv.lease, kv.key.as_slice()))?;
            }
            let tombstone = KeyValue {
                key: kv.key.clone(),
                mod_revision: revision.main,
                ..KeyValue::default()
            };
            self.record(revision, HistoryEvent::Delete(tombstone), Some(kv.clone()))?;
        }
        Ok(doomed)
    }

    /// Compacts history at revision `at` (etcd's `Compact`): afterwards no read below `at` is
    /// served, and every change no read at `at` or later can see is gone — for each key, all its
    /// changes at or below `at` except the newest, and that one too if it is a tombstone below
    /// `at`. A tombstone at exactly `at` is kept (as etcd >= 3.4.34), so a watch from `at`
    /// still sees that delete. Compacting at or below the last compaction is `Compacted`; above
    /// the current revision, `FutureRevision`.
    pub fn compact(&mut self, at: i64) -> Result<Compacted, MvccError> {
        if at <= self.compacted()? {
            return Err(MvccError::Compacted);
        }
        if at > self.revision() {
            return Err(MvccError::FutureRevision);
        }
        let doomed = self.doomed_by(at)?;
        for (key, main, sub) in &doomed {
            self.view
                .index
                .remove((key.as_slice(), *main as u64, *sub as u64))
                .map_err(StorageError::from)?;
            let revision = encoding::encode_revision(Revision {
                main: *main,
                sub: *sub,
            });
            self.view
                .history
                .remove(revision.as_slice())
                .map_err(StorageError::from)?;
        }
        self.meta
            .insert(META_COMPACTED, encoding::encode_u64(at as u64).as_slice())
            .map_err(StorageError::from)?;
        Ok(Compacted {
            revisions_removed: doomed.len() as u64,
        })
    }

    /// The changes compaction at `at` removes, as `(key, main, sub)`.
    fn doomed_by(&self, at: i64) -> Result<Vec<(Vec<u8>, i64, i64)>, StorageError> {
        let mut doomed = Vec::new();
        // The newest change at or below `at` of the key being scanned: kept if a put.
        let mut newest: Option<(Vec<u8>, i64, i64, bool)> = None;
        let settle = |newest: Option<(Vec<u8>, i64, i64, bool)>, doomed: &mut Vec<_>| {
            if let Some((key, main, sub, true)) = newest {
                if main < at {
                    doomed.push((key, main, sub));
                }
            }
        };
        for item in self.view.index.iter()? {
            let (key, entry) = item?;
            let (user_key, main, sub) = key.value();
            let (main, sub, tombstone) = (main as i64, sub as i64, entry.value() == 1);
            if main > at {
                continue;
            }
            match &mut newest {
                Some((key, old_main, old_sub, _)) if key.as_slice() == user_key => {
                    doomed.push((key.clone(), *old_main, *old_sub));
                    newest = Some((user_key.to_vec(), main, sub, tombstone));
                }
                _ => {
                    settle(newest.take(), &mut doomed);
                    newest = Some((user_key.to_vec(), main, sub, tombstone));
                }
            }
        }
        settle(newest, &mut doomed);
        Ok(doomed)
    }

    /// The lease `id`, if it exists.
    pub fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, StorageError> {
        match self.leases.get(id)? {
            Some(bytes) => {
                let (ttl, remaining) = encoding::decode_lease(bytes.value())
                    .ok_or_else(|| StorageError(format!("corrupt lease {id:x}")))?;
                Ok(Some(LeaseRecord { ttl, remaining }))
            }
            None => Ok(None),
        }
    }

    /// Records lease `id` (which the caller has checked does not exist).
    pub fn set_lease(&mut self, id: i64, record: LeaseRecord) -> Result<(), StorageError> {
        let bytes = encoding::encode_lease(record.ttl, record.remaining);
        self.leases.insert(id, bytes.as_slice())?;
        Ok(())
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
        super::leases::keys_in(&self.lease_keys, id)
    }

    /// Revokes lease `id`: deletes every key attached to it, all at this request's revision (as
    /// etcd), then the lease. Returns the deleted generations.
    pub fn revoke_lease(&mut self, id: i64) -> Result<Vec<KeyValue>, StorageError> {
        let mut deleted = Vec::new();
        for key in self.lease_keys(id)? {
            deleted.extend(self.delete_range(&KeyRange::new(key, Vec::new()))?);
        }
        self.leases.remove(id)?;
        Ok(deleted)
    }

    /// etcd's `HashKV` at `at` over this request's view.
    pub fn hash_kv(&self, at: i64) -> Result<u32, StorageError> {
        self.view.hash_kv(at, self.compacted()?)
    }
}

/// Derives the live table (`kv`) from history (a snapshot install, an upgrade from format 1):
/// each key whose newest change is a put is live at that put's revision, which must be in the
/// history. Answers how many keys are live.
pub fn rebuild_live_table(txn: &WriteTransaction) -> Result<u64, StorageError> {
    let view = View {
        kv: txn.open_table(KV)?,
        history: txn.open_table(KV_REVISIONS)?,
        index: txn.open_table(KV_INDEX)?,
    };
    let mut live = Vec::new();
    view.for_each_newest_put(
        &KeyRange::new(vec![0], vec![0]),
        i64::MAX,
        &mut |revision, record| {
            live.push((decode(record)?.key, revision.to_vec()));
            Ok(true)
        },
    )?;
    let View { mut kv, .. } = view;
    kv.retain(|_, _| false)?;
    for (key, revision) in &live {
        kv.insert(key.as_slice(), revision.as_slice())?;
    }
    Ok(live.len() as u64)
}
