//! The write-ahead log: segment files of checksummed frames that hold Raft's log, votes and
//! purge/truncate markers (`raft/log_store.rs` gives the records their meaning).
//!
//! Why not a redb table: an append must be durable before it is acknowledged, and a durable
//! redb commit costs two fsyncs (see [`super::begin_write`]) plus a page write per changed
//! B-tree node. Here an append is one positioned write into a preallocated file and one
//! `fdatasync`, and many appends that queued meanwhile share it.
//!
//! Format. A segment `wal-<id, 16 hex digits>.log` is preallocated with zeros. It holds frames
//! back to back, each starting on a 512-byte sector. A frame is
//! `magic u32 | frame number u64 | payload length u32 | payload` (little-endian; the payload is a
//! protobuf `detcd.raft.WalRecord`) spread over the first 508 bytes of as many sectors as it
//! needs; the last 4 bytes of every sector are the CRC-32C of the segment id, the sector's
//! offset and its 508 bytes. Frame numbers count up by one across segments, and each segment's
//! first frame is a `WalSegment` record with the log's state when it was started, so the oldest
//! segment still there replays without the ones purged before it.
//!
//! Recovery: torn or corrupted? A crash can leave a frame half written, and redb's single-phase
//! commit found out the hard way that a checksum failure in the newest data looks just like
//! that: a flipped bit in an acknowledged entry must not be taken for a torn write and dropped
//! (a member that forgets what it acknowledged can elect a leader without it). Sectors are
//! written whole (the disk model of `SimDisk`, and what disks promise), and the space after the
//! log's end is always zero: preallocated with zeros, and zeroed again at recovery wherever a
//! crash left unsynced writes. So each sector is one of three things:
//! - all zeros: never written. A frame whose first sector is unwritten is the end of the log; a
//!   frame with an unwritten later sector is torn, was never fsynced, and is the end too.
//! - checksum right: written whole.
//! - anything else: corrupted. Recovery refuses the log (the member must be replaced).
//!
//! A segment is started only after everything before it is durable, so only the newest segment
//! may end torn, and each segment must end exactly where the next one's first frame number says.
//!
//! The operations are blocking (real file I/O); the log store runs them through
//! [`crate::env::blocking`].

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use prost::Message;

use crate::crc32c::crc32c;
use crate::env::disk::DiskFile;
use crate::env::Disk;
use crate::pb::raft as pb;

pub const SECTOR: usize = 512;
const SECTOR_DATA: usize = SECTOR - 4;
const MAGIC: u32 = 0x4c41_5744; // "DWAL", little-endian
const FRAME_HEADER: usize = 4 + 8 + 4;
const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";
/// Preallocation and zeroing write at most this much at a time.
const ZERO_CHUNK: usize = 1 << 20;

/// Why the log cannot be used.
#[derive(Debug)]
pub enum WalError {
    Io(io::Error),
    /// The log holds data that was durable once and is not now: the member must not serve.
    Corrupted(String),
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalError::Io(e) => write!(f, "write-ahead log: {e}"),
            WalError::Corrupted(why) => write!(f, "write-ahead log corrupted: {why}"),
        }
    }
}

impl std::error::Error for WalError {}

impl From<io::Error> for WalError {
    fn from(e: io::Error) -> Self {
        WalError::Io(e)
    }
}

fn corrupted(why: impl Into<String>) -> WalError {
    WalError::Corrupted(why.into())
}

/// Where a frame is: enough to read it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLoc {
    pub segment: u64,
    pub offset: u64,
    pub sectors: u32,
}

/// A frame read back at recovery.
#[derive(Debug)]
pub struct Frame {
    pub loc: FrameLoc,
    pub record: pb::WalRecord,
}

pub fn segment_name(id: u64) -> String {
    format!("{SEGMENT_PREFIX}{id:016x}{SEGMENT_SUFFIX}")
}

fn segment_id(name: &str) -> Option<u64> {
    let hex = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn sectors_for(payload_len: usize) -> usize {
    (FRAME_HEADER + payload_len).div_ceil(SECTOR_DATA)
}

fn sector_crc(segment: u64, offset: u64, data: &[u8]) -> u32 {
    let crc = crc32c(0, &segment.to_le_bytes());
    let crc = crc32c(crc, &offset.to_le_bytes());
    crc32c(crc, data)
}

/// Appends the sectors of frame `number` holding `payload`, placed at `offset` of `segment`.
fn encode_frame(out: &mut Vec<u8>, segment: u64, offset: u64, number: u64, payload: &[u8]) {
    let mut body = Vec::with_capacity(FRAME_HEADER + payload.len());
    body.extend_from_slice(&MAGIC.to_le_bytes());
    body.extend_from_slice(&number.to_le_bytes());
    body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    body.extend_from_slice(payload);
    for (i, chunk) in body.chunks(SECTOR_DATA).enumerate() {
        let start = out.len();
        out.extend_from_slice(chunk);
        out.resize(start + SECTOR_DATA, 0);
        let sector_offset = offset + (i * SECTOR) as u64;
        let crc = sector_crc(segment, sector_offset, &out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

enum Sector<'a> {
    Unwritten,
    Valid(&'a [u8]),
    Corrupted,
}

fn classify(bytes: &[u8], segment: u64, offset: u64) -> Sector<'_> {
    if bytes.iter().all(|b| *b == 0) {
        return Sector::Unwritten;
    }
    let (data, crc) = bytes.split_at(SECTOR_DATA);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let trust_torn = crate::env::bugs::enabled(crate::env::bugs::Bug::CorruptWalTakenForTorn);
    if stored == sector_crc(segment, offset, data) {
        Sector::Valid(data)
    } else if trust_torn {
        Sector::Unwritten
    } else {
        Sector::Corrupted
    }
}

/// How a segment's frames end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// An unwritten sector where the next frame would start.
    Clean,
    /// A frame with an unwritten sector: a write cut short by a crash.
    Torn,
}

struct Scan {
    frames: Vec<Frame>,
    /// Offset after the last whole frame.
    end_offset: u64,
    end: End,
    /// The number the next frame would have.
    next_frame: u64,
    len: u64,
}

/// Reads segment `id` whole and parses its frames; `first_frame` is the number its first frame
/// must have (unknown for the oldest segment).
fn scan_segment(file: &DiskFile, id: u64, first_frame: Option<u64>) -> Result<Scan, WalError> {
    let len = file.len()?;
    let mut bytes = vec![0u8; len as usize];
    let read = file.read_at(0, &mut bytes)?;
    bytes.truncate(read);
    let sector_at = |offset: u64| -> Sector<'_> {
        let start = offset as usize;
        match bytes.get(start..start + SECTOR) {
            Some(sector) => classify(sector, id, offset),
            None => Sector::Unwritten,
        }
    };
    let name = segment_name(id);
    let mut frames = Vec::new();
    let mut offset = 0u64;
    let mut expected = first_frame;
    let end = loop {
        let data = match sector_at(offset) {
            Sector::Unwritten => break End::Clean,
            Sector::Corrupted => {
                return Err(corrupted(format!(
                    "{name}: sector at {offset} fails its checksum"
                )))
            }
            Sector::Valid(data) => data,
        };
        let magic = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes"));
        let number = u64::from_le_bytes(data[4..12].try_into().expect("8 bytes"));
        let payload_len = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes")) as usize;
        if magic != MAGIC {
            return Err(corrupted(format!("{name}: no frame starts at {offset}")));
        }
        if expected.is_some_and(|expected| expected != number) {
            return Err(corrupted(format!(
                "{name}: frame {number} at {offset}, expected frame {}",
                expected.unwrap_or_default()
            )));
        }
        let sectors = sectors_for(payload_len);
        if offset + (sectors * SECTOR) as u64 > len {
            return Err(corrupted(format!(
                "{name}: frame {number} at {offset} runs past the segment's end"
            )));
        }
        let mut body = Vec::with_capacity(sectors * SECTOR_DATA);
        body.extend_from_slice(data);
        let mut torn = false;
        for i in 1..sectors {
            let sector_offset = offset + (i * SECTOR) as u64;
            match sector_at(sector_offset) {
                Sector::Valid(data) => body.extend_from_slice(data),
                Sector::Unwritten => {
                    torn = true;
                    break;
                }
                Sector::Corrupted => {
                    return Err(corrupted(format!(
                        "{name}: sector at {sector_offset} fails its checksum"
                    )))
                }
            }
        }
        if torn {
            break End::Torn;
        }
        let payload = &body[FRAME_HEADER..FRAME_HEADER + payload_len];
        let record = pb::WalRecord::decode(payload).map_err(|e| {
            corrupted(format!(
                "{name}: frame {number} at {offset} does not decode: {e}"
            ))
        })?;
        frames.push(Frame {
            loc: FrameLoc {
                segment: id,
                offset,
                sectors: sectors as u32,
            },
            record,
        });
        offset += (sectors * SECTOR) as u64;
        expected = Some(number + 1);
    };
    Ok(Scan {
        next_frame: expected.unwrap_or(0),
        frames,
        end_offset: offset,
        end,
        len,
    })
}

/// Open segment files, shared by the writer and the readers.
type Files = Arc<Mutex<BTreeMap<u64, Arc<DiskFile>>>>;

/// Reads frames back; cheap to clone, usable while the writer appends.
#[derive(Clone)]
pub struct WalReader {
    files: Files,
}

impl WalReader {
    /// The record of the frame at `loc` (written earlier by this process or found at recovery).
    pub fn read(&self, loc: FrameLoc) -> Result<pb::WalRecord, WalError> {
        let file = self
            .files
            .lock()
            .expect("wal files lock")
            .get(&loc.segment)
            .cloned()
            .ok_or_else(|| corrupted(format!("segment {} is gone", loc.segment)))?;
        let mut bytes = vec![0u8; loc.sectors as usize * SECTOR];
        let read = file.read_at(loc.offset, &mut bytes)?;
        if read != bytes.len() {
            return Err(corrupted(format!("frame at {:?} is cut short", loc)));
        }
        let mut body = Vec::with_capacity(loc.sectors as usize * SECTOR_DATA);
        for (i, sector) in bytes.chunks(SECTOR).enumerate() {
            let offset = loc.offset + (i * SECTOR) as u64;
            match classify(sector, loc.segment, offset) {
                Sector::Valid(data) => body.extend_from_slice(data),
                _ => {
                    return Err(corrupted(format!(
                        "{}: sector at {offset} fails its checksum",
                        segment_name(loc.segment)
                    )))
                }
            }
        }
        let payload_len = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")) as usize;
        pb::WalRecord::decode(&body[FRAME_HEADER..FRAME_HEADER + payload_len])
            .map_err(|e| corrupted(format!("frame at {loc:?} does not decode: {e}")))
    }
}

/// The log's writer: appends frames to the newest segment, starting new ones as they fill.
pub struct Wal {
    disk: Disk,
    segment_bytes: u64,
    files: Files,
    current: u64,
    /// Where the next frame goes in the current segment, and the segment's length.
    write_offset: u64,
    current_len: u64,
    next_frame: u64,
    /// Written to the current segment since its last fsync.
    unsynced: bool,
}

impl Wal {
    /// Opens the log on `disk`: replays every segment and answers their frames in order, oldest
    /// first. A fresh disk gets its first segment, starting with `fresh_header`.
    pub fn open(
        disk: &Disk,
        segment_bytes: u64,
        fresh_header: pb::WalSegment,
    ) -> Result<(Wal, Vec<Frame>), WalError> {
        assert!(segment_bytes as usize >= 4 * SECTOR, "segments too small");
        let mut ids: Vec<u64> = disk
            .list_files(SEGMENT_PREFIX)?
            .iter()
            .filter_map(|name| segment_id(name))
            .collect();
        ids.sort_unstable();
        let mut files = BTreeMap::new();
        let mut frames = Vec::new();
        // The newest segment with frames: (id, where its frames end, its length, next frame).
        let mut last: Option<(u64, u64, u64, u64)> = None;
        for (position, &id) in ids.iter().enumerate() {
            let name = segment_name(id);
            let file = disk.open_file(&name)?;
            let first_frame = last.map(|(_, _, _, next_frame)| next_frame);
            let scan = scan_segment(&file, id, first_frame)?;
            let newest = position + 1 == ids.len();
            if scan.frames.is_empty() {
                if newest {
                    // Its creation was cut short: it never held anything.
                    drop(file);
                    disk.remove_file(&name)?;
                    break;
                }
                return Err(corrupted(format!("{name} holds no frame")));
            }
            match &scan.frames[0].record.record {
                Some(pb::wal_record::Record::Segment(header)) if header.segment == id => {}
                _ => return Err(corrupted(format!("{name} does not start with its header"))),
            }
            if !newest && scan.end == End::Torn {
                return Err(corrupted(format!(
                    "{name} ends in a torn frame, yet a newer segment follows"
                )));
            }
            files.insert(id, Arc::new(file));
            last = Some((id, scan.end_offset, scan.len, scan.next_frame));
            frames.extend(scan.frames);
        }
        let mut wal = Wal {
            disk: disk.clone(),
            segment_bytes,
            files: Arc::new(Mutex::new(files)),
            current: 0,
            write_offset: 0,
            current_len: 0,
            next_frame: 1,
            unsynced: false,
        };
        match last {
            Some((id, end_offset, len, next_frame)) => {
                wal.current = id;
                wal.write_offset = end_offset;
                wal.current_len = len;
                wal.next_frame = next_frame;
                wal.zero_tail()?;
            }
            None => frames.push(wal.start_segment(fresh_header, 0)?),
        }
        Ok((wal, frames))
    }

    pub fn reader(&self) -> WalReader {
        WalReader {
            files: self.files.clone(),
        }
    }

    fn current_file(&self) -> Arc<DiskFile> {
        self.files.lock().expect("wal files lock")[&self.current].clone()
    }

    /// Zeroes the current segment from the log's end to its last written sector, so the space
    /// after the end is all zeros again (unsynced writes a crash kept, a torn frame).
    fn zero_tail(&mut self) -> Result<(), WalError> {
        let file = self.current_file();
        let mut last_written = None;
        let mut offset = self.write_offset;
        let mut buffer = vec![0u8; ZERO_CHUNK];
        while offset < self.current_len {
            let read = file.read_at(offset, &mut buffer)?;
            if read == 0 {
                break;
            }
            if let Some(position) = buffer[..read].iter().rposition(|b| *b != 0) {
                last_written = Some(offset + position as u64);
            }
            offset += read as u64;
        }
        if let Some(last) = last_written {
            let zeros = vec![0u8; ZERO_CHUNK];
            let mut at = self.write_offset;
            while at <= last {
                let len = ZERO_CHUNK.min((last + 1 - at) as usize);
                file.write_at(at, &zeros[..len])?;
                at += len as u64;
            }
            file.sync_data()?;
        }
        Ok(())
    }

    /// Starts segment `current + 1` holding `header` (its id filled in) and room for at least
    /// `room` bytes more; answers the header's frame.
    fn start_segment(&mut self, mut header: pb::WalSegment, room: u64) -> Result<Frame, WalError> {
        if self.unsynced {
            self.current_file().sync_data()?;
            self.unsynced = false;
        }
        let id = self.current + 1;
        header.segment = id;
        let record = pb::WalRecord {
            record: Some(pb::wal_record::Record::Segment(header)),
        };
        let payload = record.encode_to_vec();
        let header_len = (sectors_for(payload.len()) * SECTOR) as u64;
        let len = self
            .segment_bytes
            .max((header_len + room).div_ceil(SECTOR as u64) * SECTOR as u64);
        let name = segment_name(id);
        let file = self.disk.open_file(&name)?;
        preallocate(&self.disk, &file, len)?;
        let mut frame = Vec::new();
        encode_frame(&mut frame, id, 0, self.next_frame, &payload);
        file.write_at(0, &frame)?;
        file.sync_data()?;
        self.disk.sync_dir()?;
        self.files
            .lock()
            .expect("wal files lock")
            .insert(id, Arc::new(file));
        let loc = FrameLoc {
            segment: id,
            offset: 0,
            sectors: (frame.len() / SECTOR) as u32,
        };
        self.current = id;
        self.current_len = len;
        self.write_offset = frame.len() as u64;
        self.next_frame += 1;
        Ok(Frame { loc, record })
    }

    /// Appends `records` as frames, in order, with one write, and fsyncs if `sync`. If they do
    /// not fit, a new segment is started first, with `header` as the log's state before them.
    /// Answers where each record went, and the new segment's header frame if one was started.
    pub fn append(
        &mut self,
        records: &[pb::WalRecord],
        sync: bool,
        header: impl FnOnce() -> pb::WalSegment,
    ) -> Result<(Vec<FrameLoc>, Option<Frame>), WalError> {
        let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.encode_to_vec()).collect();
        let needed: u64 = payloads
            .iter()
            .map(|p| (sectors_for(p.len()) * SECTOR) as u64)
            .sum();
        let mut started = None;
        if self.write_offset + needed > self.current_len {
            started = Some(self.start_segment(header(), needed)?);
        }
        let mut buffer = Vec::with_capacity(needed as usize);
        let mut locs = Vec::with_capacity(records.len());
        for payload in &payloads {
            let offset = self.write_offset + buffer.len() as u64;
            let before = buffer.len();
            encode_frame(&mut buffer, self.current, offset, self.next_frame, payload);
            locs.push(FrameLoc {
                segment: self.current,
                offset,
                sectors: ((buffer.len() - before) / SECTOR) as u32,
            });
            self.next_frame += 1;
        }
        let file = self.current_file();
        file.write_at(self.write_offset, &buffer)?;
        self.write_offset += buffer.len() as u64;
        self.unsynced = true;
        if sync {
            file.sync_data()?;
            self.unsynced = false;
        }
        Ok((locs, started))
    }

    /// Removes every segment older than `segment` (their records are no longer needed).
    pub fn remove_segments_before(&mut self, segment: u64) -> Result<(), WalError> {
        let segment = segment.min(self.current);
        let old: Vec<u64> = {
            let files = self.files.lock().expect("wal files lock");
            files.range(..segment).map(|(id, _)| *id).collect()
        };
        for id in old {
            self.files.lock().expect("wal files lock").remove(&id);
            self.disk.remove_file(&segment_name(id))?;
        }
        Ok(())
    }

    /// The segment frames are appended to now.
    pub fn current_segment(&self) -> u64 {
        self.current
    }
}

/// Gives `file` `len` bytes of zeros. A real file gets them written, not just a length, so its
/// blocks exist and an fdatasync after a write into them need not journal new extents.
fn preallocate(disk: &Disk, file: &DiskFile, len: u64) -> Result<(), WalError> {
    match disk {
        Disk::Dir(_) => {
            let zeros = vec![0u8; ZERO_CHUNK];
            let mut at = 0u64;
            while at < len {
                let chunk = ZERO_CHUNK.min((len - at) as usize);
                file.write_at(at, &zeros[..chunk])?;
                at += chunk as u64;
            }
        }
        Disk::Sim(_) => file.set_len(len)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests;
