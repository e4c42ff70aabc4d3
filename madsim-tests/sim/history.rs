//! The client history: every operation the chaos workload's clients invoke, with its invocation
//! and completion times and its outcome — ok (with what the cluster answered), failed (it
//! certainly did not happen) or unknown (it timed out or broke off: it may or may not have).
//!
//! Clients run as tasks on the client host, each a closed loop of random operations on a small
//! keyspace, through random members. Every written value is unique (`c<client>.<seq>`), so the
//! checkers can tell which operation wrote what the cluster committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detcd::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::response_op::Response;
use detcd::pb::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use madsim::rand::Rng;
use madsim::runtime::NodeHandle;
use madsim::time::Instant;

/// The prefix of every key the workload touches.
pub const PREFIX: &str = "k/";

/// Where the chaos scenario's lease providers register (inside [`PREFIX`], so the committed
/// history has every revision; their puts and deletes are the lease checker's business).
pub const LEASED: &str = "k/svc/";

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: String,
    },
    /// A linearizable read of one key.
    Get {
        key: String,
    },
    /// A linearizable read of every key under [`PREFIX`].
    Scan,
    Delete {
        key: String,
    },
    /// A txn: if `key` holds `expect` (`None`: does not exist) put `value`, else read `key`.
    Cas {
        key: String,
        expect: Option<String>,
        value: String,
    },
}

impl Op {
    /// The value this operation writes, if any.
    pub fn written(&self) -> Option<(&str, &str)> {
        match self {
            Op::Put { key, value } | Op::Cas { key, value, .. } => Some((key, value)),
            _ => None,
        }
    }
}

/// A key-value pair as read: key, value, mod revision.
pub type Kv = (String, String, i64);

/// What the cluster answered to an operation that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// The header revision: a write's own revision, or the revision a read saw.
    pub revision: i64,
    /// Pairs read (Get, Scan, a Cas that failed).
    pub kvs: Vec<Kv>,
    /// Keys deleted (Delete).
    pub deleted: i64,
    /// Whether a Cas took its success branch.
    pub succeeded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Answer),
    /// Certainly did not happen: the client could not even connect.
    Failed,
    /// Timed out or broke off after it was sent.
    Unknown,
}

/// One operation of the history. Times are since the simulation started.
#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub member: usize,
    pub op: Op,
    pub invoked: Duration,
    /// `None` while in flight, and for unknown outcomes (they may take effect any time later).
    pub completed: Option<Duration>,
    pub outcome: Outcome,
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client {} via m{}: {:?} invoked {:?} completed {:?}: {:?}",
            self.client,
            self.member + 1,
            self.op,
            self.invoked,
            self.completed,
            self.outcome
        )
    }
}

/// The history, shared by the clients that append to it.
#[derive(Clone, Default)]
pub struct History {
    records: Arc<Mutex<Vec<Record>>>,
    origin: Arc<Mutex<Option<Instant>>>,
}

/// The workload's mix and pace, chosen by the nemesis options.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    pub keys: usize,
    /// Relative weights of put, get, scan, delete, cas.
    pub weights: [u32; 5],
    /// The most a client waits between two operations.
    pub think: Duration,
}

impl History {
    pub fn new() -> History {
        let history = History::default();
        *history.origin.lock().unwrap() = Some(Instant::now());
        history
    }

    pub fn now(&self) -> Duration {
        self.origin
            .lock()
            .unwrap()
            .expect("history started")
            .elapsed()
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Appends an operation that is about to be sent; returns its index.
    pub fn invoke(&self, client: usize, member: usize, op: Op) -> usize {
        let mut records = self.records.lock().unwrap();
        records.push(Record {
            client,
            member,
            op,
            invoked: self.now(),
            completed: None,
            outcome: Outcome::Unknown,
        });
        records.len() - 1
    }

    pub fn complete(&self, index: usize, outcome: Outcome) {
        let now = self.now();
        let mut records = self.records.lock().unwrap();
        let record = &mut records[index];
        record.completed = (outcome != Outcome::Unknown).then_some(now);
        record.outcome = outcome;
    }

    /// Starts `workload.clients` clients on `host` that run until `stop` is set; each operation
    /// goes to a random one of `endpoints`.
    pub fn spawn_clients(
        &self,
        host: &NodeHandle,
        endpoints: Vec<String>,
        workload: &Workload,
        stop: Arc<AtomicBool>,
    ) -> Vec<madsim::task::JoinHandle<()>> {
        (0..workload.clients)
            .map(|client| {
                let history = self.clone();
                let endpoints = endpoints.clone();
                let workload = workload.clone();
                let stop = stop.clone();
                host.spawn(async move {
                    run_client(client, history, endpoints, workload, stop).await;
                })
            })
            .collect()
    }
}

fn pick_op(rng: &mut impl Rng, workload: &Workload, value: String, seen: &[Option<String>]) -> Op {
    let slot = rng.gen_range(0..workload.keys);
    let key = format!("{PREFIX}{slot}");
    let total: u32 = workload.weights.iter().sum();
    let mut draw = rng.gen_range(0..total);
    let mut kind = 0;
    while draw >= workload.weights[kind] {
        draw -= workload.weights[kind];
        kind += 1;
    }
    match kind {
        0 => Op::Put { key, value },
        1 => Op::Get { key },
        2 => Op::Scan,
        3 => Op::Delete { key },
        _ => Op::Cas {
            key,
            expect: seen[slot].clone(),
            value,
        },
    }
}

async fn run_client(
    client: usize,
    history: History,
    endpoints: Vec<String>,
    workload: Workload,
    stop: Arc<AtomicBool>,
) {
    // The newest value this client saw for each key: what its Cas expects.
    let mut seen: Vec<Option<String>> = vec![None; workload.keys];
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        let (member, op) = {
            let mut rng = madsim::rand::thread_rng();
            seq += 1;
            let op = pick_op(&mut rng, &workload, format!("c{client}.{seq}"), &seen);
            (rng.gen_range(0..endpoints.len()), op)
        };
        let index = history.invoke(client, member, op.clone());
        let outcome = perform(&endpoints[member], &op).await;
        if let Outcome::Ok(answer) = &outcome {
            note_seen(&mut seen, &op, answer);
        }
        history.complete(index, outcome);
        let think = workload.think.as_millis() as u64;
        let pause = madsim::rand::thread_rng().gen_range(0..=think);
        madsim::time::sleep(Duration::from_millis(pause)).await;
    }
}

fn slot(key: &str) -> Option<usize> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

fn note_seen(seen: &mut [Option<String>], op: &Op, answer: &Answer) {
    let mut set = |key: &str, value: Option<String>| {
        if let Some(slot) = slot(key).filter(|s| *s < seen.len()) {
            seen[slot] = value;
        }
    };
    match op {
        Op::Put { key, value } => set(key, Some(value.clone())),
        Op::Delete { key } => set(key, None),
        Op::Cas { key, value, .. } if answer.succeeded => set(key, Some(value.clone())),
        Op::Get { key } | Op::Cas { key, .. } => {
            set(key, answer.kvs.first().map(|kv| kv.1.clone()))
        }
        Op::Scan => {
            for (slot, seen) in seen.iter_mut().enumerate() {
                let key = format!("{PREFIX}{slot}");
                let value = answer.kvs.iter().find(|kv| kv.0 == key);
                *seen = value.map(|kv| kv.1.clone());
            }
        }
    }
}

fn kvs(kvs: &[detcd::pb::mvccpb::KeyValue]) -> Vec<Kv> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

/// [`perform`] from `host` (the main task of a simulation has no network of its own).
pub async fn perform_on(host: &NodeHandle, endpoint: &str, op: &Op) -> Outcome {
    let (endpoint, op) = (endpoint.to_string(), op.clone());
    host.spawn(async move { perform(&endpoint, &op).await })
        .await
        .expect("client task")
}

/// Sends `op` to `endpoint` on a fresh connection, with a 5 s deadline.
pub async fn perform(endpoint: &str, op: &Op) -> Outcome {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(1));
    let channel = match madsim::time::timeout(Duration::from_secs(1), endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        _ => return Outcome::Failed,
    };
    let mut kv = KvClient::new(channel);
    let call = async move {
        let header =
            |h: Option<detcd::pb::etcdserverpb::ResponseHeader>| h.map_or(0, |h| h.revision);
        Ok::<Answer, tonic::Status>(match op {
            Op::Put { key, value } => {
                let request = PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes().into(),
                    ..Default::default()
                };
                let response = kv.put(request).await?.into_inner();
                Answer {
                    revision: header(response.header),
                    ..Default::default()
                }
            }
            Op::Get { key } => {
                let response = kv.range(range(key, "")).await?.into_inner();
                Answer {
                    revision: header(response.header),
                    kvs: kvs(&response.kvs),
                    ..Default::default()
                }
            }
            Op::Scan => {
                let response = kv.range(range(PREFIX, "k0")).await?.into_inner();
                Answer {
                    revision: header(response.header),
                    kvs: kvs(&response.kvs),
                    ..Default::default()
                }
            }
            Op::Delete { key } => {
                let request = DeleteRangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                };
                let response = kv.delete_range(request).await?.into_inner();
                Answer {
                    revision: header(response.header),
                    deleted: response.deleted,
                    ..Default::default()
                }
            }
            Op::Cas { key, expect, value } => {
                let response = kv.txn(cas(key, expect, value)).await?.into_inner();
                let read = response.responses.first().and_then(|r| match &r.response {
                    Some(Response::ResponseRange(range)) => Some(kvs(&range.kvs)),
                    _ => None,
                });
                Answer {
                    revision: header(response.header),
                    kvs: read.unwrap_or_default(),
                    succeeded: response.succeeded,
                    ..Default::default()
                }
            }
        })
    };
    match madsim::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(answer)) => Outcome::Ok(answer),
        _ => Outcome::Unknown,
    }
}

fn range(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn cas(key: &str, expect: &Option<String>, value: &str) -> TxnRequest {
    let compare = match expect {
        Some(expected) => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(expected.clone().into_bytes())),
            ..Default::default()
        },
        None => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        },
    };
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(range(key, ""))),
        }],
    }
}
