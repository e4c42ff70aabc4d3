//! Real-mode tests: the `detcd` binary and real etcd 3.4 as processes on 127.0.0.1, driven by
//! etcd's own `etcdctl`.
//!
//! - `transcripts_match_etcd`: every command of `transcripts/*.txt` runs against a fresh detcd
//!   (one per file) and must print what etcd 3.4.23 printed when the file was recorded (stdout,
//!   stderr without the client's log lines, exit code; IDs and endpoint normalised).
//!   `DETCD_RECORD_TRANSCRIPTS=1` re-records the files from a real etcd (see `transcript.rs`).
//! - `three_members_survive_losing_the_leader`: a 3-member detcd cluster from etcd's flags; the
//!   leader's process is SIGKILLed, writes go on through the others, the member comes back and
//!   catches up.
//! - `kill_9_loses_no_acknowledged_write`, `sigterm_stops_cleanly`, `help_lists_flags`.
//! - `cluster.rs`: `member list` as etcd prints it; a 3-member cluster lists every member's
//!   client URL, which `endpoint health --cluster` reaches.
//!
//! etcd and etcdctl come from Debian's `etcd-server` and `etcd-client` (the test command installs
//! them). Processes are started here and stopped by PID.

#![cfg(not(madsim))]
// Test code drives real processes and threads: the seam rule (.clippy.toml) is for src/.
#![allow(clippy::disallowed_methods)]

mod client;
mod cluster;
mod harness;
mod lease_client;
mod transcript;
mod watch_client;

use std::time::Duration;

use harness::{etcdctl, normalise_ids, wait_until, Process, TempDir, Trio};

/// Every recorded transcript against a fresh detcd (one per file): output identical to what
/// etcd 3.4.23 printed. With `DETCD_RECORD_TRANSCRIPTS=1`, re-records them from a fresh real etcd.
#[test]
fn transcripts_match_etcd() {
    let record = std::env::var("DETCD_RECORD_TRANSCRIPTS").is_ok_and(|v| v == "1");
    let mut compared = 0;
    let mut differences = Vec::new();
    // `DETCD_TRANSCRIPT=watch` runs (or records) only the files whose name contains `watch`.
    let only = std::env::var("DETCD_TRANSCRIPT").ok();
    for path in transcript::transcript_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if only
            .as_ref()
            .is_some_and(|only| !name.contains(only.as_str()))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read transcript");
        let mut parsed = transcript::parse(&text);
        let dir = TempDir::new("transcript");
        if record {
            let etcd = Process::etcd_single(&dir, "etcd");
            let mut session = transcript::Session::new(&etcd.client_endpoint, &dir.0);
            for step in &mut parsed.steps {
                step.expected = session.run(step);
            }
            std::fs::write(&path, transcript::render(&parsed)).expect("write transcript");
            println!(
                "recorded {} commands of {name} from etcd",
                parsed.steps.len()
            );
            continue;
        }
        let detcd = Process::detcd_single(&dir, "detcd");
        let mut session = transcript::Session::new(&detcd.client_endpoint, &dir.0);
        for step in &parsed.steps {
            assert!(
                !step.expected.is_empty(),
                "{name}: `{}` has no recorded output: run with DETCD_RECORD_TRANSCRIPTS=1",
                step.command
            );
            let actual = session.run(step);
            compared += 1;
            if actual != step.expected {
                differences.push(format!(
                    "{name}: $ etcdctl {}\n--- etcd 3.4.23 (recorded)\n{}--- detcd\n{actual}",
                    step.command, step.expected
                ));
            }
        }
    }
    if record {
        return;
    }
    if only.is_none() {
        assert!(compared >= 150, "only {compared} commands compared");
    }
    assert!(
        differences.is_empty(),
        "{} of {compared} differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    println!("{compared} etcdctl commands gave the output etcd 3.4.23 gave");
}

#[test]
fn three_members_survive_losing_the_leader() {
    let dir = TempDir::new("cluster");
    let mut members = Process::detcd_cluster(&dir, 3);
    let all: Vec<String> = members.iter().map(|m| m.client_endpoint.clone()).collect();
    let leader = harness::wait_for_leader(&all);

    // Writes through every member (followers forward to the leader).
    for (i, member) in members.iter().enumerate() {
        let out = etcdctl(
            &member.client_endpoint,
            &["put".into(), format!("k{i}"), format!("v{i}")],
        );
        assert_eq!(out, "OK\nexit 0\n", "put through member {i}");
    }

    members[leader].kill();
    let survivors: Vec<usize> = (0..3).filter(|m| *m != leader).collect();
    let survivor_endpoints: Vec<String> = survivors.iter().map(|&m| all[m].clone()).collect();
    let new_leader = harness::wait_for_leader(&survivor_endpoints);
    assert!(survivor_endpoints[new_leader] != all[leader]);
    for (n, &member) in survivors.iter().enumerate() {
        let args = vec!["put".to_string(), format!("after{n}"), format!("w{n}")];
        let mut last = String::new();
        wait_until(
            "a write through a survivor",
            Duration::from_secs(20),
            || {
                last = etcdctl(&all[member], &args);
                last == "OK\nexit 0\n"
            },
        );
    }

    members[leader].restart();
    let expected = etcdctl(
        &survivor_endpoints[0],
        &[
            "get".into(),
            "--prefix".into(),
            "".into(),
            "--keys-only".into(),
        ],
    );
    assert!(
        expected.contains("after1"),
        "survivors have the new writes: {expected}"
    );
    let serializable = ["get", "--prefix", "", "--keys-only", "--consistency=s"].map(String::from);
    wait_until(
        "the restarted member catches up",
        Duration::from_secs(30),
        || etcdctl(&all[leader], &serializable) == expected,
    );
}

/// A follower frozen (SIGSTOP) while the others go on writing answers nothing and keeps its
/// sockets open; once it thaws (SIGCONT) it has every write within 10 s, over the real
/// replication streams. (Loopback TCP buffers what the leader sent it meanwhile, so this passes
/// without the streams' stall check too; that check is the simulation's
/// `unanswered_follower_catches_up`.)
#[test]
fn a_frozen_follower_gets_every_write_after_it_thaws() {
    let dir = TempDir::new("freeze");
    let Trio {
        mut members,
        endpoints: all,
        leader,
        follower,
    } = Trio::start(&dir);
    let put = |i: usize| vec!["put".to_string(), format!("f{i:02}"), format!("v{i}")];
    let serializable = ["get", "--prefix", "f", "--keys-only", "--consistency=s"].map(String::from);
    assert_eq!(etcdctl(&all[leader], &put(0)), "OK\nexit 0\n");
    wait_until(
        "the follower has the first write",
        Duration::from_secs(5),
        || etcdctl(&all[follower], &serializable).contains("f00"),
    );

    members[follower].freeze(true);
    let others: Vec<usize> = (0..3).filter(|m| *m != follower).collect();
    for i in 1..=20 {
        let through = &all[others[i % 2]];
        let mut last = String::new();
        wait_until(
            "a write without the frozen follower",
            Duration::from_secs(20),
            || {
                last = etcdctl(through, &put(i));
                last == "OK\nexit 0\n"
            },
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    members[follower].freeze(false);

    let expected = etcdctl(&all[others[0]], &serializable);
    assert!(
        expected.contains("f20"),
        "the majority has every write: {expected}"
    );
    wait_until(
        "the thawed follower has every write",
        Duration::from_secs(10),
        || etcdctl(&all[follower], &serializable) == expected,
    );
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = TempDir::new("kill9");
    let mut detcd = Process::detcd_single(&dir, "detcd");
    for i in 0..50 {
        let out = etcdctl(
            &detcd.client_endpoint,
            &["put".into(), format!("key{i:02}"), format!("value{i}")],
        );
        assert_eq!(out, "OK\nexit 0\n");
    }
    let all = ["get", "--prefix", "key", "-w", "json"].map(String::from);
    let before = normalise_ids(&etcdctl(&detcd.client_endpoint, &all));
    assert!(before.contains("\"count\":50"), "{before}");
    detcd.kill();
    detcd.restart();
    let mut after = String::new();
    wait_until(
        "the restarted member serves reads",
        Duration::from_secs(20),
        || {
            after = normalise_ids(&etcdctl(&detcd.client_endpoint, &all));
            after.ends_with("exit 0\n")
        },
    );
    // Same data at the same revision. The term may differ: a restart is a new election.
    let without_term = |s: &str| harness::replace_number_after(s, "\"raft_term\":", "T");
    assert_eq!(without_term(&after), without_term(&before));
}

/// Bad input gets etcd's error and is never proposed: the Raft index and the revision stay put.
#[test]
fn bad_input_is_never_proposed() {
    let dir = TempDir::new("bad-input");
    let detcd = Process::detcd_single(&dir, "detcd");
    let status = ["endpoint", "status", "-w", "json"].map(String::from);
    let raft_index = |text: &str| harness::number_after(text, "\"raft_index\":");
    let revision = |text: &str| harness::number_after(text, "\"revision\":");
    assert_eq!(
        etcdctl(
            &detcd.client_endpoint,
            &["put".into(), "a".into(), "1".into()]
        ),
        "OK\nexit 0\n"
    );
    let before = etcdctl(&detcd.client_endpoint, &status);
    let refused = [
        (vec!["put", "", "v"], "etcdserver: key is not provided"),
        (
            vec!["put", "--lease=1234", "a", "v"],
            "etcdserver: requested lease not found",
        ),
        (vec!["del", ""], "etcdserver: key is not provided"),
    ];
    for (args, message) in refused {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let out = etcdctl(&detcd.client_endpoint, &args);
        assert!(
            out.contains(message) && out.ends_with("exit 1\n"),
            "{args:?}: {out}"
        );
    }
    let too_large = vec![b'x'; 1536 * 1024 + 1];
    let out = harness::etcdctl_with_input(
        &detcd.client_endpoint,
        &["put".into(), "big".into()],
        &too_large,
    );
    assert!(out.contains("etcdserver: request is too large"), "{out}");
    let after = etcdctl(&detcd.client_endpoint, &status);
    assert_eq!(
        raft_index(&after),
        raft_index(&before),
        "a refused request reached the log"
    );
    assert_eq!(revision(&after), revision(&before));
}

#[test]
fn sigterm_stops_cleanly() {
    let dir = TempDir::new("sigterm");
    let mut detcd = Process::detcd_single(&dir, "detcd");
    assert_eq!(
        etcdctl(
            &detcd.client_endpoint,
            &["put".into(), "a".into(), "1".into()]
        ),
        "OK\nexit 0\n"
    );
    let status = detcd.terminate(Duration::from_secs(10));
    assert_eq!(status, Some(0), "detcd exits 0 on SIGTERM");
}

/// Bit rot in a data file, found at the next start: detcd refuses to start on it (exit 1,
/// saying why) rather than serve, or vote with, data it cannot trust. Both files hold the value:
/// the state machine (`detcd.redb`; the start after a clean shutdown is the hard case, as redb
/// checks its checksums on its own only after a crash) and the write-ahead log.
#[test]
fn a_corrupted_data_file_is_refused() {
    for file in ["detcd.redb", "wal-0000000000000001.log"] {
        let dir = TempDir::new("bitrot");
        let mut detcd = Process::detcd_single(&dir, "detcd");
        let value = "a-value-that-will-rot";
        assert_eq!(
            etcdctl(
                &detcd.client_endpoint,
                &["put".into(), "rot".into(), value.into()]
            ),
            "OK\nexit 0\n"
        );
        assert_eq!(detcd.terminate(Duration::from_secs(10)), Some(0));
        let path = dir.0.join("detcd").join(file);
        let mut bytes = std::fs::read(&path).expect("read the data file");
        let mut flipped = 0;
        let mut at = 0;
        while let Some(found) = bytes[at..]
            .windows(value.len())
            .position(|w| w == value.as_bytes())
        {
            bytes[at + found] ^= 0x01;
            flipped += 1;
            at += found + value.len();
        }
        assert!(flipped > 0, "the value is in {file}");
        std::fs::write(&path, &bytes).expect("write the data file back");
        detcd.restart();
        let code = detcd.wait_exit(Duration::from_secs(20));
        let log = detcd.log();
        assert_eq!(code, Some(1), "{file}: {log}");
        assert!(
            log.contains("corrupted") && log.contains("must be replaced"),
            "{file}: {log}"
        );
    }
}

/// detcd cannot join a running cluster yet, so `existing` with no data is refused, not treated
/// as a new member (which would have forgotten its vote).
#[test]
fn existing_cluster_state_without_data_is_refused() {
    let dir = TempDir::new("existing");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_detcd"))
        .args(["--name", "m", "--data-dir"])
        .arg(dir.0.join("m"))
        .args(["--initial-cluster-state", "existing"])
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", harness::free_port()),
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", harness::free_port()),
        ])
        .output()
        .expect("run detcd");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--initial-cluster-state=existing"));
}

#[test]
fn help_lists_flags() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_detcd"))
        .arg("--help")
        .output()
        .expect("run detcd --help");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--name",
        "--data-dir",
        "--listen-client-urls",
        "--advertise-client-urls",
        "--listen-peer-urls",
        "--initial-advertise-peer-urls",
        "--initial-cluster",
        "--initial-cluster-state",
        "--initial-cluster-token",
        "--max-request-bytes",
        "--max-txn-ops",
        "--auto-compaction-mode",
        "--auto-compaction-retention",
        "--snapshot-count",
        "--experimental-watch-progress-notify-interval",
        "--heartbeat-interval",
        "--election-timeout",
    ] {
        assert!(text.contains(flag), "--help does not mention {flag}");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_detcd"))
        .arg("--no-such-flag")
        .output()
        .expect("run detcd with a bad flag");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-such-flag"));
}
