//! The server side of the Raft transport, plus the two calls followers make of the leader
//! (Propose, ReadIndex). Coordinator identities only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fulcrum_proto::raft::v1 as pb;
use fulcrum_proto::raft::v1::raft_server::Raft as RaftRpc;
use openraft::ServerState;
use openraft::error::{InstallSnapshotError, RaftError};
use tonic::{Request, Response, Status};

use super::network::{SNAPSHOT_MISMATCH_CODE, TARGET_HEADER, WRONG_NODE_CODE};
use super::prevote;
use super::reach::{self, GroupContact};
use super::wire;
use crate::mesh::encoding::decode_change;
use crate::node::Node;
use crate::security::Action;

/// Most bytes a forwarded command may have.
const MAX_COMMAND_BYTES: usize = 16 * 1024 * 1024;

/// How many terms behind a candidate this node may be and still stand at once (see
/// [`RaftService::stand_if_only_we_can_win`]); further behind, the usual timer decides.
const MAX_TERMS_TO_CATCH_UP: u64 = 3;

/// Serves `fulcrum.raft.v1.Raft` for one node.
pub struct RaftService {
    node: Arc<Node>,
    watch: Arc<LeaderWatch>,
}

/// What this node knows of its leader's liveness, beyond openraft's own timers: when a
/// leader last reached it ([`GroupContact`], shared with the node), and whether it is to
/// stand.
struct LeaderWatch {
    contact: Arc<GroupContact>,
    /// A standing is scheduled (one at a time).
    scheduled: AtomicBool,
}

impl LeaderWatch {
    fn heard_now(&self) {
        self.contact.heard_leader();
    }

    /// How long until no leader has reached this node for `lease`: zero when it is
    /// already so.
    fn silent_in(&self, lease: Duration) -> Duration {
        lease.saturating_sub(self.contact.leader_silent_for())
    }
}

impl RaftService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        let watch = Arc::new(LeaderWatch {
            contact: node.contact.clone(),
            scheduled: AtomicBool::new(false),
        });
        RaftService { node, watch }
    }

    /// Refuses a leader's heartbeats, entries and snapshots while this node cannot reach
    /// it, so that it stands (see [`crate::raft::reach`]).
    fn follows(&self, leader: u64) -> Result<(), Status> {
        let election_max = self.node.settings.election_max;
        let patience = election_max * reach::STOP_FOLLOWING_AFTER;
        let fresh = election_max * reach::MISSES_FRESH_FOR;
        match self.node.reach.refuses(leader, patience, fresh) {
            None => Ok(()),
            Some(out) => {
                self.node.metrics.leader_refused.inc();
                Err(Status::unavailable(format!(
                    "node {} has not reached node {leader} for {} ms: it no longer follows it",
                    self.node.id,
                    out.as_millis()
                )))
            }
        }
    }

    /// Notes that a leader reached this node, when `vote` (the sender's) is one openraft
    /// will accept: a leader's (committed), and not behind the vote this node holds.
    fn heard_if_current(&self, vote: &openraft::Vote<u64>) {
        let current = self.node.raft.metrics().borrow().vote;
        if vote.is_committed() && *vote >= current {
            self.watch.heard_now();
        }
    }

    /// Whether this node is the leader.
    fn leads(&self) -> bool {
        self.node.raft.metrics().borrow().state == ServerState::Leader
    }

    /// A faster failover than openraft 0.9 gives alone.
    ///
    /// When the dead leader's last entry reached only some followers, a follower without
    /// it may time out first and stand; the others refuse it for its shorter log, and
    /// openraft then waits for their own timers: the lease plus an election timeout, plus
    /// twice the longest election timeout more on a node that once saw a longer log (a
    /// flag openraft clears only when that node's own timer fires). Only a node with the
    /// longest log can win. So a node that refuses a candidate for its shorter log stands
    /// itself as soon as its lease runs out (at once when it already has) if no leader
    /// has reached it meanwhile, at a term above the candidate's (each election moves one
    /// term up, so it may take two or three in a row; everyone ignores the superseded
    /// ones). Safety never depends on when a node stands, and the followers of a live
    /// leader keep hearing it, so they never do this; nor does the leader, which no
    /// leader reaches (a follower cut off from it stands again and again, and is refused
    /// for its log each time).
    fn stand_if_only_we_can_win(
        &self,
        request: &openraft::raft::VoteRequest<u64>,
        response: &openraft::raft::VoteResponse<u64>,
    ) {
        let refused_for_log = !response.vote_granted && response.last_log_id > request.last_log_id;
        if !refused_for_log || self.leads() || self.watch.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let lease = self.node.settings.election_max;
        let candidate = request.vote;
        let (raft, watch) = (self.node.raft.clone(), self.watch.clone());
        tokio::spawn(async move {
            let wait = watch.silent_in(lease);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let (ours, leads) = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                (metrics.current_term, metrics.state == ServerState::Leader)
            };
            let elections = candidate.leader_id().term.saturating_sub(ours) + 1;
            if !leads && watch.silent_in(lease).is_zero() && elections <= MAX_TERMS_TO_CATCH_UP {
                tracing::info!(
                    %candidate,
                    "a candidate with a shorter log stood and the leader is silent: standing now"
                );
                for _ in 0..elections {
                    if raft.trigger().elect().await.is_err() {
                        break;
                    }
                }
            }
            watch.scheduled.store(false, Ordering::Release);
        });
    }
}

/// Refuses a Raft call meant for another node (see [`TARGET_HEADER`]), counting it and
/// saying so in the log the first time and every thousandth after.
fn meant_for<T>(node: &Node, request: &Request<T>) -> Result<(), Status> {
    let refused = misaddressed(node.id, request);
    if let Err(status) = &refused
        && status.code() == WRONG_NODE_CODE
    {
        let before = node.metrics.raft_calls_misaddressed.inc();
        if before.is_multiple_of(1000) {
            tracing::warn!(
                refused = before + 1,
                "{}; check the coordinator addresses",
                status.message()
            );
        }
    }
    refused
}

fn misaddressed<T>(node: u64, request: &Request<T>) -> Result<(), Status> {
    let Some(value) = request.metadata().get(TARGET_HEADER) else {
        return Err(Status::invalid_argument(format!(
            "{TARGET_HEADER}: missing; a Raft call names the node it is meant for"
        )));
    };
    let target = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!("{TARGET_HEADER}: {value:?} is not a node id"))
        })?;
    if target != node {
        return Err(Status::new(
            WRONG_NODE_CODE,
            format!(
                "this is node {node}, not node {target}: the sender's address for node \
                 {target} is this node's"
            ),
        ));
    }
    Ok(())
}

fn raft_status<E: std::error::Error>(e: RaftError<u64, E>) -> Status {
    match e {
        RaftError::APIError(e) => Status::failed_precondition(e.to_string()),
        RaftError::Fatal(e) => Status::unavailable(format!("Raft on this node stopped: {e}")),
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.node.authz.authorize(&request, Action::Raft)?;
        meant_for(&self.node, &request)?;
        let rpc = wire::from_append_request(request.get_ref())?;
        self.follows(rpc.vote.leader_id().node_id)?;
        // The leader reached this node when its call arrived, not when this node's disk
        // has taken the entries: openraft answers only once they are flushed, and a slow
        // fsync here must not look like a silent leader to this node's election timer.
        self.heard_if_current(&rpc.vote);
        let response = self
            .node
            .raft
            .append_entries(rpc)
            .await
            .map_err(raft_status)?;
        if !matches!(
            response,
            openraft::raft::AppendEntriesResponse::HigherVote(_)
        ) {
            self.watch.heard_now();
        }
        Ok(Response::new(wire::append_response(&response)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.node.authz.authorize(&request, Action::Raft)?;
        meant_for(&self.node, &request)?;
        let rpc = wire::from_vote_request(request.get_ref())?;
        let response = self
            .node
            .raft
            .vote(rpc.clone())
            .await
            .map_err(raft_status)?;
        self.stand_if_only_we_can_win(&rpc, &response);
        Ok(Response::new(wire::vote_response(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        self.node.authz.authorize(&request, Action::Raft)?;
        meant_for(&self.node, &request)?;
        let rpc = wire::from_snapshot_request(request.get_ref())?;
        self.follows(rpc.vote.leader_id().node_id)?;
        self.heard_if_current(&rpc.vote);
        match self.node.raft.install_snapshot(rpc).await {
            Ok(response) => {
                self.watch.heard_now();
                Ok(Response::new(wire::snapshot_response(&response)))
            }
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                let text = serde_json::to_string(&m).unwrap_or_default();
                Err(Status::new(SNAPSHOT_MISMATCH_CODE, text))
            }
            Err(e) => Err(raft_status(e)),
        }
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        self.node.authz.authorize(&request, Action::Raft)?;
        let bytes = &request.get_ref().command;
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(Status::invalid_argument(format!(
                "command: {} bytes, more than the limit of {MAX_COMMAND_BYTES}",
                bytes.len()
            )));
        }
        let change =
            decode_change(bytes).map_err(|e| Status::invalid_argument(format!("command: {e}")))?;
        let proposed = self.node.propose_here(change).await?;
        let result = serde_json::to_vec(&proposed.outcome)
            .map_err(|e| Status::internal(format!("cannot encode the outcome: {e}")))?;
        Ok(Response::new(pb::ProposeResponse {
            index: proposed.index,
            result,
        }))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.node.authz.authorize(&request, Action::Raft)?;
        let index = self.node.read_index_here().await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn pre_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::PreVoteResponse>, Status> {
        self.node.authz.authorize(&request, Action::Raft)?;
        meant_for(&self.node, &request)?;
        let rpc = wire::from_vote_request(request.get_ref())?;
        let (leads, term) = {
            let metrics = self.node.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state == ServerState::Leader, metrics.current_term)
        };
        let here = prevote::Here {
            leads,
            silent_for: self.node.contact.leader_silent_for(),
            lease: self.node.settings.election_max,
            term,
            last_log_id: self.node.last_log.get(),
        };
        let answer = prevote::answer(&here, rpc.vote.leader_id().term, rpc.last_log_id.as_ref());
        if answer.is_ok() {
            // Rare, and the first step of an election: worth a line.
            tracing::info!(
                candidate = rpc.vote.leader_id().node_id,
                term = rpc.vote.leader_id().term,
                leader_silent_ms = here.silent_for.as_millis() as u64,
                "would vote for this candidate: pre-vote granted"
            );
        }
        Ok(Response::new(pb::PreVoteResponse {
            granted: answer.is_ok(),
            reason: answer.err().unwrap_or_default(),
        }))
    }
}
