//! Raft and durability scenarios, each a short story on the [`Cluster`] harness (Raft paper §5.2
//! leader election, §5.3 log replication, §5.4 safety; etcd's durability promise).
//! Each returns the trace hash of its run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detcd::env::sim_disk::CrashMode;
use madsim::rand::Rng;

use crate::cluster::Cluster;
use crate::watch::{check_watchers, spawn_load, spawn_stream, Received, Seen, Spec, Watcher};

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
    crate::check::state::check(&cluster, &ALL).await;
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
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// A follower whose answers are held for 27 s (its outgoing links clogged: it still hears the
/// leader, so it never campaigns) has every write 2 s after the heal, forwards a write to the
/// leader within 2 s, and answers it once it has applied it too. The leader's replication stream to it fills its window with requests
/// nobody answers; over real TCP such a stream can hang for minutes, and the simulator's
/// connections hold what a clogged link carries and retry it with a backoff that grows to 10 s.
/// The leader must drop a stream whose oldest request went unanswered for the TTL and open
/// another, not wait on the old one; the follower the same with its stream of forwarded
/// requests, whose first request times out.
pub async fn unanswered_follower_catches_up() -> u64 {
    /// Forwarded while the follower's links are clogged: fails, or takes effect after the heal.
    const HELD: &str = "through-the-follower";
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(&ALL).await;
    let follower = (leader + 1) % 3;
    let mut acked = write_all(&mut cluster, &ALL, "before", 6).await;
    wait_converged(&cluster, follower, &acked).await;
    for other in others(follower) {
        cluster.clog_one_way(follower, other);
    }
    let held = cluster.put(follower, HELD, "held").await;
    assert!(
        held.is_err(),
        "a write the follower could not forward was acknowledged"
    );
    let majority = others(follower);
    for round in 0..4 {
        let prefix = format!("held{round}-");
        acked.extend(write_all(&mut cluster, &majority, &prefix, 3).await);
        madsim::time::sleep(Duration::from_secs(5)).await;
    }
    cluster.heal();
    cluster
        .wait_until(
            "the follower has every write 2 s after the heal",
            Duration::from_secs(2),
            || async {
                cluster.dump(follower).await.is_ok_and(|mut data| {
                    data.remove(HELD);
                    data == acked
                })
            },
        )
        .await;
    assert_eq!(
        cluster.agreed_leader(&ALL).await,
        Some(leader),
        "the follower never campaigned"
    );
    // The follower forwards a write at once (the leader has it within 2 s), and answers it
    // once it has applied the write itself, as etcd's followers do: that waits for the
    // leader's replication to it to resume (the stream whose answers were held is dropped and
    // openraft reopens one after its backoff, ~2 s here).
    let forwarded = cluster.on_client(follower, Duration::from_secs(6), |channel| async move {
        let put = detcd::pb::etcdserverpb::PutRequest {
            key: b"after".to_vec(),
            value: b"v".to_vec().into(),
            ..Default::default()
        };
        detcd::pb::etcdserverpb::kv_client::KvClient::new(channel)
            .put(put)
            .await
            .map(|response| response.into_inner())
    });
    let on_leader = cluster.wait_until(
        "the leader has the write forwarded by the follower within 2 s of the heal",
        Duration::from_secs(2),
        || async {
            cluster
                .dump(leader)
                .await
                .is_ok_and(|data| data.contains_key("after"))
        },
    );
    let (forwarded, ()) = futures::join!(forwarded, on_leader);
    assert!(
        forwarded.is_ok(),
        "the follower answers a forwarded write within 6 s of the heal: {forwarded:?}"
    );
    crate::check::state::check(&cluster, &ALL).await;
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
    crate::check::state::check(&cluster, &ALL).await;
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
    crate::check::state::check(&cluster, &ALL).await;
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
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// Bit rot found at restart: one flipped bit among the bytes a follower's last fsyncs made
/// durable. The follower must come back with everything it acknowledged, or refuse to start; it
/// must never come back having quietly forgotten its newest writes. Here those are the entries
/// that only it and the (now dead) leader hold, so a leader elected with its vote alone would
/// lose acknowledged writes.
pub async fn corrupted_disk_is_fenced() -> u64 {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(&ALL).await;
    let (follower, isolated) = {
        let rest = others(leader);
        (rest[0], rest[1])
    };
    let mut acked = write_all(&mut cluster, &ALL, "before", 5).await;
    cluster.partition(&[isolated]);
    acked.extend(write_all(&mut cluster, &[leader], "quorum", 10).await);
    cluster.kill(leader);
    cluster.corrupt(follower);
    cluster.heal();
    cluster
        .wait_until(
            "the corrupted member refuses its disk, or it and the third elect a leader",
            Duration::from_secs(20),
            || async {
                cluster.stopped(follower).is_some()
                    || cluster.agreed_leader(&[follower, isolated]).await.is_some()
            },
        )
        .await;
    let refused = cluster.stopped(follower);
    cluster.record(format!("m{} after the flip: {refused:?}", follower + 1));
    if let Some(why) = &refused {
        assert!(
            why.contains("corrupt"),
            "m{} stopped, but not for its corrupted disk: {why}",
            follower + 1
        );
    }
    cluster.restart(leader);
    let live: Vec<usize> = match refused {
        Some(_) => vec![leader, isolated],
        None => ALL.to_vec(),
    };
    cluster.wait_for_leader(&live).await;
    assert_visible(&mut cluster, &live, &acked).await;
    crate::check::state::check(&cluster, &live).await;
    cluster.trace_hash()
}

/// Simulated operations per simulated second of [`steady_load`].
pub const STEADY_RATE: u64 = 1000;
/// How long [`steady_load`] keeps its rate up.
pub const STEADY_FOR: Duration = Duration::from_secs(20);

/// The simulator's speed under a steady client load: a 3-member cluster is offered
/// [`STEADY_RATE`] puts per simulated second for [`STEADY_FOR`] (100 clients, each on its own
/// connection to a member in turn, one put every 100 ms), and every put must succeed. The
/// sweep's "simulated seconds per wall second" is the speed figure; the scenario prints the rate
/// served. Measured: 996 puts per simulated second (2026-12-06). Until followers forwarded
/// writes on one stream (`api/forward.rs`) it was 670: madsim-tonic opens a connection for
/// every unary call, and its server accepts one connection at a time, each after a
/// `rand_delay` sleep that madsim rounds up to its 1 ms timer grain, so the leader's listeners
/// took at most about one request per simulated millisecond, two thirds of them forwarded
/// writes. Nine tenths of the offered rate is the floor this test holds.
pub async fn steady_load() -> u64 {
    use detcd::pb::etcdserverpb::kv_client::KvClient;
    use detcd::pb::etcdserverpb::PutRequest;

    const CLIENTS: u64 = 100;
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(&ALL).await;
    let period = Duration::from_millis(1000 * CLIENTS / STEADY_RATE);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let endpoint = cluster.endpoint(c as usize % ALL.len());
            cluster.client_host().spawn(async move {
                let channel = crate::cluster::connect(&endpoint)
                    .await
                    .expect("a healthy member accepts a connection");
                let mut kv = KvClient::new(channel);
                let started = madsim::time::Instant::now();
                let mut tick = madsim::time::interval(period);
                let (mut done, mut late) = (0u64, 0u64);
                while started.elapsed() < STEADY_FOR {
                    tick.tick().await;
                    let sent = madsim::time::Instant::now();
                    let put = PutRequest {
                        key: format!("steady/{c}/{}", done % 16).into_bytes(),
                        value: vec![b'v'; 256].into(),
                        ..Default::default()
                    };
                    kv.put(put).await.expect("a healthy cluster acknowledges");
                    late += u64::from(sent.elapsed() > period);
                    done += 1;
                }
                (done, late)
            })
        })
        .collect();
    let (mut done, mut late) = (0, 0);
    for client in clients {
        let (d, l) = client.await.expect("client task");
        done += d;
        late += l;
    }
    let offered = STEADY_RATE * STEADY_FOR.as_secs();
    println!(
        "steady_load: {done} puts of {offered} offered in {STEADY_FOR:?} simulated ({:.0} per \
         simulated second), {late} slower than {period:?}",
        done as f64 / STEADY_FOR.as_secs_f64()
    );
    assert!(
        done * 10 >= offered * 9,
        "the cluster served under nine tenths of the offered load: {done} puts of {offered}"
    );
    cluster.record(format!(
        "steady load: {done} puts, {late} slower than {period:?}"
    ));
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// Overwrites `keys` keys `rounds` times through `member`, making history.
async fn churn(cluster: &mut Cluster, member: usize, keys: usize, rounds: usize) -> i64 {
    let mut revision = 0;
    for round in 0..rounds {
        for key in 0..keys {
            revision = cluster
                .put(member, &format!("churn{key:02}"), &format!("r{round}"))
                .await
                .expect("churn put");
        }
    }
    revision
}

/// Revision-mode auto-compaction (`--auto-compaction-retention=20`): after etcd's 5-minute
/// interval the leader compacts at `current - 20` through Raft, so every member forgets the same
/// history, refuses reads below it and still hashes equal; an explicit compaction through a
/// follower and a restarted member keep it so.
pub async fn auto_compaction_by_revision() -> u64 {
    let mut cluster = Cluster::start_with_flags(
        3,
        &[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=20",
        ],
    );
    let leader = cluster.wait_for_leader(&ALL).await;
    let current = churn(&mut cluster, leader, 10, 5).await;
    assert_eq!(current, 51, "50 puts after the initial revision");
    let target = current - 20;
    for member in ALL {
        cluster
            .wait_until(
                "auto-compaction reaches every member",
                Duration::from_secs(7 * 60),
                || async {
                    cluster
                        .hash_kv(member, 0)
                        .await
                        .is_ok_and(|h| h.compact_revision == target)
                },
            )
            .await;
        let below = cluster.hash_kv(member, target - 1).await;
        assert_eq!(
            below.map_err(|e| e.message().to_string()).err().as_deref(),
            Some("etcdserver: mvcc: required revision has been compacted"),
            "m{} still serves history below the compaction",
            member + 1
        );
    }
    crate::check::state::check(&cluster, &ALL).await;

    let follower = others(leader)[0];
    // The revision of the last acknowledged put: a follower's own HashKV may not have applied
    // it yet (seed 4 once read one revision short here).
    let now = churn(&mut cluster, follower, 3, 2).await;
    cluster
        .compact(follower, now)
        .await
        .expect("compaction through a follower");
    let restarted = others(leader)[1];
    cluster.kill(restarted);
    churn(&mut cluster, leader, 2, 1).await;
    cluster.restart(restarted);
    cluster
        .wait_until(
            "the restarted member catches up",
            Duration::from_secs(30),
            || async {
                cluster.hash_kv(restarted, 0).await.is_ok_and(|h| {
                    h.compact_revision == now && h.header.is_some_and(|h| h.revision == now + 2)
                })
            },
        )
        .await;
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// Periodic auto-compaction (`--auto-compaction-retention=1m`): the revision is sampled every
/// 6 s; a minute after start, and every minute after, the leader compacts at the oldest sample
/// kept — the revision of about a minute before (etcd's `v3compactor.Periodic`).
pub async fn auto_compaction_periodic() -> u64 {
    let start = madsim::time::Instant::now();
    let mut cluster = Cluster::start_with_flags(3, &["--auto-compaction-retention=1m"]);
    let leader = cluster.wait_for_leader(&ALL).await;
    // A steady writer: (seconds since start, revision after the put).
    let mut written: Vec<(f64, i64)> = vec![(0.0, 1)];
    let mut compactions: Vec<(f64, i64)> = Vec::new();
    let mut last = -1;
    while compactions.len() < 2 {
        let revision = cluster
            .put(leader, "tick", &written.len().to_string())
            .await
            .expect("steady put");
        written.push((start.elapsed().as_secs_f64(), revision));
        let compacted = cluster
            .hash_kv(leader, 0)
            .await
            .expect("hash")
            .compact_revision;
        if compacted != last {
            compactions.push((start.elapsed().as_secs_f64(), compacted));
            last = compacted;
        }
        assert!(
            start.elapsed() < Duration::from_secs(200),
            "no periodic compaction: {compactions:?}"
        );
        madsim::time::sleep(Duration::from_secs(2)).await;
    }
    let revision_at = |seconds: f64| {
        written
            .iter()
            .filter(|(at, _)| *at <= seconds)
            .map(|(_, revision)| *revision)
            .max()
            .unwrap_or(1)
    };
    for &(at, compacted) in &compactions {
        assert!(
            at >= 60.0,
            "compacted before a period passed: {compactions:?}"
        );
        // The sample compacted at is between 54 and 68 seconds old (6 s samples, 2 s writes).
        assert!(
            compacted <= revision_at(at - 54.0) && compacted >= revision_at(at - 68.0),
            "compaction at {at:.0}s to revision {compacted} is not a minute old: {written:?}"
        );
    }
    assert!(
        compactions[1].0 >= 120.0,
        "compactions a minute apart: {compactions:?}"
    );
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// A mix of writes under the watched prefix `w/` through `members` in turn: puts, single and
/// range deletes, txns that put two keys and delete a third at one revision. Failures are fine
/// (the watchers' reference is what was committed, whatever the clients heard).
async fn write_mix(cluster: &mut Cluster, members: &[usize], round: usize, count: usize) {
    let mut rng = madsim::rand::thread_rng();
    for i in 0..count {
        let member = members[i % members.len()];
        let key = |n: u32| format!("w/k{n}");
        let _ = match rng.gen_range(0..10) {
            0..=4 => {
                let k = key(rng.gen_range(0..6));
                cluster.put(member, &k, &format!("r{round}i{i}")).await
            }
            5 | 6 => {
                let k = key(rng.gen_range(0..6));
                cluster.delete(member, &k, "").await
            }
            7 => cluster.delete(member, "w/k2", "w/k5").await,
            _ => {
                let puts = [
                    (key(rng.gen_range(0..3)), format!("t{round}i{i}")),
                    (key(rng.gen_range(3..5)), format!("u{round}i{i}")),
                ];
                cluster.txn(member, &puts, &key(5)).await
            }
        };
    }
}

/// Watchers that start on each member and re-open on failure (and every few seconds anyway, on
/// the next member, from the revision after the newest they know) while writes go on through
/// four rounds of faults: a leader killed, the leader partitioned, a member's power lost. After
/// healing, each watcher's events must be exactly the committed history — ordered, unique,
/// whole per revision, with the right `prev_kv` and creation information, its `NODELETE`
/// filter honoured, and no event after a progress notification (requested, or periodic with
/// `--experimental-watch-progress-notify-interval=200ms`) that claimed its revision.
pub async fn watch_under_faults() -> u64 {
    let mut cluster =
        Cluster::start_with_flags(3, &["--experimental-watch-progress-notify-interval=200ms"]);
    cluster.wait_for_leader(&ALL).await;
    let endpoints: Vec<String> = ALL.iter().map(|&m| cluster.endpoint(m)).collect();
    let spec = |prev_kv: bool, no_delete: bool, progress: bool| Spec {
        prefix: b"w/".to_vec(),
        start_revision: 1,
        prev_kv,
        no_delete,
        progress_every: progress.then(|| Duration::from_millis(50)),
        progress_notify: !progress,
        progress_at_open: false,
    };
    let client = cluster.client_host().clone();
    let stop_load = Arc::new(AtomicBool::new(false));
    spawn_load(&client, endpoints.clone(), "w/", stop_load.clone());
    let watchers = [
        (
            "prev_kv + progress, from m1",
            Watcher::spawn(&client, endpoints.clone(), 0, spec(true, false, true)),
        ),
        (
            "plain + progress, from m2",
            Watcher::spawn(&client, endpoints.clone(), 1, spec(false, false, true)),
        ),
        (
            "NODELETE + prev_kv, from m3",
            Watcher::spawn(&client, endpoints.clone(), 2, spec(true, true, false)),
        ),
    ];
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::KeepPrefix,
        CrashMode::TearNext,
        CrashMode::KeepSubset,
    ];
    for round in 0..4 {
        let fault = madsim::rand::thread_rng().gen_range(0..3);
        match fault {
            0 => {
                let leader = cluster.wait_for_leader(&ALL).await;
                cluster.kill(leader);
                write_mix(&mut cluster, &others(leader), round, 12).await;
                cluster.restart(leader);
            }
            1 => {
                let leader = cluster.wait_for_leader(&ALL).await;
                cluster.partition(&[leader]);
                write_mix(&mut cluster, &ALL, round, 12).await;
                cluster.heal();
            }
            _ => {
                let victim = madsim::rand::thread_rng().gen_range(0..3);
                let mode = modes[madsim::rand::thread_rng().gen_range(0..modes.len())];
                cluster.crash(victim, mode);
                write_mix(&mut cluster, &others(victim), round, 12).await;
                cluster.restart(victim);
            }
        }
        write_mix(&mut cluster, &ALL, round, 6).await;
    }
    stop_load.store(true, Ordering::SeqCst);
    let leader = cluster.wait_for_leader(&ALL).await;
    let last = loop {
        if let Ok(revision) = cluster.put(leader, "w/last", "end").await {
            break revision;
        }
    };
    let watchers: Vec<(&str, &Watcher)> = watchers.iter().map(|(n, w)| (*n, w)).collect();
    check_watchers(&mut cluster, leader, last, &watchers).await;
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// The events a single-member watcher of `prefix` from `start` has received by the time its
/// newest event reaches `last` (or the cancel it got instead).
async fn watch_once(
    cluster: &Cluster,
    member: usize,
    prefix: &str,
    start: i64,
    last: i64,
) -> Result<Vec<Seen>, i64> {
    let watcher = Watcher::spawn(
        cluster.client_host(),
        vec![cluster.endpoint(member)],
        0,
        Spec {
            prefix: prefix.as_bytes().to_vec(),
            start_revision: start,
            prev_kv: true,
            no_delete: false,
            progress_every: None,
            progress_notify: false,
            progress_at_open: false,
        },
    );
    let canceled = || {
        watcher.log.lock().unwrap().iter().find_map(|r| match r {
            Received::Canceled {
                compact_revision, ..
            } => Some(*compact_revision),
            _ => None,
        })
    };
    cluster
        .wait_until(
            &format!("a watch on m{} from {start} ends", member + 1),
            Duration::from_secs(30),
            || async { watcher.last_revision() >= last || canceled().is_some() },
        )
        .await;
    if let Some(compacted) = canceled() {
        return Err(compacted);
    }
    Ok(watcher.events())
}

/// etcd#18089 and #19179: a delete at exactly the compaction revision still reaches a watch from
/// that revision — on every member once the compaction is replicated, and on a member restarted
/// afterwards — while a watch from below it is canceled with the compaction revision.
pub async fn watch_from_compaction_revision() -> u64 {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(&ALL).await;
    cluster.put(leader, "c/a", "1").await.expect("put");
    cluster.put(leader, "c/b", "2").await.expect("put");
    let deleted_at = cluster.delete(leader, "c/a", "").await.expect("delete");
    let last = cluster.put(leader, "c/b", "3").await.expect("put");
    let follower = others(leader)[0];
    cluster
        .compact(follower, deleted_at)
        .await
        .expect("compact through a follower");
    let check_member = |events: Result<Vec<Seen>, i64>, member: usize| {
        let events = events.unwrap_or_else(|c| panic!("m{}: canceled at {c}", member + 1));
        let summary: Vec<(bool, String, i64)> = events
            .iter()
            .map(|e| {
                (
                    e.delete,
                    String::from_utf8_lossy(&e.key).into_owned(),
                    e.mod_revision,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (true, "c/a".to_string(), deleted_at),
                (false, "c/b".to_string(), last)
            ],
            "m{}: a watch from the compaction revision",
            member + 1
        );
        // prev_kv is read at the revision before the event: gone for the delete (compacted),
        // there for the put after it.
        assert_eq!(events[0].prev, None);
        assert!(events[1].prev.is_some());
    };
    for member in ALL {
        // Every member applies the compaction before it answers: wait for its HashKV to say so.
        cluster
            .wait_until(
                &format!("m{} applies the compaction", member + 1),
                Duration::from_secs(30),
                || async {
                    cluster
                        .hash_kv(member, 0)
                        .await
                        .is_ok_and(|h| h.compact_revision == deleted_at)
                },
            )
            .await;
        let events = watch_once(&cluster, member, "c/", deleted_at, last).await;
        check_member(events, member);
        let below = watch_once(&cluster, member, "c/", deleted_at - 1, last).await;
        assert_eq!(
            below.err(),
            Some(deleted_at),
            "m{}: a watch from below the compaction is canceled with its revision",
            member + 1
        );
    }
    cluster.kill(follower);
    cluster.restart(follower);
    // Until it has re-applied the compaction from its log, a restarted member still has the
    // older history (as an etcd member replaying its WAL): wait for that.
    cluster
        .wait_until(
            "the restarted member re-applies the compaction",
            Duration::from_secs(60),
            || async {
                cluster
                    .hash_kv(follower, 0)
                    .await
                    .is_ok_and(|h| h.compact_revision == deleted_at)
            },
        )
        .await;
    let events = watch_once(&cluster, follower, "c/", deleted_at, last).await;
    check_member(events, follower);
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// etcd#15271, #9086, #20221: a member that was cut off long enough to be sent a snapshot
/// (`--snapshot-count=20`, so the leader has purged the log it missed) installs it while
/// watchers are open on it — one from the start, one opened "from now" while it was cut off —
/// and both go on with exactly the committed history: nothing missed in the jump, nothing
/// twice, nothing going back.
pub async fn watch_across_snapshot_install() -> u64 {
    let mut cluster = Cluster::start_with_flags(3, &["--snapshot-count=20"]);
    let leader = cluster.wait_for_leader(&ALL).await;
    let cut_off = others(leader)[madsim::rand::thread_rng().gen_range(0..2)];
    let client = cluster.client_host().clone();
    let spec = |start_revision: i64| Spec {
        prefix: b"w/".to_vec(),
        start_revision,
        prev_kv: true,
        no_delete: false,
        progress_every: Some(Duration::from_millis(300)),
        progress_notify: true,
        progress_at_open: false,
    };
    let only_cut_off = vec![cluster.endpoint(cut_off)];
    write_mix(&mut cluster, &ALL, 0, 10).await;
    let from_start = Watcher::spawn(&client, only_cut_off.clone(), 0, spec(1));
    cluster.partition(&[cut_off]);
    // Opened on the cut-off member "from now": its now is stale, and stays so until the snapshot.
    let stale_now = cluster
        .hash_kv(cut_off, 0)
        .await
        .ok()
        .and_then(|h| h.header)
        .map_or(1, |h| h.revision);
    let from_now = Watcher::spawn(&client, only_cut_off, 0, spec(stale_now + 1));
    let majority = others(cut_off);
    for round in 1..=4 {
        write_mix(&mut cluster, &majority, round, 25).await;
    }
    cluster.heal();
    let last = loop {
        if let Ok(revision) = cluster.put(leader, "w/last", "end").await {
            break revision;
        }
    };
    let watchers = [("from the start", &from_start), ("from now", &from_now)];
    check_watchers(&mut cluster, leader, last, &watchers).await;
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// etcd's slow-watcher starvation class, and etcd#15220 (a progress notification ahead of events
/// still owed). A backlog longer than one response's 1,000 revisions is written, one member is
/// restarted (its cache is empty, so its watchers read the backlog from redb), and then, with no
/// writes at all, each member gets one stream carrying a live watch and two from revision 1, with
/// a progress request right behind the creates. The ones from revision 1 must catch up within 5
/// simulated seconds although nothing new is applied (a stream that waits for a write to go on
/// catching up starves them), and the progress answer must not claim revisions still owed. Then
/// writes resume and more watchers from revision 1 open while the live ones must keep up; every
/// watcher's events must be exactly the committed history.
pub async fn behind_watchers_catch_up() -> u64 {
    let mut cluster = Cluster::start(3);
    let mut leader = cluster.wait_for_leader(&ALL).await;
    let backlog = madsim::rand::thread_rng().gen_range(2100..2600);
    write_backlog(&cluster, leader, backlog).await;
    let restarted = madsim::rand::thread_rng().gen_range(0..3);
    cluster.kill(restarted);
    cluster.restart(restarted);
    leader = cluster.wait_for_leader(&ALL).await;
    let last = loop {
        if let Ok(revision) = cluster.put(leader, "b/end", "backlog").await {
            break revision;
        }
    };
    for member in ALL {
        cluster
            .wait_until(
                &format!("m{} applies revision {last}", member + 1),
                Duration::from_secs(30),
                || async {
                    cluster
                        .hash_kv(member, 0)
                        .await
                        .ok()
                        .and_then(|h| h.header)
                        .is_some_and(|h| h.revision >= last)
                },
            )
            .await;
    }
    let spec = |start_revision: i64, prev_kv: bool, no_delete: bool| Spec {
        prefix: b"b/".to_vec(),
        start_revision,
        prev_kv,
        no_delete,
        progress_every: None,
        progress_notify: false,
        progress_at_open: true,
    };
    let client = cluster.client_host().clone();
    let mut live = Vec::new();
    let mut behind = Vec::new();
    for member in ALL {
        let watches = vec![
            (0, spec(last + 1, true, false)),
            (1, spec(1, true, false)),
            (1, spec(1, false, true)),
        ];
        let mut stream = spawn_stream(&client, cluster.endpoint(member), member, watches);
        let name = |what: &str| format!("m{} {what}", member + 1);
        behind.push((name("from 1, NODELETE"), stream.pop().expect("3 watches")));
        behind.push((name("from 1, prev_kv"), stream.pop().expect("3 watches")));
        live.push((name("live"), stream.pop().expect("3 watches")));
    }
    cluster
        .wait_until(
            &format!(
                "watchers from revision 1 reach {last} with no writes (m{} restarted)",
                restarted + 1
            ),
            Duration::from_secs(5),
            || async { behind.iter().all(|(_, w)| w.last_revision() >= last) },
        )
        .await;
    // Writes resume: watchers from revision 1 open (and re-open) while the live ones keep up.
    let endpoints: Vec<String> = ALL.iter().map(|&m| cluster.endpoint(m)).collect();
    let stop_load = Arc::new(AtomicBool::new(false));
    spawn_load(&client, endpoints.clone(), "b/", stop_load.clone());
    for member in ALL {
        let spec = Spec {
            progress_every: Some(Duration::from_millis(40)),
            ..spec(1, true, false)
        };
        let watcher = Watcher::spawn(&client, endpoints.clone(), member, spec);
        behind.push((
            format!("resumable from 1, first on m{}", member + 1),
            watcher,
        ));
    }
    madsim::time::sleep(Duration::from_secs(3)).await;
    stop_load.store(true, Ordering::SeqCst);
    let last = loop {
        if let Ok(revision) = cluster.put(leader, "b/last", "end").await {
            break revision;
        }
    };
    cluster
        .wait_until(
            &format!("every live watcher sees revision {last} within 1 s"),
            Duration::from_secs(1),
            || async { live.iter().all(|(_, w)| w.last_revision() >= last) },
        )
        .await;
    let watchers: Vec<(&str, &Watcher)> = live
        .iter()
        .chain(&behind)
        .map(|(name, w)| (name.as_str(), w))
        .collect();
    check_watchers(&mut cluster, leader, last, &watchers).await;
    cluster.trace_hash()
}

/// `count` writes under `b/` through `member` on one connection, 16 in flight (puts, and every
/// ninth a delete): a long history written quickly. There are no faults, so each must succeed.
async fn write_backlog(cluster: &Cluster, member: usize, count: usize) {
    use detcd::pb::etcdserverpb::{kv_client::KvClient, DeleteRangeRequest, PutRequest};
    let endpoint = cluster.endpoint(member);
    let writes = async move {
        let channel = crate::cluster::connect(&endpoint).await.expect("connect");
        let kv = KvClient::new(channel);
        let indexes: Vec<usize> = (0..count).collect();
        for chunk in indexes.chunks(16) {
            let calls = chunk.iter().map(|&i| {
                let mut kv = kv.clone();
                async move {
                    let key = format!("b/k{}", i % 37).into_bytes();
                    if i % 9 == 8 {
                        let request = DeleteRangeRequest {
                            key,
                            ..Default::default()
                        };
                        kv.delete_range(request).await.map(drop)
                    } else {
                        let request = PutRequest {
                            key,
                            value: format!("v{i}").into_bytes().into(),
                            ..Default::default()
                        };
                        kv.put(request).await.map(drop)
                    }
                }
            });
            for result in futures::future::join_all(calls).await {
                result.expect("a backlog write (there are no faults)");
            }
        }
    };
    cluster
        .client_host()
        .spawn(writes)
        .await
        .expect("backlog writer");
}

/// What one round of [`answered_writes_are_readable`] saw, in revisions.
#[derive(Debug)]
struct AnsweredRound {
    /// The put's answer.
    put: i64,
    /// The serializable read right after it: the key's `mod_revision` (0 if not found).
    read: i64,
    /// The header of the watch created after that (from "now"): where it starts, less one.
    created: i64,
    /// The next put's answer, and the first event the watch got.
    next_put: i64,
    first_event: i64,
}

/// The leader answers a batch's clients before its state machine commits the batch (in real
/// mode the commit follows within tens of microseconds; here the leader's store takes 20-60 ms
/// of simulated time for each). What a client was told is written is what it finds next on that
/// member: a serializable read right after the put sees it, and a watch created right after
/// starts after it (its creation header is at the put's revision or later, and its first event
/// is the next put, not this one). Caught without the fence: `AnswerNotFenced`.
///
/// Then the same through a follower, whose store is slowed the same way: it forwards the put
/// to the leader and, as etcd's followers, answers only once it has applied the put itself, so
/// the same holds there. Caught when it passes the leader's answer on at once:
/// `ForwardedAnswerNotApplied`.
pub async fn answered_writes_are_readable() -> u64 {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(&ALL).await;
    let follower = (leader + 1) % ALL.len();
    let latency = Duration::from_millis(madsim::rand::thread_rng().gen_range(20..60));
    for (through, rounds) in [(leader, 0..4), (follower, 4..8)] {
        cluster.slow_commits(through, latency);
        let role = if through == leader {
            "leader"
        } else {
            "follower"
        };
        for round in rounds {
            let outcome = cluster
                .on_client(through, Duration::from_secs(15), move |channel| {
                    answered_round(channel, round)
                })
                .await;
            cluster.record(format!("answered round {round}: {outcome:?}"));
            let seen =
                outcome.unwrap_or_else(|e| panic!("round {round}: a healthy {role} failed: {e}"));
            assert_eq!(
                seen.read, seen.put,
                "round {round}: a serializable read on the {role} right after its put's answer \
                 did not see the put: {seen:?}"
            );
            assert!(
                seen.created >= seen.put,
                "round {round}: a watch created on the {role} after a put's answer starts \
                 before it: {seen:?}"
            );
            assert_eq!(
                seen.first_event, seen.next_put,
                "round {round}: a watch created on the {role} after a put's answer got an event \
                 other than the next put first: {seen:?}"
            );
        }
        cluster.members[through]
            .disk
            .set_commit_latency(Duration::ZERO);
    }
    crate::check::state::check(&cluster, &ALL).await;
    cluster.trace_hash()
}

/// One round of [`answered_writes_are_readable`], on one connection to the leader.
async fn answered_round(
    channel: tonic::transport::Channel,
    round: usize,
) -> Result<AnsweredRound, tonic::Status> {
    use detcd::pb::etcdserverpb::kv_client::KvClient;
    use detcd::pb::etcdserverpb::watch_client::WatchClient;
    use detcd::pb::etcdserverpb::watch_request::RequestUnion;
    use detcd::pb::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
    use futures::StreamExt;

    let revision = |header: Option<detcd::pb::etcdserverpb::ResponseHeader>| {
        header.map_or(0, |header| header.revision)
    };
    let prefix = format!("answered{round}/");
    let key = format!("{prefix}a").into_bytes();
    let mut kv = KvClient::new(channel.clone());
    let put = |key: Vec<u8>| PutRequest {
        key,
        value: b"v".to_vec().into(),
        ..Default::default()
    };
    let put_revision = revision(kv.put(put(key.clone())).await?.into_inner().header);
    let read = kv
        .range(RangeRequest {
            key: key.clone(),
            serializable: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let read_revision = read.kvs.first().map_or(0, |kv| kv.mod_revision);
    let (mut requests, receiver) = futures::channel::mpsc::channel(4);
    let create = WatchCreateRequest {
        key: prefix.clone().into_bytes(),
        range_end: detcd::mvcc::KeyRange::prefix(prefix.as_bytes()).range_end,
        ..Default::default()
    };
    requests
        .try_send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .expect("an empty channel takes a request");
    let mut stream = WatchClient::new(channel)
        .watch(receiver)
        .await?
        .into_inner();
    let created = stream
        .next()
        .await
        .ok_or_else(|| tonic::Status::unavailable("watch stream ended"))??;
    assert!(created.created, "the first watch response is its creation");
    let next_put = revision(
        kv.put(put(format!("{prefix}b").into_bytes()))
            .await?
            .into_inner()
            .header,
    );
    let first_event = loop {
        let response = stream
            .next()
            .await
            .ok_or_else(|| tonic::Status::unavailable("watch stream ended"))??;
        if let Some(event) = response.events.first() {
            break event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        }
    };
    drop(requests);
    Ok(AnsweredRound {
        put: put_revision,
        read: read_revision,
        created: revision(created.header),
        next_put,
        first_event,
    })
}

/// Watch pacing (`src/api/watch.rs`): when revisions come less than the pace interval apart, a
/// stream holds each new one for the next, or for a quarter longer than the interval at most.
/// madsim-tonic's simulated server takes in about one request per 2 ms, so the members run with
/// `--watch-pace-interval=5ms` (800 us by default): bursts of writes from 16 connections through
/// a random member are paced on every member, where two watchers share one stream. Every
/// watcher must get each burst's last revision (a NODELETE watcher its last put), which
/// nothing follows, within a second of simulated time; at the end every watcher's events are
/// checked against the reference history (each revision whole, in order, once). The run must
/// have held revisions: some response carries several. Caught without the deadline:
/// `HeldWithoutDeadline`.
pub async fn paced_watchers_get_every_revision() -> u64 {
    let mut cluster = Cluster::start_with_flags(3, &["--watch-pace-interval=5ms"]);
    let mut rng = madsim::rand::thread_rng();
    let latency = Duration::from_micros(rng.gen_range(20..100));
    cluster.set_network(0.0, latency..latency * 2);
    for member in ALL {
        cluster.slow_disk(member, Duration::from_micros(rng.gen_range(50..200)));
    }
    let leader = cluster.wait_for_leader(&ALL).await;
    let base = cluster
        .put(leader, "p/start", "start")
        .await
        .expect("a put on a healthy cluster");
    let spec = |prev_kv: bool, no_delete: bool| Spec {
        prefix: b"p/".to_vec(),
        start_revision: base + 1,
        prev_kv,
        no_delete,
        progress_every: None,
        progress_notify: false,
        progress_at_open: false,
    };
    let client = cluster.client_host().clone();
    let mut watchers = Vec::new();
    for member in ALL {
        let watches = vec![(base + 1, spec(true, false)), (base + 1, spec(false, true))];
        for (i, watcher) in spawn_stream(&client, cluster.endpoint(member), member, watches)
            .into_iter()
            .enumerate()
        {
            watchers.push((format!("m{} watch {}", member + 1, i + 1), watcher));
        }
    }
    // Every watcher live (synced) before the bursts: what they get from here on is paced.
    let warm = cluster
        .put(leader, "p/warm", "up")
        .await
        .expect("a put on a healthy cluster");
    cluster
        .wait_until(
            "every watcher gets the first put",
            Duration::from_secs(5),
            || async { watchers.iter().all(|(_, w)| w.last_revision() >= warm) },
        )
        .await;
    let live_from: Vec<usize> = watchers
        .iter()
        .map(|(_, w)| w.log.lock().unwrap().len())
        .collect();
    let mut last = warm;
    for round in 0..5 {
        let through = rng.gen_range(0..3);
        let count = rng.gen_range(40..120);
        let endpoint = cluster.endpoint(through);
        let burst = async move { burst(endpoint, round, count).await };
        let (burst_last, last_put) = cluster
            .client_host()
            .spawn(burst)
            .await
            .expect("burst writer");
        // What each watcher must get: the burst's last revision (a NODELETE watcher: its last
        // put's).
        let wanted = |w: &Watcher| {
            if w.spec.no_delete {
                last_put
            } else {
                burst_last
            }
        };
        last = burst_last;
        let written = madsim::time::Instant::now();
        loop {
            if watchers.iter().all(|(_, w)| w.last_revision() >= wanted(w)) {
                break;
            }
            let waited = written.elapsed();
            assert!(
                waited < Duration::from_secs(1),
                "round {round}: the last revision of a burst ({last}, last put {last_put}, \
                 {count} writes through m{}) not delivered to every watcher after {waited:?}: \
                 {:?}",
                through + 1,
                watchers
                    .iter()
                    .map(|(name, w)| format!("{name} at {}", w.last_revision()))
                    .collect::<Vec<_>>()
            );
            madsim::time::sleep(Duration::from_millis(1)).await;
        }
        cluster.record(format!(
            "burst {round}: {count} writes through m{}, last revision {last} everywhere after {:?}",
            through + 1,
            written.elapsed()
        ));
    }
    let held: usize = watchers
        .iter()
        .zip(&live_from)
        .map(|((_, w), &from)| {
            w.log.lock().unwrap()[from..]
                .iter()
                .filter(|received| match received {
                    Received::Events { events } => events
                        .windows(2)
                        .any(|pair| pair[0].mod_revision != pair[1].mod_revision),
                    _ => false,
                })
                .count()
        })
        .sum();
    cluster.record(format!("responses with several revisions: {held}"));
    assert!(
        held > 0,
        "no live response carried several revisions: pacing was not exercised"
    );
    // One put every watcher wants, well after the bursts, then every event checked.
    madsim::time::sleep(Duration::from_millis(50)).await;
    let end = cluster
        .put(leader, "p/end", "end")
        .await
        .expect("a put on a healthy cluster");
    assert!(end > last);
    let named: Vec<(&str, &Watcher)> = watchers.iter().map(|(n, w)| (n.as_str(), w)).collect();
    check_watchers(&mut cluster, leader, end, &named).await;
    cluster.trace_hash()
}

/// `count` writes under `p/` through `endpoint` from 16 connections, each writing in turn
/// (puts, every seventh a delete); answers the highest revision written and the highest a put
/// wrote. There are no faults: each must succeed.
async fn burst(endpoint: String, round: usize, count: usize) -> (i64, i64) {
    use detcd::pb::etcdserverpb::{kv_client::KvClient, DeleteRangeRequest, PutRequest};
    let mut kvs = Vec::new();
    for _ in 0..16 {
        let channel = crate::cluster::connect(&endpoint).await.expect("connect");
        kvs.push(KvClient::new(channel));
    }
    let writers = kvs.iter().enumerate().map(|(writer, kv)| {
        let mut kv = kv.clone();
        async move {
            let (mut last, mut last_put) = (0, 0);
            for i in (writer..count).step_by(16) {
                let key = format!("p/k{}", i % 23).into_bytes();
                let revision = |header: Option<detcd::pb::etcdserverpb::ResponseHeader>| {
                    header.map_or(0, |h| h.revision)
                };
                if i % 7 == 6 {
                    let request = DeleteRangeRequest {
                        key,
                        ..Default::default()
                    };
                    let answer = kv.delete_range(request).await;
                    let answer = answer.expect("a burst write (there are no faults)");
                    last = last.max(revision(answer.into_inner().header));
                } else {
                    let request = PutRequest {
                        key,
                        value: format!("v{round}.{i}").into_bytes().into(),
                        ..Default::default()
                    };
                    let answer = kv.put(request).await;
                    let answer = answer.expect("a burst write (there are no faults)");
                    let written = revision(answer.into_inner().header);
                    (last, last_put) = (last.max(written), last_put.max(written));
                }
            }
            (last, last_put)
        }
    });
    futures::future::join_all(writers)
        .await
        .into_iter()
        .fold((0, 0), |(a, b), (c, d)| (a.max(c), b.max(d)))
}
