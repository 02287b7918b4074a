//! openraft's messages to and from `fulcrum.raft.v1`.
//!
//! Outbound conversions cannot fail. Inbound ones check what a peer could get wrong — a
//! missing field, a membership whose voters have no address, a command that does not
//! decode — and say which field, so a damaged or hostile message is refused with
//! `InvalidArgument` before it reaches openraft.

use std::collections::{BTreeMap, BTreeSet};

use fulcrum_proto::raft::v1 as pb;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use super::TypeConfig;
use crate::mesh::Command;

/// Most voter sets a membership may have (two, during a joint change).
const MAX_CONFIGS: usize = 2;
/// Most nodes a membership may name.
const MAX_NODES: usize = 64;

/// Why a peer's message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    /// The field, e.g. `entries[3].normal`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl WireError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        WireError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn missing(field: &str) -> Self {
        WireError::new(field, "required field is missing")
    }

    fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

// --- outbound -------------------------------------------------------------------------

fn leader_id(l: &LeaderId<u64>) -> pb::LeaderId {
    pb::LeaderId {
        term: l.term,
        node_id: l.node_id,
    }
}

/// A vote on the wire.
pub fn vote(v: &Vote<u64>) -> pb::Vote {
    pb::Vote {
        leader_id: Some(leader_id(&v.leader_id)),
        committed: v.committed,
    }
}

/// A log id on the wire.
pub fn log_id(l: &LogId<u64>) -> pb::LogId {
    pb::LogId {
        leader_id: Some(pb::LeaderId {
            term: l.leader_id.term,
            node_id: l.leader_id.node_id,
        }),
        index: l.index,
    }
}

fn membership(m: &Membership<u64, BasicNode>) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| pb::NodeIdSet {
                node_ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, node)| {
                (
                    *id,
                    pb::Node {
                        address: node.addr.clone(),
                    },
                )
            })
            .collect(),
    }
}

/// An entry on the wire (and in the store).
pub fn entry(e: &Entry<TypeConfig>) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(c) => pb::entry::Payload::Normal(c.encoded()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership(m)),
    };
    pb::Entry {
        log_id: Some(log_id(&e.log_id)),
        payload: Some(payload),
    }
}

/// An AppendEntries request on the wire.
pub fn append_request(r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote(&r.vote)),
        prev_log_id: r.prev_log_id.as_ref().map(log_id),
        entries: r.entries.iter().map(entry).collect(),
        leader_commit: r.leader_commit.as_ref().map(log_id),
    }
}

/// An AppendEntries response on the wire.
pub fn append_response(r: &AppendEntriesResponse<u64>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(pb::Blank {}),
        AppendEntriesResponse::PartialSuccess(matching) => R::PartialSuccess(pb::PartialSuccess {
            matching: matching.as_ref().map(log_id),
        }),
        AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote(v)),
    };
    pb::AppendEntriesResponse {
        result: Some(result),
    }
}

/// A Vote request on the wire.
pub fn vote_request(r: &VoteRequest<u64>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote(&r.vote)),
        last_log_id: r.last_log_id.as_ref().map(log_id),
    }
}

/// A Vote response on the wire.
pub fn vote_response(r: &VoteResponse<u64>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id),
    }
}

fn snapshot_meta(m: &SnapshotMeta<u64, BasicNode>) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: m.last_log_id.as_ref().map(log_id),
        last_membership: Some(pb::StoredMembership {
            log_id: m.last_membership.log_id().as_ref().map(log_id),
            membership: Some(membership(m.last_membership.membership())),
        }),
        snapshot_id: m.snapshot_id.clone(),
    }
}

/// An InstallSnapshot request on the wire.
pub fn snapshot_request(r: &InstallSnapshotRequest<TypeConfig>) -> pb::InstallSnapshotRequest {
    pb::InstallSnapshotRequest {
        vote: Some(vote(&r.vote)),
        meta: Some(snapshot_meta(&r.meta)),
        offset: r.offset,
        data: r.data.clone(),
        done: r.done,
    }
}

/// An InstallSnapshot response on the wire.
pub fn snapshot_response(r: &InstallSnapshotResponse<u64>) -> pb::InstallSnapshotResponse {
    pb::InstallSnapshotResponse {
        vote: Some(vote(&r.vote)),
    }
}

// --- inbound --------------------------------------------------------------------------

fn required<'a, M>(field: &str, value: Option<&'a M>) -> Result<&'a M, WireError> {
    value.ok_or_else(|| WireError::missing(field))
}

fn from_leader_id(l: &pb::LeaderId) -> LeaderId<u64> {
    LeaderId::new(l.term, l.node_id)
}

/// A vote from the wire.
pub fn from_vote(v: &pb::Vote) -> Result<Vote<u64>, WireError> {
    let leader = from_leader_id(required("leader_id", v.leader_id.as_ref())?);
    Ok(Vote {
        leader_id: leader,
        committed: v.committed,
    })
}

/// A log id from the wire.
pub fn from_log_id(l: &pb::LogId) -> Result<LogId<u64>, WireError> {
    let leader = required("leader_id", l.leader_id.as_ref())?;
    Ok(LogId::new(
        CommittedLeaderId::new(leader.term, leader.node_id),
        l.index,
    ))
}

fn from_optional_log_id(
    field: &str,
    l: Option<&pb::LogId>,
) -> Result<Option<LogId<u64>>, WireError> {
    l.map(|l| from_log_id(l).map_err(|e| e.within(field)))
        .transpose()
}

fn from_membership(m: &pb::Membership) -> Result<Membership<u64, BasicNode>, WireError> {
    if m.configs.is_empty() || m.configs.len() > MAX_CONFIGS {
        return Err(WireError::new(
            "configs",
            format!(
                "{} voter sets; a membership has 1, or 2 during a change",
                m.configs.len()
            ),
        ));
    }
    if m.nodes.len() > MAX_NODES {
        return Err(WireError::new(
            "nodes",
            format!(
                "{} nodes, more than the limit of {MAX_NODES}",
                m.nodes.len()
            ),
        ));
    }
    let nodes: BTreeMap<u64, BasicNode> = m
        .nodes
        .iter()
        .map(|(id, n)| (*id, BasicNode::new(n.address.clone())))
        .collect();
    let mut configs = Vec::new();
    for (i, set) in m.configs.iter().enumerate() {
        let ids: BTreeSet<u64> = set.node_ids.iter().copied().collect();
        if let Some(id) = ids.iter().find(|id| !nodes.contains_key(id)) {
            return Err(WireError::new(
                format!("configs[{i}]"),
                format!("voter {id} has no entry in nodes"),
            ));
        }
        configs.push(ids);
    }
    Ok(Membership::new(configs, nodes))
}

/// An entry from the wire (or the store).
pub fn from_entry(e: &pb::Entry) -> Result<Entry<TypeConfig>, WireError> {
    use pb::entry::Payload;
    let log_id =
        from_log_id(required("log_id", e.log_id.as_ref())?).map_err(|e| e.within("log_id"))?;
    let payload = match required("payload", e.payload.as_ref())? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(bytes) => {
            let command = Command::decode(bytes.clone())
                .map_err(|err| WireError::new("normal", format!("not a Fulcrum command: {err}")))?;
            EntryPayload::Normal(command)
        }
        Payload::Membership(m) => {
            EntryPayload::Membership(from_membership(m).map_err(|e| e.within("membership"))?)
        }
    };
    Ok(Entry { log_id, payload })
}

/// An AppendEntries request from the wire.
pub fn from_append_request(
    r: &pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, WireError> {
    let vote = from_vote(required("vote", r.vote.as_ref())?).map_err(|e| e.within("vote"))?;
    let entries = r
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| from_entry(e).map_err(|err| err.within(&format!("entries[{i}]"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id: from_optional_log_id("prev_log_id", r.prev_log_id.as_ref())?,
        entries,
        leader_commit: from_optional_log_id("leader_commit", r.leader_commit.as_ref())?,
    })
}

/// An AppendEntries response from the wire.
pub fn from_append_response(
    r: &pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<u64>, WireError> {
    use pb::append_entries_response::Result as R;
    Ok(match required("result", r.result.as_ref())? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::PartialSuccess(p) => AppendEntriesResponse::PartialSuccess(from_optional_log_id(
            "partial_success.matching",
            p.matching.as_ref(),
        )?),
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => {
            AppendEntriesResponse::HigherVote(from_vote(v).map_err(|e| e.within("higher_vote"))?)
        }
    })
}

/// A Vote request from the wire.
pub fn from_vote_request(r: &pb::VoteRequest) -> Result<VoteRequest<u64>, WireError> {
    Ok(VoteRequest {
        vote: from_vote(required("vote", r.vote.as_ref())?).map_err(|e| e.within("vote"))?,
        last_log_id: from_optional_log_id("last_log_id", r.last_log_id.as_ref())?,
    })
}

/// A Vote response from the wire.
pub fn from_vote_response(r: &pb::VoteResponse) -> Result<VoteResponse<u64>, WireError> {
    Ok(VoteResponse {
        vote: from_vote(required("vote", r.vote.as_ref())?).map_err(|e| e.within("vote"))?,
        vote_granted: r.vote_granted,
        last_log_id: from_optional_log_id("last_log_id", r.last_log_id.as_ref())?,
    })
}

fn from_snapshot_meta(m: &pb::SnapshotMeta) -> Result<SnapshotMeta<u64, BasicNode>, WireError> {
    let stored = required("last_membership", m.last_membership.as_ref())?;
    let membership = from_membership(required(
        "last_membership.membership",
        stored.membership.as_ref(),
    )?)
    .map_err(|e| e.within("last_membership.membership"))?;
    Ok(SnapshotMeta {
        last_log_id: from_optional_log_id("last_log_id", m.last_log_id.as_ref())?,
        last_membership: StoredMembership::new(
            from_optional_log_id("last_membership.log_id", stored.log_id.as_ref())?,
            membership,
        ),
        snapshot_id: m.snapshot_id.clone(),
    })
}

/// An InstallSnapshot request from the wire.
pub fn from_snapshot_request(
    r: &pb::InstallSnapshotRequest,
) -> Result<InstallSnapshotRequest<TypeConfig>, WireError> {
    Ok(InstallSnapshotRequest {
        vote: from_vote(required("vote", r.vote.as_ref())?).map_err(|e| e.within("vote"))?,
        meta: from_snapshot_meta(required("meta", r.meta.as_ref())?)
            .map_err(|e| e.within("meta"))?,
        offset: r.offset,
        data: r.data.clone(),
        done: r.done,
    })
}

/// An InstallSnapshot response from the wire.
pub fn from_snapshot_response(
    r: &pb::InstallSnapshotResponse,
) -> Result<InstallSnapshotResponse<u64>, WireError> {
    Ok(InstallSnapshotResponse {
        vote: from_vote(required("vote", r.vote.as_ref())?).map_err(|e| e.within("vote"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Change;

    fn sample_request() -> AppendEntriesRequest<TypeConfig> {
        let id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
        let nodes: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("127.0.0.1:7001"))].into();
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(id(2, 9)),
            entries: vec![
                Entry {
                    log_id: id(3, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: id(3, 11),
                    payload: EntryPayload::Normal(Command::new(42, Change::Tick)),
                },
                Entry {
                    log_id: id(3, 12),
                    payload: EntryPayload::Membership(Membership::new(vec![[1].into()], nodes)),
                },
            ],
            leader_commit: Some(id(3, 10)),
        }
    }

    #[test]
    fn append_entries_survive_the_wire() {
        let request = sample_request();
        let back = from_append_request(&append_request(&request)).expect("decodes");
        assert_eq!(format!("{back:?}"), format!("{request:?}"));
    }

    #[test]
    fn a_voter_without_an_address_is_refused_with_its_path() {
        let mut wire = append_request(&sample_request());
        if let Some(pb::entry::Payload::Membership(m)) = &mut wire.entries[2].payload {
            m.nodes.clear();
        }
        let err = from_append_request(&wire).unwrap_err();
        assert_eq!(err.field, "entries[2].membership.configs[0]");
    }

    #[test]
    fn a_command_that_does_not_decode_is_refused() {
        let mut wire = append_request(&sample_request());
        wire.entries[1].payload = Some(pb::entry::Payload::Normal(bytes::Bytes::from_static(
            b"{\"at",
        )));
        let err = from_append_request(&wire).unwrap_err();
        assert_eq!(err.field, "entries[1].normal");
    }
}
