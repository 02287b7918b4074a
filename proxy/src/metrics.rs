//! The proxy's Prometheus metrics, served at the admin listener's `/metrics`.
//!
//! Labels stay bounded: the service label is a configured host (requests for unknown
//! hosts count under `unknown`), the code is the status class's exact code.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fulcrum_policy::weights::WeightRow;

use crate::FastMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
/// One service's request counters, by locality, then status code.
type ByLocality = FastMap<String, FastMap<u16, Counter>>;

/// Every metric the proxy exports.
pub struct ProxyMetrics {
    registry: Mutex<Registry>,
    /// Requests answered, by service, destination locality and status code.
    pub requests: Family<Labels, Counter>,
    /// Seconds from the request to the answer, by service.
    pub latency: Family<Labels, Histogram>,
    /// Tries that could not connect, by service.
    pub connect_errors: Family<Labels, Counter>,
    /// Endpoints ejected by outlier detection, by service.
    pub ejections: Family<Labels, Counter>,
    /// Requests refused over the connection pool's limit, by service.
    pub overflows: Family<Labels, Counter>,
    /// Retries not made over the connection pool's retry limit, by service.
    pub retry_overflows: Family<Labels, Counter>,
    /// Requests waiting for a place under the connection pool's connection limit, by
    /// service.
    pub pending: Family<Labels, Gauge>,
    /// Connections the listeners failed to accept (mostly: out of file descriptors).
    pub accept_failures: Counter,
    /// Access log lines dropped behind a slow writer.
    pub access_log_dropped: Counter,
    /// 1 while a coordinator session is up.
    pub coordinator_connected: Gauge,
    /// The version of the snapshot routed on (0: none, or a configuration file).
    pub snapshot_version: Gauge,
    /// Configuration files read again after a change, and applied (without coordinators).
    pub config_reloads: Counter,
    /// Configuration files read again after a change, and refused for their errors.
    pub config_reload_failures: Counter,
    /// The pushed weight of each destination, in basis points, by service, subset and
    /// destination locality.
    pub weights: Family<Labels, Gauge>,
    /// When the coordinators produced the snapshot routed on, Unix milliseconds (0: none).
    pub snapshot_produced_ms: AtomicU64,
    snapshot_age: Gauge<f64, AtomicU64>,
    /// The series every request touches, found without building and SipHashing a label
    /// set (the families' own lookup): by service, locality and code, and by service.
    request_series: Mutex<FastMap<String, ByLocality>>,
    latency_series: Mutex<FastMap<String, Histogram>>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics::new()
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

impl ProxyMetrics {
    /// A fresh set, registered under `fulcrum_proxy_`.
    pub fn new() -> ProxyMetrics {
        let mut registry = Registry::with_prefix("fulcrum_proxy");
        let m = ProxyMetrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            connect_errors: Family::default(),
            ejections: Family::default(),
            overflows: Family::default(),
            retry_overflows: Family::default(),
            pending: Family::default(),
            accept_failures: Counter::default(),
            access_log_dropped: Counter::default(),
            coordinator_connected: Gauge::default(),
            snapshot_version: Gauge::default(),
            config_reloads: Counter::default(),
            config_reload_failures: Counter::default(),
            weights: Family::default(),
            snapshot_produced_ms: AtomicU64::new(0),
            snapshot_age: Gauge::default(),
            request_series: Mutex::default(),
            latency_series: Mutex::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by service, destination locality and status code",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Seconds from request to answer, by service",
            m.latency.clone(),
        );
        registry.register(
            "upstream_connect_errors",
            "Tries that could not connect to an endpoint, by service",
            m.connect_errors.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by service",
            m.ejections.clone(),
        );
        registry.register(
            "overflows",
            "Requests answered 503 overflow over the connection pool's limit, by service",
            m.overflows.clone(),
        );
        registry.register(
            "retry_overflows",
            "Retries not made over the connection pool's retry limit (maxRetries), by service",
            m.retry_overflows.clone(),
        );
        registry.register(
            "pending_requests",
            "Requests waiting for a connection under the connection pool's limit (maxConnections), by service",
            m.pending.clone(),
        );
        registry.register(
            "accept_failures",
            "Connections the listeners failed to accept (mostly: out of file descriptors)",
            m.accept_failures.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was too far behind",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "coordinator_connected",
            "1 while a session with a coordinator is up",
            m.coordinator_connected.clone(),
        );
        registry.register(
            "snapshot_version",
            "Version of the snapshot the proxy routes on (0: none or a configuration file)",
            m.snapshot_version.clone(),
        );
        registry.register(
            "config_reloads",
            "Times the configuration files (--config, without coordinators) changed and were applied",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_reload_failures",
            "Times the configuration files changed and were refused for their errors (the previous configuration kept)",
            m.config_reload_failures.clone(),
        );
        registry.register(
            "weight_basis_points",
            "Pushed share of each destination locality for this proxy's locality, in basis points",
            m.weights.clone(),
        );
        registry.register(
            "snapshot_age_seconds",
            "Seconds since the coordinators produced the snapshot routed on (by the proxy's clock)",
            m.snapshot_age.clone(),
        );
        if let Ok(mut r) = m.registry.lock() {
            *r = registry;
        }
        m
    }

    /// Counts one answered request of `service` served from `locality` with `code`,
    /// after `seconds`.
    pub fn count_request(&self, service: &str, locality: &str, code: u16, seconds: f64) {
        if let Ok(mut series) = self.latency_series.lock() {
            match series.get(service) {
                Some(h) => h.observe(seconds),
                None => {
                    let h = self.latency.get_or_create(&Self::service(service)).clone();
                    h.observe(seconds);
                    series.insert(service.to_string(), h);
                }
            }
        }
        let Ok(mut series) = self.request_series.lock() else {
            return;
        };
        let counter = series
            .get(service)
            .and_then(|s| s.get(locality))
            .and_then(|l| l.get(&code));
        if let Some(counter) = counter {
            counter.inc();
            return;
        }
        let counter = self
            .requests
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("locality", locality.to_string()),
                ("code", code.to_string()),
            ])
            .clone();
        counter.inc();
        series
            .entry(service.to_string())
            .or_default()
            .entry(locality.to_string())
            .or_default()
            .insert(code, counter);
    }

    /// A label set of one service.
    pub fn service(service: &str) -> Labels {
        vec![("service", service.to_string())]
    }

    /// Shows the weights of a new snapshot, in place of the previous ones.
    pub fn set_weights(&self, rows: &[WeightRow], produced_at_ms: u64) {
        self.weights.clear();
        for row in rows {
            for entry in &row.entries {
                self.weights
                    .get_or_create(&vec![
                        ("service", row.service.clone()),
                        ("subset", row.subset.clone()),
                        ("destination", entry.destination.to_string()),
                    ])
                    .set(i64::from(entry.weight_bp));
            }
        }
        self.snapshot_produced_ms
            .store(produced_at_ms, Ordering::Release);
    }

    /// The Prometheus text of every metric.
    pub fn render(&self) -> String {
        let produced = self.snapshot_produced_ms.load(Ordering::Acquire);
        if produced > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            self.snapshot_age
                .set(now.saturating_sub(produced) as f64 / 1000.0);
        }
        let mut text = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = encode(&mut text, &registry);
        }
        text
    }
}
