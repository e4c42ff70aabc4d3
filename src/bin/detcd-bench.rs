//! `detcd-bench`: load generator over the etcd v3 API (detcd's own generated client), for
//! measurements `kvbench` cannot make. One JSON line per run on stdout; progress on stderr.
//!
//! Workloads:
//! - `lease-expiry`: grant `--leases` leases of `--ttl` seconds, each with one key, then let them
//!   all expire while a prober puts one key at `--probe-rate` per second. Reports how long the
//!   mass expiry took, how fast keys went, and the prober's latency before and during it: a
//!   server whose expiry stalls it shows up in the second figure.
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

    pub const USAGE: &str = "usage: detcd-bench --workload lease-expiry [--endpoints a,b] \
        [--leases 100000] [--ttl 60] [--clients 64] [--conns 16] [--probe-rate 100] \
        [--label text]";

    #[derive(Debug, Clone)]
    pub struct Options {
        endpoints: Vec<String>,
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
                endpoints: vec!["127.0.0.1:2379".to_string()],
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
                    other => return Err(format!("unknown flag {other}")),
                }
            }
            match workload.as_deref() {
                Some("lease-expiry") => Ok(options),
                Some(other) => Err(format!("unknown workload {other:?}")),
                None => Err("--workload is required".to_string()),
            }
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
