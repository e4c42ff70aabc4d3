//! Leases under faults: service providers on the client host that register a key under a lease
//! and keep it alive, watchers that time every delete, and the time-aware checks (in true
//! simulated time, whatever the members' clocks say):
//! - **never early**: a provider's key is deleted no sooner than its TTL after it sent the last
//!   keep-alive it saw acknowledged (or its grant, if none was), nor before it stopped keeping it
//!   alive unless an acknowledgement said the lease had expired;
//! - **bounded late**: once a provider stops, its key is gone within the stated bound.
//!
//! A delete's time is the earliest moment any of the watchers (one per member) received it: never
//! before the delete was committed, so an early delete cannot hide behind a slow watcher.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detcd::pb::etcdserverpb::lease_client::LeaseClient;
use detcd::pb::etcdserverpb::watch_client::WatchClient;
use detcd::pb::etcdserverpb::watch_request::RequestUnion;
use detcd::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, WatchCreateRequest,
    WatchRequest,
};
use detcd::pb::mvccpb;
use futures::StreamExt;
use madsim::rand::Rng;
use madsim::runtime::NodeHandle;
use madsim::time::Instant;

use crate::cluster::connect;

/// How a provider ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Stops keeping its lease alive, as a killed process does.
    Dies,
    /// Revokes its lease.
    Revokes,
}

/// What one provider did, in true time.
#[derive(Debug, Clone)]
pub struct Provider {
    pub key: String,
    pub ttl: i64,
    pub lease: i64,
    /// When the grant that created the lease was sent.
    pub granted: Option<Instant>,
    /// Keep-alives acknowledged with a TTL: when each was sent.
    pub acked: Vec<Instant>,
    /// When a keep-alive was answered TTL 0 (the lease was gone), if one was.
    pub lost: Option<Instant>,
    /// When it stopped: its last keep-alive was sent before this, or its revoke after it.
    pub stopped: Option<Instant>,
    pub end: End,
    /// The key was put (acknowledged).
    pub registered: bool,
}

/// The deletes the watchers saw, per key: the earliest time any watcher received it.
pub type Deletes = Arc<Mutex<BTreeMap<String, Instant>>>;

/// A call under a client deadline (shorter than the server's request timeout: a member that
/// cannot answer is left for another).
async fn within<T>(future: impl std::future::Future<Output = Option<T>>) -> Option<T> {
    madsim::time::timeout(Duration::from_secs(2), future)
        .await
        .ok()
        .flatten()
}

/// Spawns a provider on `client`: grant (TTL `ttl`), put `key` under the lease, keep it alive
/// every `every` (etcd's clients use TTL/3) through the members in turn for `life`, then end as
/// `end` says. Its record is shared so the checks can read it at any time.
pub fn spawn_provider(
    client: &NodeHandle,
    endpoints: Vec<String>,
    key: String,
    (ttl, every): (i64, Duration),
    life: Duration,
    end: End,
) -> Arc<Mutex<Provider>> {
    let log = Arc::new(Mutex::new(Provider {
        key: key.clone(),
        ttl,
        lease: 0,
        granted: None,
        acked: Vec::new(),
        lost: None,
        stopped: None,
        end,
        registered: false,
    }));
    let record = log.clone();
    client.spawn(async move {
        let started = Instant::now();
        let mut member = madsim::rand::thread_rng().gen_range(0..endpoints.len());
        let mut next = || {
            member = (member + 1) % endpoints.len();
            endpoints[member].clone()
        };
        // Grant: retried until one is acknowledged (an unacknowledged one may exist too; it
        // holds no key and expires unseen).
        let lease = loop {
            let endpoint = next();
            let sent = Instant::now();
            let grant = within(async {
                let mut leases = LeaseClient::new(connect(&endpoint).await?);
                let request = LeaseGrantRequest { ttl, id: 0 };
                leases
                    .lease_grant(request)
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            })
            .await;
            if let Some(response) = grant.filter(|r| r.error.is_empty()) {
                let mut log = record.lock().unwrap();
                log.lease = response.id;
                log.granted = Some(sent);
                break response.id;
            }
            madsim::time::sleep(Duration::from_millis(200)).await;
        };
        let mut registered = false;
        let mut last_ack = Instant::now();
        while started.elapsed() < life {
            let endpoint = next();
            if !registered {
                let put = within(async {
                    let mut kv = detcd::pb::etcdserverpb::kv_client::KvClient::new(
                        connect(&endpoint).await?,
                    );
                    let request = PutRequest {
                        key: key.clone().into_bytes(),
                        value: b"10.0.0.9:8080".to_vec().into(),
                        lease,
                        ..Default::default()
                    };
                    Some(kv.put(request).await)
                })
                .await;
                match put {
                    Some(Ok(_)) => {
                        registered = true;
                        record.lock().unwrap().registered = true;
                    }
                    // The lease is gone (expired while we could not reach anyone).
                    Some(Err(status)) if status.message().contains("lease not found") => {
                        record.lock().unwrap().lost = Some(Instant::now());
                        break;
                    }
                    _ => {}
                }
                continue;
            }
            let sent = Instant::now();
            let answer = within(async {
                let mut leases = LeaseClient::new(connect(&endpoint).await?);
                let request = LeaseKeepAliveRequest { id: lease };
                let mut stream = leases
                    .lease_keep_alive(futures::stream::iter([request]))
                    .await
                    .ok()?
                    .into_inner();
                stream.message().await.ok().flatten()
            })
            .await;
            match answer {
                Some(response) if response.ttl > 0 => {
                    record.lock().unwrap().acked.push(sent);
                    last_ack = Instant::now();
                    let wait = every.saturating_sub(last_ack.elapsed());
                    madsim::time::sleep(wait).await;
                }
                Some(_) => {
                    record.lock().unwrap().lost = Some(Instant::now());
                    break;
                }
                // No answer from that member: try the next one at once.
                None => madsim::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = last_ack;
        record.lock().unwrap().stopped = Some(Instant::now());
        if end == End::Revokes {
            loop {
                let endpoint = next();
                let revoked = within(async {
                    let mut leases = LeaseClient::new(connect(&endpoint).await?);
                    let request = LeaseRevokeRequest { id: lease };
                    Some(leases.lease_revoke(request).await)
                })
                .await;
                match revoked {
                    Some(Ok(_)) => break,
                    Some(Err(status)) if status.message().contains("lease not found") => break,
                    _ => madsim::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    });
    log
}

/// Watches `prefix` on every member from `from` on, and records when each key's delete was
/// first received.
pub fn spawn_delete_watchers(
    client: &NodeHandle,
    endpoints: Vec<String>,
    prefix: &str,
    from: i64,
) -> Deletes {
    let deletes: Deletes = Arc::default();
    for endpoint in endpoints {
        let deletes = deletes.clone();
        let prefix = prefix.as_bytes().to_vec();
        client.spawn(async move {
            let mut next = from;
            loop {
                let session = async {
                    let channel = connect(&endpoint).await?;
                    let mut range_end = prefix.clone();
                    *range_end.last_mut().expect("a prefix") += 1;
                    let create = WatchCreateRequest {
                        key: prefix.clone(),
                        range_end,
                        start_revision: next,
                        ..Default::default()
                    };
                    let request = WatchRequest {
                        request_union: Some(RequestUnion::CreateRequest(create)),
                    };
                    let (mut requests, receiver) = futures::channel::mpsc::channel(1);
                    requests.try_send(request).ok()?;
                    let mut stream = WatchClient::new(channel)
                        .watch(receiver)
                        .await
                        .ok()?
                        .into_inner();
                    while let Some(Ok(response)) = stream.next().await {
                        if response.canceled {
                            return None;
                        }
                        let now = Instant::now();
                        for event in &response.events {
                            let kv = event.kv.clone().unwrap_or_default();
                            next = next.max(kv.mod_revision + 1);
                            if event.r#type == mvccpb::event::EventType::Delete as i32 {
                                let key = String::from_utf8_lossy(&kv.key).to_string();
                                let mut deletes = deletes.lock().unwrap();
                                let first = deletes.entry(key).or_insert(now);
                                *first = (*first).min(now);
                            }
                        }
                    }
                    None::<()>
                };
                session.await;
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    deletes
}

/// The late bound for a provider that stopped at `stopped` with the cluster healthy since
/// `healthy`: its TTL (stretched by the drift allowance) from whichever is later, plus what
/// a new leader adds (an election and the election timeout it grants), a lessor tick and a
/// commit.
pub fn late_bound(ttl: i64, stopped: Instant, healthy: Instant) -> Instant {
    let ttl = Duration::from_millis(ttl as u64 * 1001);
    stopped.max(healthy) + ttl + Duration::from_millis(5500)
}

/// Checks every provider against the deletes seen; answers (keys checked, smallest margin by
/// which a delete came after its earliest allowed time, in ms). `healthy` is when the faults
/// ended.
pub fn check(
    providers: &[Arc<Mutex<Provider>>],
    deletes: &Deletes,
    healthy: Instant,
) -> (usize, u128) {
    let deletes = deletes.lock().unwrap();
    let mut margin = u128::MAX;
    let mut checked = 0;
    for provider in providers {
        let p = provider.lock().unwrap();
        if !p.registered {
            continue;
        }
        let stopped = p.stopped.expect("every provider has stopped");
        let deleted = *deletes
            .get(&p.key)
            .unwrap_or_else(|| panic!("{}: never deleted ({p:?})", p.key));
        let ttl = Duration::from_secs(p.ttl as u64);
        // Never early: the TTL from the last acknowledged keep-alive (or the grant).
        let base = p.acked.last().copied().or(p.granted).expect("granted");
        let earliest = match (p.end, p.lost) {
            // A revoke deletes when asked, never before the provider stopped; but a provider
            // that reached no member for longer than its TTL has let its lease expire first.
            (End::Revokes, None) => stopped.min(base + ttl),
            _ => base + ttl,
        };
        assert!(
            deleted >= earliest,
            "{}: deleted EARLY at {:?}, {:?} before its TTL ran out ({p:?})",
            p.key,
            deleted,
            earliest - deleted
        );
        margin = margin.min((deleted - earliest).as_millis());
        // Bounded late: after the faults, by whichever leader there was then; and once the
        // cluster was healthy before the last keep-alive, within a tick and a commit of the TTL.
        let mut latest = late_bound(p.ttl, stopped, healthy);
        if base > healthy {
            let ttl = Duration::from_millis(p.ttl as u64 * 1001);
            latest = latest.min(stopped + ttl + Duration::from_millis(800));
        }
        assert!(
            deleted <= latest,
            "{}: deleted LATE at {:?}, {:?} after the bound ({p:?})",
            p.key,
            deleted,
            deleted - latest
        );
        checked += 1;
    }
    (checked, margin)
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

use crate::cluster::Cluster;

const ALL: [usize; 3] = [0, 1, 2];

fn endpoints(cluster: &Cluster) -> Vec<String> {
    ALL.iter().map(|&m| cluster.endpoint(m)).collect()
}

/// Waits (at most `timeout`) until every provider has stopped and every registered key is
/// deleted.
pub async fn wait_settled(
    cluster: &Cluster,
    providers: &[Arc<Mutex<Provider>>],
    deletes: &Deletes,
    timeout: Duration,
) {
    cluster
        .wait_until(
            "every provider stopped and its key deleted",
            timeout,
            || {
                let done = providers.iter().all(|p| {
                    let p = p.lock().unwrap();
                    p.stopped.is_some()
                        && (!p.registered || deletes.lock().unwrap().contains_key(&p.key))
                });
                async move { done }
            },
        )
        .await;
}

/// Providers register and keep alive while the leader is killed, partitioned away, paused for
/// longer than a TTL, and members' clocks drift and jump; then the faults stop and a few more
/// providers come and go. Every provider's key must be deleted never early and boundedly late.
pub async fn leases_under_faults() -> u64 {
    let mut cluster = Cluster::start(3);
    let mut rng = madsim::rand::thread_rng();
    for member in ALL {
        cluster.set_drift(member, rng.gen_range(-1000..=1000));
    }
    cluster.wait_for_leader(&ALL).await;
    let client = cluster.client_host().clone();
    let deletes = spawn_delete_watchers(&client, endpoints(&cluster), "svc/", 1);
    let mut providers = Vec::new();
    for i in 0..8 {
        let end = if rng.gen_bool(0.25) {
            End::Revokes
        } else {
            End::Dies
        };
        let life = Duration::from_millis(rng.gen_range(2_000..25_000));
        let key = format!("svc/{i}");
        let lease = if i % 3 == 2 {
            // Renewed less often than twice the checkpoint interval: checkpointed twice
            // between renewals, so a renewal that did not reset its checkpoint first would be
            // lost by a new leader elected soon after it.
            let ttl = rng.gen_range(24..=30);
            (ttl, Duration::from_millis(ttl as u64 * 1000 / 2))
        } else {
            let ttl = rng.gen_range(3..=8);
            (ttl, Duration::from_millis(ttl as u64 * 1000 / 3))
        };
        providers.push(spawn_provider(
            &client,
            endpoints(&cluster),
            key,
            lease,
            life,
            end,
        ));
    }
    let faults_until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < faults_until {
        let leader = cluster.wait_for_leader(&ALL).await;
        let hold = |rng: &mut dyn madsim::rand::RngCore, max_ms: u64| {
            Duration::from_millis(rng.gen_range(500..max_ms))
        };
        match rng.gen_range(0..5) {
            0 => {
                cluster.kill(leader);
                madsim::time::sleep(hold(&mut rng, 4_000)).await;
                cluster.restart(leader);
            }
            1 => {
                cluster.partition(&[leader]);
                madsim::time::sleep(hold(&mut rng, 5_000)).await;
                cluster.heal();
            }
            2 => {
                // Longer than most TTLs: the members elect another leader meanwhile.
                cluster.pause(leader);
                madsim::time::sleep(hold(&mut rng, 10_000)).await;
                cluster.resume(leader);
            }
            3 => {
                let member = rng.gen_range(0..3);
                let millis = if rng.gen_bool(0.7) {
                    rng.gen_range(1_000..30_000)
                } else {
                    -rng.gen_range(1_000..30_000)
                };
                cluster.jump_clock(member, millis);
            }
            _ => {}
        }
        madsim::time::sleep(hold(&mut rng, 2_000)).await;
    }
    cluster.heal();
    // Healthy once a write commits: members may still agree on a leader that was just killed
    // and restarted (it remembers its vote) before the others time out and elect another.
    let healthy = loop {
        let leader = cluster.wait_for_leader(&ALL).await;
        if cluster.put(leader, "health", "ok").await.is_ok() {
            break Instant::now();
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    };
    for i in 8..11 {
        let life = Duration::from_millis(rng.gen_range(6_000..12_000));
        let ttl = rng.gen_range(3..=6);
        let lease = (ttl, Duration::from_millis(ttl as u64 * 1000 / 3));
        let key = format!("svc/{i}");
        providers.push(spawn_provider(
            &client,
            endpoints(&cluster),
            key,
            lease,
            life,
            End::Dies,
        ));
    }
    wait_settled(&cluster, &providers, &deletes, Duration::from_secs(120)).await;
    let (checked, margin) = check(&providers, &deletes, healthy);
    assert!(checked >= 6, "only {checked} providers registered");
    cluster.record(format!(
        "leases checked {checked}, smallest margin {margin}ms"
    ));
    cluster.trace_hash()
}

/// Grants a lease of `ttl` through the leader with a key on it and no keep-alive; answers when
/// the grant was sent.
async fn unattended_lease(cluster: &Cluster, leader: usize, key: &str, ttl: i64) -> Instant {
    let endpoint = cluster.endpoint(leader);
    let key = key.to_string();
    cluster
        .client_host()
        .spawn(async move {
            let sent = Instant::now();
            let channel = connect(&endpoint).await.expect("leader reachable");
            let grant = LeaseClient::new(channel.clone())
                .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                .await
                .expect("grant")
                .into_inner();
            let put = PutRequest {
                key: key.into_bytes(),
                value: b"v".to_vec().into(),
                lease: grant.id,
                ..Default::default()
            };
            detcd::pb::etcdserverpb::kv_client::KvClient::new(channel)
                .put(put)
                .await
                .expect("put");
            sent
        })
        .await
        .expect("client task")
}

/// What a leader change may add to a lease left alone, with default timings (README "Leases"):
/// the age of the last checkpoint (an interval and a tick), its rounding up to a second, the
/// leaderless time (openraft's 2 s leader lease, then an election of up to 2 s, then the
/// lessor's first tick), the election timeout the new leader grants, and the expiry tick.
const CONTINUITY: Duration =
    Duration::from_millis(5_500 + 1_000 + 2_000 + 2_000 + 500 + 1_000 + 500 + 500);

/// A 3-member cluster with delete-timing watchers and one lease of `ttl` granted through the
/// leader with a key on it and no keep-alive: answers the cluster, the leader, the watchers and
/// when the grant was sent.
async fn lease_left_alone(ttl: i64) -> (Cluster, usize, Deletes, Instant) {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(&ALL).await;
    let client = cluster.client_host().clone();
    let deletes = spawn_delete_watchers(&client, endpoints(&cluster), "svc/", 1);
    let sent = unattended_lease(&cluster, leader, "svc/alone", ttl).await;
    (cluster, leader, deletes, sent)
}

/// The key of [`lease_left_alone`] goes no sooner than its TTL after the grant and no later
/// than [`CONTINUITY`] plus `extra` after that; `what` names the failure.
async fn assert_continuity(
    mut cluster: Cluster,
    deletes: &Deletes,
    (sent, ttl): (Instant, Duration),
    extra: Duration,
    what: &str,
) -> u64 {
    let deleted = wait_deleted(&cluster, deletes, "svc/alone").await;
    assert!(deleted >= sent + ttl, "deleted early: {:?}", deleted - sent);
    assert!(
        deleted <= sent + ttl + extra + CONTINUITY,
        "{what} restarted the TTL: deleted {:?} after the grant",
        deleted - sent
    );
    cluster.record(format!("deleted after {:?}", deleted - sent));
    cluster.trace_hash()
}

/// A lease keeps the time it had left when its leader dies: the new leader continues from the
/// last checkpoint instead of starting the TTL again (etcd's default would delete the key TTL
/// after the election, here about a minute after the grant).
pub async fn lease_ttl_survives_leader_change() -> u64 {
    let (mut cluster, leader, deletes, sent) = lease_left_alone(30).await;
    let into = 18_000 + madsim::rand::thread_rng().gen_range(0..6_000);
    madsim::time::sleep(Duration::from_millis(into)).await;
    cluster.kill(leader);
    let what = format!("the leader killed {into} ms in");
    let lease = (sent, Duration::from_secs(30));
    assert_continuity(cluster, &deletes, lease, Duration::ZERO, &what).await
}

/// The same across a restart of the whole cluster: the checkpoint is on disk.
pub async fn lease_ttl_survives_full_restart() -> u64 {
    let (mut cluster, _, deletes, sent) = lease_left_alone(40).await;
    madsim::time::sleep(Duration::from_secs(25)).await;
    for member in ALL {
        cluster.kill(member);
    }
    let down = Duration::from_secs(2);
    madsim::time::sleep(down).await;
    for member in ALL {
        cluster.restart(member);
    }
    let lease = (sent, Duration::from_secs(40));
    assert_continuity(cluster, &deletes, lease, down, "the restarted cluster").await
}

/// A leader cut off from the others must stop acknowledging keep-alives before a new leader can
/// start counting the lease down: a provider that only talks to the old leader would otherwise
/// be told its lease lives while the new leader revokes it.
pub async fn partitioned_leader_stops_acknowledging() -> u64 {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(&ALL).await;
    let client = cluster.client_host().clone();
    let deletes = spawn_delete_watchers(&client, endpoints(&cluster), "svc/", 1);
    let ttl = madsim::rand::thread_rng().gen_range(3..=5);
    let provider = spawn_provider(
        &client,
        vec![cluster.endpoint(leader)],
        "svc/stuck".to_string(),
        (ttl, Duration::from_millis(ttl as u64 * 1000 / 3)),
        Duration::from_secs(20),
        End::Dies,
    );
    cluster
        .wait_until("registered", Duration::from_secs(10), || {
            let done = provider.lock().unwrap().registered;
            async move { done }
        })
        .await;
    madsim::time::sleep(Duration::from_millis(
        2_000 + madsim::rand::thread_rng().gen_range(0..2_000),
    ))
    .await;
    cluster.partition(&[leader]);
    let cut = Instant::now();
    let providers = [provider];
    wait_settled(&cluster, &providers, &deletes, Duration::from_secs(60)).await;
    cluster.heal();
    let p = providers[0].lock().unwrap().clone();
    let last = *p.acked.last().expect("acknowledged keep-alives");
    assert!(
        last < cut + Duration::from_secs(2),
        "the cut-off leader acknowledged a keep-alive {:?} after the partition",
        last - cut
    );
    let (checked, margin) = check(&providers, &deletes, cut);
    cluster.record(format!("checked {checked}, margin {margin}ms"));
    cluster.trace_hash()
}

async fn wait_deleted(cluster: &Cluster, deletes: &Deletes, key: &str) -> Instant {
    cluster
        .wait_until("the key deleted", Duration::from_secs(120), || {
            let done = deletes.lock().unwrap().contains_key(key);
            async move { done }
        })
        .await;
    deletes.lock().unwrap()[key]
}
