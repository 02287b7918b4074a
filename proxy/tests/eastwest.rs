//! Across clusters, in-process: a real coordinator (one node, plaintext development mode)
//! pushes weights to two proxies, `east` and `west`, which talk to each other over h2 with
//! mTLS from `fulcrumctl certs init` certificates. Checks the pushed split is followed,
//! that a retry moves to another locality, and that the east-west listener refuses every
//! peer that is not a proxy of the mesh.

mod common;
mod grpc;
mod upload;
mod websocket;

use common::eventually;
use websocket::{UPGRADE_KEY, read_until, upgrade_request, websocket_endpoint};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fulcrum_coordinator::app::{Bootstrap, Coordinator, CoordinatorConfig, Security};
use fulcrum_coordinator::security::certs::{InitPlan, init};
use fulcrum_proto::status::v1::GetServiceRequest;
use fulcrum_proto::status::v1::status_client::StatusClient;
use fulcrum_proxy::app::{EastWestSettings, Proxy, ProxyConfig};
use fulcrum_proxy::control::ControlSettings;
use fulcrum_proxy::downstream::ClientTimeouts;
use fulcrum_proxy::outbound::{CLUSTER_HEADER, HOP_HEADER, UPSTREAM_HEADER};
use fulcrum_proxy::transport::MeshTls;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const EAST: &str = "us-east/us-east-1a";
const WEST: &str = "us-west/us-west-1a";

/// A backend answering `status` with its name, counting requests and echoing the hop
/// mark and the size of the request's body; on `/big`, the answer is [`BIG_ANSWER`]
/// bytes, on `/huge` [`HUGE_ANSWER`].
async fn backend(name: &'static str, status: StatusCode) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |r: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let hop = r
                        .headers()
                        .get(HOP_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let path = r.uri().path().to_string();
                    async move {
                        let received = r.into_body().collect().await.map(|b| b.to_bytes());
                        let size = received.map_or(-1, |b| b.len() as i64);
                        let body = match path.as_str() {
                            "/big" => Bytes::from(vec![b'x'; BIG_ANSWER]),
                            "/huge" => huge_answer(),
                            _ => Bytes::from(name),
                        };
                        let mut response = Response::new(Full::new(body));
                        *response.status_mut() = status;
                        let headers = response.headers_mut();
                        headers.insert("x-seen-hop", hop.parse().expect("header"));
                        headers.insert("x-seen-body-bytes", size.into());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, seen)
}

/// The size of a backend's answer on `/big`: over the flow-control window an east-west
/// stream offers, so crossing it takes window updates.
const BIG_ANSWER: usize = 3 * 1024 * 1024;

/// The size of a backend's answer on `/huge`: more than the socket buffers between a
/// proxy and a client that does not read can hold, so that the rest waits in the
/// proxies, in the flow-control windows of its east-west stream.
const HUGE_ANSWER: usize = 16 * 1024 * 1024;

/// [`HUGE_ANSWER`] bytes, made once and shared by every answer.
fn huge_answer() -> Bytes {
    static HUGE: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    HUGE.get_or_init(|| Bytes::from(vec![b'x'; HUGE_ANSWER]))
        .clone()
}

fn certs(dir: &Path, trust_domain: &str) -> PathBuf {
    let out = dir.join(format!("certs-{trust_domain}"));
    init(
        &InitPlan {
            trust_domain: trust_domain.into(),
            coordinators: 1,
            clusters: vec!["east".into(), "west".into()],
            admins: vec![],
            valid_days: 1,
        },
        &out,
    )
    .expect("certs init");
    out
}

/// The mesh: two clusters, one `checkout` endpoint in each, a DestinationRule with
/// `policy` (under `loadBalancer`) and outlier detection, and a VirtualService.
fn mesh_yaml(
    east_backend: SocketAddr,
    west_backend: SocketAddr,
    gateways: (SocketAddr, SocketAddr),
    locality_lb: &str,
    http_route: &str,
) -> String {
    format!(
        r#"apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {{name: east}}
spec:
  locality: {EAST}
  eastWestGateways: [{{address: 127.0.0.1, port: {east_gw}}}]
---
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {{name: west}}
spec:
  locality: {WEST}
  eastWestGateways: [{{address: 127.0.0.1, port: {west_gw}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: checkout, namespace: shop}}
spec:
  hosts: [checkout.shop]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {east}}}, locality: {EAST}, labels: {{topology.istio.io/cluster: east}}}}
  - {{address: 127.0.0.1, ports: {{http: {west}}}, locality: {WEST}, labels: {{topology.istio.io/cluster: west}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: checkout, namespace: shop}}
spec:
  host: checkout.shop
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1000, interval: 1s, baseEjectionTime: 30s}}
    loadBalancer:
      localityLbSetting:
        enabled: true
{locality_lb}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: checkout, namespace: shop}}
spec:
  hosts: [checkout.shop]
  http:
  - route:
    - destination: {{host: checkout.shop}}
{http_route}
"#,
        east = east_backend.port(),
        west = west_backend.port(),
        east_gw = gateways.0.port(),
        west_gw = gateways.1.port(),
    )
}

fn settings(cluster: &str, locality: &str, coordinator: SocketAddr, dir: &Path) -> ProxyConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    ProxyConfig {
        cluster: cluster.into(),
        locality: locality.parse().expect("locality"),
        outbound: any,
        admin: any,
        control: Some(ControlSettings {
            coordinators: vec![coordinator.to_string()],
            cluster: cluster.into(),
            locality: locality.parse().expect("locality"),
            proxy_id: format!("{cluster}-1"),
            state_dir: dir.join(format!("state-{cluster}")),
            tls: None,
        }),
        east_west: Some(EastWestSettings {
            listen: any,
            certs: dir.join("certs-mesh.local"),
        }),
        report_interval: Duration::from_millis(250),
        health_checks: None,
        workers: 2,
        client_timeouts: ClientTimeouts::default(),
        access_log: None,
        dns_refresh: fulcrum_proxy::dns::REFRESH,
        resolver: fulcrum_proxy::dns::Resolver::system(),
        config_files: None,
    }
}

struct Mesh {
    _dir: tempfile::TempDir,
    coordinator: Coordinator,
    east: Proxy,
    west: Proxy,
    east_seen: Arc<AtomicU64>,
    west_seen: Arc<AtomicU64>,
    certs: PathBuf,
    /// The directory the coordinator reads the mesh's configuration from.
    config_dir: PathBuf,
}

async fn mesh(east_status: StatusCode, locality_lb: &str, http_route: &str) -> Mesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs(dir.path(), "mesh.local");
    let (east_backend, east_seen) = backend("east", east_status).await;
    let (west_backend, west_seen) = backend("west", StatusCode::OK).await;
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let mut config = CoordinatorConfig::new(
        1,
        "127.0.0.1:0".parse().expect("address"),
        dir.path().join("node-1"),
        Security::InsecureDev,
    );
    config.bootstrap = Bootstrap::Init;
    config.config_dir = Some(config_dir.clone());
    let coordinator = Coordinator::start(config).await.expect("coordinator");
    let east = Proxy::start(
        settings("east", EAST, coordinator.address(), dir.path()),
        None,
    )
    .await
    .expect("east starts");
    let west = Proxy::start(
        settings("west", WEST, coordinator.address(), dir.path()),
        None,
    )
    .await
    .expect("west starts");
    let gateways = (
        east.east_west_address().expect("east-west"),
        west.east_west_address().expect("east-west"),
    );
    // Written once the gateways' ports are known; the coordinator watches the directory.
    std::fs::write(
        config_dir.join("mesh.yaml"),
        mesh_yaml(
            east_backend,
            west_backend,
            gateways,
            locality_lb,
            http_route,
        ),
    )
    .expect("write config");
    Mesh {
        _dir: dir,
        coordinator,
        east,
        west,
        east_seen,
        west_seen,
        certs,
        config_dir,
    }
}

/// The locality rule sending every request from the east cluster to the west one.
const EVERYTHING_WEST: &str =
    "        distribute:\n        - from: us-east/*\n          to: {\"us-west/*\": 100}";

/// Waits until the proxy at `east` sends `host`'s requests to the west cluster, which
/// answers them.
async fn served_in_west(east: SocketAddr, host: &'static str) {
    let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("address");
    eventually(
        &format!("east sends {host}'s requests to the west cluster"),
        Duration::from_secs(20),
        || async move {
            match get_from(east, localhost, host, &[]).await {
                Some((StatusCode::OK, headers)) if served_by(&headers).1 == "west" => Ok(()),
                Some((status, headers)) => Err(format!("{status} {headers:?}")),
                None => Err("no answer".into()),
            }
        },
    )
    .await;
}

/// Status, serving cluster and body of a GET through a proxy's outbound listener.
async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
) -> Option<(StatusCode, String, String)> {
    let request = Request::get(format!("http://{proxy}/"))
        .header("host", "checkout.shop")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = client.request(request).await.ok()?;
    let status = response.status();
    let cluster = response
        .headers()
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, cluster, String::from_utf8_lossy(&body).into_owned()))
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pushed_split_across_clusters_is_followed_within_two_percent() {
    let distribute = "        distribute:\n        - from: us-east/*\n          to: {\"us-east/*\": 70, \"us-west/*\": 30}";
    let mesh = mesh(StatusCode::OK, distribute, "").await;
    let client = client();
    let proxy = mesh.east.outbound_address();
    eventually(
        "the east proxy sends some traffic west",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                match get(&client, proxy).await {
                    Some((StatusCode::OK, cluster, _)) if cluster == "west" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut counts = (0u32, 0u32, 0u32);
            for _ in 0..625 {
                match get(&client, proxy).await {
                    Some((StatusCode::OK, c, _)) if c == "east" => counts.0 += 1,
                    Some((StatusCode::OK, c, _)) if c == "west" => counts.1 += 1,
                    _ => counts.2 += 1,
                }
            }
            counts
        });
    }
    let (mut east, mut west, mut other) = (0, 0, 0);
    for c in tasks.join_all().await {
        east += c.0;
        west += c.1;
        other += c.2;
    }
    assert_eq!(other, 0, "every request answered 200 by a cluster");
    assert!(
        east.abs_diff(7_000) <= 200,
        "east {east} of 10000, west {west}"
    );
    assert!(
        west.abs_diff(3_000) <= 200,
        "west {west} of 10000, east {east}"
    );
    // The admin port shows the pushed row: its weights and where each destination is.
    let admin = |path: &'static str| {
        let client = client.clone();
        let address = mesh.east.admin_address();
        async move {
            let request = Request::get(format!("http://{address}{path}"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = client.request(request).await.expect("admin answers");
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    let metrics = admin("/metrics").await;
    assert!(
        metrics.contains(r#"fulcrum_proxy_weight_basis_points{service="checkout.shop",subset="",destination="us-west/us-west-1a"} 3000"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("fulcrum_proxy_snapshot_age_seconds "),
        "{metrics}"
    );
    let dump: serde_json::Value = serde_json::from_str(&admin("/config_dump").await).expect("JSON");
    let west = &dump["weights"][0]["destinations"][1];
    assert_eq!(
        (west["weightBp"].as_u64(), &west["place"]["cluster"]),
        (Some(3000), &serde_json::json!("west")),
        "{dump}"
    );
    // Each request was served once, by the cluster that answered.
    let served = mesh.east_seen.load(Ordering::Relaxed) + mesh.west_seen.load(Ordering::Relaxed);
    assert!(served >= 10_000, "backends saw {served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_in_another_locality_succeeds() {
    let failover = "        failover:\n        - {from: us-east, to: us-west}";
    let retries = "    retries: {attempts: 2, retryOn: 5xx, retryRemoteLocalities: true}";
    let mesh = mesh(StatusCode::SERVICE_UNAVAILABLE, failover, retries).await;
    let client = client();
    let proxy = mesh.east.outbound_address();
    // Ready once the pushed row names the west cluster's gateway.
    eventually(
        "a request through east is served",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                match get(&client, proxy).await {
                    Some((StatusCode::OK, cluster, body))
                        if cluster == "west" && body == "west" =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    // The local endpoint was tried first every time (its 503s are what moved the retry).
    let before = mesh.east_seen.load(Ordering::Relaxed);
    let (status, cluster, _) = get(&client, proxy).await.expect("answered");
    assert_eq!((status, cluster.as_str()), (StatusCode::OK, "west"));
    assert!(mesh.west_seen.load(Ordering::Relaxed) >= 2);
    assert!(before >= 1, "the east endpoint was tried");
    // The proxies' reports of east's 5xx reach the coordinator, whose next push sends
    // east's traffic west on the first try: the east endpoint is no longer tried.
    eventually(
        "the coordinator moves east's traffic west",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            let seen = mesh.east_seen.clone();
            async move {
                let before = seen.load(Ordering::Relaxed);
                for _ in 0..20 {
                    get(&client, proxy).await;
                }
                match seen.load(Ordering::Relaxed) - before {
                    0 => Ok(()),
                    n => Err(format!("east still tried {n} times in 20 requests")),
                }
            }
        },
    )
    .await;
}

/// A service with two ports whose endpoints are in another cluster: the receiving proxy
/// serves the port the sending one chose, the authority's, or the route's
/// `destination.port`, which it is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_port_a_request_names_holds_across_clusters() {
    let mesh = mesh(StatusCode::OK, EVERYTHING_WEST, "").await;
    let (web, _) = backend("web", StatusCode::OK).await;
    let (admin, _) = backend("admin", StatusCode::OK).await;
    let config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: multi, namespace: shop}}
spec:
  hosts: [multi.shop]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 8080, name: http-admin, protocol: HTTP}}
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}, http-admin: {}}}, locality: {WEST}, labels: {{topology.istio.io/cluster: west}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: admin, namespace: shop}}
spec:
  hosts: [admin.shop]
  http:
  - route: [{{destination: {{host: multi.shop, port: {{number: 8080}}}}}}]
"#,
        web.port(),
        admin.port()
    );
    std::fs::write(mesh.config_dir.join("multi.yaml"), config).expect("write config");
    let east = mesh.east.outbound_address();
    let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("address");
    served_in_west(east, "admin.shop").await;
    for (host, expected) in [
        ("multi.shop", web),
        ("multi.shop:8080", admin),
        ("admin.shop", admin),
    ] {
        for _ in 0..5 {
            let (status, headers) = get_from(east, localhost, host, &[]).await.expect("answer");
            assert_eq!(status, StatusCode::OK, "{host}");
            assert_eq!(
                served_by(&headers),
                (expected.to_string(), "west".into()),
                "{host}"
            );
        }
    }
}

/// A VirtualService whose host is not its destination's, named short: the sending proxy
/// resolves both and tells the receiving one which service it routed to, as the
/// authority (`front`) names none there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_another_service_is_served_across_clusters() {
    let mesh = mesh(StatusCode::OK, EVERYTHING_WEST, "").await;
    std::fs::write(
        mesh.config_dir.join("front.yaml"),
        "apiVersion: networking.istio.io/v1\n\
         kind: VirtualService\n\
         metadata: {name: front, namespace: shop}\n\
         spec:\n  \
           hosts: [front]\n  \
           http:\n  \
           - route:\n    \
             - destination: {host: checkout.shop}\n",
    )
    .expect("write config");
    let east = mesh.east.outbound_address();
    let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("address");
    served_in_west(east, "front").await;
    let before = mesh.west_seen.load(Ordering::Relaxed);
    for _ in 0..10 {
        let (status, headers) = get_from(east, localhost, "front.shop", &[])
            .await
            .expect("answer");
        assert_eq!(
            (status, served_by(&headers).1.as_str()),
            (StatusCode::OK, "west")
        );
    }
    assert_eq!(mesh.west_seen.load(Ordering::Relaxed) - before, 10);
}

/// A peer that drains sends GOAWAY on the connection the sending proxy has to it: the
/// next requests go on a new connection (the draining peer still serves them), and
/// none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_draining_peer_move_to_a_new_connection_and_none_fails() {
    let mesh = mesh(StatusCode::OK, EVERYTHING_WEST, "").await;
    let east = mesh.east.outbound_address();
    let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("address");
    served_in_west(east, "checkout.shop").await;
    mesh.west.drain();
    for i in 0..20 {
        let (status, headers) = get_from(east, localhost, "checkout.shop", &[])
            .await
            .expect("answer");
        assert_eq!(
            (status, served_by(&headers).1.as_str()),
            (StatusCode::OK, "west"),
            "request {i} after the drain began: {headers:?}"
        );
    }
}

/// Clients that stop reading large answers from another cluster hold those answers
/// back, and no other: the receiving proxy's connection-wide flow-control window is not
/// what stops them (only each stream's own is), so the other requests on the same
/// east-west connection are answered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_hold_back_no_other_answer_across_clusters() {
    let mesh = mesh(StatusCode::OK, EVERYTHING_WEST, "").await;
    let east = mesh.east.outbound_address();
    served_in_west(east, "checkout.shop").await;
    // Four stalled answers on each worker's connection: each would hold a stream's
    // whole window (2 MiB) of the connection's.
    let before = mesh.west_seen.load(Ordering::SeqCst);
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(east).await.expect("connect");
        let request = "GET /huge HTTP/1.1\r\nhost: checkout.shop\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("write");
        stalled.push(stream);
    }
    let seen = mesh.west_seen.clone();
    eventually(
        "the stalled requests reach the west cluster",
        Duration::from_secs(10),
        || {
            let seen = seen.clone();
            async move {
                match seen.load(Ordering::SeqCst) - before {
                    8.. => Ok(()),
                    n => Err(format!("{n} of 8")),
                }
            }
        },
    )
    .await;
    // Small requests, each on a connection of its own (to either worker), answered in
    // time while those answers wait.
    for i in 0..40 {
        let mut stream = TcpStream::connect(east).await.expect("connect");
        let request = "GET / HTTP/1.1\r\nhost: checkout.shop\r\nconnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("write");
        let answer = read_until(&mut stream, "\r\n\r\nwest").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "request {i}: {answer}");
    }
    drop(stalled);
}

/// A WebSocket upgrade to a service whose only endpoint is in another cluster: the
/// sending proxy carries it as an h2 extended CONNECT to the other cluster's proxy,
/// which makes the upgrade to its endpoint; the client sees `101` and a tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_carried_to_another_cluster() {
    let mesh = mesh(StatusCode::OK, "", "").await;
    let (heads, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let endpoint = websocket_endpoint(heads).await;
    std::fs::write(
        mesh.config_dir.join("chat.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\n\
             kind: ServiceEntry\n\
             metadata: {{name: chat, namespace: shop}}\n\
             spec:\n  \
               hosts: [chat.shop]\n  \
               location: MESH_INTERNAL\n  \
               resolution: STATIC\n  \
               ports: [{{number: 80, name: http, protocol: HTTP}}]\n  \
               endpoints:\n  \
               - {{address: 127.0.0.1, ports: {{http: {}}}, locality: {WEST}, labels: {{topology.istio.io/cluster: west}}}}\n",
            endpoint.port()
        ),
    )
    .expect("write config");
    let east = mesh.east.outbound_address();
    let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("address");
    // Ready once a plain request to the service crosses (the endpoint refuses it: 400).
    eventually(
        "east reaches chat.shop in the west cluster",
        Duration::from_secs(20),
        || async move {
            match get_from(east, localhost, "chat.shop", &[]).await {
                Some((StatusCode::BAD_REQUEST, headers)) if served_by(&headers).1 == "west" => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    while seen.try_recv().is_ok() {}

    let mut stream = TcpStream::connect(east).await.expect("connect");
    stream
        .write_all(upgrade_request("chat.shop", "/room/7").as_bytes())
        .await
        .expect("write");
    let answer = read_until(&mut stream, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{answer}");
    assert!(lower.contains("sec-websocket-accept: "), "{answer}");
    let head = seen.recv().await.expect("the endpoint read the upgrade");
    let head_lower = head.to_ascii_lowercase();
    assert!(head.starts_with("GET /room/7 HTTP/1.1\r\n"), "{head}");
    let key = format!("sec-websocket-key: {}", UPGRADE_KEY.to_ascii_lowercase());
    assert!(head_lower.contains(&key), "{head}");
    assert!(head_lower.contains("x-fulcrum-hop: east->west"), "{head}");
    // Named by the proxy that saw the client, and the name carried across.
    assert!(head_lower.contains("\r\nx-request-id: "), "{head}");
    // Bytes both ways through both proxies, larger than a frame and a window update.
    let big = "w".repeat(200_000);
    for message in ["hello", big.as_str()] {
        stream.write_all(message.as_bytes()).await.expect("write");
        let echoed = read_until(&mut stream, message).await;
        assert!(echoed.ends_with(message));
    }
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("closed once the client is done")
        .expect("read");
    assert!(rest.is_empty());
}

/// A ServiceEntry `name` (namespace shop, host `name.shop`) with one port, 9000, named
/// `port_name` (and of the `protocol` given, if any), and its one endpoint, at `endpoint`
/// on loopback, in the west cluster.
fn west_grpc_entry(
    name: &str,
    (port_name, protocol): (&str, Option<&str>),
    endpoint: u16,
) -> String {
    let protocol = protocol.map_or(String::new(), |p| format!(", protocol: {p}"));
    format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  \
           hosts: [{name}.shop]\n  \
           location: MESH_INTERNAL\n  \
           resolution: STATIC\n  \
           ports: [{{number: 9000, name: {port_name}{protocol}}}]\n  \
           endpoints:\n  \
           - {{address: 127.0.0.1, ports: {{{port_name}: {endpoint}}}, locality: {WEST}, labels: {{topology.istio.io/cluster: west}}}}\n"
    )
}

/// A gRPC call to a service whose only endpoint is in another cluster: h2 from the
/// client to the endpoint, through both proxies, and the answer's trailers (its
/// `grpc-status`) come back the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_carried_to_another_cluster_with_its_trailers() {
    let mesh = mesh(StatusCode::OK, "", "").await;
    let endpoint = grpc::grpc_endpoint(grpc::Behaviour::Answer(42)).await;
    let draining = grpc::grpc_endpoint(grpc::Behaviour::Unavailable).await;
    let entry = |name: &str, port: u16| west_grpc_entry(name, ("api", Some("GRPC")), port);
    std::fs::write(
        mesh.config_dir.join("kv.yaml"),
        format!(
            "{}---\n{}",
            entry("kv", endpoint.address.port()),
            entry("down", draining.address.port())
        ),
    )
    .expect("write config");
    let east = mesh.east.outbound_address();
    eventually(
        "east reaches kv.shop in the west cluster",
        Duration::from_secs(20),
        || async move {
            let mut client = grpc::client_through(east, "kv.shop").await;
            match client
                .read_index(fulcrum_proto::raft::v1::ReadIndexRequest {})
                .await
            {
                Ok(answer) if answer.get_ref().index == 42 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // Larger than h2's frames and first windows, both ways.
    let command = vec![9u8; 300_000];
    let mut client = grpc::client_through(east, "kv.shop").await;
    let answer = client
        .propose(fulcrum_proto::raft::v1::ProposeRequest {
            command: command.clone(),
        })
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(answer.index, 42);
    assert!(answer.result == command);
    let hop = endpoint.hop.lock().expect("hop").clone();
    assert_eq!(hop.as_deref(), Some("east->west"));
    // An error answer (trailers-only) comes back with its code and message, and the
    // endpoint, the only one, was called once.
    let mut down = grpc::client_through(east, "down.shop").await;
    let failed = down
        .read_index(fulcrum_proto::raft::v1::ReadIndexRequest {})
        .await
        .expect_err("UNAVAILABLE");
    assert_eq!(
        (failed.code(), failed.message()),
        (tonic::Code::Unavailable, "draining")
    );
    assert_eq!(draining.calls.load(Ordering::Relaxed), 1);
    // The failure reaches the coordinator as what it is: a 5xx from the west, though the
    // endpoint answered HTTP 200 (its UNAVAILABLE in grpc-status), so that the
    // coordinator can fail a gRPC service over as it fails over any other.
    let coordinator = format!("http://{}", mesh.coordinator.address());
    eventually(
        "the coordinator counts down.shop's UNAVAILABLE as a 5xx in the west",
        Duration::from_secs(20),
        || {
            let coordinator = coordinator.clone();
            async move {
                let mut status = StatusClient::connect(coordinator)
                    .await
                    .map_err(|e| e.to_string())?;
                let service = status
                    .get_service(GetServiceRequest {
                        host: "down.shop".into(),
                        consistent: false,
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                let west = service
                    .localities
                    .iter()
                    .find(|l| l.locality.as_ref().is_some_and(|at| at.region == "us-west"));
                match west.and_then(|l| l.signals.as_ref()) {
                    Some(signals) if signals.http_5xx > 0 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
}

/// A gRPC server stream from an endpoint in another cluster: each message reaches the
/// client through both proxies when the endpoint sends it, not when the stream ends (the
/// endpoint sends the next only once the client has the one before), and the stream's
/// end comes through with its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_server_stream_from_another_cluster_arrives_message_by_message() {
    let mesh = mesh(StatusCode::OK, "", "").await;
    let (endpoint, events) = grpc::event_endpoint().await;
    let entry = west_grpc_entry("events", ("grpc-status", None), endpoint.port());
    std::fs::write(mesh.config_dir.join("events.yaml"), entry).expect("write config");
    let east = mesh.east.outbound_address();
    // Known to the east once a call there is answered by the endpoint (which serves one
    // watch only, so the probe is a method it refuses).
    eventually(
        "east reaches events.shop in the west cluster",
        Duration::from_secs(20),
        || async move {
            let mut client = grpc::status_client_through(east, "events.shop").await;
            let request = fulcrum_proto::status::v1::GetRaftRequest::default();
            match client.get_raft(request).await {
                Err(status) if status.message() == "events only" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let (_, mut stream) = grpc::watch_through(east, "events.shop").await;
    grpc::check_events_through(&events, &mut stream).await;
    drop(events);
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the end arrives");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

/// A gRPC stream both ways with an endpoint in another cluster: each message passes
/// through both proxies while the streams are open, in each direction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_both_ways_crosses_to_another_cluster_message_by_message() {
    let mesh = mesh(StatusCode::OK, "", "").await;
    let endpoint = grpc::echo_endpoint().await;
    let entry = west_grpc_entry("echo", ("grpc-control", None), endpoint.port());
    std::fs::write(mesh.config_dir.join("echo.yaml"), entry).expect("write config");
    let east = mesh.east.outbound_address();
    eventually(
        "east reaches echo.shop in the west cluster",
        Duration::from_secs(20),
        || grpc::echo_reachable_through(east, "echo.shop"),
    )
    .await;
    grpc::check_echo_through(east, "echo.shop").await;
}

/// Uploads to a service whose only endpoint is in another cluster pass through both
/// proxies as they arrive, whatever their size, over HTTP/1 and h2c, with a length or
/// without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_cross_to_another_cluster_as_they_arrive() {
    let mesh = mesh(StatusCode::OK, "", "").await;
    let (endpoint, mut seen) = upload::upload_endpoint().await;
    let entry = west_grpc_entry("files", ("http", Some("HTTP")), endpoint.port());
    std::fs::write(mesh.config_dir.join("files.yaml"), entry).expect("write config");
    let east = mesh.east.outbound_address();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    eventually(
        "east reaches files.shop in the west cluster",
        Duration::from_secs(20),
        || async move {
            match get_from(east, loopback, "files.shop", &[]).await {
                Some((StatusCode::OK, headers)) if headers.contains_key("x-seen-framing") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let size = 12 * 1024 * 1024 + 5;
    for text in upload::check_uploads_through(east, "files.shop", size, &mut seen).await {
        assert!(text.contains("x-fulcrum-cluster: west\r\n"), "{text}");
    }
}

/// A request through `proxy`'s outbound listener from a client at `from`, to `host`, with
/// `headers`: the answer's status and fields.
async fn get_from(
    proxy: SocketAddr,
    from: std::net::IpAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> Option<(StatusCode, http::HeaderMap)> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let stream = socket.connect(proxy).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let mut request = Request::get("/").header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::new())).ok()?)
        .await
        .ok()?;
    Some((response.status(), response.into_parts().0.headers))
}

/// The endpoint that served an answer, and the cluster it is in.
fn served_by(headers: &http::HeaderMap) -> (String, String) {
    let text = |name: &http::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    (text(&UPSTREAM_HEADER), text(&CLUSTER_HEADER))
}

/// A consistent hash on the client's address, or on a cookie the proxy makes, holds when
/// the endpoints are in another cluster: the proxy that sees the client makes the key and
/// hands it over, as the receiving proxy sees only the sending one's address and would
/// make a cookie of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_hash_holds_across_clusters() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs(dir.path(), "mesh.local");
    let mut endpoints = String::new();
    for name in ["west-0", "west-1", "west-2", "west-3"] {
        let (address, _) = backend(name, StatusCode::OK).await;
        endpoints.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: {WEST}, labels: {{topology.istio.io/cluster: west}}}}\n",
            address.port()
        ));
    }
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let mut config = CoordinatorConfig::new(
        1,
        "127.0.0.1:0".parse().expect("address"),
        dir.path().join("node-1"),
        Security::InsecureDev,
    );
    config.bootstrap = Bootstrap::Init;
    config.config_dir = Some(config_dir.clone());
    let coordinator = Coordinator::start(config).await.expect("coordinator");
    let mut proxies = Vec::new();
    for (cluster, locality) in [("east", EAST), ("west", WEST)] {
        let settings = settings(cluster, locality, coordinator.address(), dir.path());
        proxies.push(Proxy::start(settings, None).await.expect("proxy starts"));
    }
    let gateway = |p: &Proxy| p.east_west_address().expect("east-west").port();
    let mut yaml = format!(
        r#"apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {{name: east}}
spec:
  locality: {EAST}
  eastWestGateways: [{{address: 127.0.0.1, port: {east_gw}}}]
---
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {{name: west}}
spec:
  locality: {WEST}
  eastWestGateways: [{{address: 127.0.0.1, port: {west_gw}}}]
"#,
        east_gw = gateway(&proxies[0]),
        west_gw = gateway(&proxies[1]),
    );
    for (service, hash) in [
        ("by-ip", "{useSourceIp: true}"),
        (
            "by-cookie",
            "{httpCookie: {name: sticky, path: /, ttl: 60s}}",
        ),
    ] {
        yaml.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {service}, namespace: shop}}
spec:
  hosts: [{service}.shop]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {service}, namespace: shop}}
spec:
  host: {service}.shop
  trafficPolicy: {{loadBalancer: {{consistentHash: {hash}}}}}
"#
        ));
    }
    std::fs::write(config_dir.join("mesh.yaml"), yaml).expect("write config");
    let east = proxies[0].outbound_address();
    let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("address");
    for host in ["by-ip.shop", "by-cookie.shop"] {
        eventually(
            &format!("east sends {host} to the west cluster"),
            Duration::from_secs(20),
            || async move {
                match get_from(east, localhost, host, &[]).await {
                    Some((StatusCode::OK, headers)) if served_by(&headers).1 == "west" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    // Twelve clients, each on its own address and with the cookie it was given: each
    // stays on one endpoint, and between them they reach more than one.
    let mut by_ip = std::collections::BTreeSet::new();
    let mut by_cookie = std::collections::BTreeSet::new();
    for client in 0..12u8 {
        let from = std::net::IpAddr::from([127, 0, 0, client + 2]);
        let (status, first) = get_from(east, from, "by-ip.shop", &[])
            .await
            .expect("answer");
        assert_eq!(status, StatusCode::OK);
        let (endpoint, cluster) = served_by(&first);
        assert_eq!(cluster, "west");
        let (status, given) = get_from(east, localhost, "by-cookie.shop", &[])
            .await
            .expect("answer");
        assert_eq!(status, StatusCode::OK);
        let cookies: Vec<&str> = given
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(
            cookies.len(),
            1,
            "one cookie, made by one proxy: {cookies:?}"
        );
        let cookie = cookies[0]
            .split(';')
            .next()
            .expect("name=value")
            .to_string();
        let (cookie_endpoint, _) = served_by(&given);
        for _ in 0..4 {
            let (_, again) = get_from(east, from, "by-ip.shop", &[])
                .await
                .expect("answer");
            assert_eq!(served_by(&again).0, endpoint, "client {from}");
            // The key is the proxy's to make, not the application's.
            let forged = [("x-fulcrum-hash-key", "127.0.0.99")];
            let (_, again) = get_from(east, from, "by-ip.shop", &forged)
                .await
                .expect("answer");
            assert_eq!(served_by(&again).0, endpoint, "client {from}, forged key");
            let (_, again) = get_from(east, localhost, "by-cookie.shop", &[("cookie", &cookie)])
                .await
                .expect("answer");
            assert_eq!(served_by(&again).0, cookie_endpoint, "{cookie}");
            assert!(!again.contains_key(http::header::SET_COOKIE));
        }
        by_ip.insert(endpoint);
        by_cookie.insert(cookie_endpoint);
    }
    assert!(
        by_ip.len() >= 2,
        "twelve client addresses all went to {by_ip:?}"
    );
    assert!(
        by_cookie.len() >= 2,
        "twelve cookies all went to {by_cookie:?}"
    );
}

/// An h2 connection to the east-west listener at `gateway`, presenting `identity`
/// (certificate and key PEM).
async fn east_west_connection(
    gateway: SocketAddr,
    ca: &Path,
    identity: Option<(&[u8], &[u8])>,
) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?,
                PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(gateway)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("proxy.fulcrum.internal").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Status and hop mark of a GET to the east-west listener, presenting `identity`.
async fn east_west_request(
    gateway: SocketAddr,
    ca: &Path,
    identity: Option<(&[u8], &[u8])>,
) -> Result<(StatusCode, String), String> {
    let mut sender = east_west_connection(gateway, ca, identity).await?;
    let request = Request::get("https://checkout.shop/")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let hop = response
        .headers()
        .get("x-seen-hop")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((status, hop))
}

/// A proxy certificate for `identity`, signed by the CA in `certs` (whose key
/// `certs init` keeps beside it), valid from `not_before` to `not_after`.
fn signed_by_mesh_ca(
    certs: &Path,
    identity: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> (String, String) {
    let ca_pem = std::fs::read_to_string(certs.join("ca.pem")).expect("ca");
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca-key.pem")).expect("key"))
            .expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let mut params = rcgen::CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.subject_alt_names = vec![
        rcgen::SanType::URI(identity.try_into().expect("uri")),
        rcgen::SanType::DnsName("proxy.fulcrum.internal".try_into().expect("dns")),
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_east_west_listener_serves_mesh_proxies_only() {
    let mesh = mesh(StatusCode::OK, "", "").await;
    let gateway = mesh.west.east_west_address().expect("east-west");
    let ca = mesh.certs.join("ca.pem");
    let read = |name: &str| std::fs::read(mesh.certs.join(name)).expect("cert file");
    let (east_cert, east_key) = (read("proxy-east.pem"), read("proxy-east-key.pem"));
    // The pushed snapshot makes the west proxy ready; then a mesh proxy is served, by the
    // west cluster's own endpoint, with the hop marked.
    eventually(
        "west serves east over mTLS",
        Duration::from_secs(20),
        || {
            let (ca, cert, key) = (ca.clone(), east_cert.clone(), east_key.clone());
            async move {
                match east_west_request(gateway, &ca, Some((&cert, &key))).await {
                    Ok((StatusCode::OK, hop)) if hop == "east->west" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let refused = |what: &str, result: Result<(StatusCode, String), String>| {
        assert!(result.is_err(), "{what} was served: {result:?}");
    };
    refused(
        "a peer without a certificate",
        east_west_request(gateway, &ca, None).await,
    );
    let other_ca = certs(mesh._dir.path(), "other.mesh");
    let read_other = |name: &str| std::fs::read(other_ca.join(name)).expect("cert file");
    refused(
        "a proxy of another mesh's CA",
        east_west_request(
            gateway,
            &ca,
            Some((
                &read_other("proxy-east.pem"),
                &read_other("proxy-east-key.pem"),
            )),
        )
        .await,
    );
    let (cert, key) = signed_by_mesh_ca(
        &mesh.certs,
        "spiffe://other.mesh/fulcrum/proxy/east",
        now - day,
        now + day,
    );
    refused(
        "a proxy of another trust domain",
        east_west_request(gateway, &ca, Some((cert.as_bytes(), key.as_bytes()))).await,
    );
    let (cert, key) = signed_by_mesh_ca(
        &mesh.certs,
        "spiffe://mesh.local/fulcrum/admin/ops",
        now - day,
        now + day,
    );
    refused(
        "an admin identity",
        east_west_request(gateway, &ca, Some((cert.as_bytes(), key.as_bytes()))).await,
    );
    let (cert, key) = signed_by_mesh_ca(
        &mesh.certs,
        "spiffe://mesh.local/fulcrum/proxy/east",
        now - day * 3,
        now - day,
    );
    refused(
        "an expired certificate",
        east_west_request(gateway, &ca, Some((cert.as_bytes(), key.as_bytes()))).await,
    );
    // Still serving mesh proxies after all that.
    let served = east_west_request(gateway, &ca, Some((&east_cert, &east_key))).await;
    assert_eq!(served.map(|(s, _)| s), Ok(StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_east_west_connection_carries_many_requests_and_large_bodies_both_ways() {
    let mesh = mesh(StatusCode::OK, "", "").await;
    let gateway = mesh.west.east_west_address().expect("east-west");
    let ca = mesh.certs.join("ca.pem");
    let read = |name: &str| std::fs::read(mesh.certs.join(name)).expect("cert file");
    let (cert, key) = (read("proxy-east.pem"), read("proxy-east-key.pem"));
    eventually("west serves east", Duration::from_secs(20), || {
        let (ca, cert, key) = (ca.clone(), cert.clone(), key.clone());
        async move {
            match east_west_request(gateway, &ca, Some((&cert, &key))).await {
                Ok((StatusCode::OK, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let sender = east_west_connection(gateway, &ca, Some((&cert, &key)))
        .await
        .expect("connects");
    // Requests at once on the one connection, each with a body of its own size; every
    // fourth asks for an answer over the stream window.
    let requests = (0..64usize).map(|i| {
        let mut sender = sender.clone();
        async move {
            let size = i * 20_000;
            let path = if i % 4 == 0 { "/big" } else { "/" };
            let request = Request::post(format!("https://checkout.shop{path}"))
                .body(Full::new(Bytes::from(vec![b'y'; size])))
                .expect("request");
            let response = sender.send_request(request).await.expect("answered");
            let status = response.status();
            let seen = response
                .headers()
                .get("x-seen-body-bytes")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            let body = response.into_body().collect().await.expect("body");
            (i, size, status, seen, body.to_bytes().len())
        }
    });
    let answers =
        tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(requests))
            .await
            .expect("every request answered within 20 s");
    for (i, size, status, seen, length) in answers {
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(seen, Some(size), "request {i}: the body the endpoint got");
        let expected = if i % 4 == 0 { BIG_ANSWER } else { "west".len() };
        assert_eq!(length, expected, "request {i}: the answer's body");
    }
}

#[test]
fn certificates_are_reloaded_when_their_files_change_and_a_bad_one_is_not_taken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs(dir.path(), "mesh.local");
    let tls = MeshTls::load(&certs, "west").expect("loads");
    let before = tls.server_config();
    assert_eq!(tls.reload_if_changed(), Ok(false));
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = signed_by_mesh_ca(
        &certs,
        "spiffe://mesh.local/fulcrum/proxy/west",
        now - time::Duration::hours(1),
        now + time::Duration::days(2),
    );
    std::fs::write(certs.join("proxy-west.pem"), &cert).expect("write");
    std::fs::write(certs.join("proxy-west-key.pem"), &key).expect("write");
    assert_eq!(tls.reload_if_changed(), Ok(true));
    assert!(
        !Arc::ptr_eq(&before, &tls.server_config()),
        "a new configuration"
    );
    // A half-written renewal: refused, and the configuration in use stays.
    let current = tls.server_config();
    std::fs::write(certs.join("proxy-west.pem"), "-----BEGIN CERT").expect("write");
    let err = tls
        .reload_if_changed()
        .expect_err("a broken file is refused");
    assert!(err.to_string().contains("proxy-west.pem"), "{err}");
    assert!(Arc::ptr_eq(&current, &tls.server_config()));
    // A certificate for another cluster's proxy is refused too.
    let (cert, _) = signed_by_mesh_ca(
        &certs,
        "spiffe://mesh.local/fulcrum/proxy/east",
        now - time::Duration::hours(1),
        now + time::Duration::days(2),
    );
    std::fs::write(certs.join("proxy-west.pem"), cert).expect("write");
    let err = tls
        .reload_if_changed()
        .expect_err("another identity is refused");
    assert!(
        err.to_string().contains("not the proxy of cluster"),
        "{err}"
    );
}
