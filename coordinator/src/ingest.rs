//! Proxy reports -> one health digest per batch interval -> a Raft proposal.
//!
//! Every node accepts reports. [`Ingest::offer`] never waits: it files the report under
//! its proxy, and when that proxy already has one waiting (the node is behind: the last
//! proposal has not committed yet) the two are merged — counters added, the newer
//! inventory and probes kept — and the merge is counted. The batcher takes whatever is
//! waiting every interval and proposes it as one digest (forwarded to the leader when
//! this node follows). So a slow Raft round makes digests bigger, never makes proxies
//! wait, and memory stays bounded by the number of proxies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_policy::Duration as PolicyDuration;
use fulcrum_policy::engine::HealthDigest;
use fulcrum_policy::health::HealthReport;
use tokio::sync::watch;

use crate::mesh::Change;
use crate::metrics::Metrics;
use crate::node::Node;

/// How often a node proposes what it received, by default.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Most proxies with a report waiting; reports from further proxies are dropped (and
/// counted) until the next batch.
pub const DEFAULT_MAX_PENDING_PROXIES: usize = 20_000;

/// What happened to an offered report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Filed for the next digest.
    Accepted,
    /// Merged into a report of the same proxy that was still waiting.
    Coalesced,
    /// Dropped: too many proxies waiting.
    Dropped,
}

/// Reports waiting for the next digest.
pub struct Ingest {
    pending: Mutex<BTreeMap<(String, String), HealthReport>>,
    max_pending: usize,
    metrics: Arc<Metrics>,
}

/// Folds `newer` into `older`: counters add up, the inventory and gateway probes of the
/// newer report replace the older ones, the intervals add.
pub fn merge(older: &mut HealthReport, newer: HealthReport) {
    for d in newer.destinations {
        match older
            .destinations
            .iter_mut()
            .find(|o| o.service == d.service && o.cluster == d.cluster && o.locality == d.locality)
        {
            Some(o) => {
                o.requests = o.requests.saturating_add(d.requests);
                o.http_5xx = o.http_5xx.saturating_add(d.http_5xx);
                o.gateway_errors = o.gateway_errors.saturating_add(d.gateway_errors);
                o.connect_failures = o.connect_failures.saturating_add(d.connect_failures);
                o.latency = d.latency;
            }
            None => older.destinations.push(d),
        }
    }
    if !newer.inventory.is_empty() {
        older.inventory = newer.inventory;
    }
    if !newer.gateways.is_empty() {
        older.gateways = newer.gateways;
    }
    older.interval = PolicyDuration::from_nanos(
        older
            .interval
            .as_nanos()
            .saturating_add(newer.interval.as_nanos()),
    );
    older.sequence = older.sequence.max(newer.sequence);
    older.locality = newer.locality;
}

impl Ingest {
    /// An empty queue that holds at most `max_pending` proxies' reports.
    pub fn new(max_pending: usize, metrics: Arc<Metrics>) -> Self {
        Ingest {
            pending: Mutex::new(BTreeMap::new()),
            max_pending,
            metrics,
        }
    }

    /// Files a checked report for the next digest. Never waits on Raft.
    pub fn offer(&self, report: HealthReport) -> Offered {
        let key = (report.cluster.clone(), report.proxy_id.clone());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let offered = if let Some(older) = pending.get_mut(&key) {
            merge(older, report);
            Offered::Coalesced
        } else if pending.len() >= self.max_pending {
            Offered::Dropped
        } else {
            pending.insert(key, report);
            Offered::Accepted
        };
        drop(pending);
        match offered {
            Offered::Accepted => self.metrics.reports_accepted.inc(),
            Offered::Coalesced => {
                self.metrics.reports_accepted.inc();
                self.metrics.reports_coalesced.inc()
            }
            Offered::Dropped => self.metrics.reports_dropped.inc(),
        };
        offered
    }

    /// Takes everything waiting.
    pub fn take(&self) -> Vec<HealthReport> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending).into_values().collect()
    }

    /// Puts reports back after a failed proposal, merging with anything newer.
    fn put_back(&self, reports: Vec<HealthReport>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for report in reports {
            let key = (report.cluster.clone(), report.proxy_id.clone());
            match pending.remove(&key) {
                Some(newer) => {
                    let mut older = report;
                    merge(&mut older, newer);
                    pending.insert(key, older);
                }
                None if pending.len() < self.max_pending => {
                    pending.insert(key, report);
                }
                None => {
                    self.metrics.reports_dropped.inc();
                }
            }
        }
    }

    /// Number of proxies with a report waiting.
    pub fn waiting(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Every `interval`, proposes what arrived as one digest, until `shutdown` flips.
pub async fn run_batcher(
    node: Arc<Node>,
    ingest: Arc<Ingest>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let reports = ingest.take();
        if reports.is_empty() {
            continue;
        }
        let digest = HealthDigest::from_reports(&reports);
        node.metrics
            .digest_batch_reports
            .observe(reports.len() as f64);
        if let Err(status) = node.propose(Change::Digest { digest }).await {
            node.metrics.digest_failures.inc();
            tracing::warn!(reports = reports.len(), %status, "digest not committed; keeping it for the next batch");
            ingest.put_back(reports);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_policy::Locality;
    use fulcrum_policy::health::DestinationCounters;

    fn report(proxy: &str, requests: u64) -> HealthReport {
        HealthReport {
            cluster: "east".into(),
            proxy_id: proxy.into(),
            locality: Locality::new("us-east", "us-east-1a", ""),
            interval: PolicyDuration::from_secs(1),
            sequence: requests,
            destinations: vec![DestinationCounters {
                service: "api".into(),
                cluster: "west".into(),
                locality: Locality::new("us-west", "us-west-1a", ""),
                requests,
                http_5xx: requests / 2,
                ..DestinationCounters::default()
            }],
            inventory: vec![],
            gateways: vec![],
        }
    }

    #[test]
    fn a_second_report_from_a_waiting_proxy_is_merged_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let ingest = Ingest::new(10, metrics.clone());
        assert_eq!(ingest.offer(report("p1", 10)), Offered::Accepted);
        assert_eq!(ingest.offer(report("p1", 20)), Offered::Coalesced);
        assert_eq!(metrics.reports_coalesced.get(), 1);
        let taken = ingest.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].destinations[0].requests, 30);
        assert_eq!(taken[0].destinations[0].http_5xx, 15);
        assert_eq!(taken[0].interval, PolicyDuration::from_secs(2));
    }

    #[test]
    fn proxies_beyond_the_bound_are_dropped_not_queued() {
        let metrics = Arc::new(Metrics::new());
        let ingest = Ingest::new(2, metrics.clone());
        ingest.offer(report("p1", 1));
        ingest.offer(report("p2", 1));
        assert_eq!(ingest.offer(report("p3", 1)), Offered::Dropped);
        assert_eq!(ingest.waiting(), 2);
        assert_eq!(metrics.reports_dropped.get(), 1);
    }
}
