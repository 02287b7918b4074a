//! The commands the Raft log carries, and what applying one answers.
//!
//! A command is data only: every object in it was validated before it was proposed, and
//! the state machine validates it again on apply (the same code), so a log entry can never
//! put something into the state that `fulcrumctl validate` would refuse.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use fulcrum_policy::engine::DrainTarget;
use fulcrum_policy::engine::digest::HealthDigest;
use serde::{Deserialize, Serialize};

use super::encoding::{DecodeError, decode_command, encode_command};

/// One log entry's payload: a change, stamped with the leader's clock.
///
/// Its encoding (`fulcrum.raft.v1.Command`, see [`encoding`](super::encoding)) is made
/// once and kept: the same bytes go to the store and to every
/// follower, and a command read back from either keeps the bytes it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    /// The proposing leader's wall clock, in milliseconds since the Unix epoch. The state
    /// machine never lets time go backwards: it uses the larger of this and the time of
    /// the last entry it applied.
    pub at_ms: u64,
    /// What changes (shared: log entries are cloned for replication and apply).
    pub change: Arc<Change>,
    #[serde(skip)]
    encoded: OnceLock<Bytes>,
}

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        self.at_ms == other.at_ms && self.change == other.change
    }
}

impl Command {
    /// A command stamped `at_ms`.
    pub fn new(at_ms: u64, change: impl Into<Arc<Change>>) -> Command {
        Command {
            at_ms,
            change: change.into(),
            encoded: OnceLock::new(),
        }
    }

    /// Its encoding, made on first use.
    pub fn encoded(&self) -> Bytes {
        self.encoded
            .get_or_init(|| Bytes::from(encode_command(self.at_ms, &self.change)))
            .clone()
    }

    /// Roughly the memory this command holds, decoded and encoded (to bound caches of
    /// entries: a digest's encoding is many times smaller than its decoded samples).
    pub fn memory_estimate(&self) -> usize {
        let encoded = self.encoded.get().map_or(0, |e| e.len());
        std::mem::size_of::<Command>() + encoded + self.change.memory_estimate()
    }

    /// Decodes a command, keeping `bytes` as its encoding (shared, not copied).
    pub fn decode(bytes: Bytes) -> Result<Command, DecodeError> {
        let (at_ms, change) = decode_command(&bytes)?;
        let command = Command::new(at_ms, change);
        let _ = command.encoded.set(bytes);
        Ok(command)
    }
}

/// The identity of a configuration object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// `DestinationRule`, `MeshCluster`, ...
    pub kind: String,
    /// Namespace (`default` when the document gave none).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A configuration object as the log and snapshots keep it: its identity and the whole
/// object as JSON (the form `fulcrum.common.v1.Resource` carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Its identity.
    pub key: ObjectKey,
    /// apiVersion, kind, metadata and spec, as JSON.
    pub json: String,
}

/// A state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// Create or replace configuration objects, all in one entry.
    Apply {
        /// The objects.
        objects: Vec<StoredObject>,
    },
    /// Remove one configuration object.
    Delete {
        /// Which.
        key: ObjectKey,
    },
    /// What proxies reported to one coordinator node during one batch interval.
    Digest {
        /// The merged reports.
        digest: HealthDigest,
    },
    /// Time passes (the leader proposes one every second), so windows, leases and ramps
    /// move without traffic.
    Tick,
    /// An operator takes a cluster or locality out of service.
    Drain {
        /// What.
        target: DrainTarget,
        /// One service, or every service.
        service: Option<String>,
        /// Why, shown in every explanation.
        reason: String,
        /// The admin identity that asked.
        requested_by: String,
    },
    /// Several changes in one entry, applied in order (the leader batches concurrent
    /// proposals so one append and one fsync carry them all).
    Batch {
        /// The changes; never a batch.
        changes: Vec<Arc<Change>>,
    },
    /// An operator puts it back.
    Undrain {
        /// What.
        target: DrainTarget,
        /// One service, or every drain of the target.
        service: Option<String>,
    },
}

/// What one heap allocation costs beyond its bytes (allocator header and rounding).
const ALLOCATION_OVERHEAD: usize = 16;

fn string_memory(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        s.len() + ALLOCATION_OVERHEAD
    }
}

fn locality_memory(l: &fulcrum_policy::Locality) -> usize {
    string_memory(&l.region) + string_memory(&l.zone) + string_memory(&l.subzone)
}

impl Change {
    /// Roughly the heap memory this change holds.
    pub fn memory_estimate(&self) -> usize {
        use std::mem::size_of;
        size_of::<Change>()
            + match self {
                Change::Apply { objects } => objects
                    .iter()
                    .map(|o| {
                        size_of::<StoredObject>()
                            + string_memory(&o.json)
                            + string_memory(&o.key.kind)
                            + string_memory(&o.key.namespace)
                            + string_memory(&o.key.name)
                    })
                    .sum(),
                Change::Digest { digest } => {
                    let traffic: usize = digest
                        .traffic
                        .iter()
                        .map(|t| {
                            size_of_val(t)
                                + string_memory(&t.service)
                                + string_memory(&t.source_cluster)
                                + locality_memory(&t.locality)
                        })
                        .sum();
                    let inventory: usize = digest
                        .inventory
                        .iter()
                        .map(|i| {
                            size_of_val(i)
                                + string_memory(&i.service)
                                + string_memory(&i.cluster)
                                + locality_memory(&i.locality)
                        })
                        .sum();
                    let other: usize = digest
                        .reporters
                        .iter()
                        .map(|r| size_of::<String>() + string_memory(r))
                        .chain(digest.reachability.iter().map(|r| {
                            size_of_val(r)
                                + string_memory(&r.source_cluster)
                                + string_memory(&r.target_cluster)
                        }))
                        .sum();
                    traffic + inventory + other
                }
                Change::Batch { changes } => changes
                    .iter()
                    .map(|c| ALLOCATION_OVERHEAD + c.memory_estimate())
                    .sum(),
                Change::Delete { .. }
                | Change::Tick
                | Change::Drain { .. }
                | Change::Undrain { .. } => 256,
            }
    }
}

/// What happened to one object of an `Apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyAction {
    /// It did not exist.
    Created,
    /// It existed with different content.
    Updated,
    /// It existed with the same content.
    Unchanged,
}

/// The state machine's answer to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Nothing to say (ticks, digests, blank and membership entries).
    #[default]
    Done,
    /// Per object of an `Apply`, in order.
    Applied {
        /// What happened to each.
        actions: Vec<(ObjectKey, ApplyAction)>,
    },
    /// A `Delete`.
    Deleted {
        /// Whether the object was there.
        existed: bool,
    },
    /// A `Drain` took effect.
    Drained,
    /// An `Undrain`.
    Undrained {
        /// How many drains it removed.
        removed: usize,
    },
    /// Per change of a `Batch`, in order.
    Batch {
        /// The outcomes.
        outcomes: Vec<Outcome>,
    },
    /// The entry was committed but the state machine refused it (a drain without a
    /// reason, an object that no longer validates). Nothing changed.
    Refused {
        /// Why, for the operator.
        reason: String,
    },
}
