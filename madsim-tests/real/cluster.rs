//! etcd's `Cluster` service through etcdctl: `member list` prints what etcd 3.4 prints (IDs and
//! ports aside), and a 3-member cluster lists every member with the client URL it advertises,
//! which `endpoint health --cluster` and `endpoint status --cluster` then reach (etcdctl dials
//! those by URL, so their requests carry the URL as HTTP/2 `:authority`: `env/authority.rs`).

use std::time::Duration;

use crate::harness::{
    etcdctl, normalise_ids, replace_number_after, wait_for_leader, wait_until, Process, TempDir,
};

/// `member list` in its simple and JSON forms, with member IDs and ports set aside.
fn member_list(endpoint: &str) -> String {
    let simple = etcdctl(endpoint, &["member".into(), "list".into()]);
    // The simple form starts each member's line with its ID in hex.
    let simple: String = simple
        .lines()
        .map(|line| match line.split_once(", ") {
            Some((_id, rest)) if !line.starts_with("exit") => format!("<id>, {rest}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    let json = etcdctl(
        endpoint,
        &["member", "list", "-w", "json"].map(String::from),
    );
    let json = replace_number_after(&normalise_ids(&json), "\"ID\":", "<id>");
    replace_number_after(&format!("{simple}{json}"), "127.0.0.1:", "<port>")
}

#[test]
fn member_list_prints_what_etcd_prints() {
    let (etcd_dir, detcd_dir) = (TempDir::new("members-etcd"), TempDir::new("members-detcd"));
    let etcd = Process::etcd_single(&etcd_dir, "n1");
    let detcd = Process::detcd_single(&detcd_dir, "n1");
    let expected = member_list(&etcd.client_endpoint);
    assert!(
        expected.contains("started, n1, http://127.0.0.1:<port>"),
        "{expected}"
    );
    assert_eq!(member_list(&detcd.client_endpoint), expected);
}

#[test]
fn a_cluster_lists_every_member_with_its_client_url() {
    let dir = TempDir::new("members");
    let members = Process::detcd_cluster(&dir, 3);
    let all: Vec<String> = members.iter().map(|m| m.client_endpoint.clone()).collect();
    wait_for_leader(&all);
    let json = ["member", "list", "-w", "json"].map(String::from);
    for endpoint in &all {
        let mut last = String::new();
        // Each member publishes its client URL through Raft once there is a leader.
        wait_until(
            &format!("{endpoint} lists every member's client URL"),
            Duration::from_secs(20),
            || {
                last = etcdctl(endpoint, &json);
                all.iter()
                    .all(|e| last.contains(&format!("\"http://{e}\"")))
            },
        );
        for (i, e) in all.iter().enumerate() {
            let member = format!("\"name\":\"m{i}\",\"peerURLs\":");
            let client = format!("\"clientURLs\":[\"http://{e}\"]");
            let at = last
                .find(&member)
                .unwrap_or_else(|| panic!("m{i} in {last}"));
            let end = last[at..].find('}').map_or(last.len(), |n| at + n);
            assert!(last[at..end].contains(&client), "m{i}'s URL in {last}");
        }
    }
    let health = etcdctl(
        &all[0],
        &["endpoint", "health", "--cluster"].map(String::from),
    );
    assert_eq!(
        health.matches("is healthy").count(),
        3,
        "every member reached through its listed URL: {health}"
    );
    assert!(health.ends_with("exit 0\n"), "{health}");
    let status = etcdctl(
        &all[0],
        &["endpoint", "status", "--cluster"].map(String::from),
    );
    for endpoint in &all {
        assert!(
            status.contains(&format!("http://{endpoint}, ")),
            "{endpoint}'s status: {status}"
        );
    }
    assert!(status.ends_with("exit 0\n"), "{status}");
    // A URL as the endpoint, as etcd's docs write them.
    let status = etcdctl(
        &format!("http://{}", all[1]),
        &["endpoint".into(), "status".into()],
    );
    assert!(
        status.starts_with(&format!("http://{}, ", all[1])) && status.ends_with("exit 0\n"),
        "{status}"
    );
    let unsupported = etcdctl(&all[0], &["member", "remove", "1"].map(String::from));
    assert!(
        unsupported.contains("Unimplemented") && unsupported.ends_with("exit 1\n"),
        "membership changes answer Unimplemented: {unsupported}"
    );
}
