//! The whole loop in-process: proxies report to different nodes, digests commit, the
//! engine moves the weights, and subscribers are pushed the new version. Plus the
//! metrics port and the watched config directory.

mod support;

use std::time::Duration;

use fulcrum_coordinator::app::{Bootstrap, Coordinator};
use fulcrum_coordinator::security::Role;
use fulcrum_proto::common::v1::Locality;
use fulcrum_proto::control::v1 as control;
use fulcrum_proto::control::v1::proxy_control_client::ProxyControlClient;
use fulcrum_proto::status::v1 as pb;
use fulcrum_proto::status::v1::admin_client::AdminClient;
use support::{Group, MESH, eventually};

fn locality(region: &str) -> Option<Locality> {
    Some(Locality {
        region: region.into(),
        zone: format!("{region}-1a"),
        subzone: String::new(),
    })
}

/// East's proxy subscribing to `node`: the answer, and the sender of its stream (kept
/// open while the subscription is to last).
async fn subscribe_east(
    group: &Group,
    node: u64,
) -> (
    Result<tonic::Response<tonic::Streaming<control::Snapshot>>, tonic::Status>,
    tokio::sync::mpsc::Sender<control::SubscribeRequest>,
) {
    let (hello_tx, hello_rx) = tokio::sync::mpsc::channel(8);
    hello_tx
        .send(control::SubscribeRequest {
            message: Some(control::subscribe_request::Message::Hello(control::Hello {
                cluster: "east".into(),
                locality: locality("us-east"),
                proxy_id: "east-1".into(),
                last_version: 0,
            })),
        })
        .await
        .expect("hello");
    let answer = ProxyControlClient::new(group.channel_as(node, Role::Proxy("east".into())))
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(hello_rx))
        .await;
    (answer, hello_tx)
}

/// One report: `requests` toward api in `to`, `failed` of them 503, plus the reporter's
/// own inventory.
fn report(
    cluster: &str,
    region: &str,
    to: &str,
    requests: u64,
    failed: u64,
    seq: u64,
) -> control::HealthReport {
    control::HealthReport {
        cluster: cluster.into(),
        proxy_id: format!("{cluster}-1"),
        locality: locality(region),
        interval_ms: 250,
        sequence: seq,
        destinations: vec![control::DestinationCounters {
            service: "api.shop.svc.cluster.local".into(),
            cluster: if to == "us-west" {
                "west".into()
            } else {
                "east".into()
            },
            locality: locality(to),
            requests,
            http_5xx: failed,
            gateway_errors: failed,
            connect_failures: 0,
            latency: None,
        }],
        inventory: vec![control::EndpointInventory {
            service: "api.shop.svc.cluster.local".into(),
            locality: locality(region),
            total: 1,
            ready: 1,
            ejected: 0,
        }],
        gateways: vec![],
    }
}

/// The weight of `to` in the api row from us-east, as node `id` sees it.
fn weight_from_east(group: &Group, id: u64, to: &str) -> Option<u32> {
    group.nodes[&id].node().state.read(|a| {
        let w = a.mesh.weights().get("api.shop.svc.cluster.local")?;
        let east = w
            .subsets
            .first()?
            .rows
            .iter()
            .find(|r| r.source.region == "us-east")?;
        east.entries
            .iter()
            .find(|e| w.destination(e.locality).region == to)
            .map(|e| e.weight_bp)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_to_any_node_move_the_weights_and_subscribers_are_pushed() {
    let group = Group::start(3).await;
    AdminClient::new(group.admin(1))
        .apply(pb::ApplyRequest {
            documents: vec![pb::Document {
                source: "mesh.yaml".into(),
                text: MESH.into(),
            }],
            dry_run: false,
        })
        .await
        .expect("mesh");

    // East subscribes to node 3.
    let (subscribed, _hello) = subscribe_east(&group, 3).await;
    let mut snapshots = subscribed.expect("subscribe").into_inner();
    let first = snapshots
        .message()
        .await
        .expect("stream")
        .expect("a snapshot");

    // East reports to node 1, west to node 2: west is answering 503 to everything.
    let mut east = ProxyControlClient::new(group.channel_as(1, Role::Proxy("east".into())));
    let mut west = ProxyControlClient::new(group.channel_as(2, Role::Proxy("west".into())));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut seq = 0;
    loop {
        seq += 1;
        east.report(tokio_stream::iter(vec![report(
            "east", "us-east", "us-west", 400, 400, seq,
        )]))
        .await
        .expect("east reports");
        west.report(tokio_stream::iter(vec![report(
            "west", "us-west", "us-west", 400, 400, seq,
        )]))
        .await
        .expect("west reports");
        let weight = weight_from_east(&group, 3, "us-west");
        if weight == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "traffic from us-east never left us-west: weight {weight:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(weight_from_east(&group, 3, "us-east"), Some(10_000));

    // The subscriber gets a newer version whose row sends nothing to us-west.
    let west_weight = |s: &control::Snapshot| {
        s.weights.first().and_then(|row| {
            row.entries
                .iter()
                .find(|e| {
                    e.destination
                        .as_ref()
                        .is_some_and(|d| d.region == "us-west")
                })
                .map(|e| (e.weight_bp, e.explanation.clone()))
        })
    };
    let pushed = loop {
        let snapshot = tokio::time::timeout_at(deadline, snapshots.message())
            .await
            .expect("a snapshot before the deadline")
            .expect("stream ok")
            .expect("stream open");
        if west_weight(&snapshot).is_some_and(|(w, _)| w == 0) {
            break snapshot;
        }
    };
    assert!(pushed.version > first.version);
    let (_, explanation) = west_weight(&pushed).expect("west entry");
    assert!(explanation.contains("5xx 100%"), "{explanation}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_certs(dir.path(), 1);
    let mut c = support::config(dir.path(), 1, "127.0.0.1:0");
    c.bootstrap = Bootstrap::Init;
    c.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    let node = Coordinator::start(c).await.expect("starts");
    let at = node.metrics_address().expect("metrics address");
    let text = eventually(Duration::from_secs(5), "metrics with a term", || async {
        let body = http_get(at).await.map_err(|e| e.to_string())?;
        if body.contains("fulcrum_coordinator_raft_term 1")
            && body.contains("fulcrum_coordinator_raft_is_leader 1")
        {
            Ok(body)
        } else {
            Err(body.lines().take(5).collect::<Vec<_>>().join(" | "))
        }
    })
    .await;
    for name in [
        "fulcrum_coordinator_raft_applied_index",
        "fulcrum_coordinator_raft_apply_lag",
        "fulcrum_coordinator_reports_coalesced_total",
        "fulcrum_coordinator_connected_proxies",
        "fulcrum_coordinator_push_latency_seconds_bucket",
        "fulcrum_coordinator_digest_batch_reports_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    node.stop().await;
}

async fn http_get(at: std::net::SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(at).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_directory_is_applied_and_watched() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_certs(dir.path(), 1);
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    std::fs::write(config_dir.join("mesh.yaml"), MESH).expect("write");
    let mut c = support::config(dir.path(), 1, "127.0.0.1:0");
    c.bootstrap = Bootstrap::Init;
    c.config_dir = Some(config_dir.clone());
    let node = Coordinator::start(c).await.expect("starts");
    let count = |kind: &'static str| {
        node.node()
            .state
            .read(|a| a.mesh.objects().filter(|(s, _)| s.key.kind == kind).count())
    };
    eventually(Duration::from_secs(10), "the directory applied", || async {
        if count("MeshCluster") == 2 {
            Ok(())
        } else {
            Err(format!("{} clusters", count("MeshCluster")))
        }
    })
    .await;
    // A broken file is refused as a whole; what was applied stays.
    std::fs::write(config_dir.join("bad.yaml"), "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec: {host: \"\"}\n").expect("write");
    std::fs::write(config_dir.join("north.yaml"), "apiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {name: north}\nspec: {locality: eu-north/eu-north-1a}\n").expect("write");
    std::fs::remove_file(config_dir.join("bad.yaml")).expect("fix");
    eventually(Duration::from_secs(10), "the new file applied", || async {
        if count("MeshCluster") == 3 {
            Ok(())
        } else {
            Err(format!("{} clusters", count("MeshCluster")))
        }
    })
    .await;
    node.stop().await;
}

/// A node out of touch with its group (here the only one left of three) ends the
/// subscriptions it holds and refuses new ones, saying why, and says so in its Raft
/// status; back in touch, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_its_group_sends_proxies_elsewhere_until_it_is_back() {
    let mut group = Group::start(3).await;
    let raft = |group: &Group, node: u64| {
        let channel = group.admin(node);
        async move {
            pb::status_client::StatusClient::new(channel)
                .get_raft(pb::GetRaftRequest {})
                .await
                .expect("raft status")
                .into_inner()
        }
    };
    let leader = group.leader().await;
    let survivor = (1..=3).find(|n| *n != leader).expect("a follower");
    let (held, _keep) = subscribe_east(&group, survivor).await;
    let mut held = held.expect("subscribed while in touch").into_inner();
    assert!(!raft(&group, survivor).await.cut_off);
    for other in (1..=3).filter(|n| *n != survivor) {
        group.stop(other).await;
    }
    // No leader reaches it: after 3 s it is cut off, and its subscription ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match held.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription ends");
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("out of touch"), "{status}");
    let (refused, _keep) = subscribe_east(&group, survivor).await;
    let refused = refused.expect_err("a new subscription is refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    let status = raft(&group, survivor).await;
    assert!(
        status.cut_off && status.out_of_touch_ms >= 3_000,
        "{status:?}"
    );
    // The others back: a leader again, and the node serves.
    for other in (1..=3).filter(|n| *n != survivor) {
        group.restart(other).await;
    }
    eventually(Duration::from_secs(15), "back in touch", || async {
        match subscribe_east(&group, survivor).await.0 {
            Ok(_) => Ok(()),
            Err(status) => Err(status.to_string()),
        }
    })
    .await;
    assert!(!raft(&group, survivor).await.cut_off);
}
