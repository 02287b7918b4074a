//! DestinationRule validation: Istio's `ValidateDestinationRule` and the rules it calls
//! (traffic policy, outlier detection, connection pool, load balancer, locality load
//! balancing, TLS, port-level settings), plus the CRD schema's ranges and one-of rules.

use std::collections::{BTreeMap, BTreeSet};

use super::names::{self, check_wildcard_domain};
use super::{Checker, export_to, workload_selector};
use crate::istio::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, LocalityLbSetting, OutlierDetection, PortTrafficPolicy, TlsMode,
    TrafficPolicy, TunnelSettings,
};

/// Labels naming topology, which `failoverPriority` may not use together with `failover`.
const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// Maglev table sizes must stay below this prime (Envoy's limit).
const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

pub(super) fn check(c: &mut Checker, spec: &DestinationRuleSpec, namespace: &str) {
    c.check_in("host", check_wildcard_domain(&spec.host));
    c.some("trafficPolicy", &spec.traffic_policy, traffic_policy);
    let mut seen = BTreeSet::new();
    c.each("subsets", &spec.subsets, |c, subset| {
        c.at("name", |c| {
            if subset.name.is_empty() {
                c.error("subset name cannot be empty");
            } else if !names::is_dns1123_label(&subset.name) {
                c.error(format!(
                    "subset name {:?} is invalid: must be a DNS-1123 label (letters, digits \
                     and '-')",
                    subset.name
                ));
            }
            if !seen.insert(subset.name.clone()) {
                c.error(format!("duplicate subset name {:?}", subset.name));
            }
        });
        c.labels("labels", &subset.labels);
        c.some("trafficPolicy", &subset.traffic_policy, traffic_policy);
    });
    let selector = spec.workload_selector.as_ref();
    export_to(c, namespace, &spec.export_to, false, selector.is_some());
    if let Some(selector) = selector {
        c.at("workloadSelector", |c| {
            workload_selector(c, "matchLabels", &selector.match_labels)
        });
    }
}

fn traffic_policy(c: &mut Checker, policy: &TrafficPolicy) {
    if *policy == TrafficPolicy::default() {
        c.error("traffic policy must have at least one field");
        return;
    }
    if policy.tunnel.is_some() && policy.proxy_protocol.is_some() {
        c.error("tunnel and proxyProtocol must not be set together");
    }
    let outlier = policy.outlier_detection.as_ref();
    c.some(
        "outlierDetection",
        &policy.outlier_detection,
        outlier_detection,
    );
    c.some("connectionPool", &policy.connection_pool, connection_pool);
    c.some("loadBalancer", &policy.load_balancer, |c, lb| {
        load_balancer(c, lb, outlier)
    });
    c.some("tls", &policy.tls, tls);
    c.each(
        "portLevelSettings",
        &policy.port_level_settings,
        port_policy,
    );
    c.some("tunnel", &policy.tunnel, tunnel);
    c.some("retryBudget", &policy.retry_budget, |c, budget| {
        if let Some(p) = budget.percent
            && !(0.0..=100.0).contains(&p)
        {
            c.error_in(
                "percent",
                format!("{p} is not a percentage: must be 0 to 100"),
            );
        }
        c.duration("budgetInterval", &budget.budget_interval);
    });
}

fn port_policy(c: &mut Checker, policy: &PortTrafficPolicy) {
    match &policy.port {
        None => c.error("a port-level policy must name its port"),
        Some(port) => c.at("port", |c| c.port("number", port.number)),
    }
    let empty = policy.load_balancer.is_none()
        && policy.connection_pool.is_none()
        && policy.outlier_detection.is_none()
        && policy.tls.is_none();
    if empty {
        c.error("port traffic policy must have at least one field besides port");
        return;
    }
    let outlier = policy.outlier_detection.as_ref();
    c.some(
        "outlierDetection",
        &policy.outlier_detection,
        outlier_detection,
    );
    c.some("connectionPool", &policy.connection_pool, connection_pool);
    c.some("loadBalancer", &policy.load_balancer, |c, lb| {
        load_balancer(c, lb, outlier)
    });
    c.some("tls", &policy.tls, tls);
}

fn outlier_detection(c: &mut Checker, od: &OutlierDetection) {
    c.duration("baseEjectionTime", &od.base_ejection_time);
    c.duration("interval", &od.interval);
    if od.consecutive_errors != 0 {
        c.warn_in(
            "consecutiveErrors",
            "consecutiveErrors is deprecated; use consecutiveGatewayErrors or \
             consecutive5xxErrors",
        );
    }
    if !od.split_external_local_origin_errors
        && od.consecutive_local_origin_failures.unwrap_or(0) > 0
    {
        c.error_in(
            "consecutiveLocalOriginFailures",
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        );
    }
    c.percent_range("maxEjectionPercent", od.max_ejection_percent.into());
    c.percent_range("minHealthPercent", od.min_health_percent.into());
    c.at("outlierDetectionHttpErrorCodes", |c| {
        for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                c.at_index(i, |c| {
                    c.error(format!("{code} is not an HTTP status: must be 100 to 599"))
                });
            }
        }
    });
}

fn connection_pool(c: &mut Checker, pool: &ConnectionPoolSettings) {
    if pool.http.is_none() && pool.tcp.is_none() {
        c.error("connection pool must have at least one field (tcp or http)");
        return;
    }
    let non_negative = |c: &mut Checker, field: &str, value: i32| {
        if value < 0 {
            c.error_in(
                field,
                format!("{value} is negative: must be 0 (unlimited) or more"),
            );
        }
    };
    c.some("http", &pool.http, |c, http| {
        non_negative(
            c,
            "http1MaxPendingRequests",
            http.http1_max_pending_requests,
        );
        non_negative(c, "http2MaxRequests", http.http2_max_requests);
        non_negative(
            c,
            "maxRequestsPerConnection",
            http.max_requests_per_connection,
        );
        non_negative(c, "maxRetries", http.max_retries);
        non_negative(c, "maxConcurrentStreams", http.max_concurrent_streams);
        c.duration("idleTimeout", &http.idle_timeout);
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && http.use_client_protocol {
            c.error_in(
                "useClientProtocol",
                "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE",
            );
        }
        c.some("http2KeepAlive", &http.http2_keep_alive, |c, ka| {
            c.duration("interval", &ka.interval);
            c.duration("timeout", &ka.timeout);
        });
    });
    c.some("tcp", &pool.tcp, |c, tcp| {
        non_negative(c, "maxConnections", tcp.max_connections);
        c.duration("connectTimeout", &tcp.connect_timeout);
        c.duration("maxConnectionDuration", &tcp.max_connection_duration);
        c.duration("idleTimeout", &tcp.idle_timeout);
        c.some("tcpKeepalive", &tcp.tcp_keepalive, |c, ka| {
            c.duration("time", &ka.time);
            c.duration("interval", &ka.interval);
        });
    });
}

fn load_balancer(c: &mut Checker, lb: &LoadBalancerSettings, outlier: Option<&OutlierDetection>) {
    let policies = [
        lb.simple.is_some(),
        lb.consistent_hash.is_some(),
        lb.backend_utilization.is_some(),
    ];
    if policies.iter().filter(|set| **set).count() > 1 {
        c.error("only one of simple, consistentHash or backendUtilization may be set");
    }
    c.some("consistentHash", &lb.consistent_hash, |c, hash| {
        let keys = [
            hash.http_header_name.is_some(),
            hash.http_cookie.is_some(),
            hash.use_source_ip.is_some(),
            hash.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|set| **set).count() > 1 {
            c.error(
                "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName \
                 may be set",
            );
        }
        if hash.ring_hash.is_some() && hash.maglev.is_some() {
            c.error("only one of ringHash or maglev may be set");
        }
        c.some("httpCookie", &hash.http_cookie, |c, cookie| {
            if cookie.name.is_empty() {
                c.error_in("name", "a cookie name is required");
            }
        });
        if hash.minimum_ring_size != 0 {
            c.warn_in(
                "minimumRingSize",
                "minimumRingSize is deprecated; use ringHash.minimumRingSize",
            );
            if hash.ring_hash.is_some() || hash.maglev.is_some() {
                c.error_in(
                    "minimumRingSize",
                    "only one of minimumRingSize or ringHash/maglev may be set",
                );
            }
        }
        c.some("maglev", &hash.maglev, |c, maglev| {
            c.at("tableSize", |c| {
                let size = maglev.table_size;
                if size == 0 {
                    c.error("tableSize must be set for maglev");
                } else if size >= MAGLEV_MAX_TABLE_SIZE {
                    c.error(format!(
                        "tableSize {size} is too large: must be below {MAGLEV_MAX_TABLE_SIZE}"
                    ));
                } else if !is_prime(size) {
                    c.error(format!("tableSize {size} must be a prime number"));
                }
            });
        });
    });
    c.some(
        "localityLbSetting",
        &lb.locality_lb_setting,
        |c, setting| locality_lb_setting(c, setting, outlier),
    );
    c.duration("warmupDurationSecs", &lb.warmup_duration_secs);
    c.some("warmup", &lb.warmup, |c, warmup| {
        c.check_in("duration", super::istio_duration(warmup.duration));
        if let Some(p) = warmup.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            c.error_in(
                "minimumPercent",
                format!("{p} is not a percentage: must be 0 to 100"),
            );
        }
        match warmup.aggression {
            Some(a) if a < 0.0 => {
                c.error_in("aggression", format!("aggression {a} must not be negative"))
            }
            Some(0.0) => c.warn_in(
                "aggression",
                "aggression 0 gives no ramp; 1.0 is linear, below 1.0 starts slower",
            ),
            _ => {}
        }
    });
}

/// Envoy's primality test for maglev table sizes.
fn is_prime(x: u64) -> bool {
    if x < 4 {
        return x > 1;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut factor = 3;
    while factor * factor <= x {
        if x.is_multiple_of(factor) {
            return false;
        }
        factor += 2;
    }
    true
}

/// Istio's `ValidateLocalityLbSetting`.
fn locality_lb_setting(
    c: &mut Checker,
    lb: &LocalityLbSetting,
    outlier: Option<&OutlierDetection>,
) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        c.error("distribute and failover cannot both be set");
        return;
    }
    if !lb.failover.is_empty() {
        for (i, label) in lb.failover_priority.iter().enumerate() {
            if TOPOLOGY_LABELS.contains(&label.as_str()) {
                c.at("failoverPriority", |c| {
                    c.at_index(i, |c| {
                        c.error(format!(
                            "the topology label {label:?} cannot be used in failoverPriority \
                             together with failover"
                        ))
                    })
                });
            }
        }
    }
    c.at("distribute", |c| {
        for (i, rule) in lb.distribute.iter().enumerate() {
            c.at_index(i, |c| {
                c.at("to", |c| {
                    let mut total: u64 = 0;
                    for (locality, weight) in &rule.to {
                        if !(1..=100).contains(weight) {
                            c.at_key(locality, |c| {
                                c.error(format!(
                                    "locality weight {weight} must be in the range [1, 100]"
                                ))
                            });
                        }
                        total += u64::from(*weight);
                    }
                    if total != 100 {
                        c.error(format!("locality weights add up to {total}, not 100"));
                    }
                    let destinations: Vec<&str> = rule.to.keys().map(String::as_str).collect();
                    c.check(check_localities(&destinations));
                });
            });
        }
        let sources: Vec<&str> = lb.distribute.iter().map(|d| d.from.as_str()).collect();
        c.check(check_localities(&sources));
    });
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && outlier.is_none() {
        let field = if lb.failover.is_empty() {
            "failoverPriority"
        } else {
            "failover"
        };
        c.warn_in(
            field,
            "failover has no effect without outlierDetection in the same traffic policy: \
             every locality stays at priority 0",
        );
    }
    c.each("failover", &lb.failover, |c, rule| {
        if rule.from == rule.to {
            c.error(format!(
                "failover from {:?} to itself: from and to must be different regions",
                rule.from
            ));
        }
        if rule.from.contains('/') || rule.to.contains('/') {
            c.error("failover names regions only, without '/'");
        }
        if rule.from.contains('*') || rule.to.contains('*') {
            c.error("failover regions cannot contain the '*' wildcard");
        }
    });
}

/// Istio's `validateLocalities`: well-formed patterns that do not overlap each other.
fn check_localities(localities: &[&str]) -> Result<(), String> {
    #[derive(Default)]
    struct Zone {
        all: bool,
        subzones: BTreeSet<String>,
    }
    #[derive(Default)]
    struct Region {
        all: bool,
        zones: BTreeMap<String, Zone>,
    }
    let mut regions: BTreeMap<String, Region> = BTreeMap::new();
    for locality in localities {
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!(
                "locality {locality:?}: the '*' wildcard may appear once, at the end"
            ));
        }
        if regions.contains_key("*") {
            return Err(format!("locality {locality:?} overlaps an earlier one"));
        }
        let parts: Vec<&str> = locality.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality {locality:?} must not have an empty region, zone or subzone"
            ));
        }
        let overlap = || Err(format!("locality {locality:?} overlaps an earlier one"));
        match parts.as_slice() {
            [region] => {
                if regions.contains_key(*region) {
                    return overlap();
                }
                regions.insert(
                    region.to_string(),
                    Region {
                        all: true,
                        ..Region::default()
                    },
                );
            }
            [region, zone] => {
                let r = regions.entry(region.to_string()).or_default();
                if r.all || r.zones.contains_key(*zone) || r.zones.contains_key("*") {
                    return overlap();
                }
                r.zones.insert(
                    zone.to_string(),
                    Zone {
                        all: true,
                        ..Zone::default()
                    },
                );
            }
            [region, zone, subzone] => {
                let r = regions.entry(region.to_string()).or_default();
                if r.all || r.zones.contains_key("*") {
                    return overlap();
                }
                let z = r.zones.entry(zone.to_string()).or_default();
                if z.all || z.subzones.contains(*subzone) || z.subzones.contains("*") {
                    return overlap();
                }
                z.subzones.insert(subzone.to_string());
            }
            _ => unreachable!("splitn(3) yields one to three parts"),
        }
    }
    Ok(())
}

/// Istio's `ValidateTLS` for client TLS settings.
fn tls(c: &mut Checker, t: &ClientTlsSettings) {
    let mode = t.mode.unwrap_or_default();
    if t.insecure_skip_verify == Some(true) {
        if mode == TlsMode::Simple
            && (!t.ca_certificates.is_empty()
                || !t.credential_name.is_empty()
                || !t.subject_alt_names.is_empty())
        {
            c.error(
                "caCertificates, credentialName and subjectAltNames cannot be set when \
                 insecureSkipVerify is true",
            );
        }
        if mode == TlsMode::Mutual
            && (!t.ca_certificates.is_empty() || !t.subject_alt_names.is_empty())
        {
            c.error(
                "caCertificates and subjectAltNames cannot be set when insecureSkipVerify is \
                 true",
            );
        }
    }
    if matches!(mode, TlsMode::Simple | TlsMode::Mutual) && !t.credential_name.is_empty() {
        if !t.client_certificate.is_empty()
            || !t.ca_certificates.is_empty()
            || !t.private_key.is_empty()
            || !t.ca_crl.is_empty()
        {
            c.error(
                "clientCertificate, privateKey, caCertificates and caCrl cannot be set together \
                 with credentialName",
            );
        }
        return;
    }
    if mode == TlsMode::Mutual {
        if t.client_certificate.is_empty() {
            c.error_in(
                "clientCertificate",
                "a client certificate is required for MUTUAL TLS",
            );
        }
        if t.private_key.is_empty() {
            c.error_in("privateKey", "a private key is required for MUTUAL TLS");
        }
    }
}

fn tunnel(c: &mut Checker, t: &TunnelSettings) {
    if !matches!(t.protocol.as_str(), "" | "CONNECT" | "POST") {
        c.error_in(
            "protocol",
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    if names::check_fqdn(&t.target_host).is_err() && names::parse_ip(&t.target_host).is_none() {
        c.error_in(
            "targetHost",
            format!(
                "{:?} is neither a valid DNS name nor an IP address",
                t.target_host
            ),
        );
    }
    c.port("targetPort", t.target_port);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localities_may_not_overlap() {
        assert!(check_localities(&["us-east/zone1", "us-east/zone2"]).is_ok());
        assert!(check_localities(&["us-east", "us-east/zone1"]).is_err());
        assert!(check_localities(&["*", "us-east"]).is_err());
        assert!(check_localities(&["us-east/*", "us-east/zone1"]).is_err());
        assert!(check_localities(&["a/b/c", "a/b/c"]).is_err());
        assert!(check_localities(&["a/*/c"]).is_err());
        assert!(check_localities(&["a//c"]).is_err());
    }

    #[test]
    fn maglev_primes() {
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(is_prime(2));
        assert!(!is_prime(1));
    }
}
