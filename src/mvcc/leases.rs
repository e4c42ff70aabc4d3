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
