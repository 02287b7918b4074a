//! The engine reproduces istiod's priorities and Envoy's split end to end: configuration
//! in, weight rows out. Each test is one worked example from Istio's or Envoy's
//! documentation, or one of istiod's rules.

use fulcrum_policy::engine::compute::{PriorityWhy, RowMode, ServiceWeights, SourceRow};
use fulcrum_policy::engine::digest::{HealthDigest, InventorySample};
use fulcrum_policy::engine::state::Inventory;
use fulcrum_policy::engine::{self, EngineState, Topology};
use fulcrum_policy::{ConfigSet, Locality};

const HOST: &str = "svc.ns.svc.cluster.local";

/// A mesh with one cluster per given locality (the first is named `a`, then `b`, ...),
/// the service's endpoints `(locality, weight, labels)` and a DestinationRule
/// `trafficPolicy` body.
fn mesh(clusters: &[&str], endpoints: &[(&str, u32, &str)], traffic_policy: &str) -> Topology {
    let mut yaml = String::new();
    for (i, locality) in clusters.iter().enumerate() {
        let name = (b'a' + i as u8) as char;
        yaml.push_str(&format!(
            "apiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {{name: {name}}}\n\
             spec: {{locality: {locality}, network: net-{name}}}\n---\n"
        ));
    }
    yaml.push_str(&format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: ns}}\n\
         spec:\n  hosts: [{HOST}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
         \x20 ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n"
    ));
    for (i, (locality, weight, labels)) in endpoints.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{address: 10.0.0.{}, locality: {locality}, weight: {weight}, labels: {{{labels}}}}}\n",
            i + 1
        ));
    }
    if !traffic_policy.is_empty() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: ns}}\n\
             spec:\n  host: {HOST}\n  trafficPolicy:\n{traffic_policy}\n"
        ));
    }
    let mut config = ConfigSet::new();
    config.add_text("mesh.yaml", &yaml);
    config.check_consistency();
    let errors: Vec<String> = config
        .diagnostics()
        .filter(|d| d.severity == fulcrum_policy::Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{yaml}");
    Topology::build(config.resources())
}

fn weights_after(topology: &Topology, inventory: &[(&str, u32, u32)]) -> ServiceWeights {
    let mut state = EngineState::default();
    let digest = HealthDigest {
        reporters: topology.clusters.keys().cloned().collect(),
        inventory: inventory
            .iter()
            .map(|(locality, ready, total)| InventorySample {
                cluster: "a".to_string(),
                service: HOST.to_string(),
                locality: locality.parse().unwrap(),
                inventory: Inventory {
                    total: *total,
                    ready: *ready,
                    ejected: 0,
                },
            })
            .collect(),
        ..HealthDigest::default()
    };
    engine::apply_digest(&mut state, &digest, 1_000);
    engine::tick(&mut state, topology, 1_000);
    engine::compute(&state, topology).remove(0)
}

fn row<'a>(weights: &'a ServiceWeights, source: &str) -> &'a SourceRow {
    let source: Locality = source.parse().unwrap();
    weights.subsets[0]
        .rows
        .iter()
        .find(|r| r.source == source)
        .expect("a row for the source")
}

/// `(locality, priority, weight)` of every entry, in locality order.
fn entries(weights: &ServiceWeights, row: &SourceRow) -> Vec<(String, u32, u32)> {
    row.entries
        .iter()
        .map(|e| {
            (
                weights.destination(e.locality).to_string(),
                e.priority,
                e.weight_bp,
            )
        })
        .collect()
}

const OUTLIER: &str =
    "    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s}";

#[test]
fn istio_failover_task_priorities_and_spill() {
    // Istio's failover task: caller in region1/zone1, failover region1 -> region2.
    let topology = mesh(
        &["region1/zone1"],
        &[
            ("region1/zone1", 1, ""),
            ("region1/zone2", 1, ""),
            ("region2/zone3", 1, ""),
            ("region3/zone4", 1, ""),
        ],
        &format!(
            "{OUTLIER}\n    loadBalancer:\n      localityLbSetting:\n        enabled: true\n\
             \x20       failover: [{{from: region1, to: region2}}]"
        ),
    );
    // region1/zone1 fully down: everything goes to the next priority, region1/zone2.
    let weights = weights_after(&topology, &[("region1/zone1", 0, 1)]);
    let row = row(&weights, "region1/zone1");
    assert_eq!(row.mode, RowMode::Failover);
    assert_eq!(
        entries(&weights, row),
        vec![
            ("region1/zone1".into(), 0, 0),
            ("region1/zone2".into(), 1, 10_000),
            ("region2/zone3".into(), 2, 0),
            ("region3/zone4".into(), 3, 0),
        ]
    );
}

#[test]
fn without_outlier_detection_everything_is_priority_0() {
    let topology = mesh(
        &["r1/z1"],
        &[("r1/z1", 1, ""), ("r1/z1", 1, ""), ("r2/z2", 1, "")],
        "    loadBalancer: {simple: ROUND_ROBIN}",
    );
    let weights = weights_after(&topology, &[]);
    let row = row(&weights, "r1/z1");
    assert_eq!(row.mode, RowMode::NoOutlierDetection);
    // Locality weight = endpoint count: 2 to 1.
    assert_eq!(
        entries(&weights, row),
        vec![("r1/z1".into(), 0, 6667), ("r2/z2".into(), 0, 3333)]
    );
}

#[test]
fn locality_weight_is_the_sum_of_endpoint_weights() {
    let topology = mesh(
        &["r1/z1"],
        &[("r1/z1", 3, ""), ("r2/z2", 1, "")],
        "    loadBalancer: {simple: ROUND_ROBIN}",
    );
    let weights = weights_after(&topology, &[]);
    assert_eq!(
        entries(&weights, row(&weights, "r1/z1")),
        vec![("r1/z1".into(), 0, 7500), ("r2/z2".into(), 0, 2500)]
    );
}

#[test]
fn distribute_uses_the_ceil_rule_and_no_failover() {
    // Two subzones in zone1 with 1 and 2 endpoints share 80 -> ceil(80/3) = 27 and
    // ceil(160/3) = 54; zone2 gets 20; region2 is matched by no `to` and gets nothing.
    let topology = mesh(
        &["region1/zone1/s1"],
        &[
            ("region1/zone1/s1", 1, ""),
            ("region1/zone1/s2", 1, ""),
            ("region1/zone1/s2", 1, ""),
            ("region1/zone2/s1", 1, ""),
            ("region2/zone1/s1", 1, ""),
        ],
        &format!(
            "{OUTLIER}\n    loadBalancer:\n      localityLbSetting:\n        distribute:\n\
             \x20       - from: region1/zone1/*\n          to: {{\"region1/zone1/*\": 80, \"region1/zone2/*\": 20}}"
        ),
    );
    let weights = weights_after(&topology, &[]);
    let row = row(&weights, "region1/zone1/s1");
    assert_eq!(row.mode, RowMode::Distribute(0));
    // 27 : 54 : 20 over 101.
    assert_eq!(
        entries(&weights, row),
        vec![
            ("region1/zone1/s1".into(), 0, 2673),
            ("region1/zone1/s2".into(), 0, 5347),
            ("region1/zone2/s1".into(), 0, 1980),
            ("region2/zone1/s1".into(), 0, 0),
        ]
    );
    assert!(matches!(
        row.entries[0].why,
        PriorityWhy::Distribute { weight: 27 }
    ));
}

#[test]
fn failover_priority_labels_come_first_then_locality() {
    // failoverPriority on the network label, plus a failover rule: p = p_label x 5 + p_loc.
    // The caller is cluster a on net-a in r1/z1.
    let topology = mesh(
        &["r1/z1"],
        &[
            ("r1/z1", 1, "topology.istio.io/network: net-a"),
            ("r2/z1", 1, "topology.istio.io/network: net-a"),
            ("r1/z2", 1, "topology.istio.io/network: net-b"),
            ("r3/z1", 1, "topology.istio.io/network: net-b"),
        ],
        &format!(
            "{OUTLIER}\n    loadBalancer:\n      localityLbSetting:\n        enabled: true\n\
             \x20       failoverPriority: [topology.istio.io/network]\n\
             \x20       failover: [{{from: r1, to: r3}}]"
        ),
    );
    let weights = weights_after(&topology, &[]);
    // Raw: r1/z1 0*5+0=0, r2/z1 0*5+4=4, r1/z2 1*5+2=7, r3/z1 1*5+3=8 -> 0, 1, 2, 3.
    let got: Vec<(String, u32)> = entries(&weights, row(&weights, "r1/z1"))
        .into_iter()
        .map(|(l, p, _)| (l, p))
        .collect();
    assert_eq!(
        got,
        vec![
            ("r1/z1".into(), 0),
            ("r1/z2".into(), 2),
            ("r2/z1".into(), 1),
            ("r3/z1".into(), 3),
        ]
    );
}

#[test]
fn failover_priority_alone_ignores_locality() {
    let topology = mesh(
        &["r1/z1"],
        &[
            ("r1/z1", 1, "topology.istio.io/network: net-b"),
            ("r2/z1", 1, "topology.istio.io/network: net-a"),
        ],
        &format!(
            "{OUTLIER}\n    loadBalancer:\n      localityLbSetting:\n        enabled: true\n\
             \x20       failoverPriority: [topology.istio.io/network]"
        ),
    );
    let weights = weights_after(&topology, &[]);
    // Same network beats same locality.
    assert_eq!(
        entries(&weights, row(&weights, "r1/z1")),
        vec![("r1/z1".into(), 1, 0), ("r2/z1".into(), 0, 10_000)]
    );
}

#[test]
fn locality_lb_disabled_is_one_priority() {
    let topology = mesh(
        &["r1/z1"],
        &[("r1/z1", 1, ""), ("r2/z1", 1, "")],
        &format!("{OUTLIER}\n    loadBalancer:\n      localityLbSetting: {{enabled: false}}"),
    );
    let weights = weights_after(&topology, &[]);
    let row = row(&weights, "r1/z1");
    assert_eq!(row.mode, RowMode::LocalityLbDisabled);
    assert_eq!(
        entries(&weights, row),
        vec![("r1/z1".into(), 0, 5000), ("r2/z1".into(), 0, 5000)]
    );
}

#[test]
fn envoy_71_percent_healthy_keeps_99_percent() {
    let topology = mesh(
        &["r1/z1"],
        &[("r1/z1", 1, ""), ("r2/z1", 1, "")],
        &format!("{OUTLIER}\n    loadBalancer: {{simple: ROUND_ROBIN}}"),
    );
    let weights = weights_after(&topology, &[("r1/z1", 71, 100), ("r2/z1", 100, 100)]);
    assert_eq!(
        entries(&weights, row(&weights, "r1/z1")),
        vec![("r1/z1".into(), 0, 9900), ("r2/z1".into(), 1, 100)]
    );
}

#[test]
fn panic_follows_min_health_percent() {
    // Two localities in the caller's region (priorities 0 and 1), each 1 of 5 ready.
    let policy = |min_health: u32| {
        format!(
            "    outlierDetection: {{consecutive5xxErrors: 5, minHealthPercent: {min_health}}}\n\
             \x20   loadBalancer: {{simple: ROUND_ROBIN}}"
        )
    };
    let endpoints = [("r1/z1", 1, ""), ("r1/z2", 1, "")];
    let inventory = [("r1/z1", 1, 5), ("r1/z2", 1, 5)];
    // Without panic: health 28 + 28 -> 50/50 by priority load.
    let weights = weights_after(&mesh(&["r1/z1"], &endpoints, &policy(0)), &inventory);
    let row_no_panic = entries(&weights, row(&weights, "r1/z1"));
    assert_eq!(row_no_panic[0].2 + row_no_panic[1].2, 10_000);
    assert!(!row(&weights, "r1/z1").priorities[0].panic);
    // With minHealthPercent 50: 20% < 50% and the total is under 100: panic.
    let weights = weights_after(&mesh(&["r1/z1"], &endpoints, &policy(50)), &inventory);
    assert!(row(&weights, "r1/z1").priorities[0].panic);
}

#[test]
fn subset_rows_use_only_the_subset_endpoints() {
    let topology = {
        let mut config = ConfigSet::new();
        config.add_text(
            "mesh.yaml",
            &format!(
                "apiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {{name: a}}\nspec: {{locality: r1/z1}}\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: ns}}\n\
                 spec:\n  hosts: [{HOST}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
                 \x20 endpoints:\n  - {{address: 10.0.0.1, locality: r1/z1, labels: {{version: v1}}}}\n\
                 \x20 - {{address: 10.0.0.2, locality: r2/z1, labels: {{version: v2}}}}\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: ns}}\n\
                 spec:\n  host: {HOST}\n  subsets:\n  - {{name: v2, labels: {{version: v2}}}}\n"
            ),
        );
        Topology::build(config.resources())
    };
    let weights = weights_after(&topology, &[]);
    let v2 = weights.subset("v2").unwrap();
    let got: Vec<(String, u32)> = v2.rows[0]
        .entries
        .iter()
        .map(|e| (weights.destination(e.locality).to_string(), e.weight_bp))
        .collect();
    assert_eq!(got, vec![("r2/z1".to_string(), 10_000)]);
}
