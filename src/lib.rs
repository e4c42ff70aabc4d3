//! detcd: a distributed key-value store that speaks etcd's v3 API, keeps its data with Raft
//! (openraft) over redb, and runs the same server code for real or inside a seeded madsim
//! simulation. `ARCHITECTURE.md` maps the modules; `server` is the composition root.

pub mod api;
pub mod apply;
pub mod config;
pub mod crc32c;
pub mod env;
pub mod fnv;
pub mod mvcc;
pub mod node;
pub mod pb;
pub mod raft;
pub mod server;
pub mod storage;
pub mod watch;
