//! Raft: the type configuration, the store on disk, and the gRPC transport between nodes.
//!
//! - [`store`]: the log and the state machine in one redb file per node, fsynced on every
//!   append, with snapshots and log compaction;
//! - [`wire`]: openraft's messages to and from `fulcrum.raft.v1`;
//! - [`network`]: the client side (openraft's `RaftNetwork` over tonic + mTLS);
//! - [`service`]: the server side, coordinators only;
//! - [`reach`]: a follower's watch on whether it reaches its leader;
//! - [`prevote`]: the election timer, which stands only when a majority would vote.

pub mod network;
pub mod prevote;
pub mod reach;
pub mod service;
pub mod store;
pub mod wire;

use std::io::Cursor;
use std::time::Duration;

use openraft::BasicNode;

use crate::mesh::{Command, Outcome};

openraft::declare_raft_types!(
    /// Fulcrum's Raft types: log entries carry [`Command`]s, applying one answers an
    /// [`Outcome`], node ids are numbers and nodes are known by their Raft address.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Heartbeat interval by default: a LAN round trip is well under a millisecond, so 50 ms
/// keeps followers' election timers quiet at little cost.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(50);
/// Shortest election timeout by default: three heartbeats.
pub const DEFAULT_ELECTION_MIN: Duration = Duration::from_millis(150);
/// Longest election timeout by default; the spread keeps two followers from standing at
/// once.
pub const DEFAULT_ELECTION_MAX: Duration = Duration::from_millis(300);
/// Entries between snapshots by default; older entries are then purged from the log.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
/// Entries kept behind the latest snapshot by default, so a briefly lagging follower
/// catches up from the log rather than from a whole snapshot.
pub const DEFAULT_KEEP_AFTER_SNAPSHOT: u64 = 1_000;

/// Timing and compaction of the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftSettings {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// Election timeout range. Across a WAN keep the minimum at least ten round trips
    /// between the farthest nodes (etcd's rule).
    pub election_min: Duration,
    /// See `election_min`.
    pub election_max: Duration,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the latest snapshot.
    pub keep_after_snapshot: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat: DEFAULT_HEARTBEAT,
            election_min: DEFAULT_ELECTION_MIN,
            election_max: DEFAULT_ELECTION_MAX,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            keep_after_snapshot: DEFAULT_KEEP_AFTER_SNAPSHOT,
        }
    }
}

impl RaftSettings {
    /// openraft's configuration for these settings.
    pub fn to_config(self) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        openraft::Config {
            cluster_name: "fulcrum".to_string(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_min),
            election_timeout_max: ms(self.election_max),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            // Elections are called by pre-vote ([`prevote::run`]) instead.
            enable_elect: false,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(Box::new)
    }
}
