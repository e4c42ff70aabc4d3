//! The disk: where a node's redb databases live.
//!
//! Real mode opens files under the data directory (redb's own file backend). Simulation opens
//! [`SimDisk`] files, which the harness owns outside the node so they survive a kill and can lose
//! or tear unsynced writes on a crash.

use std::path::PathBuf;

use super::sim_disk::SimDisk;

/// How often a caller held by a stalled simulated disk looks again.
const STALL_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Where a node keeps its data.
#[derive(Debug, Clone)]
pub enum Disk {
    /// A directory on the real file system.
    Dir(PathBuf),
    /// The simulated disk of one simulated node.
    Sim(SimDisk),
}

impl Disk {
    /// Opens (creating if needed) the redb database `name` on this disk.
    ///
    /// Every page of the committed trees is checked against its checksum first, after a clean
    /// shutdown too (redb itself checks only after a crash): a file that changed under redb
    /// (a flipped bit) fails to open as corrupted rather than being read, or trusted, raw.
    pub fn open_database(&self, name: &str) -> Result<redb::Database, redb::DatabaseError> {
        let mut builder = redb::Database::builder();
        builder.set_check_integrity_on_open(true);
        match self {
            Disk::Dir(dir) => {
                #[allow(clippy::disallowed_methods)]
                std::fs::create_dir_all(dir).map_err(redb::StorageError::from)?;
                builder.create(dir.join(name))
            }
            Disk::Sim(disk) => {
                // Small cache: simulated nodes are many per process.
                builder.set_cache_size(4 << 20);
                builder.create_with_backend(disk.open_file(name))
            }
        }
    }

    /// Whether this disk already holds the database `name` (a restart, not a first boot).
    pub fn has_database(&self, name: &str) -> bool {
        match self {
            Disk::Dir(dir) => dir.join(name).exists(),
            Disk::Sim(disk) => disk.file_len(name).is_some_and(|len| len > 0),
        }
    }

    /// The length of file `name` in bytes, if it exists.
    pub fn file_len(&self, name: &str) -> Option<u64> {
        match self {
            #[allow(clippy::disallowed_methods)]
            Disk::Dir(dir) => std::fs::metadata(dir.join(name)).ok().map(|m| m.len()),
            Disk::Sim(disk) => disk.file_len(name),
        }
    }

    /// Called after a durable (fsynced) write: on a simulated disk, waits out the fsync's
    /// simulated latency, and for as long as the disk is stalled. A real fsync already took its
    /// time inside the write.
    pub async fn after_sync(&self) {
        if let Disk::Sim(disk) = self {
            let latency = disk.sync_latency();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            while disk.stalled() {
                tokio::time::sleep(STALL_POLL).await;
            }
        }
    }

    /// A human-readable location, for logs.
    pub fn describe(&self) -> String {
        match self {
            Disk::Dir(dir) => dir.display().to_string(),
            Disk::Sim(_) => "simulated disk".to_string(),
        }
    }
}
