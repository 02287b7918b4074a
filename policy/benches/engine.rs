//! The engine at mesh scale: 10,000 services across a mesh of 100 localities (10 regions
//! x 10 zones), three source localities (the mesh's three clusters), failover rules and
//! outlier detection, one service in seven failing where its clients are.
//!
//! Two shapes:
//! - `spread`: each service runs in 3 of the 100 localities (30,000 rows of 3 entries);
//! - `everywhere`: each service runs in all 100 (30,000 rows of 100 entries, 1,000,000
//!   localities to judge): the stress case.
//!
//! For each: `full_recompute` (fresh tables), `recompute_in_place` (into the tables a
//! coordinator already holds), `tick` (every verdict stepped once) and
//! `apply_digest_1000` (one digest of 1,000 traffic samples folded in).
//!
//! Run with `cargo bench -p fulcrum-policy`; figures go in docs/benchmarks.md.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use fulcrum_policy::Locality;
use fulcrum_policy::engine::digest::{HealthDigest, InventorySample, TrafficSample};
use fulcrum_policy::engine::split::FailoverRule;
use fulcrum_policy::engine::state::Inventory;
use fulcrum_policy::engine::topology::{
    ClusterInfo, DestLocality, Endpoint, LocalityIds, LocalityLb, Members, ServiceTopology, Source,
    SubsetTopology,
};
use fulcrum_policy::engine::window::Counters;
use fulcrum_policy::engine::{self, EngineState, Topology};
use fulcrum_policy::fulcrum::FailoverSettings;

const SERVICES: usize = 10_000;
const REGIONS: usize = 10;
const ZONES: usize = 10;

fn locality(i: usize) -> Locality {
    Locality::new(&format!("region-{}", i / ZONES), &format!("zone-{i}"), "")
}

fn cluster(i: usize) -> String {
    format!("cluster-{i}")
}

/// The localities service `s` runs in.
fn placement(s: usize, per_service: usize) -> Vec<usize> {
    let all = REGIONS * ZONES;
    if per_service >= all {
        return (0..all).collect();
    }
    let mut places: Vec<usize> = [0usize, 37, 74]
        .iter()
        .take(per_service)
        .map(|offset| (s * 7 + offset) % all)
        .collect();
    places.sort_unstable();
    places.dedup();
    places
}

fn topology(per_service: usize) -> Topology {
    let localities: Vec<Locality> = (0..REGIONS * ZONES).map(locality).collect();
    let clusters: BTreeMap<String, ClusterInfo> = [0, 37, 74]
        .iter()
        .map(|&i| {
            (
                cluster(i),
                ClusterInfo {
                    name: cluster(i),
                    locality: localities[i].clone(),
                    network: String::new(),
                },
            )
        })
        .collect();
    let sources = clusters
        .values()
        .map(|c| Source {
            locality: c.locality.clone(),
            ids: LocalityIds::default(),
            clusters: vec![c.name.clone()],
            labels: BTreeMap::new(),
        })
        .collect();
    let rules: Vec<FailoverRule> = (0..REGIONS)
        .map(|r| FailoverRule {
            from: format!("region-{r}"),
            to: format!("region-{}", (r + 1) % REGIONS),
        })
        .collect();
    let services = (0..SERVICES)
        .map(|s| {
            let host = format!("svc-{s:05}.ns.svc.cluster.local");
            let places = placement(s, per_service);
            let dest = places
                .iter()
                .map(|&i| DestLocality {
                    locality: localities[i].clone(),
                    ids: LocalityIds::default(),
                    owners: vec![cluster(i)],
                    owner_positions: Vec::new(),
                    endpoints: 3,
                })
                .collect();
            let members = (0..places.len())
                .map(|i| Members {
                    locality: i,
                    endpoints: vec![
                        Endpoint {
                            weight: 1,
                            labels: BTreeMap::new(),
                        };
                        3
                    ],
                })
                .collect();
            let service = ServiceTopology {
                host: host.clone(),
                localities: dest,
                destinations: Arc::from(Vec::new()),
                layout: 0,
                subsets: vec![SubsetTopology {
                    name: String::new(),
                    locality_lb: LocalityLb::Failover {
                        rules: rules.clone(),
                        labels: Vec::new(),
                        enabled: true,
                        rule_ids: Vec::new(),
                    },
                    panic_percent: 0,
                    members,
                    member_sizes: Vec::new(),
                }],
                settings: FailoverSettings::default(),
                policy: None,
            };
            (host, service)
        })
        .collect();
    Topology {
        clusters,
        sources,
        services,
    }
    .finish()
}

/// A state where every cluster reports, each service has traffic toward its sources'
/// localities and one locality in ten has lost an endpoint.
fn state(topology: &Topology, per_service: usize) -> EngineState {
    let mut state = EngineState::default();
    let mut digest = HealthDigest {
        reporters: topology.clusters.keys().cloned().collect(),
        ..HealthDigest::default()
    };
    for (s, host) in topology.services.keys().enumerate() {
        for (i, source) in topology.sources.iter().enumerate() {
            let failing = (s + i) % 7 == 0;
            let places = placement(s, per_service);
            digest.traffic.push(TrafficSample {
                service: host.clone(),
                source_cluster: source.clusters[0].clone(),
                locality: locality(places[i % places.len()]),
                counters: Counters {
                    requests: 100,
                    http_5xx: if failing { 90 } else { 1 },
                    ..Counters::default()
                },
            });
        }
        for l in placement(s, per_service)
            .into_iter()
            .filter(|l| l % 10 == s % 10)
        {
            digest.inventory.push(InventorySample {
                cluster: cluster(l),
                service: host.clone(),
                locality: locality(l),
                inventory: Inventory {
                    total: 3,
                    ready: 2,
                    ejected: 0,
                },
            });
        }
    }
    engine::apply_digest(&mut state, &digest, 1_000);
    engine::tick(&mut state, topology, 1_000);
    engine::apply_digest(&mut state, &digest, 2_000);
    engine::tick(&mut state, topology, 2_000);
    state
}

fn digest_of_1000(topology: &Topology, per_service: usize) -> HealthDigest {
    let hosts: Vec<&String> = topology.services.keys().collect();
    HealthDigest {
        reporters: topology.clusters.keys().cloned().collect(),
        traffic: (0..1_000)
            .map(|k| TrafficSample {
                service: hosts[(k * 7919) % hosts.len()].clone(),
                source_cluster: cluster([0, 37, 74][k % 3]),
                locality: locality(
                    placement((k * 7919) % hosts.len(), per_service)[k % 3 % per_service.min(3)],
                ),
                counters: Counters {
                    requests: 50,
                    http_5xx: (k % 5) as u64,
                    ..Counters::default()
                },
            })
            .collect(),
        ..HealthDigest::default()
    }
}

fn bench_shape(c: &mut Criterion, name: &str, per_service: usize) {
    let topology = topology(per_service);
    let state = state(&topology, per_service);
    let rows: usize = engine::compute(&state, &topology)
        .iter()
        .map(|w| w.subsets.iter().map(|s| s.rows.len()).sum::<usize>())
        .sum();
    assert_eq!(rows, SERVICES * 3);

    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.bench_function("full_recompute", |b| {
        b.iter(|| engine::compute(&state, &topology))
    });
    // As the coordinator runs it: recomputing into the tables it already holds.
    let mut tables = engine::compute(&state, &topology);
    group.bench_function("recompute_in_place", |b| {
        b.iter(|| engine::compute::compute_into(&state, &topology, &mut tables))
    });
    // Ticks and digests change the state they fold into; each works on its own copy, a
    // second later every time, as the coordinator does.
    let mut ticked = state.clone();
    let mut now_ms = 2_000;
    group.bench_function("tick", |b| {
        b.iter(|| {
            now_ms += 1_000;
            engine::tick(&mut ticked, &topology, now_ms)
        })
    });
    let digest = digest_of_1000(&topology, per_service);
    let mut folded = state.clone();
    let mut now_ms = 2_000;
    group.sample_size(100);
    group.bench_function("apply_digest_1000", |b| {
        b.iter(|| {
            now_ms += 250;
            engine::apply_digest(&mut folded, &digest, now_ms)
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    bench_shape(c, "spread_10000_services_3_of_100_localities", 3);
    bench_shape(
        c,
        "everywhere_10000_services_100_localities",
        REGIONS * ZONES,
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
