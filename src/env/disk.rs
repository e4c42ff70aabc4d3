//! The disk: where a node's redb database and write-ahead log live.
//!
//! Real mode opens files under the data directory (redb's own file backend, and plain files for
//! the log). Simulation opens [`SimDisk`] files, which the harness owns outside the node so they
//! survive a kill and can lose or tear unsynced writes on a crash.

use std::io;
use std::path::PathBuf;

use redb::StorageBackend;

use super::sim_disk::{SimDisk, SimFileBackend};

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

/// redb's page cache on a real disk. redb's default (1 GiB) lets its write buffer grow to half of
/// that between durable commits and keeps every page the open-time integrity check read, so a
/// member's memory grew with its data; the OS page cache keeps the file's hot pages anyway.
/// 16 MiB until the key index moved to memory (`mvcc/index.rs`, 2026-12-06); what is left in
/// redb is history, appended at its end and read at random places, and 8 MiB served puts,
/// ranges and txns as fast (A/B, one node, same run: 0.95-1.04x) with 8 MB less RSS.
const REDB_CACHE_BYTES: usize = 8 << 20;

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
                builder.set_cache_size(REDB_CACHE_BYTES);
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

    /// Called before the state machine commits a batch it has applied (and answered): on a
    /// simulated disk, waits out the commit latency a scenario set (none by default), so that
    /// reads and watches can arrive between the answer and the commit. A real commit takes its
    /// time inside the call.
    pub async fn before_commit(&self) {
        if let Disk::Sim(disk) = self {
            let latency = disk.commit_latency();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
        }
    }

    /// Opens (creating if needed) the plain file `name`, for the write-ahead log.
    pub fn open_file(&self, name: &str) -> io::Result<DiskFile> {
        match self {
            Disk::Dir(dir) => {
                #[allow(clippy::disallowed_methods)]
                std::fs::create_dir_all(dir)?;
                #[allow(clippy::disallowed_methods)]
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(dir.join(name))?;
                Ok(DiskFile::Real(file))
            }
            Disk::Sim(disk) => Ok(DiskFile::Sim(disk.open_file(name))),
        }
    }

    /// The names of the files whose names start with `prefix`, sorted.
    pub fn list_files(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut names = match self {
            Disk::Dir(dir) => {
                let mut names = Vec::new();
                #[allow(clippy::disallowed_methods)]
                let entries = match std::fs::read_dir(dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    if let Some(name) = entry?.file_name().to_str() {
                        names.push(name.to_string());
                    }
                }
                names
            }
            Disk::Sim(disk) => disk.file_names(),
        };
        names.retain(|name| name.starts_with(prefix));
        names.sort();
        Ok(names)
    }

    /// Removes file `name`, durably (the directory is synced).
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        match self {
            Disk::Dir(dir) => {
                #[allow(clippy::disallowed_methods)]
                std::fs::remove_file(dir.join(name))?;
                self.sync_dir()
            }
            Disk::Sim(disk) => {
                disk.remove_file(name);
                Ok(())
            }
        }
    }

    /// Makes the directory's entries (files created or removed) durable. A simulated disk's
    /// names are durable as soon as they change; only file contents can be lost.
    pub fn sync_dir(&self) -> io::Result<()> {
        match self {
            Disk::Dir(dir) =>
            {
                #[allow(clippy::disallowed_methods)]
                std::fs::File::open(dir)?.sync_all()
            }
            Disk::Sim(_) => Ok(()),
        }
    }

    /// How large the write-ahead log's segment files are: 16 MiB for real, 1 MiB on a simulated
    /// disk (which keeps every file twice in memory).
    pub fn wal_segment_bytes(&self) -> u64 {
        match self {
            Disk::Dir(_) => 16 << 20,
            Disk::Sim(_) => 1 << 20,
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

/// A plain file on a [`Disk`]: positioned reads and writes, and `fdatasync`.
#[derive(Debug)]
pub enum DiskFile {
    Real(std::fs::File),
    Sim(SimFileBackend),
}

impl DiskFile {
    /// The file's length in bytes (a `Result`, so no `is_empty`).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> io::Result<u64> {
        match self {
            DiskFile::Real(file) => Ok(file.metadata()?.len()),
            DiskFile::Sim(file) => file.len(),
        }
    }

    /// Reads up to `out.len()` bytes at `offset`; answers how many there were (fewer at the end
    /// of the file).
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<usize> {
        let len = self.len()?;
        let available = len.saturating_sub(offset).min(out.len() as u64) as usize;
        if available == 0 {
            return Ok(0);
        }
        match self {
            DiskFile::Real(file) => {
                use std::os::unix::fs::FileExt;
                file.read_exact_at(&mut out[..available], offset)?;
            }
            DiskFile::Sim(file) => file.read(offset, &mut out[..available])?,
        }
        Ok(available)
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self {
            DiskFile::Real(file) => {
                use std::os::unix::fs::FileExt;
                file.write_all_at(data, offset)
            }
            DiskFile::Sim(file) => file.write(offset, data),
        }
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            DiskFile::Real(file) => file.set_len(len),
            DiskFile::Sim(file) => file.set_len(len),
        }
    }

    /// `fdatasync`: everything written so far survives a crash. On a simulated disk the caller
    /// also pays the fsync's simulated time with [`Disk::after_sync`].
    pub fn sync_data(&self) -> io::Result<()> {
        match self {
            DiskFile::Real(file) => file.sync_data(),
            DiskFile::Sim(file) => file.sync_data(),
        }
    }
}
