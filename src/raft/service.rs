//! The server side of Raft between members: the `detcd.raft.Raft` gRPC service, which decodes
//! each RPC and hands it to the local openraft instance.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use openraft::error::RaftError;

use super::codec;
use super::{DetcdRaft, Published, Snapshot};
use crate::env::Duration;
use crate::pb::raft as pb;
use crate::pb::raft::raft_server::Raft;

/// The results of one replication stream, as tonic sends them.
type StreamAppendResults =
    Pin<Box<dyn futures::Stream<Item = Result<pb::StreamAppendResponse, Status>> + Send>>;

pub struct RaftService {
    raft: DetcdRaft,
    /// How long a ReadIndex waits for a quorum round before it answers `DEADLINE_EXCEEDED`.
    request_timeout: Duration,
}

impl RaftService {
    pub fn new(raft: DetcdRaft, request_timeout: Duration) -> Self {
        Self {
            raft,
            request_timeout,
        }
    }
}

fn unavailable(error: impl std::fmt::Display) -> Status {
    Status::unavailable(error.to_string())
}

fn invalid(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(error.to_string())
}

#[tonic::async_trait]
impl Raft for RaftService {
    type StreamAppendStream = StreamAppendResults;

    /// A leader's replication stream: each request goes to openraft as it arrives (it does not
    /// wait for the previous one's answer) and the results come back in request order. The
    /// stream ends after a conflict or a higher vote, when the leader closes its side, or with
    /// an error status after a request that does not decode or when Raft has stopped.
    async fn stream_append(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let undecodable: Arc<Mutex<Option<Status>>> = Arc::default();
        let input = futures::stream::unfold(
            (request.into_inner(), undecodable.clone()),
            |(mut inbound, undecodable)| async move {
                // A transport error ends the input like the leader closing it: the leader sees
                // the stream end and opens another.
                let message = inbound.message().await.ok().flatten()?;
                match codec::append_request_from_pb(message) {
                    Ok(request) => Some((request, (inbound, undecodable))),
                    Err(error) => {
                        *undecodable.lock().expect("not poisoned") = Some(invalid(error));
                        None
                    }
                }
            },
        );
        let results = self.raft.stream_append(input).map(|result| match result {
            Ok(result) => Ok(codec::stream_append_result_to_pb(&result)),
            Err(fatal) => Err(unavailable(fatal)),
        });
        let undecodable =
            futures::stream::once(async move { undecodable.lock().expect("not poisoned").take() })
                .filter_map(|status| async move { status.map(Err) });
        Ok(Response::new(Box::pin(results.chain(undecodable))))
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let request = codec::append_request_from_pb(request.into_inner()).map_err(invalid)?;
        let response = self
            .raft
            .append_entries(request)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(codec::append_response_to_pb(&response)))
    }

    async fn request_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let request = codec::vote_request_from_pb(request.get_ref()).map_err(invalid)?;
        let response = self.raft.vote(request).await.map_err(unavailable)?;
        Ok(Response::new(codec::vote_response_to_pb(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let request = request.into_inner();
        let vote = codec::vote_from_pb(&request.vote).map_err(invalid)?;
        let meta = codec::snapshot_meta_from_pb(&request.meta).map_err(invalid)?;
        let snapshot = Snapshot {
            meta,
            snapshot: super::state_machine::SnapshotData::Encoded(request.data),
        };
        let response = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::InstallSnapshotResponse {
            vote: Some(codec::vote_to_pb(&response.vote)),
        }))
    }

    /// A member's client URLs, recorded in the membership if this member leads.
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let request = request.into_inner();
        let request_id = request.member_id;
        let publish = super::publish(&self.raft, request_id, request.client_urls);
        match tokio::time::timeout(self.request_timeout, publish).await {
            Err(_elapsed) => Err(Status::deadline_exceeded(
                "publish: the membership entry was not committed within the request timeout",
            )),
            Ok(Published::Done) => Ok(Response::new(pb::PublishResponse { leader: true })),
            Ok(Published::NotLeader) => Ok(Response::new(pb::PublishResponse { leader: false })),
            Ok(Published::UnknownMember) => Err(Status::failed_precondition(format!(
                "publish: member {:x} is not in the cluster",
                request_id
            ))),
            Ok(Published::Retry(reason) | Published::Stopped(reason)) => Err(unavailable(reason)),
        }
    }

    /// A follower's linearizable read: confirms this member leads and answers the index the
    /// follower must apply before it reads. Not the leader: unconfirmed.
    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let read = tokio::time::timeout(self.request_timeout, super::read_index(&self.raft));
        match read.await {
            Err(_elapsed) => Err(Status::deadline_exceeded(
                "read index: no quorum confirmed the leader within the request timeout",
            )),
            Ok(Ok(index)) => Ok(Response::new(pb::ReadIndexResponse {
                confirmed: true,
                index,
            })),
            Ok(Err(error)) => match (error.forward_to_leader(), &error) {
                (Some(_forward), _) => Ok(Response::new(pb::ReadIndexResponse {
                    confirmed: false,
                    index: 0,
                })),
                (None, RaftError::Fatal(fatal)) => Err(unavailable(fatal)),
                (None, RaftError::APIError(other)) => {
                    Err(Status::deadline_exceeded(format!("read index: {other}")))
                }
            },
        }
    }
}
