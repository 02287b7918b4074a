//! Wiring: the outbound listener (HTTP/1.1 and h2c on one port) and the admin listener,
//! started from a configuration and stopped through the returned handle, so tests run the
//! whole proxy in-process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fulcrum_policy::{ConfigSet, Locality, Severity};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::{self, ControlSettings};
use crate::discovery::StaticDiscovery;
use crate::metrics::ProxyMetrics;
use crate::outbound::{Outbound, Routing, answer};
use crate::routing::{RouteError, RouteTable};

/// Largest request head (line and headers) the outbound listener reads; more is refused
/// by hyper before routing.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What a proxy needs to start.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This proxy's cluster (`MeshCluster` name).
    pub cluster: String,
    /// Its locality.
    pub locality: Locality,
    /// Where applications send requests.
    pub outbound: SocketAddr,
    /// Where `/ready`, `/config_dump` and `/metrics` are served.
    pub admin: SocketAddr,
    /// The coordinator session, when the proxy has coordinators.
    pub control: Option<ControlSettings>,
}

/// Why a proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration has errors.
    #[error("the configuration has errors:\n{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// Which.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running proxy.
pub struct Proxy {
    outbound: SocketAddr,
    admin: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Reads configuration files (YAML or JSON, files or directories) for the proxy; any
/// error is refused whole, naming file, line and field.
pub fn load_config(paths: &[&Path]) -> Result<ConfigSet, StartError> {
    let mut config = ConfigSet::new();
    for p in paths {
        config.add_path(p);
    }
    let errors: Vec<String> = config
        .diagnostics()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(StartError::Config(errors.join("\n")))
    }
}

impl Proxy {
    /// Binds the listeners and serves until [`Proxy::stop`]: with the coordinators'
    /// snapshots when there are coordinators (the last-known-good one until the first
    /// arrives), else with `config`.
    pub async fn start(
        settings: ProxyConfig,
        config: Option<&ConfigSet>,
    ) -> Result<Proxy, StartError> {
        let routing_of =
            |resources: &[&fulcrum_policy::Resource], cluster: &str, locality: &Locality| {
                let (routes, errors) = RouteTable::build(resources.iter().copied());
                for e in &errors {
                    tracing::warn!("{e}; this VirtualService is left out");
                }
                let discovery =
                    StaticDiscovery::from_resources(resources.iter().copied(), cluster, locality);
                (
                    Routing {
                        routes,
                        discovery: Arc::new(discovery),
                    },
                    errors,
                )
            };
        let mut version = 0;
        let mut initial = None;
        if let Some(control) = &settings.control {
            match control::load(&control.state_dir) {
                Ok(Some((_, accepted))) => {
                    tracing::info!(
                        version = accepted.version,
                        "routing on the last-known-good snapshot until a coordinator answers"
                    );
                    version = accepted.version;
                    let resources: Vec<_> = accepted.resources.iter().collect();
                    initial = Some(routing_of(
                        &resources,
                        &settings.cluster,
                        &settings.locality,
                    ));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("last-known-good snapshot not used: {e}"),
            }
        }
        if initial.is_none()
            && let Some(config) = config
        {
            let resources: Vec<_> = config.resources().collect();
            initial = Some(routing_of(
                &resources,
                &settings.cluster,
                &settings.locality,
            ));
        }
        let route_errors = initial.as_ref().map(|(_, e)| e.clone()).unwrap_or_default();
        let metrics = Arc::new(ProxyMetrics::new());
        let outbound = Arc::new(Outbound::new(
            initial.map(|(r, _)| r),
            metrics.clone(),
            settings.locality.to_string(),
        ));
        let bind = |address: SocketAddr| async move {
            TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind { address, source })
        };
        let outbound_listener = bind(settings.outbound).await?;
        let admin_listener = bind(settings.admin).await?;
        let addresses = (
            outbound_listener
                .local_addr()
                .map_err(|source| StartError::Bind {
                    address: settings.outbound,
                    source,
                })?,
            admin_listener
                .local_addr()
                .map_err(|source| StartError::Bind {
                    address: settings.admin,
                    source,
                })?,
        );
        let (stop, stopped) = watch::channel(false);
        let service = {
            let outbound = outbound.clone();
            move |request: Request<Incoming>| {
                let outbound = outbound.clone();
                async move { Ok::<_, Infallible>(outbound.handle(request).await) }
            }
        };
        tokio::spawn(serve(outbound_listener, service, stopped.clone()));
        let snapshot_version = Arc::new(AtomicU64::new(version));
        metrics.snapshot_version.set(version as i64);
        if let Some(control) = settings.control.clone() {
            let (outbound, seen) = (outbound.clone(), snapshot_version.clone());
            let (cluster, locality) = (settings.cluster.clone(), settings.locality.clone());
            let (connected, mut connection) = watch::channel(false);
            let gauge = metrics.coordinator_connected.clone();
            tokio::spawn(async move {
                while connection.changed().await.is_ok() {
                    gauge.set(i64::from(*connection.borrow_and_update()));
                }
            });
            let version_gauge = metrics.snapshot_version.clone();
            tokio::spawn(control::run(
                control,
                version,
                move |accepted| {
                    let resources: Vec<_> = accepted.resources.iter().collect();
                    let (routing, _) = routing_of(&resources, &cluster, &locality);
                    outbound.update(routing);
                    seen.store(accepted.version, Ordering::Release);
                    version_gauge.set(i64::try_from(accepted.version).unwrap_or(i64::MAX));
                    tracing::info!(version = accepted.version, "snapshot applied");
                },
                connected,
                stopped.clone(),
            ));
        }
        let dump = Arc::new(config_dump(&settings, &route_errors));
        let admin = {
            let outbound = outbound.clone();
            move |request: Request<Incoming>| {
                let (dump, metrics, outbound) = (dump.clone(), metrics.clone(), outbound.clone());
                let version = snapshot_version.clone();
                async move {
                    let ready = outbound.is_ready();
                    let version = version.load(Ordering::Acquire);
                    Ok::<_, Infallible>(admin(&request, &dump, &metrics, ready, version))
                }
            }
        };
        tokio::spawn(serve(admin_listener, admin, stopped));
        tracing::info!(
            outbound = %addresses.0,
            admin = %addresses.1,
            cluster = %settings.cluster,
            "fulcrum-proxy serving"
        );
        Ok(Proxy {
            outbound: addresses.0,
            admin: addresses.1,
            stop,
        })
    }

    /// The outbound listener's address.
    pub fn outbound_address(&self) -> SocketAddr {
        self.outbound
    }

    /// The admin listener's address.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin
    }

    /// Stops accepting; connections in progress finish.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve<S, F>(listener: TcpListener, service: S, mut stopped: watch::Receiver<bool>)
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: say so and keep serving.
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().max_buf_size(MAX_HEADER_BYTES);
            builder
                .http2()
                .max_header_list_size(MAX_HEADER_BYTES as u32);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(service))
                .await;
        });
    }
}

fn config_dump(settings: &ProxyConfig, route_errors: &[RouteError]) -> String {
    let errors: Vec<String> = route_errors.iter().map(|e| e.to_string()).collect();
    let value = serde_json::json!({
        "cluster": settings.cluster,
        "locality": settings.locality.to_string(),
        "routeErrors": errors,
    });
    format!("{value}\n")
}

fn admin(
    request: &Request<Incoming>,
    dump: &str,
    metrics: &ProxyMetrics,
    ready: bool,
    version: u64,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics.render())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        // Ready once there is something to route with: configuration, a pushed snapshot
        // or the last-known-good one.
        "/ready" if ready => Response::new(Full::new(Bytes::from_static(b"ready\n"))),
        "/ready" => answer(StatusCode::SERVICE_UNAVAILABLE, "no configuration yet"),
        "/version" => Response::new(Full::new(Bytes::from(format!("{version}\n")))),
        "/config_dump" => {
            let mut r = Response::new(Full::new(Bytes::from(dump.to_string())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        other => answer(StatusCode::NOT_FOUND, &format!("no admin page {other:?}")),
    }
}
