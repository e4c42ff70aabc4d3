//! Sensitivity: the simulator catches real bugs. Each bug of `detcd::env::bugs` is turned on in
//! turn, and seeds 1, 2, 3, … of the scenarios that should catch it run until one fails; the
//! table of how many seeds each took is printed. A bug that survives its budget (1,000 seeds, or
//! `DETCD_SIM_SENSITIVITY_BUDGET`) fails the test: the checkers have gone blind to it.
//!
//! `DETCD_SIM_BUG=<name>` runs only that bug (names as in the table, e.g. `VoteNotDurable`), and
//! `DETCD_SIM_SEED=n` only that seed.

use std::future::Future;
use std::pin::Pin;

use detcd::env::bugs::Bug;

use crate::{chaos, lease, scenarios};

type Run = Pin<Box<dyn Future<Output = u64>>>;

/// A scenario that can catch a bug.
type Scenario = (&'static str, fn() -> Run);

const CHAOS: Scenario = ("chaos", || Box::pin(chaos::chaos()));

/// The scenarios that should catch `bug`, tried in this order on each seed.
fn catchers(bug: Bug) -> Vec<Scenario> {
    match bug {
        Bug::AckBeforeDurable => vec![CHAOS],
        Bug::StalledStreamKept | Bug::ForwardLinkKept => {
            vec![("unanswered_follower_catches_up", || {
                Box::pin(scenarios::unanswered_follower_catches_up())
            })]
        }
        Bug::AckOnSend => vec![
            ("leader_partitioned", || {
                Box::pin(scenarios::leader_partitioned())
            }),
            CHAOS,
        ],
        Bug::VoteNotDurable => vec![CHAOS],
        Bug::InstallKeepsIndex => vec![
            ("watch_across_snapshot_install", || {
                Box::pin(scenarios::watch_across_snapshot_install())
            }),
            CHAOS,
        ],
        Bug::StaleFollowerRead | Bug::FollowerReadBeforeApplied | Bug::ReadBeforeCommitted => {
            vec![CHAOS]
        }
        Bug::LeaderRestore => vec![
            CHAOS,
            ("leader_crash_after_ack", || {
                Box::pin(scenarios::leader_crash_after_ack())
            }),
        ],
        Bug::WatchSkipsOnResume | Bug::WatchRepeatsOnResume | Bug::CachedPrevUnchecked => {
            vec![CHAOS]
        }
        Bug::KeepAliveWithoutQuorum => vec![
            ("partitioned_leader_stops_acknowledging", || {
                Box::pin(lease::partitioned_leader_stops_acknowledging())
            }),
            ("leases_under_faults", || {
                Box::pin(lease::leases_under_faults())
            }),
        ],
        Bug::LeaderReadWithoutQuorum => vec![CHAOS],
        Bug::CorruptWalTakenForTorn => vec![
            CHAOS,
            ("corrupted_disk_is_fenced", || {
                Box::pin(scenarios::corrupted_disk_is_fenced())
            }),
        ],
        Bug::AnswerNotFenced | Bug::ForwardedAnswerNotApplied | Bug::EarlyAnswerStale => {
            vec![("answered_writes_are_readable", || {
                Box::pin(scenarios::answered_writes_are_readable())
            })]
        }
        Bug::HeldWithoutDeadline => vec![("paced_watchers_get_every_revision", || {
            Box::pin(scenarios::paced_watchers_get_every_revision())
        })],
        Bug::CatchUpWaitsForWrites => {
            vec![("behind_watchers_catch_up", || {
                Box::pin(scenarios::behind_watchers_catch_up())
            })]
        }
        Bug::CheckpointNotReset => {
            vec![("leases_under_faults", || {
                Box::pin(lease::leases_under_faults())
            })]
        }
    }
}

/// Where a bug was caught: the scenario and the seed (seeds run from 1, so also how many).
struct Caught {
    scenario: &'static str,
    seed: u64,
}

pub fn run() {
    let budget: u64 = std::env::var("DETCD_SIM_SENSITIVITY_BUDGET")
        .map(|b| b.parse().expect("DETCD_SIM_SENSITIVITY_BUDGET is a number"))
        .unwrap_or(1000);
    let only = std::env::var("DETCD_SIM_BUG").ok();
    quiet_panics_on("sensitivity");
    let mut table = Vec::new();
    for bug in Bug::ALL {
        if only
            .as_deref()
            .is_some_and(|name| name != format!("{bug:?}"))
        {
            continue;
        }
        let caught = hunt(bug, budget);
        table.push((bug, caught));
    }
    println!("\nsensitivity (budget {budget} seeds):");
    println!("| bug | caught by | seeds it took |");
    println!("|---|---|---|");
    for (bug, caught) in &table {
        match caught {
            Some(c) => println!("| {bug:?} | {} | {} |", c.scenario, c.seed),
            None => println!("| {bug:?} | NOT CAUGHT | more than {budget} |"),
        }
    }
    let missed: Vec<String> = table
        .iter()
        .filter(|(_, c)| c.is_none())
        .map(|(bug, _)| format!("{bug:?}"))
        .collect();
    assert!(
        missed.is_empty(),
        "not caught within {budget} seeds: {missed:?}"
    );
}

/// Runs seeds of `bug`'s scenarios until one fails.
fn hunt(bug: Bug, budget: u64) -> Option<Caught> {
    let seeds: Vec<u64> = match std::env::var("DETCD_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("DETCD_SIM_SEED is a number")],
        Err(_) => (1..=budget).collect(),
    };
    for seed in seeds {
        for (name, scenario) in catchers(bug) {
            if crate::run_seed_with(seed, scenario, Some(bug), "sensitivity").is_err() {
                println!(
                    "sensitivity: {bug:?} caught by {name} on seed {seed}; replay: \
                     DETCD_SIM_BUG={bug:?} DETCD_SIM_SEED={seed} RUSTFLAGS=\"--cfg madsim\" cargo \
                     test --target-dir target/madsim --test sim -- --exact sensitivity --nocapture"
                );
                return Some(Caught {
                    scenario: name,
                    seed,
                });
            }
        }
    }
    None
}

/// Panics on threads named `name` print their first line only: a caught bug is the expected
/// outcome here, and a backtrace for each would bury the table. Other threads keep the hook.
fn quiet_panics_on(name: &'static str) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(name) {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let first = message.lines().next().unwrap_or_default();
            eprintln!("sensitivity: caught: {first}");
        } else {
            previous(info);
        }
    }));
}
