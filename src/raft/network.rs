//! The client side of Raft between members: openraft's RPCs over gRPC (`detcd.raft.Raft`).
//!
//! Every RPC runs under a timeout (openraft's soft TTL): in the simulator a clogged link drops
//! messages silently and a stream stalls without an error, so an RPC without a deadline could
//! wait forever. A failure to reach a peer is reported as `Unreachable` (openraft backs off).
//!
//! Log replication runs on one long-lived stream per follower (`StreamAppend`): openraft sends
//! each AppendEntries as soon as it has new entries or a new commit index, without waiting for
//! the previous answer, and each is one message on an open HTTP/2 stream instead of a call of
//! its own. The same deadline holds there: the oldest unanswered request must be answered
//! within the TTL, or the stream is dropped as unreachable and openraft opens another.
//! openraft's heartbeats come through `stream_append` too, a stream of one request each; the
//! unary `append_entries` below is what the trait requires, and openraft no longer calls it (the
//! peer service still answers the unary RPC, for a member of an older build).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::OptionalSend;
use tokio::sync::{Notify, Semaphore};
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use super::codec;
use super::{LogId, MemberNode, Snapshot, TypeConfig, Vote};
use crate::env::bugs::{self, Bug};
use crate::env::{Clock, Duration, Instant};
use crate::pb::raft as pb;
use crate::pb::raft::raft_client::RaftClient;

/// Largest Raft message a member accepts (snapshots travel whole for now).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Makes one [`PeerClient`] per target member.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    /// The member's clock, on which a replication stream's answers are timed.
    pub clock: Clock,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> Self::Network {
        PeerClient {
            target,
            peer_url: node.peer_url.clone(),
            client: None,
            clock: self.clock.clone(),
        }
    }
}

/// A gRPC client to one peer, connected lazily.
pub struct PeerClient {
    target: u64,
    peer_url: String,
    client: Option<RaftClient<Channel>>,
    clock: Clock,
}

fn unreachable(error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(error.to_string()))
}

fn bad_response(error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(error.to_string()))
}

impl PeerClient {
    fn client(&mut self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        if self.client.is_none() {
            let endpoint = Endpoint::from_shared(self.peer_url.clone())
                .map_err(|e| unreachable(format!("bad peer URL {}: {e}", self.peer_url)))?
                .connect_timeout(Duration::from_secs(1));
            let client = RaftClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
            self.client = Some(client);
        }
        Ok(self.client.clone().expect("client just set"))
    }

    /// Runs one RPC under `ttl`; a transport failure drops the cached connection.
    async fn call<T, F, Fut>(&mut self, ttl: Duration, rpc: F) -> Result<T, RPCError<TypeConfig>>
    where
        F: FnOnce(RaftClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client()?;
        match tokio::time::timeout(ttl, rpc(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                self.client = None;
                Err(unreachable(format!("member {:x}: {status}", self.target)))
            }
            Err(_) => {
                self.client = None;
                Err(unreachable(format!(
                    "member {:x}: timed out after {ttl:?}",
                    self.target
                )))
            }
        }
    }
}

/// How many AppendEntries a replication stream has unanswered at most. While the window is
/// full the next request is not taken from openraft, so it grows to cover every entry appended
/// meanwhile: a slow link or follower gets fewer, larger requests instead of a growing queue.
/// (The simulator delivers at most one message per millisecond on a connection; without a
/// window a leader taking 1,000 writes a second fell ever further behind on its streams.)
pub const MAX_IN_FLIGHT: usize = 2;

/// One open replication stream: the answers still owed, oldest first.
struct Replication<'s> {
    peer: &'s mut PeerClient,
    results: Streaming<pb::StreamAppendResponse>,
    sent: Arc<Mutex<VecDeque<Sent>>>,
    /// A permit per request that may still be sent ([`MAX_IN_FLIGHT`] minus those unanswered).
    window: Arc<Semaphore>,
    ttl: Duration,
    /// `Bug::AckOnSend` only: a request went out, and how many were acknowledged unanswered.
    request_sent: Arc<Notify>,
    acked_unanswered: usize,
}

/// A request of a replication stream, sent and not answered yet.
struct Sent {
    at: Instant,
    /// Its last log id (its `prev_log_id` if it has no entries).
    last: Option<LogId>,
}

type StreamAppendItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl Replication<'_> {
    /// The next result; `None` when the follower ended the stream. An error ends it too.
    async fn next(&mut self) -> Option<StreamAppendItem> {
        let ack_on_send = bugs::enabled(Bug::AckOnSend);
        loop {
            if ack_on_send {
                let sent = self.sent.lock().expect("not poisoned");
                if let Some(request) = sent.get(self.acked_unanswered) {
                    let last = request.last;
                    drop(sent);
                    self.acked_unanswered += 1;
                    self.window.add_permits(1);
                    return Some(Ok(Ok(last)));
                }
            }
            let oldest = self
                .sent
                .lock()
                .expect("not poisoned")
                .front()
                .map(|s| s.at);
            // Idle (nothing owed): look again after a TTL, in case a request went out meanwhile.
            let wait = match oldest {
                Some(at) => at.plus(self.ttl).since(self.peer.clock.monotonic()),
                None => self.ttl,
            };
            // `biased`: tokio's random branch order would make the simulation non-deterministic.
            tokio::select! {
                biased;
                message = self.results.message() => {
                    return match message {
                        Ok(Some(message)) => {
                            self.sent.lock().expect("not poisoned").pop_front();
                            if self.acked_unanswered > 0 {
                                self.acked_unanswered -= 1;
                                continue;
                            }
                            self.window.add_permits(1);
                            Some(codec::stream_append_result_from_pb(&message).map_err(bad_response))
                        }
                        Ok(None) => None,
                        Err(status) => {
                            self.peer.client = None;
                            Some(Err(unreachable(format!("member {:x}: {status}", self.peer.target))))
                        }
                    };
                }
                () = self.request_sent.notified(), if ack_on_send => {}
                () = self.peer.clock.sleep(wait) => {
                    if oldest.is_some() && !bugs::enabled(Bug::StalledStreamKept) {
                        self.peer.client = None;
                        return Some(Err(unreachable(format!(
                            "member {:x}: replication stream unanswered for {:?}",
                            self.peer.target, self.ttl
                        ))));
                    }
                }
            }
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = super::state_machine::SnapshotData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamAppendItem>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let ttl = option.soft_ttl();
            let sent: Arc<Mutex<VecDeque<Sent>>> = Arc::default();
            let window = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let request_sent = Arc::new(Notify::new());
            let clock = self.clock.clone();
            let requests = futures::stream::unfold(
                (input, window.clone(), sent.clone(), request_sent.clone()),
                move |(mut input, window, sent, request_sent)| {
                    let clock = clock.clone();
                    async move {
                        window.acquire().await.ok()?.forget();
                        let request = input.next().await?;
                        if request.entries.is_empty() {
                            // A new commit index (or a heartbeat) only: the tasks already
                            // runnable go first. After a commit they are the applier and the
                            // answers to the clients of what was committed, which would
                            // otherwise leave after these sends.
                            tokio::task::yield_now().await;
                        }
                        let last = request
                            .entries
                            .last()
                            .map(|entry| entry.log_id)
                            .or(request.prev_log_id);
                        sent.lock().expect("not poisoned").push_back(Sent {
                            at: clock.monotonic(),
                            last,
                        });
                        if bugs::enabled(Bug::AckOnSend) {
                            request_sent.notify_one();
                        }
                        let request = codec::append_request_to_pb(&request);
                        Some((request, (input, window, sent, request_sent)))
                    }
                },
            );
            let mut client = self.client()?;
            let results = match tokio::time::timeout(ttl, client.stream_append(requests)).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    self.client = None;
                    return Err(unreachable(format!("member {:x}: {status}", self.target)));
                }
                Err(_) => {
                    self.client = None;
                    return Err(unreachable(format!(
                        "member {:x}: replication stream not opened within {ttl:?}",
                        self.target
                    )));
                }
            };
            let replication = Replication {
                peer: self,
                results,
                sent,
                window,
                ttl,
                request_sent,
                acked_unanswered: 0,
            };
            let results = futures::stream::unfold(Some(replication), |state| async move {
                let mut replication = state?;
                let item = replication.next().await?;
                let more = item.is_ok().then_some(replication);
                Some((item, more))
            });
            Ok(results.boxed())
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = codec::append_request_to_pb(&rpc);
        let response = self
            .call(option.soft_ttl(), |mut client| async move {
                client.append_entries(request).await
            })
            .await?;
        codec::append_response_from_pb(&response).map_err(bad_response)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = codec::vote_request_to_pb(&rpc);
        let response = self
            .call(option.soft_ttl(), |mut client| async move {
                client.request_vote(request).await
            })
            .await?;
        codec::vote_response_from_pb(&response).map_err(bad_response)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // A snapshot this member built is encoded only now, when a follower needs it.
        let data = snapshot.snapshot.encode().await.map_err(|error| {
            let source = openraft::errors::ErrorSource::from_error(&error);
            let signature = Some(snapshot.meta.signature());
            StreamingError::StorageError(openraft::StorageError::read_snapshot(signature, source))
        })?;
        let request = pb::InstallSnapshotRequest {
            vote: Some(codec::vote_to_pb(&vote)),
            meta: Some(codec::snapshot_meta_to_pb(&snapshot.meta)),
            data,
        };
        let send = self.call(option.hard_ttl(), |mut client| async move {
            client.install_snapshot(request).await
        });
        tokio::select! {
            biased;
            response = send => {
                let response = response?;
                let vote = codec::vote_from_pb(&response.vote)
                    .map_err(|e| StreamingError::from(bad_response(e)))?;
                Ok(SnapshotResponse::new(vote))
            }
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}
