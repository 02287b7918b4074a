//! `fulcrumctl` against a running group: apply, status, explain, drain, events, members.

mod support;

use std::path::Path;

use clap::Parser;
use fulcrum_coordinator::ctl::{Cli, Outcome, run};
use support::Group;

/// Runs fulcrumctl with `args` against `group` (through node `node`), off the async
/// runtime (the command makes its own).
async fn ctl(group: &Group, node: u64, args: &[&str]) -> (Outcome, String, String) {
    let certs = support::certs_dir(group.dir.path());
    let mut argv: Vec<String> = vec!["fulcrumctl".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.push("--coordinator".into());
    argv.push(group.addresses[&node].clone());
    argv.push("--certs".into());
    argv.push(certs.display().to_string());
    tokio::task::spawn_blocking(move || {
        let cli = Cli::try_parse_from(&argv).expect("arguments parse");
        let mut out = Vec::new();
        let mut err = Vec::new();
        let outcome = run(cli, &mut out, &mut err);
        (
            outcome,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    })
    .await
    .expect("fulcrumctl ran")
}

fn sample_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local/config")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_explain_drain_and_events_through_any_node() {
    let group = Group::start(3).await;
    let (outcome, out, err) = ctl(&group, 2, &["apply", "-f", &sample_config()]).await;
    assert_eq!(outcome, Outcome::Ok, "{err}");
    assert!(out.contains("MeshCluster default/us-east created"), "{out}");
    assert!(out.contains("committed at log index"), "{out}");

    let (outcome, out, _) = ctl(&group, 3, &["apply", "-f", &sample_config(), "--dry-run"]).await;
    assert_eq!(outcome, Outcome::Ok);
    assert!(
        !out.contains("created"),
        "a second apply changes nothing: {out}"
    );

    let (outcome, out, err) = ctl(&group, 1, &["status", "-o", "json", "--consistent"]).await;
    assert_eq!(outcome, Outcome::Ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status["read"]["consistent"], true);
    assert_eq!(status["clusters"].as_array().map(Vec::len), Some(3));

    let (outcome, out, err) = ctl(&group, 3, &["explain", "checkout.shop.svc.cluster.local"]).await;
    assert_eq!(outcome, Outcome::Ok, "{err}");
    assert!(out.contains("from us-east/us-east-1a:"), "{out}");
    assert!(out.contains("failover rule"), "{out}");

    let (outcome, _, err) = ctl(&group, 1, &["drain", "atlantis", "--reason", "test"]).await;
    assert_eq!(outcome, Outcome::Invalid);
    assert!(err.contains("no MeshCluster named \"atlantis\""), "{err}");

    let (outcome, out, err) =
        ctl(&group, 2, &["drain", "eu-west", "--reason", "maintenance"]).await;
    assert_eq!(outcome, Outcome::Ok, "{err}");
    assert!(out.contains("eu-west drained"), "{out}");
    let (_, out, _) = ctl(
        &group,
        1,
        &[
            "explain",
            "checkout.shop.svc.cluster.local",
            "-o",
            "json",
            "--consistent",
        ],
    )
    .await;
    let explain: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(explain["drains"][0]["reason"], "maintenance");
    assert_eq!(
        explain["drains"][0]["requestedBy"],
        format!("spiffe://{}/fulcrum/admin/ops", support::TRUST_DOMAIN)
    );

    let (outcome, out, _) = ctl(&group, 3, &["events"]).await;
    assert_eq!(outcome, Outcome::Ok);
    assert!(
        out.contains("drained for every service: maintenance"),
        "{out}"
    );

    let (outcome, out, _) = ctl(&group, 1, &["members", "list"]).await;
    assert_eq!(outcome, Outcome::Ok);
    assert_eq!(
        out.lines().filter(|l| l.contains("yes")).count(),
        3,
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_is_refused_with_its_field_path() {
    let group = Group::start(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bad, namespace: shop}\nspec:\n  host: a.shop\n  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 150}\n",
    )
    .expect("write");
    let (outcome, _, err) = ctl(&group, 1, &["apply", "-f", &file.display().to_string()]).await;
    assert_eq!(outcome, Outcome::Invalid);
    assert!(
        err.contains("spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
        "{err}"
    );
}

/// When no listed coordinator can be reached, fulcrumctl names each one and why (not
/// tonic's bare "tcp connect error").
#[test]
fn no_coordinator_reachable_names_each_address_and_why() {
    // Two loopback ports nothing listens on any more.
    let closed = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    };
    let (a, b) = (closed(), closed());
    let cli = Cli::try_parse_from([
        "fulcrumctl",
        "status",
        "--insecure-dev",
        "--coordinator",
        &format!("{a},{b}"),
    ])
    .expect("arguments parse");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(run(cli, &mut out, &mut err), Outcome::Failed);
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("no coordinator could be reached"), "{err}");
    for address in [&a, &b] {
        assert!(err.contains(address.as_str()), "{err}");
    }
    assert!(err.to_lowercase().contains("refused"), "{err}");
}
