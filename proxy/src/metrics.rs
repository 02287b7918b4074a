//! The proxy's Prometheus metrics, served at the admin listener's `/metrics`.
//!
//! Labels stay bounded: the service label is a configured host (requests for unknown
//! hosts count under `unknown`), the code is the status class's exact code.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

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
    /// 1 while a coordinator session is up.
    pub coordinator_connected: Gauge,
    /// The version of the snapshot routed on (0: none, or a configuration file).
    pub snapshot_version: Gauge,
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
            coordinator_connected: Gauge::default(),
            snapshot_version: Gauge::default(),
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
            "coordinator_connected",
            "1 while a session with a coordinator is up",
            m.coordinator_connected.clone(),
        );
        registry.register(
            "snapshot_version",
            "Version of the snapshot the proxy routes on (0: none or a configuration file)",
            m.snapshot_version.clone(),
        );
        if let Ok(mut r) = m.registry.lock() {
            *r = registry;
        }
        m
    }

    /// A label set of one service.
    pub fn service(service: &str) -> Labels {
        vec![("service", service.to_string())]
    }

    /// The Prometheus text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = encode(&mut text, &registry);
        }
        text
    }
}
