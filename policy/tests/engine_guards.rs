//! The blast-radius guards, through the scenario runner: `neverDrainLast` keeps the last
//! locality that could serve, `maxDrained` caps the engine's removals but never an
//! operator's drain.

use fulcrum_policy::ConfigSet;
use fulcrum_policy::engine::Topology;
use fulcrum_policy::scenario::{Scenario, simulate};

fn mesh(guards: &str) -> Topology {
    let mut config = ConfigSet::new();
    config.add_text(
        "mesh.yaml",
        &format!(
            "apiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {{name: a}}\nspec: {{locality: r1/z1}}\n---\n\
             apiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {{name: b}}\nspec: {{locality: r2/z1}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: api, namespace: ns}}\n\
             spec:\n  hosts: [api.ns.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
             \x20 endpoints:\n  - {{address: 10.0.0.1, locality: r1/z1}}\n  - {{address: 10.0.1.1, locality: r2/z1}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: ns}}\n\
             spec:\n  host: api.ns.svc.cluster.local\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 5}}\n---\n\
             apiVersion: fulcrum.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: api, namespace: ns}}\n\
             spec:\n  host: api.ns.svc.cluster.local\n  damping: {{degradeAfter: 1s}}\n  guards: {guards}\n"
        ),
    );
    assert!(!config.has_errors(), "{config}");
    Topology::build(config.resources())
}

/// Runs a scenario and returns whether every expectation held, with the failures.
fn holds(topology: &Topology, scenario: &str) -> Result<(), String> {
    let scenario = Scenario::parse(scenario).map_err(|p| format!("{p:?}"))?;
    let problems = scenario.check(topology);
    assert!(problems.is_empty(), "{problems:?}");
    let outcome = simulate(topology, &scenario);
    let failed: Vec<String> = outcome
        .steps
        .iter()
        .flat_map(|s| {
            s.expectations
                .iter()
                .filter(|e| !e.ok)
                .map(move |e| format!("at {}ms: {e:?}", s.at_ms))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

const BOTH_FAIL: &str = "steps:\n\
- at: 0s\n  health:\n  - {service: api.ns.svc.cluster.local, locality: r1/z1, requests: 100}\n\
  \x20 - {service: api.ns.svc.cluster.local, locality: r2/z1, requests: 100}\n\
- at: 5s\n  health:\n  - {service: api.ns.svc.cluster.local, locality: r1/z1, requests: 100, errors5xx: 100}\n\
- at: 7s\n  expect:\n  - {service: api.ns.svc.cluster.local, source: r1/z1, weights: {r2/z1: 10000}}\n\
  \x20 health:\n  - {service: api.ns.svc.cluster.local, locality: r2/z1, requests: 100, errors5xx: 100}\n\
- at: 9s\n  expect:\n  - {service: api.ns.svc.cluster.local, source: r1/z1, weights: {LAST}}\n";

#[test]
fn never_drain_last_keeps_the_last_locality_that_failed() {
    let topology = mesh("{maxDrained: 2, neverDrainLast: true}");
    // r2/z1 failed last: it stays in service, on readiness alone.
    assert_eq!(
        holds(&topology, &BOTH_FAIL.replace("LAST", "r2/z1: 10000")),
        Ok(())
    );
}

#[test]
fn without_never_drain_last_everything_can_go() {
    let topology = mesh("{maxDrained: 2, neverDrainLast: false}");
    // Both out, no panic threshold (outlierDetection sets it to 0): nothing routes.
    assert_eq!(holds(&topology, &BOTH_FAIL.replace("LAST", "")), Ok(()));
}

#[test]
fn max_drained_keeps_the_second_failure_in() {
    let topology = mesh("{maxDrained: 1, neverDrainLast: false}");
    assert_eq!(
        holds(&topology, &BOTH_FAIL.replace("LAST", "r2/z1: 10000")),
        Ok(())
    );
}

#[test]
fn never_drain_last_overrides_a_drain_of_the_last_locality() {
    let topology = mesh("{maxDrained: 2, neverDrainLast: true}");
    let scenario = "steps:\n\
        - at: 0s\n  health:\n  - {service: api.ns.svc.cluster.local, locality: r1/z1, ready: 0, total: 1}\n\
        - at: 2s\n  drain: [{locality: r2/z1, reason: test}]\n\
        - at: 3s\n  expect:\n  - {service: api.ns.svc.cluster.local, source: r1/z1, weights: {r2/z1: 10000}}\n";
    assert_eq!(holds(&topology, scenario), Ok(()));
}
