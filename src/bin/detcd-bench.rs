//! `detcd-bench`: load generator over the etcd v3 API (detcd's own generated client), for
//! measurements `kvbench` cannot make. One JSON line per run on stdout; progress on stderr.
//!
//! Workloads:
//! - `lease-expiry`: grant `--leases` leases of `--ttl` seconds, each with one key, then let them
//!   all expire while a prober puts one key at `--probe-rate` per second. Reports how long the
//!   mass expiry took, how fast keys went, and the prober's latency before and during it: a
//!   server whose expiry stalls it shows up in the second figure.
//! - `watch-one-stream`: `--watchers` watches of one prefix on a single Watch stream (with
//!   `prev_kv` unless `--no-prev-kv`), while a writer puts keys of `--key-space` under it at
//!   `--rate` per second for `--duration` seconds. Reports events received per second and the
//!   put-to-event latency (the put's send time travels in its value).
//!
//! ```sh
//! cargo build --release --bin detcd-bench
//! target/release/detcd-bench --workload lease-expiry --endpoints 127.0.0.1:2379 \
//!     --leases 100000 --ttl 60 --clients 64 --conns 16
//! ```

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match bench::Options::parse(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("detcd-bench: {error}\n{}", bench::USAGE);
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(bench::run(options)) {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("detcd-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(madsim)]
fn main() {
    eprintln!("detcd-bench: built with --cfg madsim; build it without to run");
    std::process::exit(2);
}

#[cfg(not(madsim))]
mod bench {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use detcd::env::{Clock, Duration};
    use detcd::pb::etcdserverpb::kv_client::KvClient;
    use detcd::pb::etcdserverpb::lease_client::LeaseClient;
    use detcd::pb::etcdserverpb::{LeaseGrantRequest, PutRequest, RangeRequest};
    use tonic::transport::Channel;

    pub const USAGE: &str = "usage: detcd-bench --workload lease-expiry|watch-one-stream \
        [--endpoints a,b] [--leases 100000] [--ttl 60] [--clients 64] [--conns 16] \
        [--probe-rate 100] [--watchers 1000] [--no-prev-kv] [--rate 200] [--duration 12] \
        [--key-space 1000] [--label text]";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Workload {
        LeaseExpiry,
        WatchOneStream,
    }

    #[derive(Debug, Clone)]
    pub struct Options {
        workload: Workload,
        endpoints: Vec<String>,
        watchers: usize,
        prev_kv: bool,
        rate: u64,
        duration: u64,
        key_space: u64,
        leases: u64,
        ttl: i64,
        clients: usize,
        conns: usize,
        probe_rate: u64,
        label: String,
    }

    impl Options {
        pub fn parse(args: &[String]) -> Result<Options, String> {
            let mut options = Options {
                workload: Workload::LeaseExpiry,
                endpoints: vec!["127.0.0.1:2379".to_string()],
                watchers: 1000,
                prev_kv: true,
                rate: 200,
                duration: 12,
                key_space: 1000,
                leases: 100_000,
                ttl: 60,
                clients: 64,
                conns: 16,
                probe_rate: 100,
                label: String::new(),
            };
            let mut workload = None;
            let mut args = args.iter();
            while let Some(flag) = args.next() {
                if flag == "--no-prev-kv" {
                    options.prev_kv = false;
                    continue;
                }
                let (name, inline) = match flag.split_once('=') {
                    Some((name, value)) => (name, Some(value.to_string())),
                    None => (flag.as_str(), None),
                };
                let value = inline
                    .or_else(|| args.next().cloned())
                    .ok_or_else(|| format!("{name} needs a value"))?;
                let number = |value: &str| {
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("{name}: {value:?} is not a number"))
                };
                match name {
                    "--workload" => workload = Some(value),
                    "--endpoints" => {
                        options.endpoints = value.split(',').map(str::to_string).collect()
                    }
                    "--leases" => options.leases = number(&value)?,
                    "--ttl" => options.ttl = number(&value)? as i64,
                    "--clients" => options.clients = number(&value)?.max(1) as usize,
                    "--conns" => options.conns = number(&value)?.max(1) as usize,
                    "--probe-rate" => options.probe_rate = number(&value)?.max(1),
                    "--label" => options.label = value,
                    "--watchers" => options.watchers = number(&value)?.max(1) as usize,
                    "--rate" => options.rate = number(&value)?.max(1),
                    "--duration" => options.duration = number(&value)?.max(1),
                    "--key-space" => options.key_space = number(&value)?.max(1),
                    other => return Err(format!("unknown flag {other}")),
                }
            }
            options.workload = match workload.as_deref() {
                Some("lease-expiry") => Workload::LeaseExpiry,
                Some("watch-one-stream") => Workload::WatchOneStream,
                Some(other) => return Err(format!("unknown workload {other:?}")),
                None => return Err("--workload is required".to_string()),
            };
            Ok(options)
        }
    }

    async fn connect(endpoint: &str) -> Result<Channel, String> {
        let url = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{endpoint}: {e}"))
    }

    /// Latency percentiles of `micros`, in milliseconds, as JSON.
    fn summary(mut micros: Vec<u64>) -> String {
        micros.sort_unstable();
        let at = |q: f64| {
            if micros.is_empty() {
                return 0.0;
            }
            let index = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
            micros[index] as f64 / 1000.0
        };
        format!(
            "{{\"n\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
            micros.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }

    const PREFIX: &str = "bench/lease/";

    async fn remaining_keys(kv: &mut KvClient<Channel>) -> Result<i64, String> {
        let request = RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: b"bench/lease0".to_vec(),
            count_only: true,
            serializable: true,
            ..Default::default()
        };
        let response = kv.range(request).await.map_err(|e| e.to_string())?;
        Ok(response.into_inner().count)
    }

    pub async fn run(options: Options) -> Result<String, String> {
        match options.workload {
            Workload::LeaseExpiry => lease_expiry(options).await,
            Workload::WatchOneStream => watch_one_stream(options).await,
        }
    }

    const WATCH_PREFIX: &str = "bench/watch/";

    async fn watch_one_stream(options: Options) -> Result<String, String> {
        use detcd::pb::etcdserverpb::watch_client::WatchClient;
        use detcd::pb::etcdserverpb::watch_request::RequestUnion;
        use detcd::pb::etcdserverpb::{WatchCreateRequest, WatchRequest};

        let clock = Clock::new();
        let endpoint = &options.endpoints[0];
        let watch_channel = connect(endpoint).await?;
        let write_channel = connect(endpoint).await?;
        // Every key exists before the watchers start, so each event has a previous version.
        let mut kv = KvClient::new(write_channel.clone());
        for key in 0..options.key_space {
            let put = PutRequest {
                key: format!("{WATCH_PREFIX}{key:08}").into_bytes(),
                value: b"0".to_vec().into(),
                ..Default::default()
            };
            kv.put(put).await.map_err(|e| e.to_string())?;
        }
        let (requests, receiver) = tokio::sync::mpsc::channel(options.watchers + 1);
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|request| (request, receiver))
        });
        // Queued before the call: a Go gRPC server sends its headers only with its first
        // message, so awaiting the call first would wait forever on etcd.
        for _ in 0..options.watchers {
            let create = WatchCreateRequest {
                key: WATCH_PREFIX.as_bytes().to_vec(),
                range_end: b"bench/watch0".to_vec(),
                prev_kv: options.prev_kv,
                ..Default::default()
            };
            let request = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            };
            requests.send(request).await.map_err(|e| e.to_string())?;
        }
        let mut responses = WatchClient::new(watch_channel)
            .watch(stream)
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let mut created = 0;
        while created < options.watchers {
            match responses.message().await.map_err(|e| e.to_string())? {
                Some(response) if response.created => created += 1,
                Some(_) => {}
                None => return Err("watch stream closed while creating".to_string()),
            }
        }
        eprintln!("detcd-bench: {created} watchers on one stream");
        // The writer: puts at a fixed rate; each value carries its send time.
        let puts = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop_at = clock.now().plus(Duration::from_secs(options.duration));
        let writer = {
            let (clock, puts, errors) = (clock.clone(), puts.clone(), errors.clone());
            let options = options.clone();
            tokio::spawn(async move {
                let mut kv = KvClient::new(write_channel);
                let interval = Duration::from_micros(1_000_000 / options.rate);
                let mut next = clock.now();
                let mut i: u64 = 0;
                while clock.now() < stop_at {
                    let sent = clock.now().as_nanos();
                    let put = PutRequest {
                        key: format!("{WATCH_PREFIX}{:08}", (i * 7919) % options.key_space)
                            .into_bytes(),
                        value: format!("{sent:020}").into_bytes().into(),
                        ..Default::default()
                    };
                    i += 1;
                    match kv.put(put).await {
                        Ok(_) => puts.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    next = next.plus(interval);
                    let now = clock.now();
                    if next > now {
                        clock.sleep(next.since(now)).await;
                    }
                }
            })
        };
        // Receive until the writer is done and every watcher has had its last event.
        let started = clock.now();
        let mut latencies = Vec::new();
        let mut events: u64 = 0;
        let mut with_prev: u64 = 0;
        let mut last_event = started;
        let grace = Duration::from_secs(5);
        loop {
            let left = stop_at.plus(grace).since(clock.now());
            if left.is_zero() {
                break;
            }
            let Ok(message) = clock.timeout(left, responses.message()).await else {
                break;
            };
            let Some(response) = message.map_err(|e| e.to_string())? else {
                break;
            };
            last_event = clock.now();
            let now = last_event.as_nanos();
            for event in &response.events {
                events += 1;
                with_prev += u64::from(event.prev_kv.is_some());
                let sent = event
                    .kv
                    .as_ref()
                    .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok());
                if let Some(sent) = sent {
                    latencies.push(now.saturating_sub(sent) / 1000);
                }
            }
            if writer.is_finished()
                && events >= puts.load(Ordering::Relaxed) * options.watchers as u64
            {
                break;
            }
        }
        let elapsed = last_event.since(started).as_secs_f64().max(1e-9);
        let puts = puts.load(Ordering::Relaxed);
        let expected = puts * options.watchers as u64;
        Ok(format!(
            "{{\"workload\":\"watch-one-stream\",\"label\":{:?},\"watchers\":{},\"prev_kv\":{},\
             \"rate\":{},\"puts\":{puts},\"events\":{events},\"events_expected\":{expected},\
             \"events_with_prev_kv\":{with_prev},\"events_per_sec\":{:.0},\"latency\":{},\
             \"errors\":{}}}",
            options.label,
            options.watchers,
            options.prev_kv,
            options.rate,
            events as f64 / elapsed,
            summary(latencies),
            errors.load(Ordering::Relaxed)
        ))
    }

    async fn lease_expiry(options: Options) -> Result<String, String> {
        let clock = Clock::new();
        let mut channels = Vec::new();
        for i in 0..options.conns {
            let endpoint = &options.endpoints[i % options.endpoints.len()];
            channels.push(connect(endpoint).await?);
        }
        // Load: every lease with its key.
        let started = clock.now();
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut loaders = Vec::new();
        for client in 0..options.clients {
            let channel = channels[client % channels.len()].clone();
            let (next, errors, options) = (next.clone(), errors.clone(), options.clone());
            loaders.push(tokio::spawn(async move {
                let mut leases = LeaseClient::new(channel.clone());
                let mut kv = KvClient::new(channel);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= options.leases {
                        return;
                    }
                    let grant = LeaseGrantRequest {
                        ttl: options.ttl,
                        id: 0,
                    };
                    let Ok(granted) = leases.lease_grant(grant).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let put = PutRequest {
                        key: format!("{PREFIX}{i:08}").into_bytes(),
                        value: vec![b'v'; 64].into(),
                        lease: granted.into_inner().id,
                        ..Default::default()
                    };
                    if kv.put(put).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for loader in loaders {
            loader.await.map_err(|e| e.to_string())?;
        }
        let loaded = clock.now();
        let load_secs = loaded.since(started).as_secs_f64();
        eprintln!(
            "detcd-bench: {} leases with keys in {load_secs:.1}s",
            options.leases
        );
        // Probe until every key is gone (or four TTLs have passed).
        let mut kv = KvClient::new(channels[0].clone());
        let interval = Duration::from_micros(1_000_000 / options.probe_rate);
        let deadline = loaded.plus(Duration::from_secs(options.ttl as u64 * 4 + 60));
        let (mut before, mut during) = (Vec::new(), Vec::new());
        let mut first_gone = None;
        let mut all_gone = None;
        let mut last_count = clock.now();
        let mut probe: u64 = 0;
        while clock.now() < deadline {
            let sent = clock.now();
            let put = PutRequest {
                key: b"bench/probe".to_vec(),
                value: probe.to_string().into_bytes().into(),
                ..Default::default()
            };
            probe += 1;
            match kv.put(put).await {
                Ok(_) => {
                    let micros = clock.now().since(sent).as_micros() as u64;
                    if first_gone.is_some() {
                        during.push(micros);
                    } else {
                        before.push(micros);
                    }
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if clock.now().since(last_count) >= Duration::from_millis(200) {
                last_count = clock.now();
                let left = remaining_keys(&mut kv).await?;
                if first_gone.is_none() && left < options.leases as i64 {
                    first_gone = Some(clock.now());
                    eprintln!("detcd-bench: expiry started {left} keys left");
                }
                if left == 0 {
                    all_gone = Some(clock.now());
                    break;
                }
            }
            let spent = clock.now().since(sent);
            if spent < interval {
                clock.sleep(interval - spent).await;
            }
        }
        let secs = |at: Option<detcd::env::clock::Instant>, from| {
            at.map_or("null".to_string(), |at| {
                format!("{:.2}", at.since(from).as_secs_f64())
            })
        };
        let expiry_secs = match (first_gone, all_gone) {
            (Some(first), Some(all)) => all.since(first).as_secs_f64(),
            _ => f64::NAN,
        };
        Ok(format!(
            "{{\"workload\":\"lease-expiry\",\"label\":{:?},\"leases\":{},\"ttl\":{},\
             \"clients\":{},\"conns\":{},\"load_secs\":{load_secs:.2},\
             \"first_expiry_after_load_secs\":{},\"all_gone_after_load_secs\":{},\
             \"expiry_secs\":{expiry_secs:.2},\"expired_per_sec\":{:.0},\
             \"probe_before\":{},\"probe_during\":{},\"errors\":{}}}",
            options.label,
            options.leases,
            options.ttl,
            options.clients,
            options.conns,
            secs(first_gone, loaded),
            secs(all_gone, loaded),
            options.leases as f64 / expiry_secs,
            summary(before),
            summary(during),
            errors.load(Ordering::Relaxed)
        ))
    }
}
