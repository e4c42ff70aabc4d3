//! Watch under faults: resumable watchers on the client host, and the checks their histories
//! must pass, in the style of etcd's robustness-test validators.
//!
//! A [`Watcher`] keeps one watch open on some member and records everything it receives. When
//! its stream fails, or every few seconds anyway (so a member cut off from the cluster cannot
//! starve it, and so resumption is exercised often), it re-opens the watch on the next member
//! from the revision after the newest it knows: its last event, or the last progress
//! notification (a progress revision that runs ahead of undelivered events therefore loses
//! events, and the checks see it).
//!
//! [`check`] compares a watcher's record with the reference history (one watch from the start
//! after the faults, itself checked for internal consistency by [`check_reference`]):
//! - ordered and unique: event revisions never go back, no (revision, key) twice;
//! - atomic: a response carries every event of each revision it names;
//! - reliable and resumable: the events, across every re-opening, are exactly the reference's
//!   from the start revision to the newest one seen, with no gap and nothing twice;
//! - `prev_kv` and creation: equal to the reference's, which is checked against a replay;
//! - filters: a `NODELETE` watcher sees exactly the reference's puts;
//! - progress: after a notification for revision R, no event at or below R arrives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detcd::pb::etcdserverpb::watch_client::WatchClient;
use detcd::pb::etcdserverpb::watch_create_request::FilterType;
use detcd::pb::etcdserverpb::watch_request::RequestUnion;
use detcd::pb::etcdserverpb::{WatchCreateRequest, WatchProgressRequest, WatchRequest};
use detcd::pb::mvccpb;
use futures::StreamExt;

use crate::cluster::Cluster;
use madsim::runtime::NodeHandle;

/// One event as a watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub delete: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// The previous generation: (value, create revision, mod revision, version).
    pub prev: Option<(Vec<u8>, i64, i64, i64)>,
}

impl Seen {
    fn from_event(event: &mvccpb::Event) -> Seen {
        let kv = event.kv.clone().unwrap_or_default();
        Seen {
            delete: event.r#type == mvccpb::event::EventType::Delete as i32,
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            prev: event.prev_kv.as_ref().map(|p| {
                (
                    p.value.clone(),
                    p.create_revision,
                    p.mod_revision,
                    p.version,
                )
            }),
        }
    }
}

/// What a watcher received, in order.
#[derive(Debug, Clone)]
pub enum Received {
    /// A watch (re)opened on `member` from revision `from`.
    Opened {
        member: usize,
        from: i64,
    },
    Events {
        events: Vec<Seen>,
    },
    Progress {
        revision: i64,
    },
    Canceled {
        reason: String,
        compact_revision: i64,
    },
}

/// What a watcher watches.
#[derive(Debug, Clone)]
pub struct Spec {
    pub prefix: Vec<u8>,
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_delete: bool,
    /// Send a `WatchProgressRequest` every this often.
    pub progress_every: Option<Duration>,
    /// Ask for the server's periodic progress notifications (`progress_notify`).
    pub progress_notify: bool,
    /// Send a `WatchProgressRequest` right behind the create, each time the watch (re)opens.
    /// (madsim delivers a stream's messages at least a millisecond apart and runs a catch-up
    /// through in no simulated time, so here the request lands after the catch-up; the
    /// request overtaking one is tested in real mode, `a_progress_answer_waits_for_a_catching_up_watch`.)
    pub progress_at_open: bool,
}

pub struct Watcher {
    pub spec: Spec,
    pub log: Arc<Mutex<Vec<Received>>>,
}

impl Watcher {
    /// Starts a watcher on the client host, trying `endpoints` in turn, starting with `first`.
    pub fn spawn(client: &NodeHandle, endpoints: Vec<String>, first: usize, spec: Spec) -> Watcher {
        let log = Arc::new(Mutex::new(Vec::new()));
        let watcher = Watcher {
            spec: spec.clone(),
            log: log.clone(),
        };
        client.spawn(run(endpoints, first, spec, log));
        watcher
    }

    /// The newest event revision received.
    pub fn last_revision(&self) -> i64 {
        let log = self.log.lock().unwrap();
        log.iter()
            .rev()
            .find_map(|r| match r {
                Received::Events { events } => events.last().map(|e| e.mod_revision),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Every event received, in order.
    pub fn events(&self) -> Vec<Seen> {
        let log = self.log.lock().unwrap();
        log.iter()
            .flat_map(|r| match r {
                Received::Events { events } => events.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// How many progress notifications it received.
    pub fn progress_notifications(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|r| matches!(r, Received::Progress { .. }))
            .count()
    }

    /// Where and from which revision the watch was opened, in order (`m2@17`).
    pub fn openings(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|r| match r {
                Received::Opened { member, from } => Some(format!("m{}@{from}", member + 1)),
                _ => None,
            })
            .collect()
    }
}

async fn run(endpoints: Vec<String>, first: usize, spec: Spec, log: Arc<Mutex<Vec<Received>>>) {
    let record = |r: Received| log.lock().unwrap().push(r);
    let mut next = spec.start_revision;
    let mut member = first;
    loop {
        record(Received::Opened { member, from: next });
        let endpoint = endpoints[member].clone();
        member = (member + 1) % endpoints.len();
        let stay = Duration::from_millis(1000 + madsim::rand::random::<u64>() % 3000);
        let session = async {
            // Ends (`None`) when the stream fails or the watch is canceled.
            let channel = crate::cluster::connect(&endpoint).await?;
            let (mut requests, receiver) = futures::channel::mpsc::channel(8);
            requests.try_send(create_request(&spec, next, 0)).ok()?;
            if spec.progress_at_open {
                requests.try_send(progress_request()).ok()?;
            }
            let mut stream = WatchClient::new(channel)
                .watch(receiver)
                .await
                .ok()?
                .into_inner();
            let progress = spec.progress_every.unwrap_or(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    biased;
                    message = stream.next() => {
                        let response = message?.ok()?;
                        if response.created {
                            continue;
                        }
                        if response.canceled {
                            record(Received::Canceled {
                                reason: response.cancel_reason.clone(),
                                compact_revision: response.compact_revision,
                            });
                            return None::<()>;
                        }
                        let revision = response.header.map_or(0, |h| h.revision);
                        if response.events.is_empty() {
                            record(Received::Progress { revision });
                            next = next.max(revision + 1);
                        } else {
                            let events: Vec<Seen> =
                                response.events.iter().map(Seen::from_event).collect();
                            next = next.max(events.last().map_or(0, |e| e.mod_revision) + 1);
                            record(Received::Events { events });
                        }
                    }
                    _ = madsim::time::sleep(progress) => {
                        let _ = requests.try_send(progress_request());
                    }
                }
            }
        };
        let _ = madsim::time::timeout(stay, session).await;
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
}

fn create_request(spec: &Spec, start_revision: i64, watch_id: i64) -> WatchRequest {
    let create = WatchCreateRequest {
        key: spec.prefix.clone(),
        range_end: detcd::mvcc::KeyRange::prefix(&spec.prefix).range_end,
        start_revision,
        prev_kv: spec.prev_kv,
        progress_notify: spec.progress_notify,
        filters: if spec.no_delete {
            vec![FilterType::Nodelete as i32]
        } else {
            vec![]
        },
        watch_id,
        ..Default::default()
    };
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }
}

fn progress_request() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// Several watches multiplexed on one stream to `member`, as etcd's clients share one stream
/// among a process's watches: each `(start, spec)` is created with `start` as its start
/// revision (0: from now) and recorded as a [`Watcher`] checked against `spec` (whose
/// `start_revision` is the first revision it must see). A progress notification answers the
/// whole stream, so it goes into every record. The stream is not re-opened: a failure ends it,
/// and its watchers stop short (which the caller's wait for them reports).
pub fn spawn_stream(
    client: &NodeHandle,
    endpoint: String,
    member: usize,
    watches: Vec<(i64, Spec)>,
) -> Vec<Watcher> {
    let watchers: Vec<Watcher> = watches
        .iter()
        .map(|(_, spec)| Watcher {
            spec: spec.clone(),
            log: Arc::new(Mutex::new(vec![Received::Opened {
                member,
                from: spec.start_revision,
            }])),
        })
        .collect();
    let logs: Vec<_> = watchers.iter().map(|w| w.log.clone()).collect();
    client.spawn(async move {
        let Some(channel) = crate::cluster::connect(&endpoint).await else {
            return;
        };
        let (mut requests, receiver) = futures::channel::mpsc::channel(watches.len() + 1);
        // Client-chosen IDs 1..=n: watch i's responses carry ID i + 1.
        for (i, (start, spec)) in watches.iter().enumerate() {
            let _ = requests.try_send(create_request(spec, *start, i as i64 + 1));
        }
        if watches.iter().any(|(_, spec)| spec.progress_at_open) {
            let _ = requests.try_send(progress_request());
        }
        let Ok(response) = WatchClient::new(channel).watch(receiver).await else {
            return;
        };
        let mut stream = response.into_inner();
        let progress = watches
            .iter()
            .filter_map(|(_, spec)| spec.progress_every)
            .min()
            .unwrap_or(Duration::from_secs(3600));
        loop {
            let response = tokio::select! {
                biased;
                message = stream.next() => match message {
                    Some(Ok(response)) => response,
                    _ => return,
                },
                _ = madsim::time::sleep(progress) => {
                    let _ = requests.try_send(progress_request());
                    continue;
                }
            };
            if response.created {
                continue;
            }
            let revision = response.header.map_or(0, |h| h.revision);
            let received = if response.canceled {
                Received::Canceled {
                    reason: response.cancel_reason.clone(),
                    compact_revision: response.compact_revision,
                }
            } else if response.events.is_empty() {
                Received::Progress { revision }
            } else {
                Received::Events {
                    events: response.events.iter().map(Seen::from_event).collect(),
                }
            };
            let index = usize::try_from(response.watch_id - 1).ok();
            match index.and_then(|i| logs.get(i)) {
                Some(log) => log.lock().unwrap().push(received),
                // A notification for the whole stream (etcd's ID -1).
                None if matches!(received, Received::Progress { .. }) => {
                    for log in &logs {
                        log.lock().unwrap().push(received.clone());
                    }
                }
                None => panic!("a response for watch ID {} not created", response.watch_id),
            }
        }
    });
    watchers
}

/// A steady stream of puts under `prefix` through `endpoints` in turn, from the client host,
/// until `stop` is set: events keep arriving while watchers re-open and ask for progress.
pub fn spawn_load(
    client: &NodeHandle,
    endpoints: Vec<String>,
    prefix: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let prefix = prefix.to_string();
    client.spawn(async move {
        let mut i: u64 = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let endpoint = endpoints[(i as usize) % endpoints.len()].clone();
            let request = detcd::pb::etcdserverpb::PutRequest {
                key: format!("{prefix}load{}", i % 4).into_bytes(),
                value: format!("{i}").into_bytes().into(),
                ..Default::default()
            };
            let put = async move {
                let channel = crate::cluster::connect(&endpoint).await?;
                detcd::pb::etcdserverpb::kv_client::KvClient::new(channel)
                    .put(request)
                    .await
                    .ok()
            };
            if madsim::time::timeout(Duration::from_secs(2), put)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
            i += 1;
        }
    });
}

/// The reference history is internally consistent: replaying it, every event's `prev_kv`, create
/// revision and version follow from the events before it, and revisions only go up.
pub fn check_reference(reference: &[Seen]) {
    let mut live: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)> = BTreeMap::new();
    let mut last = 0;
    for event in reference {
        assert!(event.mod_revision >= last, "reference goes back: {event:?}");
        last = event.mod_revision;
        let before = live.get(&event.key).cloned();
        assert_eq!(event.prev, before, "reference prev_kv wrong: {event:?}");
        if event.delete {
            assert!(before.is_some(), "delete of a missing key: {event:?}");
            live.remove(&event.key);
        } else {
            let (create, version) = match &before {
                Some((_, create, _, version)) => (*create, version + 1),
                None => (event.mod_revision, 1),
            };
            assert_eq!(
                (event.create_revision, event.version),
                (create, version),
                "reference create/version wrong: {event:?}"
            );
            live.insert(
                event.key.clone(),
                (
                    event.value.clone(),
                    event.create_revision,
                    event.mod_revision,
                    event.version,
                ),
            );
        }
    }
}

/// Checks one watcher's record against `reference` (every event from revision 1, with prev_kv).
/// Answers how many events it checked.
pub fn check(name: &str, watcher: &Watcher, reference: &[Seen]) -> usize {
    let log = watcher.log.lock().unwrap().clone();
    let spec = &watcher.spec;
    let wanted = |event: &Seen| !(spec.no_delete && event.delete);
    let expect = |event: &Seen| {
        let mut event = event.clone();
        if !spec.prev_kv {
            event.prev = None;
        }
        event
    };
    let mut by_revision: BTreeMap<i64, Vec<Seen>> = BTreeMap::new();
    for event in reference.iter().filter(|e| wanted(e)) {
        by_revision
            .entry(event.mod_revision)
            .or_default()
            .push(expect(event));
    }
    let mut seen: Vec<Seen> = Vec::new();
    let mut progress_floor = 0;
    for received in &log {
        match received {
            Received::Events { events } => {
                // Atomic: every revision in a response comes whole.
                let mut revisions: Vec<i64> = events.iter().map(|e| e.mod_revision).collect();
                revisions.dedup();
                for revision in revisions {
                    let got: Vec<Seen> = events
                        .iter()
                        .filter(|e| e.mod_revision == revision)
                        .cloned()
                        .collect();
                    let want = by_revision.get(&revision).cloned().unwrap_or_default();
                    assert_eq!(
                        got, want,
                        "{name}: revision {revision} not delivered whole or not as committed"
                    );
                    assert!(
                        revision > progress_floor,
                        "{name}: event at {revision} after a progress notification for \
                         {progress_floor}"
                    );
                }
                seen.extend(events.iter().cloned());
            }
            Received::Progress { revision } => progress_floor = progress_floor.max(*revision),
            Received::Canceled {
                reason,
                compact_revision,
            } => panic!("{name}: watch canceled ({reason:?}, compacted {compact_revision})"),
            Received::Opened { .. } => {}
        }
    }
    // Ordered (revisions never go back; order inside a revision was checked above) and unique.
    for pair in seen.windows(2) {
        assert!(
            pair[0].mod_revision <= pair[1].mod_revision,
            "{name}: out of order: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let mut unique = std::collections::BTreeSet::new();
    for event in &seen {
        assert!(
            unique.insert((event.mod_revision, event.key.clone())),
            "{name}: delivered twice: {event:?}"
        );
    }
    // Reliable and resumable: exactly the reference from the start to the newest seen.
    let last = seen.last().map_or(0, |e| e.mod_revision);
    let want: Vec<Seen> = by_revision
        .range(spec.start_revision.max(1)..=last)
        .flat_map(|(_, events)| events.iter().cloned())
        .collect();
    if seen != want {
        let first_difference = seen.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "{name}: {} events seen, {} expected up to revision {last}; first difference at \
             {first_difference:?}: seen {:?}, expected {:?}",
            seen.len(),
            want.len(),
            first_difference.map(|i| &seen[i]),
            first_difference.map(|i| &want[i]),
        );
    }
    seen.len()
}

/// Waits until each of `watchers` has seen revision `last`, then checks every one against the
/// reference history — a fresh watch of the same prefix from revision 1 on `member`, itself
/// checked by replay — and records what was checked in the trace. Returns the reference.
pub async fn check_watchers(
    cluster: &mut Cluster,
    member: usize,
    last: i64,
    watchers: &[(&str, &Watcher)],
) -> Vec<Seen> {
    for (name, watcher) in watchers {
        cluster
            .wait_until(
                &format!("watcher {name} reaches revision {last}"),
                Duration::from_secs(120),
                || async { watcher.last_revision() >= last },
            )
            .await;
    }
    let prefix = String::from_utf8_lossy(&watchers[0].1.spec.prefix).into_owned();
    let reference = reference(cluster, member, &prefix, last).await;
    for (name, watcher) in watchers {
        let checked = check(name, watcher, &reference);
        let openings = watcher.openings();
        let line = format!(
            "watcher {name}: {checked} events and {} progress notifications checked over {} \
             openings: {}",
            watcher.progress_notifications(),
            openings.len(),
            openings.join(" ")
        );
        println!("{line}");
        cluster.record(line);
    }
    reference
}

/// The committed history of `prefix` up to `last`: a fresh watch from revision 1 on `member`,
/// checked for internal consistency by [`check_reference`].
pub async fn reference(cluster: &mut Cluster, member: usize, prefix: &str, last: i64) -> Vec<Seen> {
    let spec = Spec {
        prefix: prefix.as_bytes().to_vec(),
        start_revision: 1,
        prev_kv: true,
        no_delete: false,
        progress_every: None,
        progress_notify: false,
        progress_at_open: false,
    };
    let reference = Watcher::spawn(
        cluster.client_host(),
        vec![cluster.endpoint(member)],
        0,
        spec,
    );
    cluster
        .wait_until(
            "the reference watch reaches the last revision",
            Duration::from_secs(60),
            || async { reference.last_revision() >= last },
        )
        .await;
    let events = reference.events();
    check_reference(&events);
    events
}
