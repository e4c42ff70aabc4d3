//! The write-ahead log against its crash model: whatever a crash keeps of unsynced writes,
//! recovery answers every synced frame and nothing that was not written, refuses a flipped bit,
//! and never lets a frame left over from before a crash follow newer ones.

use super::*;
use crate::env::rng::SplitMix64;
use crate::env::sim_disk::CrashMode;
use crate::env::SimDisk;

const SMALL_SEGMENT: u64 = 8 * 1024;

fn header() -> pb::WalSegment {
    pb::WalSegment::default()
}

/// Record `n`: one entry at index `n` with a value of `len` bytes.
fn record(n: u64, len: usize) -> pb::WalRecord {
    pb::WalRecord {
        record: Some(pb::wal_record::Record::Entries(pb::WalEntries {
            entries: vec![pb::Entry {
                log_id: Some(pb::LogId { term: n, index: n }),
                payload: Some(pb::entry::Payload::Command(pb::Command {
                    op: Some(pb::command::Op::Put(crate::pb::etcdserverpb::PutRequest {
                        key: format!("k{n}").into_bytes(),
                        value: vec![(n % 251) as u8; len].into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
            }],
            committed: None,
        })),
    }
}

/// The numbers of the entry records among `frames`, in order.
fn numbers(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|frame| match &frame.record.record {
            Some(pb::wal_record::Record::Entries(entries)) => {
                entries.entries[0].log_id.as_ref().map(|id| id.index)
            }
            _ => None,
        })
        .collect()
}

fn open(disk: &Disk) -> Result<(Wal, Vec<Frame>), WalError> {
    Wal::open(disk, SMALL_SEGMENT, header())
}

#[test]
fn frames_come_back_in_order_across_segments() {
    let disk = Disk::Sim(SimDisk::new());
    let (mut wal, frames) = open(&disk).unwrap();
    assert_eq!(numbers(&frames), Vec::<u64>::new());
    let mut written = Vec::new();
    for n in 1..=60u64 {
        let len = (n as usize * 97) % 1500;
        let (locs, _) = wal.append(&[record(n, len)], n % 3 == 0, header).unwrap();
        assert_eq!(locs.len(), 1);
        assert_eq!(wal.reader().read(locs[0]).unwrap(), record(n, len));
        written.push(n);
    }
    // A frame larger than a whole segment gets a segment of its own size.
    let (locs, started) = wal.append(&[record(61, 20_000)], true, header).unwrap();
    assert!(started.is_some());
    assert_eq!(wal.reader().read(locs[0]).unwrap(), record(61, 20_000));
    written.push(61);
    let segments = disk.list_files("wal-").unwrap();
    assert!(segments.len() > 3, "rolled over: {segments:?}");
    drop(wal);
    let (_, frames) = open(&disk).unwrap();
    assert_eq!(numbers(&frames), written);
}

#[test]
fn recovery_keeps_every_synced_frame_whatever_a_crash_keeps() {
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::KeepPrefix,
        CrashMode::TearNext,
        CrashMode::KeepSubset,
    ];
    for seed in 0..200u64 {
        let mut rng = SplitMix64::new(seed);
        let sim = SimDisk::new();
        let disk = Disk::Sim(sim.clone());
        let (mut wal, _) = open(&disk).unwrap();
        let mut next = 1u64;
        let mut synced = Vec::new();
        let mut written = Vec::new();
        for round in 0..3 {
            for _ in 0..rng.below(12) {
                let sync = rng.below(3) == 0;
                let len = rng.below(1200) as usize;
                wal.append(&[record(next, len)], sync, header).unwrap();
                written.push(next);
                if sync {
                    synced = written.clone();
                }
                next += 1;
            }
            let mode = modes[rng.below(4) as usize];
            sim.crash(mode, seed * 7 + round);
            let (recovered, frames) = open(&disk).unwrap_or_else(|e| {
                panic!("seed {seed} round {round}: {mode:?} crash refused: {e}")
            });
            let got = numbers(&frames);
            assert!(
                got.len() >= synced.len() && got[..synced.len()] == synced[..],
                "seed {seed} round {round} ({mode:?}): synced {synced:?}, recovered {got:?}"
            );
            assert!(
                written.starts_with(&got),
                "seed {seed} round {round} ({mode:?}): recovered {got:?} is not a prefix of {written:?}"
            );
            // What was recovered is the log now; a later crash must not bring back the rest.
            written = got.clone();
            synced = got;
            wal = recovered;
        }
    }
}

#[test]
fn a_frame_lost_before_a_later_one_never_resurfaces() {
    // Reordered writes can keep frame 3 and lose frame 2. Recovery ends the log at 1; when the
    // log is written on from there, the old frame 3 must not reappear after the new frames.
    let mut resurfaced_possible = false;
    for seed in 0..64u64 {
        let sim = SimDisk::new();
        let disk = Disk::Sim(sim.clone());
        let (mut wal, _) = open(&disk).unwrap();
        wal.append(&[record(1, 100)], true, header).unwrap();
        wal.append(&[record(2, 100)], false, header).unwrap();
        wal.append(&[record(3, 100)], false, header).unwrap();
        sim.crash(CrashMode::KeepSubset, seed);
        let (mut wal, frames) = open(&disk).unwrap();
        let mut expected = numbers(&frames);
        resurfaced_possible |= expected == [1];
        // The same size: the new frame lands exactly where the lost frame 2 was.
        wal.append(&[record(99, 100)], true, header).unwrap();
        expected.push(99);
        drop(wal);
        sim.crash(CrashMode::DropUnsynced, seed);
        let (_, frames) = open(&disk).unwrap();
        assert_eq!(numbers(&frames), expected, "seed {seed}");
    }
    assert!(resurfaced_possible, "some seed lost frame 2 but not 3");
}

#[test]
fn a_flipped_bit_in_a_synced_frame_is_refused() {
    for seed in 0..64u64 {
        let sim = SimDisk::new();
        let disk = Disk::Sim(sim.clone());
        let (mut wal, _) = open(&disk).unwrap();
        for n in 1..=5 {
            wal.append(&[record(n, 700)], true, header).unwrap();
        }
        drop(wal);
        let flipped = sim
            .flip_recent_bit(&segment_name(1), seed)
            .expect("recent bytes");
        match open(&disk) {
            Err(WalError::Corrupted(why)) => assert!(why.contains("checksum"), "{why}"),
            Err(e) => panic!("seed {seed}: flip at {flipped}: {e}"),
            Ok((_, frames)) => panic!(
                "seed {seed}: a flip at {flipped} went unnoticed: {:?}",
                numbers(&frames)
            ),
        }
    }
}

#[test]
fn a_cut_short_segment_creation_is_forgotten() {
    let sim = SimDisk::new();
    let disk = Disk::Sim(sim.clone());
    let (mut wal, _) = open(&disk).unwrap();
    wal.append(&[record(1, 10)], true, header).unwrap();
    // The next segment's file exists, but nothing of it reached the disk.
    let file = disk.open_file(&segment_name(2)).unwrap();
    file.set_len(SMALL_SEGMENT).unwrap();
    drop(file);
    sim.crash(CrashMode::DropUnsynced, 1);
    let (mut wal, frames) = open(&disk).unwrap();
    assert_eq!(numbers(&frames), [1]);
    assert_eq!(disk.list_files("wal-").unwrap(), [segment_name(1)]);
    wal.append(&[record(2, 10)], true, header).unwrap();
    let (_, frames) = open(&disk).unwrap();
    assert_eq!(numbers(&frames), [1, 2]);
}

#[test]
fn removed_segments_are_gone_and_the_rest_replays() {
    let disk = Disk::Sim(SimDisk::new());
    let (mut wal, _) = open(&disk).unwrap();
    for n in 1..=40u64 {
        wal.append(&[record(n, 900)], true, header).unwrap();
    }
    let current = wal.current_segment();
    assert!(current > 3);
    wal.remove_segments_before(3).unwrap();
    let (_, frames) = open(&disk).unwrap();
    let got = numbers(&frames);
    assert_eq!(got.last(), Some(&40));
    assert!(got[0] > 1, "the first segments' frames are gone: {got:?}");
    match &frames[0].record.record {
        Some(pb::wal_record::Record::Segment(segment)) => assert_eq!(segment.segment, 3),
        other => panic!("replay starts with {other:?}"),
    }
}
