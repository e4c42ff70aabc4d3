//! etcd's `HashKV` input: what etcd writes into the hash for each history row of its `key`
//! bucket (the checksum itself is `crate::crc32c`).
//!
//! etcd hashes the bucket name `"key"`, then for each row in revision order the bolt key — the
//! revision as 8 bytes main, `_`, 8 bytes sub (big-endian), plus `t` for a tombstone — and the
//! bolt value: the marshaled `mvccpb.KeyValue` (only the key for a tombstone).

use prost::Message;

use super::Revision;
use crate::pb::mvccpb;
use crate::storage::encoding::HistoryEvent;

pub use crate::crc32c::crc32c;

/// Accumulates etcd's `HashKV` over history rows given in revision order.
pub(crate) struct EtcdKvHasher {
    crc: u32,
    buffer: Vec<u8>,
}

impl EtcdKvHasher {
    pub fn new() -> Self {
        Self {
            crc: crc32c(0, b"key"),
            buffer: Vec::new(),
        }
    }

    pub fn add(&mut self, revision: Revision, event: &HistoryEvent) {
        let mut key = [0u8; 18];
        key[..8].copy_from_slice(&(revision.main as u64).to_be_bytes());
        key[8] = b'_';
        key[9..17].copy_from_slice(&(revision.sub as u64).to_be_bytes());
        let (key, value) = match event {
            HistoryEvent::Put(kv) => (
                &key[..17],
                mvccpb::KeyValue {
                    key: kv.key.clone(),
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    value: kv.value.clone(),
                    lease: kv.lease,
                },
            ),
            HistoryEvent::Delete(kv) => {
                key[17] = b't';
                (
                    &key[..],
                    mvccpb::KeyValue {
                        key: kv.key.clone(),
                        ..Default::default()
                    },
                )
            }
        };
        self.crc = crc32c(self.crc, key);
        self.buffer.clear();
        value
            .encode(&mut self.buffer)
            .expect("a Vec grows as needed");
        self.crc = crc32c(self.crc, &self.buffer);
    }

    pub fn finish(&self) -> u32 {
        self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // RFC 3720 B.4 and the common "123456789" check value.
        assert_eq!(crc32c(0, b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(0, &[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(0, &[0xffu8; 32]), 0x62a8_ab43);
        // Hashing in pieces is hashing the whole.
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xe306_9283);
    }

    #[test]
    fn an_empty_history_hashes_the_bucket_name_only() {
        // etcd 3.4.23 answers `endpoint hashkv` on a fresh member with 1084519789.
        assert_eq!(EtcdKvHasher::new().finish(), 1_084_519_789);
    }
}
