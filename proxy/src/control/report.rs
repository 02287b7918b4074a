//! What the proxy tells the coordinators: every report interval, the outcome counters
//! per (service, destination cluster and locality) of the tries it made, a latency
//! summary of each, the inventory of its own cluster's endpoints, and whether each other
//! cluster's east-west gateway answers.
//!
//! Memory is bounded: counters and an hdrhistogram per destination (never raw samples),
//! at most [`MAX_DESTINATIONS`] destinations per interval (more are counted as dropped).
//! While no coordinator takes reports the counters keep adding up and go out with the
//! next report that is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_policy::Locality;
use fulcrum_policy::health::{
    DestinationCounters, EndpointInventory, GatewayReachability, HealthReport, LatencySummary,
    MAX_REPORT_INTERVAL,
};
use fulcrum_proto::control::v1 as pb;
use fulcrum_proto::control::v1::proxy_control_client::ProxyControlClient;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{ControlSettings, FIRST_BACKOFF, MAX_BACKOFF};
use crate::FastMap;
use crate::balance::ClusterInfo;

/// Destinations counted per interval at most.
pub const MAX_DESTINATIONS: usize = 10_000;
/// Default report interval (DESIGN §3).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Slowest latency the histograms tell apart, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// How one try ended, as the reports count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer with this status.
    Status(u16),
    /// No answer: the connection failed, was reset, or the try timed out.
    NoAnswer,
}

struct Counts {
    locality: Locality,
    requests: u64,
    http_5xx: u64,
    gateway_errors: u64,
    connect_failures: u64,
    latency: Histogram<u64>,
}

impl Counts {
    fn new(locality: &Locality) -> Option<Counts> {
        Some(Counts {
            locality: locality.clone(),
            requests: 0,
            http_5xx: 0,
            gateway_errors: 0,
            connect_failures: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).ok()?,
        })
    }
}

/// Service -> destination cluster -> counters. Looked up by `&str`, so counting a try
/// allocates nothing once its destination is known.
#[derive(Default)]
struct Table {
    services: FastMap<String, FastMap<String, Counts>>,
    destinations: usize,
    dropped: u64,
}

/// The counters of the current interval.
#[derive(Default)]
pub struct Stats {
    table: Mutex<Table>,
}

impl Stats {
    /// Counts one try of `service` that went to `cluster` in `locality`.
    pub fn record(
        &self,
        service: &str,
        cluster: &str,
        locality: &Locality,
        outcome: Outcome,
        latency: Duration,
    ) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let table = &mut *table;
        let known = table
            .services
            .get(service)
            .is_some_and(|c| c.contains_key(cluster));
        if !known {
            if table.destinations >= MAX_DESTINATIONS {
                table.dropped += 1;
                return;
            }
            let Some(fresh) = Counts::new(locality) else {
                return;
            };
            table
                .services
                .entry(service.to_string())
                .or_default()
                .insert(cluster.to_string(), fresh);
            table.destinations += 1;
        }
        let Some(c) = table
            .services
            .get_mut(service)
            .and_then(|c| c.get_mut(cluster))
        else {
            return;
        };
        c.requests += 1;
        match outcome {
            Outcome::Status(s) if (500..600).contains(&s) => {
                c.http_5xx += 1;
                if matches!(s, 502..=504) {
                    c.gateway_errors += 1;
                }
            }
            Outcome::Status(_) => {}
            Outcome::NoAnswer => c.connect_failures += 1,
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        c.latency.saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    /// Takes the interval's counters, leaving them empty.
    pub fn take(&self) -> Vec<DestinationCounters> {
        let services = match self.table.lock() {
            Ok(mut t) => {
                t.destinations = 0;
                std::mem::take(&mut t.services)
            }
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<DestinationCounters> = services
            .into_iter()
            .flat_map(|(service, clusters)| {
                clusters
                    .into_iter()
                    .map(move |(cluster, c)| DestinationCounters {
                        service: service.clone(),
                        cluster,
                        locality: c.locality,
                        requests: c.requests,
                        http_5xx: c.http_5xx,
                        gateway_errors: c.gateway_errors,
                        connect_failures: c.connect_failures,
                        latency: LatencySummary {
                            p50_us: c.latency.value_at_quantile(0.5),
                            p90_us: c.latency.value_at_quantile(0.9),
                            p99_us: c.latency.value_at_quantile(0.99),
                            max_us: c.latency.max(),
                        },
                    })
            })
            .collect();
        out.sort_by(|a, b| (&a.service, &a.cluster).cmp(&(&b.service, &b.cluster)));
        out
    }

    /// Destinations not counted because the table was full.
    pub fn dropped(&self) -> u64 {
        self.table.lock().map(|t| t.dropped).unwrap_or(0)
    }
}

/// Whether `gateway` accepts a TCP connection within `timeout`.
pub async fn probe(gateway: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(gateway)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

/// Probes every gateway of every other cluster, all at once.
pub async fn probe_gateways(
    clusters: &[ClusterInfo],
    own_cluster: &str,
    timeout: Duration,
) -> Vec<GatewayReachability> {
    let mut probes = tokio::task::JoinSet::new();
    for c in clusters.iter().filter(|c| c.name != own_cluster) {
        for address in &c.gateways {
            let (cluster, address) = (c.name.clone(), address.clone());
            probes.spawn(async move {
                let result = probe(&address, timeout).await;
                GatewayReachability {
                    cluster,
                    address,
                    reachable: result.is_ok(),
                    error: result.err().unwrap_or_default(),
                }
            });
        }
    }
    let mut out: Vec<GatewayReachability> = probes.join_all().await;
    out.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
    out
}

/// What the report loop reads from the rest of the proxy each interval.
pub trait ReportSource: Send + Sync {
    /// This cluster's endpoints per service.
    fn inventory(&self) -> Vec<EndpointInventory>;
    /// The clusters of the mesh (for the gateway probes).
    fn clusters(&self) -> Vec<ClusterInfo>;
}

/// Sends a report every `interval` to any coordinator that takes it, until `stop`.
pub async fn run(
    settings: ControlSettings,
    stats: Arc<Stats>,
    source: Arc<dyn ReportSource>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut next = 0usize;
    let mut sequence = 0u64;
    let mut last = tokio::time::Instant::now();
    loop {
        if settings.coordinators.is_empty() || *stop.borrow() {
            return;
        }
        let address = &settings.coordinators[next % settings.coordinators.len()];
        next += 1;
        let channel = match super::connect(&settings, address).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(coordinator = %address, "reports: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let mut client = ProxyControlClient::new(channel);
        let call = tokio::spawn(async move { client.report(ReceiverStream::new(rx)).await });
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if call.is_finished() {
                break;
            }
            let now = tokio::time::Instant::now();
            let clusters = source.clusters();
            let gateways = probe_gateways(&clusters, &settings.cluster, interval / 2).await;
            sequence += 1;
            let report = HealthReport {
                cluster: settings.cluster.clone(),
                proxy_id: settings.proxy_id.clone(),
                locality: settings.locality.clone(),
                interval: fulcrum_policy::Duration::from_millis(
                    i64::try_from((now - last).as_millis())
                        .unwrap_or(i64::MAX)
                        .clamp(1, MAX_REPORT_INTERVAL.as_millis()),
                ),
                sequence,
                destinations: stats.take(),
                inventory: source.inventory(),
                gateways,
            };
            last = now;
            if tx.send(pb::HealthReport::from(&report)).await.is_err() {
                break;
            }
            backoff = FIRST_BACKOFF;
        }
        match call.await {
            Ok(Err(status)) => {
                tracing::warn!(coordinator = %address, "reports refused: {status}");
            }
            Ok(Ok(_)) | Err(_) => {
                tracing::debug!(coordinator = %address, "report stream ended");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tries_are_counted_per_destination_with_a_latency_summary() {
        let stats = Stats::default();
        let east: Locality = "us-east/a".parse().expect("locality");
        for ms in [1, 2, 3, 100] {
            stats.record(
                "checkout",
                "us-east",
                &east,
                Outcome::Status(200),
                Duration::from_millis(ms),
            );
        }
        stats.record(
            "checkout",
            "us-east",
            &east,
            Outcome::Status(503),
            Duration::ZERO,
        );
        stats.record(
            "checkout",
            "us-east",
            &east,
            Outcome::Status(500),
            Duration::ZERO,
        );
        stats.record(
            "checkout",
            "us-east",
            &east,
            Outcome::NoAnswer,
            Duration::ZERO,
        );
        let taken = stats.take();
        assert_eq!(taken.len(), 1);
        let d = &taken[0];
        assert_eq!(
            (d.requests, d.http_5xx, d.gateway_errors, d.connect_failures),
            (7, 2, 1, 1)
        );
        assert!(d.latency.max_us >= 99_000, "{:?}", d.latency);
        assert!(stats.take().is_empty(), "taking empties the interval");
    }

    #[test]
    fn the_table_is_bounded() {
        let stats = Stats::default();
        let l: Locality = "r/z".parse().expect("locality");
        for i in 0..MAX_DESTINATIONS + 5 {
            stats.record(
                &format!("s{i}"),
                "c",
                &l,
                Outcome::Status(200),
                Duration::ZERO,
            );
        }
        assert_eq!(stats.dropped(), 5);
        assert_eq!(stats.take().len(), MAX_DESTINATIONS);
    }
}
