//! The outbound listener end to end, in-process: real backends and the real proxy on
//! loopback, HTTP/1.1 and h2c clients, and raw bytes for the malformed cases.

mod common;
mod grpc;
mod tls_endpoint;
mod upload;
mod websocket;

use common::eventually;
use grpc::{
    check_echo_through, check_events_through, client_through, echo_endpoint,
    echo_reachable_through, event_endpoint, grpc_endpoint, noting_echo_endpoint, watch_through,
};
use tls_endpoint::{Certificates, SERVER_DNS, SERVER_URI, tls_endpoint};
use upload::{Sum, check_uploads_through, upload_endpoint};
use websocket::{UPGRADE_KEY, read_until, upgrade_request, websocket_endpoint};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fulcrum_policy::{ConfigSet, Fingerprint};
use fulcrum_proxy::access_log::Destination;
use fulcrum_proxy::app::{ConfigFiles, Proxy, ProxyConfig, load_config};
use fulcrum_proxy::dns::Resolver;
use fulcrum_proxy::downstream::{ClientTimeouts, FIRST_BYTE_WHILE_DRAINING};
use fulcrum_proxy::health::HealthCheckSettings;
use fulcrum_proxy::metrics::ProxyMetrics;
use fulcrum_proxy::outbound::{Outbound, REASON_HEADER, Routing, UPSTREAM_HEADER};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a test backend answers.
#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    Fail503,
    Slow,
}

/// A backend on loopback answering with its name, the path and the Host it saw.
async fn backend(name: &'static str, behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |r: Request<Incoming>| async move {
                    let path = r
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string();
                    let host = r
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let status = match behaviour {
                        Behaviour::Ok => StatusCode::OK,
                        Behaviour::Fail503 => StatusCode::SERVICE_UNAVAILABLE,
                        Behaviour::Slow => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            StatusCode::OK
                        }
                    };
                    let mut response = Response::new(Full::new(Bytes::from(path)));
                    *response.status_mut() = status;
                    response
                        .headers_mut()
                        .insert("x-backend", name.parse().expect("header"));
                    response
                        .headers_mut()
                        .insert("x-seen-host", host.parse().expect("header"));
                    if let Some(v) = r.headers().get("x-route") {
                        response.headers_mut().insert("x-seen-route", v.clone());
                    }
                    if let Some(v) = r.headers().get("x-request-id") {
                        response
                            .headers_mut()
                            .insert("x-seen-request-id", v.clone());
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

struct Mesh {
    proxy: Proxy,
}

async fn mesh() -> Mesh {
    let v1 = backend("shop-v1", Behaviour::Ok).await;
    let v2 = backend("shop-v2", Behaviour::Fail503).await;
    let slow = backend("slow", Behaviour::Slow).await;
    let elsewhere = backend("elsewhere", Behaviour::Ok).await;
    let endpoint = |a: SocketAddr, version: &str, cluster: &str| {
        format!(
            "  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-east/us-east-1a, labels: {{version: {version}, topology.istio.io/cluster: {cluster}}}}}\n",
            a.port()
        )
    };
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: [shop.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{}{}{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: slow, namespace: shop}}
spec:
  hosts: [slow.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: eject, namespace: shop}}
spec:
  hosts: [eject.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{}{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: eject, namespace: shop}}
spec:
  host: eject.example
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: eject, namespace: shop}}
spec:
  hosts: [eject.example]
  http:
  - retries: {{attempts: 0}}
    route: [{{destination: {{host: eject.example}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shop, namespace: shop}}
spec:
  host: shop.example
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: [shop.example]
  http:
  - match: [{{uri: {{prefix: /old/}}}}]
    rewrite: {{uri: /new/}}
    headers: {{request: {{set: {{x-route: rewritten}}}}}}
    route: [{{destination: {{host: shop.example, subset: v1}}}}]
  - match: [{{uri: {{prefix: /flaky}}}}]
    retries: {{attempts: 1, retryOn: "503"}}
    route: [{{destination: {{host: shop.example}}}}]
  - match: [{{uri: {{prefix: /broken}}}}]
    retries: {{attempts: 0}}
    route: [{{destination: {{host: shop.example, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: slow, namespace: shop}}
spec:
  hosts: [slow.example]
  http:
  - timeout: 300ms
    route: [{{destination: {{host: slow.example}}}}]
"#,
        endpoint(v1, "v1", "east"),
        endpoint(v2, "v2", "east"),
        endpoint(elsewhere, "v1", "west"),
        endpoint(slow, "v1", "east"),
        endpoint(v1, "v1", "east"),
        endpoint(v2, "v2", "east"),
    );
    let proxy = start_east(&yaml, None).await;
    Mesh { proxy }
}

/// The proxy of cluster `east` (us-east/us-east-1a) on `yaml`, which must be valid, with
/// two workers and `health_checks` when given.
async fn start_east(yaml: &str, health_checks: Option<HealthCheckSettings>) -> Proxy {
    start_east_with(yaml, health_checks, ClientTimeouts::default()).await
}

/// [`start_east`], with `timeouts` for applications' connections.
async fn start_east_with(
    yaml: &str,
    health_checks: Option<HealthCheckSettings>,
    client_timeouts: ClientTimeouts,
) -> Proxy {
    start_east_logged(yaml, health_checks, client_timeouts, None).await
}

/// [`start_east_with`], writing its access log to `access_log` when given.
async fn start_east_logged(
    yaml: &str,
    health_checks: Option<HealthCheckSettings>,
    client_timeouts: ClientTimeouts,
    access_log: Option<Destination>,
) -> Proxy {
    let settings = (health_checks, client_timeouts, access_log);
    start_east_resolving(yaml, settings, Resolver::system()).await
}

/// [`start_east_logged`], looking names up with `resolver`.
async fn start_east_resolving(
    yaml: &str,
    settings: (
        Option<HealthCheckSettings>,
        ClientTimeouts,
        Option<Destination>,
    ),
    resolver: Resolver,
) -> Proxy {
    let mut config = ConfigSet::new();
    config.add_text("mesh.yaml", yaml);
    let errors: Vec<String> = config
        .diagnostics()
        .filter(|d| d.severity == fulcrum_policy::Severity::Error)
        .map(|d| d.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    Proxy::start(east_settings(settings, resolver), Some(&config))
        .await
        .expect("proxy starts")
}

/// The settings of the east proxies above: no coordinators, no east-west listener.
fn east_settings(
    (health_checks, client_timeouts, access_log): (
        Option<HealthCheckSettings>,
        ClientTimeouts,
        Option<Destination>,
    ),
    resolver: Resolver,
) -> ProxyConfig {
    ProxyConfig {
        cluster: "east".into(),
        locality: "us-east/us-east-1a".parse().expect("locality"),
        outbound: "127.0.0.1:0".parse().expect("address"),
        admin: "127.0.0.1:0".parse().expect("address"),
        control: None,
        east_west: None,
        report_interval: Duration::from_secs(1),
        health_checks,
        workers: 2,
        client_timeouts,
        access_log,
        dns_refresh: fulcrum_proxy::dns::REFRESH,
        resolver,
        config_files: None,
    }
}

/// Replaces `file` with `yaml`: written aside and moved into place, as a file is best
/// replaced.
fn replace_file(file: &Path, yaml: &str) {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    let aside = file.with_file_name(format!(".{name}.new"));
    std::fs::write(&aside, yaml).expect("write");
    std::fs::rename(&aside, file).expect("move into place");
}

/// An east proxy without coordinators that follows its configuration `file`, written
/// with `yaml` first (checked every 20 ms).
async fn start_east_following(file: &Path, yaml: &str) -> Proxy {
    replace_file(file, yaml);
    let paths = [file];
    let read = Fingerprint::of(&paths);
    let config = load_config(&paths).expect("valid configuration");
    let mut settings = east_settings(Default::default(), Resolver::system());
    settings.config_files = Some(ConfigFiles {
        paths: vec![file.to_path_buf()],
        read,
        every: Duration::from_millis(20),
    });
    Proxy::start(settings, Some(&config))
        .await
        .expect("proxy starts")
}

/// A proxy without coordinators follows its configuration file: an endpoint changed in
/// it is routed to once the file is rewritten, and a service added is served; a change
/// with errors is refused, counted and shown in `/config_dump` (until a change is
/// applied), and the proxy goes on routing on what it had.
#[tokio::test]
async fn a_proxy_without_coordinators_follows_its_configuration_file() {
    let (one, two) = (
        backend("one", Behaviour::Ok).await,
        backend("two", Behaviour::Ok).await,
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("mesh.yaml");
    let replace = |yaml: &str| replace_file(&file, yaml);
    let proxy = start_east_following(&file, &http_entry("shop", "shop.local", &[one.port()])).await;
    let (outbound, admin) = (proxy.outbound_address(), proxy.admin_address());
    let answered_by = |host: &'static str, expected: &'static str| async move {
        let answer = send(outbound, host, "/", false).await;
        match answer.headers.get("x-backend") {
            Some(b) if b == expected => Ok(()),
            _ => Err(format!("{}: {:?}", answer.status, answer.headers)),
        }
    };
    answered_by("shop.local", "one")
        .await
        .expect("the file read at start");
    replace(&http_entry("shop", "shop.local", &[two.port()]));
    let within = Duration::from_secs(10);
    eventually("the new endpoint", within, || {
        answered_by("shop.local", "two")
    })
    .await;
    // An invalid change: refused, counted, and the routing stays.
    replace(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {name: shop, namespace: shop}\n\
         spec: {hosts: [shop.local], resolution: SOMETIMES}\n",
    );
    let metric = |name: &'static str| async move {
        let text = send(admin, "admin", "/metrics", false).await.body;
        let line = text.lines().find(|l| l.starts_with(name));
        line.map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    };
    eventually("the invalid change counted", within, || async move {
        match metric("fulcrum_proxy_config_reload_failures_total").await {
            Some(n) if n == "1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    answered_by("shop.local", "two")
        .await
        .expect("the routing kept");
    let files = || async move {
        let dump = send(admin, "admin", "/config_dump", false).await.body;
        let dump: serde_json::Value = serde_json::from_str(&dump).expect("JSON");
        dump["configFiles"].clone()
    };
    let shown = files().await;
    assert_eq!(shown["paths"][0], file.display().to_string());
    let reason = shown["refused"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("SOMETIMES"), "{shown}");
    // The next change, valid, is applied: a service added.
    replace(
        &[
            http_entry("shop", "shop.local", &[two.port()]),
            http_entry("cart", "cart.local", &[one.port()]),
        ]
        .join("---\n"),
    );
    eventually("the service added", within, || {
        answered_by("cart.local", "one")
    })
    .await;
    answered_by("shop.local", "two")
        .await
        .expect("and the one there");
    assert_eq!(
        metric("fulcrum_proxy_config_reloads_total")
            .await
            .as_deref(),
        Some("2")
    );
    assert!(
        files().await["refused"].is_null(),
        "the refusal shown no more"
    );
}

/// An endpoint answering `ok` over HTTP/1.1 ([`endpoint_counting_open`]).
struct CountedEndpoint {
    address: SocketAddr,
    /// How many connections it has open.
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// Told when a request for `/held` arrives, which is answered only once
    /// `release` has a permit for it.
    held: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

impl CountedEndpoint {
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// An endpoint answering `ok` over HTTP/1.1, counting its open connections.
async fn endpoint_counting_open() -> CountedEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = CountedEndpoint {
        address: listener.local_addr().expect("address"),
        open: Arc::default(),
        held: Arc::default(),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let (open, held, release) = (
        endpoint.open.clone(),
        endpoint.held.clone(),
        endpoint.release.clone(),
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            open.fetch_add(1, Ordering::SeqCst);
            let (open, held, release) = (open.clone(), held.clone(), release.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (held, release) = (held.clone(), release.clone());
                    async move {
                        if request.uri().path() == "/held" {
                            held.notify_one();
                            let _permit = release.acquire().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    endpoint
}

/// Waits until `endpoint` has `expected` connections open, for at most 10 s.
async fn until_open(what: &str, endpoint: &CountedEndpoint, expected: usize) {
    eventually(what, Duration::from_secs(10), || async move {
        match endpoint.open() {
            n if n == expected => Ok(()),
            n => Err(format!("{n} open")),
        }
    })
    .await;
}

/// The idle connections a new configuration has no use for are closed when it is taken,
/// not at their idle timeout (90 s): to an endpoint it removed, and to one whose rule it
/// changed (the rule's requests take new connections); one it leaves as it was is kept.
#[tokio::test]
async fn idle_connections_a_new_configuration_has_no_use_for_are_closed() {
    let (one, two) = (
        endpoint_counting_open().await,
        endpoint_counting_open().await,
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("mesh.yaml");
    let replace = |yaml: &str| replace_file(&file, yaml);
    let shop_on = |port: u16| http_entry("shop", "shop.local", &[port]);
    let proxy = start_east_following(&file, &shop_on(one.address.port())).await;
    let outbound = proxy.outbound_address();
    assert_eq!(send(outbound, "shop.local", "/", false).await.status, 200);
    assert_eq!(one.open(), 1, "the proxy keeps its connection to one");

    // Another endpoint in its place: the connection to the one removed is closed.
    replace(&shop_on(two.address.port()));
    until_open("the connection to the removed endpoint closed", &one, 0).await;
    assert_eq!(send(outbound, "shop.local", "/", false).await.status, 200);
    assert_eq!(two.open(), 1);

    // A change elsewhere (a service added): the connection to two is kept.
    let cart = http_entry("cart", "cart.local", &[one.address.port()]);
    replace(&[shop_on(two.address.port()), cart.clone()].join("---\n"));
    eventually(
        "the service added",
        Duration::from_secs(10),
        || async move {
            match send(outbound, "cart.local", "/", false).await.status {
                StatusCode::OK => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    assert_eq!(two.open(), 1, "kept: nothing changed for it");

    // shop's rule changed: its idle connection, made under the old one, is closed.
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                metadata: {name: shop, namespace: shop}\n\
                spec:\n  host: shop.local\n  trafficPolicy:\n    connectionPool:\n      \
                http: {maxRequestsPerConnection: 50}\n";
    replace(&[shop_on(two.address.port()), cart, rule.to_string()].join("---\n"));
    until_open("the connection made under the old rule closed", &two, 0).await;
    assert_eq!(send(outbound, "shop.local", "/", false).await.status, 200);
    assert_eq!(two.open(), 1, "a new one, under the new rule");
}

/// A connection out on a request when a new configuration removes its endpoint is
/// closed once its answer is in, not put back for its idle timeout.
#[tokio::test]
async fn a_connection_in_use_when_its_endpoint_is_removed_is_closed_after_its_answer() {
    let (one, two) = (
        endpoint_counting_open().await,
        endpoint_counting_open().await,
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("mesh.yaml");
    let shop_on = |port: u16| http_entry("shop", "shop.local", &[port]);
    let proxy = start_east_following(&file, &shop_on(one.address.port())).await;
    let outbound = proxy.outbound_address();
    let held = tokio::spawn(async move { send(outbound, "shop.local", "/held", false).await });
    tokio::time::timeout(Duration::from_secs(10), one.held.notified())
        .await
        .expect("the held request reaches one");

    replace_file(&file, &shop_on(two.address.port()));
    let two_address = two.address.to_string();
    let two_address = two_address.as_str();
    eventually("two serves shop", Duration::from_secs(10), || async move {
        let answer = send(outbound, "shop.local", "/", false).await;
        match answer.headers.get("x-fulcrum-upstream") {
            Some(upstream) if upstream == two_address => Ok(()),
            other => Err(format!("{}: {other:?}", answer.status)),
        }
    })
    .await;
    assert_eq!(one.open(), 1, "still carrying the held request");

    one.release.add_permits(1);
    let answer = held.await.expect("the held request");
    assert_eq!(answer.status, 200, "answered in full");
    until_open("the connection closed after its answer", &one, 0).await;
}

/// A ServiceEntry `name` (namespace shop) for `host`, one port (`port`, YAML flow style,
/// named `port_name`), and an endpoint in this proxy's locality on each of `endpoints`.
fn service_entry(name: &str, host: &str, port: &str, port_name: &str, endpoints: &[u16]) -> String {
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{port}]\n  endpoints:\n"
    );
    for endpoint in endpoints {
        yaml.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{{port_name}: {endpoint}}}, locality: us-east/us-east-1a}}\n"
        ));
    }
    yaml
}

/// [`service_entry`] on port 80, HTTP.
fn http_entry(name: &str, host: &str, endpoints: &[u16]) -> String {
    service_entry(
        name,
        host,
        "{number: 80, name: http, protocol: HTTP}",
        "http",
        endpoints,
    )
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

/// A request through the proxy: HTTP/1.1 with the service as Host, or h2c (prior
/// knowledge) with the service as `:authority`.
async fn send(proxy: SocketAddr, host: &str, path: &str, http2: bool) -> Answer {
    let response = if http2 {
        let stream = TcpStream::connect(proxy).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2c handshake");
        tokio::spawn(connection);
        let request = Request::get(format!("http://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        sender
            .send_request(request)
            .await
            .expect("the proxy answers")
    } else {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = Request::get(format!("http://{proxy}{path}"))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        client.request(request).await.expect("the proxy answers")
    };
    let (head, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: head.status,
        headers: head.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends raw bytes and returns the status line.
async fn raw(proxy: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_route_rewrites_sets_headers_and_reaches_its_subset_over_http1_and_h2c() {
    let mesh = mesh().await;
    for http2 in [false, true] {
        let a = send(
            mesh.proxy.outbound_address(),
            "shop.example",
            "/old/cart?id=3",
            http2,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "h2c: {http2}");
        assert_eq!(a.body, "/new/cart?id=3");
        assert_eq!(a.headers["x-backend"], "shop-v1");
        assert_eq!(a.headers["x-seen-host"], "shop.example");
        assert_eq!(a.headers["x-seen-route"], "rewritten");
        assert!(a.headers.contains_key(UPSTREAM_HEADER));
    }
}

/// Everything the proxy writes on a connection until it closes it.
/// A connection to `proxy` on which `bytes` (a request, or part of one) were sent.
async fn sent_on(proxy: &Proxy, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all))
        .await
        .expect("the proxy closes the connection in time")
        .expect("read");
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn http1_connections_carry_pipelined_chunked_continued_and_http1_0_requests() {
    let mesh = mesh().await;
    let proxy = mesh.proxy.outbound_address();
    // Two requests in one write are answered in order; the second asks to close.
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(
            b"GET /old/a HTTP/1.1\r\nHost: shop.example\r\n\r\n\
              GET /old/b HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let text = read_to_close(&mut stream).await;
    let (a, b) = (
        text.find("/new/a").expect(&text),
        text.find("/new/b").expect(&text),
    );
    assert!(a < b, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");

    // A chunked body is read whole (and the connection kept).
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(
            b"POST /old/c HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .expect("write");
    let text = read_until(&mut stream, "/new/c").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    // Naming Transfer-Encoding in Connection does not make the chunked body look like
    // none (the chunks would be read as the next request).
    stream
        .write_all(
            b"POST /old/c2 HTTP/1.1\r\nHost: shop.example\r\nConnection: Transfer-Encoding\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
              GET /old/c3 HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        )
        .await
        .expect("write");
    let text = read_until(&mut stream, "/new/c3").await;
    assert!(text.contains("/new/c2"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");

    // A client that waits for 100 Continue gets it before it sends the body.
    stream
        .write_all(
            b"PUT /old/d HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .expect("write");
    let text = read_until(&mut stream, "\r\n\r\n").await;
    assert_eq!(text, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("write");
    let text = read_until(&mut stream, "/new/d").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");

    // An HTTP/1.0 client asking to keep the connection is told it stays open.
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    for path in ["e", "f"] {
        let request = format!(
            "GET /old/{path} HTTP/1.0\r\nHost: shop.example\r\nConnection: keep-alive\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let text = read_until(&mut stream, &format!("/new/{path}")).await;
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        assert!(text.contains("date: "), "{text}");
    }
    // Without asking, it is closed after the answer.
    stream
        .write_all(b"GET /old/g HTTP/1.0\r\nHost: shop.example\r\n\r\n")
        .await
        .expect("write");
    let text = read_to_close(&mut stream).await;
    assert!(
        text.contains("/new/g") && text.contains("connection: close"),
        "{text}"
    );
}

/// An endpoint answering every request with `answer`, written as it is (without its body
/// to HEAD).
async fn raw_endpoint(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head_only = read.starts_with(b"HEAD ");
                        read.drain(..end + 4);
                        let out = if head_only {
                            &answer[..head_end]
                        } else {
                            answer
                        };
                        if stream.write_all(out).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    address
}

/// A proxy whose one service, `raw.example`, is an endpoint answering `answer` (its
/// address returned beside), with `routes` (more YAML documents: its VirtualService)
/// and `timeouts` for applications' connections.
async fn raw_service_proxy(
    answer: &'static [u8],
    routes: &str,
    timeouts: ClientTimeouts,
) -> (Proxy, SocketAddr) {
    let endpoint = raw_endpoint(answer).await;
    (raw_proxy_to(endpoint, routes, timeouts).await, endpoint)
}

/// A proxy for `raw.example`, whose one endpoint is at `endpoint`, with `routes`.
async fn raw_proxy_to(endpoint: SocketAddr, routes: &str, timeouts: ClientTimeouts) -> Proxy {
    start_east_with(&raw_service_yaml(&[endpoint], routes), None, timeouts).await
}

/// The ServiceEntry of `raw.example` with `endpoints` (all in this cluster, east), then
/// `routes` (more YAML documents).
fn raw_service_yaml(endpoints: &[SocketAddr], routes: &str) -> String {
    let listed: String = (endpoints.iter())
        .map(|a| {
            format!(
                "  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-east/us-east-1a, labels: {{topology.istio.io/cluster: east}}}}\n",
                a.port()
            )
        })
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: raw, namespace: shop}}
spec:
  hosts: [raw.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{listed}{routes}"#
    )
}

/// An endpoint that answers one request in two steps: `first` at once, `rest` only once
/// told to on the sender it returns; then it keeps the connection open.
async fn stepped_endpoint(
    first: &'static [u8],
    rest: &'static [u8],
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (go_on, told) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        while !read.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&buf[..n]),
            }
        }
        stream.write_all(first).await.expect("first step");
        if told.await.is_ok() {
            stream.write_all(rest).await.expect("second step");
        }
        let _ = stream.read(&mut buf).await;
    });
    (address, go_on)
}

const FIRST_EVENT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
    Transfer-Encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n";
const LAST_EVENT: &[u8] = b"b\r\ndata: two\n\n\r\n0\r\n\r\n";

#[tokio::test]
async fn an_answer_still_arriving_reaches_http1_clients_piece_by_piece() {
    let (endpoint, go_on) = stepped_endpoint(FIRST_EVENT, LAST_EVENT).await;
    let proxy = raw_proxy_to(endpoint, "", ClientTimeouts::default()).await;
    let mut stream = sent_on(&proxy, b"GET /events HTTP/1.1\r\nHost: raw.example\r\n\r\n").await;
    // The first event arrives while the endpoint holds the second back.
    let text = read_until(&mut stream, "data: one\n\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(!text.contains("content-length"), "{text}");
    go_on.send(()).expect("the endpoint waits");
    let rest = read_until(&mut stream, "0\r\n\r\n").await;
    assert!(rest.ends_with("\r\n0\r\n\r\n"), "{rest}");
    assert!(rest.contains("data: two\n\n"), "{rest}");
}

/// An answer still arriving is counted in the metrics when it ends, with how long it
/// took in all, as Envoy's request duration runs to the end of the answer.
#[tokio::test]
async fn an_answer_still_arriving_is_counted_when_it_ends() {
    let (endpoint, go_on) = stepped_endpoint(FIRST_EVENT, LAST_EVENT).await;
    let proxy = raw_proxy_to(endpoint, "", ClientTimeouts::default()).await;
    let metric = |name: &'static str| {
        let admin = proxy.admin_address();
        async move {
            let text = send(admin, "admin", "/metrics", false).await.body;
            (text.lines())
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<f64>().ok())
        }
    };
    let count = r#"fulcrum_proxy_requests_total{service="raw.example",locality="us-east/us-east-1a",code="200"}"#;
    let took = r#"fulcrum_proxy_request_duration_seconds_sum{service="raw.example"}"#;
    let mut stream = sent_on(&proxy, b"GET /events HTTP/1.1\r\nHost: raw.example\r\n\r\n").await;
    read_until(&mut stream, "data: one\n\n\r\n").await;
    assert_eq!(
        metric(count).await,
        None,
        "not counted while it is still arriving"
    );
    // The stream stays open a while before its last event.
    let open = Duration::from_millis(300);
    tokio::time::sleep(open).await;
    go_on.send(()).expect("the endpoint waits");
    read_until(&mut stream, "0\r\n\r\n").await;
    // Counted as it ended, before its last chunk was written.
    assert_eq!(metric(count).await, Some(1.0), "counted once it ended");
    let seconds = metric(took).await.expect("a duration");
    assert!(
        seconds >= open.as_secs_f64(),
        "its whole duration: {seconds}"
    );
}

/// A client that leaves while an answer is still arriving ends it at once: the proxy
/// closes its connection to the endpoint without waiting for the endpoint's next piece.
#[tokio::test]
async fn a_client_that_leaves_mid_answer_ends_it_at_the_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = listener.local_addr().expect("address");
    let (closed, seen_closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        stream.write_all(FIRST_EVENT).await.expect("first event");
        // No more events: only the proxy closing the connection ends this.
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        let _ = closed.send(());
    });
    let proxy = raw_proxy_to(endpoint, "", ClientTimeouts::default()).await;
    let mut stream = sent_on(&proxy, b"GET /events HTTP/1.1\r\nHost: raw.example\r\n\r\n").await;
    read_until(&mut stream, "data: one\n\n\r\n").await;
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), seen_closed)
        .await
        .expect("the proxy closes the endpoint's connection once the client has gone")
        .expect("the endpoint says so");
}

#[tokio::test]
async fn an_answer_still_arriving_reaches_h2_clients_piece_by_piece() {
    let (endpoint, go_on) = stepped_endpoint(FIRST_EVENT, LAST_EVENT).await;
    let proxy = raw_proxy_to(endpoint, "", ClientTimeouts::default()).await;
    let stream = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let request = Request::get("http://raw.example/events")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = sender
        .send_request(request)
        .await
        .expect("the proxy answers");
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let mut body = answer.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event comes before the endpoint sends the second")
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data"), "data: one\n\n");
    go_on.send(()).expect("the endpoint waits");
    let rest = body.collect().await.expect("the rest").to_bytes();
    assert_eq!(rest, "data: two\n\n");
}

#[tokio::test]
async fn the_route_timeout_cuts_off_an_answer_still_arriving() {
    let routes = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: raw, namespace: shop}
spec:
  hosts: [raw.example]
  http:
  - timeout: 0.5s
    route: [{destination: {host: raw.example}}]
"#;
    // Far more than the proxy holds whole, and it never comes.
    let endless = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\nstart of it";
    let (proxy, _) = raw_service_proxy(endless, routes, ClientTimeouts::default()).await;
    // Timed from before the request is sent: the proxy's timer may start before this task
    // runs again.
    let started = Instant::now();
    let mut stream = sent_on(&proxy, b"GET /x HTTP/1.1\r\nHost: raw.example\r\n\r\n").await;
    // Passed on as it came, then the connection closed short of the declared length.
    let text = read_to_close(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 100000000000\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nstart of it"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before the timeout"
    );
}

#[tokio::test]
async fn an_endpoints_fields_pass_as_sent_but_for_hop_by_hop_and_the_proxys_own() {
    let routes = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: raw, namespace: shop}
spec:
  hosts: [raw.example]
  http:
  - match: [{uri: {prefix: /dressed}}]
    headers: {response: {set: {server: dressed}, add: {set-cookie: c=3}, remove: [date]}}
    route: [{destination: {host: raw.example}}]
  - route: [{destination: {host: raw.example}}]
"#;
    let (proxy, endpoint) = raw_service_proxy(
        b"HTTP/1.1 200 OK\r\nServer: raw\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\
          X-Fulcrum-Upstream: spoofed\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
          Connection: X-Trace\r\nX-Trace: 1\r\nContent-Length: 2\r\n\r\nok",
        routes,
        ClientTimeouts::default(),
    )
    .await;
    let address = proxy.outbound_address();
    let endpoint_name = format!("127.0.0.1:{}", endpoint.port());
    let count = |text: &str, what: &str| text.to_ascii_lowercase().matches(what).count();

    // HTTP/1: the endpoint's fields as it sent them, its own Date kept (no second one),
    // both cookies; not what its Connection named, and not its claim to be the upstream.
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /plain HTTP/1.1\r\nHost: raw.example\r\n\r\n")
        .await
        .expect("write");
    let text = read_until(&mut stream, "\r\n\r\nok").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Server: raw\r\n"), "{text}");
    assert!(
        text.contains("Date: Tue, 01 Jan 2030 00:00:00 GMT\r\n"),
        "{text}"
    );
    assert_eq!(count(&text, "\r\ndate:"), 1, "{text}");
    assert_eq!(count(&text, "\r\nset-cookie:"), 2, "{text}");
    assert_eq!(count(&text, "x-trace"), 0, "{text}");
    assert_eq!(count(&text, "\r\nx-fulcrum-upstream:"), 1, "{text}");
    assert!(
        text.contains(&format!("x-fulcrum-upstream: {endpoint_name}\r\n")),
        "{text}"
    );
    assert_eq!(count(&text, "\r\ncontent-length: 2\r\n"), 1, "{text}");

    // HEAD: the endpoint's Content-Length, no body.
    stream
        .write_all(b"HEAD /plain HTTP/1.1\r\nHost: raw.example\r\n\r\n")
        .await
        .expect("write");
    let text = read_until(&mut stream, "\r\n\r\n").await;
    assert!(text.contains("content-length: 2\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text}");

    // A route's response changes apply to the endpoint's fields.
    stream
        .write_all(b"GET /dressed HTTP/1.1\r\nHost: raw.example\r\n\r\n")
        .await
        .expect("write");
    let text = read_until(&mut stream, "\r\n\r\nok").await;
    assert_eq!(count(&text, "\r\nserver:"), 1, "{text}");
    assert!(text.contains("server: dressed\r\n"), "{text}");
    assert_eq!(count(&text, "\r\nset-cookie:"), 3, "{text}");
    assert!(
        !text.contains("2030"),
        "the endpoint's Date was removed: {text}"
    );
    assert_eq!(count(&text, "\r\ndate:"), 1, "the proxy's own: {text}");

    // h2c: the same fields, in a header map.
    let a = send(address, "raw.example", "/plain", true).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["server"], "raw");
    assert_eq!(a.headers.get_all("set-cookie").iter().count(), 2);
    assert_eq!(a.headers.get_all(UPSTREAM_HEADER).iter().count(), 1);
    assert_eq!(a.headers[UPSTREAM_HEADER], endpoint_name.as_str());
    assert!(!a.headers.contains_key("x-trace"));
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test]
async fn stalled_requests_get_408_and_idle_connections_are_closed() {
    let timeouts = ClientTimeouts {
        idle: Duration::from_millis(800),
        stall: Duration::from_millis(300),
    };
    let (proxy, _) = raw_service_proxy(OK, "", timeouts).await;
    let address = proxy.outbound_address();

    // A head that stops coming (also while it could still be HTTP/2's preface), and a
    // body that stops coming: 408, then closed.
    let cases: [(&[u8], &str); 3] = [
        (
            b"GET /x HTTP/1.1\r\nHost: raw.example\r\n",
            "request head not whole within",
        ),
        (b"PRI * HTTP/", "request head not whole within"),
        (
            b"POST /x HTTP/1.1\r\nHost: raw.example\r\nContent-Length: 10\r\n\r\nabc",
            "no byte of the request body",
        ),
    ];
    for (bytes, reason) in cases {
        // Timed from before the connection: the proxy's timers start on its side of it.
        let started = Instant::now();
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        let text = read_to_close(&mut stream).await;
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert!(text.contains(reason), "{text}");
        assert!(
            started.elapsed() >= timeouts.stall,
            "{reason}: not before the stall timeout"
        );
    }

    // A head that trickles in, a byte at a time well within the stall timeout: it must
    // still be whole within the timeout of its first byte (slowloris).
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: raw.example\r\nx-pad: ")
        .await
        .expect("write");
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            // Nothing yet: one more byte of the field's value.
            Err(_) if answer.is_empty() => {
                if stream.write_all(b"a").await.is_err() {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408 "),
        "a trickled head: {text:?}"
    );
    assert!(text.contains("request head not whole within"), "{text}");

    // A connection that sends nothing, and one idle after an answer: closed, no word said.
    let mut stream = TcpStream::connect(address).await.expect("connect");
    assert_eq!(read_to_close(&mut stream).await, "");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: raw.example\r\n\r\n")
        .await
        .expect("write");
    let text = read_to_close(&mut stream).await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("ok"),
        "{text}"
    );
    assert!(started.elapsed() >= timeouts.idle, "closed only once idle");
}

#[tokio::test]
async fn over_h2c_stalled_bodies_get_408_heads_no_body_and_idle_connections_are_closed() {
    let timeouts = ClientTimeouts {
        idle: Duration::from_millis(800),
        stall: Duration::from_millis(300),
    };
    let (proxy, _) = raw_service_proxy(OK, "", timeouts).await;
    let stream = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    let connection = tokio::spawn(connection);

    // A body that declares ten bytes, sends three and then nothing: 408 once it has
    // stalled (a small body is read whole before it is forwarded).
    let mut client = client.ready().await.expect("ready");
    let request = Request::post("http://raw.example/x")
        .header("content-length", "10")
        .body(())
        .expect("request");
    // Timed from before the request leaves: the connection's task may send it at once.
    let started = Instant::now();
    let (answer, mut body) = client.send_request(request, false).expect("sent");
    body.send_data(Bytes::from_static(b"abc"), false)
        .expect("data");
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("answered in time")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    let reason = answer.headers()[REASON_HEADER].to_str().expect("text");
    assert!(reason.contains("no byte of the request body"), "{reason}");
    assert!(
        started.elapsed() >= timeouts.stall,
        "not before the stall timeout"
    );

    // HEAD: the endpoint's Content-Length, and no body.
    let mut client = client.ready().await.expect("ready");
    let request = Request::head("http://raw.example/x")
        .body(())
        .expect("request");
    let (answer, _) = client.send_request(request, true).expect("sent");
    let answer = answer.await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["content-length"], "2");
    assert!(answer.body().is_end_stream(), "a body after a HEAD's head");

    // No request open for the idle time: the proxy closes the connection.
    let idle_from = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("closed within 5 s")
        .expect("the connection task");
    assert!(
        closed.is_ok(),
        "closed with a GOAWAY, not broken: {closed:?}"
    );
    assert!(
        idle_from.elapsed() + Duration::from_millis(100) >= timeouts.idle,
        "closed only once idle"
    );
}

/// An HTTP/2 frame: its 9-byte head (length, type, flags, stream) and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An h2c client's preface and SETTINGS, then a GET's header block begun and not ended
/// (a HEADERS frame without END_HEADERS: `:method GET`, `:scheme http`, `:path /`, from
/// HPACK's static table).
fn h2c_block_begun() -> Vec<u8> {
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(h2_frame(0x4, 0, 0, &[]));
    opening.extend(h2_frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84]));
    opening
}

/// An h2c client that begins a GET's header block ([`h2c_block_begun`]) and, with
/// `trickle`, sends a CONTINUATION that does not end it each time 50 ms pass without a
/// word from the proxy; how long until the proxy closes the connection.
async fn unfinished_header_block(proxy: SocketAddr, trickle: bool) -> Duration {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let started = Instant::now();
    stream.write_all(&h2c_block_begun()).await.expect("write");
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            // Its SETTINGS and their acknowledgement.
            Ok(Ok(_)) => {}
            // A byte of a field at a time, the block never ended.
            Err(_) if trickle => {
                let piece = h2_frame(0x9, 0, 1, &[0x00]);
                if stream.write_all(&piece).await.is_err() {
                    return started.elapsed();
                }
            }
            Err(_) => {}
        }
    }
    panic!("the connection was not closed within 5 s");
}

/// Over h2c, a header block the client begins and does not finish (no CONTINUATION with
/// END_HEADERS), or trickles on without end, closes its connection after the stall
/// timeout, as an HTTP/1 head that does not come whole is answered 408; one finished in
/// a CONTINUATION is a request like any other.
#[tokio::test]
async fn over_h2c_a_header_block_left_unfinished_closes_its_connection() {
    let timeouts = ClientTimeouts {
        idle: Duration::from_secs(4),
        stall: Duration::from_millis(300),
    };
    let (proxy, _) = raw_service_proxy(OK, "", timeouts).await;
    let address = proxy.outbound_address();
    for trickle in [false, true] {
        let closed = unfinished_header_block(address, trickle).await;
        assert!(
            closed >= timeouts.stall && closed < timeouts.idle,
            "trickle {trickle}: closed after {closed:?}"
        );
    }
    // Finished in a CONTINUATION (`:authority: raw.example`): answered.
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let mut request = h2c_block_begun();
    request.extend(h2_frame(0x9, 0x4, 1, b"\x01\x0braw.example"));
    stream.write_all(&request).await.expect("write");
    let mut read = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            // The proxy's frames, up to a HEADERS frame on stream 1.
            let mut at = 0;
            while read.len() >= at + 9 {
                let length = u32::from_be_bytes([0, read[at], read[at + 1], read[at + 2]]);
                let (kind, stream) = (read[at + 3], &read[at + 5..at + 9]);
                if kind == 0x1 && stream == [0, 0, 0, 1] {
                    return true;
                }
                at += 9 + length as usize;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => read.extend_from_slice(&buf[..n]),
            }
        }
    });
    assert!(
        answered.await.expect("in time"),
        "no answer to a finished block"
    );
}

/// An endpoint that answers `/held` with `held` only once `release` turns true (saying
/// on `arrived` that such a request has come), and anything else with `quick` at once.
async fn holding_endpoint() -> (
    SocketAddr,
    tokio::sync::watch::Sender<bool>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (release, released) = tokio::sync::watch::channel(false);
    let (came, arrived) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (released, came) = (released.clone(), came.clone());
            let service = service_fn(move |r: Request<Incoming>| {
                let (mut released, came) = (released.clone(), came.clone());
                async move {
                    let text = match r.uri().path() {
                        "/held" => {
                            let _ = came.send(());
                            let _ = released.wait_for(|r| *r).await;
                            "held"
                        }
                        _ => "quick",
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (address, release, arrived)
}

/// Draining, as on SIGTERM: `/ready` says so; an idle connection is closed at once; one
/// with a request in progress gets its answer, told `Connection: close`, then the close;
/// an h2c connection is sent GOAWAY and finishes its stream; a connection made meanwhile
/// is served once, the same way; and the drain is over once none is left.
#[tokio::test]
async fn a_draining_proxy_lets_requests_finish_then_closes_each_connection() {
    let (endpoint, release, mut arrived) = holding_endpoint().await;
    let proxy = start_east(
        &http_entry("slow", "slow.example", &[endpoint.port()]),
        None,
    )
    .await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: slow.example\r\n\r\n");
    let mut idle = sent_on(&proxy, get("/quick").as_bytes()).await;
    read_until(&mut idle, "quick").await;
    let mut busy = sent_on(&proxy, get("/held").as_bytes()).await;
    let stream = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get("http://slow.example/held")
        .body(())
        .expect("request");
    let mut client = client.ready().await.expect("ready");
    let (h2_answer, _) = client.send_request(request, true).expect("sent");
    drop(client);
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), arrived.recv())
            .await
            .expect("both held requests reach the endpoint")
            .expect("the endpoint runs");
    }

    proxy.drain();
    assert_eq!(read_to_close(&mut idle).await, "", "the idle one is closed");
    let ready = send(proxy.admin_address(), "admin", "/ready", false).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.headers[REASON_HEADER]
            .to_str()
            .expect("text")
            .contains("draining")
    );
    let mut late = sent_on(&proxy, get("/quick").as_bytes()).await;
    let text = read_to_close(&mut late).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("quick"), "{text}");
    assert!(
        !proxy.drained(Duration::from_millis(100)).await,
        "two requests are still in progress"
    );

    release.send_replace(true);
    let text = read_to_close(&mut busy).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("held"), "{text}");
    let answer = tokio::time::timeout(Duration::from_secs(5), h2_answer)
        .await
        .expect("answered in time")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let mut body = answer.into_body();
    let data = body.data().await.expect("a body").expect("data");
    assert_eq!(&data[..], b"held");
    let closed = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the h2c connection is closed")
        .expect("the connection task");
    assert!(closed.is_ok(), "closed with a GOAWAY: {closed:?}");
    assert!(proxy.drained(Duration::from_secs(5)).await, "none left");
}

/// A drain closes a connection that has sent nothing once it has had a moment
/// ([`FIRST_BYTE_WHILE_DRAINING`]) to send its first byte, as Envoy closes a connection
/// without a request when it drains; one whose request comes within it is served.
#[tokio::test]
async fn a_draining_proxy_closes_a_connection_that_sends_nothing() {
    let quick = backend("quick", Behaviour::Ok).await;
    let proxy = start_east(&http_entry("quick", "quick.example", &[quick.port()]), None).await;
    let mut silent = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    let mut late = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    let began = tokio::time::Instant::now();
    proxy.drain();
    late.write_all(b"GET / HTTP/1.1\r\nhost: quick.example\r\n\r\n")
        .await
        .expect("write");
    let text = read_to_close(&mut late).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert_eq!(
        read_to_close(&mut silent).await,
        "",
        "closed without a word"
    );
    assert!(
        began.elapsed() >= FIRST_BYTE_WHILE_DRAINING,
        "not before its moment: {:?}",
        began.elapsed()
    );
    assert!(proxy.drained(Duration::from_secs(2)).await, "none left");
}

/// A DestinationRule for `host` with the connection-pool settings `pool` (YAML flow).
fn pool_rule(host: &str, pool: &str) -> String {
    let name = host.replace('.', "-");
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  host: {host}\n  trafficPolicy:\n    \
         loadBalancer: {{simple: ROUND_ROBIN}}\n    connectionPool: {pool}\n"
    )
}

/// Istio's circuit-breaking task: one connection and one pending request allowed. The
/// first request takes the connection, the second waits for it, a third is answered
/// 503 `overflow` at once; the waiting one goes on once the first is done.
#[tokio::test]
async fn over_the_connection_limit_a_request_waits_and_past_the_pending_limit_overflows() {
    let (endpoint, release, mut arrived) = holding_endpoint().await;
    let yaml = http_entry("slow", "slow.example", &[endpoint.port()])
        + "---\n"
        + &pool_rule(
            "slow.example",
            "{tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}",
        );
    let proxy = start_east(&yaml, None).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: slow.example\r\n\r\n");
    let mut first = sent_on(&proxy, get("/held").as_bytes()).await;
    tokio::time::timeout(Duration::from_secs(5), arrived.recv())
        .await
        .expect("the first request reaches the endpoint")
        .expect("the endpoint runs");
    let mut waiting = sent_on(&proxy, get("/held").as_bytes()).await;
    let pending = "fulcrum_proxy_pending_requests{service=\"slow.example\"} 1\n";
    eventually(
        "the second request waits",
        Duration::from_secs(5),
        || async {
            let metrics = send(proxy.admin_address(), "admin", "/metrics", false).await;
            match metrics.body.contains(pending) {
                true => Ok(()),
                false => Err("not waiting yet".to_string()),
            }
        },
    )
    .await;
    let overflow = send(proxy.outbound_address(), "slow.example", "/quick", false).await;
    assert_eq!(overflow.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(overflow.headers[REASON_HEADER], "overflow");
    assert!(
        arrived.try_recv().is_err(),
        "the second request waits for the connection"
    );
    release.send_replace(true);
    for stream in [&mut first, &mut waiting] {
        let text = read_until(stream, "held").await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    }
    let after = send(proxy.outbound_address(), "slow.example", "/quick", false).await;
    assert_eq!(after.status, StatusCode::OK, "the places are given back");
    let metrics = send(proxy.admin_address(), "admin", "/metrics", false).await;
    assert!(
        metrics
            .body
            .contains("fulcrum_proxy_overflows_total{service=\"slow.example\"} "),
        "{}",
        metrics.body
    );
}

/// The routing a proxy of cluster `east` (us-east/us-east-1a) builds from `yaml`.
fn east_routing(yaml: &str) -> Routing {
    let mut config = ConfigSet::new();
    config.add_text("mesh.yaml", yaml);
    let resources: Vec<_> = config.resources().collect();
    let locality = "us-east/us-east-1a".parse().expect("locality");
    let (routing, errors) = Routing::new(&resources, &[], Vec::new(), "east", &locality);
    assert!(errors.is_empty(), "{errors:?}");
    routing
}

/// Which backend answers each of `n` requests to `host` (for user `user`).
async fn backends_of(outbound: &Outbound, host: &str, user: &str, n: usize) -> Vec<String> {
    let upstreams = outbound.upstreams();
    let mut seen = Vec::new();
    for _ in 0..n {
        let request = Request::get("/")
            .header("host", host)
            .header("x-user", user)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let answer = outbound.handle(request, None, &upstreams).await;
        assert_eq!(answer.status(), StatusCode::OK);
        seen.push(backend_of(answer.headers()));
    }
    seen
}

/// A DestinationRule whose balancer changes while the proxy runs takes effect with the
/// next request: round robin, then a consistent hash on a header.
#[tokio::test]
async fn a_changed_load_balancer_takes_effect_at_once() {
    let mut ports = Vec::new();
    for name in ["one", "two", "three"] {
        ports.push(backend(name, Behaviour::Ok).await.port());
    }
    let entry = http_entry("shop", "shop.example", &ports);
    let rule = |lb: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: shop, namespace: shop}}\n\
             spec: {{host: shop.example, trafficPolicy: {{loadBalancer: {lb}}}}}\n"
        )
    };
    let round_robin = entry.clone() + &rule("{simple: ROUND_ROBIN}");
    let metrics = Arc::new(ProxyMetrics::new());
    let locality = "us-east/us-east-1a".parse().expect("locality");
    let routing = Some(east_routing(&round_robin));
    let outbound = Outbound::new(routing, metrics, "east".into(), locality);
    let mut turns = backends_of(&outbound, "shop.example", "ann", 6).await;
    turns.sort();
    turns.dedup();
    assert_eq!(turns.len(), 3, "in turn: {turns:?}");
    let hashed = entry + &rule("{consistentHash: {httpHeaderName: x-user}}");
    outbound.update(east_routing(&hashed));
    let mut keyed = backends_of(&outbound, "shop.example", "ann", 6).await;
    keyed.dedup();
    assert_eq!(keyed.len(), 1, "one user, one endpoint: {keyed:?}");
}

/// With a `warmup`, an endpoint that joins a service gets a small share of its requests
/// at first: by round robin, two warm endpoints and one within a 2 s warmup that holds it
/// at half its weight (a 50% minimum, no ramp) get 2, 2 and 1 of every 5.
#[tokio::test]
async fn an_endpoint_that_joins_under_a_warmup_gets_a_small_share_at_first() {
    let mut ports = Vec::new();
    for name in ["one", "two", "new"] {
        ports.push(backend(name, Behaviour::Ok).await.port());
    }
    let warmup = Duration::from_secs(2);
    let rule = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                metadata: {name: shop, namespace: shop}\n\
                spec: {host: shop.example, trafficPolicy: {loadBalancer: \
                {simple: ROUND_ROBIN, warmup: {duration: 2s, minimumPercent: 50, aggression: 0}}}}\n";
    let metrics = Arc::new(ProxyMetrics::new());
    let locality = "us-east/us-east-1a".parse().expect("locality");
    let two = http_entry("shop", "shop.example", &ports[..2]) + rule;
    let outbound = Outbound::new(Some(east_routing(&two)), metrics, "east".into(), locality);
    let before = backends_of(&outbound, "shop.example", "ann", 4).await;
    assert!(before.iter().all(|b| b != "new"), "{before:?}");
    // The scenario: the two endpoints serve past their own warmup.
    tokio::time::sleep(warmup).await;
    outbound.update(east_routing(
        &(http_entry("shop", "shop.example", &ports) + rule),
    ));
    let joined = Instant::now();
    let after = backends_of(&outbound, "shop.example", "ann", 200).await;
    assert!(joined.elapsed() < warmup, "served within the warmup");
    let new = after.iter().filter(|b| *b == "new").count();
    assert!(new.abs_diff(40) <= 1, "{new} of 200 to the new endpoint");
}

/// An endpoint's `weight` counts as in Envoy: under Istio's default balancer (least
/// request), endpoints of weight 1 and 3 get 1 and 3 of every 4 requests.
#[tokio::test]
async fn endpoints_get_requests_in_proportion_to_their_weights() {
    let light = backend("light", Behaviour::Ok).await;
    let heavy = backend("heavy", Behaviour::Ok).await;
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: shop, namespace: shop}}\nspec:\n  hosts: [shop.example]\n  \
         location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n  \
         - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-east/us-east-1a}}\n  \
         - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-east/us-east-1a, weight: 3}}\n",
        light.port(),
        heavy.port()
    );
    let metrics = Arc::new(ProxyMetrics::new());
    let locality = "us-east/us-east-1a".parse().expect("locality");
    let outbound = Outbound::new(Some(east_routing(&yaml)), metrics, "east".into(), locality);
    let seen = backends_of(&outbound, "shop.example", "ann", 400).await;
    let heavy = seen.iter().filter(|b| *b == "heavy").count();
    assert_eq!(heavy, 300, "{heavy} of 400 to the endpoint of weight 3");
}

/// An endpoint back from failing its health checks warms up again, as a host does in
/// Envoy: of two warm endpoints under a 2 s warmup that holds an endpoint at 10% of its
/// weight (no ramp), the one that was down gets a tenth of the other's weight, 20 of 220
/// requests, not half.
#[tokio::test]
async fn an_endpoint_back_from_failing_health_checks_warms_up_again() {
    let one = backend("one", Behaviour::Ok).await;
    let two = backend("two", Behaviour::Ok).await;
    let rule = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                metadata: {name: shop, namespace: shop}\n\
                spec: {host: shop.example, trafficPolicy: {loadBalancer: \
                {simple: ROUND_ROBIN, warmup: {duration: 2s, minimumPercent: 10, aggression: 0}}}}\n";
    let yaml = http_entry("shop", "shop.example", &[one.port(), two.port()]) + rule;
    let metrics = Arc::new(ProxyMetrics::new());
    let locality = "us-east/us-east-1a".parse().expect("locality");
    let outbound = Outbound::new(Some(east_routing(&yaml)), metrics, "east".into(), locality);
    let count = |seen: &[String]| seen.iter().filter(|b| *b == "two").count();
    // Joined together: in turn.
    let together = backends_of(&outbound, "shop.example", "ann", 10).await;
    assert_eq!(count(&together), 5, "{together:?}");
    // The scenario: both serve past their warmup.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The health checks find the second down, then up again.
    let (health, checks) = (
        outbound.health(),
        HealthCheckSettings::tcp(Duration::from_secs(1)),
    );
    for ok in [false, false, true, true] {
        health.record(two, ok, &checks);
    }
    let recovered = Instant::now();
    let back = backends_of(&outbound, "shop.example", "ann", 220).await;
    assert!(
        recovered.elapsed() < Duration::from_secs(2),
        "served within the warmup"
    );
    assert!(count(&back).abs_diff(20) <= 1, "{} of 220", count(&back));
}

/// A service with two ports sends a request to the endpoints of the port it names (its
/// Host's, or its route's `destination.port`), port 80 when it names none, never to the
/// other port's; a port it does not have is no route (404 and why), not another port.
#[tokio::test]
async fn a_request_goes_to_the_endpoints_of_the_service_port_it_names() {
    let (web, admin) = (
        backend("web", Behaviour::Ok).await,
        backend("admin", Behaviour::Ok).await,
    );
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: multi, namespace: shop}}
spec:
  hosts: [multi.example, admin.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 8080, name: http-admin, protocol: HTTP}}
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}, http-admin: {}}}, locality: us-east/us-east-1a}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: admin, namespace: shop}}
spec:
  hosts: [admin.example]
  http:
  - route: [{{destination: {{host: multi.example, port: {{number: 8080}}}}}}]
"#,
        web.port(),
        admin.port()
    );
    let proxy = start_east(&yaml, None).await;
    let outbound = proxy.outbound_address();
    for (host, expected) in [
        ("multi.example", "web"),
        ("multi.example:80", "web"),
        ("multi.example:8080", "admin"),
        ("admin.example", "admin"),
    ] {
        for _ in 0..4 {
            let answer = send(outbound, host, "/", false).await;
            assert_eq!(answer.status, StatusCode::OK, "{host}");
            assert_eq!(backend_of(&answer.headers), expected, "{host}");
        }
    }
    let elsewhere = send(outbound, "multi.example:9090", "/", false).await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    let reason = elsewhere.headers[REASON_HEADER].to_str().unwrap();
    assert!(reason.contains("has no port 9090"), "{reason}");
}

/// A DestinationRule's `minHealthPercent` (Envoy's panic threshold): once ejections
/// leave fewer usable endpoints than that share, they are set aside and every endpoint
/// is used again; without it, an ejected endpoint gets nothing.
#[tokio::test]
async fn below_min_health_percent_ejected_endpoints_are_used_again() {
    let entry = |name: &str, ports: [u16; 2], min_health: &str| {
        http_entry(name, &format!("{name}.example"), &ports)
            + &format!(
                r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: shop}}
spec:
  host: {name}.example
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 1, baseEjectionTime: 1m, maxEjectionPercent: 100{min_health}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.example]
  http:
  - retries: {{attempts: 0}}
    route: [{{destination: {{host: {name}.example}}}}]
---
"#
            )
    };
    let (good, failing) = (
        backend("good", Behaviour::Ok).await.port(),
        backend("failing", Behaviour::Fail503).await.port(),
    );
    let yaml = entry("strict", [good, failing], "")
        + &entry("lenient", [good, failing], ", minHealthPercent: 60");
    let proxy = start_east(&yaml, None).await;
    let outbound = proxy.outbound_address();
    let failures = |host: &'static str| async move {
        let mut failures = 0;
        for _ in 0..20 {
            if send(outbound, host, "/", false).await.status != StatusCode::OK {
                failures += 1;
            }
        }
        failures
    };
    // Strict: the failing endpoint's first 503 ejects it.
    assert_eq!(failures("strict.example").await, 1);
    // Lenient: one of two left is under 60%, so both go on taking turns.
    let lenient = failures("lenient.example").await;
    assert!(lenient >= 9, "{lenient} of 20");
}

/// A route that delegates to another VirtualService (one without hosts, in another
/// namespace) stands for its routes, each within the root route's match, as istiod
/// merges them; a delegate route outside it is left out.
#[tokio::test]
async fn a_delegated_route_serves_the_delegates_routes_within_its_own() {
    let (cart, catalog, other) = (
        backend("cart", Behaviour::Ok).await,
        backend("catalog", Behaviour::Ok).await,
        backend("other", Behaviour::Ok).await,
    );
    let yaml = http_entry("cart", "cart.shop", &[cart.port()])
        + "---\n"
        + &http_entry("catalog", "catalog.shop", &[catalog.port()])
        + "---\n"
        + &http_entry("other", "other.shop", &[other.port()])
        + r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: shop}
spec:
  hosts: [front.shop]
  http:
  - match: [{uri: {prefix: /store}}]
    delegate: {name: store, namespace: team}
  - route: [{destination: {host: other.shop}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: store, namespace: team}
spec:
  http:
  - match: [{uri: {prefix: /store/cart}}]
    route: [{destination: {host: cart.shop}}]
  - match: [{uri: {prefix: /elsewhere}}]
    route: [{destination: {host: cart.shop}}]
  - route: [{destination: {host: catalog.shop}}]
"#;
    let proxy = start_east(&yaml, None).await;
    let outbound = proxy.outbound_address();
    for (path, expected) in [
        ("/store/cart/1", "cart"),
        ("/store/items", "catalog"),
        ("/elsewhere", "other"),
        ("/", "other"),
    ] {
        let answer = send(outbound, "front.shop", path, false).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(backend_of(&answer.headers), expected, "{path}");
    }
}

/// An endpoint speaking HTTP/1.1 and h2c (prior knowledge) alike, answering with the
/// version of HTTP each request came in.
async fn version_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|request: Request<Incoming>| async move {
                let version = format!("{:?}", request.version());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(version))))
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// A DestinationRule's `h2UpgradePolicy: UPGRADE` has a service's HTTP/1.1 endpoints
/// spoken to in h2 (but for a subset that says `DO_NOT_UPGRADE`; or only on the port
/// whose `portLevelSettings` say it), and `useClientProtocol` has each request go in its
/// client's protocol.
#[tokio::test]
async fn a_rule_chooses_the_protocol_spoken_to_its_endpoints() {
    let endpoint = version_endpoint().await.port();
    let entry = |name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{name}.example]\n  \
             location: MESH_INTERNAL\n  resolution: STATIC\n  \
             ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n  \
             - {{address: 127.0.0.1, ports: {{http: {endpoint}}}, locality: us-east/us-east-1a, \
             labels: {{version: v1}}}}\n---\n"
        )
    };
    let yaml = entry("plain")
        + &entry("up")
        + &entry("client")
        + &r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: up, namespace: shop}
spec:
  host: up.example
  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}
  subsets:
  - name: old
    labels: {version: v1}
    trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: up, namespace: shop}
spec:
  hosts: [up.example]
  http:
  - match: [{uri: {prefix: /old}}]
    route: [{destination: {host: up.example, subset: old}}]
  - route: [{destination: {host: up.example}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: client, namespace: shop}
spec:
  host: client.example
  trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ported, namespace: shop}
spec:
  hosts: [ported.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: http-alt, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: PORT, http-alt: PORT}, locality: us-east/us-east-1a}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ported, namespace: shop}
spec:
  host: ported.example
  trafficPolicy:
    portLevelSettings:
    - port: {number: 8080}
      connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
"#
        .replace("PORT", &endpoint.to_string());
    let proxy = start_east(&yaml, None).await;
    let outbound = proxy.outbound_address();
    for (host, path, client_h2, expected) in [
        ("plain.example", "/", false, "HTTP/1.1"),
        ("plain.example", "/", true, "HTTP/1.1"),
        ("up.example", "/", false, "HTTP/2.0"),
        ("up.example", "/old", false, "HTTP/1.1"),
        ("client.example", "/", false, "HTTP/1.1"),
        ("client.example", "/", true, "HTTP/2.0"),
        ("ported.example", "/", false, "HTTP/1.1"),
        ("ported.example:8080", "/", false, "HTTP/2.0"),
    ] {
        let answer = send(outbound, host, path, client_h2).await;
        assert_eq!(answer.status, StatusCode::OK, "{host}{path}");
        assert_eq!(
            answer.body, expected,
            "{host}{path}, client in h2: {client_h2}"
        );
    }
}

/// An endpoint speaking HTTP/1.1 and h2c (prior knowledge) alike, answering `ok`; counts
/// the connections it accepted.
async fn counting_endpoint() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, accepted)
}

/// A DestinationRule's `maxRequestsPerConnection` holds on the connections to a
/// service's endpoints, in HTTP/1.1 and in h2 alike: five requests, at most two a
/// connection, take three connections.
#[tokio::test]
async fn a_services_connections_carry_at_most_its_requests_per_connection() {
    let (http1, http1_connections) = counting_endpoint().await;
    let (h2, h2_connections) = counting_endpoint().await;
    let h2_port = "{number: 80, name: http2, protocol: HTTP2}";
    let yaml = [
        http_entry("one", "one.example", &[http1.port()]),
        service_entry("two", "two.example", h2_port, "http2", &[h2.port()]),
        pool_rule("one.example", "{http: {maxRequestsPerConnection: 2}}"),
        pool_rule("two.example", "{http: {maxRequestsPerConnection: 2}}"),
    ]
    .join("---\n");
    let proxy = start_east(&yaml, None).await;
    // One client connection, so one worker and its pools carry every request.
    let stream = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    for host in ["one.example", "two.example"] {
        for _ in 0..5 {
            let request = Request::get("/")
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let answer = sender.send_request(request).await.expect("an answer");
            assert_eq!(answer.status(), StatusCode::OK, "{host}");
            answer.into_body().collect().await.expect("its body");
        }
    }
    assert_eq!(http1_connections.load(Ordering::SeqCst), 3, "HTTP/1.1");
    assert_eq!(h2_connections.load(Ordering::SeqCst), 3, "h2");
}

/// Two endpoints sharing one count of the requests they get: the first and third are
/// answered 503 at once, the second only once `release` turns true, the rest 200 at once.
/// Says each request's number on the receiver.
async fn sequenced_endpoints() -> (
    [SocketAddr; 2],
    tokio::sync::watch::Sender<bool>,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let (came, arrived) = tokio::sync::mpsc::unbounded_channel();
    let mut addresses = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addresses.push(listener.local_addr().expect("address"));
        let (count, released, came) = (count.clone(), released.clone(), came.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (count, released, came) = (count.clone(), released.clone(), came.clone());
                let service = service_fn(move |_: Request<Incoming>| {
                    let (mut released, came) = (released.clone(), came.clone());
                    let number = count.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        let _ = came.send(number);
                        if number == 2 {
                            let _ = released.wait_for(|r| *r).await;
                        }
                        let status = match number {
                            1 | 3 => StatusCode::SERVICE_UNAVAILABLE,
                            _ => StatusCode::OK,
                        };
                        let mut answer = Response::new(Full::new(Bytes::from("answer")));
                        *answer.status_mut() = status;
                        Ok::<_, Infallible>(answer)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
    }
    ([addresses[0], addresses[1]], release, arrived)
}

/// Two requests to a service of two endpoints whose DestinationRule has `policy` (its
/// connection pool and what follows, in the rule's `trafficPolicy`), routed with two
/// attempts on 5xx: the first request fails, and its retry is held by the endpoint while
/// the second request is sent and fails. Returns the second request's answer, then the
/// first's, and the tries the endpoints saw after the first request's two.
async fn a_second_failure_during_a_retry(policy: &str) -> (Answer, Answer, Vec<usize>) {
    let (endpoints, release, mut arrived) = sequenced_endpoints().await;
    let yaml = http_entry(
        "flaky",
        "flaky.example",
        &[endpoints[0].port(), endpoints[1].port()],
    ) + "---\n"
        + &pool_rule("flaky.example", policy)
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
           metadata: {name: flaky, namespace: shop}\n\
           spec:\n  hosts: [flaky.example]\n  http:\n  \
           - route: [{destination: {host: flaky.example}}]\n    \
             retries: {attempts: 2, retryOn: 5xx}\n";
    let proxy = start_east(&yaml, None).await;
    let address = proxy.outbound_address();
    let retried = tokio::spawn(async move { send(address, "flaky.example", "/", false).await });
    for expected in [1, 2] {
        let number = tokio::time::timeout(Duration::from_secs(5), arrived.recv())
            .await
            .expect("the try reaches an endpoint")
            .expect("the endpoints run");
        assert_eq!(number, expected);
    }
    let second = send(address, "flaky.example", "/", false).await;
    release.send_replace(true);
    let first = retried.await.expect("the first request");
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-fulcrum-attempts"], "2");
    let seen: Vec<usize> = std::iter::from_fn(|| arrived.try_recv().ok()).collect();
    (second, first, seen)
}

/// `http.maxRetries: 1`: while one request's retry is in flight, another's failed try
/// is not retried, and its answer stands.
#[tokio::test]
async fn past_the_retry_limit_a_failed_try_is_not_retried() {
    let (refused, _, seen) = a_second_failure_during_a_retry("{http: {maxRetries: 1}}").await;
    // The first request's retry holds the only place: the second's 503 stands.
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["x-fulcrum-attempts"], "1");
    assert_eq!(seen, vec![3], "the second request was tried once");
}

/// A retry budget (`trafficPolicy.retryBudget`, Envoy's) replaces `http.maxRetries`: the
/// retries in flight may number `percent` of the requests in flight, and never fewer
/// than `minRetryConcurrency`.
#[tokio::test]
async fn a_retry_budget_allows_retries_in_proportion_to_the_requests_in_flight() {
    for (budget, retried) in [
        // 10% of the two requests in flight is none; the minimum, one, is the first
        // request's retry.
        ("{percent: 10, minRetryConcurrency: 1}", false),
        // All of them: the second request's retry too, where `maxRetries` says one.
        ("{percent: 100, minRetryConcurrency: 1}", true),
        // Two at least, whatever the share.
        ("{percent: 0, minRetryConcurrency: 2}", true),
    ] {
        let policy = format!("{{http: {{maxRetries: 1}}}}\n    retryBudget: {budget}");
        let (second, _, seen) = a_second_failure_during_a_retry(&policy).await;
        if retried {
            assert_eq!(second.status, StatusCode::OK, "{budget}");
            assert_eq!(second.headers["x-fulcrum-attempts"], "2", "{budget}");
            assert_eq!(seen, vec![3, 4], "{budget}");
        } else {
            assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE, "{budget}");
            assert_eq!(second.headers["x-fulcrum-attempts"], "1", "{budget}");
            assert_eq!(seen, vec![3], "{budget}");
        }
    }
}

#[tokio::test]
async fn a_client_still_sending_its_body_reads_an_early_answer_then_the_close() {
    // The endpoint answers as soon as it has the head, without reading the body.
    let (proxy, _) = raw_service_proxy(OK, "", ClientTimeouts::default()).await;
    let mut stream = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    // The head and the start of a large body, passed on as it arrives.
    let mut first =
        b"POST /x HTTP/1.1\r\nHost: raw.example\r\nContent-Length: 999999999\r\n\r\n".to_vec();
    first.extend_from_slice(&[b'x'; 64 * 1024]);
    stream.write_all(&first).await.expect("write");
    let text = read_until(&mut stream, "\r\n\r\nok").await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    // The rest of the body is not read: the connection cannot carry another request.
    assert!(text.contains("connection: close\r\n"), "{text}");
    // The client goes on sending its body. Had the proxy closed with it unread, the
    // connection would be reset (the sends fail, and on some stacks the answer is
    // lost); it reads and drops it for a moment instead, having said it is done.
    let chunk = vec![b'x'; 64 * 1024];
    for n in 0..8 {
        stream
            .write_all(&chunk)
            .await
            .unwrap_or_else(|e| panic!("send {n} after the answer: {e}"));
    }
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(0))),
        "the proxy ends the connection cleanly: {end:?}"
    );
}

#[tokio::test]
async fn uploads_of_any_size_reach_the_endpoint_as_they_arrive() {
    let (endpoint, mut seen) = upload_endpoint().await;
    let proxy = raw_proxy_to(endpoint, "", ClientTimeouts::default()).await;
    let address = proxy.outbound_address();
    // Far larger than anything the proxy holds of a body (1 MiB, for a retry). Each
    // client sends the first part, and the rest only once the endpoint has some of it:
    // held back until all had come, the upload would never be answered.
    check_uploads_through(address, "raw.example", 20 * 1024 * 1024 + 17, &mut seen).await;
    // A small body is still read whole, chunked or not (sent on with its length), and
    // the connection carries the next request.
    let mut stream = sent_on(
        &proxy,
        b"POST /x HTTP/1.1\r\nHost: raw.example\r\nContent-Length: 3\r\n\r\nabc\
          POST /x HTTP/1.1\r\nHost: raw.example\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    )
    .await;
    let mut last = Sum::default();
    last.add(b"abcd");
    let text = read_until(&mut stream, &last.text()).await;
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    assert!(text.contains("x-seen-framing: 3\r\n"), "{text}");
    assert!(text.contains("x-seen-framing: 4\r\n"), "{text}");
}

/// An upload as slow as its client: the route's timeout and the per-try timeout start
/// once the body has been sent whole, as Envoy's do, and then they hold.
#[tokio::test]
async fn route_and_per_try_timeouts_start_once_an_upload_has_ended() {
    let routes = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: raw, namespace: shop}
spec:
  hosts: [raw.example]
  http:
  - timeout: 0.6s
    retries: {attempts: 1, perTryTimeout: 0.4s}
    route: [{destination: {host: raw.example}}]
"#;
    let (endpoint, mut seen) = upload_endpoint().await;
    let proxy = raw_proxy_to(endpoint, routes, ClientTimeouts::default()).await;
    for path in ["/upload", "/hang"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: raw.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let mut stream = sent_on(&proxy, format!("{head}3\r\nabc\r\n").as_bytes()).await;
        upload::first_bytes_arrive(&mut seen).await;
        // The client pauses longer than both timeouts before the rest of its body.
        tokio::time::sleep(Duration::from_millis(900)).await;
        // Taken before the body's end is sent: the proxy's timers start once it reads it.
        let ended = Instant::now();
        stream
            .write_all(b"3\r\ndef\r\n0\r\n\r\n")
            .await
            .expect("the rest");
        if path == "/upload" {
            let mut sum = Sum::default();
            sum.add(b"abcdef");
            let text = read_until(&mut stream, &sum.text()).await;
            assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
            continue;
        }
        // The endpoint never answers: 504, once a timeout has passed after the body.
        let text = read_until(&mut stream, "timeout").await;
        assert!(text.starts_with("HTTP/1.1 504 "), "{text}");
        assert!(
            ended.elapsed() >= Duration::from_millis(400),
            "timed from the end of the body: {:?}",
            ended.elapsed()
        );
    }
}

#[tokio::test]
async fn an_upload_that_stalls_or_breaks_its_framing_is_refused() {
    let timeouts = ClientTimeouts {
        idle: Duration::from_secs(5),
        stall: Duration::from_millis(300),
    };
    let (endpoint, _seen) = upload_endpoint().await;
    let proxy = raw_proxy_to(endpoint, "", timeouts).await;
    let cases: [(&[u8], &str); 2] = [(b"3\r\nabc\r\n", "408 "), (b"3\r\nabc\r\nzz\r\n", "400 ")];
    for (body, status) in cases {
        let head = b"POST /x HTTP/1.1\r\nHost: raw.example\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = sent_on(&proxy, &[&head[..], body].concat()).await;
        let text = read_to_close(&mut stream).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
    }
    // The same over h2c, without a declared length: the stall breaks the stream
    // forwarded to the endpoint, and the client is answered 408, not 503.
    let stream = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = Request::post("http://raw.example/x")
        .body(())
        .expect("request");
    let (answer, mut body) = client.send_request(request, false).expect("sent");
    body.send_data(Bytes::from_static(b"abc"), false)
        .expect("data");
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("answered in time")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    let reason = answer.headers()[REASON_HEADER].to_str().expect("text");
    assert!(reason.contains("no byte of the request body"), "{reason}");
}

#[tokio::test]
async fn requests_over_the_limits_are_refused_before_routing() {
    let mesh = mesh().await;
    let proxy = mesh.proxy.outbound_address();
    let mut many = String::from("GET / HTTP/1.1\r\nHost: shop.example\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let status = raw(proxy, many.as_bytes()).await;
    assert!(status.contains(" 431 "), "{status}");
    let status = raw(
        proxy,
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(status.contains(" 400 "), "{status}");
    let status = raw(
        proxy,
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    assert!(status.contains(" 400 "), "{status}");
    // Refused before routing, yet counted.
    let text = send(mesh.proxy.admin_address(), "admin", "/metrics", false)
        .await
        .body;
    for (code, count) in [("431", 1), ("400", 2)] {
        let series = format!(
            r#"fulcrum_proxy_requests_total{{service="unknown",locality="us-east/us-east-1a",code="{code}"}} {count}"#
        );
        assert!(text.lines().any(|l| l == series), "no {series} in\n{text}");
    }
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint_and_succeeds() {
    let mesh = mesh().await;
    // Round robin over a 503 endpoint and a good one, one retry on 503: every request
    // ends on the good one, never the same endpoint twice.
    let mut tries = Vec::new();
    for _ in 0..10 {
        let a = send(
            mesh.proxy.outbound_address(),
            "shop.example",
            "/flaky",
            false,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers["x-backend"], "shop-v1");
        tries.push(
            a.headers["x-fulcrum-attempts"]
                .to_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    // The answer says how many tries it took: one, or two when round robin started on
    // the 503 endpoint (a retry's pick turns the rotation too, as in Envoy, so after the
    // first request every one starts there).
    assert!(tries.iter().all(|t| t == "1" || t == "2"), "{tries:?}");
    assert!(tries.iter().any(|t| t == "2"), "{tries:?}");
    // Without retries the 503 comes back as the upstream sent it.
    let a = send(
        mesh.proxy.outbound_address(),
        "shop.example",
        "/broken",
        false,
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["x-backend"], "shop-v2");
}

/// An endpoint that takes requests and never answers them, holding their connections.
async fn silent_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// A try whose request is held whole and that passes its per-try timeout is retried on
/// another endpoint: the timeout is a gateway error, as in Envoy.
#[tokio::test]
async fn a_try_past_its_per_try_timeout_is_retried_on_another_endpoint() {
    let (silent, good) = (
        silent_endpoint().await,
        raw_endpoint(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await,
    );
    let routes = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: raw, namespace: shop}
spec:
  host: raw.example
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: raw, namespace: shop}
spec:
  hosts: [raw.example]
  http:
  - retries: {attempts: 1, perTryTimeout: 0.3s, retryOn: gateway-error}
    route: [{destination: {host: raw.example}}]
"#;
    let yaml = raw_service_yaml(&[silent, good], routes);
    let proxy = start_east_with(&yaml, None, ClientTimeouts::default()).await;
    // Round robin: every request after the first starts on the silent endpoint (a retry's
    // pick turns the rotation too), waits out its try there, and is answered by the other.
    let mut tries = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let sent = send(proxy.outbound_address(), "raw.example", "/", false);
        let a = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .expect("answered: the per-try timeout ends a try at the silent endpoint");
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.headers);
        let took = a.headers["x-fulcrum-attempts"]
            .to_str()
            .unwrap_or("")
            .to_string();
        if took == "2" {
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
            assert!(waited < Duration::from_secs(3), "{waited:?}");
        }
        tries.push(took);
    }
    assert!(tries.iter().all(|t| t == "1" || t == "2"), "{tries:?}");
    assert!(tries.iter().filter(|t| *t == "2").count() >= 3, "{tries:?}");
}

#[tokio::test]
async fn a_host_in_capitals_names_the_same_service_and_route() {
    let mesh = mesh().await;
    let a = send(
        mesh.proxy.outbound_address(),
        "SHOP.Example",
        "/old/x",
        false,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-backend"], "shop-v1");
    assert_eq!(a.body, "/new/x", "the route's rewrite applied");
}

#[tokio::test]
async fn only_this_clusters_endpoints_are_used() {
    let mesh = mesh().await;
    // The default route (no match) spreads over east's two endpoints, never west's.
    for _ in 0..10 {
        let a = send(
            mesh.proxy.outbound_address(),
            "shop.example",
            "/other",
            false,
        )
        .await;
        assert_ne!(
            a.headers.get("x-backend").map(|v| v.as_bytes()),
            Some(&b"elsewhere"[..])
        );
    }
}

#[tokio::test]
async fn an_upstream_that_hangs_gets_the_route_timeout_then_504() {
    let mesh = mesh().await;
    let started = Instant::now();
    let a = send(mesh.proxy.outbound_address(), "slow.example", "/", false).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        a.headers[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("route timeout")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_unknown_service_is_404_with_a_reason() {
    let mesh = mesh().await;
    let a = send(mesh.proxy.outbound_address(), "nowhere.example", "/", false).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(
        a.headers[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("unknown service")
    );
}

/// With `--access-log`, each request is a JSON line once its answer has ended: what it
/// asked for, how it was answered and by whom; a request the proxy names gets the name
/// it travelled under, and one refused before routing is logged with why.
#[tokio::test]
async fn each_request_is_a_line_of_the_access_log() {
    let endpoint = backend("shop-v1", Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let yaml = http_entry("shop", "shop.example", &[endpoint.port()]);
    let destination = Some(Destination::File(path.clone()));
    let proxy = start_east_logged(&yaml, None, ClientTimeouts::default(), destination).await;
    let outbound = proxy.outbound_address();
    let named = "GET /cart?items=2 HTTP/1.1\r\nhost: shop.example\r\nuser-agent: test/1\r\n\
                 x-request-id: order-7\r\nconnection: close\r\n\r\n";
    assert!(
        raw(outbound, named.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );
    let unknown = send(outbound, "nowhere.example", "/", true).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let malformed = b"GET / HTTP/1.1\r\nhost: shop.example\r\ncontent-length: 1\r\n\
                      transfer-encoding: chunked\r\n\r\n";
    assert!(raw(outbound, malformed).await.starts_with("HTTP/1.1 400"));

    let lines = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= 3 {
                break text;
            }
            assert!(Instant::now() < deadline, "three lines, not {text:?}");
            tokio::task::yield_now().await;
        }
    };
    let entries: Vec<serde_json::Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let [served, unknown, refused] = &entries[..] else {
        panic!("three entries: {lines}");
    };
    assert_eq!(served["method"], "GET");
    assert_eq!(served["path"], "/cart?items=2");
    assert_eq!(served["protocol"], "HTTP/1.1");
    assert_eq!(served["response_code"], 200);
    assert_eq!(served["x_request_id"], "order-7");
    assert_eq!(served["user_agent"], "test/1");
    assert_eq!(served["authority"], "shop.example");
    assert_eq!(served["service"], "shop.example");
    assert_eq!(served["upstream_host"], endpoint.to_string());
    assert_eq!(served["upstream_cluster"], "east");
    assert_eq!(served["upstream_locality"], "us-east/us-east-1a");
    assert_eq!(served["attempts"], "1");
    assert_eq!(served["bytes_sent"], "/cart?items=2".len());
    assert_eq!(served["reason"], serde_json::Value::Null);
    let client = served["downstream_remote_address"]
        .as_str()
        .expect("client");
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    assert!(
        served["start_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    assert_eq!(unknown["protocol"], "HTTP/2");
    assert_eq!(unknown["response_code"], 404);
    assert!(
        unknown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unknown service"))
    );
    // Named by the proxy, as it would have travelled.
    assert_eq!(unknown["x_request_id"].as_str().map(str::len), Some(36));

    assert_eq!(refused["response_code"], 400);
    assert_eq!(refused["method"], "-");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Transfer-Encoding")),
        "{refused}"
    );
}

#[tokio::test]
async fn malformed_requests_are_400_and_the_proxy_keeps_serving() {
    let mesh = mesh().await;
    let proxy = mesh.proxy.outbound_address();
    let cases: [&[u8]; 7] = [
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: shop.example\r\nHost: nowhere.example\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"THIS IS NOT HTTP\r\n\r\n",
    ];
    for case in cases {
        let status = raw(proxy, case).await;
        assert!(
            status.contains(" 400 "),
            "{:?} -> {status}",
            String::from_utf8_lossy(case)
        );
    }
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: shop.example\r\nx-big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let status = raw(proxy, huge.as_bytes()).await;
    assert!(
        status.contains(" 431 ") || status.contains(" 400 "),
        "{status}"
    );
    let a = send(proxy, "shop.example", "/old/x", false).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn connect_is_refused_and_the_connection_stays_http() {
    let mesh = mesh().await;
    let mut stream = TcpStream::connect(mesh.proxy.outbound_address())
        .await
        .expect("connect");
    stream
        .write_all(
            b"CONNECT shop.example:80 HTTP/1.1\r\nHost: shop.example:80\r\n\r\n\
              GET /old/x HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        )
        .await
        .expect("write");
    let seen = read_until(&mut stream, "x-backend").await;
    let first = seen.lines().next().unwrap_or("");
    assert!(first.contains(" 404 "), "{seen}");
    assert!(seen.contains("no tunnels"), "{seen}");
    // The next request on the same connection is served as HTTP, by an endpoint.
    assert!(seen.contains("HTTP/1.1 200 OK"), "{seen}");
}

#[tokio::test]
async fn the_admin_port_says_ready_and_dumps_the_config() {
    let mesh = mesh().await;
    let admin = mesh.proxy.admin_address();
    let a = send(admin, "admin", "/ready", false).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ready\n"));
    let a = send(admin, "admin", "/config_dump", false).await;
    let dump: serde_json::Value = serde_json::from_str(&a.body).expect("JSON");
    assert_eq!(dump["cluster"], "east");
    assert_eq!(dump["locality"], "us-east/us-east-1a");
    assert!(
        dump["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "shop.example")),
        "{dump}"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_service_locality_and_code() {
    let mesh = mesh().await;
    let proxy = mesh.proxy.outbound_address();
    send(proxy, "shop.example", "/old/x", false).await;
    send(proxy, "shop.example", "/old/y", false).await;
    // A host in another letter case names the same service, counted as it.
    send(proxy, "SHOP.Example", "/old/z", false).await;
    send(proxy, "nowhere.example", "/", false).await;
    let text = send(mesh.proxy.admin_address(), "admin", "/metrics", false)
        .await
        .body;
    assert!(!text.contains("SHOP"), "{text}");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
            .to_string()
    };
    assert!(
        line(r#"fulcrum_proxy_requests_total{service="shop.example",locality="us-east/us-east-1a",code="200"}"#)
            .ends_with(" 3")
    );
    assert!(
        line(r#"fulcrum_proxy_requests_total{service="unknown",locality="us-east/us-east-1a",code="404"}"#)
            .ends_with(" 1")
    );
    line(r#"fulcrum_proxy_request_duration_seconds_count{service="shop.example"}"#);
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_returns() {
    let mesh = mesh().await;
    let proxy = mesh.proxy.outbound_address();
    // Round robin over a good and a failing endpoint; two 503s in a row eject the
    // failing one (for 1 s), after which every request reaches the good one.
    let mut failures = 0;
    for _ in 0..4 {
        let a = send(proxy, "eject.example", "/", false).await;
        if a.status != StatusCode::OK {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 2,
        "the failing endpoint answers twice, then is out"
    );
    for _ in 0..10 {
        let a = send(proxy, "eject.example", "/", false).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers["x-backend"], "shop-v1");
    }
    // The ejection ends: the failing endpoint is tried again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = send(proxy, "eject.example", "/", false).await;
        if a.headers.get("x-backend").is_some_and(|b| b == "shop-v2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ejected endpoint never came back"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn over_the_connection_pool_limit_the_answer_is_503_overflow() {
    let (endpoint, release, mut arrived) = holding_endpoint().await;
    // Both subsets select the one endpoint; each is its own Envoy cluster, with its own
    // limit of one request in flight.
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: limited, namespace: shop}}
spec:
  hosts: [limited.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-east/us-east-1a, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: limited, namespace: shop}}
spec:
  host: limited.example
  trafficPolicy:
    connectionPool: {{http: {{http2MaxRequests: 1}}}}
  subsets:
  - {{name: a, labels: {{version: v1}}}}
  - {{name: b, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: limited, namespace: shop}}
spec:
  hosts: [limited.example]
  http:
  - match: [{{headers: {{subset: {{exact: b}}}}}}]
    route: [{{destination: {{host: limited.example, subset: b}}}}]
  - route: [{{destination: {{host: limited.example, subset: a}}}}]
"#,
        endpoint.port()
    );
    let proxy = start_east(&yaml, None).await;
    let mut held = sent_on(
        &proxy,
        b"GET /held HTTP/1.1\r\nhost: limited.example\r\n\r\n",
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), arrived.recv())
        .await
        .expect("the first request reaches the endpoint")
        .expect("the endpoint runs");
    let refused = send(proxy.outbound_address(), "limited.example", "/quick", false).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers[REASON_HEADER], "overflow");
    let other = raw(
        proxy.outbound_address(),
        b"GET /quick HTTP/1.1\r\nhost: limited.example\r\nsubset: b\r\n\r\n",
    )
    .await;
    assert_eq!(
        other, "HTTP/1.1 200 OK",
        "the other subset has its own limit"
    );
    release.send_replace(true);
    let text = read_until(&mut held, "held").await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
}

#[tokio::test]
async fn an_endpoint_failing_health_checks_gets_no_requests() {
    let live = backend("live", Behaviour::Ok).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let yaml = http_entry("checked", "checked.example", &[live.port(), dead.port()]);
    let proxy = start_east(
        &yaml,
        Some(HealthCheckSettings {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            path: None,
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }),
    )
    .await;
    let connect_errors = || async {
        let text = send(proxy.admin_address(), "admin", "/metrics", false)
            .await
            .body;
        text.lines()
            .find(|l| {
                l.starts_with(
                    r#"fulcrum_proxy_upstream_connect_errors_total{service="checked.example"}"#,
                )
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let before = connect_errors().await;
        for _ in 0..20 {
            let a = send(proxy.outbound_address(), "checked.example", "/", false).await;
            assert_eq!(a.status, StatusCode::OK, "the live endpoint answers");
        }
        if connect_errors().await == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dead endpoint still gets requests"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GET through the proxy with extra request headers, from a connection bound to
/// `from` (a 127.0.0.0/8 address); returns the answer's headers.
async fn get_from(
    proxy: SocketAddr,
    from: std::net::IpAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> http::HeaderMap {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    let stream = socket.connect(proxy).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut request = Request::get(path).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("the proxy answers");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_parts().0.headers
}

fn backend_of(headers: &http::HeaderMap) -> String {
    headers["x-backend"].to_str().expect("text").to_string()
}

#[tokio::test]
async fn a_consistent_hash_keeps_each_key_on_one_endpoint_whatever_it_is_taken_from() {
    let names = ["h0", "h1", "h2", "h3"];
    let mut endpoints = String::new();
    for name in names {
        let address = backend(name, Behaviour::Ok).await;
        endpoints.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-east/us-east-1a}}\n",
            address.port()
        ));
    }
    let mut yaml = String::new();
    for (service, hash) in [
        ("by-header", "{httpHeaderName: x-user}"),
        ("by-query", "{httpQueryParameterName: user}"),
        ("by-ip", "{useSourceIp: true}"),
        (
            "by-cookie",
            "{httpCookie: {name: sticky, path: /, ttl: 60s}}",
        ),
    ] {
        yaml.push_str(&format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {service}, namespace: shop}}
spec:
  hosts: [{service}.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {service}, namespace: shop}}
spec:
  host: {service}.example
  trafficPolicy: {{loadBalancer: {{consistentHash: {hash}}}}}
---
"#
        ));
    }
    let proxy = start_east(&yaml, None).await;
    let at = proxy.outbound_address();
    let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("address");

    // Each key sticks to one endpoint; different keys spread over several.
    let check = |taken_from: &str, chosen: Vec<Vec<String>>| {
        for (key, answers) in chosen.iter().enumerate() {
            assert!(
                answers.iter().all(|b| b == &answers[0]),
                "{taken_from}: key {key} went to {answers:?}"
            );
        }
        let distinct: std::collections::BTreeSet<&String> =
            chosen.iter().map(|answers| &answers[0]).collect();
        assert!(
            distinct.len() >= 2,
            "{taken_from}: twelve keys all went to {distinct:?}"
        );
    };
    let mut by_header = Vec::new();
    let mut by_query = Vec::new();
    let mut by_ip = Vec::new();
    let mut by_cookie = Vec::new();
    for key in 0..12 {
        let user = format!("user-{key}");
        let from: std::net::IpAddr = format!("127.0.0.{}", key + 1).parse().expect("address");
        let (mut h, mut q, mut i, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // A client without the cookie is given one; with it, it stays where it went.
        let first = get_from(at, localhost, "by-cookie.example", "/", &[]).await;
        let set = first[http::header::SET_COOKIE].to_str().expect("text");
        assert!(
            set.starts_with("sticky=") && set.contains("Path=/") && set.contains("Max-Age=60"),
            "{set}"
        );
        let cookie = set.split(';').next().expect("name=value").to_string();
        c.push(backend_of(&first));
        for _ in 0..4 {
            let path = format!("/?page=2&user={user}");
            h.push(backend_of(
                &get_from(
                    at,
                    localhost,
                    "by-header.example",
                    "/",
                    &[("x-user", &user)],
                )
                .await,
            ));
            q.push(backend_of(
                &get_from(at, localhost, "by-query.example", &path, &[]).await,
            ));
            i.push(backend_of(
                &get_from(at, from, "by-ip.example", "/", &[]).await,
            ));
            let again = get_from(
                at,
                localhost,
                "by-cookie.example",
                "/",
                &[("cookie", &cookie)],
            )
            .await;
            assert!(!again.contains_key(http::header::SET_COOKIE));
            c.push(backend_of(&again));
        }
        by_header.push(h);
        by_query.push(q);
        by_ip.push(i);
        by_cookie.push(c);
    }
    check("httpHeaderName", by_header);
    check("httpQueryParameterName", by_query);
    check("useSourceIp", by_ip);
    check("httpCookie", by_cookie);
}

/// A request without a body, of `method` for `path`, through `proxy` to `host` with
/// `headers`, over HTTP/1.1: the answer.
async fn request_with(
    proxy: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .request(request.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("the proxy answers")
}

/// A GET through `proxy` to `host` with `headers`: its status, the backend that answered
/// (empty when none did) and the Host that backend saw.
async fn get_with(
    proxy: SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let response = request_with(proxy, "GET", host, "/", headers).await;
    let text = |name: &str| {
        (response.headers().get(name))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    (response.status(), text("x-backend"), text("x-seen-host"))
}

/// Istio's Bookinfo rules, read in place, route as in Istio: their short host names are
/// services in the rules' namespace, and applications reach a Kubernetes service by any
/// of the names its pods' DNS gives it.
#[tokio::test]
async fn bookinfo_rules_with_short_names_route_as_in_istio() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples/bookinfo");
    let mut yaml = String::new();
    for (service, versions) in [
        ("reviews", &["v1", "v2", "v3"][..]),
        ("ratings", &["v1"][..]),
    ] {
        let mut endpoints = String::new();
        for version in versions {
            let name: &'static str = Box::leak(format!("{service}-{version}").into_boxed_str());
            let address = backend(name, Behaviour::Ok).await;
            endpoints.push_str(&format!(
                "  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-east/us-east-1a, labels: {{version: {version}}}}}\n",
                address.port()
            ));
        }
        // Kubernetes services as a ServiceEntry spells them: the short name, in the
        // namespace the rules are applied to.
        yaml.push_str(&format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {service}, namespace: default}}
spec:
  hosts: [{service}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
{endpoints}---
"#
        ));
    }
    for file in [
        "destination-rule-all.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-ratings-test-abort.yaml",
    ] {
        let text = std::fs::read_to_string(samples.join(file)).expect("a Bookinfo sample");
        yaml.push_str(&text);
        yaml.push_str("\n---\n");
    }
    let running = start_east(&yaml, None).await;
    let proxy = running.outbound_address();
    let jason = [("end-user", "jason")];
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local:9080",
    ] {
        assert_eq!(
            get_with(proxy, host, &jason).await,
            (StatusCode::OK, "reviews-v2".into(), host.into()),
            "{host}, as jason: subset v2, and the Host goes on as it came"
        );
        for _ in 0..3 {
            let (status, backend, _) = get_with(proxy, host, &[]).await;
            assert_eq!(
                (status, backend.as_str()),
                (StatusCode::OK, "reviews-v3"),
                "{host}"
            );
        }
    }
    // The fault applies to jason only; everyone else reaches ratings v1.
    let (status, backend, _) = get_with(proxy, "ratings", &jason).await;
    assert_eq!(
        (status, backend.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "")
    );
    let (status, backend, _) = get_with(proxy, "ratings.default", &[]).await;
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "ratings-v1"));
    // Another namespace's name is not this one's.
    let (status, _, _) = get_with(proxy, "reviews.test", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// `chat.example`: one endpoint, at `port` on this proxy's locality.
fn chat_entry(port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: chat, namespace: shop}}
spec:
  hosts: [chat.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {port}}}, locality: us-east/us-east-1a}}
"#
    )
}

#[tokio::test]
async fn a_websocket_upgrade_becomes_a_tunnel_to_an_endpoint_of_this_cluster() {
    let (heads, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let endpoint = websocket_endpoint(heads).await;
    let elsewhere = backend("elsewhere", Behaviour::Ok).await;
    let yaml = format!(
        r#"{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: far, namespace: shop}}
spec:
  hosts: [far.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: us-west/us-west-1a, labels: {{topology.istio.io/cluster: west}}}}
"#,
        chat_entry(endpoint.port()),
        elsewhere.port()
    );
    let running = start_east(&yaml, None).await;
    let proxy = running.outbound_address();
    let upgrade = |host: &str| upgrade_request(host, "/room/7");

    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(upgrade("chat.example").as_bytes())
        .await
        .expect("write");
    let answer = read_until(&mut stream, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(answer.contains("sec-websocket-accept: "), "{answer}");
    let head = seen.recv().await.expect("the endpoint read the request");
    assert!(head.starts_with("GET /room/7 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("host: chat.example\r\n"), "{head}");
    assert!(head.contains("sec-websocket-version: 13\r\n"), "{head}");
    // Named, as any request without a name is.
    assert!(head.contains("\r\nx-request-id: "), "{head}");
    // Both ways, as bytes, for as long as the client keeps it.
    for message in ["hello", "and more"] {
        stream.write_all(message.as_bytes()).await.expect("write");
        let echoed = read_until(&mut stream, message).await;
        assert!(echoed.ends_with(message), "{echoed}");
    }
    stream.shutdown().await.expect("shutdown");
    assert_eq!(
        read_to_close(&mut stream).await,
        "",
        "closed once the client is done"
    );

    // Without the key the endpoint refuses: its answer reaches the client as it gave it.
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let keyless =
        upgrade("chat.example").replace(&format!("Sec-WebSocket-Key: {UPGRADE_KEY}\r\n"), "");
    stream.write_all(keyless.as_bytes()).await.expect("write");
    let answer = read_until(&mut stream, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let head = seen.recv().await.expect("the endpoint read the request");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );

    // A service whose endpoints are all in another cluster, with no east-west transport
    // configured here: nowhere to take the upgrade.
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(upgrade("far.example").as_bytes())
        .await
        .expect("write");
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("here or in another cluster"), "{answer}");

    // Another protocol is not an upgrade the proxy carries: a plain request, its Upgrade
    // field dropped as hop-by-hop.
    let h2c = "GET / HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade, HTTP2-Settings\r\n\
               Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(h2c.as_bytes()).await.expect("write");
    let answer = read_until(&mut stream, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let head = seen.recv().await.expect("the endpoint read the request");
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade") && !lower.contains("http2-settings"),
        "{head}"
    );
}

#[tokio::test]
async fn a_websocket_tunnel_that_goes_quiet_is_closed_after_the_idle_timeout() {
    let (heads, _seen) = tokio::sync::mpsc::unbounded_channel();
    let endpoint = websocket_endpoint(heads).await;
    let yaml = chat_entry(endpoint.port());
    let idle = Duration::from_millis(300);
    let timeouts = ClientTimeouts {
        idle,
        ..ClientTimeouts::default()
    };
    let running = start_east_with(&yaml, None, timeouts).await;
    let mut stream = TcpStream::connect(running.outbound_address())
        .await
        .expect("connect");
    stream
        .write_all(upgrade_request("chat.example", "/").as_bytes())
        .await
        .expect("write");
    assert!(
        read_until(&mut stream, "\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 101 ")
    );
    // The tunnel's last bytes move after this instant: it closes no sooner than `idle`
    // after it.
    let before_last = Instant::now();
    stream.write_all(b"ping").await.expect("write");
    assert!(read_until(&mut stream, "ping").await.ends_with("ping"));
    assert_eq!(read_to_close(&mut stream).await, "");
    assert!(before_last.elapsed() >= idle, "{:?}", before_last.elapsed());
}

#[tokio::test]
async fn a_mirror_gets_a_copy_marked_shadow_and_never_delays_the_answer() {
    // The mirror's endpoint notes the Host it saw, and holds its answer until released.
    let (seen_host, mut mirrored) = tokio::sync::mpsc::unbounded_channel::<String>();
    let release = Arc::new(tokio::sync::Notify::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shadow = listener.local_addr().expect("address");
    let held = release.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (seen_host, held) = (seen_host.clone(), held.clone());
            tokio::spawn(async move {
                let head = read_until(&mut stream, "\r\n\r\n").await;
                let host = (head.lines())
                    .find_map(|l| l.strip_prefix("host: "))
                    .unwrap_or("")
                    .to_string();
                let _ = seen_host.send(host);
                held.notified().await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let primary = backend("primary", Behaviour::Ok).await;
    let entry = |name: &str, host: &str, port: u16| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {port}}}, locality: us-east/us-east-1a}}
---
"#
        )
    };
    let yaml = format!(
        r#"{}{}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: [shop.example]
  http:
  - route:
    - destination: {{host: shop.example}}
    mirror: {{host: mirror.example}}
"#,
        entry("shop", "shop.example", primary.port()),
        entry("mirror", "mirror.example", shadow.port()),
    );
    let running = start_east(&yaml, None).await;
    let proxy = running.outbound_address();
    let (status, backend, host) = get_with(proxy, "shop.example:8080", &[]).await;
    assert_eq!(
        (status, backend.as_str(), host.as_str()),
        (StatusCode::OK, "primary", "shop.example:8080")
    );
    // Answered while the mirror still holds its copy: the copy is fire-and-forget.
    let copy = tokio::time::timeout(Duration::from_secs(5), mirrored.recv())
        .await
        .expect("the mirror gets its copy")
        .expect("copy");
    assert_eq!(
        copy, "shop.example-shadow:8080",
        "Envoy's mark, before the port"
    );
    release.notify_waiters();
}

/// An endpoint that takes one connection and reads nothing from it until released; then
/// reads to the connection's end and says how many bytes came.
async fn stuck_endpoint() -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<usize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (release, released) = tokio::sync::oneshot::channel();
    let (count, counted) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let _ = released.await;
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0;
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            read += n;
        }
        let _ = count.send(read);
    });
    (address, release, counted)
}

/// A mirror is sent an upload as the upload arrives, whatever its size, as Envoy's
/// streaming shadows are: the request goes on without waiting for its mirror (the client
/// holds back most of each upload until the endpoint has the first bytes), the mirror
/// gets every byte, and a mirror that falls more than 1 MiB behind is cut off while its
/// request goes on.
#[tokio::test]
async fn a_mirror_is_sent_an_upload_as_it_arrives_and_cut_off_if_it_falls_behind() {
    let (primary, mut primary_seen) = upload_endpoint().await;
    let (mirror, _, mut mirror_sums) = upload::summing_upload_endpoint().await;
    let (stuck, release, counted) = stuck_endpoint().await;
    let yaml = format!(
        r#"{}{}{}{}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: files, namespace: shop}}
spec:
  hosts: [files.example]
  http:
  - route: [{{destination: {{host: files.example}}}}]
    mirror: {{host: copies.example}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: slow, namespace: shop}}
spec:
  hosts: [slow.example]
  http:
  - route: [{{destination: {{host: slow.example}}}}]
    mirror: {{host: stuck.example}}
"#,
        http_entry("files", "files.example", &[primary.port()]) + "---\n",
        http_entry("copies", "copies.example", &[mirror.port()]) + "---\n",
        http_entry("slow", "slow.example", &[primary.port()]) + "---\n",
        http_entry("stuck", "stuck.example", &[stuck.port()]) + "---\n",
    );
    let proxy = start_east(&yaml, None).await;
    let size = 3 * 1024 * 1024;
    check_uploads_through(
        proxy.outbound_address(),
        "files.example",
        size,
        &mut primary_seen,
    )
    .await;
    for way in 0..4 {
        let copy = tokio::time::timeout(Duration::from_secs(5), mirror_sums.recv())
            .await
            .expect("the mirror has its copy")
            .expect("the mirror runs");
        assert_eq!(copy, Ok(Sum::of_pattern(size)), "upload {way}");
    }

    let size = 24 * 1024 * 1024;
    let answer = upload::upload_over_http1(
        proxy.outbound_address(),
        "slow.example",
        size,
        true,
        &mut primary_seen,
    )
    .await;
    assert!(answer.ends_with(&Sum::of_pattern(size).text()), "{answer}");
    release.send(()).expect("the stuck endpoint waits");
    let read = tokio::time::timeout(Duration::from_secs(10), counted)
        .await
        .expect("the stuck mirror's connection ends")
        .expect("counted");
    assert!(read < size, "the mirror was cut off after {read} bytes");
}

#[tokio::test]
async fn an_open_websocket_tunnel_counts_as_a_request_in_flight() {
    let (heads, _seen) = tokio::sync::mpsc::unbounded_channel();
    let endpoint = websocket_endpoint(heads).await;
    let yaml = format!(
        r#"{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: chat, namespace: shop}}
spec:
  host: chat.example
  trafficPolicy: {{connectionPool: {{http: {{http2MaxRequests: 1}}}}}}
"#,
        chat_entry(endpoint.port())
    );
    let running = start_east(&yaml, None).await;
    let proxy = running.outbound_address();
    let upgrade = upgrade_request("chat.example", "/");
    let open = || async {
        let mut stream = TcpStream::connect(proxy).await.expect("connect");
        stream.write_all(upgrade.as_bytes()).await.expect("write");
        let answer = read_until(&mut stream, "\r\n\r\n").await;
        (stream, answer)
    };
    let (mut first, answer) = open().await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    // The service's one place is the tunnel's while it is open.
    let (_, answer) = open().await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("overflow"), "{answer}");
    // Closed, it gives the place back.
    first.shutdown().await.expect("shutdown");
    assert_eq!(read_to_close(&mut first).await, "");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, answer) = open().await;
        if answer.starts_with("HTTP/1.1 101 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the place never came back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gRPC server stream from an h2 endpoint: each message reaches the client when the
/// endpoint sends it (the endpoint sends the next only once the client has the one
/// before), and the stream's end comes through with its status, which outlier detection
/// counts as the HTTP status it stands for.
#[tokio::test]
async fn a_grpc_server_stream_arrives_message_by_message() {
    let (endpoint, events) = event_endpoint().await;
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: events, namespace: shop}}
spec:
  host: events.shop.example
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}}
",
        service_entry(
            "events",
            "events.shop.example",
            "{number: 9000, name: grpc-status}",
            "grpc-status",
            &[endpoint.port()],
        )
    );
    let proxy = start_east(&yaml, None).await;
    let (mut client, mut stream) =
        watch_through(proxy.outbound_address(), "events.shop.example").await;
    check_events_through(&events, &mut stream).await;
    // An error at the end comes through in the trailers, with its message.
    events
        .send(Err(tonic::Status::data_loss("the log was compacted")))
        .await
        .expect("the endpoint streams");
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the end arrives")
        .expect_err("the stream's error");
    assert_eq!(
        (end.code(), end.message()),
        (tonic::Code::DataLoss, "the log was compacted")
    );
    // DATA_LOSS is a 500: the endpoint, failing once with one allowed, is ejected, and
    // the next call is refused by the proxy without reaching it.
    let refused = client
        .watch_events(fulcrum_proto::status::v1::WatchEventsRequest::default())
        .await
        .expect_err("no endpoint left");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("ejected by outlier detection"),
        "{refused:?}"
    );
}

/// A gRPC stream both ways: the client's messages reach the endpoint while its stream is
/// open, as the endpoint's answers reach the client.
#[tokio::test]
async fn a_grpc_stream_both_ways_passes_each_message_as_it_comes() {
    let endpoint = echo_endpoint().await;
    let yaml = service_entry(
        "echo",
        "echo.shop.example",
        "{number: 9000, name: grpc-control}",
        "grpc-control",
        &[endpoint.port()],
    );
    let proxy = start_east(&yaml, None).await;
    // A client stream that ends at once reaches the endpoint, which answers it.
    echo_reachable_through(proxy.outbound_address(), "echo.shop.example")
        .await
        .expect("the endpoint's own refusal");
    check_echo_through(proxy.outbound_address(), "echo.shop.example").await;
}

/// A mirrored gRPC stream both ways: the client's messages reach the endpoint while its
/// stream is open, and the mirror's endpoint too, each as it comes.
#[tokio::test]
async fn a_mirrored_grpc_stream_passes_each_message_to_both_as_it_comes() {
    let endpoint = echo_endpoint().await;
    let (mirror, mut noted) = noting_echo_endpoint().await;
    let grpc_entry = |name: &str, host: &str, port: u16| {
        service_entry(
            name,
            host,
            "{number: 9000, name: grpc-control}",
            "grpc-control",
            &[port],
        ) + "---\n"
    };
    let yaml = format!(
        r#"{}{}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo.shop.example]
  http:
  - route: [{{destination: {{host: echo.shop.example}}}}]
    mirror: {{host: copies.shop.example}}
"#,
        grpc_entry("echo", "echo.shop.example", endpoint.port()),
        grpc_entry("copies", "copies.shop.example", mirror.port()),
    );
    let proxy = start_east(&yaml, None).await;
    // Each message is answered before the next is sent: a stream held back for its
    // mirror would not be.
    check_echo_through(proxy.outbound_address(), "echo.shop.example").await;
    for version in [1, 2, 3] {
        let seen = tokio::time::timeout(Duration::from_secs(5), noted.recv())
            .await
            .expect("the mirror is sent each message")
            .expect("the mirror runs");
        assert_eq!(seen, version);
    }
}

/// An h2 endpoint that never answers: it sends the `grpc-timeout` of each request it
/// gets (if any) on the receiver it returns, and holds the stream open.
async fn silent_h2_endpoint() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (seen, timeouts) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok((request, respond))) = connection.accept().await {
                    let timeout = request.headers().get("grpc-timeout");
                    let _ = seen.send(timeout.and_then(|v| v.to_str().ok()).map(str::to_string));
                    held.push(respond);
                }
            });
        }
    });
    (address, timeouts)
}

/// A gRPC call's `grpc-timeout` is its route timeout, capped by the route's own, and the
/// endpoint is told the timeout that holds; when it passes, the client gets a gRPC
/// answer saying so, as through Envoy under Istio's routes.
#[tokio::test]
async fn a_grpc_calls_timeout_is_its_deadline_capped_by_the_routes() {
    let (endpoint, mut seen) = silent_h2_endpoint().await;
    let yaml = format!(
        r#"{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: kv, namespace: shop}}
spec:
  hosts: [kv.shop.example]
  http:
  - match: [{{uri: {{prefix: /capped}}}}]
    timeout: 0.3s
    route: [{{destination: {{host: kv.shop.example}}}}]
  - route: [{{destination: {{host: kv.shop.example}}}}]
"#,
        service_entry(
            "kv",
            "kv.shop.example",
            "{number: 9000, name: grpc}",
            "grpc",
            &[endpoint.port()]
        ),
    );
    let proxy = start_east(&yaml, None).await;
    let stream = TcpStream::connect(proxy.outbound_address())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    tokio::spawn(connection);
    // (path, the call's grpc-timeout, what the endpoint is told, when the proxy answers)
    let cases = [
        ("/kv.Kv/Get", Some("250m"), Some("250m"), Some(250)),
        ("/capped/Get", Some("20S"), Some("300m"), Some(300)),
        ("/capped/Get", None, Some("300m"), Some(300)),
        ("/kv.Kv/Get", Some("0m"), Some("0m"), None),
        ("/kv.Kv/Get", Some("soon"), Some("soon"), None),
    ];
    for (path, asked, told, after) in cases {
        let mut request = Request::post(format!("http://kv.shop.example{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(asked) = asked {
            request = request.header("grpc-timeout", asked);
        }
        let mut client = client.clone().ready().await.expect("ready");
        let (answer, mut body) = client
            .send_request(request.body(()).expect("request"), false)
            .expect("sent");
        body.send_data(Bytes::from_static(b"\0\0\0\0\0"), true)
            .expect("a message");
        let started = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the call reaches the endpoint")
            .expect("the endpoint runs");
        assert_eq!(got.as_deref(), told, "{path} asking {asked:?}");
        let Some(after) = after else {
            // No timeout: the call is still waiting for its answer a while later.
            let waited = tokio::time::timeout(Duration::from_millis(700), answer).await;
            assert!(
                waited.is_err(),
                "{path} asking {asked:?}: answered {waited:?}"
            );
            continue;
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("answered in time")
            .expect("an answer");
        assert!(
            started.elapsed() + Duration::from_millis(50) >= Duration::from_millis(after),
            "{path}: not before the timeout"
        );
        assert_eq!(answer.status(), StatusCode::OK, "{path}: a gRPC answer");
        let headers = answer.headers();
        assert_eq!(headers["grpc-status"], "14", "{path}");
        let message = headers["grpc-message"].to_str().expect("text");
        assert!(
            message.contains(&format!("route timeout {after}ms")),
            "{message}"
        );
    }
}

/// gRPC: endpoints on a port whose protocol is GRPC (declared, or named `grpc-...`) are
/// spoken to in h2, and each answer's trailers reach the client with it. An UNAVAILABLE
/// answer is retried at another endpoint (Istio's default retries) and counts as a 503
/// for outlier detection; an error nothing mends reaches the client with its code and
/// message; and what the proxy answers itself comes as a gRPC status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_reach_h2_endpoints_with_their_trailers_and_unavailable_is_retried() {
    let good = grpc_endpoint(grpc::Behaviour::Answer(7)).await;
    let draining = grpc_endpoint(grpc::Behaviour::Unavailable).await;
    let (good_port, draining_port) = (good.address.port(), draining.address.port());
    let yaml = format!(
        r#"{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: kv, namespace: shop}}
spec:
  host: kv.shop.example
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}}
---
{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: faulty, namespace: shop}}
spec:
  hosts: [faulty.shop.example]
  http:
  - fault: {{abort: {{grpcStatus: NOT_FOUND, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: kv.shop.example}}}}]
"#,
        service_entry(
            "kv",
            "kv.shop.example",
            "{number: 9000, name: api, protocol: GRPC}",
            "api",
            &[good_port, draining_port]
        ),
        // The protocol by the port's name alone.
        service_entry(
            "down",
            "down.shop.example",
            "{number: 9000, name: grpc-kv}",
            "grpc-kv",
            &[draining_port]
        ),
    );
    let proxy = start_east(&yaml, None).await;

    // Larger than h2's frames and first windows, both ways.
    let command = vec![7u8; 300_000];
    let mut kv = client_through(proxy.outbound_address(), "kv.shop.example").await;
    for _ in 0..10 {
        let answer = kv
            .propose(fulcrum_proto::raft::v1::ProposeRequest {
                command: command.clone(),
            })
            .await
            .expect("every call answered")
            .into_inner();
        assert_eq!(answer.index, 7);
        assert!(answer.result == command);
    }
    assert_eq!(good.calls.load(Ordering::Relaxed), 10);
    // An endpoint of this cluster: no hop mark.
    assert_eq!(*good.hop.lock().expect("hop"), None);
    // Round robin sent first tries to the draining endpoint until its UNAVAILABLE
    // answers (HTTP 200, grpc-status 14) counted as two 503s in a row and ejected it.
    assert_eq!(draining.calls.load(Ordering::Relaxed), 2);

    let mut down = client_through(proxy.outbound_address(), "down.shop.example").await;
    let before = draining.calls.load(Ordering::Relaxed);
    let failed = down
        .read_index(fulcrum_proto::raft::v1::ReadIndexRequest {})
        .await
        .expect_err("UNAVAILABLE");
    assert_eq!(failed.code(), tonic::Code::Unavailable);
    assert_eq!(failed.message(), "draining");
    // Its only endpoint is not tried twice.
    assert_eq!(draining.calls.load(Ordering::Relaxed) - before, 1);
    assert_eq!(
        failed
            .metadata()
            .get("x-fulcrum-attempts")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );

    // What the proxy answers itself reaches a gRPC client as a gRPC status with the
    // reason: a fault's own code, and an unknown service as UNIMPLEMENTED (404).
    let address = proxy.outbound_address();
    let mut faulty = client_through(address, "faulty.shop.example").await;
    let failed = faulty
        .read_index(fulcrum_proto::raft::v1::ReadIndexRequest {})
        .await
        .expect_err("the fault");
    assert_eq!(
        (failed.code(), failed.message()),
        (tonic::Code::NotFound, "fault injected by route")
    );
    let mut nowhere = client_through(address, "nowhere.shop.example").await;
    let failed = nowhere
        .read_index(fulcrum_proto::raft::v1::ReadIndexRequest {})
        .await
        .expect_err("unknown");
    assert_eq!(failed.code(), tonic::Code::Unimplemented);
    assert!(failed.message().contains("unknown service"), "{failed:?}");
}

/// A route's `corsPolicy`: an allowed preflight is answered by the proxy (the endpoint
/// never sees it), an unmatched one goes to the endpoint, and an allowed request's
/// answer carries the origin it is allowed for.
#[tokio::test]
async fn a_routes_cors_policy_answers_preflights_and_marks_allowed_answers() {
    let endpoint = backend("shop", Behaviour::Ok).await;
    let yaml = format!(
        r#"{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: [shop.example]
  http:
  - corsPolicy:
      allowOrigins: [{{prefix: "https://app."}}]
      allowMethods: [GET, PUT]
      allowHeaders: [x-token]
      exposeHeaders: [x-backend]
      maxAge: 10m
    headers: {{response: {{set: {{access-control-allow-origin: "*"}}}}}}
    route: [{{destination: {{host: shop.example}}}}]
"#,
        http_entry("shop", "shop.example", &[endpoint.port()])
    );
    let proxy = start_east(&yaml, None).await;
    let address = proxy.outbound_address();
    let ask = |method: &'static str, headers: &'static [(&'static str, &'static str)]| async move {
        let response = request_with(address, method, "shop.example", "/cart", headers).await;
        let field =
            |name: &str| (response.headers().get(name)).map(|v| v.to_str().unwrap().to_string());
        (
            response.status(),
            field("x-backend"),
            field("access-control-allow-origin"),
            field("access-control-allow-methods"),
            field("access-control-max-age"),
            field("access-control-expose-headers"),
        )
    };
    let preflight = ask(
        "OPTIONS",
        &[
            ("origin", "https://app.shop.example"),
            ("access-control-request-method", "PUT"),
        ],
    )
    .await;
    assert_eq!(
        preflight,
        (
            StatusCode::OK,
            None,
            Some("https://app.shop.example".into()),
            Some("GET,PUT".into()),
            Some("600".into()),
            None
        )
    );
    // Not allowed: forwarded, and the endpoint answers as it would.
    let unmatched = ask(
        "OPTIONS",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "PUT"),
        ],
    )
    .await;
    assert_eq!(unmatched.1.as_deref(), Some("shop"));
    // The policy adds nothing to its answer (the route's own field stays); an allowed
    // origin's answer names that origin, over the route's field.
    assert_eq!(unmatched.2.as_deref(), Some("*"));
    let allowed = ask("GET", &[("origin", "https://app.shop.example")]).await;
    assert_eq!(
        allowed,
        (
            StatusCode::OK,
            Some("shop".into()),
            Some("https://app.shop.example".into()),
            None,
            None,
            Some("x-backend".into())
        )
    );
}

/// A request that comes without an `x-request-id` gets one (a UUID, new for each); one
/// that has its own keeps it, over HTTP/1.1 and h2c alike.
#[tokio::test]
async fn a_request_without_an_id_gets_one_and_one_with_an_id_keeps_it() {
    let endpoint = backend("shop", Behaviour::Ok).await;
    let proxy = start_east(
        &http_entry("shop", "shop.example", &[endpoint.port()]),
        None,
    )
    .await;
    let address = proxy.outbound_address();
    let seen = |id: Option<&'static str>| async move {
        let headers: &[(&str, &str)] = match id {
            Some(id) => &[("x-request-id", id)],
            None => &[],
        };
        let response = request_with(address, "GET", "shop.example", "/", headers).await;
        (response.headers().get("x-seen-request-id")).map(|v| v.to_str().expect("text").to_string())
    };
    let made = seen(None).await.expect("an id was made");
    assert_eq!(made.len(), 36, "{made}");
    assert_ne!(
        seen(None).await.expect("an id"),
        made,
        "each request its own"
    );
    assert_eq!(seen(Some("trace-7")).await.as_deref(), Some("trace-7"));
    let h2 = send(address, "shop.example", "/", true).await;
    assert_eq!(h2.headers["x-seen-request-id"].len(), 36);
}

/// A service `host` on port 80 whose endpoint at `endpoint` is spoken to as its rule
/// `tls` (YAML flow style) says; `protocol` of the port, HTTP or GRPC.
fn tls_service(host: &str, endpoint: u16, protocol: &str, tls: &str) -> String {
    let name = host.replace('.', "-");
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{host}]\n  \
         location: MESH_EXTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: 80, name: web, protocol: {protocol}}}]\n  endpoints:\n  \
         - {{address: 127.0.0.1, ports: {{web: {endpoint}}}, locality: us-east/us-east-1a}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: {name}, namespace: shop}}\nspec:\n  host: {host}\n  \
         trafficPolicy: {{tls: {tls}}}\n---\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_has_tls_originated_to_its_endpoints_and_the_server_checked_as_envoy_does() {
    let certs = Certificates::make();
    let (open, accepted) = tls_endpoint(&certs, false).await;
    let (mutual, _) = tls_endpoint(&certs, true).await;
    let (open, mutual) = (open.port(), mutual.port());
    let ca = format!("caCertificates: {}", certs.ca.display());
    let other_ca = format!("caCertificates: {}", certs.other_ca.display());
    let client = format!(
        "clientCertificate: {}, privateKey: {}",
        certs.client.display(),
        certs.client_key.display()
    );
    // A CA file that will change: the wrong CA first.
    let rotated = tempfile::tempdir().expect("directory");
    let rotating = rotated.path().join("ca.pem");
    std::fs::copy(&certs.other_ca, &rotating).expect("copy");
    let services = [
        (
            "rotated.example",
            open,
            "HTTP",
            format!(
                "{{mode: SIMPLE, caCertificates: {}, sni: {SERVER_DNS}}}",
                rotating.display()
            ),
        ),
        // The request's host is the server name, and what the certificate must name.
        (SERVER_DNS, open, "HTTP", format!("{{mode: SIMPLE, {ca}}}")),
        (
            "a.wild.example",
            open,
            "HTTP",
            format!("{{mode: SIMPLE, {ca}}}"),
        ),
        (
            "wrong.example",
            open,
            "HTTP",
            format!("{{mode: SIMPLE, {ca}}}"),
        ),
        // A fixed SNI, and no names to match: the chain alone.
        (
            "sni.example",
            open,
            "HTTP",
            format!("{{mode: SIMPLE, {ca}, sni: {SERVER_DNS}}}"),
        ),
        (
            "named.example",
            open,
            "HTTP",
            format!("{{mode: SIMPLE, {ca}, subjectAltNames: [{SERVER_URI}]}}"),
        ),
        (
            "misnamed.example",
            open,
            "HTTP",
            format!("{{mode: SIMPLE, {ca}, subjectAltNames: [spiffe://example.org/ns/x/sa/x]}}"),
        ),
        (
            "untrusted.example",
            open,
            "HTTP",
            format!("{{mode: SIMPLE, {other_ca}}}"),
        ),
        (
            "unchecked.example",
            open,
            "HTTP",
            "{mode: SIMPLE, insecureSkipVerify: true}".to_string(),
        ),
        // A secret's name in a rule without a workloadSelector is for gateways: a
        // sidecar keeps to the certificate paths, here none, so the system's CA bundle,
        // which does not know the test CA.
        (
            "secret.example",
            open,
            "HTTP",
            "{mode: SIMPLE, credentialName: api-cert}".to_string(),
        ),
        (
            "mutual.example",
            mutual,
            "HTTP",
            format!("{{mode: MUTUAL, {ca}, {client}, sni: {SERVER_DNS}}}"),
        ),
        (
            "anonymous.example",
            mutual,
            "HTTP",
            format!("{{mode: SIMPLE, {ca}, sni: {SERVER_DNS}}}"),
        ),
        (
            "rpc.example",
            open,
            "GRPC",
            format!("{{mode: SIMPLE, {ca}, sni: {SERVER_DNS}}}"),
        ),
        ("plain.example", open, "HTTP", "{mode: DISABLE}".to_string()),
    ];
    let yaml: String = services
        .iter()
        .map(|(host, port, protocol, tls)| tls_service(host, *port, protocol, tls))
        .collect();
    let proxy = start_east(&yaml, None).await;
    let outbound = proxy.outbound_address();
    let served = |version: &str, sni: &str, client: &str| {
        format!("{version} sni={sni} client={client} body=0")
    };
    for (host, expected) in [
        (SERVER_DNS, Ok(served("HTTP/1.1", SERVER_DNS, "no"))),
        (
            "a.wild.example",
            Ok(served("HTTP/1.1", "a.wild.example", "no")),
        ),
        ("wrong.example", Err("certificate")),
        ("sni.example", Ok(served("HTTP/1.1", SERVER_DNS, "no"))),
        (
            "named.example",
            Ok(served("HTTP/1.1", "named.example", "no")),
        ),
        ("misnamed.example", Err("names none of")),
        ("untrusted.example", Err("certificate")),
        (
            "unchecked.example",
            Ok(served("HTTP/1.1", "unchecked.example", "no")),
        ),
        ("secret.example", Err("UnknownIssuer")),
        ("mutual.example", Ok(served("HTTP/1.1", SERVER_DNS, "yes"))),
        ("anonymous.example", Err("")),
        ("rpc.example", Ok(served("HTTP/2.0", SERVER_DNS, "no"))),
    ] {
        let answer = send(outbound, host, "/", false).await;
        match expected {
            Ok(body) => {
                assert_eq!(
                    answer.status,
                    StatusCode::OK,
                    "{host}: {:?}",
                    answer.headers
                );
                assert_eq!(answer.body, body, "{host}");
            }
            Err(why) => {
                assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{host}");
                let reason = answer.headers.get(REASON_HEADER).expect("a reason");
                let reason = reason.to_str().expect("text");
                assert!(reason.contains(why), "{host}: {reason}");
            }
        }
    }
    // The files are read again when they change, as the next connection is made.
    let answer = send(outbound, "rotated.example", "/", false).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    std::fs::copy(&certs.ca, &rotating).expect("copy");
    let answer = send(outbound, "rotated.example", "/", false).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.headers);
    // DISABLE: plaintext, which a TLS endpoint does not take.
    let answer = send(outbound, "plain.example", "/", false).await;
    assert_ne!(answer.status, StatusCode::OK);
    // Connections in TLS are kept and used again: ten more requests, no new connection.
    let before = accepted.load(Ordering::SeqCst);
    for _ in 0..10 {
        let answer = send(outbound, SERVER_DNS, "/", false).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert!(
        accepted.load(Ordering::SeqCst) <= before + 2,
        "one connection per worker at most: {before} then {}",
        accepted.load(Ordering::SeqCst)
    );
    // A WebSocket upgrade becomes a tunnel in TLS to the endpoint.
    let mut stream = TcpStream::connect(outbound).await.expect("connect");
    let upgrade = upgrade_request(SERVER_DNS, "/chat");
    stream.write_all(upgrade.as_bytes()).await.expect("write");
    let answer = read_until(&mut stream, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    stream.write_all(b"over tls").await.expect("write");
    let echoed = read_until(&mut stream, "over tls").await;
    assert!(echoed.ends_with("over tls"), "{echoed}");
    drop(stream);
    // A body past what is held whole goes as it arrives, in TLS too.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let large = Bytes::from(vec![b'x'; 3 << 20]);
    let request = Request::post(format!("http://{outbound}/"))
        .header("host", SERVER_DNS)
        .body(Full::new(large))
        .expect("request");
    let answer = client.request(request).await.expect("answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let body = answer.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("HTTP/1.1 sni={SERVER_DNS} client=no body={}", 3 << 20)
    );
}

/// A subset's `tls` replaces the rule's for the subset's endpoints, as istiod merges a
/// subset's policy: here the rule speaks plaintext and one subset TLS, to the same
/// endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subsets_tls_replaces_the_rules() {
    let certs = Certificates::make();
    let (endpoint, _) = tls_endpoint(&certs, false).await;
    let host = "split.example";
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: split, namespace: shop}}\nspec:\n  hosts: [{host}]\n  \
         location: MESH_EXTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: 80, name: web, protocol: HTTP}}]\n  endpoints:\n  \
         - {{address: 127.0.0.1, ports: {{web: {port}}}, locality: us-east/us-east-1a}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: split, namespace: shop}}\nspec:\n  host: {host}\n  \
         trafficPolicy: {{tls: {{mode: DISABLE}}}}\n  subsets:\n  \
         - {{name: plain}}\n  \
         - name: secure\n    trafficPolicy:\n      \
         tls: {{mode: SIMPLE, caCertificates: {ca}, sni: {SERVER_DNS}}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: split, namespace: shop}}\nspec:\n  hosts: [{host}]\n  http:\n  \
         - match: [{{uri: {{prefix: /secure}}}}]\n    \
         route: [{{destination: {{host: {host}, subset: secure}}}}]\n  \
         - route: [{{destination: {{host: {host}, subset: plain}}}}]\n",
        port = endpoint.port(),
        ca = certs.ca.display(),
    );
    let proxy = start_east(&yaml, None).await;
    let outbound = proxy.outbound_address();
    let answer = send(outbound, host, "/secure", false).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.headers);
    assert_eq!(
        answer.body,
        format!("HTTP/1.1 sni={SERVER_DNS} client=no body=0")
    );
    // The other subset keeps the rule's plaintext, which a TLS endpoint does not take.
    let answer = send(outbound, host, "/", false).await;
    assert_ne!(answer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_an_endpoint_spoken_to_in_tls_are_made_in_tls() {
    let certs = Certificates::make();
    let (endpoint, accepted) = tls_endpoint(&certs, false).await;
    let tls = format!("{{mode: SIMPLE, caCertificates: {}}}", certs.ca.display());
    let yaml = tls_service(SERVER_DNS, endpoint.port(), "HTTP", &tls);
    let proxy = start_east(
        &yaml,
        Some(HealthCheckSettings {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            path: Some("/healthz".into()),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
        }),
    )
    .await;
    // Each probe is a connection of its own: a handshake the endpoint took, then a GET.
    eventually("probes in TLS", Duration::from_secs(10), || {
        let accepted = accepted.load(Ordering::SeqCst);
        async move {
            match accepted >= 3 {
                true => Ok(()),
                false => Err(format!("{accepted} TLS connections")),
            }
        }
    })
    .await;
    let answer = send(proxy.outbound_address(), SERVER_DNS, "/", false).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.headers);
}

/// Redirects and direct responses are answered by the proxy itself, over HTTP/1.1 and h2c,
/// with the route's changes to answers' fields, as Envoy makes them on a route's own
/// answers; a request none of the host's routes matches is 404, not sent to the service.
#[tokio::test]
async fn redirects_and_direct_responses_carry_the_routes_answer_fields() {
    let yaml = http_entry("shop", "shop.example", &[9])
        + r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 308}
    headers: {response: {set: {cache-control: no-store}}}
  - match: [{uri: {regex: "/teapot/[0-9]+"}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
    headers: {response: {add: {x-teapot: "yes"}}}
"#;
    let proxy = start_east(&yaml, None).await;
    for http2 in [false, true] {
        let moved = send(
            proxy.outbound_address(),
            "shop.example",
            "/old/a?q=1",
            http2,
        )
        .await;
        assert_eq!(moved.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            moved.headers["location"], "http://shop.example/new?q=1",
            "h2: {http2}"
        );
        assert_eq!(moved.headers["cache-control"], "no-store", "h2: {http2}");
        let teapot = send(proxy.outbound_address(), "shop.example", "/teapot/7", http2).await;
        assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT);
        assert_eq!(teapot.body, "short and stout");
        assert_eq!(teapot.headers["x-teapot"], "yes", "h2: {http2}");
        let unrouted = send(proxy.outbound_address(), "shop.example", "/other", http2).await;
        assert_eq!(unrouted.status, StatusCode::NOT_FOUND, "h2: {http2}");
        let reason = unrouted.headers[REASON_HEADER].to_str().expect("text");
        assert!(reason.contains("no route"), "{reason}");
    }
}

/// A path's dot segments are taken out before routing, and the endpoint gets the path
/// without them, as under Istio's default path normalization: a route on `/public` is no
/// way to what only another route may reach.
#[tokio::test]
async fn dot_segments_are_taken_out_before_routing() {
    let public = backend("public", Behaviour::Ok).await;
    let yaml = http_entry("site", "site.example", &[public.port()])
        + r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: site, namespace: shop}
spec:
  hosts: [site.example]
  http:
  - match: [{uri: {prefix: /public/}}]
    route: [{destination: {host: site.example}}]
"#;
    let proxy = start_east(&yaml, None).await;
    for http2 in [false, true] {
        let sent = send(
            proxy.outbound_address(),
            "site.example",
            "/public/./a/../b?q=/../x",
            http2,
        );
        let answer = sent.await;
        assert_eq!(answer.status, StatusCode::OK, "h2: {http2}");
        assert_eq!(answer.body, "/public/b?q=/../x", "h2: {http2}");
        for around in ["/public/../admin", "/public/%2e%2e/admin"] {
            let answer = send(proxy.outbound_address(), "site.example", around, http2).await;
            assert_eq!(
                answer.status,
                StatusCode::NOT_FOUND,
                "{around}, h2: {http2}"
            );
        }
    }
}

/// An endpoint a ServiceEntry names by DNS is reached at the address its name resolves
/// to: `localhost`, through the system's resolver, without any query leaving the machine;
/// so is the host of one resolved by DNS with no endpoints, from any cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_named_by_dns_is_reached_at_what_its_name_resolves_to() {
    let vm = backend("vm", Behaviour::Ok).await;
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: legacy, namespace: shop}}\nspec:\n  hosts: [legacy.example]\n  \
         location: MESH_EXTERNAL\n  resolution: DNS\n  \
         ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n  \
         - {{address: localhost, ports: {{http: {port}}}, locality: us-east/us-east-1a}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: external, namespace: shop}}\nspec:\n  hosts: [localhost]\n  \
         location: MESH_EXTERNAL\n  resolution: DNS\n  \
         ports: [{{number: {port}, name: http, protocol: HTTP}}]\n",
        port = vm.port()
    );
    let proxy = start_east(&yaml, None).await;
    let outbound = proxy.outbound_address();
    eventually(
        "the name resolved",
        Duration::from_secs(10),
        || async move {
            let answer = send(outbound, "legacy.example", "/", false).await;
            match answer.status {
                StatusCode::OK => Ok(()),
                other => Err(format!("{other}: {:?}", answer.headers.get(REASON_HEADER))),
            }
        },
    )
    .await;
    let answer = send(outbound, "legacy.example", "/", false).await;
    assert_eq!(answer.headers["x-backend"], "vm");
    let host = format!("localhost:{}", vm.port());
    let answer = send(outbound, &host, "/", false).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.headers);
    assert_eq!(answer.headers["x-backend"], "vm");
    // What the name resolved to, in the configuration dump.
    let dump = send(proxy.admin_address(), "admin", "/config_dump", false).await;
    let dump: serde_json::Value = serde_json::from_str(&dump.body).expect("JSON");
    let addresses = dump["dns"]["localhost"]
        .as_array()
        .expect("localhost resolved");
    assert!(
        addresses.iter().any(|a| a == "127.0.0.1" || a == "::1"),
        "{addresses:?}"
    );
}

/// A ServiceEntry for `*.wild.example` takes the requests for any name under it that no
/// service is named exactly, as its virtual host does in Envoy (the most specific
/// wildcard first), and its endpoints get the request's own Host.
#[tokio::test]
async fn a_wildcard_service_entry_takes_the_names_under_it() {
    let wide = backend("wide", Behaviour::Ok).await;
    let narrow = backend("narrow", Behaviour::Ok).await;
    let exact = backend("exact", Behaviour::Ok).await;
    let yaml = [
        http_entry("wide", "\"*.wild.example\"", &[wide.port()]),
        http_entry("narrow", "\"*.deep.wild.example\"", &[narrow.port()]),
        http_entry("exact", "b.wild.example", &[exact.port()]),
    ]
    .join("---\n");
    let proxy = start_east(&yaml, None).await;
    let outbound = proxy.outbound_address();
    for (host, expected) in [
        ("a.wild.example", "wide"),
        ("x.y.wild.example", "wide"),
        ("A.Wild.Example", "wide"),
        ("b.wild.example", "exact"),
        ("c.deep.wild.example", "narrow"),
    ] {
        let answer = send(outbound, host, "/", false).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{host}: {:?}",
            answer.headers
        );
        assert_eq!(answer.headers["x-backend"], expected, "{host}");
        assert_eq!(answer.headers["x-seen-host"], host, "{host}");
    }
    for host in ["wild.example", "a.other.example"] {
        let answer = send(outbound, host, "/", false).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{host}");
    }
}

/// A ServiceEntry without endpoints under `resolution: NONE` (also the default) or
/// `DYNAMIC_DNS` has its host reached at what its name resolves to: under Istio, Envoy
/// connects where the application was connecting, the address the application looked
/// the host up at; here the application connects to the proxy, which looks it up.
#[tokio::test]
async fn a_service_entry_without_endpoints_reaches_its_host_under_none_and_dynamic_dns() {
    let vm = backend("vm", Behaviour::Ok).await;
    for resolution in ["resolution: NONE\n  ", "resolution: DYNAMIC_DNS\n  ", ""] {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: external, namespace: shop}}\nspec:\n  hosts: [localhost]\n  \
             location: MESH_EXTERNAL\n  {resolution}\
             ports: [{{number: {port}, name: http, protocol: HTTP}}]\n",
            port = vm.port()
        );
        let proxy = start_east(&yaml, None).await;
        let outbound = proxy.outbound_address();
        let host = format!("localhost:{}", vm.port());
        eventually("the host resolved", Duration::from_secs(10), || {
            let host = host.clone();
            async move {
                let answer = send(outbound, &host, "/", false).await;
                match answer.status {
                    StatusCode::OK => Ok(()),
                    other => Err(format!("{other}: {:?}", answer.headers.get(REASON_HEADER))),
                }
            }
        })
        .await;
        let answer = send(outbound, &host, "/", false).await;
        assert_eq!(answer.headers["x-backend"], "vm", "{resolution}");
    }
}

/// A ServiceEntry for `*.wild.example` without endpoints, under `resolution: NONE` or
/// `DYNAMIC_DNS`: a request for a name under it waits for the name to be looked up, as
/// under Envoy's dynamic forward proxy, and goes where it resolves to; the next requests
/// go there without a lookup. A name that does not resolve is answered 503 with the
/// reason. The requests count under the wildcard's service.
#[tokio::test]
async fn names_under_a_wildcard_without_endpoints_are_looked_up_as_requests_come() {
    let vm = backend("vm", Behaviour::Ok).await;
    for resolution in ["NONE", "DYNAMIC_DNS"] {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: wild, namespace: shop}}\nspec:\n  hosts: [\"*.wild.example\"]\n  \
             location: MESH_EXTERNAL\n  resolution: {resolution}\n  \
             ports: [{{number: {port}, name: http, protocol: HTTP}}]\n",
            port = vm.port()
        );
        // A resolver of its own, which counts its lookups: no query leaves the machine.
        let lookups = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let asked = lookups.clone();
        let resolver = Resolver::new(move |name: String| {
            asked.lock().expect("lookups").push(name.clone());
            async move {
                match name.as_str() {
                    "api.wild.example" | "web.wild.example" => {
                        Ok(Arc::from([std::net::IpAddr::from([127, 0, 0, 1])]))
                    }
                    // Nothing listens there.
                    "down.wild.example" => Ok(Arc::from([std::net::IpAddr::from([127, 0, 0, 2])])),
                    _ => Err("no such name".to_string()),
                }
            }
        });
        let settings = (None, ClientTimeouts::default(), None);
        let proxy = start_east_resolving(&yaml, settings, resolver).await;
        let outbound = proxy.outbound_address();
        for name in ["api.wild.example", "API.wild.example", "web.wild.example"] {
            let host = format!("{name}:{}", vm.port());
            let answer = send(outbound, &host, "/", false).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{resolution} {host}: {:?}",
                answer.headers.get(REASON_HEADER)
            );
            assert_eq!(answer.headers["x-backend"], "vm", "{resolution} {host}");
            assert_eq!(answer.headers["x-seen-host"], host.as_str(), "{resolution}");
        }
        assert_eq!(
            *lookups.lock().expect("lookups"),
            ["api.wild.example", "web.wild.example"],
            "{resolution}: each name looked up once, for its first request"
        );
        // A name that does not resolve, and one where nothing listens.
        for (name, why) in [
            ("gone", "gone.wild.example does not resolve: no such name"),
            ("down", "connect"),
        ] {
            let host = format!("{name}.wild.example:{}", vm.port());
            let answer = send(outbound, &host, "/", false).await;
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{host}");
            let reason = answer.headers[REASON_HEADER].to_str().expect("reason");
            assert!(reason.contains(why), "{host}: {reason}");
        }
        // The names looked up, in the configuration dump; the requests, under the
        // wildcard.
        let dump = send(proxy.admin_address(), "admin", "/config_dump", false).await;
        let dump: serde_json::Value = serde_json::from_str(&dump.body).expect("JSON");
        assert_eq!(
            dump["lookedUp"]["api.wild.example"]["under"],
            "*.wild.example"
        );
        assert_eq!(
            dump["lookedUp"]["web.wild.example"]["addresses"],
            serde_json::json!(["127.0.0.1"])
        );
        assert!(dump["lookedUp"].get("gone.wild.example").is_none());
        let metrics = send(proxy.admin_address(), "admin", "/metrics", false).await;
        let counted = r#"fulcrum_proxy_requests_total{service="*.wild.example",locality="us-east/us-east-1a",code="200"} 3"#;
        assert!(metrics.body.contains(counted), "{}", metrics.body);
        // The connect error too: one service, however many names.
        let failed = r#"fulcrum_proxy_upstream_connect_errors_total{service="*.wild.example"}"#;
        assert!(metrics.body.contains(failed), "{}", metrics.body);
        assert!(!metrics.body.contains("service=\"down.wild.example\""));
    }
}

/// A retry goes to an endpoint no earlier try went to, unless the route says
/// `retryIgnorePreviousHosts: false`: then, as in Envoy, the one endpoint of a service
/// may take the retry of its own failure.
#[tokio::test]
async fn a_retry_may_go_back_to_the_same_endpoint_when_the_route_allows_it() {
    // Answers 503, then 200, in turn.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let only = listener.local_addr().expect("address");
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            let service = service_fn(move |_: Request<Incoming>| {
                let failing = count.fetch_add(1, Ordering::SeqCst).is_multiple_of(2);
                let mut answer = Response::new(Full::new(Bytes::from("answer")));
                if failing {
                    *answer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                async move { Ok::<_, Infallible>(answer) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let route = |host: &str, retries: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: {host}, namespace: shop}}\n\
             spec:\n  hosts: [{host}.example]\n  http:\n  \
             - route: [{{destination: {{host: {host}.example}}}}]\n    retries: {retries}\n"
        )
    };
    let yaml = http_entry("again", "again.example", &[only.port()])
        + "---\n"
        + &http_entry("once", "once.example", &[only.port()])
        + &route(
            "again",
            "{attempts: 2, retryOn: 5xx, retryIgnorePreviousHosts: false}",
        )
        + &route("once", "{attempts: 2, retryOn: 5xx}");
    let proxy = start_east(&yaml, None).await;
    let again = send(proxy.outbound_address(), "again.example", "/", false).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers["x-fulcrum-attempts"], "2");
    let once = send(proxy.outbound_address(), "once.example", "/", false).await;
    assert_eq!(
        once.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no other endpoint"
    );
    assert_eq!(once.headers["x-fulcrum-attempts"], "1");
}
