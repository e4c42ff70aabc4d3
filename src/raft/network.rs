//! The client side of Raft between members: openraft's RPCs over gRPC (`detcd.raft.Raft`).
//!
//! Every RPC runs under a timeout (openraft's soft TTL): in the simulator a clogged link drops
//! messages silently and a stream stalls without an error, so an RPC without a deadline could
//! wait forever. A failure to reach a peer is reported as `Unreachable` (openraft backs off).

use std::future::Future;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use tonic::transport::{Channel, Endpoint};

use super::codec;
use super::{MemberNode, Snapshot, TypeConfig, Vote};
use crate::env::Duration;
use crate::pb::raft as pb;
use crate::pb::raft::raft_client::RaftClient;

/// Largest Raft message a member accepts (snapshots travel whole for now).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Makes one [`PeerClient`] per target member.
#[derive(Debug, Clone, Default)]
pub struct NetworkFactory;

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> Self::Network {
        PeerClient {
            target,
            peer_url: node.peer_url.clone(),
            client: None,
        }
    }
}

/// A gRPC client to one peer, connected lazily.
pub struct PeerClient {
    target: u64,
    peer_url: String,
    client: Option<RaftClient<Channel>>,
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

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = super::state_machine::SnapshotData;

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
