//! The coordinator session end to end, in-process: a real coordinator (one node, plaintext
//! development mode) pushes the mesh; the proxy routes on it, keeps it as its
//! last-known-good file, and a proxy restarted while no coordinator answers routes on it.

mod common;

use common::eventually;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fulcrum_coordinator::app::{Bootstrap, Coordinator, CoordinatorConfig, Security};
use fulcrum_coordinator::security::certs::{InitPlan, init};
use fulcrum_proxy::app::{Proxy, ProxyConfig};
use fulcrum_proxy::control::{self, CONNECT_TIMEOUT, ClientTls, ControlSettings, SNAPSHOT_FILE};
use fulcrum_proxy::downstream::ClientTimeouts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_r: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn mesh_yaml(backend: SocketAddr) -> String {
    format!(
        r#"apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {{name: east}}
spec:
  locality: us-east/us-east-1a
  network: net-east
  eastWestGateways: [{{address: 127.0.0.1, port: 15443}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hello, namespace: shop}}
spec:
  hosts: [hello.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-east/us-east-1a, labels: {{topology.istio.io/cluster: east}}}}
"#,
        backend.port()
    )
}

async fn get(address: SocketAddr, host: &str, path: &str) -> Option<(StatusCode, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::get(format!("http://{address}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = client.request(request).await.ok()?;
    let status = response.status();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn proxy_settings(coordinator: SocketAddr, state_dir: &Path) -> ProxyConfig {
    ProxyConfig {
        cluster: "east".into(),
        locality: "us-east/us-east-1a".parse().expect("locality"),
        outbound: "127.0.0.1:0".parse().expect("address"),
        admin: "127.0.0.1:0".parse().expect("address"),
        control: Some(ControlSettings {
            coordinators: vec![coordinator.to_string()],
            cluster: "east".into(),
            locality: "us-east/us-east-1a".parse().expect("locality"),
            proxy_id: "east-1".into(),
            state_dir: state_dir.to_path_buf(),
            tls: None,
        }),
        east_west: None,
        report_interval: Duration::from_secs(1),
        health_checks: None,
        workers: 2,
        client_timeouts: ClientTimeouts::default(),
        access_log: None,
        dns_refresh: fulcrum_proxy::dns::REFRESH,
        resolver: fulcrum_proxy::dns::Resolver::system(),
        config_files: None,
    }
}

#[tokio::test]
async fn a_proxy_routes_on_pushed_snapshots_and_on_the_last_known_good_without_coordinators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = backend().await;
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(config_dir.join("mesh.yaml"), mesh_yaml(backend)).expect("write config");
    let mut config = CoordinatorConfig::new(
        1,
        "127.0.0.1:0".parse().expect("address"),
        dir.path().join("node-1"),
        Security::InsecureDev,
    );
    config.bootstrap = Bootstrap::Init;
    config.config_dir = Some(config_dir);
    let coordinator = Coordinator::start(config)
        .await
        .expect("coordinator starts");
    let coordinator_address = coordinator.address();
    let state_dir = dir.path().join("proxy-state");

    let proxy = Proxy::start(proxy_settings(coordinator_address, &state_dir), None)
        .await
        .expect("proxy starts");
    let (outbound, admin) = (proxy.outbound_address(), proxy.admin_address());
    eventually(
        "the pushed mesh routes",
        Duration::from_secs(20),
        || async {
            match get(outbound, "hello.example", "/").await {
                Some((StatusCode::OK, body)) if body == "hello" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        get(admin, "admin", "/ready").await.map(|(s, _)| s),
        Some(StatusCode::OK)
    );
    assert!(
        state_dir.join(SNAPSHOT_FILE).exists(),
        "last-known-good written"
    );
    let version: u64 = get(admin, "admin", "/version")
        .await
        .and_then(|(_, v)| v.trim().parse().ok())
        .expect("a version");
    assert!(version > 0);
    let metrics = get(admin, "admin", "/metrics").await.expect("metrics").1;
    assert!(
        metrics.contains("fulcrum_proxy_coordinator_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("fulcrum_proxy_snapshot_version {version}")),
        "{metrics}"
    );

    // Every coordinator gone; a proxy started now routes on the last-known-good file.
    proxy.stop();
    drop(proxy);
    coordinator.stop().await;
    let restarted = Proxy::start(proxy_settings(coordinator_address, &state_dir), None)
        .await
        .expect("proxy restarts");
    let outbound = restarted.outbound_address();
    assert_eq!(
        get(restarted.admin_address(), "admin", "/ready")
            .await
            .map(|(s, _)| s),
        Some(StatusCode::OK),
        "ready at once on the last-known-good snapshot"
    );
    assert_eq!(
        get(outbound, "hello.example", "/").await,
        Some((StatusCode::OK, "hello".to_string()))
    );
}

#[tokio::test]
async fn a_damaged_last_known_good_file_is_not_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(SNAPSHOT_FILE), b"\xff\xff not a snapshot").expect("write");
    // No coordinator listens at this address: bound, not listening, for as long as the
    // test runs (a port let go could be taken by another test's coordinator).
    let held = tokio::net::TcpSocket::new_v4().expect("a socket");
    held.bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let nobody = held.local_addr().expect("address");
    let proxy = Proxy::start(proxy_settings(nobody, dir.path()), None)
        .await
        .expect("proxy starts");
    assert_eq!(
        get(proxy.admin_address(), "admin", "/ready")
            .await
            .map(|(s, _)| s),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    let answer = get(proxy.outbound_address(), "hello.example", "/").await;
    assert_eq!(
        answer.map(|(s, _)| s),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
}

#[tokio::test]
async fn connecting_to_a_coordinator_that_accepts_but_never_answers_gives_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    init(
        &InitPlan {
            trust_domain: "mesh.local".into(),
            coordinators: 1,
            clusters: vec!["east".into()],
            admins: vec![],
            valid_days: 1,
        },
        &certs,
    )
    .expect("certs init");
    // A frozen node: its kernel completes TCP connects into the backlog, and nothing
    // reads them, so the TLS handshake gets no answer.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = frozen.local_addr().expect("address").to_string();
    let mut settings = proxy_settings(frozen.local_addr().expect("address"), dir.path())
        .control
        .expect("control settings");
    settings.tls = Some(ClientTls::from_dir(&certs, "east").expect("client TLS"));
    let started = Instant::now();
    let connected =
        tokio::time::timeout(CONNECT_TIMEOUT * 5, control::connect(&settings, &address))
            .await
            .expect("connect gives up rather than waiting for the node");
    let error = connected.expect_err("nothing answered the handshake");
    assert!(error.contains("no connection within"), "{error}");
    assert!(
        started.elapsed() >= CONNECT_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    drop(frozen);
}
