//! The simulation harness: a detcd cluster of simulated hosts, each running the real server code
//! (`detcd::server::run`) on its own `SimDisk` and `Clock`, owned here so they survive kills.
//!
//! Scenario tests read as short stories on [`Cluster`]: start, find the leader, write, kill,
//! crash a disk, partition, heal, restart, and wait for conditions with a timeout — never a fixed
//! sleep. Every client operation and its outcome is appended to the trace, whose hash shows that
//! a seed replays the same run.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detcd::config::{Config, Invocation};
use detcd::env::sim_disk::CrashMode;
use detcd::env::{Clock, Disk, SimDisk};
use detcd::pb::etcdserverpb::cluster_client::ClusterClient;
use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use detcd::pb::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, HashKvRequest, HashKvResponse,
    MemberListRequest, MemberListResponse, PutRequest, RangeRequest, RequestOp, StatusRequest,
    StatusResponse, TxnRequest,
};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use tonic::transport::Channel;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// One member: its simulated host and the disk that survives the host.
pub struct Member {
    pub ip: IpAddr,
    pub node: NodeHandle,
    pub disk: SimDisk,
    /// The member's clock: skew set here survives restarts, as a machine's clock would.
    pub clock: Clock,
    /// Why the member's server stopped on its own (e.g. it refused a corrupted disk), if it did
    /// since it was last started.
    stopped: Arc<Mutex<Option<String>>>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    client: NodeHandle,
    trace: Vec<String>,
}

fn member_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, index as u8 + 1))
}

fn member_config(index: usize, size: usize, extra: &[&str]) -> Config {
    let initial_cluster: Vec<String> = (0..size)
        .map(|i| format!("m{}=http://{}:{PEER_PORT}", i + 1, member_ip(i)))
        .collect();
    let ip = member_ip(index);
    let args: Vec<String> = [
        "--name".to_string(),
        format!("m{}", index + 1),
        "--listen-client-urls".into(),
        format!("http://{ip}:{CLIENT_PORT}"),
        "--listen-peer-urls".into(),
        format!("http://{ip}:{PEER_PORT}"),
        "--initial-cluster".into(),
        initial_cluster.join(","),
    ]
    .into_iter()
    .chain(extra.iter().map(|flag| flag.to_string()))
    .collect();
    match Config::from_args(&args).expect("valid simulated member flags") {
        Invocation::Run(config) => *config,
        Invocation::Help => unreachable!(),
    }
}

/// A connection to `endpoint` (a member's client URL), if it can be made.
pub async fn connect(endpoint: &str) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .ok()?
        .connect()
        .await
        .ok()
}

/// The outcome of one client operation, as the trace records it.
pub type Outcome<T> = Result<T, tonic::Status>;

impl Cluster {
    /// Starts `size` members and one client host.
    pub fn start(size: usize) -> Cluster {
        Self::start_with_flags(size, &[])
    }

    /// Starts `size` members, each with etcd flags `extra` added, and one client host.
    pub fn start_with_flags(size: usize, extra: &[&str]) -> Cluster {
        // Observations of an earlier run on this thread are not this cluster's.
        detcd::env::probe::take();
        let handle = Handle::current();
        let mut members = Vec::new();
        for index in 0..size {
            let config = member_config(index, size, extra);
            let disk = SimDisk::new();
            // The clock lives outside the node, like the disk: a restart keeps its skew.
            let clock = Clock::new();
            let init_clock = clock.clone();
            let init_disk = disk.clone();
            let stopped = Arc::new(Mutex::new(None));
            let init_stopped = stopped.clone();
            let node = handle
                .create_node()
                .name(config.name.clone())
                .ip(member_ip(index))
                .init(move || {
                    let config = config.clone();
                    let disk = Disk::Sim(init_disk.clone());
                    let clock = init_clock.clone();
                    let stopped = init_stopped.clone();
                    *stopped.lock().expect("stopped lock") = None;
                    async move {
                        let result = detcd::server::run(
                            config,
                            disk,
                            clock,
                            std::future::pending(),
                            |_, _| {},
                        )
                        .await;
                        if let Err(error) = result {
                            // A member that cannot serve (e.g. a disk it cannot trust) stops.
                            if std::env::var_os("DETCD_SIM_TRACE").is_some() {
                                eprintln!("member stopped: {error}");
                            }
                            *stopped.lock().expect("stopped lock") = Some(error.to_string());
                        }
                    }
                })
                .build();
            members.push(Member {
                ip: member_ip(index),
                node,
                disk,
                clock,
                stopped,
            });
        }
        let client = handle
            .create_node()
            .name("client")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
            .build();
        Cluster {
            members,
            client,
            trace: Vec::new(),
        }
    }

    /// The client host, for long-running client tasks (watchers).
    pub fn client_host(&self) -> &NodeHandle {
        &self.client
    }

    pub fn endpoint(&self, member: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.members[member].ip)
    }

    /// Appends a line to the trace (hashed for the determinism check).
    pub fn record(&mut self, line: String) {
        let now = madsim::time::Instant::now();
        if std::env::var_os("DETCD_SIM_TRACE").is_some() {
            eprintln!("trace {now:?} {line}");
        }
        self.trace.push(format!("{now:?} {line}"));
    }

    /// FNV-1a of the trace: equal for two runs of one seed.
    pub fn trace_hash(&self) -> u64 {
        let mut hash = detcd::fnv::Fnv64::new();
        for line in &self.trace {
            hash.write(line.as_bytes());
            hash.write(b"\n");
        }
        hash.finish()
    }

    /// Runs `f` on the client host with a channel to `member`'s client port, under `deadline`.
    pub async fn on_client<T, F, Fut>(&self, member: usize, deadline: Duration, f: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(Channel) -> Fut + Send + 'static,
        Fut: Future<Output = Outcome<T>> + Send + 'static,
    {
        let endpoint = self.endpoint(member);
        self.client
            .spawn(async move {
                let call = async move {
                    let channel = tonic::transport::Endpoint::from_shared(endpoint)
                        .expect("valid endpoint")
                        .connect()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    f(channel).await
                };
                match madsim::time::timeout(deadline, call).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(tonic::Status::deadline_exceeded("client deadline")),
                }
            })
            .await
            .expect("client task")
    }

    /// Runs `f` with a KV client to `member` (15 s deadline: longer than a request timeout).
    async fn with_kv<T, F, Fut>(&self, member: usize, f: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(KvClient<Channel>) -> Fut + Send + 'static,
        Fut: Future<Output = Outcome<T>> + Send + 'static,
    {
        self.on_client(member, Duration::from_secs(15), move |channel| {
            f(KvClient::new(channel))
        })
        .await
    }

    /// Puts `key = value` through `member`; returns the revision of the put.
    pub async fn put(&mut self, member: usize, key: &str, value: &str) -> Outcome<i64> {
        let request = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        };
        let outcome = self
            .with_kv(member, move |mut kv| async move {
                let response = kv.put(request).await?.into_inner();
                Ok(response.header.map_or(0, |h| h.revision))
            })
            .await;
        self.record(format!(
            "put m{} {key}={value} -> {:?}",
            member + 1,
            brief(&outcome)
        ));
        outcome
    }

    /// Deletes `[key, range_end)` (or `key`) through `member`; returns the revision after it.
    pub async fn delete(&mut self, member: usize, key: &str, range_end: &str) -> Outcome<i64> {
        let request = DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            ..Default::default()
        };
        let outcome = self
            .with_kv(member, move |mut kv| async move {
                let response = kv.delete_range(request).await?.into_inner();
                Ok(response.header.map_or(0, |h| h.revision))
            })
            .await;
        self.record(format!(
            "delete m{} {key}..{range_end} -> {:?}",
            member + 1,
            brief(&outcome)
        ));
        outcome
    }

    /// One txn through `member` without compares: puts every `puts` pair and deletes `delete`,
    /// all at one revision; returns it.
    pub async fn txn(
        &mut self,
        member: usize,
        puts: &[(String, String)],
        delete: &str,
    ) -> Outcome<i64> {
        let mut success: Vec<RequestOp> = puts
            .iter()
            .map(|(key, value)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec().into(),
                    ..Default::default()
                })),
            })
            .collect();
        success.push(RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: delete.as_bytes().to_vec(),
                    ..Default::default()
                },
            )),
        });
        let request = TxnRequest {
            success,
            ..Default::default()
        };
        let outcome = self
            .with_kv(member, move |mut kv| async move {
                let response = kv.txn(request).await?.into_inner();
                Ok(response.header.map_or(0, |h| h.revision))
            })
            .await;
        self.record(format!(
            "txn m{} {puts:?} del {delete} -> {:?}",
            member + 1,
            brief(&outcome)
        ));
        outcome
    }

    /// Sends `count` puts through `member` all at once, each from its own connection (as many
    /// clients would); returns how many were acknowledged.
    pub async fn concurrent_puts(&mut self, member: usize, count: usize) -> usize {
        let endpoint = self.endpoint(member);
        let acked = self
            .client
            .spawn(async move {
                let puts = (0..count).map(|i| {
                    let endpoint = endpoint.clone();
                    async move {
                        let channel = tonic::transport::Endpoint::from_shared(endpoint)
                            .expect("valid endpoint")
                            .connect()
                            .await
                            .ok()?;
                        let request = PutRequest {
                            key: format!("concurrent{i:04}").into_bytes(),
                            value: bytes::Bytes::from_static(b"v"),
                            ..Default::default()
                        };
                        KvClient::new(channel).put(request).await.ok()
                    }
                });
                let all = futures::future::join_all(puts);
                match madsim::time::timeout(Duration::from_secs(15), all).await {
                    Ok(results) => results.into_iter().filter(Option::is_some).count(),
                    Err(_) => 0,
                }
            })
            .await
            .expect("client task");
        self.record(format!(
            "{count} concurrent puts m{} -> {acked} acked",
            member + 1
        ));
        acked
    }

    /// Reads `key` through `member` (linearizable unless `serializable`); returns its value.
    pub async fn get(
        &mut self,
        member: usize,
        key: &str,
        serializable: bool,
    ) -> Outcome<Option<String>> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable,
            ..Default::default()
        };
        let outcome = self
            .with_kv(member, move |mut kv| async move {
                let response = kv.range(request).await?.into_inner();
                Ok(response
                    .kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
            })
            .await;
        self.record(format!(
            "get m{} {key} -> {:?}",
            member + 1,
            brief(&outcome)
        ));
        outcome
    }

    /// Every key-value pair `member` has (serializable: its own state machine).
    pub async fn dump(&self, member: usize) -> Outcome<BTreeMap<String, String>> {
        let request = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            serializable: true,
            ..Default::default()
        };
        self.with_kv(member, move |mut kv| async move {
            let response = kv.range(request).await?.into_inner();
            Ok(response
                .kvs
                .into_iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    )
                })
                .collect())
        })
        .await
    }

    /// `member`'s answer to etcd's `Status` (2 s deadline: a member that does not answer is down).
    pub async fn status(&self, member: usize) -> Outcome<StatusResponse> {
        self.on_client(member, Duration::from_secs(2), |channel| async move {
            let response = MaintenanceClient::new(channel)
                .status(StatusRequest {})
                .await?;
            Ok(response.into_inner())
        })
        .await
    }

    /// `member`'s list of the cluster's members (etcd's `MemberList`, serializable).
    pub async fn member_list(&self, member: usize) -> Outcome<MemberListResponse> {
        self.on_client(member, Duration::from_secs(2), move |channel| async move {
            let response = ClusterClient::new(channel)
                .member_list(MemberListRequest::default())
                .await?;
            Ok(response.into_inner())
        })
        .await
    }

    /// `member`'s `HashKV` at `revision` (0: its current one), from its own state.
    pub async fn hash_kv(&self, member: usize, revision: i64) -> Outcome<HashKvResponse> {
        self.on_client(member, Duration::from_secs(2), move |channel| async move {
            let response = MaintenanceClient::new(channel)
                .hash_kv(HashKvRequest { revision })
                .await?;
            Ok(response.into_inner())
        })
        .await
    }

    /// Compacts history at `revision` through `member`.
    pub async fn compact(&mut self, member: usize, revision: i64) -> Outcome<()> {
        let outcome = self
            .with_kv(member, move |mut kv| async move {
                kv.compact(CompactionRequest {
                    revision,
                    physical: true,
                })
                .await?;
                Ok(())
            })
            .await;
        self.record(format!(
            "compact m{} {revision} -> {:?}",
            member + 1,
            brief(&outcome)
        ));
        outcome
    }

    /// Waits until `condition` holds, checking every 100 ms of simulated time; panics with
    /// `what` after `timeout`.
    pub async fn wait_until<F, Fut>(&self, what: &str, timeout: Duration, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = madsim::time::Instant::now() + timeout;
        while !condition().await {
            assert!(
                madsim::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for: {what}"
            );
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader that every member in `among` agrees on, if they all do.
    pub async fn agreed_leader(&self, among: &[usize]) -> Option<usize> {
        let mut leader_id = None;
        for &member in among {
            let status = self.status(member).await.ok()?;
            if status.leader == 0 || leader_id.is_some_and(|id| id != status.leader) {
                return None;
            }
            leader_id = Some(status.leader);
        }
        let leader_id = leader_id?;
        for &member in among {
            let status = self.status(member).await.ok()?;
            if status.header.as_ref().map(|h| h.member_id) == Some(leader_id) {
                return Some(member);
            }
        }
        None
    }

    /// Waits for the members in `among` to agree on a leader among them; returns it.
    pub async fn wait_for_leader(&mut self, among: &[usize]) -> usize {
        let mut found = None;
        let deadline = madsim::time::Instant::now() + Duration::from_secs(30);
        while found.is_none() {
            found = self.agreed_leader(among).await;
            assert!(
                madsim::time::Instant::now() < deadline,
                "no agreed leader among {among:?} within 30 s"
            );
            if found.is_none() {
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let leader = found.expect("leader found");
        self.record(format!("leader m{}", leader + 1));
        leader
    }

    /// The Raft term `member` reports.
    pub async fn term(&self, member: usize) -> Option<u64> {
        self.status(member)
            .await
            .ok()
            .and_then(|status| status.header.map(|h| h.raft_term))
    }

    /// Kills `member`'s process: its disk keeps everything written, synced or not, but the dying
    /// process cannot flush a clean shutdown (its handles are fenced first), as with SIGKILL.
    pub fn kill(&mut self, member: usize) {
        self.members[member].disk.fence();
        Handle::current().kill(self.members[member].node.id());
        self.record(format!("kill m{}", member + 1));
    }

    /// Power loss: `member`'s disk loses what the crash mode says, then its process dies.
    pub fn crash(&mut self, member: usize, mode: CrashMode) {
        let seed = madsim::rand::random::<u64>();
        self.members[member].disk.crash(mode, seed);
        Handle::current().kill(self.members[member].node.id());
        self.record(format!("crash m{} {mode:?}", member + 1));
    }

    /// Starts a killed or crashed `member` again on its disk.
    pub fn restart(&mut self, member: usize) {
        Handle::current().restart(self.members[member].node.id());
        self.record(format!("restart m{}", member + 1));
    }

    /// Cuts every link between `side` and the other members (clients still reach everyone).
    pub fn partition(&mut self, side: &[usize]) {
        let net = NetSim::current();
        for &inside in side {
            for outside in (0..self.members.len()).filter(|m| !side.contains(m)) {
                let (a, b) = (
                    self.members[inside].node.id(),
                    self.members[outside].node.id(),
                );
                net.clog_link(a, b);
                net.clog_link(b, a);
            }
        }
        self.record(format!("partition {side:?}"));
    }

    /// Freezes `member`'s process (a stop-the-world pause, SIGSTOP, a VM migration): it runs
    /// nothing until resumed, and its clock keeps going meanwhile.
    pub fn pause(&mut self, member: usize) {
        Handle::current().pause(self.members[member].node.id());
        self.record(format!("pause m{}", member + 1));
    }

    pub fn resume(&mut self, member: usize) {
        Handle::current().resume(self.members[member].node.id());
        self.record(format!("resume m{}", member + 1));
    }

    /// Makes `member`'s clock run fast (positive) or slow by `ppm` parts per million.
    pub fn set_drift(&mut self, member: usize, ppm: i64) {
        self.members[member].clock.set_drift_ppm(ppm);
        self.record(format!("drift m{} {ppm}ppm", member + 1));
    }

    /// Steps `member`'s clock by `millis` (forward if positive).
    pub fn jump_clock(&mut self, member: usize, millis: i64) {
        self.members[member].clock.jump(millis * 1_000_000);
        self.record(format!("clock jump m{} {millis}ms", member + 1));
    }

    /// Cuts the link from `from` to `to` only: `to` still reaches `from` (a one-way partition).
    pub fn clog_one_way(&mut self, from: usize, to: usize) {
        let (a, b) = (self.members[from].node.id(), self.members[to].node.id());
        NetSim::current().clog_link(a, b);
        self.record(format!("clog m{} -> m{}", from + 1, to + 1));
    }

    /// A bridge: `left` and `right` cannot reach each other, and every other member reaches both.
    pub fn bridge(&mut self, left: &[usize], right: &[usize]) {
        let net = NetSim::current();
        for &l in left {
            for &r in right {
                let (a, b) = (self.members[l].node.id(), self.members[r].node.id());
                net.clog_link(a, b);
                net.clog_link(b, a);
            }
        }
        self.record(format!("bridge {left:?} | {right:?}"));
    }

    /// Every message between hosts (clients included) is lost with probability `loss` and takes
    /// a latency drawn from `latency` (madsim's default: no loss, 1–10 ms).
    pub fn set_network(&mut self, loss: f64, latency: std::ops::Range<Duration>) {
        NetSim::current().update_config(|config| {
            config.packet_loss_rate = loss;
            config.send_latency = latency.clone();
        });
        self.record(format!("network loss {loss} latency {latency:?}"));
    }

    /// Why `member`'s server stopped by itself since it was last started, if it did.
    pub fn stopped(&self, member: usize) -> Option<String> {
        self.members[member]
            .stopped
            .lock()
            .expect("stopped lock")
            .clone()
    }

    /// Members that refused to start on a corrupted disk: lost for good (detcd cannot replace a
    /// member yet), so the checkers leave them out.
    pub fn fenced(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&m| self.stopped(m).is_some_and(|why| why.contains("corrupted")))
            .collect()
    }

    /// Bit rot found at restart: kills `member`, flips one bit among the bytes its last few
    /// fsyncs made durable, and starts it again. Answers the flipped offset.
    pub fn corrupt(&mut self, member: usize) -> Option<u64> {
        self.kill(member);
        let seed = madsim::rand::random::<u64>();
        let flipped = self.members[member].disk.flip_recent_bit_in_any_file(seed);
        self.record(format!("flip a bit of m{} at {flipped:?}", member + 1));
        self.restart(member);
        flipped.map(|(_, offset)| offset)
    }

    /// `member`'s fsyncs do not return until [`Cluster::clear_disk`] (a stalled disk).
    pub fn stall_disk(&mut self, member: usize) {
        self.members[member].disk.set_stalled(true);
        self.record(format!("disk m{} stalled", member + 1));
    }

    /// `member`'s fsyncs take `latency` (a slow disk).
    pub fn slow_disk(&mut self, member: usize, latency: Duration) {
        self.members[member].disk.set_sync_latency(latency);
        self.record(format!("disk m{} fsync {latency:?}", member + 1));
    }

    /// `member`'s state machine waits `latency` before each commit of what it applied (and
    /// answered): a slow store, which [`Cluster::clear_disk`] does not clear.
    pub fn slow_commits(&mut self, member: usize, latency: Duration) {
        self.members[member].disk.set_commit_latency(latency);
        self.record(format!("disk m{} commit {latency:?}", member + 1));
    }

    /// `member`'s disk fails reads, writes or fsyncs with EIO (`which`: 0, 1, 2) until cleared.
    pub fn fail_disk(&mut self, member: usize, which: u8) {
        let disk = &self.members[member].disk;
        match which {
            0 => disk.set_fail_reads(true),
            1 => disk.set_fail_writes(true),
            _ => disk.set_fail_syncs(true),
        }
        self.record(format!("disk m{} EIO {which}", member + 1));
    }

    /// Clears `member`'s disk faults (EIO, latency and stalls).
    pub fn clear_disk(&mut self, member: usize) {
        let disk = &self.members[member].disk;
        disk.set_fail_reads(false);
        disk.set_fail_writes(false);
        disk.set_fail_syncs(false);
        disk.set_stalled(false);
        disk.set_sync_latency(detcd::env::sim_disk::DEFAULT_SYNC_LATENCY);
        self.record(format!("disk m{} healthy", member + 1));
    }

    /// The madsim host id of every member, for the Raft checker's probes.
    pub fn host_names(&self) -> Vec<(u64, String)> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let id: u64 = m.node.id().to_string().parse().expect("numeric node id");
                (id, format!("m{}", i + 1))
            })
            .collect()
    }

    /// Restores every link between members.
    pub fn heal(&mut self) {
        let net = NetSim::current();
        for a in &self.members {
            for b in &self.members {
                if a.node.id() != b.node.id() {
                    net.unclog_link(a.node.id(), b.node.id());
                }
            }
        }
        self.record("heal".to_string());
    }
}

/// A scenario that fails drops its cluster while panicking: the hash of the trace up to the
/// failure goes with the replay command, and a replay must print the same one.
impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "trace hash up to the failure: {:016x} ({} lines; DETCD_SIM_TRACE=1 prints them)",
                self.trace_hash(),
                self.trace.len()
            );
        }
    }
}

fn brief<T: std::fmt::Debug>(outcome: &Outcome<T>) -> String {
    match outcome {
        Ok(value) => format!("ok {value:?}"),
        Err(status) => format!("err {:?}", status.code()),
    }
}
