//! Leases through etcd's Rust client against etcd 3.4 and detcd: client-chosen and duplicate IDs,
//! headers, keep-alive answers for live and unknown leases, time-to-live of unknown leases,
//! revokes and their revisions must be equal; and a provider killed with SIGKILL loses its key
//! within the stated bound, seen by a watcher, never before its TTL.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
};

use crate::harness::{block_on, same_as_etcd, Process, TempDir, Trio};

fn error(error: etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => format!("client error: {other}"),
    }
}

fn header(header: Option<&etcd_client::ResponseHeader>) -> String {
    header.map_or("no header".to_string(), |h| {
        format!(
            "rev={} ids_set={}",
            h.revision(),
            h.cluster_id() != 0 && h.member_id() != 0
        )
    })
}

async fn cases(endpoint: String) -> Vec<String> {
    let mut client = Client::connect([endpoint.as_str()], None)
        .await
        .expect("connect");
    let mut lines = Vec::new();
    const ID: i64 = 0x1234;
    let grant = |ttl: i64, id: i64| (ttl, Some(LeaseGrantOptions::new().with_id(id)));
    for (ttl, options) in [
        grant(100, ID),
        grant(100, ID),
        grant(1, -7),
        grant(9_000_000_001, 0),
    ] {
        lines.push(match client.lease_grant(ttl, options).await {
            Ok(r) => format!(
                "grant: id={:x} ttl={} error={:?} {}",
                r.id(),
                r.ttl(),
                r.error(),
                header(r.header())
            ),
            Err(e) => format!("grant: {}", error(e)),
        });
    }
    let with_lease = |id| Some(PutOptions::new().with_lease(id));
    for id in [ID, 0x9999] {
        lines.push(match client.put("k", "v", with_lease(id)).await {
            Ok(r) => format!("put with {id:x}: {}", header(r.header())),
            Err(e) => format!("put with {id:x}: {}", error(e)),
        });
    }
    for id in [ID, 0x9999] {
        let options = Some(LeaseTimeToLiveOptions::new().with_keys());
        lines.push(match client.lease_time_to_live(id, options).await {
            // What is left depends on timing: within 2s of the grant, or etcd's -1 if unknown.
            Ok(r) => format!(
                "ttl of {id:x}: id={:x} ttl={} granted={} keys={:?} {}",
                r.id(),
                if r.granted_ttl() > 0 && (r.granted_ttl() - 2..=r.granted_ttl()).contains(&r.ttl())
                {
                    "near granted".to_string()
                } else {
                    r.ttl().to_string()
                },
                r.granted_ttl(),
                r.keys(),
                header(r.header())
            ),
            Err(e) => format!("ttl of {id:x}: {}", error(e)),
        });
    }
    for id in [ID, 0x9999] {
        // etcd-client reads the first answer itself: TTL 0 (unknown lease) is its error.
        let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
            Ok(pair) => pair,
            Err(e) => {
                lines.push(format!("keep-alive {id:x}: {}", error(e)));
                continue;
            }
        };
        for _ in 0..2 {
            keeper.keep_alive().await.expect("send");
            lines.push(match stream.message().await {
                Ok(Some(r)) => format!(
                    "keep-alive {id:x}: id={:x} ttl={} {}",
                    r.id(),
                    r.ttl(),
                    header(r.header())
                ),
                other => format!("keep-alive {id:x}: {other:?}"),
            });
        }
    }
    let mut listed: Vec<i64> = client
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    listed.sort();
    lines.push(format!("leases: {listed:x?}"));
    for id in [ID, ID, -7, 0x9999] {
        lines.push(match client.lease_revoke(id).await {
            Ok(r) => format!("revoke {id:x}: {}", header(r.header())),
            Err(e) => format!("revoke {id:x}: {}", error(e)),
        });
    }
    lines.push(format!(
        "k after revoke: {}",
        client.get("k", None).await.expect("get").kvs().len()
    ));
    lines
}

#[test]
fn lease_through_etcd_client_as_from_etcd() {
    same_as_etcd("lease-client", cases);
}

/// A service provider: a key under a 3-second lease kept alive by `etcdctl lease keep-alive`,
/// which is then killed with SIGKILL. Measured from the last keep-alive the provider saw
/// acknowledged (it prints a line per answer), a watcher of the prefix sees the delete no sooner
/// than the TTL (less 200ms for printing and reading that line) and no later than the TTL plus
/// the lessor's tick and a second of slack. (From the kill itself the bound would depend on
/// when etcdctl last got to renew, which a loaded machine delays.)
#[test]
fn a_killed_provider_loses_its_key_within_the_bound() {
    const TTL: i64 = 3;
    let dir = TempDir::new("provider");
    let detcd = Process::detcd_single(&dir, "detcd");
    let endpoint = detcd.client_endpoint.clone();
    block_on(async move {
        let mut client = Client::connect([endpoint.as_str()], None)
            .await
            .expect("connect");
        let lease = client.lease_grant(TTL, None).await.expect("grant").id();
        client
            .put(
                "services/api",
                "10.0.0.1:8080",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("register");
        let mut watch = client
            .watch("services/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        watch.message().await.expect("created");
        let mut provider = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["lease", "keep-alive", &format!("{lease:x}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcdctl keep-alive");
        // When each acknowledgement was printed.
        let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        let stdout = provider.stdout.take().expect("provider stdout");
        let reader = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout).lines() {
                    match line {
                        Ok(line) if line.contains("keepalived") => {
                            acks.lock().unwrap().push(Instant::now())
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        // Outlive the TTL twice over: the keep-alives must hold the key.
        tokio::time::sleep(Duration::from_secs(2 * TTL as u64)).await;
        let alive = client.get("services/api", None).await.expect("get");
        assert_eq!(alive.kvs().len(), 1, "the kept-alive key vanished");
        provider.kill().expect("SIGKILL the provider");
        provider.wait().expect("reap");
        reader.join().expect("reader");
        let acks = acks.lock().unwrap().clone();
        assert!(
            acks.len() >= 2,
            "the provider renewed ({} acks)",
            acks.len()
        );
        let last_ack = *acks.last().unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), watch.message())
            .await
            .expect("the key is deleted")
            .expect("watch")
            .expect("open");
        let after = last_ack.elapsed();
        let event = &response.events()[0];
        assert_eq!(event.event_type(), EventType::Delete);
        assert_eq!(event.kv().unwrap().key(), b"services/api");
        let ttl = Duration::from_secs(TTL as u64);
        assert!(
            after >= ttl - Duration::from_millis(200),
            "deleted {after:?} after the last acknowledged keep-alive: earlier than the TTL"
        );
        assert!(
            after <= ttl + Duration::from_millis(1500),
            "deleted {after:?} after the last acknowledged keep-alive: later than TTL + tick + \
             slack"
        );
        println!(
            "the key went {after:?} after the provider's last acknowledged keep-alive (TTL {TTL}s)"
        );
    });
}

/// Through a follower of a 3-member cluster: grant, attach, keep alive (several on one stream,
/// and after the revoke), time-to-live and revoke all work, forwarded to the leader, and are
/// answered in the follower's name.
#[test]
fn leases_work_through_a_follower() {
    let dir = TempDir::new("lease-cluster");
    let trio = Trio::start(&dir);
    block_on(async {
        let mut client = trio.follower_client().await;
        let follower_id = client
            .status()
            .await
            .expect("status")
            .header()
            .expect("header")
            .member_id();
        let grant = client.lease_grant(60, None).await.expect("grant");
        assert_eq!(grant.header().expect("header").member_id(), follower_id);
        let lease = grant.id();
        client
            .put("svc/x", "1", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put with the lease");
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.expect("keep-alive");
        keeper.keep_alive().await.expect("send");
        let renewed = stream.message().await.expect("answer").expect("open");
        assert_eq!((renewed.id(), renewed.ttl()), (lease, 60));
        assert_eq!(renewed.header().expect("header").member_id(), follower_id);
        // More on the same stream: the follower forwards them on one stream of its own.
        for _ in 0..3 {
            keeper.keep_alive().await.expect("send");
            let renewed = stream.message().await.expect("answer").expect("open");
            assert_eq!((renewed.id(), renewed.ttl()), (lease, 60));
        }
        let options = Some(LeaseTimeToLiveOptions::new().with_keys());
        let ttl = client
            .lease_time_to_live(lease, options)
            .await
            .expect("time to live");
        assert_eq!(
            (ttl.granted_ttl(), ttl.keys()),
            (60, &[b"svc/x".to_vec()][..])
        );
        assert!((58..=60).contains(&ttl.ttl()), "ttl {}", ttl.ttl());
        client.lease_revoke(lease).await.expect("revoke");
        // A revoked lease's keep-alives answer TTL 0 and the stream goes on, as etcd's.
        for _ in 0..2 {
            keeper.keep_alive().await.expect("send");
            let gone = stream.message().await.expect("answer").expect("open");
            assert_eq!((gone.id(), gone.ttl()), (lease, 0));
        }
        for endpoint in &trio.endpoints {
            let mut member = Client::connect([endpoint.as_str()], None)
                .await
                .expect("connect");
            let deadline = Instant::now() + Duration::from_secs(5);
            while member
                .get(
                    "svc/x",
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await
                .expect("get")
                .count()
                != 0
            {
                assert!(Instant::now() < deadline, "the revoke reaches {endpoint}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
}
