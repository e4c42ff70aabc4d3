//! Reading leases: their records and the keys attached to them. The state machine writes both
//! through [`super::Writer`]; these serve the lease RPCs and the leader's lessor.

use redb::{ReadTransaction, ReadableTable};

use super::LeaseRecord;
use crate::storage::{encoding, StorageError, LEASES, LEASE_KEYS};

fn record(id: i64, bytes: &[u8]) -> Result<LeaseRecord, StorageError> {
    let (ttl, remaining) = encoding::decode_lease(bytes)
        .ok_or_else(|| StorageError(format!("corrupt lease {id:x}")))?;
    Ok(LeaseRecord { ttl, remaining })
}

/// Every lease, by ID.
pub fn all(txn: &ReadTransaction) -> Result<Vec<(i64, LeaseRecord)>, StorageError> {
    let table = txn.open_table(LEASES)?;
    let mut leases = Vec::new();
    for item in table.iter()? {
        let (id, bytes) = item?;
        leases.push((id.value(), record(id.value(), bytes.value())?));
    }
    Ok(leases)
}

/// Lease `id`, if it exists.
pub fn get(txn: &ReadTransaction, id: i64) -> Result<Option<LeaseRecord>, StorageError> {
    let table = txn.open_table(LEASES)?;
    let found = table.get(id)?;
    found.map(|bytes| record(id, bytes.value())).transpose()
}

/// The keys attached to lease `id`, in key order.
pub fn keys(txn: &ReadTransaction, id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
    keys_in(&txn.open_table(LEASE_KEYS)?, id)
}

/// The keys attached to lease `id` in a `lease_keys` table, in key order.
pub(crate) fn keys_in<T>(table: &T, id: i64) -> Result<Vec<Vec<u8>>, StorageError>
where
    T: ReadableTable<(i64, &'static [u8]), u8>,
{
    let mut keys = Vec::new();
    for item in table.range((id, &[][..])..)? {
        let (entry, _) = item?;
        let (lease, key) = entry.value();
        if lease != id {
            break;
        }
        keys.push(key.to_vec());
    }
    Ok(keys)
}

/// A lease change the state machine applied, for the leader's lessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    Granted {
        id: i64,
        ttl: i64,
    },
    Revoked {
        id: i64,
    },
    /// A snapshot replaced the whole state: read every lease again.
    Reset,
}

#[derive(Debug, Default)]
struct FeedState {
    active: bool,
    /// Applied changes with their log index, oldest first.
    events: Vec<(u64, LeaseEvent)>,
}

/// Lease changes as the state machine applies them, kept only while the leader's lessor is
/// listening, so the lessor never re-reads every lease to learn of a grant or a revoke. Followers
/// keep nothing.
#[derive(Debug, Default)]
pub struct LeaseFeed {
    state: std::sync::Mutex<FeedState>,
}

impl LeaseFeed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().expect("lease feed lock")
    }

    /// Starts keeping changes (from now on; the listener reads the state after this call).
    pub fn listen(&self) {
        let mut state = self.lock();
        state.active = true;
        state.events.clear();
    }

    /// Stops keeping changes and drops what was kept.
    pub fn stop(&self) {
        let mut state = self.lock();
        state.active = false;
        state.events = Vec::new();
    }

    /// Called after a batch is committed.
    pub fn publish(&self, events: impl IntoIterator<Item = (u64, LeaseEvent)>) {
        let mut state = self.lock();
        if state.active {
            state.events.extend(events);
        }
    }

    /// The changes kept since the last call.
    pub fn drain(&self) -> Vec<(u64, LeaseEvent)> {
        std::mem::take(&mut self.lock().events)
    }
}
