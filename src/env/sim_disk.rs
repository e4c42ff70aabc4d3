//! `SimDisk`: an in-memory disk with a crash model, for the simulation.
//!
//! Durability model. Each file has two images: `visible` (what reads see: every write so far) and
//! `durable` (what survives a crash: the state at the last `sync_data`), plus the ordered list of
//! operations since that sync. `sync_data` makes `durable = visible`. A crash (power loss)
//! replaces `visible` with `durable` plus, depending on the seeded crash mode, nothing, a random
//! prefix of the pending operations, such a prefix followed by one operation torn at a 512-byte
//! sector boundary, or a random subset of them (a write cache that reorders). This is what redb's
//! commit protocol must survive. A process kill is not a crash: the kernel keeps what was
//! written, so [`SimDisk::fence`] only fences the old handles.
//!
//! Epoch fencing. madsim's `kill` drops the node's futures, and with them its `redb::Database`,
//! whose clean close would flush everything and make a crash prove nothing. So every backend handle
//! remembers the disk's epoch when it was opened; [`SimDisk::crash`] bumps the epoch, and any call
//! on an older handle fails with EIO and changes nothing.
//!
//! Faults. `fail_reads`, `fail_writes` and `fail_syncs` make the matching calls fail with EIO
//! (redb then refuses further writes, and the node must stop); `flip_bit` corrupts one durable bit,
//! and `flip_recent_bit` one of the bytes the last few fsyncs made durable (bit rot where it
//! matters most: in the newest data, which a careless recovery takes for a torn write).
//!
//! Time. An fsync takes `sync_latency` of simulated time (default 1 ms, madsim's timer grain; a
//! real fdatasync here takes ~0.14 ms). redb calls `sync_data` synchronously, so the latency is
//! paid by the caller afterwards ([`super::Disk::after_sync`]); meanwhile new requests queue up,
//! which is what makes group commit happen. A slow disk is a larger latency; a stalled disk
//! holds every fsync's caller until it is unstalled.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use super::rng::SplitMix64;

const SECTOR_SIZE: usize = 512;

/// How many fsyncs' worth of written ranges a file remembers for [`SimDisk::flip_recent_bit`].
const RECENT_SYNCS: usize = 4;

#[derive(Debug, Clone)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct SimFile {
    visible: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<PendingOp>,
    /// The byte ranges (offset, length) written before each of the last few fsyncs.
    recent: VecDeque<Vec<(u64, usize)>>,
}

/// What happens to unsynced writes on a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// A random prefix of the unsynced writes survives.
    KeepPrefix,
    /// A random prefix survives and the next write is torn at a sector boundary.
    TearNext,
    /// A random subset survives, each pending operation independently (reordered writes).
    KeepSubset,
}

#[derive(Debug, Default)]
struct DiskState {
    files: BTreeMap<String, SimFile>,
    epoch: u64,
    fail_reads: bool,
    fail_writes: bool,
    fail_syncs: bool,
    syncs: u64,
    sync_latency: std::time::Duration,
    commit_latency: std::time::Duration,
    stalled: bool,
}

/// One simulated node's disk. Cheap to clone; clones are the same disk.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

/// The default simulated fsync time.
pub const DEFAULT_SYNC_LATENCY: std::time::Duration = std::time::Duration::from_millis(1);

impl Default for SimDisk {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(DiskState {
                sync_latency: DEFAULT_SYNC_LATENCY,
                ..DiskState::default()
            })),
        }
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO: {what}"))
}

impl SimFile {
    fn apply(image: &mut Vec<u8>, op: &PendingOp) {
        match op {
            PendingOp::Write { offset, data } => {
                let end = *offset as usize + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[*offset as usize..end].copy_from_slice(data);
            }
            PendingOp::SetLen(len) => image.resize(*len as usize, 0),
        }
    }
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// A redb backend for file `name`, fenced to the current epoch.
    pub fn open_file(&self, name: &str) -> SimFileBackend {
        let mut state = self.state.lock().expect("sim disk lock");
        state.files.entry(name.to_string()).or_default();
        SimFileBackend {
            disk: self.clone(),
            name: name.to_string(),
            epoch: state.epoch,
        }
    }

    /// Every file's name, sorted.
    pub fn file_names(&self) -> Vec<String> {
        let state = self.state.lock().expect("sim disk lock");
        state.files.keys().cloned().collect()
    }

    /// Removes file `name`; durable at once (a simulated disk loses contents, never names).
    pub fn remove_file(&self, name: &str) {
        self.state.lock().expect("sim disk lock").files.remove(name);
    }

    pub fn file_len(&self, name: &str) -> Option<u64> {
        let state = self.state.lock().expect("sim disk lock");
        state.files.get(name).map(|file| file.visible.len() as u64)
    }

    /// The process using this disk died: every open handle is fenced (a dropped `Database` cannot
    /// flush a clean shutdown), but everything written stays, synced or not, as in the kernel's
    /// page cache.
    pub fn fence(&self) {
        self.state.lock().expect("sim disk lock").epoch += 1;
    }

    /// Crashes the disk: fences every open handle and keeps only what the crash mode allows.
    pub fn crash(&self, mode: CrashMode, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let mut state = self.state.lock().expect("sim disk lock");
        state.epoch += 1;
        for file in state.files.values_mut() {
            let mut image = file.durable.clone();
            let pending = std::mem::take(&mut file.pending);
            let kept = match mode {
                CrashMode::DropUnsynced => 0,
                CrashMode::KeepPrefix | CrashMode::TearNext => {
                    rng.below(pending.len() as u64 + 1) as usize
                }
                CrashMode::KeepSubset => {
                    for op in &pending {
                        if rng.below(2) == 1 {
                            SimFile::apply(&mut image, op);
                        }
                    }
                    0
                }
            };
            for op in &pending[..kept] {
                SimFile::apply(&mut image, op);
            }
            if mode == CrashMode::TearNext {
                if let Some(PendingOp::Write { offset, data }) = pending.get(kept) {
                    let sectors = data.len().div_ceil(SECTOR_SIZE) as u64;
                    let torn_len = (rng.below(sectors) as usize * SECTOR_SIZE).min(data.len());
                    let torn = PendingOp::Write {
                        offset: *offset,
                        data: data[..torn_len].to_vec(),
                    };
                    SimFile::apply(&mut image, &torn);
                }
            }
            file.visible = image.clone();
            file.durable = image;
        }
    }

    pub fn set_fail_reads(&self, fail: bool) {
        self.state.lock().expect("sim disk lock").fail_reads = fail;
    }
    pub fn set_fail_writes(&self, fail: bool) {
        self.state.lock().expect("sim disk lock").fail_writes = fail;
    }
    pub fn set_fail_syncs(&self, fail: bool) {
        self.state.lock().expect("sim disk lock").fail_syncs = fail;
    }

    /// Flips one bit of a file's durable (and visible) image.
    pub fn flip_bit(&self, name: &str, byte_offset: u64, bit: u8) {
        let mut state = self.state.lock().expect("sim disk lock");
        if let Some(file) = state.files.get_mut(name) {
            for image in [&mut file.durable, &mut file.visible] {
                if let Some(byte) = image.get_mut(byte_offset as usize) {
                    *byte ^= 1 << (bit % 8);
                }
            }
        }
    }

    /// Flips one bit in a byte that one of the last few fsyncs of file `name` made durable,
    /// chosen by `seed`; answers its offset, or `None` if the file has no such bytes.
    pub fn flip_recent_bit(&self, name: &str, seed: u64) -> Option<u64> {
        let mut rng = SplitMix64::new(seed);
        let offset = {
            let state = self.state.lock().expect("sim disk lock");
            let file = state.files.get(name)?;
            let ranges: Vec<(u64, usize)> = file.recent.iter().flatten().copied().collect();
            let total: u64 = ranges.iter().map(|(_, len)| *len as u64).sum();
            if total == 0 {
                return None;
            }
            let mut pick = rng.below(total);
            let mut offset = None;
            for (start, len) in ranges {
                if pick < len as u64 {
                    offset = Some(start + pick);
                    break;
                }
                pick -= len as u64;
            }
            offset?
        };
        self.flip_bit(name, offset, rng.below(8) as u8);
        Some(offset)
    }

    /// Flips one bit in a byte that one of the last few fsyncs of any file made durable, chosen
    /// by `seed` (files weighed by how much they wrote); answers the file and the offset.
    pub fn flip_recent_bit_in_any_file(&self, seed: u64) -> Option<(String, u64)> {
        let mut rng = SplitMix64::new(seed);
        let name = {
            let state = self.state.lock().expect("sim disk lock");
            let written: Vec<(String, u64)> = state
                .files
                .iter()
                .map(|(name, file)| {
                    let bytes = file
                        .recent
                        .iter()
                        .flatten()
                        .map(|(_, len)| *len as u64)
                        .sum();
                    (name.clone(), bytes)
                })
                .filter(|(_, bytes)| *bytes > 0)
                .collect();
            let total: u64 = written.iter().map(|(_, bytes)| bytes).sum();
            if total == 0 {
                return None;
            }
            let mut pick = rng.below(total);
            let mut chosen = None;
            for (name, bytes) in written {
                if pick < bytes {
                    chosen = Some(name);
                    break;
                }
                pick -= bytes;
            }
            chosen?
        };
        let offset = self.flip_recent_bit(&name, rng.next_u64())?;
        Some((name, offset))
    }

    /// Holds every fsync's caller (see [`super::Disk::after_sync`]) until unstalled.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.lock().expect("sim disk lock").stalled = stalled;
    }

    pub fn stalled(&self) -> bool {
        self.state.lock().expect("sim disk lock").stalled
    }

    /// Makes every fsync take `latency` of simulated time (a slow disk).
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        self.state.lock().expect("sim disk lock").sync_latency = latency;
    }

    pub fn sync_latency(&self) -> std::time::Duration {
        self.state.lock().expect("sim disk lock").sync_latency
    }

    /// Makes every commit of applied entries take `latency` of simulated time before it
    /// happens (a slow store; see [`super::Disk::before_commit`]). None by default.
    pub fn set_commit_latency(&self, latency: std::time::Duration) {
        self.state.lock().expect("sim disk lock").commit_latency = latency;
    }

    pub fn commit_latency(&self) -> std::time::Duration {
        self.state.lock().expect("sim disk lock").commit_latency
    }

    /// How many `sync_data` calls succeeded, over all files (for fsync-per-request accounting).
    pub fn sync_count(&self) -> u64 {
        self.state.lock().expect("sim disk lock").syncs
    }
}

/// The redb `StorageBackend` of one [`SimDisk`] file.
#[derive(Debug)]
pub struct SimFileBackend {
    disk: SimDisk,
    name: String,
    epoch: u64,
}

impl SimFileBackend {
    fn with_file<T>(&self, f: impl FnOnce(&mut DiskState, &str) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.disk.state.lock().expect("sim disk lock");
        if state.epoch != self.epoch {
            return Err(eio("handle fenced by a crash"));
        }
        if !state.files.contains_key(&self.name) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "simulated file was removed",
            ));
        }
        f(&mut state, &self.name)
    }
}

impl redb::StorageBackend for SimFileBackend {
    fn len(&self) -> io::Result<u64> {
        self.with_file(|state, name| Ok(state.files[name].visible.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with_file(|state, name| {
            if state.fail_reads {
                return Err(eio("read"));
            }
            let image = &state.files[name].visible;
            let end = offset as usize + out.len();
            if end > image.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past end of simulated file",
                ));
            }
            out.copy_from_slice(&image[offset as usize..end]);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with_file(|state, name| {
            if state.fail_writes {
                return Err(eio("set_len"));
            }
            let file = state.files.get_mut(name).expect("file exists");
            let op = PendingOp::SetLen(len);
            SimFile::apply(&mut file.visible, &op);
            file.pending.push(op);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with_file(|state, name| {
            if state.fail_syncs {
                return Err(eio("fsync"));
            }
            state.syncs += 1;
            let file = state.files.get_mut(name).expect("file exists");
            // `visible` is always `durable` with the pending operations applied in order, so
            // applying them makes the two equal at the cost of what was written, not of the
            // whole file (a copy of the file per fsync dominated the simulation's time).
            let pending = std::mem::take(&mut file.pending);
            let mut written = Vec::new();
            for op in &pending {
                SimFile::apply(&mut file.durable, op);
                if let PendingOp::Write { offset, data } = op {
                    written.push((*offset, data.len()));
                }
            }
            if !written.is_empty() {
                if file.recent.len() == RECENT_SYNCS {
                    file.recent.pop_front();
                }
                file.recent.push_back(written);
            }
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with_file(|state, name| {
            if state.fail_writes {
                return Err(eio("write"));
            }
            let file = state.files.get_mut(name).expect("file exists");
            let op = PendingOp::Write {
                offset,
                data: data.to_vec(),
            };
            SimFile::apply(&mut file.visible, &op);
            file.pending.push(op);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    /// An fsync applies the pending operations to the durable image rather than copying the
    /// file: after it, a crash that drops nothing unsynced reads back exactly what was visible.
    #[test]
    fn an_fsync_makes_the_durable_image_what_was_visible() {
        let disk = SimDisk::new();
        let mut file = disk.open_file("a");
        let mut rng = SplitMix64::new(7);
        for round in 0..50u64 {
            for _ in 0..rng.below(6) {
                match rng.below(4) {
                    0 => file.set_len(rng.below(20_000)).unwrap(),
                    _ => {
                        let len = rng.below(3000) as usize + 1;
                        let data = vec![round as u8; len];
                        file.write(rng.below(16_000), &data).unwrap();
                    }
                }
            }
            file.sync_data().unwrap();
            let len = file.len().unwrap() as usize;
            let mut visible = vec![0; len];
            file.read(0, &mut visible).unwrap();
            disk.crash(CrashMode::DropUnsynced, round);
            file = disk.open_file("a");
            assert_eq!(file.len().unwrap() as usize, len, "round {round}");
            let mut durable = vec![0; len];
            file.read(0, &mut durable).unwrap();
            assert!(
                durable == visible,
                "round {round}: the durable image differs"
            );
        }
    }

    #[test]
    fn crash_drops_unsynced_writes_and_fences_old_handles() {
        let disk = SimDisk::new();
        let file = disk.open_file("a");
        file.write(0, b"hello").unwrap();
        file.sync_data().unwrap();
        file.write(0, b"HELLO world").unwrap();
        disk.crash(CrashMode::DropUnsynced, 1);
        assert!(file.len().is_err(), "an old handle is fenced after a crash");
        let reopened = disk.open_file("a");
        let mut out = vec![0; 5];
        reopened.read(0, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        assert_eq!(reopened.len().unwrap(), 5);
    }

    #[test]
    fn a_fence_keeps_unsynced_writes_but_kills_old_handles() {
        let disk = SimDisk::new();
        let file = disk.open_file("a");
        file.write(0, b"unsynced").unwrap();
        disk.fence();
        assert!(
            file.write(0, b"late").is_err(),
            "a fenced handle writes nothing"
        );
        let mut out = vec![0; 8];
        disk.open_file("a").read(0, &mut out).unwrap();
        assert_eq!(&out, b"unsynced");
    }

    #[test]
    fn keep_subset_can_keep_a_later_write_without_an_earlier_one() {
        let mut reordered = false;
        for seed in 0..64 {
            let disk = SimDisk::new();
            let file = disk.open_file("a");
            file.set_len(2).unwrap();
            file.sync_data().unwrap();
            file.write(0, b"1").unwrap();
            file.write(1, b"2").unwrap();
            disk.crash(CrashMode::KeepSubset, seed);
            let mut out = vec![0; 2];
            disk.open_file("a").read(0, &mut out).unwrap();
            assert!(out[0] == 0 || out[0] == b'1');
            reordered |= out == [0, b'2'];
        }
        assert!(
            reordered,
            "some seed keeps the second write but not the first"
        );
    }

    #[test]
    fn a_recent_bit_flip_lands_in_what_the_last_fsyncs_wrote() {
        for seed in 0..32 {
            let disk = SimDisk::new();
            let file = disk.open_file("a");
            file.write(0, &[0u8; 100]).unwrap();
            file.sync_data().unwrap();
            file.write(40, &[0u8; 10]).unwrap();
            file.sync_data().unwrap();
            for _ in 0..RECENT_SYNCS - 1 {
                file.sync_data().unwrap(); // nothing written: not a recent write
            }
            let offset = disk.flip_recent_bit("a", seed).expect("recent bytes");
            assert!(
                (0..100).contains(&offset),
                "seed {seed}: flipped at {offset}"
            );
            for _ in 0..RECENT_SYNCS - 1 {
                file.write(40, &[0u8; 10]).unwrap();
                file.sync_data().unwrap();
            }
            disk.crash(CrashMode::DropUnsynced, seed);
            let mut out = vec![0; 100];
            disk.open_file("a").read(0, &mut out).unwrap();
            let flipped: u32 = out.iter().map(|b| b.count_ones()).sum();
            // The later writes at 40..50 may have overwritten the flipped bit.
            assert!(flipped <= 1, "seed {seed}: {flipped} bits flipped");
            let only_recent = disk.flip_recent_bit("a", seed).expect("recent bytes");
            assert!(
                (40..50).contains(&only_recent),
                "seed {seed}: the last {RECENT_SYNCS} fsyncs wrote only 40..50, flipped at {only_recent}"
            );
        }
        assert_eq!(SimDisk::new().flip_recent_bit("none", 1), None);
    }

    #[test]
    fn torn_write_keeps_whole_sectors_only() {
        let mut torn_somewhere_inside = false;
        for seed in 0..32 {
            let disk = SimDisk::new();
            let file = disk.open_file("a");
            file.set_len(4 * SECTOR_SIZE as u64).unwrap();
            file.sync_data().unwrap();
            file.write(0, &vec![7u8; 4 * SECTOR_SIZE]).unwrap();
            disk.crash(CrashMode::TearNext, seed);
            let reopened = disk.open_file("a");
            let mut out = vec![0; 4 * SECTOR_SIZE];
            reopened.read(0, &mut out).unwrap();
            let sevens = out.iter().take_while(|b| **b == 7).count();
            assert_eq!(sevens % SECTOR_SIZE, 0, "seed {seed}: torn inside a sector");
            assert!(out[sevens..].iter().all(|b| *b == 0));
            torn_somewhere_inside |= sevens > 0 && sevens < out.len();
        }
        assert!(torn_somewhere_inside, "some seed tears the write part way");
    }

    /// Parity: with no crash, a SimDisk file and a real file given the same operations read back
    /// the same bytes, and a redb database on each holds the same data.
    #[test]
    fn behaves_like_the_file_backend_when_nothing_crashes() {
        use redb::backends::FileBackend;
        use redb::{ReadableDatabase, TableDefinition};

        let path = std::env::temp_dir().join(format!("detcd-parity-{}", std::process::id()));
        #[allow(clippy::disallowed_methods)]
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let real = FileBackend::new(file).unwrap();
        let disk = SimDisk::new();
        let sim = disk.open_file("parity");
        let ops: [(u64, &[u8]); 4] = [
            (0, b"abc"),
            (4096, b"page two"),
            (1, b"XY"),
            (9000, b"tail"),
        ];
        for backend in [&real as &dyn StorageBackend, &sim as &dyn StorageBackend] {
            backend.set_len(8192).unwrap();
            for (offset, data) in ops {
                backend.write(offset, data).unwrap();
            }
            backend.sync_data().unwrap();
            backend.set_len(9004).unwrap();
        }
        assert_eq!(real.len().unwrap(), sim.len().unwrap());
        let (mut from_real, mut from_sim) = (vec![0; 9004], vec![0; 9004]);
        real.read(0, &mut from_real).unwrap();
        sim.read(0, &mut from_sim).unwrap();
        assert_eq!(from_real, from_sim);
        assert!(
            sim.read(9000, &mut [0; 8]).is_err(),
            "reads past the end fail, as on a file"
        );
        drop(real);
        #[allow(clippy::disallowed_methods)]
        let _ = std::fs::remove_file(&path);

        const TABLE: TableDefinition<u64, &str> = TableDefinition::new("t");
        let db = redb::Database::builder()
            .create_with_backend(disk.open_file("db"))
            .unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(7, "seven").unwrap();
        txn.commit().unwrap();
        drop(db);
        let db = redb::Database::builder()
            .create_with_backend(disk.open_file("db"))
            .unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        assert_eq!(table.get(7).unwrap().unwrap().value(), "seven");
    }
}
