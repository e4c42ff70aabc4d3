//! `put`, `range`, `range-serializable`, `txn-put`: closed-loop single-key requests on random
//! keys of the key space, `--clients` tasks over `--conns` connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use detcd::env::rng::SplitMix64;
use detcd::env::Clock;
use detcd::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::request_op::Request;
use detcd::pb::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

use crate::options::{Options, Workload};
use crate::report::{value, Tally, Window};

pub async fn run(options: Options) -> Result<String, String> {
    let channels = crate::conn::channels(&options).await?;
    let clock = Clock::new();
    let mut extra = String::new();
    let reads = matches!(
        options.workload,
        Workload::Range | Workload::RangeSerializable
    );
    if reads && options.prefill {
        let started = clock.now();
        prefill(&options, &channels).await?;
        let secs = clock.now().since(started).as_secs_f64();
        eprintln!(
            "detcd-bench: filled {} keys in {secs:.1}s",
            options.key_space
        );
        extra = format!("\"prefill_seconds\":{secs:.1}");
    }
    let window = Arc::new(Window::new(&options, &clock));
    let options = Arc::new(options);
    let mut tasks = Vec::new();
    for client in 0..options.clients {
        let mut kv = KvClient::new(channels[client % channels.len()].clone());
        let (window, options, clock) = (window.clone(), options.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(options.seed.wrapping_mul(1_000_003) ^ client as u64);
            let value: bytes::Bytes = value(options.val_size, &mut rng).into();
            let mut tally = Tally::default();
            while let Some(measured) = window.next() {
                let key = options.key(&options.prefix, rng.next_u64() % options.key_space);
                let started = clock.now();
                let outcome = one(&mut kv, options.workload, key, value.clone()).await;
                let done = clock.now();
                if !measured {
                    continue;
                }
                match outcome {
                    Ok(()) => tally.ok(started, done),
                    Err(error) => tally.error(error),
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.map_err(|error| error.to_string())?);
    }
    Ok(total.report(&options, &extra))
}

async fn one(
    kv: &mut KvClient<Channel>,
    workload: Workload,
    key: Vec<u8>,
    value: bytes::Bytes,
) -> Result<(), String> {
    let status = |status: tonic::Status| format!("{:?}: {}", status.code(), status.message());
    match workload {
        Workload::Put => {
            let put = PutRequest {
                key,
                value,
                ..Default::default()
            };
            kv.put(put).await.map(drop).map_err(status)
        }
        Workload::Range | Workload::RangeSerializable => {
            let range = RangeRequest {
                key,
                serializable: workload == Workload::RangeSerializable,
                ..Default::default()
            };
            kv.range(range).await.map(drop).map_err(status)
        }
        Workload::TxnPut => {
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Version as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::Version(-1)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key,
                        value,
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            let response = kv.txn(txn).await.map_err(status)?.into_inner();
            if response.succeeded {
                Ok(())
            } else {
                Err("txn compare failed".to_string())
            }
        }
        other => unreachable!("{} is not a KV workload", other.name()),
    }
}

/// `scan-keys`: every key, keys only, in one range.
pub async fn scan_keys(options: Options) -> Result<String, String> {
    let mut kv = KvClient::new(crate::conn::connect(&options.endpoints[0]).await?);
    let clock = Clock::new();
    let started = clock.now();
    let range = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        keys_only: true,
        ..Default::default()
    };
    let response = kv.range(range).await.map_err(|status| status.to_string())?;
    let seconds = clock.now().since(started).as_secs_f64();
    let response = response.into_inner();
    Ok(format!(
        "{{\"workload\":\"scan-keys\",\"label\":{},\"keys\":{},\"count\":{},\"seconds\":{seconds:.3}}}",
        crate::report::json_string(&options.label),
        response.kvs.len(),
        response.count,
    ))
}

/// Puts every key of the key space once (64 writers), so reads find them.
async fn prefill(options: &Options, channels: &[Channel]) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..64.min(options.key_space as usize) {
        let mut kv = KvClient::new(channels[writer % channels.len()].clone());
        let (next, options) = (next.clone(), options.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(options.seed ^ (writer as u64 + 1000));
            let value: bytes::Bytes = value(options.val_size, &mut rng).into();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= options.key_space {
                    return Ok::<(), String>(());
                }
                let put = PutRequest {
                    key: options.key(&options.prefix, index),
                    value: value.clone(),
                    ..Default::default()
                };
                kv.put(put).await.map_err(|status| status.to_string())?;
            }
        }));
    }
    for writer in writers {
        writer.await.map_err(|error| error.to_string())??;
    }
    Ok(())
}
