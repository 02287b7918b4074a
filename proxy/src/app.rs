//! Wiring: the outbound listener (HTTP/1.1 and h2c on one port), the east-west listener
//! (h2 over mTLS, when the proxy has certificates), the admin listener, the coordinator
//! session and the report loop, started from a configuration and stopped through the
//! returned handle, so tests run the whole proxy in-process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::body::ProxyBody;
use bytes::Bytes;
use fulcrum_policy::{ConfigSet, Fingerprint, Locality, Severity};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::access_log::{AccessLog, Destination};
use crate::balance::ClusterInfo;
use crate::control::{self, ControlSettings, report};
use crate::dns::Resolver;
use crate::downstream::ClientTimeouts;
use crate::drain::DrainSwitch;
use crate::framing::HeadGuard;
use crate::health::{self, HealthCheckSettings};
use crate::metrics::ProxyMetrics;
use crate::outbound::{ClientAddress, Outbound, answer};
use crate::routing::RouteError;
use crate::transport::tls::RELOAD_EVERY;
use crate::transport::{MeshTls, TlsError, serve_east_west};
use crate::workers::{Listener, Workers};

/// Largest request head (line and headers) a listener reads; more is refused before
/// routing (the outbound listener's HTTP/1 limit is [`crate::wire::MAX_HEAD_BYTES`], the
/// same).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How often a drain looks for connections still open.
const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(50);

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
    /// Where other clusters' proxies connect, and this proxy's certificates; without,
    /// the proxy never leaves its cluster.
    pub east_west: Option<EastWestSettings>,
    /// How often reports go to the coordinators.
    pub report_interval: Duration,
    /// Active health checks of this cluster's endpoints, when wanted.
    pub health_checks: Option<HealthCheckSettings>,
    /// Threads serving the outbound and east-west listeners' connections, each with its
    /// own runtime and upstream connections ([`crate::workers`]); at least one is started.
    pub workers: usize,
    /// How long applications' connections may idle, and stall in a request.
    pub client_timeouts: ClientTimeouts,
    /// Where a line per request is written, when anywhere ([`crate::access_log`]).
    pub access_log: Option<Destination>,
    /// How often endpoint names given for DNS are resolved again ([`crate::dns`]).
    pub dns_refresh: Duration,
    /// How names are looked up (the system's resolver but in tests).
    pub resolver: Resolver,
    /// The configuration files to follow, for a proxy without coordinators.
    pub config_files: Option<ConfigFiles>,
}

/// How often a proxy without coordinators looks at its configuration files.
pub const CONFIG_LOOK_EVERY: Duration = Duration::from_secs(1);

/// The configuration files (`--config`) a proxy without coordinators routes on, followed
/// as they change. (With coordinators they only stand in until the first snapshot.)
#[derive(Debug, Clone)]
pub struct ConfigFiles {
    /// The files and directories, as given.
    pub paths: Vec<PathBuf>,
    /// What they were just before the configuration the proxy starts on was read from
    /// them.
    pub read: Fingerprint,
    /// How often they are looked at ([`CONFIG_LOOK_EVERY`]).
    pub every: Duration,
}

/// What a proxy following its configuration files shows of them in `/config_dump`.
#[derive(Debug)]
struct FollowedFiles {
    /// The files and directories, as given.
    paths: Vec<String>,
    /// The last change refused, while no later one has been applied: when (Unix
    /// milliseconds) and why.
    refused: std::sync::Mutex<Option<(u64, String)>>,
}

impl FollowedFiles {
    fn new(files: &ConfigFiles) -> FollowedFiles {
        FollowedFiles {
            paths: files
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            refused: std::sync::Mutex::new(None),
        }
    }

    fn set_refused(&self, refused: Option<String>) {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        if let Ok(mut slot) = self.refused.lock() {
            *slot = refused.map(|reason| (now(), reason));
        }
    }

    fn dump(&self) -> serde_json::Value {
        let refused = self.refused.lock().ok().and_then(|r| r.clone());
        let refused =
            refused.map(|(at, reason)| serde_json::json!({ "atMs": at, "reason": reason }));
        serde_json::json!({ "paths": self.paths, "refused": refused })
    }
}

/// The east-west listener and the mTLS material it and the client side use.
#[derive(Debug, Clone)]
pub struct EastWestSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The certificates directory (`ca.pem`, `proxy-<cluster>.pem`, `-key.pem`).
    pub certs: PathBuf,
}

/// Why a proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration has errors.
    #[error("the configuration has errors:\n{0}")]
    Config(String),
    /// The certificates cannot be used.
    #[error("east-west mTLS: {0}")]
    Tls(#[from] TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// Which.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The worker threads could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    /// The access log could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
}

/// A running proxy.
pub struct Proxy {
    outbound: SocketAddr,
    admin: SocketAddr,
    east_west: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    drain: DrainSwitch,
    workers: Arc<Workers>,
    access_log: Option<Arc<AccessLog>>,
}

/// Reads configuration files (YAML or JSON, files or directories) for the proxy; any
/// error is refused whole, naming file, line and field.
pub fn load_config(paths: &[&Path]) -> Result<ConfigSet, StartError> {
    let mut config = ConfigSet::new();
    for p in paths {
        config.add_path(p);
    }
    // A path that cannot be read (missing, not text, a directory without YAML) is an
    // error as a malformed object is: a proxy must not start on part of what it was
    // given.
    let unread = config.source_errors.iter().map(ToString::to_string);
    let errors: Vec<String> = unread
        .chain(
            config
                .diagnostics()
                .filter(|d| d.severity == Severity::Error)
                .map(|d| d.to_string()),
        )
        .collect();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(StartError::Config(errors.join("\n")))
    }
}

/// Reads the configuration files again once they have changed and stayed so for a look
/// (a file being written is not read half-way), and routes on what they hold, as the
/// proxy started on them. Configuration with errors is logged, each error with its file,
/// line and field, and not applied: the proxy goes on routing on what it had, and reads
/// the files again at their next change.
async fn follow_config(
    files: ConfigFiles,
    (outbound, metrics, shown): (Arc<Outbound>, Arc<ProxyMetrics>, Arc<FollowedFiles>),
    mut stop: watch::Receiver<bool>,
) {
    let paths: Vec<&Path> = files.paths.iter().map(PathBuf::as_path).collect();
    let mut read = files.read;
    let mut seen = read.clone();
    let mut looks = tokio::time::interval(files.every);
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = looks.tick() => {}
            _ = stop.changed() => return,
        }
        let now = Fingerprint::of(&paths);
        let settled = now == seen;
        seen = now;
        if !settled || seen == read {
            continue;
        }
        read = seen.clone();
        // Read and checked off this thread: a large configuration takes a while, and the
        // coordinator session, reports and admin pages run here.
        let given = files.paths.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let paths: Vec<&Path> = given.iter().map(PathBuf::as_path).collect();
            load_config(&paths)
        });
        let loaded = match loaded.await {
            Ok(loaded) => loaded,
            Err(e) => Err(StartError::Config(format!("reading them failed: {e}"))),
        };
        match loaded {
            Ok(config) => {
                let resources: Vec<_> = config.resources().collect();
                let clusters = clusters_of(&resources);
                warn_left_out(&outbound.configure(&resources, &[], clusters));
                metrics.config_reloads.inc();
                shown.set_refused(None);
                tracing::info!("the configuration files changed; routing on them now");
            }
            Err(e) => {
                metrics.config_reload_failures.inc();
                shown.set_refused(Some(e.to_string()));
                tracing::error!(
                    "the configuration files changed and are not applied; \
                     routing on the previous configuration: {e}"
                );
            }
        }
    }
}

/// Names each VirtualService left out of the routing, and why.
fn warn_left_out(errors: &[RouteError]) {
    for e in errors {
        tracing::warn!("{e}; this VirtualService is left out");
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
        let mut version = 0;
        let mut produced = None;
        let mut initial = None;
        if let Some(control) = &settings.control {
            match control::load(&control.state_dir) {
                Ok(Some((_, accepted))) => {
                    tracing::info!(
                        version = accepted.version,
                        "routing on the last-known-good snapshot until a coordinator answers"
                    );
                    version = accepted.version;
                    produced = Some((accepted.weights.clone(), accepted.produced_at_ms));
                    initial = Some((
                        accepted.resources.clone(),
                        accepted.weights.clone(),
                        accepted.clusters.clone(),
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
            let clusters = clusters_of(&resources);
            initial = Some((
                resources.into_iter().cloned().collect(),
                Vec::new(),
                clusters,
            ));
        }
        let metrics = Arc::new(ProxyMetrics::new());
        let mut outbound = Outbound::new(
            None,
            metrics.clone(),
            settings.cluster.clone(),
            settings.locality.clone(),
        )
        .with_client_timeouts(settings.client_timeouts)
        .with_resolver(settings.resolver.clone());
        let (drain, draining) = crate::drain::drain();
        outbound = outbound.with_drain(draining);
        let mut access_log = None;
        if let Some(destination) = &settings.access_log {
            let dropped = metrics.access_log_dropped.clone();
            let log = AccessLog::open(destination, dropped).map_err(StartError::AccessLog)?;
            let log = Arc::new(log);
            outbound = outbound.with_access_log(log.clone());
            access_log = Some(log);
        }
        let tls = match &settings.east_west {
            Some(e) => {
                let tls = Arc::new(MeshTls::load(&e.certs, &settings.cluster)?);
                outbound = outbound.with_east_west(tls.clone());
                Some(tls)
            }
            None => None,
        };
        let outbound = Arc::new(outbound);
        if let Some((resources, weights, clusters)) = initial {
            let resources: Vec<_> = resources.iter().collect();
            warn_left_out(&outbound.configure(&resources, &weights, clusters));
        }
        let (stop, stopped) = watch::channel(false);
        let mut followed_files = None;
        if let Some(files) = settings.config_files.clone()
            && settings.control.is_none()
        {
            let shown = Arc::new(FollowedFiles::new(&files));
            followed_files = Some(shown.clone());
            let followed = (outbound.clone(), metrics.clone(), shown);
            tokio::spawn(follow_config(files, followed, stopped.clone()));
        }
        tokio::spawn(crate::dns::run(
            outbound.clone(),
            settings.dns_refresh,
            stopped.clone(),
        ));
        if let Some(checks) = settings.health_checks.clone() {
            let source = outbound.clone();
            tokio::spawn(health::run(
                outbound.health(),
                move || source.local_endpoints(),
                checks,
                stopped.clone(),
            ));
        }
        let bind = |address: SocketAddr| async move {
            listen(address).map_err(|source| StartError::Bind { address, source })
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
        let workers = Arc::new(
            Workers::start(settings.workers, outbound.clone(), stopped.clone())
                .map_err(StartError::Workers)?,
        );
        let mut east_west = None;
        if let (Some(e), Some(tls)) = (&settings.east_west, tls) {
            let listener = bind(e.listen).await?;
            east_west = Some(listener.local_addr().map_err(|source| StartError::Bind {
                address: e.listen,
                source,
            })?);
            tokio::spawn(tls.clone().watch(RELOAD_EVERY, stopped.clone()));
            tokio::spawn(serve_east_west(listener, workers.clone(), stopped.clone()));
        }
        tokio::spawn(accept_into(
            outbound_listener,
            Listener::Outbound,
            workers.clone(),
            stopped.clone(),
        ));
        let snapshot_version = Arc::new(AtomicU64::new(version));
        metrics.snapshot_version.set(version as i64);
        if let Some((weights, at)) = &produced {
            metrics.set_weights(weights, *at);
        }
        if let Some(control) = settings.control.clone() {
            let (outbound, seen) = (outbound.clone(), snapshot_version.clone());
            let (connected, mut connection) = watch::channel(false);
            let gauge = metrics.coordinator_connected.clone();
            tokio::spawn(async move {
                while connection.changed().await.is_ok() {
                    gauge.set(i64::from(*connection.borrow_and_update()));
                }
            });
            let shown = metrics.clone();
            tokio::spawn(report::run(
                control.clone(),
                outbound.stats(),
                outbound.clone(),
                settings.report_interval,
                stopped.clone(),
            ));
            tokio::spawn(control::run(
                control,
                version,
                move |accepted| {
                    let resources: Vec<_> = accepted.resources.iter().collect();
                    let clusters = accepted.clusters.clone();
                    warn_left_out(&outbound.configure(&resources, &accepted.weights, clusters));
                    seen.store(accepted.version, Ordering::Release);
                    shown
                        .snapshot_version
                        .set(i64::try_from(accepted.version).unwrap_or(i64::MAX));
                    shown.set_weights(&accepted.weights, accepted.produced_at_ms);
                    tracing::debug!(version = accepted.version, "snapshot applied");
                },
                connected,
                stopped.clone(),
            ));
        }
        let identity = Arc::new((settings.cluster.clone(), settings.locality.to_string()));
        let admin = {
            let (outbound, metrics) = (outbound.clone(), metrics.clone());
            move |request: Request<Incoming>| {
                let (identity, metrics, outbound) =
                    (identity.clone(), metrics.clone(), outbound.clone());
                let (version, files) = (snapshot_version.clone(), followed_files.clone());
                async move {
                    let version = version.load(Ordering::Acquire);
                    let page = Admin {
                        outbound: &outbound,
                        metrics: &metrics,
                        cluster: &identity.0,
                        locality: &identity.1,
                        version,
                        files: files.as_deref(),
                    };
                    Ok::<_, Infallible>(page.answer(&request))
                }
            }
        };
        tokio::spawn(serve(admin_listener, admin, metrics, stopped));
        tracing::info!(
            outbound = %addresses.0,
            admin = %addresses.1,
            cluster = %settings.cluster,
            "fulcrum-proxy serving"
        );
        Ok(Proxy {
            outbound: addresses.0,
            admin: addresses.1,
            east_west,
            stop,
            drain,
            workers,
            access_log,
        })
    }

    /// The outbound listener's address.
    pub fn outbound_address(&self) -> SocketAddr {
        self.outbound
    }

    /// The east-west listener's address, when it has one.
    pub fn east_west_address(&self) -> Option<SocketAddr> {
        self.east_west
    }

    /// The admin listener's address.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin
    }

    /// Begins draining the connections ([`crate::drain`]): `/ready` answers 503, and each
    /// connection closes once what it is doing is done. The listeners still accept, and
    /// serve new connections the same way.
    pub fn drain(&self) {
        tracing::info!("draining: connections close as their requests finish");
        self.drain.begin();
    }

    /// Waits until no application's or peer's connection is open, or `within` has
    /// passed; says whether none is.
    pub async fn drained(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let open: usize = self.workers.open_connections().iter().sum();
            if open == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("drain time up with {open} connections open");
                return false;
            }
            tokio::time::sleep(DRAIN_CHECK_EVERY).await;
        }
    }

    /// Stops: the listeners close, and so do the connections, whatever they are doing.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Has the access log open its file again by its path (after a rotation moved it
    /// away), when the proxy keeps one.
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.access_log {
            tracing::info!("reopening the access log");
            log.reopen();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections on `listener` and serves each with `service`, until `stopped`;
/// failed accepts count in `metrics`.
async fn serve<S, F>(
    listener: TcpListener,
    service: S,
    metrics: Arc<ProxyMetrics>,
    mut stopped: watch::Receiver<bool>,
) where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let mut failures = AcceptFailures::default();
    let count = || {
        metrics.accept_failures.inc();
    };
    while let Some(stream) = accept(&listener, &mut failures, &count, &mut stopped).await {
        let service = service.clone();
        tokio::spawn(serve_connection(
            stream,
            move |request, _| service(request),
            ADMIN_HEAD_TIMEOUT,
        ));
    }
}

/// Accepts connections on `listener` (the `kind` of listener) and hands each to one of
/// `workers`, until `stopped`.
pub(crate) async fn accept_into(
    listener: TcpListener,
    kind: Listener,
    workers: Arc<Workers>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut failures = AcceptFailures::default();
    let count = || workers.accept_failed();
    while let Some(stream) = accept(&listener, &mut failures, &count, &mut stopped).await {
        workers.hand(stream, kind);
    }
}

/// The listen queue asked for: the kernel holds it to `net.core.somaxconn` (4096 on
/// current Linux), which is what Envoy's listeners use. The 128 a plain bind gives
/// overflowed when a few thousand connections came at once (clients reconnecting after
/// a restart): each connection the queue dropped waited a second for its SYN to be sent
/// again.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// A listener on `address` (SO_REUSEADDR, as a plain bind sets it) with a listen queue of
/// [`LISTEN_BACKLOG`].
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long the accept loop pauses after a failed accept.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning about failed accepts per this long.
pub const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Failed accepts since the last warning about them.
#[derive(Default)]
struct AcceptFailures {
    since_warning: u64,
    warned: Option<std::time::Instant>,
}

/// The next connection (with TCP_NODELAY), or `None` once `stopped`.
///
/// A failed accept (mostly: out of file descriptors) leaves the connection in the
/// listen queue, so accepting again at once fails again, in a loop that would take a
/// whole core. Instead the loop pauses [`ACCEPT_PAUSE`] and keeps serving the
/// connections it has (closing them frees descriptors); each failure is counted in
/// `fulcrum_proxy_accept_failures_total` (by `count`), and the log says so at most once
/// per [`ACCEPT_WARNING_EVERY`].
async fn accept(
    listener: &TcpListener,
    failures: &mut AcceptFailures,
    count: &(dyn Fn() + Sync),
    stopped: &mut watch::Receiver<bool>,
) -> Option<TcpStream> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => return None,
        };
        let e = match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            Err(e) => e,
        };
        count();
        failures.since_warning += 1;
        if failures
            .warned
            .is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_EVERY)
        {
            let times = match failures.since_warning {
                1 => String::new(),
                n => format!(" ({n} times since the last warning)"),
            };
            tracing::warn!(
                "accept failed: {e}{times}; trying again every {}ms",
                ACCEPT_PAUSE.as_millis()
            );
            failures.since_warning = 0;
            failures.warned = Some(std::time::Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(ACCEPT_PAUSE) => {}
            _ = stopped.changed() => return None,
        }
    }
}

/// How long an admin connection may take to send its first request, and each later
/// request head to come whole (hyper's header read timeout, timed from when the
/// connection waits for it).
pub const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection of the admin listener (HTTP/1.1 or h2c, with hyper) with
/// `service`, which is given each request and the client's address. A first request head
/// with both Content-Length and Transfer-Encoding is answered 400 and the connection
/// closed ([`HeadGuard`]). A connection whose first request has not come whole within
/// `head_timeout` of its opening, or a later HTTP/1 request head within that of when it
/// was waited for, is closed: a client cannot hold one by sending nothing, or a byte now
/// and then. The outbound listener's connections are served by [`crate::downstream`],
/// which checks every request's framing.
pub(crate) async fn serve_connection<S, F>(stream: TcpStream, service: S, head_timeout: Duration)
where
    S: Fn(Request<Incoming>, Option<ClientAddress>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let client = stream.peer_addr().ok().map(ClientAddress);
    let stream = HeadGuard::new(stream, MAX_HEADER_BYTES);
    let (conflict, first) = (stream.conflict(), Arc::new(AtomicBool::new(true)));
    let waiting_for_first = Arc::clone(&first);
    let guarded = move |request: Request<Incoming>| {
        let refuse = first.swap(false, Ordering::AcqRel) && conflict.load(Ordering::Acquire);
        let service = service.clone();
        async move {
            if refuse {
                let mut r = answer(
                    StatusCode::BAD_REQUEST,
                    "both Content-Length and Transfer-Encoding: ambiguous framing",
                );
                r.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                return Ok(r);
            }
            service(request, client).await
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_HEADER_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    builder
        .http2()
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let serving = builder.serve_connection(TokioIo::new(stream), service_fn(guarded));
    tokio::pin!(serving);
    // hyper's header read timeout covers the heads it reads itself; the first one is
    // read by the guard, and before it hyper's choice between HTTP/1 and h2 waits for
    // bytes with no timer of its own. So the first request is timed here.
    tokio::select! {
        _ = &mut serving => return,
        () = tokio::time::sleep(head_timeout) => {}
    }
    if waiting_for_first.load(Ordering::Acquire) {
        return;
    }
    let _ = serving.await;
}

/// The clusters the configuration's MeshCluster objects describe.
pub fn clusters_of(resources: &[&fulcrum_policy::Resource]) -> Vec<ClusterInfo> {
    resources
        .iter()
        .filter_map(|r| match r {
            fulcrum_policy::Resource::MeshCluster(o) => Some(ClusterInfo {
                name: o.spec.name(&o.metadata.name).to_string(),
                locality: o.spec.locality.clone(),
                gateways: o
                    .spec
                    .east_west_gateways
                    .iter()
                    .map(|g| format!("{}:{}", g.address, g.port))
                    .collect(),
            }),
            _ => None,
        })
        .collect()
}

/// What the admin listener reads.
struct Admin<'a> {
    outbound: &'a Outbound,
    metrics: &'a ProxyMetrics,
    cluster: &'a str,
    locality: &'a str,
    version: u64,
    /// The configuration files followed, for a proxy without coordinators.
    files: Option<&'a FollowedFiles>,
}

impl Admin<'_> {
    fn config_dump(&self) -> String {
        let mut value = self.outbound.dump();
        value["cluster"] = self.cluster.into();
        value["locality"] = self.locality.into();
        value["version"] = self.version.into();
        if let Some(files) = self.files {
            value["configFiles"] = files.dump();
        }
        format!("{value}\n")
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<ProxyBody> {
        let metrics = self.metrics;
        match request.uri().path() {
            "/metrics" => {
                let mut r = Response::new(ProxyBody::Whole(Bytes::from(metrics.render())));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            // Not ready while draining: a load balancer should send no new connections.
            "/ready" if self.outbound.drain().begun() => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining: the proxy is about to exit",
            ),
            // Ready once there is something to route with: configuration, a pushed snapshot
            // or the last-known-good one.
            "/ready" if self.outbound.is_ready() => {
                Response::new(ProxyBody::Whole(Bytes::from_static(b"ready\n")))
            }
            "/ready" => answer(StatusCode::SERVICE_UNAVAILABLE, "no configuration yet"),
            "/version" => {
                Response::new(ProxyBody::Whole(Bytes::from(format!("{}\n", self.version))))
            }
            "/config_dump" => {
                let mut r = Response::new(ProxyBody::Whole(Bytes::from(self.config_dump())));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            other => answer(StatusCode::NOT_FOUND, &format!("no admin page {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections the proxy has not accepted yet wait in the listen queue: a burst past
    /// the 128 a plain bind allows is connected at once, none of it dropped to send its
    /// SYN again a second later.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_listen_queue() {
        // The kernel holds the queue to somaxconn; a machine that allows less than the
        // burst cannot show it.
        let allowed = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(128);
        let burst = allowed.min(512) - 1;
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        // Nothing accepts. Under the second a dropped SYN waits before it is sent again.
        let connects = (0..burst)
            .map(|_| tokio::time::timeout(Duration::from_millis(900), TcpStream::connect(address)));
        let connected = futures::future::join_all(connects).await;
        let made = connected.iter().filter(|c| matches!(c, Ok(Ok(_)))).count();
        assert_eq!(made, burst, "connections made while none was accepted");
        drop(listener);
    }

    /// A configuration path that cannot be read stops the proxy from starting, named,
    /// rather than leave it to serve on what it could read (or on nothing).
    #[test]
    fn a_configuration_path_that_cannot_be_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n\
             spec: {hosts: [a.example], ports: [{number: 80, name: http}]}\n",
        )
        .unwrap();
        assert!(load_config(&[&good]).is_ok());
        for path in [&missing, &empty] {
            let Err(StartError::Config(text)) = load_config(&[&good, path]) else {
                panic!("{} was read as good", path.display());
            };
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
    }

    /// An admin connection that sends nothing, or trickles a request head in a byte at a
    /// time, is closed once its head timeout passes; a whole request is answered.
    #[tokio::test]
    async fn an_admin_connection_that_sends_nothing_or_trickles_is_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let timeout = Duration::from_millis(300);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = |_, _| async { Ok(answer(StatusCode::OK, "fine")) };
                tokio::spawn(serve_connection(stream, service, timeout));
            }
        });
        // Reads until the server closes, writing `trickle` a byte at a time meanwhile;
        // what was read, or `None` if the connection was still open after 10 s.
        async fn until_closed(stream: &mut TcpStream, trickle: bool) -> Option<Vec<u8>> {
            let (mut read, started) = (Vec::new(), std::time::Instant::now());
            while started.elapsed() < Duration::from_secs(10) {
                let mut buf = [0u8; 256];
                let wait = Duration::from_millis(50);
                match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return Some(read),
                    Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
                    Err(_) if trickle => {
                        if stream.write_all(b"a").await.is_err() {
                            return Some(read);
                        }
                    }
                    Err(_) => {}
                }
            }
            None
        }

        let mut silent = TcpStream::connect(address).await.unwrap();
        assert_eq!(until_closed(&mut silent, false).await, Some(Vec::new()));

        let mut trickling = TcpStream::connect(address).await.unwrap();
        trickling
            .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nx-pad: ")
            .await
            .unwrap();
        let read = until_closed(&mut trickling, true).await;
        assert!(read.is_some(), "a trickled head is not held for ever");

        let mut whole = TcpStream::connect(address).await.unwrap();
        whole
            .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .unwrap();
        let read = until_closed(&mut whole, false).await.unwrap_or_default();
        assert!(read.starts_with(b"HTTP/1.1 200 OK"), "{read:?}");
    }
}
