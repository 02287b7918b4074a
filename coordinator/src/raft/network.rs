//! The client side of the Raft transport: openraft's `RaftNetwork` over tonic.
//!
//! A connection failure is `Unreachable` (openraft backs off before retrying); any other
//! transport failure is a `Network` error (retried at once); a snapshot chunk the follower
//! did not expect comes back as openraft's own `SnapshotMismatch`, so the leader restarts
//! the transfer.

use std::sync::Arc;

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
use openraft::{AnyError, BasicNode, EntryPayload, LogId};
use tonic::transport::Channel;

use super::reach::GroupContact;
use super::{TypeConfig, wire};
use crate::transport::Dialer;

/// The gRPC status code a follower uses to say a snapshot chunk came out of order; the
/// message is the `SnapshotMismatch` as JSON.
pub const SNAPSHOT_MISMATCH_CODE: tonic::Code = tonic::Code::Aborted;

type Error<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

/// The node id a Raft call is meant for. The receiving node refuses a call meant for
/// another: an address list that gives two ids one address would otherwise have one node
/// answer, and vote, for two (counting it twice toward a quorum), or have a leader take
/// its own heartbeat as another leader's, which stops Raft on it.
pub const TARGET_HEADER: &str = "fulcrum-raft-target";

/// The gRPC status code of a call that reached a node other than the one it was meant
/// for. The sender treats it as an unreachable peer and backs off.
pub const WRONG_NODE_CODE: tonic::Code = tonic::Code::FailedPrecondition;

/// Makes a [`Peer`] per target node.
#[derive(Clone)]
pub struct Network {
    dialer: Dialer,
    contact: Arc<GroupContact>,
}

impl Network {
    /// Dials peers with `dialer`, noting in `contact` which of them answer.
    pub fn new(dialer: Dialer, contact: Arc<GroupContact>) -> Self {
        Network { dialer, contact }
    }
}

/// One peer's Raft client.
pub struct Peer {
    target: u64,
    address: String,
    client: Result<RaftClient<Channel>, String>,
    contact: Arc<GroupContact>,
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
            contact: self.contact.clone(),
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
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | WRONG_NODE_CODE => RPCError::Unreachable(Unreachable::from(what)),
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

/// Most bytes of entries one AppendEntries carries. openraft allows each call one
/// heartbeat interval, and a follower far behind would otherwise be sent hundreds of
/// large digest entries at once, more than it can decode, append and fsync in that time:
/// every try would time out and it would never catch up. One entry always goes, whatever
/// its size.
pub const MAX_APPEND_BYTES: usize = 256 * 1024;

/// `rpc` with only as many entries as fit [`MAX_APPEND_BYTES`], and the last one sent when
/// some were left out.
fn within_budget(
    mut rpc: AppendEntriesRequest<TypeConfig>,
) -> (AppendEntriesRequest<TypeConfig>, Option<LogId<u64>>) {
    let mut bytes = 0usize;
    let keep = rpc
        .entries
        .iter()
        .position(|e| {
            bytes += match &e.payload {
                EntryPayload::Normal(command) => command.encoded().len(),
                _ => 64,
            };
            bytes > MAX_APPEND_BYTES
        })
        .map_or(rpc.entries.len(), |over| over.max(1));
    if keep == rpc.entries.len() {
        return (rpc, None);
    }
    rpc.entries.truncate(keep);
    let last = rpc.entries.last().map(|e| e.log_id);
    (rpc, last)
}

impl Peer {
    fn client(&self) -> Result<RaftClient<Channel>, AnyError> {
        self.client.clone().map_err(AnyError::error)
    }

    /// `message` addressed to this peer's node id (see [`TARGET_HEADER`]).
    fn request<T>(&self, message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        request.metadata_mut().insert(
            TARGET_HEADER,
            tonic::metadata::MetadataValue::from(self.target),
        );
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
        let (rpc, cut_after) = within_budget(rpc);
        let response = client
            .append_entries(self.request(wire::append_request(&rpc), &option))
            .await
            .map_err(|s| failure(&self.address, &s))?;
        self.contact.answered_by(self.target);
        let response = wire::from_append_response(response.get_ref())
            .map_err(|e| malformed(&self.address, e))?;
        // The follower took what was sent; openraft sends the rest next.
        Ok(match (response, cut_after) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (response, _) => response,
        })
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
            .install_snapshot(self.request(wire::snapshot_request(&rpc), &option))
            .await;
        match response {
            Ok(r) => {
                self.contact.answered_by(self.target);
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
            .vote(self.request(wire::vote_request(&rpc), &option))
            .await
            .map_err(|s| failure(&self.address, &s))?;
        // A new leader has just been answered by a majority: it starts in touch.
        self.contact.answered_by(self.target);
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, Vote};

    use super::*;
    use crate::mesh::{Change, Command, ObjectKey, StoredObject};

    fn entry(index: u64, json_bytes: usize) -> Entry<TypeConfig> {
        let object = StoredObject {
            key: ObjectKey {
                kind: "ServiceEntry".into(),
                namespace: "shop".into(),
                name: format!("s{index}"),
            },
            json: "x".repeat(json_bytes),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::new(
                index,
                Change::Apply {
                    objects: vec![object],
                },
            )),
        }
    }

    fn request(entries: Vec<Entry<TypeConfig>>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    #[test]
    fn an_append_carries_at_most_its_budget_and_says_where_it_stopped() {
        let small = request((1..=10).map(|i| entry(i, 1_000)).collect());
        let (sent, cut) = within_budget(small);
        assert_eq!((sent.entries.len(), cut), (10, None));

        let third = MAX_APPEND_BYTES / 3;
        let (sent, cut) = within_budget(request((1..=10).map(|i| entry(i, third)).collect()));
        assert_eq!(sent.entries.len(), 2);
        assert_eq!(cut.map(|l| l.index), Some(2));

        // One entry always goes, however large.
        let huge = request(vec![entry(7, 2 * MAX_APPEND_BYTES), entry(8, 10)]);
        let (sent, cut) = within_budget(huge);
        assert_eq!(sent.entries.len(), 1);
        assert_eq!(cut.map(|l| l.index), Some(7));
    }
}
