//! The chaos scenario: the seed draws nemesis options, clients, watchers and lease providers run
//! through the fault schedule (the safety phase), the faults stop (the liveness phase), and every
//! checker runs on what happened: linearizability, durability, Raft, state, liveness, watch and
//! lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::rand::Rng;

use crate::check::{self, Committed};
use crate::cluster::Cluster;
use crate::history::{perform_on, History, Op, Outcome, LEASED, PREFIX};
use crate::lease::{self, End};
use crate::nemesis::{self, Options};
use crate::watch::{check_watchers, Spec, Watcher};

/// One seed of chaos; returns the trace hash (the options, the schedule, every client operation
/// with its outcome and time, and what each checker counted).
pub async fn chaos() -> u64 {
    let options = Options::draw();
    let snapshot_count = options
        .snapshot_count
        .map(|count| format!("--snapshot-count={count}"));
    let mut flags = vec!["--experimental-watch-progress-notify-interval=500ms"];
    flags.extend(snapshot_count.as_deref());
    let mut cluster = Cluster::start_with_flags(options.size, &flags);
    cluster.record(format!("options: {options}"));
    if std::env::var_os("DETCD_SIM_VERBOSE").is_some() {
        println!("options: {options}");
    }
    let members: Vec<usize> = (0..options.size).collect();
    cluster.wait_for_leader(&members).await;
    let endpoints: Vec<String> = members.iter().map(|&m| cluster.endpoint(m)).collect();

    // Safety phase: clients, watchers and the nemesis.
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = history.spawn_clients(
        cluster.client_host(),
        endpoints.clone(),
        &options.workload,
        stop.clone(),
    );
    let watchers: Vec<(String, Watcher)> = (0..options.watchers)
        .map(|i| {
            let mut rng = madsim::rand::thread_rng();
            let spec = Spec {
                prefix: PREFIX.as_bytes().to_vec(),
                start_revision: 1,
                prev_kv: rng.gen_bool(0.5),
                no_delete: rng.gen_bool(0.3),
                progress_every: rng.gen_bool(0.3).then(|| Duration::from_millis(200)),
                progress_notify: rng.gen_bool(0.5),
                progress_at_open: false,
            };
            let first = rng.gen_range(0..options.size);
            let name = format!(
                "{i} (prev_kv {}, no_delete {}, from m{})",
                spec.prev_kv,
                spec.no_delete,
                first + 1
            );
            (
                name,
                Watcher::spawn(cluster.client_host(), endpoints.clone(), first, spec),
            )
        })
        .collect();
    let deletes = lease::spawn_delete_watchers(cluster.client_host(), endpoints.clone(), LEASED, 1);
    let providers: Vec<_> = options
        .providers
        .iter()
        .enumerate()
        .map(|(i, &(ttl, life, revokes))| {
            lease::spawn_provider(
                cluster.client_host(),
                endpoints.clone(),
                format!("{LEASED}{i}"),
                (ttl, Duration::from_millis(ttl as u64 * 1000 / 3)),
                life,
                if revokes { End::Revokes } else { End::Dies },
            )
        })
        .collect();
    nemesis::run(&mut cluster, &options).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("client task");
    }

    // Liveness phase: no faults. A member that refused its corrupted disk stays down.
    let fenced = cluster.fenced();
    let members: Vec<usize> = members
        .into_iter()
        .filter(|m| !fenced.contains(m))
        .collect();
    cluster.record(format!("fenced: {fenced:?}"));
    let recovered = check::liveness::check(&cluster, &members, &history).await;
    let healthy = madsim::time::Instant::now();
    cluster.record(format!("live after {recovered:?}"));
    lease::wait_settled(&cluster, &providers, &deletes, Duration::from_secs(60)).await;
    let (leases, margin) = lease::check(&providers, &deletes, healthy);
    cluster.record(format!(
        "leases checked {leases}, smallest margin {margin}ms"
    ));

    // The checkers, up to a last put through the leader (a put: every watcher sees it).
    let leader = cluster.wait_for_leader(&members).await;
    let end = Op::Put {
        key: format!("{PREFIX}end"),
        value: "c999.1".to_string(),
    };
    let index = history.invoke(999, leader, end.clone());
    let outcome = perform_on(cluster.client_host(), &cluster.endpoint(leader), &end).await;
    let Outcome::Ok(answer) = &outcome else {
        panic!(
            "the last put through the leader m{} failed after liveness",
            leader + 1
        );
    };
    let last = answer.revision;
    history.complete(index, outcome);
    let records = history.records();
    let named: Vec<(&str, &Watcher)> = watchers.iter().map(|(n, w)| (n.as_str(), w)).collect();
    let reference = if named.is_empty() {
        crate::watch::reference(&mut cluster, leader, PREFIX, last).await
    } else {
        check_watchers(&mut cluster, leader, last, &named).await
    };
    let committed = Committed::from_events(&reference);
    let durable = check::durability::check(&records, &committed);
    let linear = check::linearizable::check(&records, &committed);
    check::state::check(&cluster, &members).await;
    let hosts = cluster.host_names();
    let name = |host: u64| {
        hosts
            .iter()
            .find(|(id, _)| *id == host)
            .map_or(format!("host {host}"), |(_, n)| n.clone())
    };
    let raft = check::raft::check(&detcd::env::probe::take(), name);
    for record in &records {
        cluster.record(record.to_string());
    }
    let line = format!(
        "checked: {} operations ({linear:?}), {durable} acknowledged writes durable, {} \
         revisions, raft {raft:?}, live after {recovered:?}, {leases} leases (margin {margin} ms)",
        records.len(),
        committed.last()
    );
    if std::env::var_os("DETCD_SIM_VERBOSE").is_some() {
        println!("{line}");
    }
    cluster.record(line);
    cluster.trace_hash()
}
