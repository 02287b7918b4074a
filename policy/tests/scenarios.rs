//! The scenarios shipped for the sample mesh (`deploy/local/scenarios/`) hold against the
//! sample configuration (`deploy/local/config/`): each is read, checked against the
//! configuration and replayed, and every expectation must hold.

use std::path::{Path, PathBuf};

use fulcrum_policy::engine::Topology;
use fulcrum_policy::scenario::{Scenario, simulate};
use fulcrum_policy::{ConfigSet, Severity};

fn deploy(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local")
        .join(part)
}

fn sample_topology() -> Topology {
    let mut config = ConfigSet::new();
    config.add_path(&deploy("config"));
    config.check_consistency();
    assert!(
        config.diagnostics().all(|d| d.severity != Severity::Error),
        "the sample configuration has errors"
    );
    Topology::build(config.resources())
}

#[test]
fn every_shipped_scenario_holds_on_the_sample_mesh() {
    let topology = sample_topology();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("scenarios"))
        .expect("deploy/local/scenarios")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for required in [
        "outage",
        "partial-5xx",
        "flapping",
        "drain",
        "silent-cluster",
        "failback-ramp",
    ] {
        assert!(
            files
                .iter()
                .any(|f| f.file_stem().is_some_and(|s| s == required)),
            "{required}.yaml is missing"
        );
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let scenario =
            Scenario::parse(&text).unwrap_or_else(|p| panic!("{}: {p:?}", file.display()));
        let problems = scenario.check(&topology);
        assert!(problems.is_empty(), "{}: {problems:?}", file.display());
        let outcome = simulate(&topology, &scenario);
        let expectations: usize = outcome.steps.iter().map(|s| s.expectations.len()).sum();
        assert!(expectations > 0, "{} expects nothing", file.display());
        for step in &outcome.steps {
            if let Some(e) = step.expectations.iter().find(|e| !e.ok) {
                panic!(
                    "{} step {}: {} from {}: expected {:?}, got {:?}",
                    file.display(),
                    step.index,
                    e.service,
                    e.source,
                    e.expected,
                    e.actual
                );
            }
        }
    }
}

#[test]
fn a_scenario_naming_what_the_mesh_lacks_is_refused_with_paths() {
    let topology = sample_topology();
    let scenario = Scenario::parse(
        "steps:\n- at: 0s\n  health:\n  - {service: nope.shop.svc.cluster.local, locality: us-east/us-east-1a}\n\
         \x20 silent: [mars]\n  expect:\n  - {service: checkout.shop.svc.cluster.local, source: eu-west/eu-west-9z, weights: {}}\n",
    )
    .unwrap();
    let problems: Vec<String> = scenario
        .check(&topology)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].starts_with("steps[0].health[0].service: no ServiceEntry"),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with("steps[0].silent[0]: no MeshCluster is named \"mars\""),
        "{problems:#?}"
    );
    assert!(
        problems[2].starts_with("steps[0].expect[0].source: eu-west/eu-west-9z is not a source"),
        "{problems:#?}"
    );
}

#[test]
fn simulation_is_deterministic() {
    let topology = sample_topology();
    let text = std::fs::read_to_string(deploy("scenarios/flapping.yaml")).unwrap();
    let scenario = Scenario::parse(&text).unwrap();
    let a = serde_json::to_string(&simulate(&topology, &scenario)).unwrap();
    let b = serde_json::to_string(&simulate(&topology, &scenario)).unwrap();
    assert_eq!(a, b);
}
