//! Validation of Fulcrum's own kinds: FailoverPolicy and MeshCluster.

use std::collections::BTreeMap;

use super::Checker;
use super::names;
use crate::duration::Duration;
use crate::fulcrum::{
    FailoverPolicySpec, IntOrPercent, MAX_DAMPING, MAX_WINDOW, MIN_WINDOW, MeshClusterSpec,
    SignalThresholds,
};
use crate::locality::Locality;
use crate::percent::Percent;

pub(super) fn check_failover_policy(c: &mut Checker, spec: &FailoverPolicySpec) {
    c.check_in("host", names::check_wildcard_domain(&spec.host));
    if let Some(window) = spec.window {
        c.at("window", |c| {
            if window < MIN_WINDOW || window > MAX_WINDOW {
                c.error(format!(
                    "window {window} is out of range: must be between {MIN_WINDOW} and \
                     {MAX_WINDOW}"
                ));
            } else if !window.is_whole_seconds() {
                c.error(format!(
                    "window {window} must be a whole number of seconds (error rates are kept \
                     in one-second buckets)"
                ));
            }
        });
    }
    if spec.min_request_volume == Some(0) {
        c.error_in(
            "minRequestVolume",
            "minRequestVolume must be at least 1: a rate over no requests means nothing",
        );
    }
    let settings = spec.settings();
    c.some("thresholds", &spec.thresholds, |c, thresholds| {
        c.some("degrade", &thresholds.degrade, |c, degrade| {
            each_signal(degrade, |field, value| {
                if value == Percent::ZERO || value > Percent::WHOLE {
                    c.error_in(
                        field,
                        format!("degrade threshold {value} must be above 0% and at most 100%"),
                    );
                }
            });
        });
        c.some("recover", &thresholds.recover, |c, recover| {
            each_signal(recover, |field, value| {
                if value > Percent::WHOLE {
                    c.error_in(
                        field,
                        format!("recover threshold {value} must be at most 100%"),
                    );
                }
            });
        });
        // Hysteresis: recovering must need a clearly better rate than degrading.
        let pairs = [
            (
                "http5xx",
                settings.recover.http_5xx,
                settings.degrade.http_5xx,
            ),
            (
                "gatewayErrors",
                settings.recover.gateway_errors,
                settings.degrade.gateway_errors,
            ),
            (
                "connectFailures",
                settings.recover.connect_failures,
                settings.degrade.connect_failures,
            ),
        ];
        for (field, recover, degrade) in pairs {
            // Out-of-range thresholds are reported above; comparing them adds nothing.
            if recover >= degrade && recover <= Percent::WHOLE && degrade <= Percent::WHOLE {
                c.at("recover", |c| {
                    c.error_in(
                        field,
                        format!(
                            "recover threshold {recover} must be below the degrade threshold \
                             {degrade}, or a locality would flap between the two"
                        ),
                    )
                });
            }
        }
    });
    c.some("damping", &spec.damping, |c, damping| {
        for (field, value) in [
            ("degradeAfter", damping.degrade_after),
            ("recoverAfter", damping.recover_after),
        ] {
            if let Some(d) = value {
                c.at(field, |c| {
                    if d < Duration::ZERO || d > MAX_DAMPING {
                        c.error(format!(
                            "{d} is out of range: must be between 0s and {MAX_DAMPING}"
                        ));
                    } else if !d.is_whole_millis() {
                        c.error(format!(
                            "{d} is too precise: only milliseconds are supported"
                        ));
                    }
                });
            }
        }
        if let Some(step) = damping.ramp_step
            && (step == Percent::ZERO || step > Percent::WHOLE)
        {
            c.error_in(
                "rampStep",
                format!("rampStep {step} must be above 0% and at most 100% (per second)"),
            );
        }
    });
    let mut seen: BTreeMap<&Locality, usize> = BTreeMap::new();
    c.at("capacity", |c| {
        for (i, cap) in spec.capacity.iter().enumerate() {
            c.at_index(i, |c| {
                if cap.locality.region.is_empty() {
                    c.error_in("locality", "a capacity needs a locality (region/zone)");
                } else if let Some(first) = seen.get(&cap.locality) {
                    c.error_in(
                        "locality",
                        format!(
                            "capacity for {} is already declared in capacity[{first}]",
                            cap.locality
                        ),
                    );
                } else {
                    seen.insert(&cap.locality, i);
                }
                if cap.max_requests_per_second.is_none() && cap.max_share.is_none() {
                    c.error("set maxRequestsPerSecond, maxShare, or both");
                }
                if cap.max_requests_per_second == Some(0) {
                    c.error_in(
                        "maxRequestsPerSecond",
                        "maxRequestsPerSecond must be above 0 (drain the locality instead)",
                    );
                }
                if let Some(share) = cap.max_share
                    && (share == Percent::ZERO || share > Percent::WHOLE)
                {
                    c.error_in(
                        "maxShare",
                        format!("maxShare {share} must be above 0% and at most 100%"),
                    );
                }
            });
        }
    });
    c.some("guards", &spec.guards, |c, guards| {
        match guards.max_drained {
            Some(IntOrPercent::Percent(p)) if p > Percent::WHOLE => {
                c.error_in("maxDrained", format!("maxDrained {p} must be at most 100%"))
            }
            Some(IntOrPercent::Int(0)) => c.warn_in(
                "maxDrained",
                "maxDrained 0 means Fulcrum never drains this service on its own; set \
             autoFailover: false to say so",
            ),
            _ => {}
        }
    });
}

fn each_signal(t: &SignalThresholds, mut f: impl FnMut(&str, Percent)) {
    for (field, value) in [
        ("http5xx", t.http_5xx),
        ("gatewayErrors", t.gateway_errors),
        ("connectFailures", t.connect_failures),
    ] {
        if let Some(v) = value {
            f(field, v);
        }
    }
}

pub(super) fn check_mesh_cluster(c: &mut Checker, spec: &MeshClusterSpec, object_name: &str) {
    let cluster = if spec.cluster_name.is_empty() {
        object_name
    } else {
        &spec.cluster_name
    };
    // An invalid metadata.name is reported with the metadata; say it once.
    let name_reported = spec.cluster_name.is_empty() && !names::is_dns1123_subdomain(cluster);
    if !names::is_namespace(cluster) && !name_reported {
        let field = if spec.cluster_name.is_empty() {
            None
        } else {
            Some("clusterName")
        };
        let message = format!(
            "cluster name {cluster:?} must be a lowercase DNS-1123 label (it is part of the \
             proxies' SPIFFE identities)"
        );
        match field {
            Some(f) => c.error_in(f, message),
            None => c.error(message),
        }
    }
    c.at("locality", |c| {
        let l = &spec.locality;
        if l.region.is_empty() || l.zone.is_empty() {
            c.error(format!(
                "locality {:?} must name at least a region and a zone (region/zone)",
                l.to_string()
            ));
        }
        for part in [&l.region, &l.zone, &l.subzone] {
            if !names::is_label_value(part) {
                c.error(format!(
                    "locality part {part:?} must be a valid label value (letters, digits, '-', \
                     '_' and '.')"
                ));
            }
        }
    });
    if !names::is_label_value(&spec.network) {
        c.error_in(
            "network",
            format!("network {:?} must be a valid label value", spec.network),
        );
    }
    if spec.east_west_gateways.is_empty() {
        c.warn_in(
            "eastWestGateways",
            "no east-west gateways: other clusters cannot fail over to this one",
        );
    }
    let mut seen: BTreeMap<(&str, u32), usize> = BTreeMap::new();
    c.at("eastWestGateways", |c| {
        for (i, gw) in spec.east_west_gateways.iter().enumerate() {
            c.at_index(i, |c| {
                if names::parse_ip(&gw.address).is_none() && names::check_fqdn(&gw.address).is_err()
                {
                    c.error_in(
                        "address",
                        format!("{:?} is neither an IP address nor a DNS name", gw.address),
                    );
                }
                c.port("port", gw.port);
                match seen.get(&(gw.address.as_str(), gw.port)) {
                    Some(first) => c.error(format!(
                        "{}:{} is already listed as eastWestGateways[{first}]",
                        gw.address, gw.port
                    )),
                    None => {
                        seen.insert((gw.address.as_str(), gw.port), i);
                    }
                }
            });
        }
    });
}
