//! The replicated state: what every coordinator node holds after applying the same log.
//!
//! [`MeshState::apply`] is the state machine's transition function. It is pure and
//! deterministic — no clock, no I/O, ordered maps only — and delegates every failover
//! decision to fulcrum-policy's engine, so the same log gives every replica the same
//! weights, byte for byte. Time is the leader's stamp on each entry, never allowed to go
//! backwards.
//!
//! Weight tables are derived: recomputed after each entry from the engine state and the
//! topology. What cannot be derived — which log index last changed a service's table (its
//! version) and the event log — is kept and travels in snapshots.

pub mod command;
pub mod encoding;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use fulcrum_policy::engine::{
    self, DrainTarget, EngineState, ServiceWeights, Topology, apply_digest,
};
use fulcrum_policy::weights::Verdict;
use fulcrum_policy::{Locality, Resource};
use fulcrum_proto::common::v1 as pb;
use serde::{Deserialize, Serialize};

pub use command::{ApplyAction, Change, Command, ObjectKey, Outcome, StoredObject};

/// How many events the state keeps; older ones are dropped first.
pub const DEFAULT_EVENT_LOG_LEN: usize = 1_000;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A locality's verdict changed.
    VerdictChanged,
    /// An operator drained something.
    Drained,
    /// An operator undrained something.
    Undrained,
    /// Configuration objects were created or changed.
    ConfigApplied,
    /// A configuration object was deleted.
    ConfigDeleted,
    /// The Raft group's membership changed.
    MembershipChanged,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshEvent {
    /// The log index of the entry that caused it.
    pub index: u64,
    /// Leader time, ms since the Unix epoch.
    pub time_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The service, when it is about one.
    pub service: String,
    /// The locality, for verdict changes.
    pub locality: Option<Locality>,
    /// The verdict before and after, for verdict changes.
    pub verdicts: Option<(Verdict, Verdict)>,
    /// In words.
    pub explanation: String,
}

/// A configuration object, decoded.
#[derive(Debug, Clone)]
struct Held {
    stored: StoredObject,
    resource: Resource,
}

/// The part of the state that is not derived: what a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSnapshot {
    /// The last log index applied.
    pub last_index: u64,
    /// Configuration objects.
    pub objects: Vec<StoredObject>,
    /// The engine's memory: windows, verdicts, leases, drains.
    pub engine: EngineState,
    /// The log index that last changed each service's table.
    pub versions: BTreeMap<String, u64>,
    /// The log index that last changed anything a proxy is sent.
    pub mesh_version: u64,
    /// Leader time of the first entry: explanations count seconds from it.
    pub epoch_ms: u64,
    /// Who asked for each drain.
    pub drain_requesters: Vec<(DrainTarget, Option<String>, String)>,
    /// The event log, oldest first.
    pub events: Vec<MeshEvent>,
}

/// The replicated state.
#[derive(Debug, Clone)]
pub struct MeshState {
    last_index: u64,
    objects: BTreeMap<ObjectKey, Held>,
    topology: Arc<Topology>,
    engine: EngineState,
    weights: BTreeMap<String, Arc<ServiceWeights>>,
    versions: BTreeMap<String, u64>,
    mesh_version: u64,
    epoch_ms: u64,
    drain_requesters: BTreeMap<(DrainTarget, Option<String>), String>,
    events: VecDeque<MeshEvent>,
    event_log_len: usize,
}

impl Default for MeshState {
    fn default() -> Self {
        MeshState {
            last_index: 0,
            objects: BTreeMap::new(),
            topology: Arc::new(Topology::default()),
            engine: EngineState::default(),
            weights: BTreeMap::new(),
            versions: BTreeMap::new(),
            mesh_version: 0,
            epoch_ms: 0,
            drain_requesters: BTreeMap::new(),
            events: VecDeque::new(),
            event_log_len: DEFAULT_EVENT_LOG_LEN,
        }
    }
}

/// Decodes and validates a stored object exactly as a proxy or `fulcrumctl validate`
/// would.
pub fn decode_object(stored: &StoredObject) -> Result<Resource, String> {
    let wire = pb::Resource {
        kind: stored.key.kind.clone(),
        namespace: stored.key.namespace.clone(),
        name: stored.key.name.clone(),
        json: stored.json.clone().into_bytes(),
    };
    Resource::try_from(&wire).map_err(|e| e.to_string())
}

/// The stored form of a validated resource.
pub fn store_object(resource: &Resource) -> StoredObject {
    let object = resource.object_ref();
    let wire = pb::Resource::from(resource);
    StoredObject {
        key: ObjectKey {
            kind: object.kind,
            namespace: object.namespace,
            name: object.name,
        },
        json: String::from_utf8(wire.json).unwrap_or_default(),
    }
}

impl MeshState {
    /// The last log index applied.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Leader time of the last entry applied, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.engine.now_ms
    }

    /// Leader time of the first entry; explanations count seconds from it.
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// The log index that last changed anything a proxy is sent.
    pub fn mesh_version(&self) -> u64 {
        self.mesh_version
    }

    /// The compiled mesh.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// The engine's memory.
    pub fn engine(&self) -> &EngineState {
        &self.engine
    }

    /// Current weights, by service host.
    pub fn weights(&self) -> &BTreeMap<String, Arc<ServiceWeights>> {
        &self.weights
    }

    /// The version of a service's table.
    pub fn version_of(&self, service: &str) -> u64 {
        self.versions.get(service).copied().unwrap_or(0)
    }

    /// Configuration objects, in key order.
    pub fn objects(&self) -> impl Iterator<Item = (&StoredObject, &Resource)> {
        self.objects.values().map(|h| (&h.stored, &h.resource))
    }

    /// Whether an object exists.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.objects.contains_key(key)
    }

    /// An object as stored.
    pub fn object(&self, key: &ObjectKey) -> Option<&StoredObject> {
        self.objects.get(key).map(|h| &h.stored)
    }

    /// The event log, oldest first.
    pub fn events(&self) -> impl DoubleEndedIterator<Item = &MeshEvent> {
        self.events.iter()
    }

    /// Who asked for a drain.
    pub fn drain_requester(&self, target: &DrainTarget, service: Option<&str>) -> &str {
        self.drain_requesters
            .get(&(target.clone(), service.map(str::to_string)))
            .map_or("", String::as_str)
    }

    /// Applies one entry at log `index`. Entries must come in log order; an entry at or
    /// below the last applied index is ignored (it was applied before a restart).
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        if index <= self.last_index && self.last_index != 0 {
            return Outcome::Done;
        }
        self.last_index = index;
        let now = command.at_ms.max(self.engine.now_ms);
        if self.epoch_ms == 0 {
            self.epoch_ms = now;
        }
        let mut config_changed = false;
        let outcome = match command.change.as_ref() {
            // A batch applies its changes in order, then time passes once.
            Change::Batch { changes } => Outcome::Batch {
                outcomes: changes
                    .iter()
                    .map(|c| self.apply_change(index, now, c, &mut config_changed))
                    .collect(),
            },
            change => self.apply_change(index, now, change, &mut config_changed),
        };
        if config_changed {
            self.rebuild_topology();
        }
        // Time passes on every entry, so verdicts move as soon as a digest shows failure.
        let events = engine::tick(&mut self.engine, &self.topology, now);
        for e in events {
            self.events.push_back(MeshEvent {
                index,
                time_ms: e.at_ms,
                kind: EventKind::VerdictChanged,
                service: e.service,
                locality: Some(e.locality),
                verdicts: Some((e.from, e.to)),
                explanation: e.detail,
            });
        }
        self.trim_events();
        self.recompute(index, config_changed);
        outcome
    }

    /// Applies one change (not a batch: batches do not nest).
    fn apply_change(
        &mut self,
        index: u64,
        now: u64,
        change: &Change,
        config_changed: &mut bool,
    ) -> Outcome {
        match change {
            Change::Batch { .. } => Outcome::Refused {
                reason: "a batch inside a batch".to_string(),
            },
            Change::Apply { objects } => {
                let outcome = self.apply_objects(index, now, objects);
                if matches!(&outcome, Outcome::Applied { actions }
                    if actions.iter().any(|(_, a)| *a != ApplyAction::Unchanged))
                {
                    *config_changed = true;
                }
                outcome
            }
            Change::Delete { key } => {
                let existed = self.objects.remove(key).is_some();
                if existed {
                    *config_changed = true;
                    self.push_event(index, now, EventKind::ConfigDeleted, "", key.to_string());
                }
                Outcome::Deleted { existed }
            }
            Change::Digest { digest } => {
                apply_digest(&mut self.engine, digest, now);
                Outcome::Done
            }
            Change::Tick => Outcome::Done,
            Change::Drain {
                target,
                service,
                reason,
                requested_by,
            } => match self
                .engine
                .drain(target.clone(), service.clone(), reason, now)
            {
                Ok(()) => {
                    self.drain_requesters
                        .insert((target.clone(), service.clone()), requested_by.clone());
                    let what = match service {
                        Some(s) => format!("{target} drained for {s}: {reason}"),
                        None => format!("{target} drained for every service: {reason}"),
                    };
                    let service = service.clone().unwrap_or_default();
                    self.push_event(index, now, EventKind::Drained, &service, what);
                    Outcome::Drained
                }
                Err(e) => Outcome::Refused {
                    reason: e.to_string(),
                },
            },
            Change::Undrain { target, service } => {
                let removed = self.engine.undrain(target, service.as_deref(), now);
                let live = &self.engine.drains;
                self.drain_requesters
                    .retain(|(t, s), _| live.iter().any(|d| &d.target == t && &d.service == s));
                if removed > 0 {
                    let what = format!("{target} undrained ({removed} drain(s) removed)");
                    let service = service.clone().unwrap_or_default();
                    self.push_event(index, now, EventKind::Undrained, &service, what);
                }
                Outcome::Undrained { removed }
            }
        }
    }

    fn apply_objects(&mut self, index: u64, now: u64, objects: &[StoredObject]) -> Outcome {
        // Decode everything first: a batch applies whole or not at all.
        let mut decoded = Vec::with_capacity(objects.len());
        for stored in objects {
            match decode_object(stored) {
                Ok(resource) => decoded.push((stored.clone(), resource)),
                Err(reason) => {
                    return Outcome::Refused {
                        reason: format!("{}: {reason}", stored.key),
                    };
                }
            }
        }
        let mut actions = Vec::with_capacity(decoded.len());
        for (stored, resource) in decoded {
            let action = match self.objects.get(&stored.key) {
                None => ApplyAction::Created,
                Some(old) if old.stored.json == stored.json => ApplyAction::Unchanged,
                Some(_) => ApplyAction::Updated,
            };
            if action != ApplyAction::Unchanged {
                let what = format!(
                    "{} {}",
                    stored.key,
                    if action == ApplyAction::Created {
                        "created"
                    } else {
                        "updated"
                    }
                );
                self.push_event(index, now, EventKind::ConfigApplied, "", what);
            }
            actions.push((stored.key.clone(), action));
            self.objects
                .insert(stored.key.clone(), Held { stored, resource });
        }
        Outcome::Applied { actions }
    }

    /// Records a membership change (a Raft membership entry at `index`) in the event log.
    /// Time does not move: membership entries carry no leader timestamp.
    pub fn record_membership(&mut self, index: u64, description: String) {
        let now = self.engine.now_ms;
        self.push_event(index, now, EventKind::MembershipChanged, "", description);
        self.trim_events();
    }

    fn push_event(
        &mut self,
        index: u64,
        now: u64,
        kind: EventKind,
        service: &str,
        explanation: String,
    ) {
        self.events.push_back(MeshEvent {
            index,
            time_ms: now,
            kind,
            service: service.to_string(),
            locality: None,
            verdicts: None,
            explanation,
        });
    }

    fn trim_events(&mut self) {
        while self.events.len() > self.event_log_len {
            self.events.pop_front();
        }
    }

    fn rebuild_topology(&mut self) {
        self.topology = Arc::new(Topology::build(self.objects.values().map(|h| &h.resource)));
    }

    /// Recomputes every table; a table that routes differently from the one before
    /// ([`ServiceWeights::routes_as`]) gets `index` as its version. One that only counted
    /// more traffic is kept (for `explain`) under its old version: a new version is a new
    /// snapshot for every proxy, which each writes to disk, and steady traffic would make
    /// one on every digest.
    fn recompute(&mut self, index: u64, config_changed: bool) {
        let fresh = engine::compute(&self.engine, &self.topology);
        let mut changed = config_changed;
        let mut next = BTreeMap::new();
        for weights in fresh {
            let same = self
                .weights
                .get(&weights.service)
                .is_some_and(|old| old.routes_as(&weights));
            if !same {
                changed = true;
                self.versions.insert(weights.service.clone(), index);
            }
            next.insert(weights.service.clone(), Arc::new(weights));
        }
        if next.len() != self.weights.len() {
            changed = true;
        }
        self.versions.retain(|s, _| next.contains_key(s));
        self.weights = next;
        if changed {
            self.mesh_version = index;
        }
    }

    /// The non-derived state, for a snapshot.
    pub fn snapshot(&self) -> MeshSnapshot {
        MeshSnapshot {
            last_index: self.last_index,
            objects: self.objects.values().map(|h| h.stored.clone()).collect(),
            engine: self.engine.clone(),
            versions: self.versions.clone(),
            mesh_version: self.mesh_version,
            epoch_ms: self.epoch_ms,
            drain_requesters: self
                .drain_requesters
                .iter()
                .map(|((t, s), who)| (t.clone(), s.clone(), who.clone()))
                .collect(),
            events: self.events.iter().cloned().collect(),
        }
    }

    /// The state a snapshot describes, with the derived parts recomputed.
    pub fn restore(snapshot: MeshSnapshot) -> Result<MeshState, String> {
        let mut objects = BTreeMap::new();
        for stored in snapshot.objects {
            let resource = decode_object(&stored)?;
            objects.insert(stored.key.clone(), Held { stored, resource });
        }
        let mut state = MeshState {
            last_index: snapshot.last_index,
            objects,
            engine: snapshot.engine,
            versions: snapshot.versions,
            mesh_version: snapshot.mesh_version,
            epoch_ms: snapshot.epoch_ms,
            drain_requesters: snapshot
                .drain_requesters
                .into_iter()
                .map(|(t, s, who)| ((t, s), who))
                .collect(),
            events: snapshot.events.into(),
            ..MeshState::default()
        };
        state.rebuild_topology();
        state.weights = engine::compute(&state.engine, &state.topology)
            .into_iter()
            .map(|w| (w.service.clone(), Arc::new(w)))
            .collect();
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_policy::ConfigSet;

    const MESH: &str = r#"
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {name: east}
spec: {locality: us-east/us-east-1a}
---
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {name: west}
spec: {locality: us-west/us-west-1a}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.1, locality: us-east/us-east-1a}
  - {address: 10.0.1.1, locality: us-west/us-west-1a}
"#;

    fn objects() -> Vec<StoredObject> {
        let mut config = ConfigSet::new();
        config.add_text("mesh.yaml", MESH);
        assert!(!config.has_errors());
        config.resources().map(store_object).collect()
    }

    fn at(ms: u64, change: Change) -> Command {
        Command::new(ms, change)
    }

    #[test]
    fn apply_creates_then_reports_unchanged() {
        let mut state = MeshState::default();
        let outcome = state.apply(1, &at(1_000, Change::Apply { objects: objects() }));
        let Outcome::Applied { actions } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(actions.iter().all(|(_, a)| *a == ApplyAction::Created));
        assert_eq!(state.weights().len(), 1);
        assert_eq!(state.mesh_version(), 1);
        let again = state.apply(2, &at(1_100, Change::Apply { objects: objects() }));
        let Outcome::Applied { actions } = again else {
            panic!("{again:?}")
        };
        assert!(actions.iter().all(|(_, a)| *a == ApplyAction::Unchanged));
        assert_eq!(state.mesh_version(), 1, "nothing a proxy sees changed");
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut state = MeshState::default();
        state.apply(1, &at(5_000, Change::Tick));
        state.apply(2, &at(4_000, Change::Tick));
        assert_eq!(state.now_ms(), 5_000);
    }

    #[test]
    fn a_snapshot_restores_the_same_weights_and_versions() {
        let mut state = MeshState::default();
        state.apply(1, &at(1_000, Change::Apply { objects: objects() }));
        let drain = Change::Drain {
            target: DrainTarget::Cluster("west".into()),
            service: None,
            reason: "maintenance".into(),
            requested_by: "spiffe://t/fulcrum/admin/ops".into(),
        };
        assert_eq!(state.apply(2, &at(2_000, drain)), Outcome::Drained);
        state.apply(3, &at(3_000, Change::Tick));
        let restored = MeshState::restore(state.snapshot()).expect("restores");
        assert_eq!(restored.weights(), state.weights());
        assert_eq!(restored.mesh_version(), state.mesh_version());
        assert_eq!(restored.version_of("api.shop.svc.cluster.local"), 2);
        assert_eq!(
            restored.drain_requester(&DrainTarget::Cluster("west".into()), None),
            "spiffe://t/fulcrum/admin/ops"
        );
        assert_eq!(restored.snapshot(), state.snapshot());
    }

    #[test]
    fn traffic_that_moves_no_weight_makes_no_version_and_a_failing_locality_does() {
        use fulcrum_policy::engine::digest::{HealthDigest, TrafficSample};
        use fulcrum_policy::engine::window::Counters;
        const API: &str = "api.shop.svc.cluster.local";
        let mut state = MeshState::default();
        state.apply(1, &at(1_000, Change::Apply { objects: objects() }));
        let west: Locality = "us-west/us-west-1a".parse().expect("locality");
        let traffic = |http_5xx: u64| Change::Digest {
            digest: HealthDigest {
                reporters: vec!["east".into(), "west".into()],
                traffic: vec![TrafficSample {
                    service: API.into(),
                    source_cluster: "east".into(),
                    locality: west.clone(),
                    counters: Counters {
                        requests: 500,
                        http_5xx,
                        ..Counters::default()
                    },
                }],
                ..HealthDigest::default()
            },
        };
        let west_status = |state: &MeshState| {
            let weights = &state.weights()[API];
            let i = weights
                .destinations
                .iter()
                .position(|d| *d == west)
                .expect("west is a destination");
            weights.localities[i].clone()
        };
        // The clusters' first reports: their localities are known from now.
        state.apply(2, &at(1_250, traffic(0)));
        let heard = state.mesh_version();
        assert_eq!(west_status(&state).verdict, Verdict::Healthy);
        // Healthy traffic, more every digest: the counts move, the split does not.
        let mut index = 3;
        for step in 0..12 {
            state.apply(index, &at(1_500 + step * 250, traffic(0)));
            index += 1;
        }
        assert_eq!(
            state.mesh_version(),
            heard,
            "no new snapshot for the proxies"
        );
        assert!(
            west_status(&state).signals.requests >= 500 * 12,
            "the counts are kept for explain: {:?}",
            west_status(&state).signals
        );
        // Every request failing: the locality's verdict changes, and with it the version.
        for step in 0..20 {
            state.apply(index, &at(4_500 + step * 250, traffic(500)));
            index += 1;
        }
        assert_ne!(west_status(&state).verdict, Verdict::Healthy);
        assert!(
            state.mesh_version() > heard,
            "the proxies are sent the change"
        );
    }

    #[test]
    fn a_drain_without_reason_is_refused_and_changes_nothing() {
        let mut state = MeshState::default();
        state.apply(1, &at(1_000, Change::Apply { objects: objects() }));
        let drain = Change::Drain {
            target: DrainTarget::Cluster("west".into()),
            service: None,
            reason: " ".into(),
            requested_by: String::new(),
        };
        assert!(matches!(
            state.apply(2, &at(2_000, drain)),
            Outcome::Refused { .. }
        ));
        assert!(state.engine().drains.is_empty());
        assert_eq!(state.mesh_version(), 1);
    }

    #[test]
    fn an_object_that_does_not_validate_is_refused_whole() {
        let mut state = MeshState::default();
        let mut batch = objects();
        batch[0].json = "{\"kind\": \"MeshCluster\"}".into();
        let outcome = state.apply(1, &at(1_000, Change::Apply { objects: batch }));
        assert!(matches!(outcome, Outcome::Refused { .. }), "{outcome:?}");
        assert_eq!(state.objects().count(), 0);
    }
}
