//! Liveness: once the faults stop (every member up, the network whole, the disks healthy), the
//! cluster elects a leader and every member (but one that refused its corrupted disk and stays
//! down) serves a write and a linearizable read within
//! [`BOUND`] of simulated time. The operations go into the history, so the other checkers see
//! them too.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::history::{perform_on, History, Op, Outcome};

/// How long a healed cluster may take to serve through every member: an election takes one to
/// two election timeouts (1–2 s), a restarted member replays its log first, and a client's
/// request that hit a dying leader times out after 5 s.
pub const BOUND: Duration = Duration::from_secs(20);

/// Client numbers of the liveness operations (one per member) in the history.
pub const CLIENT: usize = 1000;

/// Drives a put and a linearizable read through each of `members` until each has served both;
/// returns how long that took. Panics after [`BOUND`].
pub async fn check(cluster: &Cluster, members: &[usize], history: &History) -> Duration {
    let started = madsim::time::Instant::now();
    for &member in members {
        let endpoint = cluster.endpoint(member);
        let client = CLIENT + member;
        let mut wrote = false;
        let mut attempt = 0;
        loop {
            assert!(
                started.elapsed() < BOUND,
                "not live: m{} did not serve a write and a read within {BOUND:?} after the faults \
                 stopped",
                member + 1
            );
            attempt += 1;
            let op = if wrote {
                Op::Scan
            } else {
                Op::Put {
                    key: format!("{}live-m{}", crate::history::PREFIX, member + 1),
                    value: format!("c{client}.{attempt}"),
                }
            };
            let index = history.invoke(client, member, op.clone());
            let outcome = perform_on(cluster.client_host(), &endpoint, &op).await;
            if std::env::var_os("DETCD_SIM_TRACE").is_some() {
                eprintln!("liveness m{} {op:?} -> {outcome:?}", member + 1);
            }
            let ok = matches!(outcome, Outcome::Ok(_));
            history.complete(index, outcome);
            if ok && wrote {
                break;
            }
            wrote |= ok;
            if !ok {
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    started.elapsed()
}
