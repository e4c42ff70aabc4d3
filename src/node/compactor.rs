//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as etcd's
//! `v3compactor`: every member samples its revision, only the leader proposes compactions, and
//! a compaction goes through Raft like a client's.
//!
//! - `periodic` with retention `P`: the revision is sampled every `min(P, 1h) / 10`; once `P`
//!   has passed, and then every `min(P, 1h)`, history is compacted at the oldest sample kept —
//!   the revision of about `P` ago.
//! - `revision` with retention `N`: every 5 minutes, history is compacted at `current - N`.
//!
//! An already-compacted revision counts as done. Time comes from the member's `Clock`.

use crate::apply::{ApplyError, CommandResult};
use crate::env::watch;
use crate::env::Duration;
use crate::pb::etcdserverpb::CompactionRequest;
use crate::pb::raft::{command, Command};

use super::Node;

/// What the auto-compactor keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoCompaction {
    /// Retention 0: no auto-compaction (etcd's default).
    #[default]
    Off,
    /// Keep about this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

/// How often revision mode compacts (etcd's `revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The periodic schedule for a retention of `period`: (sample interval, compaction interval,
/// samples kept).
pub fn periodic_schedule(period: Duration) -> (Duration, Duration, usize) {
    let compact_interval = period.min(Duration::from_secs(3600));
    let sample_interval = (compact_interval / 10).max(Duration::from_millis(1));
    let samples = (period.as_nanos() / sample_interval.as_nanos()) as usize + 1;
    (sample_interval, compact_interval, samples)
}

/// Runs the auto-compactor until `stop` turns true.
pub async fn run(node: Node, policy: AutoCompaction, mut stop: watch::Receiver<bool>) {
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    match policy {
        AutoCompaction::Off => {}
        AutoCompaction::Periodic(period) => {
            tokio::select! {
                biased;
                _ = stopped => {}
                _ = periodic(&node, period) => {}
            }
        }
        AutoCompaction::Revision(retention) => {
            tokio::select! {
                biased;
                _ = stopped => {}
                _ = by_revision(&node, retention) => {}
            }
        }
    }
}

async fn periodic(node: &Node, period: Duration) {
    let (sample_interval, compact_interval, keep) = periodic_schedule(period);
    let mut samples = std::collections::VecDeque::with_capacity(keep + 1);
    let mut last_success = node.clock.now();
    loop {
        if let Ok(revision) = node.state_machine.current_revision().await {
            samples.push_back(revision);
            if samples.len() > keep {
                samples.pop_front();
            }
        }
        node.clock.sleep(sample_interval).await;
        if node.clock.now().since(last_success) < compact_interval {
            continue;
        }
        let Some(&oldest) = samples.front() else {
            continue;
        };
        if compact(node, oldest).await {
            last_success = node.clock.now();
        }
    }
}

async fn by_revision(node: &Node, retention: i64) {
    let mut previous = 0;
    loop {
        node.clock.sleep(REVISION_INTERVAL).await;
        let Ok(current) = node.state_machine.current_revision().await else {
            continue;
        };
        let target = current - retention;
        if target <= 0 || target == previous {
            continue;
        }
        if compact(node, target).await {
            previous = target;
        }
    }
}

/// Proposes a compaction at `revision` if this member leads; whether it is now done.
async fn compact(node: &Node, revision: i64) -> bool {
    if node.leader() != Some(node.id) {
        return false;
    }
    let command = Command {
        op: Some(command::Op::Compaction(CompactionRequest {
            revision,
            physical: false,
        })),
        ..Default::default()
    };
    match node.write(command).await {
        Ok(response) => matches!(
            response.result,
            CommandResult::Compaction | CommandResult::Rejected(ApplyError::Compacted)
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_schedule_follows_etcd() {
        // 1h: sample every 6 min, compact hourly, 11 samples (the oldest is an hour old).
        assert_eq!(
            periodic_schedule(Duration::from_secs(3600)),
            (Duration::from_secs(360), Duration::from_secs(3600), 11)
        );
        // 24h: still hourly compactions, 241 samples.
        assert_eq!(
            periodic_schedule(Duration::from_secs(24 * 3600)),
            (Duration::from_secs(360), Duration::from_secs(3600), 241)
        );
        // 5m: sample every 30 s, compact every 5 min.
        assert_eq!(
            periodic_schedule(Duration::from_secs(300)),
            (Duration::from_secs(30), Duration::from_secs(300), 11)
        );
    }
}
