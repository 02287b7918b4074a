//! Health digests: what one coordinator node heard from proxies during one batching
//! interval, merged into the payload of one Raft entry. The engine folds a digest into its
//! state with [`apply_digest`](crate::engine::apply_digest); raw per-request data never
//! gets this far.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::engine::state::Inventory;
use crate::engine::window::Counters;
use crate::health::HealthReport;
use crate::locality::Locality;

/// One observed slice of traffic: a source cluster's requests toward a service in a
/// destination locality, over one digest interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSample {
    /// The service host.
    pub service: String,
    /// The reporting (source) cluster.
    pub source_cluster: String,
    /// The destination locality.
    pub locality: Locality,
    /// What happened.
    pub counters: Counters,
}

/// Endpoint counts a cluster reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySample {
    /// The reporting cluster.
    pub cluster: String,
    /// The service host.
    pub service: String,
    /// The endpoints' locality.
    pub locality: Locality,
    /// The counts.
    pub inventory: Inventory,
}

/// Whether a cluster reached another's east-west gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachabilitySample {
    /// The probing cluster.
    pub source_cluster: String,
    /// The cluster whose gateway was probed.
    pub target_cluster: String,
    /// True when it answered.
    pub reachable: bool,
}

/// Everything one coordinator node heard from proxies during one batching interval: the
/// payload of one Raft entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthDigest {
    /// Clusters heard from (renews their lease).
    pub reporters: Vec<String>,
    /// Traffic outcomes.
    pub traffic: Vec<TrafficSample>,
    /// Endpoint counts.
    pub inventory: Vec<InventorySample>,
    /// Gateway probes.
    pub reachability: Vec<ReachabilitySample>,
}

impl HealthDigest {
    /// Merges checked reports into one digest: counters of the same (service, source,
    /// locality) add up; the newest inventory and probe per key win.
    pub fn from_reports<'a>(reports: impl IntoIterator<Item = &'a HealthReport>) -> Self {
        let mut reporters = BTreeSet::new();
        let mut traffic: BTreeMap<(String, String, Locality), Counters> = BTreeMap::new();
        let mut inventory = BTreeMap::new();
        let mut reachability = BTreeMap::new();
        for report in reports {
            reporters.insert(report.cluster.clone());
            for d in &report.destinations {
                traffic
                    .entry((
                        d.service.clone(),
                        report.cluster.clone(),
                        d.locality.clone(),
                    ))
                    .or_default()
                    .add(&Counters {
                        requests: d.requests,
                        http_5xx: d.http_5xx,
                        gateway_errors: d.gateway_errors,
                        connect_failures: d.connect_failures,
                    });
            }
            for i in &report.inventory {
                inventory.insert(
                    (
                        report.cluster.clone(),
                        i.service.clone(),
                        i.locality.clone(),
                    ),
                    Inventory {
                        total: i.total,
                        ready: i.ready,
                        ejected: i.ejected,
                    },
                );
            }
            for g in &report.gateways {
                reachability.insert((report.cluster.clone(), g.cluster.clone()), g.reachable);
            }
        }
        HealthDigest {
            reporters: reporters.into_iter().collect(),
            traffic: traffic
                .into_iter()
                .map(
                    |((service, source_cluster, locality), counters)| TrafficSample {
                        service,
                        source_cluster,
                        locality,
                        counters,
                    },
                )
                .collect(),
            inventory: inventory
                .into_iter()
                .map(
                    |((cluster, service, locality), inventory)| InventorySample {
                        cluster,
                        service,
                        locality,
                        inventory,
                    },
                )
                .collect(),
            reachability: reachability
                .into_iter()
                .map(
                    |((source_cluster, target_cluster), reachable)| ReachabilitySample {
                        source_cluster,
                        target_cluster,
                        reachable,
                    },
                )
                .collect(),
        }
    }
}
