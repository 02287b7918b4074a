//! The server side of the Raft transport, plus the two calls followers make of the leader
//! (Propose, ReadIndex). Coordinator identities only.

use std::sync::Arc;

use fulcrum_proto::raft::v1 as pb;
use fulcrum_proto::raft::v1::raft_server::Raft as RaftRpc;
use openraft::error::{InstallSnapshotError, RaftError};
use tonic::{Request, Response, Status};

use super::network::SNAPSHOT_MISMATCH_CODE;
use super::wire;
use crate::mesh::Change;
use crate::node::Node;
use crate::security::Action;

/// Most bytes a forwarded command may have.
const MAX_COMMAND_BYTES: usize = 16 * 1024 * 1024;

/// Serves `fulcrum.raft.v1.Raft` for one node.
pub struct RaftService {
    node: Arc<Node>,
}

impl RaftService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node }
    }
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
        let rpc = wire::from_append_request(request.get_ref())?;
        let response = self
            .node
            .raft
            .append_entries(rpc)
            .await
            .map_err(raft_status)?;
        Ok(Response::new(wire::append_response(&response)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.node.authz.authorize(&request, Action::Raft)?;
        let rpc = wire::from_vote_request(request.get_ref())?;
        let response = self.node.raft.vote(rpc).await.map_err(raft_status)?;
        Ok(Response::new(wire::vote_response(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        self.node.authz.authorize(&request, Action::Raft)?;
        let rpc = wire::from_snapshot_request(request.get_ref())?;
        match self.node.raft.install_snapshot(rpc).await {
            Ok(response) => Ok(Response::new(wire::snapshot_response(&response))),
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
        let change: Change = serde_json::from_slice(bytes)
            .map_err(|e| Status::invalid_argument(format!("command: not a Fulcrum change: {e}")))?;
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
}
