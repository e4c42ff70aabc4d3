//! The nemesis: a seed becomes options (cluster size, which faults and how often, the workload's
//! mix), and the options become a fault schedule that the chaos scenario plays against a live
//! cluster while clients run.
//!
//! A schedule is a sequence of episodes: one or two faults begin together, last a while, and are
//! undone; a quiet gap follows. Faults that take members down (kill, power loss, pause, a failing
//! disk) pick only members that are up. Power loss may take every member at once: it loses only
//! unsynced writes, which a correct member never acknowledged. A flipped bit may destroy a disk
//! for good (the member refuses to start on it, and detcd cannot replace a member yet), so at most
//! a minority of members ever get one: a majority of intact disks always remains.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use detcd::env::sim_disk::CrashMode;
use madsim::rand::seq::SliceRandom;
use madsim::rand::Rng;

use crate::cluster::Cluster;
use crate::history::Workload;

/// A kind of fault the nemesis can schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SIGKILL a member, restart it later.
    Kill,
    /// Power loss on a member (unsynced writes dropped, kept in part, torn or reordered).
    PowerLoss,
    /// Power loss on every member at once.
    PowerLossAll,
    /// Freeze a member's process.
    Pause,
    /// A minority cut off from the majority.
    Partition,
    /// A few links cut in one direction only.
    OneWay,
    /// Two sides that cannot talk, joined by a member that reaches both.
    Bridge,
    /// Lost messages and long latencies everywhere.
    BadNetwork,
    /// A member's clock steps forward or back.
    ClockJump,
    /// A member's clock runs fast or slow (up to 500 ppm; it stays so).
    ClockDrift,
    /// A member's fsyncs are slow (20–300 ms).
    SlowDisk,
    /// A member's disk fails reads, writes or fsyncs with EIO; the member is restarted after.
    DiskError,
    /// A member's fsyncs do not return until the fault ends.
    StalledDisk,
    /// A member is killed, one bit among what its last fsyncs wrote flips, and it restarts:
    /// it must come back whole or refuse to start (a minority of members, once each).
    BitFlip,
}

pub const KINDS: [Kind; 14] = [
    Kind::Kill,
    Kind::PowerLoss,
    Kind::PowerLossAll,
    Kind::Pause,
    Kind::Partition,
    Kind::OneWay,
    Kind::Bridge,
    Kind::BadNetwork,
    Kind::ClockJump,
    Kind::ClockDrift,
    Kind::SlowDisk,
    Kind::DiskError,
    Kind::StalledDisk,
    Kind::BitFlip,
];

/// Everything a seed decides before the run.
#[derive(Debug, Clone)]
pub struct Options {
    pub size: usize,
    pub kinds: Vec<Kind>,
    /// How long each episode's faults last.
    pub fault_length: Range<Duration>,
    /// The quiet time between episodes.
    pub gap: Range<Duration>,
    /// How long the safety phase (faults and clients) lasts.
    pub safety: Duration,
    /// The chance that an episode has a second fault.
    pub double: f64,
    pub workload: Workload,
    /// How many watchers follow the history through the faults.
    pub watchers: usize,
    /// Service providers with leases: (TTL in seconds, how long each keeps its lease alive,
    /// whether it revokes at the end rather than just stopping).
    pub providers: Vec<(i64, Duration, bool)>,
    /// `--snapshot-count`, when small enough for snapshots to happen within a seed: members then
    /// purge their logs, and one that falls behind or restarts is sent a snapshot.
    pub snapshot_count: Option<u64>,
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} members, {:?} s of faults {:?}, each {:?} apart {:?}, double {:.2}, {} clients on \
             {} keys mix {:?} think {:?}, {} watchers, leases {:?}, snapshot count {:?}",
            self.size,
            self.safety.as_secs(),
            self.kinds,
            self.fault_length,
            self.gap,
            self.double,
            self.workload.clients,
            self.workload.keys,
            self.workload.weights,
            self.workload.think,
            self.watchers,
            self.providers,
            self.snapshot_count
        )
    }
}

fn millis(range: Range<u64>) -> Duration {
    Duration::from_millis(madsim::rand::thread_rng().gen_range(range))
}

/// A duration drawn from `range`, to the millisecond.
fn between(range: &Range<Duration>) -> Duration {
    millis(range.start.as_millis() as u64..range.end.as_millis() as u64)
}

impl Options {
    /// Draws options from the simulation's seeded generator.
    pub fn draw() -> Options {
        let mut rng = madsim::rand::thread_rng();
        let size = if rng.gen_bool(0.2) { 5 } else { 3 };
        // Every kind with probability one half, and at least one.
        let mut kinds: Vec<Kind> = KINDS
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.5))
            .collect();
        if kinds.is_empty() {
            kinds.push(*KINDS.choose(&mut rng).expect("kinds"));
        }
        let short = rng.gen_range(200..1500);
        let long = short + rng.gen_range(200..3000);
        let gap = rng.gen_range(0..1500);
        let safety = Duration::from_secs(rng.gen_range(8..16));
        let providers = (0..rng.gen_range(1..4))
            .map(|_| {
                let life = Duration::from_millis(rng.gen_range(500..safety.as_millis() as u64));
                (rng.gen_range(2..=6), life, rng.gen_bool(0.3))
            })
            .collect();
        let weights = [
            rng.gen_range(1..6),
            rng.gen_range(1..6),
            rng.gen_range(0..3),
            rng.gen_range(0..3),
            rng.gen_range(0..5),
        ];
        Options {
            size,
            kinds,
            fault_length: Duration::from_millis(short)..Duration::from_millis(long),
            gap: Duration::from_millis(gap / 4)..Duration::from_millis(gap + 1),
            safety,
            double: rng.gen_range(0.0..0.5),
            workload: Workload {
                clients: rng.gen_range(2..6),
                keys: rng.gen_range(2..8),
                weights,
                think: Duration::from_millis(rng.gen_range(5..60)),
            },
            watchers: rng.gen_range(0..3),
            providers,
            // Drawn last, so the options above stay what each seed drew before it existed.
            snapshot_count: rng.gen_bool(0.4).then(|| rng.gen_range(10..60)),
        }
    }
}

/// A fault in progress, with what it takes to undo it.
enum Active {
    Down(usize),
    /// Power loss on every member: undone by restarting them all.
    AllDown,
    Paused(usize),
    Links,
    Network,
    Disk(usize),
    BrokenDisk(usize),
    Nothing,
}

/// Plays the schedule that `options` describe on `cluster` for the safety phase; returns with
/// every fault undone (members restarted, links healed, disks healthy).
pub async fn run(cluster: &mut Cluster, options: &Options) {
    let started = madsim::time::Instant::now();
    let mut episodes = 0;
    let mut flipped = Vec::new();
    while started.elapsed() < options.safety {
        let faults = if madsim::rand::thread_rng().gen_bool(options.double) {
            2
        } else {
            1
        };
        let mut active = Vec::new();
        for _ in 0..faults {
            let kind = *options
                .kinds
                .choose(&mut madsim::rand::thread_rng())
                .expect("at least one kind");
            active.push(begin(cluster, kind, &active, &mut flipped));
        }
        madsim::time::sleep(between(&options.fault_length)).await;
        while let Some(fault) = active.pop() {
            end(cluster, fault);
        }
        episodes += 1;
        madsim::time::sleep(between(&options.gap)).await;
    }
    cluster.record(format!("nemesis: {episodes} episodes"));
}

/// Members not taken down by the faults in `active`, nor given a flipped bit (`flipped`).
fn up(cluster: &Cluster, active: &[Active], flipped: &[usize]) -> Vec<usize> {
    if active.iter().any(|a| matches!(a, Active::AllDown)) {
        return Vec::new();
    }
    (0..cluster.members.len())
        .filter(|m| {
            !flipped.contains(m)
                && !active.iter().any(|a| {
                matches!(a, Active::Down(d) | Active::Paused(d) | Active::BrokenDisk(d) if d == m)
            })
        })
        .collect()
}

fn begin(cluster: &mut Cluster, kind: Kind, active: &[Active], flipped: &mut Vec<usize>) -> Active {
    let size = cluster.members.len();
    let up = up(cluster, active, flipped);
    let mut rng = madsim::rand::thread_rng();
    let victim = up.choose(&mut rng).copied();
    let mode = *[
        CrashMode::DropUnsynced,
        CrashMode::KeepPrefix,
        CrashMode::TearNext,
        CrashMode::KeepSubset,
    ]
    .choose(&mut rng)
    .expect("modes");
    let links_cut = active.iter().any(|a| matches!(a, Active::Links));
    match (kind, victim) {
        (Kind::Kill, Some(victim)) => {
            cluster.kill(victim);
            Active::Down(victim)
        }
        (Kind::PowerLoss, Some(victim)) => {
            cluster.crash(victim, mode);
            Active::Down(victim)
        }
        (Kind::PowerLossAll, _) if up.len() == size => {
            for member in 0..size {
                cluster.crash(member, mode);
            }
            Active::AllDown
        }
        (Kind::Pause, Some(victim)) => {
            cluster.pause(victim);
            Active::Paused(victim)
        }
        (Kind::Partition, _) if !links_cut => {
            let mut members: Vec<usize> = (0..size).collect();
            members.shuffle(&mut rng);
            let minority = rng.gen_range(1..=(size - 1) / 2);
            cluster.partition(&members[..minority]);
            Active::Links
        }
        (Kind::OneWay, _) if !links_cut => {
            let cuts = rng.gen_range(1..=size);
            let links: Vec<(usize, usize)> = (0..cuts)
                .map(|_| {
                    let from = rng.gen_range(0..size);
                    (from, (from + rng.gen_range(1..size)) % size)
                })
                .collect();
            for (from, to) in links {
                cluster.clog_one_way(from, to);
            }
            Active::Links
        }
        (Kind::Bridge, _) if !links_cut => {
            let mut members: Vec<usize> = (0..size).collect();
            members.shuffle(&mut rng);
            let half = (size - 1) / 2;
            cluster.bridge(&members[1..1 + half], &members[1 + half..]);
            Active::Links
        }
        (Kind::BadNetwork, _) if !active.iter().any(|a| matches!(a, Active::Network)) => {
            let loss = rng.gen_range(0.0..0.05);
            let slowest = rng.gen_range(20..300);
            cluster.set_network(
                loss,
                Duration::from_millis(1)..Duration::from_millis(slowest),
            );
            Active::Network
        }
        (Kind::ClockJump, _) => {
            let member = rng.gen_range(0..size);
            let sign = if rng.gen_bool(0.5) { 1 } else { -1 };
            let step = sign * rng.gen_range(1_000..30_000);
            cluster.jump_clock(member, step);
            Active::Nothing
        }
        (Kind::ClockDrift, _) => {
            let member = rng.gen_range(0..size);
            let ppm = rng.gen_range(-500..=500);
            cluster.set_drift(member, ppm);
            Active::Nothing
        }
        (Kind::StalledDisk, Some(victim)) => {
            cluster.stall_disk(victim);
            Active::Disk(victim)
        }
        (Kind::BitFlip, Some(victim)) if flipped.len() < (size - 1) / 2 => {
            cluster.corrupt(victim);
            flipped.push(victim);
            Active::Nothing
        }
        (Kind::SlowDisk, Some(victim)) => {
            let latency = millis(20..300);
            cluster.slow_disk(victim, latency);
            Active::Disk(victim)
        }
        (Kind::DiskError, Some(victim))
            if !active.iter().any(|a| matches!(a, Active::BrokenDisk(_))) =>
        {
            let which = rng.gen_range(0..3u8);
            cluster.fail_disk(victim, which);
            Active::BrokenDisk(victim)
        }
        _ => Active::Nothing,
    }
}

fn end(cluster: &mut Cluster, fault: Active) {
    match fault {
        Active::AllDown => {
            for member in 0..cluster.members.len() {
                cluster.restart(member);
            }
        }
        Active::Down(member) => cluster.restart(member),
        Active::Paused(member) => cluster.resume(member),
        Active::Links => cluster.heal(),
        Active::Network => {
            cluster.set_network(0.0, Duration::from_millis(1)..Duration::from_millis(10))
        }
        Active::Disk(member) => cluster.clear_disk(member),
        Active::BrokenDisk(member) => {
            // As an operator would after a disk error: fix the disk, restart the member.
            cluster.clear_disk(member);
            cluster.kill(member);
            cluster.restart(member);
        }
        Active::Nothing => {}
    }
}
