//! A follower's read indexes, gathered: one `ReadIndex` call to the leader serves every
//! linearizable read that arrived on this member before the call was sent (etcd's
//! `linearizableReadLoop`).
//!
//! A read may use only a read index asked for after it arrived: the leader's quorum round must
//! come after the read began, or a write acknowledged in between could be missed. So one call is in
//! flight at a time; reads that arrive while it is out wait for the next one, which is sent as soon
//! as it returns. Under load a member sends one call per round trip, whatever its read rate.

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::forward::Forwarder;
use super::kv::node_status;
use super::status::ApiError;
use crate::env::bugs::{self, Bug};
use crate::env::{watch, Instant};
use crate::node::{Node, NodeError, REQUEST_TIMEOUT};
use crate::pb::raft::ReadIndexRequest;

/// What a round of read indexes answered.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Reads may be served here once this member has applied this log index.
    Index(u64),
    /// The leader cannot give read indexes (an older version): forward the whole read.
    Forward,
    /// The read fails with this status.
    Failed(Status),
}

/// The handle reads ask through; [`run`] answers them.
#[derive(Clone)]
pub struct ReadIndexer {
    reads: mpsc::UnboundedSender<oneshot::Sender<Outcome>>,
}

impl ReadIndexer {
    /// The handle, and the queue [`run`] serves.
    pub fn new() -> (
        ReadIndexer,
        mpsc::UnboundedReceiver<oneshot::Sender<Outcome>>,
    ) {
        let (reads, queue) = mpsc::unbounded_channel();
        (ReadIndexer { reads }, queue)
    }

    /// A read index asked after now, then this member's state machine applied that far, both
    /// by `deadline`: what a follower waits for before it serves a linearizable read from its
    /// own store, or answers a lease grant it forwarded. `Ok(false)`: the leader gives no read
    /// indexes (a member of an older version), nothing was waited for.
    pub async fn caught_up(&self, node: &Node, deadline: Instant) -> Result<bool, Status> {
        let outcome = node
            .clock
            .timeout(deadline.since(node.clock.now()), self.read_index())
            .await
            .map_err(|_elapsed| Status::from(ApiError::Timeout))?;
        match outcome {
            Outcome::Forward => Ok(false),
            Outcome::Failed(status) => Err(status),
            Outcome::Index(_) if bugs::enabled(Bug::FollowerReadBeforeApplied) => Ok(true),
            Outcome::Index(index) => {
                node.await_applied(index, deadline)
                    .await
                    .map_err(node_status)?;
                Ok(true)
            }
        }
    }

    /// The read index for a read that has just arrived, from a call sent after now.
    pub async fn read_index(&self) -> Outcome {
        let (answer, outcome) = oneshot::channel();
        if self.reads.send(answer).is_err() {
            return Outcome::Failed(ApiError::Stopped.into());
        }
        outcome
            .await
            .unwrap_or_else(|_| Outcome::Failed(ApiError::Stopped.into()))
    }
}

/// Serves read indexes until `stop`: takes every read queued so far, asks once, answers them all.
pub async fn run(
    node: Node,
    forwarder: Forwarder,
    mut queue: mpsc::UnboundedReceiver<oneshot::Sender<Outcome>>,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = stop.wait_for(|stopped| *stopped);
    let serve = async {
        let mut batch = Vec::new();
        while let Some(first) = queue.recv().await {
            batch.push(first);
            while let Ok(next) = queue.try_recv() {
                batch.push(next);
            }
            let outcome = ask(&node, &forwarder).await;
            for answer in batch.drain(..) {
                let _ = answer.send(outcome.clone());
            }
        }
    };
    tokio::select! {
        biased;
        _ = stopped => {}
        _ = serve => {}
    }
}

/// One read index, from the leader this member knows of now (from itself if it leads by now).
async fn ask(node: &Node, forwarder: &Forwarder) -> Outcome {
    let leader = node.leader().filter(|id| *id != node.id);
    let Some(leader) = leader.and_then(|id| node.member(id)) else {
        return match node.read_barrier().await {
            // This member leads now and has applied its own read index.
            Ok(()) => Outcome::Index(0),
            Err(error) => Outcome::Failed(super::kv::node_status(error)),
        };
    };
    let mut client = match forwarder.raft(&leader) {
        Ok(client) => client,
        Err(status) => return Outcome::Failed(status),
    };
    let call = client.read_index(ReadIndexRequest {});
    match node.clock.timeout(REQUEST_TIMEOUT, call).await {
        Err(_elapsed) => Outcome::Failed(ApiError::Timeout.into()),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Outcome::Forward,
        Ok(Err(status)) => Outcome::Failed(super::kv::forward_status(status)),
        // Leadership moved since this member last heard: the client retries.
        Ok(Ok(response)) if !response.get_ref().confirmed => {
            Outcome::Failed(super::kv::node_status(NodeError::NoLeader))
        }
        Ok(Ok(response)) => Outcome::Index(response.get_ref().index),
    }
}
