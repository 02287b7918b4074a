//! A drill against a mesh reached only through its coordinators' API (`fulcrum-drill run
//! FILE --mesh ADDR`): the harness starts a local mesh, and the drill sees it only as
//! `fulcrumctl` and the proxies' outbound listeners do.

use std::time::Duration;

use fulcrum_chaos::drill::{self, Action, Fault, Plan, Target};
use fulcrum_chaos::harness::{Binaries, Mesh, MeshSpec, SERVICE};
use fulcrum_chaos::remote::{Connection, RemoteMesh};
use fulcrum_chaos::scenario::Drill;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_through_the_admin_api_moves_traffic_and_process_faults_are_skipped() {
    // Built first (a no-op when fresh): `cargo test -p fulcrum-chaos` alone does not
    // rebuild the other packages' binaries, and a drill must not run stale ones.
    let bins = Binaries::locate(true).expect("the mesh's binaries");
    let mut spec = MeshSpec::local();
    // Quick failback, so the undrain's ramp is seen within the run.
    spec.damping = "    recoverAfter: 1s\n    rampStep: 50%".into();
    let mut mesh = Mesh::start(spec.clone(), bins.clone(), None)
        .await
        .expect("the mesh starts");
    mesh.wait_ready(Duration::from_secs(60))
        .await
        .expect("the mesh is ready");
    let connection = Connection {
        coordinators: mesh
            .coordinators
            .iter()
            .map(|c| c.address.to_string())
            .collect::<Vec<_>>()
            .join(","),
        certs: Some(mesh.dir.join("certs")),
        admin: None,
        insecure_dev: false,
    };
    let proxies: Vec<(String, std::net::SocketAddr)> = mesh
        .proxies
        .iter()
        .map(|p| (spec.clusters[p.cluster].name.clone(), p.outbound))
        .collect();

    // A service the mesh does not have, and a proxy in no cluster of it: refused, named.
    let unknown = RemoteMesh::connect(
        bins.ctl.clone(),
        connection.clone(),
        "nowhere.example".into(),
        &proxies,
    );
    let error = unknown.err().expect("an unknown service is refused");
    assert!(error.to_string().contains("nowhere.example"), "{error}");
    let stray = vec![("mars".to_string(), proxies[0].1)];
    let error = RemoteMesh::connect(bins.ctl.clone(), connection.clone(), SERVICE.into(), &stray)
        .err()
        .expect("a proxy of an unknown cluster is refused");
    assert!(error.to_string().contains("mars"), "{error}");

    let mut remote = RemoteMesh::connect(bins.ctl.clone(), connection, SERVICE.into(), &proxies)
        .expect("the mesh is reached through its API");
    // The mesh's clusters, in its order (by name), with their localities.
    let clusters = remote.clusters();
    assert_eq!(
        clusters,
        [
            ("eu-west".to_string(), "eu-west/eu-west-1a".to_string()),
            ("us-central".into(), "us-central/us-central-1a".into()),
            ("us-east".into(), "us-east/us-east-1a".into()),
        ]
    );
    let us_east = remote.cluster("us-east").expect("us-east");

    let plan = Plan {
        name: "drained-through-the-api".into(),
        warmup: Duration::from_secs(3),
        fault: Some(Fault::Drain { cluster: us_east }),
        fault_for: Duration::from_secs(5),
        after: Duration::from_secs(8),
        rate: 200,
        // Needs process control: skipped, with a note.
        actions: vec![(Duration::from_secs(4), Action::KillLeader)],
    };
    let (_keep, never) = tokio::sync::watch::channel(false);
    let r = drill::run(&mut remote, plan, |_| {}, never)
        .await
        .expect("the drill runs");
    println!("{}", r.summary());

    assert!(!r.fault_skipped, "{}", r.summary());
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("KillLeader") && n.contains("skipped")),
        "{:?}",
        r.notes
    );
    // Every coordinator still runs: the skipped action was not done.
    let leader = mesh.leader_within(Duration::from_secs(10)).await;
    assert!(leader.is_some(), "a leader, as before");
    // The drain committed and reached every proxy: traffic left us-east at once and no
    // client saw an error; the undrain brought it back.
    let detect = r.time_to_detect_ms.expect("the drain changed the weights");
    assert!(
        detect <= 1_000,
        "time to detect {detect} ms\n{}",
        r.summary()
    );
    let shift = r.time_to_shift_ms.expect("traffic left us-east");
    assert!(shift <= 2_000, "time to shift {shift} ms\n{}", r.summary());
    assert_eq!(r.errors, 0, "{}", r.summary());
    assert!(r.time_to_failback_ms.is_some(), "{}", r.summary());
    assert_eq!(r.weight_regressions, 0, "{}", r.summary());
    assert!(r.config_lost.is_empty(), "{}", r.summary());
    // The same drill's expectations, as a file would state them, hold.
    let drill = Drill::parse(
        "name: drained\nwarmup: 3s\nfault: {kind: drain, cluster: us-east}\nfaultFor: 5s\nafter: 8s\nexpect: {timeToShiftMax: 2s, errorsMax: 0, failback: true}\n",
        &spec,
    )
    .expect("a drain drill file");
    assert_eq!(drill.check(&r), Vec::<String>::new());
}
