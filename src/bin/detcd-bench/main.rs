//! `detcd-bench`: a closed-loop load generator over the etcd v3 API, built on detcd's own
//! generated client, so the performance table can be reproduced from this repository alone
//! (`.bench/compare` runs it against etcd and detcd side by side). One JSON line per run on
//! stdout; progress and errors on stderr. It runs against any etcd v3 server.
//!
//! Workloads (closed loop: every client task keeps one request outstanding):
//! - `put`: a put of a random key of `--key-space` (value `--val-size` bytes).
//! - `range`, `range-serializable`: a single-key range of a random key, linearizable or
//!   serializable; the key space is filled first unless `--no-prefill`.
//! - `txn-put`: a txn `if version(key) > -1 then put(key)`, whose compare always holds.
//! - `watch-latency`: `--watchers` watch streams (spread over `--conns` connections) watch one
//!   prefix while a single writer puts under it (at most `--rate` puts a second, 0 = as fast as
//!   it goes). An op is one event received; its latency runs from the put's send time (carried in
//!   the value) to the event's arrival, so it includes the put's own commit.
//! - `lease-keepalive`: grant `--leases` leases of `--ttl` seconds, open one keep-alive stream
//!   per lease; the client tasks cycle through their leases, an op is one keep-alive and its
//!   answer. The leases are revoked at the end.
//! - `watch-one-stream`: `--watchers` watches with `prev_kv` on a single Watch stream while a
//!   writer puts at `--rate`; reports events per second and put-to-event latency.
//! - `lease-expiry`: grant `--leases` leases with one key each, let them all expire while a
//!   prober puts one key at `--probe-rate` per second; reports the expiry's pace and the
//!   prober's latency before and during it.
//! - `scan-keys`: one linearizable range over every key with `keys_only` (what
//!   `etcdctl get --prefix "" --keys-only` sends); reports the count and how long it took.
//! - `ready`: wait until every endpoint answers a status request and they agree on a leader;
//!   print the endpoints leader first (what `.bench/compare` passes to the other workloads).
//!
//! Output of the closed-loop workloads: `workload, label, params{..}, ops, seconds` (first
//! measured request's start to last completion), `ops_per_sec, p50_ms, p90_ms, p99_ms, p999_ms,
//! max_ms, mean_ms, errors` and `first_error` when there was one, the same fields as
//! `../shared/bench/kvbench` (whose command lines this binary accepts), so the two can be mixed.
//!
//! ```sh
//! cargo build --release --bin detcd-bench
//! target/release/detcd-bench --workload put --endpoints 127.0.0.1:2379 --clients 64 --conns 16 \
//!     --warmup 2 --duration 12
//! ```

#[cfg(not(madsim))]
mod conn;
#[cfg(not(madsim))]
mod kv;
#[cfg(not(madsim))]
mod lease;
#[cfg(not(madsim))]
mod options;
#[cfg(not(madsim))]
mod ready;
#[cfg(not(madsim))]
mod report;
#[cfg(not(madsim))]
mod watch;

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    use options::{Options, Workload, USAGE};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("detcd-bench: {error}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = runtime.block_on(async move {
        match options.workload {
            Workload::Put | Workload::Range | Workload::RangeSerializable | Workload::TxnPut => {
                kv::run(options).await
            }
            Workload::WatchLatency => watch::latency(options).await,
            Workload::WatchOneStream => watch::one_stream(options).await,
            Workload::LeaseKeepalive => lease::keepalive(options).await,
            Workload::LeaseExpiry => lease::expiry(options).await,
            Workload::ScanKeys => kv::scan_keys(options).await,
            Workload::Ready => ready::run(options).await,
        }
    });
    match outcome {
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
