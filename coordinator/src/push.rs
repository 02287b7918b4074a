//! Snapshots for proxies, and who has what.
//!
//! A proxy's snapshot is everything it routes with, for its cluster's locality: the
//! weight rows whose source is that locality, the configuration objects, and the clusters
//! with their gateways. It is built once per (mesh version, locality) and shared by every
//! stream of that locality, so a thousand subscribers cost one encoding.
//!
//! The registry tracks each stream's sent, acked and nacked versions for `ListProxies`.
//! It is per node: a proxy is listed by the node it is connected to.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_policy::engine::explain::weight_rows;
use fulcrum_policy::{Kind, Locality, Resource};
use fulcrum_proto::common::v1 as common;
use fulcrum_proto::control::v1 as pb;
use fulcrum_proto::status::v1 as status;

use crate::raft::store::Applied;

/// How long a proxy may be behind the latest version before it counts as STALE.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(5);

/// The snapshot for proxies at `locality` (of `cluster`), from the applied state.
pub fn build_snapshot(applied: &Applied, cluster: &str, locality: &Locality) -> pb::Snapshot {
    let mesh = &applied.mesh;
    let topology = mesh.topology();
    let source = topology
        .clusters
        .get(cluster)
        .map_or(locality, |c| &c.locality);
    let mut weights = Vec::new();
    for (host, service_weights) in mesh.weights() {
        let Some(service) = topology.services.get(host) else {
            continue;
        };
        weights.extend(
            weight_rows(service_weights, service, mesh.epoch_ms())
                .into_iter()
                .filter(|row| &row.source == source)
                .map(|row| common::WeightRow::from(&row)),
        );
    }
    let mut resources = Vec::new();
    let mut clusters = Vec::new();
    for (_, resource) in mesh.objects() {
        match resource {
            Resource::MeshCluster(object) => {
                let spec = &object.spec;
                clusters.push(pb::Cluster {
                    name: spec.name(&object.metadata.name).to_string(),
                    locality: Some(common::Locality::from(&spec.locality)),
                    network: spec.network.clone(),
                    gateways: spec
                        .east_west_gateways
                        .iter()
                        .map(|g| pb::GatewayAddress {
                            address: g.address.clone(),
                            port: g.port,
                        })
                        .collect(),
                });
            }
            other if other.kind() != Kind::MeshCluster => {
                resources.push(common::Resource::from(other));
            }
            _ => {}
        }
    }
    pb::Snapshot {
        version: mesh.mesh_version(),
        produced_at_ms: mesh.now_ms(),
        source: Some(common::Locality::from(source)),
        weights,
        resources,
        clusters,
    }
}

/// Snapshots of one version, by cluster and locality.
type Built = HashMap<(String, Locality), Arc<pb::Snapshot>>;

/// Snapshots already built for the current version.
#[derive(Default)]
pub struct SnapshotCache {
    built: Mutex<(u64, Built)>,
}

impl SnapshotCache {
    /// The snapshot for (`cluster`, `locality`) at the applied state's version.
    pub fn get(&self, applied: &Applied, cluster: &str, locality: &Locality) -> Arc<pb::Snapshot> {
        let version = applied.mesh.mesh_version();
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if built.0 != version {
            *built = (version, HashMap::new());
        }
        built
            .1
            .entry((cluster.to_string(), locality.clone()))
            .or_insert_with(|| Arc::new(build_snapshot(applied, cluster, locality)))
            .clone()
    }
}

/// One subscribed proxy, as this node sees it.
#[derive(Debug, Clone)]
struct Subscription {
    proxy_id: String,
    cluster: String,
    locality: Locality,
    sent: u64,
    acked: u64,
    nacked: Option<(u64, String)>,
    behind_since_ms: Option<u64>,
    last_seen_ms: u64,
}

/// The proxies subscribed to this node.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    subscriptions: Mutex<BTreeMap<u64, Subscription>>,
}

/// A registered stream; unregisters itself when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registration {
    /// Records a version sent.
    pub fn sent(&self, version: u64, now_ms: u64) {
        self.update(now_ms, |s| {
            s.sent = s.sent.max(version);
            if s.acked < s.sent && s.behind_since_ms.is_none() {
                s.behind_since_ms = Some(now_ms);
            }
        });
    }

    /// Records an ACK.
    pub fn ack(&self, version: u64, now_ms: u64) {
        self.update(now_ms, |s| {
            s.acked = s.acked.max(version);
            if s.nacked.as_ref().is_some_and(|(v, _)| *v <= version) {
                s.nacked = None;
            }
            if s.acked >= s.sent {
                s.behind_since_ms = None;
            }
        });
    }

    /// Records a NACK with its reason.
    pub fn nack(&self, version: u64, reason: String, now_ms: u64) {
        self.update(now_ms, |s| s.nacked = Some((version, reason)));
    }

    fn update(&self, now_ms: u64, f: impl FnOnce(&mut Subscription)) {
        if let Some(s) = self.registry.lock().get_mut(&self.id) {
            s.last_seen_ms = now_ms;
            f(s);
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Subscription>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream after its Hello.
    pub fn register(
        self: &Arc<Self>,
        proxy_id: &str,
        cluster: &str,
        locality: &Locality,
        held_version: u64,
        now_ms: u64,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Subscription {
                proxy_id: proxy_id.to_string(),
                cluster: cluster.to_string(),
                locality: locality.clone(),
                sent: held_version,
                acked: held_version,
                nacked: None,
                behind_since_ms: None,
                last_seen_ms: now_ms,
            },
        );
        Registration {
            registry: self.clone(),
            id,
        }
    }

    /// Streams connected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no proxy is connected.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Connected proxies per cluster.
    pub fn per_cluster(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for s in self.lock().values() {
            *out.entry(s.cluster.clone()).or_insert(0) += 1;
        }
        out
    }

    /// The status of every connected proxy (of `cluster`, when given), against the latest
    /// version.
    pub fn statuses(
        &self,
        cluster: &str,
        latest: u64,
        node_id: u64,
        now_ms: u64,
        stale_after: Duration,
    ) -> Vec<status::ProxyStatus> {
        let stale_ms = stale_after.as_millis() as u64;
        self.lock()
            .values()
            .filter(|s| cluster.is_empty() || s.cluster == cluster)
            .map(|s| {
                let state = if s.nacked.is_some() {
                    status::SyncState::Nacked
                } else if s.acked >= latest {
                    status::SyncState::Synced
                } else if s
                    .behind_since_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) > stale_ms)
                    || s.sent < latest
                {
                    status::SyncState::Stale
                } else {
                    status::SyncState::Synced
                };
                status::ProxyStatus {
                    proxy_id: s.proxy_id.clone(),
                    cluster: s.cluster.clone(),
                    locality: Some(common::Locality::from(&s.locality)),
                    state: state as i32,
                    acked_version: s.acked,
                    lag: latest.saturating_sub(s.acked),
                    last_nack_reason: s
                        .nacked
                        .as_ref()
                        .map(|(_, r)| r.clone())
                        .unwrap_or_default(),
                    connected_node: node_id,
                    last_seen_age_ms: now_ms.saturating_sub(s.last_seen_ms),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nack_shows_until_a_newer_ack() {
        let registry = Arc::new(Registry::default());
        let loc = Locality::new("r", "z", "");
        let reg = registry.register("p1", "east", &loc, 0, 0);
        reg.sent(5, 10);
        reg.nack(5, "bad route".into(), 20);
        let s = &registry.statuses("", 5, 1, 30, DEFAULT_STALE_AFTER)[0];
        assert_eq!(s.state, status::SyncState::Nacked as i32);
        assert_eq!(s.last_nack_reason, "bad route");
        reg.sent(6, 40);
        reg.ack(6, 50);
        let s = &registry.statuses("", 6, 1, 60, DEFAULT_STALE_AFTER)[0];
        assert_eq!(s.state, status::SyncState::Synced as i32);
        drop(reg);
        assert!(registry.is_empty());
    }

    #[test]
    fn behind_for_longer_than_the_grace_is_stale() {
        let registry = Arc::new(Registry::default());
        let loc = Locality::new("r", "z", "");
        let reg = registry.register("p1", "east", &loc, 0, 0);
        reg.sent(3, 1_000);
        let fresh = &registry.statuses("", 3, 1, 2_000, Duration::from_secs(5))[0];
        assert_eq!(fresh.state, status::SyncState::Synced as i32);
        let late = &registry.statuses("", 3, 1, 7_000, Duration::from_secs(5))[0];
        assert_eq!(late.state, status::SyncState::Stale as i32);
        assert_eq!(late.lag, 3);
    }
}
