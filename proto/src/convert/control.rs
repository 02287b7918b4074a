//! Conversions for `fulcrum.control.v1`: health reports.

use fulcrum_policy::Locality;
use fulcrum_policy::health::{
    DestinationCounters, EndpointInventory, GatewayReachability, HealthReport, HealthReportError,
    LatencySummary, MAX_REPORT_ENTRIES,
};

use super::common::{millis, to_millis};
use super::{WireError, each, required};
use crate::control::v1 as pb;

impl From<&HealthReport> for pb::HealthReport {
    fn from(r: &HealthReport) -> Self {
        pb::HealthReport {
            cluster: r.cluster.clone(),
            proxy_id: r.proxy_id.clone(),
            locality: Some((&r.locality).into()),
            interval_ms: to_millis(r.interval),
            sequence: r.sequence,
            destinations: r
                .destinations
                .iter()
                .map(|d| pb::DestinationCounters {
                    service: d.service.clone(),
                    cluster: d.cluster.clone(),
                    locality: Some((&d.locality).into()),
                    requests: d.requests,
                    http_5xx: d.http_5xx,
                    gateway_errors: d.gateway_errors,
                    connect_failures: d.connect_failures,
                    latency: Some(pb::LatencySummary {
                        p50_us: d.latency.p50_us,
                        p90_us: d.latency.p90_us,
                        p99_us: d.latency.p99_us,
                        max_us: d.latency.max_us,
                    }),
                })
                .collect(),
            inventory: r
                .inventory
                .iter()
                .map(|i| pb::EndpointInventory {
                    service: i.service.clone(),
                    locality: Some((&i.locality).into()),
                    total: i.total,
                    ready: i.ready,
                    ejected: i.ejected,
                })
                .collect(),
            gateways: r
                .gateways
                .iter()
                .map(|g| pb::GatewayReachability {
                    cluster: g.cluster.clone(),
                    address: g.address.clone(),
                    reachable: g.reachable,
                    error: g.error.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<&pb::HealthReport> for HealthReport {
    type Error = WireError;

    /// Converts and checks the report: complete, bounded and self-consistent.
    fn try_from(r: &pb::HealthReport) -> Result<Self, WireError> {
        // Refuse an oversized report before converting any of it.
        let entries = r.destinations.len() + r.inventory.len() + r.gateways.len();
        if entries > MAX_REPORT_ENTRIES {
            return Err(WireError::invalid(
                "destinations",
                format!(
                    "the report has {entries} entries, more than the limit of {}",
                    MAX_REPORT_ENTRIES
                ),
            ));
        }
        let report = HealthReport {
            cluster: r.cluster.clone(),
            proxy_id: r.proxy_id.clone(),
            locality: required("locality", r.locality.as_ref(), Locality::try_from)?,
            interval: millis("interval_ms", r.interval_ms)?,
            sequence: r.sequence,
            destinations: each("destinations", &r.destinations, |d| {
                Ok(DestinationCounters {
                    service: d.service.clone(),
                    cluster: d.cluster.clone(),
                    locality: required("locality", d.locality.as_ref(), Locality::try_from)?,
                    requests: d.requests,
                    http_5xx: d.http_5xx,
                    gateway_errors: d.gateway_errors,
                    connect_failures: d.connect_failures,
                    latency: d
                        .latency
                        .as_ref()
                        .map(|l| LatencySummary {
                            p50_us: l.p50_us,
                            p90_us: l.p90_us,
                            p99_us: l.p99_us,
                            max_us: l.max_us,
                        })
                        .unwrap_or_default(),
                })
            })?,
            inventory: each("inventory", &r.inventory, |i| {
                Ok(EndpointInventory {
                    service: i.service.clone(),
                    locality: required("locality", i.locality.as_ref(), Locality::try_from)?,
                    total: i.total,
                    ready: i.ready,
                    ejected: i.ejected,
                })
            })?,
            gateways: r
                .gateways
                .iter()
                .map(|g| GatewayReachability {
                    cluster: g.cluster.clone(),
                    address: g.address.clone(),
                    reachable: g.reachable,
                    error: g.error.clone(),
                })
                .collect(),
        };
        report.check().map_err(|e| {
            let field = match &e {
                HealthReportError::NoCluster => "cluster",
                HealthReportError::NoProxyId => "proxy_id",
                HealthReportError::BadInterval { .. } => "interval_ms",
                HealthReportError::TooLarge { .. } => "destinations",
                HealthReportError::InconsistentCounters { .. } => "destinations",
                HealthReportError::InconsistentInventory { .. } => "inventory",
            };
            WireError::invalid(field, e.to_string())
        })?;
        Ok(report)
    }
}
