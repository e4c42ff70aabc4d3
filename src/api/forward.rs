//! Forwarding a client request from a follower to the leader, as etcd followers do.
//!
//! The leader's peer URL serves the KV and Lease services too, so no client URL has to be known
//! for it. A forwarded request carries the `detcd-forwarded` metadata; a member that receives
//! one and is not the leader answers instead of forwarding again, so a request never loops. A
//! forwarded request gives up after the request timeout (a stale leader behind a partition
//! never answers), which the client sees as `etcdserver: request timed out`.
//!
//! KV requests go on one `Forward` stream per leader (a [`Link`]): each is one message each way,
//! tagged with an ID, answered in any order, where a gRPC call each cost the leader and the
//! follower an HTTP/2 stream, headers and trailers (with 2 of 3 clients on followers, 54 us of
//! the cluster's 152 us of CPU per put at 64 clients). A request unanswered within the request
//! timeout closes its link with every request still on it (a partition can leave a stream open
//! and silent); the next request opens another. Lease grants and revokes, rarer, are still one
//! call each; keep-alives have streams of their own (`lease.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use super::kv::KvService;
use super::status::ApiError;
use super::ResponseStream;
use crate::env::bugs::{self, Bug};
use crate::env::{watch as signal, Clock, Duration};
use crate::node::REQUEST_TIMEOUT;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::raft::forward_client::ForwardClient;
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::{
    forward_request, forward_response, forward_server, ForwardError, ForwardRequest,
    ForwardResponse,
};
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;
use crate::raft::MemberNode;

pub const FORWARDED_METADATA: &str = "detcd-forwarded";

/// Whether `request` was already forwarded once.
pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_METADATA)
}

/// Marks a request as forwarded.
pub fn mark<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_METADATA,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

/// Lease and Raft clients and KV links to other members' peer URLs, connected lazily and kept.
#[derive(Clone, Default)]
pub struct Forwarder {
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
    links: Arc<Mutex<BTreeMap<String, Link>>>,
    max_message_bytes: usize,
}

impl Forwarder {
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            channels: Arc::default(),
            links: Arc::default(),
            max_message_bytes,
        }
    }

    /// Sends a KV request to `leader` and waits for its answer, at most the request timeout on
    /// `clock`.
    pub async fn kv(
        &self,
        leader: &MemberNode,
        clock: &Clock,
        request: forward_request::Request,
    ) -> Result<forward_response::Response, Status> {
        let (link, answer) = self.send(leader, request)?;
        match clock.timeout(REQUEST_TIMEOUT, answer).await {
            Ok(Ok(Ok(forward_response::Response::Error(error)))) => {
                Err(Status::new(tonic::Code::from(error.code), error.message))
            }
            Ok(Ok(answered)) => answered,
            Ok(Err(_closed)) => Err(link_ended()),
            Err(_elapsed) => {
                if !bugs::enabled(Bug::ForwardLinkKept) {
                    link.close(ApiError::Timeout.into());
                }
                Err(ApiError::Timeout.into())
            }
        }
    }

    /// Queues `request` on the link to `leader` (opening one if there is none, or it closed).
    fn send(
        &self,
        leader: &MemberNode,
        request: forward_request::Request,
    ) -> Result<(Link, oneshot::Receiver<Answer>), Status> {
        let mut links = self.links.lock().expect("forwarder links lock");
        let link = match links.get(&leader.peer_url) {
            Some(link) if !link.is_closed() => link.clone(),
            _ => {
                // Requests are bounded by --max-request-bytes; responses (a large range) are not.
                let client = ForwardClient::new(self.channel(leader)?)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(self.max_message_bytes);
                let link = Link::open(client);
                links.insert(leader.peer_url.clone(), link.clone());
                link
            }
        };
        drop(links);
        let answer = link.send(request)?;
        Ok((link, answer))
    }

    pub fn lease(&self, leader: &MemberNode) -> Result<LeaseClient<Channel>, Status> {
        Ok(LeaseClient::new(self.channel(leader)?))
    }

    /// The leader's Raft service, for a follower's read index.
    pub fn raft(&self, leader: &MemberNode) -> Result<RaftClient<Channel>, Status> {
        Ok(RaftClient::new(self.channel(leader)?))
    }

    fn channel(&self, leader: &MemberNode) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("forwarder lock");
        let channel = match channels.get(&leader.peer_url) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(leader.peer_url.clone())
                    .map_err(|e| Status::unavailable(format!("bad leader URL: {e}")))?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(REQUEST_TIMEOUT)
                    .connect_lazy();
                channels.insert(leader.peer_url.clone(), channel.clone());
                channel
            }
        };
        Ok(channel)
    }
}

/// What a forwarded request is answered with.
type Answer = Result<forward_response::Response, Status>;

fn link_ended() -> Status {
    Status::unavailable("detcd: the stream of requests forwarded to the leader ended")
}

/// A follower's stream of forwarded KV requests to one leader, shared by every request it
/// forwards there; clones share it. Its task reads the leader's answers and hands each to
/// whoever waits for it.
#[derive(Clone)]
struct Link {
    requests: mpsc::UnboundedSender<ForwardRequest>,
    state: Arc<Mutex<LinkState>>,
}

#[derive(Default)]
struct LinkState {
    next_id: u64,
    /// The requests sent and not answered yet, by ID.
    waiting: BTreeMap<u64, oneshot::Sender<Answer>>,
    /// Nothing more is sent or answered on this link.
    closed: bool,
    /// Stops the link's task (taken when the link is closed from outside).
    stop: Option<oneshot::Sender<()>>,
}

impl Link {
    fn open(mut client: ForwardClient<Channel>) -> Link {
        let (requests, outgoing) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let state = Arc::new(Mutex::new(LinkState {
            stop: Some(stop),
            ..LinkState::default()
        }));
        let link = Link { requests, state };
        let state = Arc::clone(&link.state);
        tokio::spawn(async move {
            let outgoing = super::received_unbounded(outgoing);
            let run = async {
                let mut answers = client.forward(outgoing).await?.into_inner();
                while let Some(answer) = answers.message().await? {
                    let waiter = state
                        .lock()
                        .expect("forward link lock")
                        .waiting
                        .remove(&answer.id);
                    if let (Some(waiter), Some(response)) = (waiter, answer.response) {
                        // The requester may have given up (timed out): nothing to tell.
                        _ = waiter.send(Ok(response));
                    }
                }
                Ok::<(), Status>(())
            };
            let ended = tokio::select! {
                biased;
                _ = stopped => return,
                ended = run => ended,
            };
            let status = ended.err().unwrap_or_else(link_ended);
            Link::end(&state, status);
        });
        link
    }

    fn is_closed(&self) -> bool {
        self.state.lock().expect("forward link lock").closed
    }

    /// Sends `request`; the receiver gets its answer (or why there will be none).
    fn send(&self, request: forward_request::Request) -> Result<oneshot::Receiver<Answer>, Status> {
        let (answer, answered) = oneshot::channel();
        let mut state = self.state.lock().expect("forward link lock");
        if state.closed {
            return Err(link_ended());
        }
        let id = state.next_id;
        state.next_id += 1;
        state.waiting.insert(id, answer);
        let sent = self.requests.send(ForwardRequest {
            id,
            request: Some(request),
        });
        if sent.is_err() {
            state.waiting.remove(&id);
            return Err(link_ended());
        }
        Ok(answered)
    }

    /// Closes the link: its task stops and every request still on it fails with `status`.
    fn close(&self, status: Status) {
        let stop = self.state.lock().expect("forward link lock").stop.take();
        if let Some(stop) = stop {
            _ = stop.send(());
        }
        Link::end(&self.state, status);
    }

    fn end(state: &Mutex<LinkState>, status: Status) {
        let waiting = {
            let mut state = state.lock().expect("forward link lock");
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        for waiter in waiting.into_values() {
            _ = waiter.send(Err(status.clone()));
        }
    }
}

/// The leader's side of the `Forward` stream: each request runs through this member's KV
/// service as a forwarded call would (never forwarded again), concurrently, and is answered as
/// it completes.
pub struct ForwardService {
    kv: Arc<KvService>,
    /// The member is stopping: streams end (a graceful shutdown waits for every open stream).
    stop: signal::Receiver<bool>,
}

impl ForwardService {
    pub fn new(kv: KvService, stop: signal::Receiver<bool>) -> Self {
        Self {
            kv: Arc::new(kv),
            stop,
        }
    }

    /// Resolves once the member stops: one wake-up registration for a stream's life, not one
    /// per message.
    fn stopped(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut stop = self.stop.clone();
        Box::pin(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
    }
}

#[tonic::async_trait]
impl forward_server::Forward for ForwardService {
    type ForwardStream = ResponseStream<ForwardResponse>;

    async fn forward(
        &self,
        request: Request<Streaming<ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let mut requests = request.into_inner();
        let (answers, outgoing) = mpsc::unbounded_channel();
        let kv = Arc::clone(&self.kv);
        let mut stopped = self.stopped();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    request = requests.message() => match request {
                        Ok(Some(request)) => request,
                        _ => break,
                    },
                };
                let kv = Arc::clone(&kv);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let response = answer(&kv, request.request).await;
                    // The follower may have gone: nobody to answer.
                    _ = answers.send(Ok(ForwardResponse {
                        id: request.id,
                        response: Some(response),
                    }));
                });
            }
        });
        let outgoing = futures::stream::unfold(
            (outgoing, self.stopped()),
            |(mut outgoing, mut stopped)| async move {
                tokio::select! {
                    biased;
                    _ = &mut stopped => None,
                    answer = outgoing.recv() => answer.map(|answer| (answer, (outgoing, stopped))),
                }
            },
        );
        Ok(Response::new(Box::pin(outgoing)))
    }
}

/// Runs one forwarded request through the KV service.
async fn answer(
    kv: &KvService,
    request: Option<forward_request::Request>,
) -> forward_response::Response {
    use forward_request::Request as Asked;
    use forward_response::Response as Answered;
    let answered = match request {
        Some(Asked::Range(r)) => kv
            .range(mark(r))
            .await
            .map(|r| Answered::Range(r.into_inner())),
        Some(Asked::Put(r)) => kv.put(mark(r)).await.map(|r| Answered::Put(r.into_inner())),
        Some(Asked::DeleteRange(r)) => kv
            .delete_range(mark(r))
            .await
            .map(|r| Answered::DeleteRange(r.into_inner())),
        Some(Asked::Txn(r)) => kv.txn(mark(r)).await.map(|r| Answered::Txn(r.into_inner())),
        Some(Asked::Compact(r)) => kv
            .compact(mark(r))
            .await
            .map(|r| Answered::Compact(r.into_inner())),
        None => Err(Status::invalid_argument(
            "detcd: a forwarded request without a request",
        )),
    };
    answered.unwrap_or_else(|status| {
        Answered::Error(ForwardError {
            code: status.code() as i32,
            message: status.message().to_string(),
        })
    })
}
