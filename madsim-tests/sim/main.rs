//! Simulation tests: whole detcd clusters inside madsim, on seeds.
//!
//! Each scenario runs over a seed range (`DETCD_SIM_SEEDS=a..b`, default `1..33`) plus one random
//! seed that is printed, or over exactly one seed (`DETCD_SIM_SEED=n`). A failure prints the
//! seed and the one command that replays it. `determinism` runs one seed of each scenario twice
//! under madsim's determinism checker and compares our own trace hashes.
//!
//! Build: `RUSTFLAGS="--cfg madsim" cargo test --target-dir target/madsim --test sim`.

#![cfg(madsim)]
// Test code drives real processes and threads: the seam rule (.clippy.toml) is for src/.
#![allow(clippy::disallowed_methods)]

mod chaos;
mod check;
mod cluster;
mod history;
mod lease;
mod nemesis;
mod scenarios;
mod sensitivity;
mod watch;

use std::future::Future;
use std::time::Duration;

use madsim::runtime::Runtime;
use madsim::Config;

/// Seeds to run: `DETCD_SIM_SEED`, or `DETCD_SIM_SEEDS` (`a..b`) plus one random seed.
fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("DETCD_SIM_SEED") {
        return vec![seed.parse().expect("DETCD_SIM_SEED is a number")];
    }
    let range = std::env::var("DETCD_SIM_SEEDS").unwrap_or_else(|_| "1..33".to_string());
    let (start, end) = range
        .split_once("..")
        .expect("DETCD_SIM_SEEDS looks like 1..100");
    let (start, end): (u64, u64) = (
        start.parse().expect("seed range start"),
        end.parse().expect("seed range end"),
    );
    let mut seeds: Vec<u64> = (start..end).collect();
    // One fresh seed per run, so CI keeps exploring; printed so it can be replayed.
    let random = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000_000)
        .unwrap_or(0);
    seeds.push(random);
    seeds
}

/// The one command that replays `test` on `seed` (the options and the schedule follow from the
/// seed), and the commit it must be run at.
fn replay_command(test: &str, seed: u64) -> String {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    format!(
        "DETCD_SIM_SEED={seed} RUSTFLAGS=\"--cfg madsim\" cargo test --target-dir target/madsim \
         --test sim -- --exact {test} --nocapture   (at commit {commit}; DETCD_SIM_TRACE=1 prints \
         the trace)"
    )
}

/// Runs `scenario` on `seed` in a fresh thread: madsim seeds std's `RandomState` only for a
/// thread's first hash map, so a reused thread would carry the previous run's state.
fn run_seed<F>(seed: u64, scenario: fn() -> F) -> std::thread::Result<u64>
where
    F: Future<Output = u64> + 'static,
{
    run_seed_with(seed, scenario, None, "seed").map(|(hash, _)| hash)
}

/// [`run_seed`] with `bug` re-introduced, on a thread named `thread`; also answers the
/// simulated time the run took.
fn run_seed_with<F>(
    seed: u64,
    scenario: fn() -> F,
    bug: Option<detcd::env::bugs::Bug>,
    thread: &str,
) -> std::thread::Result<(u64, Duration)>
where
    F: Future<Output = u64> + 'static,
{
    std::thread::Builder::new()
        .name(thread.to_string())
        .spawn(move || {
            let mut runtime = Runtime::with_seed_and_config(seed, Config::default());
            runtime.set_time_limit(Duration::from_secs(600));
            runtime.block_on(async move {
                detcd::env::bugs::enable(bug);
                let started = madsim::time::Instant::now();
                let hash = scenario().await;
                (hash, started.elapsed())
            })
        })
        .expect("a thread for the seed")
        .join()
}

/// Runs `scenario` on every seed; on failure prints the seed and its replay command.
fn sweep<F>(test: &str, scenario: fn() -> F)
where
    F: Future<Output = u64> + 'static,
{
    sweep_seeds(test, scenario, seeds());
}

/// A sweep of a slow scenario whose schedule hardly depends on the seed (minutes of simulated
/// time): by default only the first `count` seeds and the random one; `DETCD_SIM_SEEDS` or
/// `DETCD_SIM_SEED` choose as for every sweep.
fn short_sweep<F>(test: &str, scenario: fn() -> F, count: usize)
where
    F: Future<Output = u64> + 'static,
{
    let mut seeds = seeds();
    if std::env::var("DETCD_SIM_SEEDS").is_err() && seeds.len() > count + 1 {
        let random = seeds.pop().expect("the random seed");
        seeds.truncate(count);
        seeds.push(random);
    }
    sweep_seeds(test, scenario, seeds);
}

fn sweep_seeds<F>(test: &str, scenario: fn() -> F, seeds: Vec<u64>)
where
    F: Future<Output = u64> + 'static,
{
    assert!(!seeds.is_empty(), "no seeds to run");
    let wall = std::time::Instant::now();
    let mut simulated = Duration::ZERO;
    let count = seeds.len();
    for seed in seeds {
        match run_seed_with(seed, scenario, None, "seed") {
            Ok((trace_hash, took)) => {
                simulated += took;
                println!("{test}: seed {seed} ok, trace {trace_hash:016x}, simulated {took:.1?}");
            }
            Err(panic) => {
                eprintln!(
                    "\n{test}: FAILED on seed {seed}\nreplay: {}\n",
                    replay_command(test, seed)
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
    let wall = wall.elapsed();
    println!(
        "{test}: {count} seeds ok, {:.0} simulated minutes in {:.1} wall seconds ({:.1} simulated \
         seconds per wall second)",
        simulated.as_secs_f64() / 60.0,
        wall.as_secs_f64(),
        simulated.as_secs_f64() / wall.as_secs_f64()
    );
}

/// One seed, three times: under madsim's checker (which compares every random draw of two
/// runs), then again after a different seed has run in the same process. All three trace hashes
/// (every client operation, its outcome and its simulated time) must be equal.
fn check_determinism<F>(test: &str, seed: u64, scenario: fn() -> F)
where
    F: Future<Output = u64> + 'static,
{
    let checked = Runtime::check_determinism(seed, Config::default(), scenario);
    run_seed(seed.wrapping_add(1), scenario).expect("the neighbouring seed runs");
    let again = run_seed(seed, scenario).expect("the seed runs again");
    assert_eq!(
        checked,
        again,
        "{test}: seed {seed} gave two different traces\nreplay: {}",
        replay_command(test, seed)
    );
    println!("{test}: seed {seed} deterministic, trace {checked:016x}");
}

#[test]
fn leader_killed() {
    sweep("leader_killed", scenarios::leader_killed);
}

#[test]
fn leader_partitioned() {
    sweep("leader_partitioned", scenarios::leader_partitioned);
}

#[test]
fn unanswered_follower_catches_up() {
    sweep(
        "unanswered_follower_catches_up",
        scenarios::unanswered_follower_catches_up,
    );
}

#[test]
fn crash_recovery() {
    sweep("crash_recovery", scenarios::crash_recovery);
}

#[test]
fn leader_crash_after_ack() {
    sweep("leader_crash_after_ack", scenarios::leader_crash_after_ack);
}

#[test]
fn corrupted_disk_is_fenced() {
    sweep(
        "corrupted_disk_is_fenced",
        scenarios::corrupted_disk_is_fenced,
    );
}

/// The simulator's speed for a 3-member cluster under a steady 1,000 puts per simulated second
/// (the sweep prints simulated seconds per wall second); 1 seed and the random one unless
/// `DETCD_SIM_SEEDS` says.
#[test]
fn steady_load() {
    short_sweep("steady_load", scenarios::steady_load, 1);
}

#[test]
fn answered_writes_are_readable() {
    sweep(
        "answered_writes_are_readable",
        scenarios::answered_writes_are_readable,
    );
}

#[test]
fn paced_watchers_get_every_revision() {
    sweep(
        "paced_watchers_get_every_revision",
        scenarios::paced_watchers_get_every_revision,
    );
}

#[test]
fn group_commit() {
    sweep("group_commit", scenarios::group_commit);
}

#[test]
fn auto_compaction_by_revision() {
    short_sweep(
        "auto_compaction_by_revision",
        scenarios::auto_compaction_by_revision,
        4,
    );
}

/// Each seed simulates two minutes of mostly waiting for etcd's periodic schedule: 8 seeds and
/// the random one unless `DETCD_SIM_SEEDS` says.
#[test]
fn auto_compaction_periodic() {
    short_sweep(
        "auto_compaction_periodic",
        scenarios::auto_compaction_periodic,
        8,
    );
}

#[test]
fn watch_under_faults() {
    sweep("watch_under_faults", scenarios::watch_under_faults);
}

#[test]
fn watch_from_compaction_revision() {
    sweep(
        "watch_from_compaction_revision",
        scenarios::watch_from_compaction_revision,
    );
}

#[test]
fn watch_across_snapshot_install() {
    sweep(
        "watch_across_snapshot_install",
        scenarios::watch_across_snapshot_install,
    );
}

/// Each seed writes a history of 2,100-2,600 revisions first: 6 seeds and the random one unless
/// `DETCD_SIM_SEEDS` says.
#[test]
fn behind_watchers_catch_up() {
    short_sweep(
        "behind_watchers_catch_up",
        scenarios::behind_watchers_catch_up,
        6,
    );
}

#[test]
fn leases_under_faults() {
    sweep("leases_under_faults", lease::leases_under_faults);
}

#[test]
fn lease_ttl_survives_leader_change() {
    sweep(
        "lease_ttl_survives_leader_change",
        lease::lease_ttl_survives_leader_change,
    );
}

#[test]
fn lease_ttl_survives_full_restart() {
    short_sweep(
        "lease_ttl_survives_full_restart",
        lease::lease_ttl_survives_full_restart,
        8,
    );
}

#[test]
fn partitioned_leader_stops_acknowledging() {
    sweep(
        "partitioned_leader_stops_acknowledging",
        lease::partitioned_leader_stops_acknowledging,
    );
}

/// The chaos sweep: a fault schedule, a workload and every checker per seed (200 by default).
#[test]
fn chaos() {
    let mut seeds = seeds();
    if std::env::var("DETCD_SIM_SEEDS").is_err() && std::env::var("DETCD_SIM_SEED").is_err() {
        let random = seeds.pop().expect("the random seed");
        seeds = (1..=200).collect();
        seeds.push(random);
    }
    sweep_seeds("chaos", chaos::chaos, seeds);
}

#[test]
fn determinism() {
    let seed = seeds()[0];
    check_determinism("leader_killed", seed, scenarios::leader_killed);
    check_determinism("leader_partitioned", seed, scenarios::leader_partitioned);
    check_determinism("crash_recovery", seed, scenarios::crash_recovery);
    check_determinism("watch_under_faults", seed, scenarios::watch_under_faults);
    check_determinism("leases_under_faults", seed, lease::leases_under_faults);
    check_determinism(
        "paced_watchers_get_every_revision",
        seed,
        scenarios::paced_watchers_get_every_revision,
    );
    // The chaos sweep's whole pipeline (options, schedule, history, checkers) on a sample.
    for chaos_seed in [seed, seed + 100, seed + 1000] {
        check_determinism("chaos", chaos_seed, chaos::chaos);
    }
}

/// Each known bug of `detcd::env::bugs`, re-introduced, is caught within 1,000 seeds.
#[test]
fn sensitivity() {
    sensitivity::run();
}
