//! The client side of the Raft transport: openraft's `RaftNetwork` over tonic.
//!
//! A connection failure is `Unreachable` (openraft backs off before retrying); any other
//! transport failure is a `Network` error (retried at once); a snapshot chunk the follower
//! did not expect comes back as openraft's own `SnapshotMismatch`, so the leader restarts
//! the transfer.

use fulcrum_proto::raft::v1 as pb;
use fulcrum_proto::raft::v1::raft_client::RaftClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use tonic::transport::Channel;

use super::{TypeConfig, wire};
use crate::transport::Dialer;

/// The gRPC status code a follower uses to say a snapshot chunk came out of order; the
/// message is the `SnapshotMismatch` as JSON.
pub const SNAPSHOT_MISMATCH_CODE: tonic::Code = tonic::Code::Aborted;

type Error<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

/// Makes a [`Peer`] per target node.
#[derive(Clone)]
pub struct Network {
    dialer: Dialer,
}

impl Network {
    /// Dials peers with `dialer`.
    pub fn new(dialer: Dialer) -> Self {
        Network { dialer }
    }
}

/// One peer's Raft client.
pub struct Peer {
    target: u64,
    address: String,
    client: Result<RaftClient<Channel>, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            address: node.addr.clone(),
            client: self
                .dialer
                .channel(&node.addr)
                .map(|c| RaftClient::new(c).max_decoding_message_size(MAX_MESSAGE_BYTES))
                .map_err(|e| e.to_string()),
        }
    }
}

/// Largest Raft message accepted (a batch of entries or a snapshot chunk).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

fn failure<E: std::error::Error>(
    address: &str,
    status: &tonic::Status,
) -> RPCError<u64, BasicNode, E> {
    let what = AnyError::error(format!("{address}: {status}"));
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::from(what))
        }
        _ => RPCError::Network(NetworkError::from(what)),
    }
}

fn malformed<E: std::error::Error>(
    address: &str,
    e: wire::WireError,
) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::from(AnyError::error(format!(
        "{address} answered a malformed message: {e}"
    ))))
}

impl Peer {
    fn client(&self) -> Result<RaftClient<Channel>, AnyError> {
        self.client.clone().map_err(AnyError::error)
    }

    fn request<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, Error> {
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::from(e)))?;
        let response = client
            .append_entries(Self::request(wire::append_request(&rpc), &option))
            .await
            .map_err(|s| failure(&self.address, &s))?;
        wire::from_append_response(response.get_ref()).map_err(|e| malformed(&self.address, e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, Error<InstallSnapshotError>> {
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::from(e)))?;
        let response = client
            .install_snapshot(Self::request(wire::snapshot_request(&rpc), &option))
            .await;
        match response {
            Ok(r) => {
                wire::from_snapshot_response(r.get_ref()).map_err(|e| malformed(&self.address, e))
            }
            Err(status) if status.code() == SNAPSHOT_MISMATCH_CODE => {
                match serde_json::from_str::<SnapshotMismatch>(status.message()) {
                    Ok(mismatch) => Err(RPCError::RemoteError(RemoteError::new(
                        self.target,
                        RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
                    ))),
                    Err(_) => Err(failure(&self.address, &status)),
                }
            }
            Err(status) => Err(failure(&self.address, &status)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, Error> {
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::from(e)))?;
        let response = client
            .vote(Self::request(wire::vote_request(&rpc), &option))
            .await
            .map_err(|s| failure(&self.address, &s))?;
        wire::from_vote_response(response.get_ref()).map_err(|e| malformed(&self.address, e))
    }
}

/// A Propose or ReadIndex client to `address`.
pub fn client(dialer: &Dialer, address: &str) -> Result<RaftClient<Channel>, tonic::Status> {
    dialer
        .channel(address)
        .map(|c| RaftClient::new(c).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

/// The request for a proposal forwarded to the leader.
pub fn propose_request(command: Vec<u8>) -> pb::ProposeRequest {
    pb::ProposeRequest { command }
}
