//! The pushed weight row of one service (or subset) for this proxy's locality, ready to
//! choose from: each destination locality with its share, its failover priority, and
//! where it is (this cluster, or another cluster's east-west gateways).
//!
//! Normally the choice follows the pushed shares smoothly ([`SmoothWeights`]). When a
//! destination the row sends traffic to cannot be used right now — this cluster has no
//! endpoint left that outlier detection has not ejected, or another cluster's gateway
//! cannot be reached — the proxy does not wait for the next push: it splits the row again
//! with `fulcrum-policy`'s own priority split ([`split`]), that destination counted as
//! having no healthy host, so traffic spills by the same failover priorities the
//! coordinator would use.

use std::sync::{Arc, Mutex};

use fulcrum_policy::Locality;
use fulcrum_policy::engine::split::{Candidate, split};
use fulcrum_policy::weights::{Verdict, WeightRow};

use super::locality::SmoothWeights;
use crate::routing::Chance;

/// A cluster of the mesh, as the snapshot (or configuration) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Its name (its proxies' `--cluster`).
    pub name: String,
    /// Where it runs.
    pub locality: Locality,
    /// `host:port` of its east-west listeners.
    pub gateways: Vec<String>,
}

/// Where a destination locality is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// This proxy's own cluster.
    Local,
    /// Another cluster, through its east-west gateways.
    Remote {
        /// The cluster.
        cluster: String,
        /// `host:port` of its gateways.
        gateways: Vec<String>,
    },
    /// No cluster with a gateway is known there.
    Unreachable,
}

/// One destination of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The locality.
    pub locality: Locality,
    /// Its name, as requests are counted by it.
    pub locality_text: Arc<str>,
    /// Where it is.
    pub place: Place,
    /// Pushed share, in basis points.
    pub weight_bp: u32,
    /// Failover priority (0 first).
    pub priority: u32,
    /// Endpoints there, as the coordinator last counted them (at least 1).
    pub hosts: u64,
    /// Healthy capacity, in ten-thousandths of a host, as the coordinator judged it.
    pub healthy: u64,
    /// The coordinator's verdict on it.
    pub verdict: Verdict,
    /// The coordinator's explanation of its weight.
    pub explanation: String,
}

/// A row to choose destinations from.
#[derive(Debug)]
pub struct LocalityRow {
    destinations: Vec<Destination>,
    smooth: Mutex<SmoothWeights>,
}

const BP: u64 = 10_000;

/// Where `locality` is, for a proxy in `own` locality of cluster `own_cluster`.
fn place_of(
    locality: &Locality,
    own: &Locality,
    own_cluster: &str,
    clusters: &[ClusterInfo],
) -> Place {
    if locality == own {
        return Place::Local;
    }
    let mut at: Vec<&ClusterInfo> = clusters
        .iter()
        .filter(|c| &c.locality == locality)
        .collect();
    at.sort_by(|a, b| a.name.cmp(&b.name));
    if at.iter().any(|c| c.name == own_cluster) {
        return Place::Local;
    }
    match at.into_iter().find(|c| !c.gateways.is_empty()) {
        Some(c) => Place::Remote {
            cluster: c.name.clone(),
            gateways: c.gateways.clone(),
        },
        None => Place::Unreachable,
    }
}

impl LocalityRow {
    /// The row as this proxy (cluster `own_cluster` in locality `own`) uses it.
    pub fn new(
        row: &WeightRow,
        own: &Locality,
        own_cluster: &str,
        clusters: &[ClusterInfo],
    ) -> LocalityRow {
        let destinations: Vec<Destination> = row
            .entries
            .iter()
            .map(|e| {
                let hosts = u64::from(e.signals.total_endpoints.max(1));
                let out = matches!(e.verdict, Verdict::Failed | Verdict::Drained);
                let ready = u64::from(e.signals.ready_endpoints.min(e.signals.total_endpoints));
                let healthy = if out {
                    0
                } else if e.signals.total_endpoints == 0 {
                    // Not counted yet (no inventory reported): assume whole.
                    BP
                } else {
                    ready * BP
                };
                Destination {
                    locality: e.destination.clone(),
                    locality_text: e.destination.to_string().into(),
                    place: place_of(&e.destination, own, own_cluster, clusters),
                    weight_bp: e.weight_bp,
                    priority: e.priority,
                    hosts,
                    healthy,
                    verdict: e.verdict,
                    explanation: e.explanation.clone(),
                }
            })
            .collect();
        let weights: Vec<u32> = destinations.iter().map(|d| d.weight_bp).collect();
        LocalityRow {
            destinations,
            smooth: Mutex::new(SmoothWeights::new(&weights)),
        }
    }

    /// Carries the smooth choice's position over from the row this one replaces, so a
    /// push that changes little does not restart the sequence.
    pub fn continue_from(&self, previous: &LocalityRow) {
        if let (Ok(old), Ok(mut new)) = (previous.smooth.lock(), self.smooth.lock())
            && previous.destinations.len() == self.destinations.len()
            && previous
                .destinations
                .iter()
                .zip(&self.destinations)
                .all(|(a, b)| a.locality == b.locality)
        {
            let weights = new.weights().to_vec();
            *new = old.clone();
            new.update(&weights);
        }
    }

    /// The destinations, in the row's order.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// Whether every request stays in this cluster whatever happens: the row sends
    /// nothing elsewhere and has nowhere else to spill to.
    pub fn is_local_only(&self) -> bool {
        self.destinations
            .iter()
            .all(|d| d.place == Place::Local || d.weight_bp == 0 && d.place == Place::Unreachable)
    }

    /// The next destination among the `usable` ones: by the pushed shares, or, when every
    /// destination with a share is unusable, by the row split again without them.
    pub fn choose(&self, usable: impl Fn(usize) -> bool, chance: &mut dyn Chance) -> Option<usize> {
        let pushed = match self.smooth.lock() {
            Ok(mut s) => s.pick_among(&usable),
            Err(_) => None,
        };
        if pushed.is_some() {
            return pushed;
        }
        let spilled = self.spill(&usable);
        let total: u64 = spilled.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut draw = chance.below(total);
        for (i, &w) in spilled.iter().enumerate() {
            if draw < u64::from(w) {
                return Some(i);
            }
            draw -= u64::from(w);
        }
        None
    }

    /// The row split again by failover priority, unusable destinations counted as
    /// having no healthy host.
    pub fn spill(&self, usable: impl Fn(usize) -> bool) -> Vec<u32> {
        let candidates: Vec<Candidate> = self
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| Candidate {
                priority: d.priority,
                weight: d.hosts,
                hosts: d.hosts,
                healthy: if usable(i) { d.healthy } else { 0 },
            })
            .collect();
        let mut weights = split(&candidates, 0).weights_bp;
        // Envoy's split still gives load to a priority with no healthy host when no
        // priority has any; an unusable destination must get none.
        for (i, w) in weights.iter_mut().enumerate() {
            if !usable(i) {
                *w = 0;
            }
        }
        weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_policy::weights::{Signals, WeightEntry};

    fn locality(s: &str) -> Locality {
        s.parse().expect("locality")
    }

    fn entry(dest: &str, weight_bp: u32, priority: u32) -> WeightEntry {
        WeightEntry {
            destination: locality(dest),
            weight_bp,
            priority,
            priority_reason: String::new(),
            verdict: Verdict::Healthy,
            verdict_since_ms: 0,
            signals: Signals {
                ready_endpoints: 2,
                total_endpoints: 2,
                ..Signals::default()
            },
            explanation: String::new(),
        }
    }

    fn clusters() -> Vec<ClusterInfo> {
        ["us-east/a", "us-central/a", "eu-west/a"]
            .iter()
            .map(|l| ClusterInfo {
                name: l.split('/').next().unwrap_or_default().to_string(),
                locality: locality(l),
                gateways: vec![format!("127.0.0.1:1{}", l.len())],
            })
            .collect()
    }

    fn row(entries: Vec<WeightEntry>) -> LocalityRow {
        let row = WeightRow {
            service: "checkout.shop".into(),
            subset: String::new(),
            source: locality("us-east/a"),
            entries,
        };
        LocalityRow::new(&row, &locality("us-east/a"), "us-east", &clusters())
    }

    struct First;
    impl Chance for First {
        fn below(&mut self, _: u64) -> u64 {
            0
        }
    }

    #[test]
    fn destinations_are_placed_in_this_or_another_cluster() {
        let r = row(vec![
            entry("us-east/a", 10_000, 0),
            entry("us-central/a", 0, 1),
            entry("ap-south/a", 0, 2),
        ]);
        let places: Vec<&Place> = r.destinations().iter().map(|d| &d.place).collect();
        assert_eq!(places[0], &Place::Local);
        assert!(matches!(places[1], Place::Remote { cluster, .. } if cluster == "us-central"));
        assert_eq!(places[2], &Place::Unreachable);
        assert!(!r.is_local_only());
    }

    #[test]
    fn the_pushed_shares_are_followed_while_everything_is_usable() {
        let r = row(vec![
            entry("us-east/a", 7_000, 0),
            entry("us-central/a", 3_000, 0),
        ]);
        let mut counts = [0; 2];
        for _ in 0..10_000 {
            counts[r.choose(|_| true, &mut First).expect("a choice")] += 1;
        }
        assert_eq!(counts, [7_000, 3_000]);
    }

    #[test]
    fn with_nothing_left_locally_traffic_spills_by_failover_priority() {
        let r = row(vec![
            entry("us-east/a", 10_000, 0),
            entry("us-central/a", 0, 1),
            entry("eu-west/a", 0, 2),
        ]);
        assert_eq!(r.spill(|i| i != 0), vec![0, 10_000, 0]);
        assert_eq!(r.choose(|i| i != 0, &mut First), Some(1));
        // The next priority down only when the first spill target is out too.
        assert_eq!(r.spill(|i| i == 2), vec![0, 0, 10_000]);
        assert_eq!(r.choose(|_| false, &mut First), None);
    }

    #[test]
    fn a_failed_destination_takes_no_spill() {
        let mut failed = entry("us-central/a", 0, 1);
        failed.verdict = Verdict::Failed;
        let r = row(vec![
            entry("us-east/a", 10_000, 0),
            failed,
            entry("eu-west/a", 0, 2),
        ]);
        assert_eq!(r.spill(|i| i != 0), vec![0, 0, 10_000]);
    }
}
