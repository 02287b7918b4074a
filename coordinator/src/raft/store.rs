//! The Raft log and the state machine, in one redb file per node.
//!
//! redb commits are durable (fsync) and crash-safe (checksummed commit slots), so an entry
//! is reported appended only once it is on disk. The state machine itself lives in
//! memory; what makes it durable is the log plus the latest snapshot, both in the file:
//! on start the node loads the snapshot, and openraft re-applies the committed entries
//! after it (the committed log id is saved for that).
//!
//! Layout: `raft_log` (index -> entry as JSON), `raft_meta` (vote, committed, last purged,
//! the node's identity), `snapshot` (the latest snapshot's meta and data).
//!
//! This module must never decide anything about the mesh: applying an entry is
//! [`MeshState::apply`]'s job.

// openraft's traits fix the error type (`StorageError`, 224 bytes); the helpers here
// return it too rather than convert back and forth.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use prost::Message;

use super::{TypeConfig, wire};
use crate::mesh::{MeshSnapshot, MeshState, Outcome};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";
const NODE_ID: &str = "node_id";
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";

/// redb's page cache; the working set is the log tail and the latest snapshot.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

type NodeId = u64;
type Error = StorageError<NodeId>;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// redb refused the file.
    #[error("cannot open the Raft store {path}: {source}")]
    Database {
        /// The file.
        path: String,
        /// redb's reason.
        source: redb::DatabaseError,
    },
    /// The file is not usable.
    #[error("the Raft store {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn write_err(e: impl std::error::Error + 'static) -> Error {
    StorageIOError::write(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> Error {
    StorageIOError::read(&e).into()
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(read_err)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(write_err)
}

/// A log entry as stored: the same protobuf the Raft transport sends, so a command is
/// encoded once and its bytes reused.
fn encode_entry(entry: &Entry<TypeConfig>) -> Vec<u8> {
    wire::entry(entry).encode_to_vec()
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, Error> {
    let message = fulcrum_proto::raft::v1::Entry::decode(bytes).map_err(read_err)?;
    wire::from_entry(&message).map_err(|e| StorageIOError::read_logs(AnyError::error(e)).into())
}

/// Opens (or creates) the store file and returns the two halves openraft drives.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| OpenError::Database {
            path: path.display().to_string(),
            source,
        })?;
    let db = Arc::new(StoreFile {
        db: Some(db),
        closed: Arc::new(AtomicBool::new(false)),
    });
    let damaged = |reason: String| OpenError::Damaged {
        path: path.display().to_string(),
        reason,
    };
    // Create the tables so readers never meet a missing one.
    (|| -> Result<(), Error> {
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(LOG).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.open_table(SNAPSHOT).map_err(write_err)?;
        txn.commit().map_err(write_err)
    })()
    .map_err(|e| damaged(e.to_string()))?;
    let sm = StateMachineStore::load(db.clone()).map_err(|e| damaged(e.to_string()))?;
    Ok((
        LogStore {
            db,
            recent: Arc::default(),
            last: LastLogId::default(),
        },
        sm,
    ))
}

fn meta_get<T: for<'de> Deserialize<'de>>(db: &Database, key: &str) -> Result<Option<T>, Error> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(v) => decode(v.value()).map(Some),
        None => Ok(None),
    }
}

/// A store write taking longer than this is said at warn: openraft 0.9 waits for the
/// leader's own log writes before anything else, heartbeats included, so a disk this
/// slow holds up the group (past the election timeout, it costs the leader its place).
const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs `write` (the store's `what`) on the blocking pool: a redb commit waits for its
/// fsync, and `begin_write` for any other write under way, which must not hold up an
/// async worker. One slower than [`SLOW_WRITE`] is said, with how long it took.
async fn off_workers<T: Send + 'static>(
    what: &'static str,
    write: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let timed = move || {
        let started = std::time::Instant::now();
        let written = write();
        let took = started.elapsed();
        if took > SLOW_WRITE {
            let ms = took.as_millis();
            tracing::warn!(what, ms, "a slow store write: Raft waited {ms} ms for it");
        }
        written
    };
    tokio::task::spawn_blocking(timed)
        .await
        .map_err(write_err)
        .and_then(|written| written)
}

fn meta_put<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), Error> {
    meta_put_with(db, key, value, Durability::Immediate)
}

/// Writes a meta key; with `Durability::None` the write becomes durable with the next
/// durable commit (used for the committed id, which only saves replay work).
fn meta_put_with<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), Error> {
    let bytes = encode(value)?;
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(durability).map_err(write_err)?;
    if matches!(durability, Durability::Immediate) {
        txn.set_quick_repair(true);
    }
    {
        let mut table = txn.open_table(META).map_err(write_err)?;
        table.insert(key, bytes.as_slice()).map_err(write_err)?;
    }
    txn.commit().map_err(write_err)
}

impl LogStore {
    /// A handle that tells when the file has been closed.
    pub fn closed_watch(&self) -> StoreClosed {
        StoreClosed(self.db.closed.clone())
    }

    /// The id of the log's last entry, kept up to date by this store.
    pub fn last_log_id(&self) -> LastLogId {
        self.last.clone()
    }
}

/// The id of the last entry in the log (or of the last purged one, when the log is
/// empty behind a snapshot), as the store last wrote or read it: for pre-vote, which
/// compares logs without a handle on the store.
#[derive(Clone, Debug, Default)]
pub struct LastLogId(Arc<std::sync::Mutex<Option<LogId<NodeId>>>>);

impl LastLogId {
    /// The last entry's id (`None` before openraft has read the log, or when it is empty).
    pub fn get(&self) -> Option<LogId<NodeId>> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, last: Option<LogId<NodeId>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = last;
    }
}

/// Whether the store file has been closed: every handle dropped and redb done closing
/// (which flushes, so it ends a little after the last handle goes).
#[derive(Clone)]
pub struct StoreClosed(Arc<AtomicBool>);

impl StoreClosed {
    /// True once the file is closed and can be opened again.
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The redb database, with a flag raised once it is completely closed.
struct StoreFile {
    db: Option<Database>,
    closed: Arc<AtomicBool>,
}

impl std::ops::Deref for StoreFile {
    type Target = Database;

    fn deref(&self) -> &Database {
        // Only `drop` takes the database out.
        self.db
            .as_ref()
            .unwrap_or_else(|| unreachable!("the store is used after drop"))
    }
}

impl Drop for StoreFile {
    fn drop(&mut self) {
        drop(self.db.take());
        self.closed.store(true, Ordering::Release);
    }
}

/// The node id recorded in the store, if any.
pub fn recorded_node_id(log: &LogStore) -> Result<Option<u64>, Error> {
    meta_get(&log.db, NODE_ID)
}

/// Records which node owns the store, so a data dir cannot be reused by another node.
pub fn record_node_id(log: &LogStore, node_id: u64) -> Result<(), Error> {
    meta_put(&log.db, NODE_ID, &node_id)
}

/// Most recent entries kept decoded in memory.
const RECENT_ENTRIES: usize = 4_096;
/// Most memory recent entries may hold (decoded, with their encoding), as
/// [`Command::memory_estimate`](crate::mesh::Command::memory_estimate) counts it.
const RECENT_BYTES: usize = 64 * 1024 * 1024;

/// The newest entries of the log, decoded: replication and the state machine read what
/// was just appended, and decoding it again from the file would dominate the cost of a
/// busy log. Always a contiguous tail of what is on disk.
#[derive(Default)]
struct RecentEntries {
    entries: std::collections::VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl RecentEntries {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, entry: Entry<TypeConfig>, size: usize) {
        let next = self.entries.back().map(|(e, _)| e.log_id.index + 1);
        if next.is_some_and(|n| n != entry.log_id.index) {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            match self.entries.pop_front() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Drops entries at or above `index` (truncate) or at or below it (purge).
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let bytes = &mut self.bytes;
        self.entries.retain(|(e, size)| {
            let kept = keep(e.log_id.index);
            if !kept {
                *bytes -= size;
            }
            kept
        });
    }

    /// The entries in `[start, end)`, when all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first()?;
        let last = self.entries.back()?.0.log_id.index;
        if start < first || end > last + 1 {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end.saturating_sub(first)).ok()?;
        Some(
            self.entries
                .range(from..to.max(from))
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// The Raft log (and vote) on disk.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<StoreFile>,
    recent: Arc<std::sync::Mutex<RecentEntries>>,
    last: LastLogId,
}

impl LogStore {
    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last purged entry's id and the last entry's, read from the file.
    fn log_state(&self) -> Result<LogState<TypeConfig>, Error> {
        let last_purged: Option<LogId<NodeId>> = meta_get(&self.db, LAST_PURGED)?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            // Only the id is needed: skip decoding the command.
            Some((_, v)) => {
                let message =
                    fulcrum_proto::raft::v1::Entry::decode(v.value()).map_err(read_err)?;
                let id = message.log_id.as_ref().ok_or_else(|| {
                    StorageIOError::read_logs(AnyError::error("an entry without a log id"))
                })?;
                Some(
                    wire::from_log_id(id)
                        .map_err(|e| StorageIOError::read_logs(AnyError::error(e)))?,
                )
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    fn read_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry<TypeConfig>>, Error> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        if let Some(end) = end
            && let Some(hit) = self.recent().get(start, end)
        {
            return Ok(hit);
        }
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(decode_entry(v.value())?);
        }
        Ok(out)
    }

    /// Drops the entries from `log_id` on; blocks for the commit.
    fn truncate_now(&self, log_id: LogId<NodeId>) -> Result<(), Error> {
        self.recent().retain(|i| i < log_id.index);
        let mut txn = self.db.begin_write().map_err(write_err)?;
        txn.set_quick_repair(true);
        {
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)?;
        self.last.set(self.log_state()?.last_log_id);
        Ok(())
    }

    /// Drops the entries up to `log_id`, recording it as the last purged; blocks for the
    /// commit.
    fn purge_now(&self, log_id: LogId<NodeId>) -> Result<(), Error> {
        self.recent().retain(|i| i > log_id.index);
        let bytes = encode(&Some(log_id))?;
        let mut txn = self.db.begin_write().map_err(write_err)?;
        txn.set_quick_repair(true);
        {
            // Record the purge point first, in the same transaction.
            let mut meta = txn.open_table(META).map_err(write_err)?;
            meta.insert(LAST_PURGED, bytes.as_slice())
                .map_err(write_err)?;
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)?;
        self.last.set(self.log_state()?.last_log_id);
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        self.read_range((start, end))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Error> {
        let state = self.log_state()?;
        self.last.set(state.last_log_id);
        Ok(state)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), Error> {
        let (db, vote) = (self.db.clone(), *vote);
        off_workers("vote", move || meta_put(&db, VOTE, &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, Error> {
        meta_get(&self.db, VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), Error> {
        // The committed id only spares replay after a restart; it need not cost an fsync.
        // It still waits for any other write under way.
        let db = self.db.clone();
        off_workers("committed index", move || {
            meta_put_with(&db, COMMITTED, &committed, Durability::None)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, Error> {
        Ok(meta_get::<Option<LogId<NodeId>>>(&self.db, COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id.index, encode_entry(e)))
            .collect();
        let sizes: Vec<usize> = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(command) => command.memory_estimate(),
                _ => std::mem::size_of::<Entry<TypeConfig>>(),
            })
            .collect();
        let db = self.db.clone();
        let written = off_workers("log append", move || -> Result<(), Error> {
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_quick_repair(true);
            {
                let mut table = txn.open_table(LOG).map_err(write_err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })
        .await;
        match written {
            Ok(()) => {
                if let Some(last) = entries.last() {
                    self.last.set(Some(last.log_id));
                }
                {
                    let mut recent = self.recent();
                    for (entry, size) in entries.into_iter().zip(sizes) {
                        recent.push(entry, size);
                    }
                }
                // Durable now: only at this point may openraft count the entries.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        let store = self.clone();
        off_workers("log truncation", move || store.truncate_now(log_id)).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        let store = self.clone();
        off_workers("log purge", move || store.purge_now(log_id)).await
    }
}

/// What the state machine holds: the mesh, and Raft's bookkeeping about it.
#[derive(Debug, Default)]
pub struct Applied {
    /// The replicated state.
    pub mesh: MeshState,
    /// The last entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership as of the last membership entry applied.
    pub membership: StoredMembership<NodeId, BasicNode>,
}

/// A membership in words: `voters 1, 2, 3` (and the learners, and both sets during a
/// joint change).
fn describe_membership(m: &openraft::Membership<NodeId, BasicNode>) -> String {
    let ids = |set: &std::collections::BTreeSet<u64>| {
        set.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let configs = m.get_joint_config();
    let voters: std::collections::BTreeSet<u64> = m.voter_ids().collect();
    let learners: Vec<String> = m
        .nodes()
        .filter(|(id, _)| !voters.contains(id))
        .map(|(id, _)| id.to_string())
        .collect();
    let mut text = match configs.as_slice() {
        [one] => format!("membership: voters {}", ids(one)),
        [old, new] => format!("membership changing: voters {} -> {}", ids(old), ids(new)),
        _ => "membership: no voters".to_string(),
    };
    if !learners.is_empty() {
        text.push_str(&format!("; learners {}", learners.join(", ")));
    }
    text
}

/// A snapshot's payload.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    mesh: MeshSnapshot,
}

/// The state machine, shared between openraft (which applies) and the node's readers.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<StoreFile>,
    applied: Arc<RwLock<Applied>>,
    /// The mesh version after each apply, for subscribers.
    version: Arc<watch::Sender<u64>>,
}

impl StateMachineStore {
    fn load(db: Arc<StoreFile>) -> Result<StateMachineStore, Error> {
        let mut applied = Applied::default();
        if let Some(snapshot) = read_snapshot(&db)? {
            let body: SnapshotBody = decode(snapshot.snapshot.get_ref())?;
            applied.mesh = MeshState::restore(body.mesh)
                .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
            applied.last_applied = snapshot.meta.last_log_id;
            applied.membership = snapshot.meta.last_membership.clone();
        }
        let (version, _) = watch::channel(applied.mesh.mesh_version());
        Ok(StateMachineStore {
            db,
            applied: Arc::new(RwLock::new(applied)),
            version: Arc::new(version),
        })
    }

    /// A read-only view of the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            applied: self.applied.clone(),
            version: self.version.subscribe(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        // A panic while holding the lock cannot leave the state half-applied in a way a
        // reader could observe differently from a restart, so poisoning is ignored.
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Read access to the applied state: the status API and the push streams use it.
#[derive(Clone)]
pub struct StateReader {
    applied: Arc<RwLock<Applied>>,
    version: watch::Receiver<u64>,
}

impl StateReader {
    /// Runs `f` on the applied state.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Changes of the mesh version (anything a proxy is sent).
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.version.clone()
    }
}

fn read_snapshot(db: &Database) -> Result<Option<Snapshot<TypeConfig>>, Error> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(SNAPSHOT).map_err(read_err)?;
    let meta = table.get(SNAPSHOT_META).map_err(read_err)?;
    let data = table.get(SNAPSHOT_DATA).map_err(read_err)?;
    match (meta, data) {
        (Some(meta), Some(data)) => Ok(Some(Snapshot {
            meta: decode(meta.value())?,
            snapshot: Box::new(Cursor::new(data.value().to_vec())),
        })),
        _ => Ok(None),
    }
}

fn write_snapshot(
    db: &Database,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> Result<(), Error> {
    let meta_bytes = encode(meta)?;
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_quick_repair(true);
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(write_err)?;
        table
            .insert(SNAPSHOT_META, meta_bytes.as_slice())
            .map_err(write_err)?;
        table.insert(SNAPSHOT_DATA, data).map_err(write_err)?;
    }
    txn.commit().map_err(write_err)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        let (body, last_applied, membership) = {
            let applied = self.applied.read().unwrap_or_else(|p| p.into_inner());
            (
                SnapshotBody {
                    mesh: applied.mesh.snapshot(),
                },
                applied.last_applied,
                applied.membership.clone(),
            )
        };
        let data = encode(&body)?;
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let db = self.db.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            write_snapshot(&db, &meta, &data).map(|()| (meta, data))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e)))??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), Error> {
        let applied = self.applied.read().unwrap_or_else(|p| p.into_inner());
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let version = {
            let mut applied = self.write();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => Outcome::Done,
                    EntryPayload::Normal(command) => {
                        applied.mesh.apply(entry.log_id.index, &command)
                    }
                    EntryPayload::Membership(membership) => {
                        let description = describe_membership(&membership);
                        applied
                            .mesh
                            .record_membership(entry.log_id.index, description);
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Outcome::Done
                    }
                };
                outcomes.push(outcome);
            }
            applied.mesh.mesh_version()
        };
        self.version.send_if_modified(|v| {
            let changed = *v != version;
            *v = version;
            changed
        });
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let mesh = MeshState::restore(body.mesh).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e))
        })?;
        let db = self.db.clone();
        let stored_meta = meta.clone();
        tokio::task::spawn_blocking(move || write_snapshot(&db, &stored_meta, &data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e)))??;
        let version = {
            let mut applied = self.write();
            applied.mesh = mesh;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            applied.mesh.mesh_version()
        };
        self.version.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        read_snapshot(&self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct TempStore;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStore {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().map_err(read_err)?;
            let (log, sm) = open(&dir.path().join("raft.redb"))
                .map_err(|e| StorageIOError::read(AnyError::error(e)))?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn passes_openraft_storage_conformance_suite() -> Result<(), StorageError<NodeId>> {
        Suite::test_all(TempStore)
    }

    /// The last entry's id follows what is appended, truncated and purged, and is read
    /// from the file when openraft asks for the log's state.
    #[tokio::test]
    async fn the_last_log_id_follows_the_log() -> Result<(), StorageError<NodeId>> {
        use openraft::storage::RaftLogStorageExt;
        use openraft::{CommittedLeaderId, EntryPayload};
        let id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
        let blank = |term, index| Entry::<TypeConfig> {
            log_id: id(term, index),
            payload: EntryPayload::Blank,
        };
        let (_dir, mut log, _sm) = TempStore.build().await?;
        let last = log.last_log_id();
        assert_eq!(last.get(), None);
        log.blocking_append([blank(1, 1), blank(1, 2), blank(2, 3)])
            .await?;
        assert_eq!(last.get(), Some(id(2, 3)));
        log.truncate(id(2, 3)).await?;
        assert_eq!(last.get(), Some(id(1, 2)));
        log.purge(id(1, 2)).await?;
        assert_eq!(
            last.get(),
            Some(id(1, 2)),
            "the purged entry's, once none is left"
        );
        log.blocking_append([blank(3, 3)]).await?;
        let fresh = LastLogId::default();
        log.last = fresh.clone();
        log.get_log_state().await?;
        assert_eq!(fresh.get(), Some(id(3, 3)));
        Ok(())
    }
}
