//! Raft and durability scenarios, each a short story on the [`Cluster`] harness (Raft paper §5.2
//! leader election, §5.3 log replication, §5.4 safety; etcd's durability promise).
//! Each returns the trace hash of its run.

use std::collections::BTreeMap;
use std::time::Duration;

use detcd::env::sim_disk::CrashMode;
use madsim::rand::Rng;

use crate::cluster::Cluster;

const ALL: [usize; 3] = [0, 1, 2];

fn others(member: usize) -> Vec<usize> {
    ALL.iter().copied().filter(|m| *m != member).collect()
}

/// Writes `count` keys through members in turn; every one must be acknowledged.
async fn write_all(
    cluster: &mut Cluster,
    through: &[usize],
    prefix: &str,
    count: usize,
) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    for i in 0..count {
        let member = through[i % through.len()];
        let (key, value) = (format!("{prefix}{i:03}"), format!("value-{prefix}-{i}"));
        let revision = cluster
            .put(member, &key, &value)
            .await
            .unwrap_or_else(|e| panic!("put {key} through m{} failed: {e}", member + 1));
        assert!(revision > 1, "a put takes a revision after the initial one");
        acked.insert(key, value);
    }
    acked
}

/// Every acknowledged write is visible through each of `members` with a linearizable read.
async fn assert_visible(
    cluster: &mut Cluster,
    members: &[usize],
    acked: &BTreeMap<String, String>,
) {
    for &member in members {
        for (key, value) in acked {
            let read = cluster.get(member, key, false).await;
            assert_eq!(
                read.as_ref().ok().cloned().flatten().as_ref(),
                Some(value),
                "acknowledged {key} not visible through m{}: {read:?}",
                member + 1
            );
        }
    }
}

/// Waits until `member`'s own state machine holds exactly `expected`.
async fn wait_converged(cluster: &Cluster, member: usize, expected: &BTreeMap<String, String>) {
    cluster
        .wait_until(
            &format!("m{} converges", member + 1),
            Duration::from_secs(60),
            || async {
                cluster
                    .dump(member)
                    .await
                    .is_ok_and(|data| &data == expected)
            },
        )
        .await;
}

/// The leader is killed: the others elect a new leader of a later term, acknowledged writes
/// survive, writes go on, and the old leader catches up when it comes back.
pub async fn leader_killed() -> u64 {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(&ALL).await;
    let old_term = cluster.term(leader).await.expect("leader answers");
    let mut acked = write_all(&mut cluster, &ALL, "before", 12).await;

    cluster.kill(leader);
    let survivors = others(leader);
    let new_leader = cluster.wait_for_leader(&survivors).await;
    assert_ne!(new_leader, leader);
    let new_term = cluster.term(new_leader).await.expect("new leader answers");
    assert!(
        new_term > old_term,
        "a new leader has a later term ({new_term} vs {old_term})"
    );
    assert_visible(&mut cluster, &survivors, &acked).await;
    acked.extend(write_all(&mut cluster, &survivors, "after", 12).await);

    cluster.restart(leader);
    wait_converged(&cluster, leader, &acked).await;
    assert_visible(&mut cluster, &ALL, &acked).await;
    cluster.trace_hash()
}

/// The leader is cut off from the other members (clients still reach it): what it is asked to
/// write is never acknowledged nor visible anywhere, the majority elects a leader and commits,
/// and after healing the old leader steps down and converges.
pub async fn leader_partitioned() -> u64 {
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.wait_for_leader(&ALL).await;
    let old_term = cluster.term(old_leader).await.expect("leader answers");
    let mut acked = write_all(&mut cluster, &ALL, "before", 6).await;

    cluster.partition(&[old_leader]);
    let lost = cluster.put(old_leader, "lost", "never").await;
    assert!(
        lost.is_err(),
        "a cut-off leader acknowledged a write: {lost:?}"
    );
    let local = cluster.get(old_leader, "lost", true).await;
    assert!(
        matches!(local, Ok(None) | Err(_)),
        "a cut-off leader applied an uncommitted write: {local:?}"
    );
    let majority = others(old_leader);
    let new_leader = cluster.wait_for_leader(&majority).await;
    let new_term = cluster.term(new_leader).await.expect("new leader answers");
    assert!(new_term > old_term, "the majority elects in a later term");
    acked.extend(write_all(&mut cluster, &majority, "majority", 6).await);

    cluster.heal();
    cluster
        .wait_until(
            "the old leader follows the new one",
            Duration::from_secs(60),
            || async { cluster.agreed_leader(&ALL).await == Some(new_leader) },
        )
        .await;
    wait_converged(&cluster, old_leader, &acked).await;
    for member in ALL {
        let read = cluster.get(member, "lost", false).await;
        assert_eq!(
            read.ok(),
            Some(None),
            "the cut-off leader's write became visible"
        );
    }
    cluster.trace_hash()
}

/// Power loss: one member crashes while writes go on and restarts to catch up; then every member
/// crashes at once. Each crash drops, keeps a prefix of, or tears unsynced writes. Every
/// acknowledged write is still there afterwards (it was fsynced on a majority before the ack).
pub async fn crash_recovery() -> u64 {
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::KeepPrefix,
        CrashMode::TearNext,
        CrashMode::KeepSubset,
    ];
    let mode = modes[madsim::rand::thread_rng().gen_range(0..modes.len())];
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(&ALL).await;
    let mut acked = write_all(&mut cluster, &ALL, "first", 10).await;

    let victim = madsim::rand::thread_rng().gen_range(0..3);
    cluster.crash(victim, mode);
    let survivors = others(victim);
    cluster.wait_for_leader(&survivors).await;
    acked.extend(write_all(&mut cluster, &survivors, "second", 10).await);
    cluster.restart(victim);
    wait_converged(&cluster, victim, &acked).await;

    for member in ALL {
        cluster.crash(member, mode);
    }
    for member in ALL {
        cluster.restart(member);
    }
    cluster.wait_for_leader(&ALL).await;
    assert_visible(&mut cluster, &ALL, &acked).await;
    acked.extend(write_all(&mut cluster, &ALL, "third", 5).await);
    for member in ALL {
        wait_converged(&cluster, member, &acked).await;
    }
    cluster.trace_hash()
}

/// Group commit: puts that arrive while the leader's log is being fsynced share the next fsync,
/// so a burst of concurrent puts costs far fewer fsyncs than puts (etcd batches its WAL writes
/// the same way). The leader gets a slow disk (20 ms fsyncs): madsim-tonic's simulated server
/// takes in about one request per 2 ms, so with a fast disk nothing would ever queue.
pub async fn group_commit() -> u64 {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(&ALL).await;
    cluster.members[leader]
        .disk
        .set_sync_latency(Duration::from_millis(20));
    let puts = 200;
    let syncs_before = cluster.members[leader].disk.sync_count();
    let acked = cluster.concurrent_puts(leader, puts).await;
    let syncs = cluster.members[leader].disk.sync_count() - syncs_before;
    assert_eq!(acked, puts, "a healthy cluster acknowledges every put");
    cluster.record(format!("group commit: {puts} puts, {syncs} leader fsyncs"));
    println!("group commit: {puts} concurrent puts took {syncs} fsyncs on the leader");
    assert!(
        (syncs as usize) * 4 <= puts,
        "{syncs} leader fsyncs for {puts} concurrent puts: writes are not batched"
    );
    cluster.trace_hash()
}

/// The leader acknowledges a write, loses power before anything else reaches its disk, and comes
/// straight back — before the others would elect anyone. A linearizable read through it must
/// still see the write: a restarted leader may not serve reads from the commit index it
/// remembers (which may predate the ack) until it has re-established one in a new term.
pub async fn leader_crash_after_ack() -> u64 {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(&ALL).await;
    write_all(&mut cluster, &ALL, "warm", 3).await;
    for round in 0..5 {
        let leader = cluster.wait_for_leader(&ALL).await;
        let key = format!("acked{round}");
        cluster
            .put(leader, &key, "yes")
            .await
            .expect("healthy cluster acks");
        cluster.crash(leader, CrashMode::DropUnsynced);
        cluster.restart(leader);
        let read = cluster.get(leader, &key, false).await;
        assert!(
            matches!(&read, Ok(Some(value)) if value == "yes") || read.is_err(),
            "round {round}: a linearizable read after the leader's restart missed an acknowledged write: {read:?}"
        );
    }
    cluster.trace_hash()
}
