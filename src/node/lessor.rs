//! The lessor: when each lease expires, decided by the leader from its own clock (the seam), and
//! enforced by proposing a revoke through Raft. `apply` never reads time.
//!
//! The guarantee (README "Leases"): a lease is never revoked before its granted TTL has passed
//! since the last keep-alive its client saw acknowledged, and after a leader change it keeps the
//! time it had left, give or take one checkpoint interval, instead of starting afresh.
//!
//! How:
//! - **Only the leader keeps expiries.** A keep-alive answered by the leader restarts the TTL from
//!   the moment it is answered; the client sees the answer later still.
//! - **Checkpoints.** A lease that has gone a checkpoint interval without a renewal gets its
//!   remaining TTL written through Raft (`LeaseCheckpoint`, rounded up to a second), and again
//!   every interval after. A new leader (or the whole cluster after a restart) gives each lease
//!   its checkpointed remaining time, or its whole TTL if it has none, plus an election timeout:
//!   it cannot know how long the leadership was vacant.
//! - **A renewal of a checkpointed lease resets the checkpoint through Raft before it is
//!   acknowledged** (as etcd's `Renew`); otherwise a new leader would continue from the old
//!   checkpoint and revoke a lease its client had just renewed. Resets are batched.
//! - **Only one task proposes checkpoints**, so a reset is always applied after any checkpoint
//!   computed before it.
//! - **An expired lease is never renewed**: renewal and expiry decide under one lock, so once
//!   the leader has decided to revoke, keep-alives answer TTL 0.
//! - **Clock faults.** Lease time is the member's monotonic clock (`Clock::monotonic`: its
//!   rate, never its steps, as `CLOCK_MONOTONIC`), so setting the clock moves no expiry (the
//!   simulation found both a step forward expiring leases early and a step back making the
//!   expiry loop oversleep when the lessor read the stepped clock). Every duration is stretched
//!   by [`MAX_DRIFT_PPM`], so a clock running fast within that bound never expires a lease early.
//!   Lessor time advances by at most [`MAX_STEP`] between two readings, so a process resumed
//!   after a pause cannot expire every lease at once (etcd#15247); it only makes expiry later.
//!
//! The expiry loop (every [`TICK`]): on taking over, read every lease once; then follow the
//! grants and revokes the state machine applies (its [`LeaseFeed`](crate::mvcc::leases::LeaseFeed)),
//! and propose a revoke for each expired lease, at most [`REVOKES_PER_TICK`] per tick, as
//! etcd's lessor rate-limits expiry, so a mass expiry never floods the log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};

use super::Node;
use crate::apply::{ApplyError, CommandResult};
use crate::env::bugs::{self, Bug};
use crate::env::{watch, Duration, Instant};
use crate::mvcc::leases::LeaseEvent;
use crate::mvcc::LeaseRecord;
use crate::pb::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use crate::pb::raft::{command, Command};

/// How often the leader looks for expired leases.
pub const TICK: Duration = Duration::from_millis(100);

/// How often the leader looks for leases due for a checkpoint.
pub const CHECKPOINT_TICK: Duration = Duration::from_millis(500);

/// At most this many revokes are proposed per tick: 1000 per second, etcd's
/// `leaseRevokeRate`, in small batches so a mass expiry never floods the log nor stalls writes.
pub const REVOKES_PER_TICK: usize = 100;

/// At most this many checkpoints go in one proposal (etcd's `maxLeaseCheckpointBatchSize`).
const CHECKPOINTS_PER_PROPOSAL: usize = 1000;

/// etcd's largest lease TTL, in seconds (`MaxLeaseTTL`).
pub const MAX_TTL: i64 = 9_000_000_000;

/// The default `--experimental-lease-checkpoint-interval` (etcd's is 5 minutes, and off unless
/// `--experimental-enable-lease-checkpoint`; detcd checkpoints by default).
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// How fast a member's clock may run, in parts per million, without ever expiring a lease early.
/// Quartz clocks drift by tens of ppm; NTP slews by at most 500.
pub const MAX_DRIFT_PPM: u64 = 1000;

/// The most lessor time advances between two readings of the clock. The leader reads it at least
/// every [`TICK`]; a gap longer than this is a jump or a pause, counted as this much.
pub const MAX_STEP: Duration = Duration::from_secs(1);

/// etcd's smallest lease TTL for a cluster with these timings: one and a half election
/// timeouts, counted in whole heartbeats, rounded up to a second (`minLeaseTTL`).
pub fn min_ttl(heartbeat: Duration, election: Duration) -> i64 {
    let heartbeat_ms = heartbeat.as_millis().max(1) as i64;
    let ticks = election.as_millis() as i64 / heartbeat_ms;
    let min_ms = (3 * ticks) / 2 * heartbeat_ms;
    (min_ms + 999) / 1000
}

/// `duration` plus the most a clock within [`MAX_DRIFT_PPM`] can be short of it.
fn stretch(duration: Duration) -> Duration {
    duration + duration * MAX_DRIFT_PPM as u32 / 1_000_000
}

/// `duration` without the stretch: what a lease shows as its remaining time.
fn unstretch(duration: Duration) -> Duration {
    let scale = 1_000_000 + MAX_DRIFT_PPM as u128;
    let nanos = (duration.as_nanos() * 1_000_000 + scale / 2) / scale;
    Duration::from_nanos(nanos as u64)
}

fn seconds(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// Whole seconds, rounded up (a checkpoint may only make a lease later).
fn ceil_seconds(duration: Duration) -> i64 {
    (duration.as_nanos().div_ceil(1_000_000_000)) as i64
}

/// What the lessor does, from the member's flags.
#[derive(Debug, Clone, Copy)]
pub struct LessorConfig {
    /// `None`: no checkpoints, a new leader resets every lease (etcd's default).
    pub checkpoint_interval: Option<Duration>,
    /// Added to every lease a new leader takes over: the election timeout.
    pub grace: Duration,
}

/// The answer to a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed for this TTL.
    Renewed(i64),
    /// The lease is expired (its revoke is on its way) or does not exist: TTL 0.
    Expired,
    /// This member is not (or not yet) the leader with expiries for this term: ask again.
    NotLeading,
}

/// A renewal, decided at once or after its checkpoint reset is applied.
#[derive(Debug)]
pub enum RenewStep {
    Done(Renewal),
    Wait(oneshot::Receiver<Renewal>),
}

#[derive(Debug)]
struct Tracked {
    ttl: i64,
    /// In lessor time.
    expiry: Instant,
    /// When this lease is next checkpointed; `None` if its TTL is within one interval.
    next_checkpoint: Option<Instant>,
    /// The state machine holds, or is about to hold, a checkpoint of this lease: a renewal must
    /// reset it through Raft first.
    checkpointed: bool,
    /// The leader decided to revoke it: no renewal any more.
    expired: bool,
}

/// A checkpoint proposal: the checkpoints and the renewals waiting for their resets.
#[derive(Debug)]
pub struct CheckpointBatch {
    term: u64,
    pub checkpoints: Vec<LeaseCheckpoint>,
    waiters: Vec<(i64, oneshot::Sender<Renewal>)>,
}

#[derive(Debug, Default)]
struct State {
    /// The term these expiries belong to (0: not leading).
    term: u64,
    leases: BTreeMap<i64, Tracked>,
    /// Renewals waiting for their lease's checkpoint to be reset through Raft.
    resets: Vec<(i64, oneshot::Sender<Renewal>)>,
    /// The log index of the state the leases were last read from: applied changes up to it
    /// are in `leases` already.
    synced_index: u64,
    /// Lessor time (see [`MAX_STEP`]) and the clock reading it was last advanced to.
    time: Instant,
    last_reading: Option<Instant>,
}

impl State {
    /// Advances lessor time by the clock's progress since the last reading, at most
    /// [`MAX_STEP`]; a clock that went back counts as no progress, and counting resumes from
    /// where it went (not from the old high mark, which would freeze lessor time and make every
    /// lease late by the size of the jump). Two readings taken just before the lock and
    /// applied out of order may count a few microseconds twice, far inside the drift stretch.
    fn advance(&mut self, reading: Instant) -> Instant {
        if let Some(last) = self.last_reading {
            self.time = self.time.plus(reading.since(last).min(MAX_STEP));
        }
        self.last_reading = Some(reading);
        self.time
    }
}

/// The leader's lease clock. Followers hold an empty one.
#[derive(Debug)]
pub struct Lessor {
    config: LessorConfig,
    state: Mutex<State>,
    /// Wakes the checkpoint task when a renewal waits for a reset.
    wake: Notify,
}

impl Lessor {
    pub fn new(config: LessorConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lessor lock")
    }

    /// When a lease (re)started at `now` with `ttl` is next checkpointed.
    fn schedule(&self, now: Instant, ttl: i64) -> Option<Instant> {
        let interval = self.config.checkpoint_interval?;
        (seconds(ttl) > interval).then(|| now.plus(interval))
    }

    /// The term this lessor keeps expiries for (0: none).
    pub fn term(&self) -> u64 {
        self.lock().term
    }

    /// Renews lease `id` (`record` is the state machine's, `None` if it has none) at clock reading
    /// `reading`, for a leader in `term`.
    pub fn renew(
        &self,
        term: u64,
        id: i64,
        record: Option<LeaseRecord>,
        reading: Instant,
    ) -> RenewStep {
        let mut state = self.lock();
        let now = state.advance(reading);
        if state.term != term || term == 0 {
            return RenewStep::Done(Renewal::NotLeading);
        }
        let Some(record) = record else {
            return RenewStep::Done(Renewal::Expired);
        };
        let checkpoints = self.config.checkpoint_interval.is_some();
        // Not tracked yet: granted since the last sync, which would start it now anyway.
        let tracked = state.leases.entry(id).or_insert_with(|| Tracked {
            ttl: record.ttl,
            expiry: now.plus(stretch(seconds(record.ttl))),
            next_checkpoint: None,
            checkpointed: checkpoints && record.remaining > 0,
            expired: false,
        });
        if tracked.expired || tracked.expiry <= now {
            return RenewStep::Done(Renewal::Expired);
        }
        if tracked.checkpointed && !bugs::enabled(Bug::CheckpointNotReset) {
            let (sender, receiver) = oneshot::channel();
            state.resets.push((id, sender));
            self.wake.notify_one();
            return RenewStep::Wait(receiver);
        }
        let ttl = tracked.ttl;
        tracked.expiry = now.plus(stretch(seconds(ttl)));
        tracked.next_checkpoint = self.schedule(now, ttl);
        RenewStep::Done(Renewal::Renewed(ttl))
    }

    /// Lease `id`'s remaining time at clock reading `reading`, if this member leads in `term` and
    /// tracks it.
    pub fn remaining(&self, term: u64, id: i64, reading: Instant) -> Option<Duration> {
        let mut state = self.lock();
        let now = state.advance(reading);
        if state.term != term || term == 0 {
            return None;
        }
        state
            .leases
            .get(&id)
            .map(|tracked| unstretch(tracked.expiry.since(now)))
    }

    /// Brings the expiries in line with the state machine's `leases` (read at log index
    /// `index`) for a leader in `term`: a new term takes every lease over (its checkpointed
    /// remaining time, or its TTL, plus the grace); leases that appeared get their TTL from now;
    /// revoked ones are dropped.
    pub fn sync(&self, term: u64, index: u64, leases: &[(i64, LeaseRecord)], reading: Instant) {
        let mut state = self.lock();
        let now = state.advance(reading);
        state.synced_index = index;
        let promoted = state.term != term;
        if promoted {
            state.term = term;
            state.leases.clear();
            // Dropping the senders tells waiting renewals to ask again.
            state.resets.clear();
        }
        let checkpoints = self.config.checkpoint_interval.is_some();
        let mut current = BTreeMap::new();
        for &(id, record) in leases {
            let tracked = match state.leases.remove(&id) {
                Some(tracked) => tracked,
                None => {
                    let checkpointed = checkpoints && record.remaining > 0;
                    let left = if checkpointed {
                        seconds(record.remaining.min(record.ttl))
                    } else {
                        seconds(record.ttl)
                    };
                    let grace = if promoted {
                        self.config.grace
                    } else {
                        Duration::ZERO
                    };
                    Tracked {
                        ttl: record.ttl,
                        expiry: now.plus(stretch(grace + left)),
                        next_checkpoint: self.schedule(now, record.ttl),
                        checkpointed,
                        expired: false,
                    }
                }
            };
            current.insert(id, tracked);
        }
        state.leases = current;
    }

    /// Applies the lease changes applied since the last sync (a grant starts its TTL now).
    /// Answers false if one of them asks for a full sync (a snapshot was installed).
    pub fn apply_events(&self, events: &[(u64, LeaseEvent)], reading: Instant) -> bool {
        let mut state = self.lock();
        let now = state.advance(reading);
        for &(index, event) in events {
            if index <= state.synced_index {
                continue;
            }
            match event {
                LeaseEvent::Granted { id, ttl } => {
                    let next_checkpoint = self.schedule(now, ttl);
                    state.leases.entry(id).or_insert(Tracked {
                        ttl,
                        expiry: now.plus(stretch(seconds(ttl))),
                        next_checkpoint,
                        checkpointed: false,
                        expired: false,
                    });
                }
                LeaseEvent::Revoked { id } => {
                    state.leases.remove(&id);
                }
                LeaseEvent::Reset => return false,
            }
        }
        true
    }

    /// The leases newly expired, soonest first, at most [`REVOKES_PER_TICK`]: the caller
    /// proposes their revokes, and reports a failed one with [`Self::revoke_failed`]. An
    /// expired lease is never renewed again.
    pub fn expired(&self, reading: Instant) -> Vec<i64> {
        let mut state = self.lock();
        let now = state.advance(reading);
        let mut expired: Vec<(Instant, i64)> = state
            .leases
            .iter()
            .filter(|(_, tracked)| !tracked.expired && tracked.expiry <= now)
            .map(|(&id, tracked)| (tracked.expiry, id))
            .collect();
        expired.sort();
        expired.truncate(REVOKES_PER_TICK);
        for (_, id) in &expired {
            if let Some(tracked) = state.leases.get_mut(id) {
                tracked.expired = true;
            }
        }
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// The next checkpoint proposal, if any: every waiting reset, then (with `scan`) the leases
    /// due for a periodic checkpoint. The caller proposes it and reports with
    /// [`Self::checkpointed`].
    pub fn checkpoint_batch(&self, reading: Instant, scan: bool) -> Option<CheckpointBatch> {
        let mut state = self.lock();
        let now = state.advance(reading);
        let waiters = std::mem::take(&mut state.resets);
        if state.term == 0 {
            for (_, waiter) in waiters {
                let _ = waiter.send(Renewal::NotLeading);
            }
            return None;
        }
        let mut reset = BTreeSet::new();
        let mut checkpoints = Vec::new();
        for &(id, _) in &waiters {
            if reset.insert(id) {
                checkpoints.push(LeaseCheckpoint {
                    id,
                    remaining_ttl: 0,
                });
            }
        }
        if scan {
            if let Some(interval) = self.config.checkpoint_interval {
                for (&id, tracked) in state.leases.iter_mut() {
                    if checkpoints.len() >= CHECKPOINTS_PER_PROPOSAL {
                        break;
                    }
                    let due = tracked.next_checkpoint.is_some_and(|at| at <= now);
                    if !due || tracked.expired || reset.contains(&id) {
                        continue;
                    }
                    let left = tracked.expiry.since(now);
                    checkpoints.push(LeaseCheckpoint {
                        id,
                        remaining_ttl: ceil_seconds(left).max(1),
                    });
                    tracked.checkpointed = true;
                    tracked.next_checkpoint = Some(now.plus(interval));
                }
            }
        }
        if checkpoints.is_empty() {
            return None;
        }
        Some(CheckpointBatch {
            term: state.term,
            checkpoints,
            waiters,
        })
    }

    /// `batch` was applied (`applied`), or may not have been: answers the renewals that waited.
    pub fn checkpointed(&self, batch: CheckpointBatch, applied: bool, reading: Instant) {
        let mut state = self.lock();
        let now = state.advance(reading);
        let same_term = state.term == batch.term;
        let mut renewed = Vec::new();
        for (id, waiter) in batch.waiters {
            let renewal = match state.leases.get_mut(&id) {
                Some(tracked) if applied && same_term => {
                    tracked.checkpointed = false;
                    if tracked.expired || tracked.expiry <= now {
                        Renewal::Expired
                    } else {
                        tracked.expiry = now.plus(stretch(seconds(tracked.ttl)));
                        renewed.push((id, tracked.ttl));
                        Renewal::Renewed(tracked.ttl)
                    }
                }
                // Not applied, another term, or dropped by a sync that raced the renewal: the
                // renewal asks again (and finds the lease gone if it was revoked).
                _ => Renewal::NotLeading,
            };
            let _ = waiter.send(renewal);
        }
        for (id, ttl) in renewed {
            let next = self.schedule(now, ttl);
            if let Some(tracked) = state.leases.get_mut(&id) {
                tracked.next_checkpoint = next;
            }
        }
    }

    /// The revoke of `id` proposed in `term` did not apply: offer it again.
    pub fn revoke_failed(&self, term: u64, id: i64) {
        let mut state = self.lock();
        if state.term == term {
            if let Some(tracked) = state.leases.get_mut(&id) {
                tracked.expired = false;
            }
        }
    }

    /// Not leading: forget every expiry.
    pub fn step_down(&self) {
        let mut state = self.lock();
        state.term = 0;
        state.leases.clear();
        state.resets.clear();
        state.synced_index = 0;
    }
}

/// A revoke the lessor decided in `term`: it applies only if appended in that term.
fn revoke(id: i64, term: u64) -> Command {
    Command {
        op: Some(command::Op::LeaseRevoke(LeaseRevokeRequest { id })),
        lessor_term: term,
    }
}

/// Expiry: every [`TICK`] (on a fixed schedule, so the revoke rate is exact), take over the
/// leases when this member starts leading (or after a snapshot), follow the grants and revokes
/// applied since, and revoke what expired.
async fn expire(node: &Node) {
    let feed = &node.state_machine.leases;
    let mut next_tick = node.clock.monotonic();
    let mut synced = false;
    loop {
        next_tick = next_tick.plus(TICK);
        let now = node.clock.monotonic();
        if next_tick <= now {
            // Behind (a pause, a slow revoke round): go on from now rather than catch up.
            next_tick = now;
        } else {
            node.clock.sleep(next_tick.since(now)).await;
        }
        let status = node.raft_status();
        if status.leader != node.id {
            if node.lessor.term() != 0 || synced {
                node.lessor.step_down();
                feed.stop();
                synced = false;
            }
            continue;
        }
        if !synced || node.lessor.term() != status.term {
            // Listen first, then read: a change applied in between is in the read or in the
            // feed, and the feed's copy is skipped by its index.
            feed.listen();
            // Taking over: first apply everything committed before this term, so the
            // checkpoint resets the previous leader acknowledged renewals with are seen.
            if node.read_barrier().await.is_err() {
                continue;
            }
            let Ok((index, all)) = node.state_machine.lease_snapshot().await else {
                continue;
            };
            node.lessor
                .sync(status.term, index, &all, node.clock.monotonic());
            synced = true;
        }
        if !node
            .lessor
            .apply_events(&feed.drain(), node.clock.monotonic())
        {
            synced = false;
            continue;
        }
        // Proposed without waiting for them (Raft batches them), so a leader cut off from the
        // others is not held up here and notices at once when it stops leading. One that fails
        // is offered again; one already revoked is refused harmlessly; one that waited past
        // this term (the member lost the leadership and won it back) is refused at apply.
        let term = status.term;
        for id in node.lessor.expired(node.clock.monotonic()) {
            let node = node.clone();
            crate::env::spawn(async move {
                match node.write_as_leader(revoke(id, term), term).await {
                    Ok(response)
                        if !matches!(
                            response.result,
                            CommandResult::Rejected(ApplyError::StaleLessorTerm)
                        ) => {}
                    _ => node.lessor.revoke_failed(term, id),
                }
            });
        }
    }
}

/// Checkpoints: periodic ones every [`TICK`], resets as soon as a renewal waits for one.
async fn checkpoint(node: &Node) {
    loop {
        // Biased, as every select: an unbiased one starts at a branch drawn from tokio's own
        // per-process generator, which the simulation cannot seed (a tie here changed a run's
        // lease timings with what had run before it in the process).
        let scan = tokio::select! {
            biased;
            _ = node.clock.sleep(CHECKPOINT_TICK) => true,
            _ = node.lessor.wake.notified() => false,
        };
        let mut scan = scan;
        while let Some(batch) = node.lessor.checkpoint_batch(node.clock.monotonic(), scan) {
            scan = false;
            // Bound to the term it was computed in, like revokes: a checkpoint computed from a
            // stale leadership's expiries must not apply after another leader renewed the lease.
            let command = Command {
                op: Some(command::Op::LeaseCheckpoint(LeaseCheckpointRequest {
                    checkpoints: batch.checkpoints.clone(),
                })),
                lessor_term: batch.term,
            };
            let applied = matches!(
                node.write_as_leader(command, batch.term).await,
                Ok(response) if matches!(response.result, CommandResult::None)
            );
            node.lessor
                .checkpointed(batch, applied, node.clock.monotonic());
        }
    }
}

/// The leader loops, until `stop` is set.
pub async fn run(node: Node, mut stop: watch::Receiver<bool>) {
    let stopped = stop.wait_for(|stopped| *stopped);
    tokio::select! {
        biased;
        _ = stopped => {}
        _ = expire(&node) => {}
        _ = checkpoint(&node) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> Instant {
        Instant::default().plus(Duration::from_secs(seconds))
    }

    fn at_ms(millis: u64) -> Instant {
        Instant::default().plus(Duration::from_millis(millis))
    }

    fn lease(id: i64, ttl: i64) -> (i64, LeaseRecord) {
        (id, LeaseRecord { ttl, remaining: 0 })
    }

    /// A full sync followed by the expiry check, as the leader loop does after taking over.
    fn sync(
        lessor: &Lessor,
        term: u64,
        leases: &[(i64, LeaseRecord)],
        reading: Instant,
    ) -> Vec<i64> {
        lessor.sync(term, 0, leases, reading);
        lessor.expired(reading)
    }

    fn lessor(checkpoint_interval: Option<u64>) -> Lessor {
        Lessor::new(LessorConfig {
            checkpoint_interval: checkpoint_interval.map(Duration::from_secs),
            grace: Duration::from_secs(1),
        })
    }

    /// Reads the clock every half second from `from` to `to` (seconds), as the leader loop does,
    /// so lessor time keeps up with it.
    fn tick(lessor: &Lessor, term: u64, leases: &[(i64, LeaseRecord)], from: u64, to: u64) {
        let mut ms = from * 1000;
        while ms < to * 1000 {
            ms += 500;
            sync(lessor, term, leases, at_ms(ms));
        }
    }

    fn renewed(step: RenewStep) -> Renewal {
        match step {
            RenewStep::Done(renewal) => renewal,
            RenewStep::Wait(_) => panic!("renewal waits for a reset"),
        }
    }

    #[test]
    fn etcd_minimum_ttl() {
        // Defaults: 100ms heartbeats, 1s election timeout: 15 heartbeats, 1.5s, so 2s.
        let ms = Duration::from_millis;
        assert_eq!(min_ttl(ms(100), ms(1000)), 2);
        assert_eq!(min_ttl(ms(100), ms(2000)), 3);
        assert_eq!(min_ttl(ms(50), ms(500)), 1);
    }

    #[test]
    fn a_new_leader_gives_every_lease_its_ttl_plus_an_election_timeout() {
        let lessor = lessor(None);
        let leases = [lease(1, 10), lease(2, 5)];
        assert!(sync(&lessor, 7, &leases, at(100)).is_empty());
        assert_eq!(
            lessor.remaining(7, 2, at(100)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(lessor.remaining(6, 2, at(100)), None, "another term");
        tick(&lessor, 7, &leases, 100, 105);
        assert!(
            sync(&lessor, 7, &leases, at_ms(106_000)).is_empty(),
            "stretched"
        );
        assert_eq!(sync(&lessor, 7, &leases, at_ms(106_500)), [2]);
        // Expired means expired: no renewal brings it back.
        let record = Some(leases[1].1);
        assert_eq!(
            renewed(lessor.renew(7, 2, record, at_ms(106_500))),
            Renewal::Expired
        );
    }

    #[test]
    fn renewals_restart_the_ttl_and_new_grants_start_at_the_sync() {
        let lessor = lessor(None);
        let one = [lease(1, 10)];
        sync(&lessor, 3, &one, at(0));
        tick(&lessor, 3, &one, 0, 8);
        let record = Some(one[0].1);
        assert_eq!(
            renewed(lessor.renew(3, 1, record, at(8))),
            Renewal::Renewed(10)
        );
        assert_eq!(renewed(lessor.renew(3, 9, None, at(8))), Renewal::Expired);
        assert_eq!(
            renewed(lessor.renew(4, 1, record, at(8))),
            Renewal::NotLeading
        );
        // Granted meanwhile: TTL from this sync, without the promotion grace.
        let two = [lease(1, 10), lease(2, 4)];
        tick(&lessor, 3, &two, 8, 9);
        let left = lessor.remaining(3, 2, at(9)).expect("tracked");
        assert_eq!(left.as_millis(), 3500, "4s from the sync at 8.5s");
        tick(&lessor, 3, &two, 9, 12);
        assert!(
            sync(&lessor, 3, &two, at_ms(12_500)).is_empty(),
            "12.504s, stretched"
        );
        assert_eq!(sync(&lessor, 3, &two, at(13)), [2]);
        assert!(
            sync(&lessor, 3, &two, at_ms(13_500)).is_empty(),
            "offered once"
        );
        tick(&lessor, 3, &one, 13, 18);
        assert_eq!(sync(&lessor, 3, &one, at_ms(18_500)), [1]);
        lessor.step_down();
        assert_eq!(lessor.remaining(3, 1, at(19)), None);
    }

    #[test]
    fn applied_grants_and_revokes_are_followed_without_a_full_read() {
        let lessor = lessor(None);
        lessor.sync(2, 10, &[lease(1, 5)], at(0));
        let events = [
            // Already in the read at index 10.
            (9, LeaseEvent::Revoked { id: 1 }),
            (11, LeaseEvent::Granted { id: 2, ttl: 3 }),
            (12, LeaseEvent::Granted { id: 3, ttl: 3 }),
            (13, LeaseEvent::Revoked { id: 3 }),
        ];
        assert!(lessor.apply_events(&events, at(0)));
        assert!(
            lessor.remaining(2, 1, at(0)).is_some(),
            "index 9 was in the read"
        );
        assert_eq!(lessor.remaining(2, 2, at(0)).map(|d| d.as_secs()), Some(3));
        assert_eq!(lessor.remaining(2, 3, at(0)), None);
        assert!(!lessor.apply_events(&[(14, LeaseEvent::Reset)], at(0)));
        // Expiry in order, at most REVOKES_PER_TICK, and marked so none is renewed.
        let mut ms = 0;
        while ms < 3_000 {
            ms += 500;
            assert!(lessor.expired(at_ms(ms)).is_empty());
        }
        assert_eq!(lessor.expired(at_ms(3_500)), [2]);
        assert!(lessor.expired(at_ms(4_000)).is_empty(), "offered once");
        lessor.revoke_failed(2, 2);
        assert_eq!(
            lessor.expired(at_ms(4_500)),
            [2],
            "offered again after a failure"
        );
    }

    #[test]
    fn a_clock_jump_or_pause_counts_as_one_step() {
        let lessor = lessor(None);
        let one = [lease(1, 5)];
        sync(&lessor, 2, &one, at(0));
        // The clock leaps an hour: lessor time moves by one step only.
        assert!(sync(&lessor, 2, &one, at(3600)).is_empty());
        let left = lessor.remaining(2, 1, at(3600)).expect("tracked");
        assert!(left >= Duration::from_secs(5) - MAX_STEP, "{left:?}");
        // A clock going back never reverses lessor time, nor freezes it until the clock is
        // back where it was: counting goes on from the new reading.
        assert!(sync(&lessor, 2, &one, at(10)).is_empty());
        assert_eq!(lessor.remaining(2, 1, at(10)), Some(left));
        let later = lessor.remaining(2, 1, at(11)).expect("tracked");
        assert_eq!((left - later).as_millis(), 999, "one second, unstretched");
    }

    #[test]
    fn leases_are_checkpointed_after_an_interval_without_renewal() {
        let lessor = lessor(Some(5));
        let leases = [lease(1, 30), lease(2, 4)];
        sync(&lessor, 1, &leases, at(0));
        assert!(lessor.checkpoint_batch(at(0), true).is_none());
        tick(&lessor, 1, &leases, 0, 7);
        // Lease 2's TTL is within one interval: a reset costs it less than a checkpoint would.
        let batch = lessor.checkpoint_batch(at(7), true).expect("due");
        let expected = LeaseCheckpoint {
            id: 1,
            remaining_ttl: 25,
        };
        assert_eq!(batch.checkpoints, [expected]);
        lessor.checkpointed(batch, true, at(7));
        // Not due again until another interval has passed.
        assert!(lessor.checkpoint_batch(at(7), true).is_none());
    }

    #[test]
    fn renewing_a_checkpointed_lease_waits_for_the_reset() {
        let lessor = lessor(Some(5));
        let one = [lease(1, 30)];
        sync(&lessor, 1, &one, at(0));
        tick(&lessor, 1, &one, 0, 6);
        let batch = lessor.checkpoint_batch(at(6), true).expect("due");
        // A renewal while that checkpoint is in flight waits for a reset after it.
        let record = Some(one[0].1);
        let RenewStep::Wait(mut waiting) = lessor.renew(1, 1, record, at(6)) else {
            panic!("a checkpointed lease renewed without a reset");
        };
        lessor.checkpointed(batch, true, at(6));
        assert!(waiting.try_recv().is_err(), "answered before its reset");
        let reset = lessor.checkpoint_batch(at(6), false).expect("the reset");
        let expected = LeaseCheckpoint {
            id: 1,
            remaining_ttl: 0,
        };
        assert_eq!(reset.checkpoints, [expected]);
        lessor.checkpointed(reset, true, at(6));
        assert_eq!(waiting.try_recv(), Ok(Renewal::Renewed(30)));
        // Reset: the next renewal needs no Raft round trip.
        assert_eq!(
            renewed(lessor.renew(1, 1, record, at(6))),
            Renewal::Renewed(30)
        );
    }

    #[test]
    fn a_failed_reset_keeps_the_lease_checkpointed() {
        let lessor = lessor(Some(5));
        let record = LeaseRecord {
            ttl: 30,
            remaining: 12,
        };
        // Taking over a checkpointed lease: remaining time plus grace.
        sync(&lessor, 4, &[(1, record)], at(0));
        let left = lessor.remaining(4, 1, at(0)).expect("tracked");
        assert_eq!(left.as_secs(), 13);
        let RenewStep::Wait(mut waiting) = lessor.renew(4, 1, Some(record), at(0)) else {
            panic!("no reset");
        };
        let reset = lessor.checkpoint_batch(at(0), false).expect("the reset");
        lessor.checkpointed(reset, false, at(0));
        assert_eq!(waiting.try_recv(), Ok(Renewal::NotLeading));
        assert!(matches!(
            lessor.renew(4, 1, Some(record), at(0)),
            RenewStep::Wait(_)
        ));
        // Stepping down answers waiting renewals.
        lessor.step_down();
        assert!(lessor.checkpoint_batch(at(0), false).is_none());
    }

    #[test]
    fn without_checkpoints_a_new_leader_resets_every_lease() {
        let lessor = lessor(None);
        let record = LeaseRecord {
            ttl: 30,
            remaining: 12,
        };
        sync(&lessor, 4, &[(1, record)], at(0));
        assert_eq!(lessor.remaining(4, 1, at(0)).map(|d| d.as_secs()), Some(31));
        assert_eq!(
            renewed(lessor.renew(4, 1, Some(record), at(0))),
            Renewal::Renewed(30)
        );
        assert!(lessor.checkpoint_batch(at(100), true).is_none());
    }
}
