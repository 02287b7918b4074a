//! Health reports: what one proxy saw during one report interval — request outcomes per
//! destination locality, its own cluster's endpoints, and which remote gateways answered.
//!
//! Reports arrive from the network, so [`HealthReport::check`] bounds their size and
//! refuses counters that contradict each other before any of it reaches the engine.

use crate::duration::Duration;
use crate::locality::Locality;

/// Most entries (destinations + inventory + gateways) one report may carry.
pub const MAX_REPORT_ENTRIES: usize = 50_000;
/// Longest interval one report may cover.
pub const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// What one proxy saw during one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    /// The reporting proxy's cluster.
    pub cluster: String,
    /// The reporting proxy.
    pub proxy_id: String,
    /// The proxy's locality.
    pub locality: Locality,
    /// How long the counters cover.
    pub interval: Duration,
    /// Increases by one per report from this proxy.
    pub sequence: u64,
    /// Outcomes of requests sent, per service and destination.
    pub destinations: Vec<DestinationCounters>,
    /// The proxy's own cluster's endpoints.
    pub inventory: Vec<EndpointInventory>,
    /// Remote gateway probes.
    pub gateways: Vec<GatewayReachability>,
}

/// Request outcomes toward one service in one destination locality.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationCounters {
    /// Service host.
    pub service: String,
    /// Destination cluster.
    pub cluster: String,
    /// Destination locality.
    pub locality: Locality,
    /// Request attempts.
    pub requests: u64,
    /// Answered 500-599.
    pub http_5xx: u64,
    /// Answered 502, 503 or 504 (also counted in `http_5xx`).
    pub gateway_errors: u64,
    /// Got no answer: connect failure, reset or timeout.
    pub connect_failures: u64,
    /// Latency of answered requests.
    pub latency: LatencySummary,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// Endpoints of one service in one locality of the reporter's cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointInventory {
    /// Service host.
    pub service: String,
    /// Locality of the endpoints.
    pub locality: Locality,
    /// All endpoints.
    pub total: u32,
    /// Passing readiness.
    pub ready: u32,
    /// Ejected by outlier detection.
    pub ejected: u32,
}

/// Whether a remote cluster's east-west gateway answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayReachability {
    /// The remote cluster.
    pub cluster: String,
    /// `address:port` probed.
    pub address: String,
    /// True when it answered.
    pub reachable: bool,
    /// Why not, when it did not.
    pub error: String,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthReportError {
    /// No cluster.
    #[error("cluster is empty")]
    NoCluster,
    /// No proxy id.
    #[error("proxy_id is empty")]
    NoProxyId,
    /// The interval is zero, negative or too long.
    #[error("interval {interval} must be above 0s and at most {MAX_REPORT_INTERVAL}")]
    BadInterval {
        /// The interval given.
        interval: Duration,
    },
    /// Too many entries.
    #[error("the report has {entries} entries, more than the limit of {MAX_REPORT_ENTRIES}")]
    TooLarge {
        /// Entries in the report.
        entries: usize,
    },
    /// Counters that cannot all be true.
    #[error("destinations[{index}] ({service} in {locality}): {reason}")]
    InconsistentCounters {
        /// Position in `destinations`.
        index: usize,
        /// Its service.
        service: String,
        /// Its locality.
        locality: Locality,
        /// Which counters disagree.
        reason: &'static str,
    },
    /// Inventory counts that cannot all be true.
    #[error("inventory[{index}] ({service} in {locality}): {reason}")]
    InconsistentInventory {
        /// Position in `inventory`.
        index: usize,
        /// Its service.
        service: String,
        /// Its locality.
        locality: Locality,
        /// Which counts disagree.
        reason: &'static str,
    },
}

impl HealthReport {
    /// Checks that the report is complete, bounded and self-consistent.
    pub fn check(&self) -> Result<(), HealthReportError> {
        if self.cluster.is_empty() {
            return Err(HealthReportError::NoCluster);
        }
        if self.proxy_id.is_empty() {
            return Err(HealthReportError::NoProxyId);
        }
        if self.interval <= Duration::ZERO || self.interval > MAX_REPORT_INTERVAL {
            return Err(HealthReportError::BadInterval {
                interval: self.interval,
            });
        }
        let entries = self.destinations.len() + self.inventory.len() + self.gateways.len();
        if entries > MAX_REPORT_ENTRIES {
            return Err(HealthReportError::TooLarge { entries });
        }
        for (index, d) in self.destinations.iter().enumerate() {
            let reason = if d.http_5xx + d.connect_failures > d.requests {
                Some("5xx responses and connect failures exceed requests")
            } else if d.gateway_errors > d.http_5xx {
                Some("gateway errors exceed 5xx responses")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(HealthReportError::InconsistentCounters {
                    index,
                    service: d.service.clone(),
                    locality: d.locality.clone(),
                    reason,
                });
            }
        }
        for (index, i) in self.inventory.iter().enumerate() {
            let reason = if i.ready > i.total {
                Some("more ready endpoints than endpoints")
            } else if i.ejected > i.total {
                Some("more ejected endpoints than endpoints")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(HealthReportError::InconsistentInventory {
                    index,
                    service: i.service.clone(),
                    locality: i.locality.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> HealthReport {
        HealthReport {
            cluster: "us-east".into(),
            proxy_id: "proxy-1".into(),
            locality: Locality::new("us-east", "us-east-1a", ""),
            interval: Duration::from_secs(1),
            sequence: 1,
            destinations: vec![DestinationCounters {
                service: "checkout".into(),
                requests: 10,
                http_5xx: 3,
                gateway_errors: 2,
                connect_failures: 1,
                ..DestinationCounters::default()
            }],
            inventory: vec![EndpointInventory {
                service: "checkout".into(),
                total: 3,
                ready: 2,
                ejected: 1,
                ..EndpointInventory::default()
            }],
            gateways: Vec::new(),
        }
    }

    #[test]
    fn consistent_reports_pass() {
        assert_eq!(report().check(), Ok(()));
    }

    #[test]
    fn contradictory_counters_are_refused() {
        let mut r = report();
        r.destinations[0].gateway_errors = 4;
        assert!(matches!(
            r.check(),
            Err(HealthReportError::InconsistentCounters { index: 0, .. })
        ));
        let mut r = report();
        r.destinations[0].http_5xx = 10;
        assert!(r.check().is_err());
        let mut r = report();
        r.inventory[0].ready = 4;
        assert!(r.check().is_err());
    }

    #[test]
    fn missing_identity_and_bad_intervals_are_refused() {
        let mut r = report();
        r.proxy_id.clear();
        assert_eq!(r.check(), Err(HealthReportError::NoProxyId));
        let mut r = report();
        r.interval = Duration::ZERO;
        assert!(matches!(
            r.check(),
            Err(HealthReportError::BadInterval { .. })
        ));
        let mut r = report();
        r.interval = Duration::from_secs(3600);
        assert!(matches!(
            r.check(),
            Err(HealthReportError::BadInterval { .. })
        ));
    }
}
