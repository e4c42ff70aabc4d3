//! CRC-32C (Castagnoli) and etcd's `HashKV` input: what etcd writes into the hash for each
//! history row of its `key` bucket.
//!
//! etcd hashes the bucket name `"key"`, then for each row in revision order the bolt key — the
//! revision as 8 bytes main, `_`, 8 bytes sub (big-endian), plus `t` for a tombstone — and the
//! bolt value: the marshaled `mvccpb.KeyValue` (only the key for a tombstone).

use prost::Message;

use super::Revision;
use crate::pb::mvccpb;
use crate::storage::encoding::HistoryEvent;

const CASTAGNOLI: u32 = 0x82f6_3b78;

const fn table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CASTAGNOLI
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static TABLE: [u32; 256] = table();

/// Continues a CRC-32C over `bytes` (start with 0).
pub fn crc32c(crc: u32, bytes: &[u8]) -> u32 {
    let mut crc = !crc;
    for &byte in bytes {
        crc = TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

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
