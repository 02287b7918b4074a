//! Wire conversions: everything that goes out comes back the same, and everything a peer
//! could get wrong is refused with the field named.

use fulcrum_policy::health::{
    DestinationCounters, EndpointInventory, GatewayReachability, HealthReport, LatencySummary,
};
use fulcrum_policy::weights::{Signals, Verdict, WeightEntry, WeightRow};
use fulcrum_policy::{ConfigSet, Diagnostic, Duration, Locality, Resource};
use fulcrum_proto::common::v1 as common;
use fulcrum_proto::control::v1 as control;
use fulcrum_proto::convert::WireError;
use proptest::prelude::*;
use prost::Message;

const EVERY_KIND: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: checkout, namespace: shop}
spec:
  hosts: [checkout.shop.svc.cluster.local]
  http:
  - route:
    - destination: {host: checkout.shop.svc.cluster.local, subset: v1}
      weight: 90
    - destination: {host: checkout.shop.svc.cluster.local, subset: v2}
      weight: 10
    retries: {attempts: 2, perTryTimeout: 250ms, retryOn: "5xx,connect-failure"}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: checkout, namespace: shop}
spec:
  host: checkout.shop.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s}
    loadBalancer:
      localityLbSetting:
        failover: [{from: us-east, to: us-central}]
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: checkout, namespace: shop}
spec:
  hosts: [checkout.shop.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 18080}, locality: us-east/us-east-1a, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: checkout-vm, namespace: shop}
spec: {address: 127.0.0.2, locality: eu-west/eu-west-1a, labels: {app: checkout}}
---
apiVersion: fulcrum.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: checkout, namespace: shop}
spec:
  host: checkout.shop.svc.cluster.local
  thresholds: {degrade: {http5xx: 40%}, recover: {http5xx: 5%}}
  damping: {degradeAfter: 1s, recoverAfter: 20s, rampStep: 20%}
  capacity: [{locality: us-central/us-central-1a, maxRequestsPerSecond: 500}]
  guards: {maxDrained: 1}
---
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {name: us-east}
spec:
  locality: us-east/us-east-1a
  network: east
  eastWestGateways: [{address: 127.0.0.1, port: 15443}]
"#;

fn every_kind() -> Vec<Resource> {
    let mut config = ConfigSet::new();
    config.add_text("every-kind.yaml", EVERY_KIND);
    let errors: Vec<String> = config.diagnostics().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    config.resources().cloned().collect()
}

#[test]
fn every_kind_of_resource_round_trips_through_the_wire() {
    let resources = every_kind();
    assert_eq!(resources.len(), 6);
    for resource in resources {
        let wire = common::Resource::from(&resource);
        let bytes = wire.encode_to_vec();
        let decoded = common::Resource::decode(bytes.as_slice()).unwrap();
        assert_eq!(Resource::try_from(&decoded).unwrap(), resource);
    }
}

#[test]
fn a_resource_the_validator_rejects_is_refused_with_its_diagnostics() {
    let mut wire = common::Resource::from(&every_kind()[1]);
    let text = String::from_utf8(wire.json.clone()).unwrap().replace(
        "\"consecutive5xxErrors\":5",
        "\"consecutive5xxErrors\":5,\"maxEjectionPercent\":300",
    );
    wire.json = text.into_bytes();
    let err = Resource::try_from(&wire).unwrap_err();
    let WireError::InvalidResource { field, diagnostics } = &err else {
        panic!("expected InvalidResource, got {err}");
    };
    assert_eq!(field, "json");
    assert!(
        diagnostics.iter().any(|d| d.path.to_string()
            == "spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
        "{diagnostics:#?}"
    );
    assert!(err.to_string().contains("maxEjectionPercent"), "{err}");
}

#[test]
fn an_envelope_that_misnames_its_document_is_refused() {
    let mut wire = common::Resource::from(&every_kind()[0]);
    wire.name = "payments".to_string();
    let err = Resource::try_from(&wire).unwrap_err();
    assert_eq!(err.field(), "json");
    assert!(err.to_string().contains("envelope says"), "{err}");
}

#[test]
fn garbage_resource_bytes_are_refused_not_panicked_on() {
    for json in [&b"\xff\xfe"[..], b"{", b"[]", b"{\"apiVersion\": 3}", b""] {
        let wire = common::Resource {
            kind: "DestinationRule".into(),
            namespace: "shop".into(),
            name: "x".into(),
            json: json.to_vec(),
        };
        assert!(Resource::try_from(&wire).is_err(), "{json:?}");
    }
}

#[test]
fn localities_must_be_well_formed() {
    let bad = [
        ("", "zone-a", "", "region"),
        ("r", "", "sub", "zone"),
        ("r/x", "", "", "region"),
        ("r", "*", "", "zone"),
    ];
    for (region, zone, subzone, field) in bad {
        let l = common::Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        };
        let err = Locality::try_from(&l).unwrap_err();
        assert_eq!(err.field(), field, "{err}");
    }
}

fn entry(zone: &str, weight_bp: u32) -> WeightEntry {
    WeightEntry {
        destination: Locality::new("us-east", zone, ""),
        weight_bp,
        priority: 1,
        priority_reason: "same region".into(),
        verdict: Verdict::Degraded,
        verdict_since_ms: 12_000,
        signals: Signals {
            ready_endpoints: 2,
            total_endpoints: 3,
            requests: 1204,
            http_5xx: 1168,
            gateway_errors: 3,
            connect_failures: 0,
            window: Duration::from_secs(10),
        },
        explanation: "us-east/us-east-1b: Degraded since 12.0s".into(),
    }
}

#[test]
fn weight_rows_that_do_not_add_up_are_refused() {
    let row = WeightRow {
        service: "checkout".into(),
        subset: String::new(),
        source: Locality::new("us-east", "us-east-1a", ""),
        entries: vec![entry("us-east-1a", 6000), entry("us-east-1b", 3999)],
    };
    let err = WeightRow::try_from(&common::WeightRow::from(&row)).unwrap_err();
    assert_eq!(err.field(), "entries");
    assert!(err.to_string().contains("9999"), "{err}");
}

#[test]
fn an_unspecified_verdict_is_refused_at_its_field() {
    let row = WeightRow {
        service: "checkout".into(),
        subset: String::new(),
        source: Locality::new("us-east", "us-east-1a", ""),
        entries: vec![entry("us-east-1a", 10_000)],
    };
    let mut wire = common::WeightRow::from(&row);
    wire.entries[0].verdict = 0;
    assert_eq!(
        WeightRow::try_from(&wire).unwrap_err().field(),
        "entries[0].verdict"
    );
    wire.entries[0].verdict = 99;
    assert_eq!(
        WeightRow::try_from(&wire).unwrap_err().field(),
        "entries[0].verdict"
    );
}

#[test]
fn diagnostics_round_trip() {
    let mut config = ConfigSet::new();
    config.add_text(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\n\
         spec: {host: x, extra: 1, subsets: [{name: Bad_Name}]}\n",
    );
    let diagnostics: Vec<Diagnostic> = config.diagnostics().cloned().collect();
    assert!(diagnostics.len() >= 2, "{diagnostics:#?}");
    for d in diagnostics {
        let wire = common::Diagnostic::from(&d);
        assert_eq!(Diagnostic::try_from(&wire).unwrap(), d);
    }
}

fn report(destinations: Vec<DestinationCounters>) -> HealthReport {
    HealthReport {
        cluster: "us-east".into(),
        proxy_id: "us-east-proxy-0".into(),
        locality: Locality::new("us-east", "us-east-1a", ""),
        interval: Duration::from_secs(1),
        sequence: 7,
        destinations,
        inventory: vec![EndpointInventory {
            service: "checkout".into(),
            locality: Locality::new("us-east", "us-east-1a", ""),
            total: 3,
            ready: 3,
            ejected: 0,
        }],
        gateways: vec![GatewayReachability {
            cluster: "eu-west".into(),
            address: "127.0.0.1:15443".into(),
            reachable: false,
            error: "connection refused".into(),
        }],
    }
}

#[test]
fn inconsistent_reports_are_refused_naming_the_entry() {
    let r = report(vec![DestinationCounters {
        service: "checkout".into(),
        cluster: "eu-west".into(),
        locality: Locality::new("eu-west", "eu-west-1a", ""),
        requests: 10,
        http_5xx: 4,
        gateway_errors: 5,
        connect_failures: 0,
        latency: LatencySummary::default(),
    }]);
    let err = HealthReport::try_from(&control::HealthReport::from(&r)).unwrap_err();
    assert_eq!(err.field(), "destinations");
    assert!(err.to_string().contains("destinations[0]"), "{err}");

    let mut wire = control::HealthReport::from(&report(Vec::new()));
    wire.locality = None;
    assert_eq!(
        HealthReport::try_from(&wire).unwrap_err().field(),
        "locality"
    );
    wire.locality = Some(common::Locality::default());
    wire.inventory[0].locality = None;
    assert_eq!(
        HealthReport::try_from(&wire).unwrap_err().field(),
        "inventory[0].locality"
    );
}

#[test]
fn the_descriptor_set_describes_every_service() {
    let set = prost_types::FileDescriptorSet::decode(fulcrum_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut services: Vec<String> = set
        .file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| format!("{}.{}", f.package(), s.name()))
        })
        .collect();
    services.sort();
    assert_eq!(
        services,
        [
            "fulcrum.control.v1.ProxyControl",
            "fulcrum.raft.v1.Raft",
            "fulcrum.status.v1.Admin",
            "fulcrum.status.v1.Status",
        ]
    );
}

fn locality() -> impl Strategy<Value = Locality> {
    ("[a-z]{1,6}", "[a-z0-9-]{0,6}", "[a-z0-9]{0,3}").prop_map(|(r, z, s)| {
        let s = if z.is_empty() { String::new() } else { s };
        Locality::new(&r, &z, &s)
    })
}

fn counters() -> impl Strategy<Value = DestinationCounters> {
    (
        "[a-z]{1,8}",
        locality(),
        0u64..1_000_000,
        0u64..=100,
        0u64..=100,
        0u64..=100,
    )
        .prop_map(|(service, locality, requests, p5, pg, pc)| {
            let http_5xx = requests * p5 / 200;
            let connect_failures = requests * pc / 200;
            DestinationCounters {
                cluster: locality.region.clone(),
                service,
                locality,
                requests,
                http_5xx,
                gateway_errors: http_5xx * pg / 100,
                connect_failures,
                latency: LatencySummary {
                    p50_us: 900,
                    p90_us: 2_000,
                    p99_us: 9_000,
                    max_us: 40_000,
                },
            }
        })
}

proptest! {
    #[test]
    fn consistent_reports_round_trip(destinations in proptest::collection::vec(counters(), 0..8)) {
        let r = report(destinations);
        let bytes = control::HealthReport::from(&r).encode_to_vec();
        let wire = control::HealthReport::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(HealthReport::try_from(&wire).unwrap(), r);
    }

    #[test]
    fn valid_weight_rows_round_trip(
        source in locality(),
        splits in proptest::collection::vec(0u32..=10_000, 1..6),
    ) {
        // Turn arbitrary numbers into a split that adds up to exactly 10000.
        let sum: u64 = splits.iter().map(|s| u64::from(*s)).sum::<u64>().max(1);
        let mut weights: Vec<u32> =
            splits.iter().map(|s| (u64::from(*s) * 10_000 / sum) as u32).collect();
        let short = 10_000 - weights.iter().sum::<u32>();
        weights[0] += short;
        let row = WeightRow {
            service: "checkout".into(),
            subset: "v1".into(),
            source,
            entries: weights
                .iter()
                .enumerate()
                .map(|(i, w)| entry(&format!("zone-{i}"), *w))
                .collect(),
        };
        let bytes = common::WeightRow::from(&row).encode_to_vec();
        let wire = common::WeightRow::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(WeightRow::try_from(&wire).unwrap(), row);
    }
}
