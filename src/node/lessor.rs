//! The lessor: when each lease expires, decided by the leader from its own clock (the seam), and
//! enforced by proposing a revoke through Raft. `apply` never reads time.
//!
//! Only the leader keeps expiries. When a member becomes leader it gives every lease its full
//! granted TTL plus an election timeout from that moment (etcd's `Promote`): it cannot know how
//! much of the TTL had passed under the old leader, and must never expire a lease early. A
//! keep-alive answered by the leader restarts the TTL from the moment it is answered. A lease
//! granted while this member leads gets its TTL from the first sync after the grant is applied,
//! never earlier than the grant.
//!
//! The leader loop (every [`TICK`]): re-read the leases the state machine has, drop the ones
//! revoked, start the ones new, and propose a revoke for each expired one (at most
//! [`REVOKES_PER_TICK`] per tick, as etcd's lessor rate-limits expiry, so a mass expiry never
//! floods the log).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Node, NodeError};
use crate::env::{watch, Duration, Instant};
use crate::mvcc::{leases, LeaseRecord};
use crate::pb::etcdserverpb::LeaseRevokeRequest;
use crate::pb::raft::{command, Command};

/// How often the leader looks for expired leases.
pub const TICK: Duration = Duration::from_millis(500);

/// At most this many revokes are proposed per tick (etcd's `leaseRevokeRate` is 1000/s).
pub const REVOKES_PER_TICK: usize = 500;

/// etcd's largest lease TTL, in seconds (`MaxLeaseTTL`).
pub const MAX_TTL: i64 = 9_000_000_000;

/// etcd's smallest lease TTL for a cluster with these timings: one and a half election
/// timeouts, counted in whole heartbeats, rounded up to a second (`minLeaseTTL`).
pub fn min_ttl(heartbeat: Duration, election: Duration) -> i64 {
    let heartbeat_ms = heartbeat.as_millis().max(1) as i64;
    let ticks = election.as_millis() as i64 / heartbeat_ms;
    let min_ms = (3 * ticks) / 2 * heartbeat_ms;
    (min_ms + 999) / 1000
}

#[derive(Debug, Default)]
struct State {
    /// The term these expiries belong to (0: not leading).
    term: u64,
    expiry: BTreeMap<i64, Instant>,
}

/// The leader's lease clock. Followers hold an empty one.
#[derive(Debug, Default)]
pub struct Lessor {
    state: Mutex<State>,
}

impl Lessor {
    /// Restarts lease `id`'s TTL from `now` if this member leads in `term` and tracks it;
    /// answers whether it did.
    pub fn renew(&self, term: u64, id: i64, ttl: i64, now: Instant) -> bool {
        let mut state = self.state.lock().expect("lessor lock");
        if state.term != term {
            return false;
        }
        match state.expiry.get_mut(&id) {
            Some(expiry) => {
                *expiry = now.plus(Duration::from_secs(ttl.max(0) as u64));
                true
            }
            None => false,
        }
    }

    /// Lease `id`'s remaining time at `now`, if this member leads in `term` and tracks it.
    pub fn remaining(&self, term: u64, id: i64, now: Instant) -> Option<Duration> {
        let state = self.state.lock().expect("lessor lock");
        if state.term != term {
            return None;
        }
        state.expiry.get(&id).map(|expiry| expiry.since(now))
    }

    /// Brings the expiries in line with the state machine's `leases` for a leader in `term`:
    /// a new term starts every lease afresh (`ttl + grace` from `now`); leases that appeared get
    /// `ttl` from `now`; revoked ones are dropped. Answers the expired IDs, soonest first.
    fn sync(
        &self,
        term: u64,
        leases: &[(i64, LeaseRecord)],
        now: Instant,
        grace: Duration,
    ) -> Vec<i64> {
        let mut state = self.state.lock().expect("lessor lock");
        let promoted = state.term != term;
        if promoted {
            state.term = term;
            state.expiry.clear();
        }
        let mut current = BTreeMap::new();
        for &(id, record) in leases {
            let ttl = Duration::from_secs(record.ttl.max(0) as u64);
            let expiry = match state.expiry.get(&id) {
                Some(&expiry) => expiry,
                None if promoted => now.plus(ttl + grace),
                None => now.plus(ttl),
            };
            current.insert(id, expiry);
        }
        state.expiry = current;
        let mut expired: Vec<(Instant, i64)> = state
            .expiry
            .iter()
            .filter(|(_, &at)| at.since(now).is_zero())
            .map(|(&id, &at)| (at, id))
            .collect();
        expired.sort();
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// Not leading: forget every expiry.
    fn step_down(&self) {
        let mut state = self.state.lock().expect("lessor lock");
        state.term = 0;
        state.expiry.clear();
    }
}

/// The leader loop, until `stop` is set.
pub async fn run(node: Node, mut stop: watch::Receiver<bool>) {
    let stopped = stop.wait_for(|stopped| *stopped);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            _ = node.clock.sleep(TICK) => {}
        }
        let status = node.raft_status();
        if status.leader != node.id {
            node.lessor.step_down();
            continue;
        }
        let Ok(all) = node
            .state_machine
            .read(|txn| leases::all(txn).map_err(crate::raft::io_error))
            .await
        else {
            continue;
        };
        let expired = node
            .lessor
            .sync(status.term, &all, node.clock.now(), node.election_timeout);
        for id in expired.into_iter().take(REVOKES_PER_TICK) {
            let revoke = Command {
                op: Some(command::Op::LeaseRevoke(LeaseRevokeRequest { id })),
            };
            match node.write(revoke).await {
                // Revoked, or already gone: the next sync drops it.
                Ok(_) => {}
                // Lost the leadership: the next tick steps down.
                Err(NodeError::ForwardToLeader(_) | NodeError::NoLeader) => break,
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> Instant {
        Instant::default().plus(Duration::from_secs(seconds))
    }

    fn lease(id: i64, ttl: i64) -> (i64, LeaseRecord) {
        (id, LeaseRecord { ttl, remaining: 0 })
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
        let lessor = Lessor::default();
        let grace = Duration::from_secs(1);
        let leases = [lease(1, 10), lease(2, 5)];
        assert!(lessor.sync(7, &leases, at(100), grace).is_empty());
        assert_eq!(
            lessor.remaining(7, 2, at(100)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            lessor.remaining(6, 2, at(100)),
            None,
            "another term knows nothing"
        );
        // Not expired one second before, expired at 106.
        assert!(lessor.sync(7, &leases, at(105), grace).is_empty());
        assert_eq!(lessor.sync(7, &leases, at(106), grace), [2]);
    }

    #[test]
    fn renewals_restart_the_ttl_and_new_grants_start_at_the_sync() {
        let lessor = Lessor::default();
        let grace = Duration::from_secs(1);
        lessor.sync(3, &[lease(1, 10)], at(0), grace);
        assert!(lessor.renew(3, 1, 10, at(8)));
        assert!(!lessor.renew(3, 9, 10, at(8)), "an untracked lease");
        assert!(!lessor.renew(4, 1, 10, at(8)), "not leading in that term");
        // Granted meanwhile: TTL from this sync, without the promotion grace.
        assert!(lessor
            .sync(3, &[lease(1, 10), lease(2, 4)], at(9), grace)
            .is_empty());
        assert_eq!(lessor.remaining(3, 2, at(9)), Some(Duration::from_secs(4)));
        assert_eq!(
            lessor.sync(3, &[lease(1, 10), lease(2, 4)], at(13), grace),
            [2]
        );
        assert_eq!(lessor.sync(3, &[lease(1, 10)], at(18), grace), [1]);
        // Revoked ones are dropped; stepping down forgets everything.
        assert!(lessor.sync(3, &[], at(30), grace).is_empty());
        lessor.sync(3, &[lease(5, 10)], at(30), grace);
        lessor.step_down();
        assert_eq!(lessor.remaining(3, 5, at(30)), None);
    }
}
