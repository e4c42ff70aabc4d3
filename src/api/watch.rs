//! The `Watch` service: one task per stream runs that stream's watchers over this member's own
//! applied history (a watch on a follower sees what one on the leader sees: the same log).
//!
//! The loop: deliver what every watcher is owed (from the hub's cache, or from the store when a
//! watcher is further behind), then wait for a request, a newly applied revision, a progress
//! tick or shutdown. Responses go through a bounded channel: a client that does not read blocks
//! only its own stream's task, its watchers fall behind and are caught up from history later;
//! nothing is dropped and no other stream waits.
//!
//! Pacing: when revisions keep coming less than the pace interval apart (`--watch-pace-interval`,
//! 800 us by default; two such gaps in a row), a stream holds each new one until the next is
//! applied, or for a quarter longer than the interval at most, and sends a watcher what it holds
//! in one response. Under such a stream of writes (over ~1,250 revisions a second by default)
//! each watcher gets half the responses, and the member makes half the encodes, frames and
//! socket sends, for about one revision's interval of latency; slower writes, and two revisions
//! that merely happen to come close together, are delivered at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::status::ApiError;
use super::{convert, ResponseStream};
use crate::env::bugs::{self, Bug};
use crate::env::{watch as signal, Duration, Instant};
use crate::mvcc::{Change, View};
use crate::node::Node;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{
    watch_server, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::pb::mvccpb::Event;
use crate::raft::io_error;
use crate::watch::watcher::{fragments, MAX_REVISIONS_PER_RESPONSE};
use crate::watch::{Applied, Hub, PrevInterest, Watcher};

/// Responses a stream may have queued before its task waits for the client.
const STREAM_BUFFER: usize = 128;

/// etcd's answer to a client-chosen ID already in use on the stream.
pub const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's answer to a range whose end is not after its key.
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

#[derive(Clone)]
pub struct WatchService {
    node: Node,
    /// A response bigger than this is split for a watcher that allows fragments.
    max_message_bytes: usize,
    progress_interval: Duration,
    /// Revisions closer together than this are paced (see the module's doc); zero: never.
    pace_interval: Duration,
    stop: signal::Receiver<bool>,
}

impl WatchService {
    pub fn new(
        node: Node,
        max_message_bytes: usize,
        progress_interval: Duration,
        pace_interval: Duration,
        stop: signal::Receiver<bool>,
    ) -> Self {
        Self {
            node,
            max_message_bytes,
            progress_interval,
            pace_interval,
            stop,
        }
    }
}

#[tonic::async_trait]
impl watch_server::Watch for WatchService {
    type WatchStream = ResponseStream<WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let stream = WatchStream {
            service: self.clone(),
            hub: self.node.state_machine.hub.clone(),
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_requested: false,
            prev_interest: None,
            sender,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(Box::pin(super::received(receiver))))
    }
}

/// The client has gone: the stream ends.
struct Gone;

/// Why the store could not give a watcher its changes.
enum Unavailable {
    Compacted(i64),
    Failed(String),
}

struct WatchStream {
    service: WatchService,
    hub: Arc<Hub>,
    watchers: BTreeMap<i64, Watcher>,
    /// The next ID to try when the client leaves the choice to the server (etcd starts at 0).
    next_id: i64,
    /// A `WatchProgressRequest` waits until every watcher is caught up.
    progress_requested: bool,
    /// Held while a watcher of this stream wants previous key-values (`prev_kv`), so the state
    /// machine reads them for the hub's cache.
    prev_interest: Option<PrevInterest>,
    sender: mpsc::Sender<Result<WatchResponse, Status>>,
}

impl WatchStream {
    async fn run(mut self, mut requests: Streaming<WatchRequest>) {
        let mut applied = self.hub.subscribe();
        let mut stop = self.service.stop.clone();
        // Shutdown or the client gone: one future for the stream's life, not one per round
        // (with a thousand streams, re-registering wake-ups each round shows in profiles).
        let probe = self.sender.clone();
        let ended = async move {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => {}
                _ = probe.closed() => {}
            }
        };
        tokio::pin!(ended);
        let clock = self.service.node.clock.clone();
        let interval = self.service.progress_interval;
        let mut next_tick = clock.now().plus(interval);
        // A client may close its sending side and go on reading (etcd keeps such a stream).
        let mut requests_open = true;
        // When a new revision last woke the stream (pacing).
        let mut woken_at: Option<Instant> = None;
        // Whether the gap before that wake-up was short too (pacing needs two in a row).
        let mut fast_before = false;
        let pace = self.service.pace_interval;
        // The longest a paced revision waits for the next one.
        let hold = pace + pace / 4;
        loop {
            let current = *applied.borrow_and_update();
            let owed = match self.deliver(current).await {
                Ok(owed) => owed,
                Err(Gone) => return,
            };
            if !owed && self.progress_requested {
                self.progress_requested = false;
                if self
                    .send(self.response(current.revision, -1))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // More is owed than one round sends: go round again (requests first).
            let again = owed && !bugs::enabled(Bug::CatchUpWaitsForWrites);
            let ticking = self
                .watchers
                .values()
                .any(|watcher| watcher.progress_notify);
            tokio::select! {
                biased;
                _ = &mut ended => return,
                message = requests.message(), if requests_open => match message {
                    Ok(Some(request)) => {
                        // What is applied now, not at the top of this round, once every write
                        // answered is committed (`Hub::settled`): a watch created after a put's
                        // answer must start after that put, and the state machine answers it
                        // before committing it and wakes this stream after.
                        self.hub.settled().await;
                        let now = *applied.borrow();
                        if self.handle(request, now).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => requests_open = false,
                    Err(_) => return,
                },
                _ = std::future::ready(()), if again => {}
                changed = applied.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = clock.now();
                    let fast = woken_at.is_some_and(|at| now.since(at) < pace);
                    woken_at = Some(now);
                    let sustained = fast && fast_before;
                    fast_before = fast;
                    if sustained {
                        // Held for the next revision, or for `hold` at most.
                        let deadline = !bugs::enabled(Bug::HeldWithoutDeadline);
                        tokio::select! {
                            biased;
                            _ = &mut ended => return,
                            changed = applied.changed() => if changed.is_err() { return },
                            _ = clock.sleep(hold), if deadline => {}
                        }
                        woken_at = Some(clock.now());
                    }
                }
                _ = async { clock.sleep(next_tick.since(clock.now())).await }, if ticking => {
                    next_tick = clock.now().plus(interval);
                    if self.notify_progress(current).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn response(&self, revision: i64, watch_id: i64) -> WatchResponse {
        WatchResponse {
            header: Some(convert::member_header(&self.service.node, revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Gone> {
        self.sender.send(Ok(response)).await.map_err(|_| Gone)
    }

    async fn handle(&mut self, request: WatchRequest, current: Applied) -> Result<(), Gone> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create, current).await,
            Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) => {
                // etcd answers a cancel only for a watcher it had.
                if self.watchers.remove(&watch_id).is_some() {
                    self.update_prev_interest();
                    let mut response = self.response(current.revision, watch_id);
                    response.canceled = true;
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            // etcd ignores a request with nothing in it rather than end the stream.
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest, current: Applied) -> Result<(), Gone> {
        let mut response = self.response(current.revision, -1);
        response.created = true;
        let id = if Watcher::is_empty_range(&create) {
            Err(EMPTY_RANGE)
        } else if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                Err(DUPLICATE_ID)
            } else {
                Ok(create.watch_id)
            }
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            Ok(self.next_id - 1)
        };
        match id {
            Ok(id) => {
                response.watch_id = id;
                self.watchers
                    .insert(id, Watcher::new(id, &create, current.revision));
                self.update_prev_interest();
            }
            Err(reason) => {
                response.canceled = true;
                response.cancel_reason = reason.to_string();
            }
        }
        self.send(response).await
    }

    /// Holds the stream's interest in previous key-values while one of its watchers has
    /// `prev_kv`, and only then.
    fn update_prev_interest(&mut self) {
        let wanted = self.watchers.values().any(|watcher| watcher.prev_kv);
        match (wanted, self.prev_interest.is_some()) {
            (true, false) => self.prev_interest = Some(self.hub.want_prev()),
            (false, true) => self.prev_interest = None,
            _ => {}
        }
    }

    /// Sends every watcher up to `MAX_REVISIONS_PER_RESPONSE` of the revisions it is owed up to
    /// `current`; answers whether any is still owed more.
    async fn deliver(&mut self, current: Applied) -> Result<bool, Gone> {
        let mut owed = false;
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.next <= current.revision)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let Some(watcher) = self.watchers.get(&id) else {
                continue;
            };
            let from = watcher.next;
            let to = current.revision.min(from + MAX_REVISIONS_PER_RESPONSE - 1);
            if from < current.compacted {
                self.compacted(id, current.compacted).await?;
                continue;
            }
            // Each response: (header revision, events).
            let mut responses: Vec<(i64, Vec<Event>)> = Vec::new();
            match self.hub.cached(from, to, watcher.prev_kv) {
                Some(revisions) if watcher.synced => {
                    // Live: one revision's events headed by that revision, as etcd's synced
                    // watchers; several (paced) in one response headed by the newest.
                    let (mut newest, mut events) = (0, Vec::new());
                    for revision in &revisions {
                        let before = events.len();
                        events.extend(watcher.events(&revision.changes, current.compacted));
                        if events.len() > before {
                            newest = revision.revision;
                        }
                    }
                    responses.push((newest, events));
                }
                Some(revisions) => {
                    let changes = revisions.iter().flat_map(|r| r.changes.iter());
                    responses.push((current.revision, watcher.events(changes, current.compacted)));
                }
                None => match self.read_history(from, to, watcher.prev_kv).await {
                    Ok(changes) => {
                        let events = watcher.events(&changes, current.compacted);
                        responses.push((current.revision, events))
                    }
                    Err(Unavailable::Compacted(compacted)) => {
                        self.compacted(id, compacted).await?;
                        continue;
                    }
                    Err(Unavailable::Failed(error)) => {
                        let status = Status::from(ApiError::Internal(error));
                        let _ = self.sender.send(Err(status)).await;
                        return Err(Gone);
                    }
                },
            }
            responses.retain(|(_, events)| !events.is_empty());
            let fragment = watcher.fragment;
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.next = to + 1;
                watcher.synced = watcher.next > current.revision;
                watcher.sent_since_tick |= !responses.is_empty();
                owed |= !watcher.synced;
            }
            for (revision, events) in responses {
                let mut response = self.response(revision, id);
                response.events = events;
                if fragment {
                    for piece in fragments(response, self.service.max_message_bytes) {
                        self.send(piece).await?;
                    }
                } else {
                    self.send(response).await?;
                }
            }
        }
        Ok(owed)
    }

    /// Cancels watcher `id`, whose next revision has been compacted (as etcd: `canceled` with
    /// `compact_revision`, no reason, and a header without a revision).
    async fn compacted(&mut self, id: i64, compacted: i64) -> Result<(), Gone> {
        self.watchers.remove(&id);
        self.update_prev_interest();
        let mut response = self.response(0, id);
        response.canceled = true;
        response.compact_revision = compacted;
        self.send(response).await
    }

    /// Changes of revisions `from..=to` read from the store, unless compaction got there first.
    async fn read_history(
        &self,
        from: i64,
        to: i64,
        with_prev: bool,
    ) -> Result<Vec<Change>, Unavailable> {
        let read = self
            .service
            .node
            .state_machine
            .read_mvcc(move |reader| {
                let compacted = reader.compacted();
                if from < compacted {
                    return Ok(Err(compacted));
                }
                let view = View::open(reader).map_err(io_error)?;
                Ok(Ok(view.changes(from, to, with_prev).map_err(io_error)?))
            })
            .await;
        match read {
            Ok(Ok(changes)) => Ok(changes),
            Ok(Err(compacted)) => Err(Unavailable::Compacted(compacted)),
            Err(error) => Err(Unavailable::Failed(error.to_string())),
        }
    }

    /// The periodic notification of watchers that asked for it, are caught up, and were sent
    /// no events since the last tick (as etcd).
    async fn notify_progress(&mut self, current: Applied) -> Result<(), Gone> {
        let mut due = Vec::new();
        for watcher in self.watchers.values_mut() {
            if watcher.progress_notify
                && watcher.next > current.revision
                && !watcher.sent_since_tick
            {
                due.push(watcher.id);
            }
            watcher.sent_since_tick = false;
        }
        for id in due {
            self.send(self.response(current.revision, id)).await?;
        }
        Ok(())
    }
}
