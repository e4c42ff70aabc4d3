//! `watch-latency` (many watch streams, one serial writer) and `watch-one-stream` (many watches
//! on a single stream). Every put's value starts with its send time (8 bytes, big-endian
//! nanoseconds on the bench's clock), so a watcher times each event from the put that caused it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use detcd::env::rng::SplitMix64;
use detcd::env::{Clock, Duration, Instant};
use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::watch_client::WatchClient;
use detcd::pb::etcdserverpb::watch_request::RequestUnion;
use detcd::pb::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tonic::transport::Channel;
use tonic::Streaming;

use crate::options::Options;
use crate::report::{value, Tally, Window};

/// The send time a writer stamped into `value`, if it carries one.
fn sent_nanos(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// Opens a Watch stream on `channel` with `watches` watches of `prefix`, and waits until the
/// server has created them all. The requests are queued before the call: a Go gRPC server sends
/// its headers only with its first message, so awaiting the call first would wait forever on
/// etcd.
async fn open(
    channel: Channel,
    prefix: &[u8],
    watches: usize,
    prev_kv: bool,
) -> Result<Watching, String> {
    let (requests, receiver) = tokio::sync::mpsc::channel(watches + 1);
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|request| (request, receiver))
    });
    for _ in 0..watches {
        let create = WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: detcd::mvcc::KeyRange::prefix(prefix).range_end,
            prev_kv,
            ..Default::default()
        };
        let request = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        requests.send(request).await.map_err(|e| e.to_string())?;
    }
    let mut responses = WatchClient::new(channel)
        .watch(stream)
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    let mut created = 0;
    while created < watches {
        match responses.message().await.map_err(|e| e.to_string())? {
            Some(response) if response.created => created += 1,
            Some(response) if response.canceled => {
                return Err(format!("watch canceled: {}", response.cancel_reason))
            }
            Some(_) => {}
            None => return Err("watch stream closed while creating".to_string()),
        }
    }
    Ok(Watching {
        _requests: requests,
        responses,
    })
}

/// An open Watch stream. The request side stays open for as long as this lives: a client
/// whose request stream ends has its watches cancelled.
struct Watching {
    _requests: tokio::sync::mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

/// Puts random keys under `prefix` one at a time, at most `rate` a second (0: no limit), each
/// value stamped with its send time, until `window` ends. Returns the measured puts' tally.
async fn write(
    mut kv: KvClient<Channel>,
    options: &Options,
    prefix: &str,
    window: &Window,
    clock: &Clock,
) -> Tally {
    let mut rng = SplitMix64::new(options.seed);
    let mut value = value(options.val_size.max(8), &mut rng);
    let interval = (options.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / options.rate));
    let mut next_at = clock.now();
    let mut tally = Tally::default();
    while let Some(measured) = window.next() {
        if let Some(interval) = interval {
            let now = clock.now();
            if next_at > now {
                clock.sleep(next_at.since(now)).await;
            }
            next_at = next_at.plus(interval);
        }
        let key = options.key(prefix, rng.next_u64() % options.key_space);
        let started = clock.now();
        value[..8].copy_from_slice(&started.as_nanos().to_be_bytes());
        let put = PutRequest {
            key,
            value: value.clone().into(),
            ..Default::default()
        };
        match kv.put(put).await {
            Ok(_) if measured => tally.ok(started, clock.now()),
            Ok(_) => {}
            Err(status) => tally.error(status),
        }
    }
    tally
}

/// Times every event on `responses` whose put was sent at or after `measure_from`, until the
/// stream ends or `done` turns true.
async fn receive(
    mut watching: Watching,
    measure_from: Instant,
    clock: Clock,
    mut done: tokio::sync::watch::Receiver<bool>,
    with_prev_kv: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let message = tokio::select! {
            biased;
            message = watching.responses.message() => message,
            _ = done.changed() => break,
        };
        let arrived = clock.now();
        match message {
            Ok(Some(response)) => {
                for event in &response.events {
                    if event.prev_kv.is_some() {
                        with_prev_kv.fetch_add(1, Ordering::Relaxed);
                    }
                    let sent = event.kv.as_ref().and_then(|kv| sent_nanos(&kv.value));
                    if let Some(sent) = sent.filter(|&sent| sent >= measure_from.as_nanos()) {
                        tally.event(sent, arrived);
                    }
                }
            }
            Ok(None) => break,
            Err(status) => {
                tally.error(status);
                break;
            }
        }
    }
    tally
}

/// `watch-latency`: `--watchers` streams of one watch each.
pub async fn latency(options: Options) -> Result<String, String> {
    let channels = crate::conn::channels(&options).await?;
    let clock = Clock::new();
    let prefix = format!("{}w/", options.prefix);
    let mut streams = Vec::with_capacity(options.watchers);
    for watcher in 0..options.watchers {
        let channel = channels[watcher % channels.len()].clone();
        streams.push(open(channel, prefix.as_bytes(), 1, false).await?);
    }
    eprintln!("detcd-bench: {} watchers ready", options.watchers);
    let window = Window::new(&options, &clock);
    let (stop, done) = tokio::sync::watch::channel(false);
    let with_prev_kv = Arc::new(AtomicU64::new(0));
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let (clock, done) = (clock.clone(), done.clone());
            let receiving = receive(
                stream,
                window.measure_from(),
                clock,
                done,
                with_prev_kv.clone(),
            );
            tokio::spawn(receiving)
        })
        .collect();
    let writer_started = clock.now();
    let kv = KvClient::new(channels[0].clone());
    let puts = write(kv, &options, &prefix, &window, &clock).await;
    let writer_seconds = clock.now().since(writer_started).as_secs_f64();
    // Let the last events arrive.
    clock.sleep(Duration::from_millis(500)).await;
    stop.send(true).map_err(|e| e.to_string())?;
    let mut events = Tally::default();
    for receiver in receivers {
        events.merge(receiver.await.map_err(|e| e.to_string())?);
    }
    let put_count = puts.ops();
    let (put_p50_ms, put_p99_ms) = puts.quantiles_ms();
    events.merge_errors(puts);
    let extra = format!(
        "\"watchers\":{},\"rate\":{},\"puts\":{put_count},\"writer_seconds\":{writer_seconds:.3},\
         \"events_expected\":{},\"put_p50_ms\":{put_p50_ms:.3},\"put_p99_ms\":{put_p99_ms:.3}",
        options.watchers,
        options.rate,
        put_count * options.watchers as u64,
    );
    Ok(events.report(&options, &extra))
}

/// `watch-one-stream`: `--watchers` watches with `prev_kv` on one stream; every key exists
/// before the watches start, so each event has a previous version to carry.
pub async fn one_stream(options: Options) -> Result<String, String> {
    let endpoint = &options.endpoints[0];
    let watch_channel = crate::conn::connect(endpoint).await?;
    let write_channel = crate::conn::connect(endpoint).await?;
    let clock = Clock::new();
    let prefix = format!("{}one/", options.prefix);
    let mut kv = KvClient::new(write_channel.clone());
    for index in 0..options.key_space {
        let put = PutRequest {
            key: options.key(&prefix, index),
            value: vec![0; 8].into(),
            ..Default::default()
        };
        kv.put(put).await.map_err(|status| status.to_string())?;
    }
    let stream = open(
        watch_channel,
        prefix.as_bytes(),
        options.watchers,
        options.prev_kv,
    )
    .await?;
    eprintln!("detcd-bench: {} watchers on one stream", options.watchers);
    let window = Window::new(&options, &clock);
    let (stop, done) = tokio::sync::watch::channel(false);
    let with_prev_kv = Arc::new(AtomicU64::new(0));
    let receiver = tokio::spawn(receive(
        stream,
        window.measure_from(),
        clock.clone(),
        done,
        with_prev_kv.clone(),
    ));
    let puts = write(kv, &options, &prefix, &window, &clock).await;
    // The stream carries watchers x puts events; give it time to deliver the rest.
    clock.sleep(Duration::from_secs(5)).await;
    stop.send(true).map_err(|e| e.to_string())?;
    let mut events = receiver.await.map_err(|e| e.to_string())?;
    let put_count = puts.ops();
    events.merge_errors(puts);
    let extra = format!(
        "\"watchers\":{},\"prev_kv\":{},\"rate\":{},\"puts\":{put_count},\
         \"events_expected\":{},\"events_with_prev_kv\":{}",
        options.watchers,
        options.prev_kv,
        options.rate,
        put_count * options.watchers as u64,
        with_prev_kv.load(Ordering::Relaxed),
    );
    Ok(events.report(&options, &extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_round_trip_through_values() {
        let mut value = vec![b'x'; 16];
        value[..8].copy_from_slice(&123_456_789u64.to_be_bytes());
        assert_eq!(sent_nanos(&value), Some(123_456_789));
        assert_eq!(sent_nanos(b"short"), None);
    }
}
