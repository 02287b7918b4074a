//! `fulcrumctl simulate`, run as the binary users run: the exit code says whether the
//! expectations hold (0), fail (1) or the input is unusable (2); failures print expected
//! against actual; `-o json` is one document.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn simulate(config: &Path, scenario: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fulcrumctl"))
        .arg("simulate")
        .arg("-f")
        .arg(config)
        .arg("--scenario")
        .arg(scenario)
        .args(extra)
        .output()
        .expect("fulcrumctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sample_config() -> PathBuf {
    repo_root().join("deploy/local/config")
}

fn scratch(name: &str, body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

#[test]
fn the_outage_scenario_holds_and_explains_the_spill() {
    let out = simulate(
        &sample_config(),
        &repo_root().join("deploy/local/scenarios/outage.yaml"),
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains(
            "us-east/us-east-1a: Failed since 6.0s (5xx 100% of 600 req in 1s >= 50%) -> 0; \
         spill 100% to us-central/us-central-1a (priority 1, failover rule us-east->us-central)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "event 6.0s checkout.shop.svc.cluster.local us-east/us-east-1a: Healthy -> Failed"
        ),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("result: all 6 expectations hold\n"),
        "{stdout}"
    );
}

#[test]
fn a_failed_expectation_exits_1_with_expected_and_actual() {
    let (_dir, scenario) = scratch(
        "wrong.yaml",
        "steps:\n- at: 0s\n  health:\n  - {service: checkout.shop.svc.cluster.local, locality: us-east/us-east-1a, requests: 100, errors5xx: 100}\n\
         - at: 3s\n  expect:\n  - service: checkout.shop.svc.cluster.local\n    source: us-east/us-east-1a\n    weights: {us-east/us-east-1a: 10000}\n",
    );
    let out = simulate(&sample_config(), &scenario, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "expect checkout.shop.svc.cluster.local from us-east/us-east-1a: FAILED (tolerance 0)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("    expected: {us-east/us-east-1a: 10000}\n"),
        "{stdout}"
    );
    assert!(stdout.contains("    actual:   {eu-west/eu-west-1a: 0, us-central/us-central-1a: 10000, us-east/us-east-1a: 0}\n"), "{stdout}");
    assert!(
        stdout.ends_with("result: 1 of 1 expectations FAILED\n"),
        "{stdout}"
    );
}

#[test]
fn tolerance_allows_a_difference() {
    let (_dir, scenario) = scratch(
        "close.yaml",
        "steps:\n- at: 0s\n  health:\n  - {service: checkout.shop.svc.cluster.local, locality: us-east/us-east-1a, ready: 71, total: 100}\n\
         - at: 1s\n  expect:\n  - service: checkout.shop.svc.cluster.local\n    source: us-east/us-east-1a\n    weights: {us-east/us-east-1a: 9950, us-central/us-central-1a: 50}\n    tolerance: 50\n",
    );
    let out = simulate(&sample_config(), &scenario, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn json_output_is_one_document_with_rows_and_events() {
    let out = simulate(
        &sample_config(),
        &repo_root().join("deploy/local/scenarios/failback-ramp.yaml"),
        &["-o", "json"],
    );
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["ok"], true);
    let steps = doc["steps"].as_array().unwrap();
    let ramp_start = steps.iter().find(|s| s["atMs"] == 34_000).unwrap();
    let row = ramp_start["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["service"] == "checkout.shop.svc.cluster.local"
                && r["subset"] == ""
                && r["source"] == "us-east/us-east-1a"
        })
        .unwrap();
    let east = row["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["destination"] == "us-east/us-east-1a")
        .unwrap();
    assert_eq!(east["weightBp"], 2000);
    assert_eq!(east["verdict"], "Recovering");
    assert!(
        east["explanation"]
            .as_str()
            .unwrap()
            .contains("ramp at 20% of full weight")
    );
    assert!(
        ramp_start["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["to"] == "Recovering")
    );
}

#[test]
fn bad_scenarios_exit_2_naming_the_field() {
    let (_dir, scenario) = scratch(
        "bad.yaml",
        "tick: 1s\nsteps:\n- at: 0s\n  health:\n  - {service: checkout.shop.svc.cluster.local, locality: us-east/us-east-1a, requets: 5}\n",
    );
    let out = simulate(&sample_config(), &scenario, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the scenario is invalid"), "{stderr}");
    assert!(stderr.contains(
        "bad.yaml: line 5: steps[0].health[0].requets: unknown field \"requets\"; did you mean \"requests\"?"
    ), "{stderr}");

    let (_dir, scenario) = scratch("unknown.yaml", "steps:\n- at: 0s\n  silent: [mars]\n");
    let out = simulate(&sample_config(), &scenario, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("steps[0].silent[0]: no MeshCluster is named \"mars\""),
        "{stderr}"
    );

    let out = simulate(
        &sample_config(),
        Path::new("/nonexistent/scenario.yaml"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/scenario.yaml"));
}

#[test]
fn an_invalid_configuration_exits_2() {
    let (dir, _) = scratch(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: x\n  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 150}\n",
    );
    let out = simulate(
        dir.path(),
        &repo_root().join("deploy/local/scenarios/outage.yaml"),
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the configuration cannot be used"),
        "{stderr}"
    );
    assert!(
        stderr.contains("maxEjectionPercent: 150 is not a percentage"),
        "{stderr}"
    );
}
