//! State: every member reaches the highest revision any member has applied, and then all have
//! the same history up to it, compared by etcd's `HashKV` at that revision (which covers every
//! key's every version, and the compaction revision).

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
}
