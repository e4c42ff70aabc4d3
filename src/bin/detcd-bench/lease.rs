//! `lease-keepalive` (closed-loop keep-alives over one stream per lease) and `lease-expiry`
//! (many leases with a key each, left to expire while a prober writes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use detcd::env::{Clock, Duration, Instant};
use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::lease_client::LeaseClient;
use detcd::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    PutRequest, RangeRequest,
};
use tonic::transport::Channel;
use tonic::Streaming;

use crate::options::Options;
use crate::report::{json_string, Tally, Window};

/// Grants `count` leases of `ttl_seconds` with `options.clients` concurrent granters; calls
/// `then(channel, index, id)` after each grant (the expiry workload puts its key there).
async fn grant<F, Fut>(
    options: &Options,
    channels: &[Channel],
    count: u64,
    then: F,
) -> Result<Vec<i64>, String>
where
    F: Fn(Channel, u64, i64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let mut granters = Vec::new();
    for granter in 0..options.clients {
        let channel = channels[granter % channels.len()].clone();
        let (next, ttl, then) = (next.clone(), options.ttl_seconds, then.clone());
        granters.push(tokio::spawn(async move {
            let mut leases = LeaseClient::new(channel.clone());
            let mut ids = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, String>(ids);
                }
                let request = LeaseGrantRequest { ttl, id: 0 };
                let granted = leases.lease_grant(request).await;
                let id = granted
                    .map_err(|status| status.to_string())?
                    .into_inner()
                    .id;
                then(channel.clone(), index, id).await?;
                ids.push(id);
            }
        }));
    }
    let mut ids = Vec::new();
    for granter in granters {
        ids.extend(granter.await.map_err(|e| e.to_string())??);
    }
    Ok(ids)
}

/// A keep-alive stream of one lease.
struct KeepAlive {
    id: i64,
    requests: tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlive {
    /// Opens the stream with a first keep-alive already queued (a Go gRPC server answers the
    /// call only with its first message) and reads its answer.
    async fn open(channel: Channel, id: i64) -> Result<KeepAlive, String> {
        let (requests, receiver) = tokio::sync::mpsc::channel(4);
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|request| (request, receiver))
        });
        requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|e| e.to_string())?;
        let responses = LeaseClient::new(channel)
            .lease_keep_alive(stream)
            .await
            .map_err(|status| status.to_string())?
            .into_inner();
        let mut keep_alive = KeepAlive {
            id,
            requests,
            responses,
        };
        keep_alive.answer().await?;
        Ok(keep_alive)
    }

    async fn renew(&mut self) -> Result<(), String> {
        let request = LeaseKeepAliveRequest { id: self.id };
        self.requests
            .send(request)
            .await
            .map_err(|_| "keep-alive stream closed".to_string())?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<(), String> {
        match self.responses.message().await {
            Ok(Some(response)) if response.ttl > 0 => Ok(()),
            Ok(Some(_)) => Err(format!("lease {:x} expired", self.id)),
            Ok(None) => Err("keep-alive stream closed".to_string()),
            Err(status) => Err(status.to_string()),
        }
    }
}

/// `lease-keepalive`.
pub async fn keepalive(options: Options) -> Result<String, String> {
    let channels = crate::conn::channels(&options).await?;
    let clock = Clock::new();
    let started = clock.now();
    let no_key = |_: Channel, _: u64, _: i64| async { Ok(()) };
    let ids = grant(&options, &channels, options.leases, no_key).await?;
    let grant_seconds = clock.now().since(started).as_secs_f64();
    eprintln!(
        "detcd-bench: granted {} leases in {grant_seconds:.2}s",
        ids.len()
    );
    // Lease i is kept alive over connection i % conns by client task i % clients.
    let mut per_client: Vec<Vec<KeepAlive>> = (0..options.clients).map(|_| Vec::new()).collect();
    for (index, &id) in ids.iter().enumerate() {
        let keep_alive = KeepAlive::open(channels[index % channels.len()].clone(), id).await?;
        per_client[index % options.clients].push(keep_alive);
    }
    let window = Arc::new(Window::new(&options, &clock));
    let mut tasks = Vec::new();
    for mut streams in per_client {
        let (window, clock) = (window.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut turn = 0;
            while !streams.is_empty() {
                let Some(measured) = window.next() else { break };
                let index = turn % streams.len();
                let keep_alive = &mut streams[index];
                turn += 1;
                let sent = clock.now();
                let outcome = keep_alive.renew().await;
                let done = clock.now();
                match outcome {
                    Ok(()) if measured => tally.ok(sent, done),
                    Ok(()) => {}
                    Err(error) if measured => tally.error(error),
                    Err(_) => {}
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.map_err(|e| e.to_string())?);
    }
    let revoke_seconds = revoke(&channels, ids, &clock).await;
    let extra = format!(
        "\"leases\":{},\"ttl\":{},\"grant_seconds\":{grant_seconds:.3},\
         \"grants_per_sec\":{:.1},\"revoke_seconds\":{revoke_seconds:.3}",
        options.leases,
        options.ttl_seconds,
        options.leases as f64 / grant_seconds.max(1e-9),
    );
    Ok(total.report(&options, &extra))
}

/// Revokes `ids` (64 at a time), so that their expiry cannot disturb a later measurement.
async fn revoke(channels: &[Channel], ids: Vec<i64>, clock: &Clock) -> f64 {
    let started = clock.now();
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let mut revokers = Vec::new();
    for revoker in 0..64 {
        let mut leases = LeaseClient::new(channels[revoker % channels.len()].clone());
        let (ids, next) = (ids.clone(), next.clone());
        revokers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&id) = ids.get(index) else { break };
                // A lease already gone is fine here: the point is that none is left.
                let _ = leases.lease_revoke(LeaseRevokeRequest { id }).await;
            }
        }));
    }
    for revoker in revokers {
        let _ = revoker.await;
    }
    clock.now().since(started).as_secs_f64()
}

/// Keys left under `prefix` (a serializable count).
async fn remaining_keys(kv: &mut KvClient<Channel>, prefix: &[u8]) -> Result<i64, String> {
    let request = RangeRequest {
        key: prefix.to_vec(),
        range_end: detcd::mvcc::KeyRange::prefix(prefix).range_end,
        count_only: true,
        serializable: true,
        ..Default::default()
    };
    let response = kv.range(request).await.map_err(|e| e.to_string())?;
    Ok(response.into_inner().count)
}

/// `lease-expiry`.
pub async fn expiry(options: Options) -> Result<String, String> {
    let channels = crate::conn::channels(&options).await?;
    let clock = Clock::new();
    let prefix = format!("{}lease/", options.prefix);
    let started = clock.now();
    let put_key = {
        let (prefix, options) = (prefix.clone(), options.clone());
        move |channel: Channel, index: u64, lease: i64| {
            let put = PutRequest {
                key: options.key(&prefix, index),
                value: vec![b'v'; 64].into(),
                lease,
                ..Default::default()
            };
            async move {
                let mut kv = KvClient::new(channel);
                kv.put(put)
                    .await
                    .map(drop)
                    .map_err(|status| status.to_string())
            }
        }
    };
    grant(&options, &channels, options.leases, put_key).await?;
    let loaded = clock.now();
    let load_secs = loaded.since(started).as_secs_f64();
    eprintln!(
        "detcd-bench: {} leases with keys in {load_secs:.1}s",
        options.leases
    );
    // Probe until every key is gone (or four TTLs and a minute have passed).
    let mut kv = KvClient::new(channels[0].clone());
    let interval = Duration::from_micros(1_000_000 / options.probe_rate);
    let deadline = loaded.plus(Duration::from_secs(options.ttl_seconds as u64 * 4 + 60));
    let (mut before, mut during) = (Tally::default(), Tally::default());
    let mut first_gone = None;
    let mut all_gone = None;
    let mut last_count = clock.now();
    let mut probe: u64 = 0;
    while clock.now() < deadline {
        let sent = clock.now();
        let put = PutRequest {
            key: format!("{}probe", options.prefix).into_bytes(),
            value: probe.to_string().into_bytes().into(),
            ..Default::default()
        };
        probe += 1;
        let tally = if first_gone.is_some() {
            &mut during
        } else {
            &mut before
        };
        match kv.put(put).await {
            Ok(_) => tally.ok(sent, clock.now()),
            Err(status) => tally.error(status),
        }
        if clock.now().since(last_count) >= Duration::from_millis(200) {
            last_count = clock.now();
            let left = remaining_keys(&mut kv, prefix.as_bytes()).await?;
            if first_gone.is_none() && left < options.leases as i64 {
                first_gone = Some(clock.now());
                eprintln!("detcd-bench: expiry started, {left} keys left");
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
    let secs = |at: Option<Instant>, from: Instant| {
        at.map_or("null".to_string(), |at| {
            format!("{:.2}", at.since(from).as_secs_f64())
        })
    };
    let expiry_secs = match (first_gone, all_gone) {
        (Some(first), Some(all)) => Some(all.since(first).as_secs_f64()),
        _ => None,
    };
    Ok(format!(
        "{{\"workload\":\"lease-expiry\",\"label\":{},\"leases\":{},\"ttl\":{},\
         \"clients\":{},\"conns\":{},\"load_secs\":{load_secs:.2},\
         \"first_expiry_after_load_secs\":{},\"all_gone_after_load_secs\":{},\
         \"expiry_secs\":{},\"expired_per_sec\":{},\"probe_before\":{},\"probe_during\":{},\
         \"errors\":{}}}",
        json_string(&options.label),
        options.leases,
        options.ttl_seconds,
        options.clients,
        options.conns,
        secs(first_gone, loaded),
        secs(all_gone, loaded),
        expiry_secs.map_or("null".to_string(), |s| format!("{s:.2}")),
        expiry_secs.map_or("null".to_string(), |s| format!(
            "{:.0}",
            options.leases as f64 / s.max(1e-9)
        )),
        before.summary(),
        during.summary(),
        before.errors() + during.errors(),
    ))
}
