//! Byte layouts of what detcd stores. Changing one is a data-format change.
//!
//! A `KeyValue` is stored as a fixed header of big-endian integers followed by the key and value:
//! `create_revision u64 | mod_revision u64 | version u64 | lease i64 | key_len u32 | key | value`.
//! A revision is the 16-byte big-endian `(main, sub)`, so redb's byte order is revision order.
//! A history event is one tag byte (`P`ut or `D`elete) followed by the encoded `KeyValue`; a delete
//! keeps the key and `mod_revision` (the tombstone) with version 0, as etcd does.
//! A live key's row in `kv` is the revision key of its newest put, whose history event holds the
//! key-value.

use crate::mvcc::{KeyValue, Revision};

const HEADER_LEN: usize = 8 * 4 + 4;

pub fn encode_key_value(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + kv.key.len() + kv.value.len());
    out.extend_from_slice(&(kv.create_revision as u64).to_be_bytes());
    out.extend_from_slice(&(kv.mod_revision as u64).to_be_bytes());
    out.extend_from_slice(&(kv.version as u64).to_be_bytes());
    out.extend_from_slice(&kv.lease.to_be_bytes());
    out.extend_from_slice(&(kv.key.len() as u32).to_be_bytes());
    out.extend_from_slice(&kv.key);
    out.extend_from_slice(&kv.value);
    out
}

pub fn decode_key_value(bytes: &[u8]) -> Option<KeyValue> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let key_len = u32::from_be_bytes(bytes[32..36].try_into().expect("4 bytes")) as usize;
    let key_end = HEADER_LEN.checked_add(key_len)?;
    if bytes.len() < key_end {
        return None;
    }
    Some(KeyValue {
        create_revision: u64_at(0) as i64,
        mod_revision: u64_at(8) as i64,
        version: u64_at(16) as i64,
        lease: u64_at(24) as i64,
        key: bytes[HEADER_LEN..key_end].to_vec(),
        value: bytes[key_end..].to_vec(),
    })
}

/// The storage key of a revision: `main` then `sub`, both big-endian.
pub type RevisionKey = [u8; 16];

pub fn encode_revision(revision: Revision) -> RevisionKey {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(revision.main as u64).to_be_bytes());
    out[8..].copy_from_slice(&(revision.sub as u64).to_be_bytes());
    out
}

pub fn decode_revision(bytes: &[u8]) -> Option<Revision> {
    if bytes.len() != 16 {
        return None;
    }
    Some(Revision {
        main: u64::from_be_bytes(bytes[..8].try_into().ok()?) as i64,
        sub: u64::from_be_bytes(bytes[8..].try_into().ok()?) as i64,
    })
}

/// What happened to a key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryEvent {
    Put(KeyValue),
    /// The tombstone: key and `mod_revision` of the delete, version 0.
    Delete(KeyValue),
}

impl HistoryEvent {
    /// The key-value the change wrote (for a delete, its tombstone).
    pub fn kv(&self) -> &KeyValue {
        match self {
            HistoryEvent::Put(kv) | HistoryEvent::Delete(kv) => kv,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(self, HistoryEvent::Delete(_))
    }
}

pub fn encode_event(event: &HistoryEvent) -> Vec<u8> {
    let (tag, kv) = match event {
        HistoryEvent::Put(kv) => (b'P', kv),
        HistoryEvent::Delete(kv) => (b'D', kv),
    };
    let mut out = vec![tag];
    out.extend_from_slice(&encode_key_value(kv));
    out
}

pub fn decode_event(bytes: &[u8]) -> Option<HistoryEvent> {
    let (tag, rest) = bytes.split_first()?;
    let kv = decode_key_value(rest)?;
    match tag {
        b'P' => Some(HistoryEvent::Put(kv)),
        b'D' => Some(HistoryEvent::Delete(kv)),
        _ => None,
    }
}

/// An event without its value: what the key index is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSummary<'a> {
    pub key: &'a [u8],
    pub delete: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// The [`EventSummary`] of an encoded event, without copying its key or value.
pub fn event_summary(bytes: &[u8]) -> Option<EventSummary<'_>> {
    let (tag, rest) = bytes.split_first()?;
    let delete = match tag {
        b'P' => false,
        b'D' => true,
        _ => return None,
    };
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_be_bytes(rest.get(i..i + 8)?.try_into().ok()?))
    };
    let key_len = u32::from_be_bytes(rest.get(32..36)?.try_into().ok()?) as usize;
    let key = rest.get(HEADER_LEN..HEADER_LEN.checked_add(key_len)?)?;
    Some(EventSummary {
        key,
        delete,
        create_revision: u64_at(0)? as i64,
        version: u64_at(16)? as i64,
        lease: u64_at(24)? as i64,
    })
}

/// A lease's record: its granted TTL and the remaining TTL of its last checkpoint (0: none),
/// both in seconds, big-endian.
pub fn encode_lease(ttl: i64, remaining: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&ttl.to_be_bytes());
    out[8..].copy_from_slice(&remaining.to_be_bytes());
    out
}

/// `(granted TTL, checkpointed remaining TTL)` of an [`encode_lease`] record.
pub fn decode_lease(bytes: &[u8]) -> Option<(i64, i64)> {
    let bytes: &[u8; 16] = bytes.try_into().ok()?;
    Some((
        i64::from_be_bytes(bytes[..8].try_into().ok()?),
        i64::from_be_bytes(bytes[8..].try_into().ok()?),
    ))
}

pub fn encode_u64(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyValue {
        KeyValue {
            key: b"testkey01".to_vec(),
            value: b"111".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 0x694d_7f8a_1c2b_3d4e,
        }
    }

    #[test]
    fn key_value_round_trips_including_empty_value_and_binary_key() {
        let kv = sample();
        assert_eq!(decode_key_value(&encode_key_value(&kv)), Some(kv));
        let odd = KeyValue {
            key: vec![0, 255, 0],
            value: vec![],
            ..sample()
        };
        assert_eq!(decode_key_value(&encode_key_value(&odd)), Some(odd));
    }

    #[test]
    fn truncated_key_value_is_rejected_not_misread() {
        let bytes = encode_key_value(&sample());
        for len in 0..HEADER_LEN + 9 {
            assert_eq!(decode_key_value(&bytes[..len]), None, "length {len}");
        }
    }

    #[test]
    fn revision_keys_sort_in_revision_order() {
        let revisions = [(1, 0), (1, 1), (2, 0), (255, 0), (256, 0), (1 << 40, 3)];
        let encoded: Vec<_> = revisions
            .iter()
            .map(|&(main, sub)| encode_revision(Revision { main, sub }))
            .collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        for (key, &(main, sub)) in encoded.iter().zip(&revisions) {
            assert_eq!(decode_revision(key), Some(Revision { main, sub }));
        }
    }

    #[test]
    fn events_round_trip_and_unknown_tags_are_rejected() {
        let put = HistoryEvent::Put(sample());
        let delete = HistoryEvent::Delete(KeyValue {
            version: 0,
            value: vec![],
            ..sample()
        });
        assert_eq!(decode_event(&encode_event(&put)), Some(put));
        assert_eq!(decode_event(&encode_event(&delete)), Some(delete));
        let mut bad = encode_event(&HistoryEvent::Put(sample()));
        bad[0] = b'X';
        assert_eq!(decode_event(&bad), None);
    }

    #[test]
    fn event_keys_are_read_without_decoding() {
        let event = encode_event(&HistoryEvent::Put(sample()));
        let summary = EventSummary {
            key: b"testkey01",
            delete: false,
            create_revision: 2,
            version: 3,
            lease: 0x694d_7f8a_1c2b_3d4e,
        };
        assert_eq!(event_summary(&event), Some(summary));
        assert_eq!(event_summary(&event[..20]), None);
        let delete = encode_event(&HistoryEvent::Delete(sample()));
        assert_eq!(
            event_summary(&delete),
            Some(EventSummary {
                delete: true,
                ..summary
            })
        );
        let mut bad = event;
        bad[0] = b'X';
        assert_eq!(event_summary(&bad), None);
    }
}
