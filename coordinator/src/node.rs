//! One coordinator node's core: proposing changes (on the leader, or forwarded to it) and
//! linearizable reads. Every API handler goes through here, so forwarding and error codes
//! are decided once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::mesh::{Change, Command, Outcome};
use crate::metrics::Metrics;
use crate::raft::network;
use crate::raft::reach::{self, GroupContact, LeaderReach};
use crate::raft::store::{LastLogId, StateReader};
use crate::raft::{Raft, RaftSettings};
use crate::security::Authorizer;
use crate::transport::Dialer;

/// Metadata key carrying the leader's node id on a forward-to-leader error.
pub const LEADER_ID_HEADER: &str = "fulcrum-leader-id";
/// Metadata key carrying the leader's address on a forward-to-leader error.
pub const LEADER_ADDRESS_HEADER: &str = "fulcrum-leader-address";

/// How many longest election timeouts a write waits for a new leader during a failover.
const FAILOVER_PATIENCE: u32 = 20;
/// Election timeouts (the longest) a call to the leader may take before it counts as
/// unanswered: a forwarded proposal, a read index.
const FORWARD_PATIENCE: u32 = 4;
/// But never less than this.
const MIN_FORWARD_PATIENCE: Duration = Duration::from_secs(1);
/// Election timeouts (the longest) out of touch with the group after which a node counts
/// as cut off ([`Node::cut_off`]): longer than any election.
const CUT_OFF_ELECTIONS: u32 = 10;
/// But never less than this.
const MIN_CUT_OFF: Duration = Duration::from_secs(3);

/// A committed and applied proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    /// The log index it was committed at.
    pub index: u64,
    /// What the state machine answered.
    pub outcome: Outcome,
}

/// A running node's shared core.
pub struct Node {
    /// This node's id.
    pub id: u64,
    /// The address other nodes and clients reach it on.
    pub advertise: String,
    /// The Raft instance.
    pub raft: Raft,
    /// The applied state.
    pub state: StateReader,
    /// Dials other nodes.
    pub dialer: Dialer,
    /// Who may do what.
    pub authz: Authorizer,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// Timing of the group, for waits.
    pub settings: RaftSettings,
    /// Batches concurrent proposals into one entry.
    pub writer: Writer,
    /// Whether this node reaches its leader.
    pub reach: LeaderReach,
    /// Whether this node is in touch with its group.
    pub contact: Arc<GroupContact>,
    /// The id of its log's last entry, for pre-votes.
    pub last_log: LastLogId,
}

/// Most changes one batched entry carries.
pub const MAX_BATCH: usize = 1_024;
/// Most memory (as [`Change::memory_estimate`] counts it) one batched entry holds, so
/// an entry stays small enough to replicate within a heartbeat; a single larger change
/// still goes alone.
pub const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Batched entries proposed at once; more wait (and so grow the next batch).
pub const MAX_WRITES_IN_FLIGHT: usize = 4;

/// Why a local write did not commit.
#[derive(Debug, Clone)]
enum WriteError {
    /// This node does not lead; the leader if known.
    Forward(Option<(u64, String)>),
    /// A membership change is in progress or was refused.
    Membership(String),
    /// Raft stopped.
    Fatal(String),
}

struct PendingWrite {
    change: Arc<Change>,
    reply: oneshot::Sender<Result<Proposed, WriteError>>,
}

/// Hands proposals to Raft in batches: every change that arrives while earlier entries
/// are being appended goes into the next entry, so one append (and one fsync on each
/// node) carries many.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<PendingWrite>,
}

impl Writer {
    /// Starts the batching task for `raft`; it ends when every `Writer` is dropped.
    pub fn start(raft: Raft, state: StateReader) -> Writer {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run_writer(raft, state, rx));
        Writer { tx }
    }

    async fn write(&self, change: Arc<Change>) -> Result<Proposed, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(PendingWrite { change, reply })
            .await
            .map_err(|_| WriteError::Fatal("the node is shutting down".into()))?;
        answer
            .await
            .map_err(|_| WriteError::Fatal("the node is shutting down".into()))?
    }
}

/// A batch being gathered: its writes and their estimated memory.
struct Gathering {
    writes: Vec<PendingWrite>,
    bytes: usize,
    /// A write that did not fit, to start the next batch.
    next: Option<PendingWrite>,
}

impl Gathering {
    fn new(first: PendingWrite) -> Self {
        Gathering {
            bytes: first.change.memory_estimate(),
            writes: vec![first],
            next: None,
        }
    }

    /// Takes what is waiting, up to the batch bounds.
    fn take_more(&mut self, rx: &mut mpsc::Receiver<PendingWrite>) {
        while self.next.is_none() && self.writes.len() < MAX_BATCH {
            let Ok(p) = rx.try_recv() else {
                return;
            };
            let bytes = p.change.memory_estimate();
            if self.bytes + bytes > MAX_BATCH_BYTES {
                self.next = Some(p);
            } else {
                self.bytes += bytes;
                self.writes.push(p);
            }
        }
    }
}

async fn run_writer(raft: Raft, state: StateReader, mut rx: mpsc::Receiver<PendingWrite>) {
    let in_flight = Arc::new(Semaphore::new(MAX_WRITES_IN_FLIGHT));
    let mut left_over: Option<PendingWrite> = None;
    loop {
        let first = match left_over.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut gathering = Gathering::new(first);
        gathering.take_more(&mut rx);
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Whatever arrived while waiting for a slot joins this entry.
        gathering.take_more(&mut rx);
        left_over = gathering.next;
        let batch = gathering.writes;
        let raft = raft.clone();
        let at_ms = wall_clock_ms().max(state.read(|a| a.mesh.now_ms()));
        tokio::spawn(async move {
            let _permit = permit;
            let (changes, replies): (Vec<Arc<Change>>, Vec<_>) =
                batch.into_iter().map(|p| (p.change, p.reply)).unzip();
            let single = changes.len() == 1;
            let change = if single {
                changes
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| Arc::new(Change::Tick))
            } else {
                Arc::new(Change::Batch { changes })
            };
            let result = raft.client_write(Command::new(at_ms, change)).await;
            match result {
                Ok(response) => {
                    let index = response.log_id.index;
                    let outcomes = match response.data {
                        Outcome::Batch { outcomes } if !single => outcomes,
                        other => vec![other],
                    };
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(Proposed { index, outcome }));
                    }
                }
                Err(e) => {
                    let error = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            WriteError::Forward(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
                        }
                        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                            WriteError::Membership(e.to_string())
                        }
                        RaftError::Fatal(e) => WriteError::Fatal(e.to_string()),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// Milliseconds since the Unix epoch by the local clock.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `Unavailable`, with the leader's id and address in metadata when known, so a client
/// can retry there.
pub fn forward_to_leader(leader: Option<(u64, String)>, why: &str) -> Status {
    let mut status = Status::unavailable(match &leader {
        Some((id, address)) => format!("{why}; the leader is node {id} at {address}"),
        None => format!("{why}; no leader is known yet, retry shortly"),
    });
    if let Some((id, address)) = leader {
        if let Ok(v) = MetadataValue::try_from(id.to_string()) {
            status.metadata_mut().insert(LEADER_ID_HEADER, v);
        }
        if let Ok(v) = MetadataValue::try_from(address) {
            status.metadata_mut().insert(LEADER_ADDRESS_HEADER, v);
        }
    }
    status
}

impl Node {
    /// The time to stamp on a new entry: the local clock, but never before the last
    /// applied entry, so a new leader with a slow clock does not move time backwards.
    pub fn entry_time_ms(&self) -> u64 {
        let applied = self.state.read(|a| a.mesh.now_ms());
        wall_clock_ms().max(applied)
    }

    /// The leader this node knows of, with its address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let id = metrics.current_leader?;
        let address = metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, address))
    }

    /// When this node has been out of touch with its Raft group for longer than a
    /// failover takes (`max(3 s, ten election timeouts)`): how long. Its state is then
    /// stale and what is reported to it may not commit ([`GroupContact`]).
    pub fn cut_off(&self) -> Option<Duration> {
        let out = self.out_of_touch();
        let patience = (self.settings.election_max * CUT_OFF_ELECTIONS).max(MIN_CUT_OFF);
        (out > patience).then_some(out)
    }

    /// How long this node has been out of touch with its Raft group ([`GroupContact`]).
    pub fn out_of_touch(&self) -> Duration {
        let (leading, voters) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
            (metrics.state == openraft::ServerState::Leader, voters)
        };
        self.contact.out_of_touch(leading, &voters, self.id)
    }

    /// True when this node leads.
    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.id)
    }

    /// Waits (up to a few election timeouts) until some node leads.
    async fn await_leader(&self) -> Option<(u64, String)> {
        let mut metrics = self.raft.metrics();
        let patience = self.settings.election_max * 10;
        let _ = tokio::time::timeout(patience, async {
            loop {
                if metrics.borrow_and_update().current_leader.is_some() {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.leader()
    }

    /// Commits `change`: here when this node leads, otherwise forwarded to the leader.
    pub async fn propose(&self, change: Change) -> Result<Proposed, Status> {
        self.propose_inner(change, true).await
    }

    /// Commits `change` only if this node leads (the receiving end of a forward).
    pub async fn propose_here(&self, change: Change) -> Result<Proposed, Status> {
        self.propose_inner(change, false).await
    }

    async fn propose_inner(&self, change: Change, may_forward: bool) -> Result<Proposed, Status> {
        // Shared, so a retry does not copy a large digest.
        let change = Arc::new(change);
        // During a failover the known leader may be gone: wait for the next one and
        // retry, so a client never has to know who leads.
        let deadline = tokio::time::Instant::now() + self.settings.election_max * FAILOVER_PATIENCE;
        let mut last_error = None;
        while tokio::time::Instant::now() < deadline {
            let leader = match self.writer.write(change.clone()).await {
                Ok(proposed) => return Ok(proposed),
                Err(WriteError::Forward(Some(leader))) => Some(leader),
                // No leader known here: the last one, if it still answers this node (a
                // node that no longer hears the others stands again and again, yet may
                // still reach the leader), else the next one.
                Err(WriteError::Forward(None)) => match self.answering_leader() {
                    Some(leader) => Some(leader),
                    None => self.await_leader().await,
                },
                Err(WriteError::Membership(e)) => return Err(Status::failed_precondition(e)),
                Err(WriteError::Fatal(e)) => {
                    return Err(Status::unavailable(format!(
                        "Raft on this node stopped: {e}"
                    )));
                }
            };
            match leader {
                Some((id, _)) if id == self.id => continue,
                Some((id, address)) if may_forward => {
                    match self.forward(change.as_ref(), id, &address).await {
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            // The leader is unreachable: wait until another is elected.
                            self.await_leader_other_than(id).await;
                            last_error = Some(status);
                        }
                        done => return done,
                    }
                }
                other => return Err(forward_to_leader(other, "this node does not lead")),
            }
        }
        Err(last_error
            .unwrap_or_else(|| forward_to_leader(self.leader(), "no leader could take the write")))
    }

    /// Waits (up to a few election timeouts) until a leader other than `old` is known.
    async fn await_leader_other_than(&self, old: u64) {
        let mut metrics = self.raft.metrics();
        let patience = self.settings.election_max * 4;
        let _ = tokio::time::timeout(patience, async {
            loop {
                let current = metrics.borrow_and_update().current_leader;
                if current.is_some_and(|l| l != old) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    async fn forward(
        &self,
        change: &Change,
        leader: u64,
        address: &str,
    ) -> Result<Proposed, Status> {
        let mut client = network::client(&self.dialer, address)?;
        let bytes = crate::mesh::encoding::encode_change(change);
        // Bounded: a leader that takes requests in and never answers (its incoming
        // links down) would otherwise hold this proposal, and the node's next ones, until
        // the connection's keepalive gives up.
        let limit = (self.settings.election_max * FORWARD_PATIENCE).max(MIN_FORWARD_PATIENCE);
        let answered = self
            .call_leader(
                leader,
                limit,
                client.propose(network::propose_request(bytes)),
            )
            .await;
        let response = answered
            .map_err(|s| match reach::unanswered(&s) {
                true => forward_to_leader(
                    Some((leader, address.to_string())),
                    &format!("the leader did not answer: {}", s.message()),
                ),
                false => s,
            })?
            .into_inner();
        // Internal, not retryable: the change is committed, only its answer is unreadable
        // (nodes of different versions), and a retry would apply it twice.
        let outcome = serde_json::from_slice(&response.result).map_err(|e| {
            Status::internal(format!(
                "committed at log index {}, but the leader's answer does not decode \
                 (are the nodes running different versions?): {e}",
                response.index
            ))
        })?;
        Ok(Proposed {
            index: response.index,
            outcome,
        })
    }

    /// The index at which a read is linearizable, asked of the leader.
    pub async fn read_index(&self) -> Result<u64, Status> {
        if self.is_leader() {
            return self.read_index_here().await;
        }
        let Some((leader, address)) = self.await_leader().await else {
            return Err(forward_to_leader(None, "a consistent read needs a leader"));
        };
        let limit = (self.settings.election_max * FORWARD_PATIENCE).max(MIN_FORWARD_PATIENCE);
        self.ask_read_index(leader, &address, limit).await
    }

    /// The read index, asked of `leader` at `address` within `limit`; what came of it
    /// noted in [`Node::reach`].
    async fn ask_read_index(
        &self,
        leader: u64,
        address: &str,
        limit: Duration,
    ) -> Result<u64, Status> {
        let mut client = network::client(&self.dialer, address)?;
        let asked = client.read_index(fulcrum_proto::raft::v1::ReadIndexRequest {});
        Ok(self
            .call_leader(leader, limit, asked)
            .await?
            .into_inner()
            .index)
    }

    /// A call to `leader`, given up after `limit` (`DeadlineExceeded`); whether it was
    /// answered noted in [`Node::reach`].
    async fn call_leader<T>(
        &self,
        leader: u64,
        limit: Duration,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let answered = tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "node {leader} gave no answer within {} ms",
                limit.as_millis()
            )))
        });
        match &answered {
            Err(status) if reach::unanswered(status) => self.reach.missed(leader, started),
            _ => self.reach.reached(leader),
        }
        answered
    }

    /// Asks the leader (or the one whose heartbeats this node refuses, see
    /// [`crate::raft::reach`]) for a read index whenever nothing else reached it for
    /// [`reach::PROBE_EVERY`] election timeouts, until `shutdown`.
    pub async fn probe_leader(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = self.settings.election_max * reach::PROBE_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let leader = self.leader().or_else(|| {
                let id = self.reach.refused_leader()?;
                Some((id, self.address_of(id)?))
            });
            let Some((leader, address)) = leader.filter(|(id, _)| *id != self.id) else {
                continue;
            };
            if !self.reach.reached_within(leader, every) {
                let _ = self.ask_read_index(leader, &address, every).await;
            }
        }
    }

    /// The last leader this node knew, with its address, when it answered lately
    /// ([`LeaderReach::answering`]).
    fn answering_leader(&self) -> Option<(u64, String)> {
        let within = self.settings.election_max * reach::MISSES_FRESH_FOR;
        let id = self.reach.answering(within).filter(|id| *id != self.id)?;
        Some((id, self.address_of(id)?))
    }

    /// The address of node `id`, from the membership.
    pub(crate) fn address_of(&self, id: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let node = metrics.membership_config.membership().get_node(&id)?;
        Some(node.addr.clone())
    }

    /// The read index, when this node leads (confirmed with a heartbeat quorum).
    pub async fn read_index_here(&self) -> Result<u64, Status> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(e)) => Err(forward_to_leader(self.leader(), &e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!(
                "Raft on this node stopped: {e}"
            ))),
        }
    }

    /// Waits until this node has applied `index` (for a linearizable read here).
    pub async fn await_applied(&self, index: u64) -> Result<(), Status> {
        self.raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(format!("this node is behind the leader: {e}")))
    }

    /// A linearizable read point: asks the leader, then waits to apply it here.
    pub async fn consistent(&self) -> Result<(), Status> {
        let index = self.read_index().await?;
        self.await_applied(index).await
    }

    /// Changes of this node's Raft metrics.
    pub fn raft_metrics(&self) -> watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>> {
        self.raft.metrics()
    }
}
