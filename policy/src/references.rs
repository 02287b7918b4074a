//! References between resources: a VirtualService destination that names a subset no
//! DestinationRule defines routes nowhere at runtime (Istio's analyzer reports it as
//! IST0101). These are warnings: the other resources may live elsewhere.

use std::collections::{BTreeMap, BTreeSet};

use crate::istio::{Destination, DestinationRuleSpec, TrafficPolicy, VirtualServiceSpec};
use crate::path::FieldPath;
use crate::resource::Object;
use crate::validate::names;

/// Istio's default cluster domain, which short host names are qualified with.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// Istio's `ResolveShortnameToFQDN`: a name without dots is a Kubernetes service in the
/// resource's namespace; anything else (`*`, IPs, names with dots) is left as written.
pub fn qualify_host(host: &str, namespace: &str) -> String {
    if host.is_empty() || host == "*" || host.contains('.') || names::parse_ip(host).is_some() {
        return host.to_string();
    }
    format!("{host}.{namespace}.svc.{DEFAULT_DOMAIN}")
}

/// The DestinationRule that applies to `host` (qualified): a rule for exactly that host
/// first, then the one with the most specific wildcard, as istiod chooses. `rules` in the
/// order ties go to (the engine and the proxy sort them by namespace and name).
pub fn rule_for_host<'a>(
    rules: &[&'a Object<DestinationRuleSpec>],
    host: &str,
) -> Option<&'a Object<DestinationRuleSpec>> {
    let qualified =
        |r: &Object<DestinationRuleSpec>| qualify_host(&r.spec.host, &r.metadata.namespace);
    rules
        .iter()
        .find(|r| qualified(r) == host)
        .or_else(|| {
            rules
                .iter()
                .filter(|r| names::host_is_subset(host, &qualified(r)))
                .max_by_key(|r| qualified(r).len())
        })
        .copied()
}

/// A subset's traffic policy merged over the rule's, field by field, as istiod does
/// (`MergeSubsetTrafficPolicy`): each of the subset's fields that is set replaces the
/// rule's whole; the rule's stand for the others.
pub fn merged_policy(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>) -> TrafficPolicy {
    let mut merged = top.cloned().unwrap_or_default();
    let Some(s) = subset else {
        return merged;
    };
    fn over<T: Clone>(field: &mut Option<T>, subset: &Option<T>) {
        if subset.is_some() {
            field.clone_from(subset);
        }
    }
    over(&mut merged.load_balancer, &s.load_balancer);
    over(&mut merged.outlier_detection, &s.outlier_detection);
    over(&mut merged.connection_pool, &s.connection_pool);
    over(&mut merged.tls, &s.tls);
    over(&mut merged.tunnel, &s.tunnel);
    over(&mut merged.proxy_protocol, &s.proxy_protocol);
    over(&mut merged.retry_budget, &s.retry_budget);
    merged
}

/// The subsets DestinationRules define, by qualified host.
#[derive(Debug, Default)]
pub struct SubsetIndex {
    by_host: BTreeMap<String, BTreeSet<String>>,
}

impl SubsetIndex {
    /// Adds the subsets of one DestinationRule.
    pub fn add(&mut self, spec: &DestinationRuleSpec, namespace: &str) {
        let subsets = self
            .by_host
            .entry(qualify_host(&spec.host, namespace))
            .or_default();
        subsets.extend(spec.subsets.iter().map(|s| s.name.clone()));
    }

    /// What is wrong with a reference to `subset` of `host`, if anything.
    fn check(&self, host: &str, subset: &str) -> Option<String> {
        let defining: Vec<(&String, &BTreeSet<String>)> = self
            .by_host
            .iter()
            .filter(|(rule_host, _)| names::host_is_subset(host, rule_host))
            .collect();
        if defining.iter().any(|(_, subsets)| subsets.contains(subset)) {
            return None;
        }
        if defining.is_empty() {
            return Some(format!(
                "subset {subset:?} of {host} is not defined: no DestinationRule for {host} \
                 in the validated configuration"
            ));
        }
        let known: BTreeSet<&String> = defining.iter().flat_map(|(_, s)| s.iter()).collect();
        let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
        Some(format!(
            "subset {subset:?} of {host} is not defined by its DestinationRule (it defines: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    }
}

/// Warnings for destinations of `spec` whose subsets are not defined, with their paths.
pub fn undefined_subsets(
    spec: &VirtualServiceSpec,
    namespace: &str,
    index: &SubsetIndex,
) -> Vec<(FieldPath, String)> {
    let mut out = Vec::new();
    let mut visit = |path: String, d: &Destination| {
        if d.subset.is_empty() {
            return;
        }
        let host = qualify_host(&d.host, namespace);
        if let Some(problem) = index.check(&host, &d.subset) {
            out.push((FieldPath::parse(&format!("{path}.subset")), problem));
        }
    };
    for (i, route) in spec.http.iter().enumerate() {
        for (j, r) in route.route.iter().enumerate() {
            visit(
                format!("spec.http[{i}].route[{j}].destination"),
                &r.destination,
            );
        }
        if let Some(mirror) = &route.mirror {
            visit(format!("spec.http[{i}].mirror"), mirror);
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            visit(
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &m.destination,
            );
        }
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        for (j, r) in route.route.iter().enumerate() {
            visit(
                format!("spec.tcp[{i}].route[{j}].destination"),
                &r.destination,
            );
        }
    }
    for (i, route) in spec.tls.iter().enumerate() {
        for (j, r) in route.route.iter().enumerate() {
            visit(
                format!("spec.tls[{i}].route[{j}].destination"),
                &r.destination,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_qualified_like_istio() {
        assert_eq!(
            qualify_host("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(qualify_host("reviews.default", "x"), "reviews.default");
        assert_eq!(qualify_host("*", "x"), "*");
        assert_eq!(qualify_host("10.0.0.1", "x"), "10.0.0.1");
    }

    #[test]
    fn wildcard_rules_cover_matching_hosts() {
        let mut index = SubsetIndex::default();
        let rule = DestinationRuleSpec {
            host: "*.shop.svc.cluster.local".into(),
            subsets: vec![crate::istio::Subset {
                name: "v1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        index.add(&rule, "shop");
        assert_eq!(index.check("checkout.shop.svc.cluster.local", "v1"), None);
        assert!(
            index
                .check("checkout.shop.svc.cluster.local", "v2")
                .is_some()
        );
        assert!(
            index
                .check("checkout.other.svc.cluster.local", "v1")
                .is_some()
        );
    }
    #[test]
    fn a_subsets_policy_replaces_the_rules_field_by_field() {
        use crate::istio::{
            ClientTlsSettings, LoadBalancerSettings, RetryBudget, SimpleLb, TlsMode,
        };
        let tls = |mode| {
            Some(ClientTlsSettings {
                mode: Some(mode),
                ..Default::default()
            })
        };
        let top = TrafficPolicy {
            load_balancer: Some(LoadBalancerSettings {
                simple: Some(SimpleLb::Random),
                ..Default::default()
            }),
            tls: tls(TlsMode::Disable),
            ..Default::default()
        };
        let subset = TrafficPolicy {
            tls: tls(TlsMode::Simple),
            retry_budget: Some(RetryBudget {
                min_retry_concurrency: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let merged = merged_policy(Some(&top), Some(&subset));
        // The subset's TLS and retry budget; the rule's balancer, which the subset
        // leaves unset.
        assert_eq!(merged.tls, subset.tls);
        assert_eq!(merged.retry_budget, subset.retry_budget);
        assert_eq!(merged.load_balancer, top.load_balancer);
        assert_eq!(merged_policy(Some(&top), None), top);
    }
}
