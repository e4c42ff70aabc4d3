//! Conversions between openraft's types and `detcd.raft` protobuf messages: the encoding of log
//! entries in redb and of Raft RPCs between members. Decoding never panics on bad bytes; it
//! answers an error (a corrupt record is a storage failure, a bad RPC is the peer's problem).

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult,
    VoteRequest, VoteResponse,
};
use openraft::EntryPayload;

use super::{
    Entry, LogId, MemberNode, Membership, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};
use crate::pb::raft as pb;

#[derive(Debug)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad raft record: {}", self.0)
    }
}
impl std::error::Error for DecodeError {}

fn missing(what: &str) -> DecodeError {
    DecodeError(format!("missing {what}"))
}

pub fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
    pb::LogId {
        term: log_id.leader_id.term,
        index: log_id.index,
    }
}

pub fn log_id_from_pb(log_id: &pb::LogId) -> LogId {
    LogId::new_term_index(log_id.term, log_id.index)
}

pub fn opt_log_id_from_pb(log_id: &Option<pb::LogId>) -> Option<LogId> {
    log_id.as_ref().map(log_id_from_pb)
}

pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote {
        term: vote.leader_id.term,
        voted_for: Some(vote.leader_id.voted_for),
        committed: vote.committed,
    }
}

pub fn vote_from_pb(vote: &Option<pb::Vote>) -> Result<Vote, DecodeError> {
    let vote = vote.as_ref().ok_or_else(|| missing("vote"))?;
    let voted_for = vote.voted_for.ok_or_else(|| missing("voted_for"))?;
    Ok(if vote.committed {
        Vote::new_committed(vote.term, voted_for)
    } else {
        Vote::new(vote.term, voted_for)
    })
}

pub fn membership_to_pb(membership: &Membership) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|ids| pb::NodeIds {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| {
                (
                    *id,
                    pb::Member {
                        name: node.name.clone(),
                        peer_url: node.peer_url.clone(),
                        client_urls: node.client_urls.clone(),
                    },
                )
            })
            .collect(),
    }
}

pub fn membership_from_pb(membership: &pb::Membership) -> Result<Membership, DecodeError> {
    let configs: Vec<BTreeSet<u64>> = membership
        .configs
        .iter()
        .map(|ids| ids.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, MemberNode> = membership
        .nodes
        .iter()
        .map(|(id, member)| {
            (
                *id,
                MemberNode {
                    name: member.name.clone(),
                    peer_url: member.peer_url.clone(),
                    client_urls: member.client_urls.clone(),
                },
            )
        })
        .collect();
    Membership::new(configs, nodes).map_err(|e| DecodeError(e.to_string()))
}

pub fn entry_to_pb(entry: &Entry) -> pb::Entry {
    pb::Entry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload: Some(match &entry.payload {
            EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
            EntryPayload::Normal(command) => pb::entry::Payload::Command(command.clone()),
            EntryPayload::Membership(membership) => {
                pb::entry::Payload::Membership(membership_to_pb(membership))
            }
        }),
    }
}

pub fn entry_from_pb(entry: pb::Entry) -> Result<Entry, DecodeError> {
    let log_id = log_id_from_pb(entry.log_id.as_ref().ok_or_else(|| missing("log id"))?);
    let payload = match entry.payload.ok_or_else(|| missing("payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Command(command) => EntryPayload::Normal(command),
        pb::entry::Payload::Membership(membership) => {
            EntryPayload::Membership(membership_from_pb(&membership)?)
        }
    };
    Ok(Entry { log_id, payload })
}

pub fn stored_membership_to_pb(stored: &StoredMembership) -> (Option<pb::LogId>, pb::Membership) {
    (
        stored.log_id().as_ref().map(log_id_to_pb),
        membership_to_pb(stored.membership()),
    )
}

pub fn stored_membership_from_pb(
    log_id: &Option<pb::LogId>,
    membership: &Option<pb::Membership>,
) -> Result<StoredMembership, DecodeError> {
    let membership = match membership {
        Some(membership) => membership_from_pb(membership)?,
        None => Membership::default(),
    };
    Ok(StoredMembership::new(
        opt_log_id_from_pb(log_id),
        membership,
    ))
}

pub fn snapshot_meta_to_pb(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    let (membership_log_id, membership) = stored_membership_to_pb(&meta.last_membership);
    pb::SnapshotMeta {
        last_log_id: meta.last_log_id.as_ref().map(log_id_to_pb),
        last_membership_log_id: membership_log_id,
        last_membership: Some(membership),
        snapshot_id: String::new(),
    }
}

pub fn snapshot_meta_from_pb(meta: &Option<pb::SnapshotMeta>) -> Result<SnapshotMeta, DecodeError> {
    let meta = meta.as_ref().ok_or_else(|| missing("snapshot meta"))?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(&meta.last_log_id),
        last_membership: stored_membership_from_pb(
            &meta.last_membership_log_id,
            &meta.last_membership,
        )?,
    })
}

pub fn append_request_to_pb(
    request: &AppendEntriesRequest<TypeConfig>,
) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&request.vote)),
        prev_log_id: request.prev_log_id.as_ref().map(log_id_to_pb),
        entries: request.entries.iter().map(entry_to_pb).collect(),
        leader_commit: request.leader_commit.as_ref().map(log_id_to_pb),
    }
}

pub fn append_request_from_pb(
    request: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(&request.vote)?,
        prev_log_id: opt_log_id_from_pb(&request.prev_log_id),
        entries: request
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_pb(&request.leader_commit),
    })
}

pub fn append_response_to_pb(
    response: &AppendEntriesResponse<TypeConfig>,
) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Kind;
    let mut out = pb::AppendEntriesResponse::default();
    match response {
        AppendEntriesResponse::Success => out.set_kind(Kind::Success),
        AppendEntriesResponse::PartialSuccess(matching) => {
            out.set_kind(Kind::PartialSuccess);
            out.matching = matching.as_ref().map(log_id_to_pb);
        }
        AppendEntriesResponse::Conflict => out.set_kind(Kind::Conflict),
        AppendEntriesResponse::HigherVote(vote) => {
            out.set_kind(Kind::HigherVote);
            out.higher_vote = Some(vote_to_pb(vote));
        }
    }
    out
}

pub fn append_response_from_pb(
    response: &pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, DecodeError> {
    use pb::append_entries_response::Kind;
    let kind = Kind::try_from(response.kind).map_err(|_| DecodeError("append kind".into()))?;
    Ok(match kind {
        Kind::Success => AppendEntriesResponse::Success,
        Kind::PartialSuccess => {
            AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(&response.matching))
        }
        Kind::Conflict => AppendEntriesResponse::Conflict,
        Kind::HigherVote => AppendEntriesResponse::HigherVote(vote_from_pb(&response.higher_vote)?),
    })
}

pub fn stream_append_result_to_pb(
    result: &StreamAppendResult<TypeConfig>,
) -> pb::StreamAppendResponse {
    use pb::stream_append_response::Result as Kind;
    let result = match result {
        Ok(matching) => Kind::Matching(pb::Matching {
            log_id: matching.as_ref().map(log_id_to_pb),
        }),
        Err(StreamAppendError::Conflict(log_id)) => Kind::Conflict(log_id_to_pb(log_id)),
        Err(StreamAppendError::HigherVote(vote)) => Kind::HigherVote(vote_to_pb(vote)),
    };
    pb::StreamAppendResponse {
        result: Some(result),
    }
}

pub fn stream_append_result_from_pb(
    response: &pb::StreamAppendResponse,
) -> Result<StreamAppendResult<TypeConfig>, DecodeError> {
    use pb::stream_append_response::Result as Kind;
    Ok(match &response.result {
        Some(Kind::Matching(matching)) => Ok(opt_log_id_from_pb(&matching.log_id)),
        Some(Kind::Conflict(log_id)) => Err(StreamAppendError::Conflict(log_id_from_pb(log_id))),
        Some(Kind::HigherVote(vote)) => {
            Err(StreamAppendError::HigherVote(vote_from_pb(&Some(*vote))?))
        }
        None => return Err(DecodeError("stream append result missing".into())),
    })
}

pub fn vote_request_to_pb(request: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&request.vote)),
        last_log_id: request.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn vote_request_from_pb(
    request: &pb::VoteRequest,
) -> Result<VoteRequest<TypeConfig>, DecodeError> {
    Ok(VoteRequest::new(
        vote_from_pb(&request.vote)?,
        opt_log_id_from_pb(&request.last_log_id),
    ))
}

pub fn vote_response_to_pb(response: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&response.vote)),
        vote_granted: response.vote_granted,
        last_log_id: response.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn vote_response_from_pb(
    response: &pb::VoteResponse,
) -> Result<VoteResponse<TypeConfig>, DecodeError> {
    Ok(VoteResponse::new(
        vote_from_pb(&response.vote)?,
        opt_log_id_from_pb(&response.last_log_id),
        response.vote_granted,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn members() -> Membership {
        let nodes = BTreeMap::from([
            (
                1,
                MemberNode {
                    name: "a".into(),
                    peer_url: "http://10.0.0.1:2380".into(),
                    client_urls: vec![
                        "http://10.0.0.1:2379".into(),
                        "http://10.0.0.1:22379".into(),
                    ],
                },
            ),
            (
                2,
                MemberNode {
                    name: "b".into(),
                    ..MemberNode::default()
                },
            ),
        ]);
        Membership::new(vec![BTreeSet::from([1, 2])], nodes).unwrap()
    }

    #[test]
    fn entries_round_trip_through_bytes() {
        let command = pb::Command {
            op: Some(pb::command::Op::Put(crate::pb::etcdserverpb::PutRequest {
                key: b"k".to_vec(),
                value: bytes::Bytes::from_static(b"v"),
                prev_kv: true,
                ..Default::default()
            })),
            lessor_term: 3,
        };
        let entries = [
            Entry {
                log_id: LogId::new_term_index(3, 7),
                payload: EntryPayload::Normal(command),
            },
            Entry {
                log_id: LogId::new_term_index(1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: LogId::new_term_index(0, 0),
                payload: EntryPayload::Membership(members()),
            },
        ];
        for entry in entries {
            let bytes = entry_to_pb(&entry).encode_to_vec();
            let decoded = entry_from_pb(pb::Entry::decode(bytes.as_slice()).unwrap()).unwrap();
            assert_eq!(decoded, entry);
        }
    }

    #[test]
    fn votes_round_trip_committed_or_not() {
        for vote in [Vote::new(5, 2), Vote::new_committed(6, 3), Vote::new(0, 0)] {
            assert_eq!(vote_from_pb(&Some(vote_to_pb(&vote))).unwrap(), vote);
        }
    }

    #[test]
    fn stream_append_results_round_trip_through_bytes() {
        let results: [StreamAppendResult<TypeConfig>; 4] = [
            Ok(None),
            Ok(Some(LogId::new_term_index(4, 9))),
            Err(StreamAppendError::Conflict(LogId::new_term_index(2, 3))),
            Err(StreamAppendError::HigherVote(Vote::new_committed(7, 1))),
        ];
        for result in results {
            let bytes = stream_append_result_to_pb(&result).encode_to_vec();
            let decoded = pb::StreamAppendResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(stream_append_result_from_pb(&decoded).unwrap(), result);
        }
        assert!(stream_append_result_from_pb(&pb::StreamAppendResponse::default()).is_err());
    }

    #[test]
    fn an_entry_without_payload_is_an_error_not_a_panic() {
        let entry = pb::Entry {
            log_id: Some(pb::LogId { term: 1, index: 1 }),
            payload: None,
        };
        assert!(entry_from_pb(entry).is_err());
    }
}
