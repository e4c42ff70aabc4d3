//! State: every member reaches the highest revision any member has applied, and then all have
//! the same history up to it, compared by etcd's `HashKV` at that revision (which covers every
//! key's every version, and the compaction revision). And every member lists the cluster's
//! members with the client URL of each of `members` (each publishes its own once it runs).

use std::time::Duration;

use crate::cluster::Cluster;

/// The state checker: every member reaches the highest revision any of `members` has applied,
/// and then all have the same history up to it, compared by etcd's `HashKV` at that revision.
pub async fn check(cluster: &Cluster, members: &[usize]) {
    let current = |member: usize| async move {
        let hash = cluster.hash_kv(member, 0).await;
        hash.ok().and_then(|h| h.header).map_or(0, |h| h.revision)
    };
    let mut at = 0;
    for &member in members {
        at = at.max(current(member).await);
    }
    assert!(at > 1, "no member answers a revision");
    for &member in members {
        cluster
            .wait_until(
                "every member applies the newest revision",
                Duration::from_secs(30),
                || async move { current(member).await >= at },
            )
            .await;
    }
    let mut hashes = Vec::new();
    for &member in members {
        let hash = cluster
            .hash_kv(member, at)
            .await
            .unwrap_or_else(|e| panic!("HashKV at {at} on m{}: {e}", member + 1));
        hashes.push((hash.hash, hash.compact_revision));
    }
    assert!(
        hashes.windows(2).all(|pair| pair[0] == pair[1]),
        "members disagree on history at revision {at}: {hashes:?}"
    );
    check_members(cluster, members).await;
}

/// Every one of `members` lists every member of the cluster by name, and the client URL of each
/// of `members` (all of them have run long enough to publish it; one that is down now may
/// still be listed without it, if it never ran with a leader).
pub async fn check_members(cluster: &Cluster, members: &[usize]) {
    let size = cluster.members.len();
    for &member in members {
        cluster
            .wait_until(
                "every member lists every member and the client URLs of the live ones",
                Duration::from_secs(30),
                || async move {
                    let Ok(list) = cluster.member_list(member).await else {
                        return false;
                    };
                    let mut names: Vec<&str> =
                        list.members.iter().map(|m| m.name.as_str()).collect();
                    names.sort_unstable();
                    let expected: Vec<String> = (1..=size).map(|i| format!("m{i}")).collect();
                    names == expected
                        && members.iter().all(|&live| {
                            let name = format!("m{}", live + 1);
                            list.members.iter().any(|m| {
                                m.name == name && m.client_ur_ls == [cluster.endpoint(live)]
                            })
                        })
                },
            )
            .await;
    }
}
