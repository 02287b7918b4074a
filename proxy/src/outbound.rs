//! The outbound path: an application's request, addressed to a service by its Host, is
//! routed ([`crate::routing`]), sent to a destination locality by the weight row the
//! coordinator pushed for this proxy's locality ([`crate::balance::row`]), and forwarded
//! to an endpoint of this cluster or over mTLS to another cluster's east-west listener
//! ([`crate::transport`]), with the route's timeout, retries, faults, header changes and
//! mirrors. Every try is counted for the next report ([`crate::control::report`]).
//!
//! The east-west listener's requests come in through [`Outbound::handle_east_west`]:
//! routing was done by the sending proxy, so they go to this cluster's endpoints only and
//! are never forwarded again.
//!
//! Every answer the proxy makes itself carries `x-fulcrum-reason` saying why: a bad Host
//! (400), an unknown service (404), no endpoint (503), an upstream that could not be
//! reached (503), a timeout (504), an injected fault. It never panics on what a client
//! sent; hyper refuses malformed HTTP (bad framing, invalid or differing Content-Length,
//! oversized heads) before a request gets here, and [`crate::framing`] refuses a request
//! that carries both Content-Length and Transfer-Encoding.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use fulcrum_policy::Locality;
use fulcrum_policy::health::EndpointInventory;
use fulcrum_policy::weights::WeightRow;
use futures::future::{Either, FutureExt as _};
use http::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::FastMap;
use crate::access_log::{AccessLog, Line};
use crate::balance::{
    ClusterInfo, EndpointPicker, LocalityRow, OutlierDetector, OutlierSettings, Place, TryOutcome,
};
use crate::body::{End, ProxyBody, WHOLE_BODY_BYTES};
use crate::control::report::{Outcome, ReportSource, Stats};
use crate::discovery::{
    BalanceSettings, Discovery, Endpoint, HashOn, InUse, PoolLimits, Resolved, RetryBudgetLimit,
    StaticDiscovery,
};
use crate::dns::Resolver;
use crate::downstream::ClientTimeouts;
use crate::drain::Drain;
use crate::grpc::{
    GRPC_STATUS, GRPC_TIMEOUT, GrpcCode, call_timeout, for_grpc_client, grpc_timeout,
    grpc_timeout_value, http_for_code, is_grpc, outcome_status,
};
use crate::health::Health;
use crate::metrics::ProxyMetrics;
use crate::routing::names::ServiceNames;
use crate::routing::{
    Abort, CorsOutcome, Forward, HeaderChanges, RandomChance, RetryOn, RetryPolicy, RouteDecision,
    RouteError, RouteRequest, RouteTable, Target, with_port,
};
use crate::tee::tee;
use crate::transport::{H2Pool, MeshTls, Peer, SendError};
use crate::tunnel::{H2Stream, Holding, TunnelIo, splice};
use crate::upload::{ArrivingBody, RequestBody, ToSend};
use crate::upstream::{
    EndpointIo, Http1Body, Http1Pool, Http1Request, POOL_DEFAULTS, PoolSettings, UpstreamError,
    connect_endpoint,
};
use crate::wire::{MAX_HEAD_BYTES, RawFields, is_hop_by_hop, merge_raw_fields};
use h2::RecvStream;
use h2::server::SendResponse;

/// The header on every answer the proxy makes itself.
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-reason");
/// The header naming the endpoint that answered.
pub const UPSTREAM_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-upstream");
/// The header naming the cluster whose endpoint answered.
pub const CLUSTER_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-cluster");
/// How many tries the answer took (the first and its retries).
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-attempts");
/// On an east-west request: the subset of the service to serve.
pub const SUBSET_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-subset");
/// On a request an east-west listener forwards to its endpoint: `source->this` cluster.
pub const HOP_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-hop");
/// Set on a request sent to another cluster's proxy: the consistent-hash key the sending
/// proxy made for it (from the client's address under `useSourceIp`, or a cookie it is
/// about to set), so that the receiving proxy picks its endpoint by the same key. Only a
/// proxy of the mesh sets it; one taken from an application is dropped.
pub const HASH_KEY_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-hash-key");
/// Set on a request sent to another cluster's proxy when the service the sending proxy
/// routed it to is not the one its authority names (a VirtualService sending one host to
/// another service, or a short name given for a Kubernetes service): the service's full
/// name. The authority itself goes on to the endpoint unchanged, as Envoy keeps the Host.
pub const SERVICE_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-service");
/// Sent to another cluster's proxy with a request its route sent to a service port other
/// than the one its authority names (`destination.port`): that port.
pub const PORT_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-port");
/// The most of a request body forwarded as it arrives that is kept for a retry, and that
/// may wait for a mirror's copy of it to be sent: Envoy's default buffer limit, past
/// which it does not retry a request, nor go on shadowing it.
const RETRY_BUFFER_BYTES: usize = 1024 * 1024;
/// How long a connection to an endpoint may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a cluster whose gateway refused a connection is passed over (then tried
/// again by the next request that would go there).
pub const UNREACHABLE_HOLD: Duration = Duration::from_secs(2);

/// The answer type of the outbound path.
pub type ProxyResponse = Response<ProxyBody>;

/// The answer of a fault that aborts a request: its HTTP status, or for a gRPC status 503
/// that a gRPC client gets as that status ([`crate::grpc::for_grpc_client`]).
fn aborted(abort: Abort) -> ProxyResponse {
    let reason = "fault injected by route";
    match abort {
        Abort::Http(status) => answer(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            reason,
        ),
        Abort::Grpc(code) => {
            let mut response = answer(StatusCode::SERVICE_UNAVAILABLE, reason);
            response.extensions_mut().insert(GrpcCode(code));
            response
        }
    }
}

/// The field naming a request along its way, end to end: tracing systems and logs read
/// it. The proxy that first sees a request without one gives it one, as Envoy does.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A new request id: a random UUID (version 4), as Envoy makes them. Made for most
/// requests, so from [`quick_random`] rather than the cryptographic generator (a
/// thousand instructions a request): an id needs to differ, not to be unguessable.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = ((u128::from(quick_random()) << 64) | u128::from(quick_random())).to_be_bytes();
    // Version 4 (random) in byte 6's high nibble; variant 10 in byte 8's top bits.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static(""))
}

thread_local! {
    /// [`quick_random`]'s state, seeded from the operating system's randomness per thread.
    static QUICK_RANDOM: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
}

/// 64 well-mixed bits, in a few instructions: the wyrand generator (a 64-bit counter
/// stepped by an odd constant, its square folded), not for secrets.
fn quick_random() -> u64 {
    QUICK_RANDOM.with(|state| {
        let next = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(next);
        let wide = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        ((wide >> 64) as u64) ^ (wide as u64)
    })
}

/// How many fields the proxy adds to an endpoint's answer, at most, on its usual path:
/// [`UPSTREAM_HEADER`], [`CLUSTER_HEADER`], [`ATTEMPTS_HEADER`] and a hash cookie.
const PROXY_FIELDS: usize = 4;

/// An answer the proxy makes itself.
pub fn answer(status: StatusCode, reason: &str) -> ProxyResponse {
    let mut response = Response::new(ProxyBody::Whole(Bytes::from(format!("{reason}\n"))));
    *response.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(reason) {
        response.headers_mut().insert(REASON_HEADER, v);
    }
    response
}

/// What the outbound path routes with; replaced whole when a new snapshot arrives.
pub struct Routing {
    /// The compiled VirtualServices.
    pub routes: RouteTable,
    /// This cluster's endpoints.
    pub discovery: Arc<dyn Discovery>,
    /// The pushed rows for this proxy's locality, by service, then subset.
    pub rows: FastMap<String, FastMap<String, LocalityRow>>,
    /// The clusters of the mesh.
    pub clusters: Vec<ClusterInfo>,
    /// VirtualServices left out because they do not compile.
    pub route_errors: Vec<String>,
    /// The short names applications may give Kubernetes services.
    pub names: ServiceNames,
    /// The endpoint names its ServiceEntries have resolved by DNS.
    pub dns_names: Vec<String>,
    /// Whether it has wildcard hosts whose names are looked up as requests come.
    pub looks_up_names: bool,
    /// The endpoint connections it has a use for, found when first asked.
    in_use: OnceLock<Option<Arc<InUse>>>,
}

impl Routing {
    /// The endpoint connections this routing has a use for ([`Discovery::in_use`]),
    /// found once for every worker that asks.
    pub fn in_use(&self) -> Option<&Arc<InUse>> {
        let found = || self.discovery.in_use().map(Arc::new);
        self.in_use.get_or_init(found).as_ref()
    }

    /// Routing for the proxy of `cluster` in `locality`; VirtualServices that do not
    /// compile are left out and returned.
    pub fn new(
        resources: &[&fulcrum_policy::Resource],
        weights: &[WeightRow],
        clusters: Vec<ClusterInfo>,
        cluster: &str,
        locality: &Locality,
    ) -> (Routing, Vec<RouteError>) {
        let resolved = Resolved::default();
        Routing::resolving(resources, weights, clusters, (cluster, locality), &resolved)
    }

    /// [`Routing::new`], with the endpoints named by DNS at the addresses `resolved` has
    /// for them ([`StaticDiscovery::resolving`]).
    pub fn resolving(
        resources: &[&fulcrum_policy::Resource],
        weights: &[WeightRow],
        clusters: Vec<ClusterInfo>,
        (cluster, locality): (&str, &Locality),
        resolved: &Resolved,
    ) -> (Routing, Vec<RouteError>) {
        let (routes, errors) = RouteTable::build(resources.iter().copied());
        let discovery =
            StaticDiscovery::resolving(resources.iter().copied(), cluster, locality, resolved);
        let dns_names = discovery.dns_names().to_vec();
        let looks_up_names = discovery.looks_up_names();
        let mut rows: FastMap<String, FastMap<String, LocalityRow>> = FastMap::default();
        for w in weights.iter().filter(|w| &w.source == locality) {
            rows.entry(w.service.to_ascii_lowercase())
                .or_default()
                .insert(
                    w.subset.clone(),
                    LocalityRow::new(w, locality, cluster, &clusters),
                );
        }
        let known = discovery.known_services();
        let names = ServiceNames::new(routes.exact_hosts().chain(known.iter().map(String::as_str)));
        (
            Routing {
                routes,
                discovery: Arc::new(discovery),
                names,
                rows,
                clusters,
                route_errors: errors.iter().map(|e| e.to_string()).collect(),
                dns_names,
                looks_up_names,
                in_use: OnceLock::new(),
            },
            errors,
        )
    }

    /// The service `host` (from a request's authority, in any letter case) names, in
    /// lower case as services are named: itself when a VirtualService or a ServiceEntry
    /// has it by name, else the Kubernetes service it is a short form of, if any; an
    /// error when that is ambiguous. With it, whether a ServiceEntry has it. (The name
    /// keys the service's metrics, reports, balancers and outlier state: a client's
    /// letter case must not make another service of it.)
    fn service_named<'a>(&'a self, host: &'a str) -> Result<(Cow<'a, str>, bool), String> {
        let host = crate::lower_case(host);
        if self.discovery.knows(&host) {
            return Ok((host, true));
        }
        if self.routes.claims_exactly(&host) {
            return Ok((host, false));
        }
        Ok(match self.names.resolve(&host)? {
            Some(full) => (Cow::Borrowed(full), self.discovery.knows(full)),
            // A ServiceEntry for `*.example.com` takes `api.example.com`, as its virtual
            // host does in Envoy; the request keeps its own authority.
            None => match self.discovery.wildcard_for(&host) {
                Some(wildcard) => (Cow::Borrowed(wildcard), true),
                None => (host, false),
            },
        })
    }

    /// The row for `target`: its subset's, else the whole service's.
    fn row(&self, target: &Target) -> Option<&LocalityRow> {
        let rows = self.rows.get(crate::lower_case(&target.host).as_ref())?;
        rows.get(&target.subset).or_else(|| rows.get(""))
    }

    /// Every row, with its service and subset.
    fn every_row(&self) -> impl Iterator<Item = (&String, &String, &LocalityRow)> {
        self.rows.iter().flat_map(|(service, rows)| {
            rows.iter().map(move |(subset, row)| (service, subset, row))
        })
    }
}

/// The routing and forwarding state of the outbound listener. The routing is swapped on
/// each accepted snapshot; balancing, outlier and limit state stay across swaps.
pub struct Outbound {
    routing: std::sync::RwLock<Option<Arc<Routing>>>,
    /// By service, then subset, then service port.
    pickers: Mutex<FastMap<String, FastMap<String, PickersByPort>>>,
    in_flight: Arc<Mutex<FastMap<SocketAddr, u32>>>,
    /// Per service host.
    outliers: Arc<Mutex<FastMap<String, OutlierDetector>>>,
    /// By service host, then subset, when its DestinationRule sets connection-pool
    /// limits.
    limits: Mutex<FastMap<String, FastMap<String, Arc<Limiters>>>>,
    /// The certificate presented to other clusters, when east-west mTLS is configured.
    tls: Option<Arc<MeshTls>>,
    /// Clusters whose gateway refused us lately, until when.
    unreachable: Mutex<FastMap<String, Instant>>,
    /// Spreads requests over a cluster's gateways.
    rotation: AtomicUsize,
    /// Applications' connections: how long they may idle, and stall in a request.
    client_timeouts: ClientTimeouts,
    /// Whether the proxy is draining its connections before it exits.
    drain: Drain,
    metrics: Arc<ProxyMetrics>,
    stats: Arc<Stats>,
    /// Endpoints active health checks found down.
    health: Arc<Health>,
    /// This proxy's cluster.
    cluster: String,
    /// The same, as the value of its endpoints' answers' `x-fulcrum-cluster` field.
    cluster_value: HeaderValue,
    /// This proxy's locality: where its endpoints are.
    locality: Locality,
    locality_text: Arc<str>,
    /// Where each request is logged, when the proxy keeps an access log.
    access_log: Option<Arc<AccessLog>>,
    /// Endpoint names resolved by DNS ([`crate::dns`]), and, while the configuration
    /// names any, what it was built from, to build it again when they resolve anew.
    dns: Mutex<Dns>,
    /// Wakes the resolver when the configuration names other endpoints by DNS.
    dns_wanted: tokio::sync::Notify,
    /// How names are looked up.
    resolver: Resolver,
    /// The names looked up for requests under wildcard hosts, with when a request last
    /// asked for each ([`crate::dns`]).
    looked_up: Mutex<FastMap<String, Instant>>,
    /// Counts the routings taken ([`Outbound::update`]): the workers close the idle
    /// connections a new one has no use for.
    updates: tokio::sync::watch::Sender<u64>,
}

/// What the outbound listener knows of names resolved by DNS.
#[derive(Default)]
struct Dns {
    /// The configuration's endpoint names and those looked up for requests.
    resolved: Resolved,
    /// The resources, weights and clusters of the configuration, kept only when it names
    /// endpoints by DNS or has names looked up for requests.
    configuration: Option<(
        Vec<fulcrum_policy::Resource>,
        Vec<WeightRow>,
        Vec<ClusterInfo>,
    )>,
}

/// Where requests leave the proxy: HTTP/1 connections to this cluster's endpoints (h2c
/// to those that speak h2) and, with east-west mTLS, h2 connections to other clusters'
/// gateways. Each worker thread has its own ([`Outbound::upstreams`],
/// [`crate::workers`]), so that a request, its upstream connection and the tasks driving
/// both stay on one thread.
#[derive(Clone)]
pub struct Upstreams {
    http: Arc<Http1Pool>,
    h2c: Arc<H2Pool>,
    east_west: Option<Arc<H2Pool>>,
}

impl Upstreams {
    /// Closes the connections to endpoints idle for `timeout` or more.
    pub fn close_idle(&self, timeout: Duration) {
        self.http.close_idle(timeout);
        self.h2c.close_idle(timeout);
    }

    /// Fresh pools: HTTP/1 and h2c to endpoints, and h2 over mTLS presenting `tls` when
    /// given.
    fn new(tls: Option<&Arc<MeshTls>>) -> Upstreams {
        Upstreams {
            http: Arc::new(Http1Pool::new(DEFAULT_CONNECT_TIMEOUT)),
            h2c: Arc::new(H2Pool::plaintext(DEFAULT_CONNECT_TIMEOUT)),
            east_west: tls.map(|tls| Arc::new(H2Pool::mesh(tls.clone(), DEFAULT_CONNECT_TIMEOUT))),
        }
    }
}

/// What happened to one try.
enum Try {
    /// An answer; from an endpoint of this cluster, with its fields as they came (the
    /// response's header map empty).
    Answered(ProxyResponse, Option<RawFields>),
    ConnectFailed(String),
    Reset(String),
    TimedOut,
}

/// Where one try goes.
enum Hop<'r> {
    Local(Endpoint),
    /// Another cluster, as the row names it.
    Remote {
        cluster: &'r str,
        gateway: &'r str,
        locality: &'r Locality,
        locality_text: &'r Arc<str>,
    },
}

impl Outbound {
    /// Forwards with `routing` (none yet: answers 503 until [`Outbound::update`]) for the
    /// proxy of `cluster` in `locality`.
    pub fn new(
        routing: Option<Routing>,
        metrics: Arc<ProxyMetrics>,
        cluster: String,
        locality: Locality,
    ) -> Outbound {
        Outbound {
            routing: std::sync::RwLock::new(routing.map(Arc::new)),
            pickers: Mutex::default(),
            in_flight: Arc::default(),
            outliers: Arc::default(),
            limits: Mutex::default(),
            tls: None,
            unreachable: Mutex::default(),
            rotation: AtomicUsize::new(0),
            client_timeouts: ClientTimeouts::default(),
            drain: Drain::default(),
            metrics,
            stats: Arc::default(),
            health: Arc::default(),
            cluster_value: HeaderValue::from_str(&cluster).unwrap_or(HeaderValue::from_static("")),
            cluster,
            locality_text: locality.to_string().into(),
            locality,
            access_log: None,
            dns: Mutex::default(),
            dns_wanted: tokio::sync::Notify::new(),
            resolver: Resolver::system(),
            looked_up: Mutex::default(),
            updates: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Counts a request the listener refused before routing (malformed, over a limit)
    /// for `reason`: its service is unknown, and so is the rest of it but its protocol.
    pub fn count_refused(&self, status: StatusCode, reason: &str) {
        self.metrics
            .count_request("unknown", &self.locality_text, status.as_u16(), 0.0);
        if let Some(log) = &self.access_log {
            let mut line = Line::new();
            line.time("start_time", SystemTime::now())
                .text("method", Some("-"))
                .text("path", Some("-"))
                .text("protocol", Some("HTTP/1.1"))
                .text("listener", Some("outbound"))
                .number("response_code", Some(u64::from(status.as_u16())))
                .text("reason", Some(reason))
                .text("upstream_locality", Some(&self.locality_text))
                .number("duration", Some(0));
            log.log(line);
        }
    }

    /// Logs each request in `log` ([`crate::access_log`]).
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Outbound {
        self.access_log = Some(log);
        self
    }

    /// The start of `request`'s access log line, when the proxy keeps a log: what its
    /// head says, and when it came. A request without an `x-request-id` is given one
    /// now, so that its line has the name it travels under.
    fn log_start<B>(
        &self,
        request: &mut Request<B>,
        client: Option<ClientAddress>,
        listener: &'static str,
    ) -> Option<Line> {
        self.access_log.as_ref()?;
        let mut line = Line::new();
        line.time("start_time", SystemTime::now());
        (request.headers_mut().entry(REQUEST_ID_HEADER)).or_insert_with(new_request_id);
        let (uri, headers) = (request.uri(), request.headers());
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let authority = uri.authority().map(|a| a.as_str()).or_else(|| text(HOST));
        let client = client.map(|c| c.0.to_string());
        line.text("method", Some(request.method().as_str()))
            .text(
                "path",
                Some(uri.path_and_query().map_or("/", |p| p.as_str())),
            )
            .text("protocol", Some(protocol_name(request.version())))
            .text("authority", authority)
            .text("user_agent", text(http::header::USER_AGENT))
            .text("x_request_id", text(REQUEST_ID_HEADER))
            .text("downstream_remote_address", client.as_deref())
            .text("listener", Some(listener));
        Some(line)
    }

    /// Adds how a request was answered (by `response`, once `handled`) to its `line`.
    fn log_answer(&self, line: &mut Line, handled: &Handled, response: &ProxyResponse) {
        let headers = response.headers();
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        line.number("response_code", Some(u64::from(response.status().as_u16())))
            .text("reason", text(REASON_HEADER))
            .text("service", handled.service.as_deref())
            .text("upstream_cluster", text(CLUSTER_HEADER))
            .text("upstream_host", text(UPSTREAM_HEADER))
            .text("upstream_locality", Some(&handled.locality))
            .text("attempts", text(ATTEMPTS_HEADER))
            .number("bytes_sent", response.body().length());
    }

    /// Logs a tunnel's `line`, begun at `started`, as its upgrade was answered
    /// (`status`, once `handled`).
    fn log_tunnel(
        &self,
        line: Option<Line>,
        (handled, status): (&Handled, StatusCode),
        started: Instant,
    ) {
        let line = line.map(|mut line| {
            line.number("response_code", Some(u64::from(status.as_u16())))
                .text("service", handled.service.as_deref())
                .text("upstream_locality", Some(&handled.locality));
            line
        });
        log_end(self.access_log.as_deref(), line, started);
    }

    /// How long applications' connections may idle, and stall in a request.
    pub fn client_timeouts(&self) -> ClientTimeouts {
        self.client_timeouts
    }

    /// With `timeouts` for applications' connections.
    pub fn with_client_timeouts(mut self, timeouts: ClientTimeouts) -> Outbound {
        self.client_timeouts = timeouts;
        self
    }

    /// Its connections drain once `drain` has begun ([`crate::drain`]).
    pub fn with_drain(mut self, drain: Drain) -> Outbound {
        self.drain = drain;
        self
    }

    /// Whether the connections are to drain.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// Reaches other clusters over h2 with mTLS, presenting `tls`; without, every request
    /// stays in this cluster whatever the weights say.
    pub fn with_east_west(mut self, tls: Arc<MeshTls>) -> Outbound {
        self.tls = Some(tls);
        self
    }

    /// Looks names up with `resolver` rather than the system's.
    pub fn with_resolver(mut self, resolver: Resolver) -> Outbound {
        self.resolver = resolver;
        self
    }

    /// How names are looked up.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// A fresh set of upstream pools, for one worker thread's requests.
    pub fn upstreams(&self) -> Upstreams {
        Upstreams::new(self.tls.as_ref())
    }

    /// The mTLS material of the east-west transport, when configured.
    pub fn mesh_tls(&self) -> Option<Arc<MeshTls>> {
        self.tls.clone()
    }

    /// What active health checks found (they write it; routing reads it).
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Every endpoint of this cluster, of every service, once, as health checks probe it:
    /// under the connection settings of its service's port (in TLS when they originate
    /// it, to the service's name unless the rule sets one).
    pub fn local_endpoints(&self) -> Vec<crate::health::Target> {
        let Some(routing) = self.routing() else {
            return Vec::new();
        };
        let discovery = routing.discovery.as_ref();
        let mut all: Vec<crate::health::Target> = discovery
            .local_services()
            .iter()
            .flat_map(|service| {
                let endpoints = discovery.endpoints(service, "");
                (endpoints.iter())
                    .map(|e| {
                        let settings = discovery.balance_on(service, "", Some(e.port)).pool.clone();
                        let tls = settings.as_ref().and_then(|s| s.tls.as_ref());
                        let server_name = tls.and_then(|t| t.server_name(service).ok());
                        crate::health::Target {
                            address: e.address,
                            h2: e.h2,
                            settings,
                            server_name,
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|t| t.address);
        all.dedup_by_key(|t| t.address);
        all
    }

    /// The proxy's Prometheus metrics.
    pub fn metrics(&self) -> Arc<ProxyMetrics> {
        self.metrics.clone()
    }

    /// The counters the reports are made from.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Routes with `routing` from now on.
    /// Routes with the configuration of `resources`, `weights` and `clusters` from now on,
    /// the endpoints it names by DNS at the addresses last resolved for them. Returns
    /// the VirtualServices left out.
    pub fn configure(
        &self,
        resources: &[&fulcrum_policy::Resource],
        weights: &[WeightRow],
        clusters: Vec<ClusterInfo>,
    ) -> Vec<RouteError> {
        let Ok(mut dns) = self.dns.lock() else {
            return Vec::new();
        };
        let at = (self.cluster.as_str(), &self.locality);
        let (routing, errors) =
            Routing::resolving(resources, weights, clusters.clone(), at, &dns.resolved);
        let names_dns = !routing.dns_names.is_empty();
        // New names are resolved at once; the same ones at the resolver's own pace,
        // however often snapshots come.
        let new_names = self
            .routing()
            .is_none_or(|old| old.dns_names != routing.dns_names);
        dns.configuration = (names_dns || routing.looks_up_names).then(|| {
            let kept = resources.iter().map(|r| (*r).clone()).collect();
            (kept, weights.to_vec(), clusters)
        });
        self.update(routing);
        drop(dns);
        if names_dns && new_names {
            self.dns_wanted.notify_one();
        }
        errors
    }

    /// The endpoint names the configuration resolves by DNS, and the names looked up for
    /// requests that a request has asked for lately (those that none has are let go).
    pub fn dns_names(&self) -> Vec<String> {
        let mut names = self
            .routing()
            .map(|r| r.dns_names.clone())
            .unwrap_or_default();
        names.extend(self.looked_up_lately());
        names.sort();
        names.dedup();
        names
    }

    /// The names looked up for requests that a request has asked for within
    /// [`crate::dns::LOOKED_UP_IDLE`]; the others are forgotten.
    fn looked_up_lately(&self) -> Vec<String> {
        let Ok(mut looked_up) = self.looked_up.lock() else {
            return Vec::new();
        };
        looked_up.retain(|_, asked| asked.elapsed() < crate::dns::LOOKED_UP_IDLE);
        looked_up.keys().cloned().collect()
    }

    /// Waits until the configuration may name other endpoints by DNS.
    pub async fn dns_changed(&self) {
        self.dns_wanted.notified().await;
    }

    /// Takes `resolved` as what endpoint names resolve to, and routes again with it when
    /// it differs from what the routing was built with. A name looked up for requests
    /// that `resolved` lacks (looked up since the resolver's turn began) keeps what it had,
    /// while requests ask for it.
    pub fn resolved(&self, mut resolved: Resolved) {
        let lately = self.looked_up_lately();
        let Ok(mut dns) = self.dns.lock() else {
            return;
        };
        for name in lately {
            if !resolved.contains_key(&name)
                && let Some(had) = dns.resolved.get(&name)
            {
                resolved.insert(name, had.clone());
            }
        }
        if dns.resolved == resolved {
            return;
        }
        dns.resolved = resolved;
        self.route_again(&dns);
    }

    /// Builds the routing again from the configuration `dns` keeps and the names it has
    /// resolved.
    fn route_again(&self, dns: &Dns) {
        if let Some((resources, weights, clusters)) = &dns.configuration {
            let resources: Vec<_> = resources.iter().collect();
            let at = (self.cluster.as_str(), &self.locality);
            let (routing, _) =
                Routing::resolving(&resources, weights, clusters.clone(), at, &dns.resolved);
            self.update(routing);
        }
    }

    /// Looks `name` up for a request under a wildcard host resolved per request, and
    /// routes with what it resolves to from then on: the routing to send the request
    /// with, or the answer it gets instead (the name does not resolve; too many names).
    async fn look_up(&self, name: &str) -> Result<Arc<Routing>, Box<ProxyResponse>> {
        let unavailable = |reason: &str| Box::new(answer(StatusCode::SERVICE_UNAVAILABLE, reason));
        {
            let Ok(mut looked_up) = self.looked_up.lock() else {
                return Err(unavailable("names looked up for requests: lock poisoned"));
            };
            if !looked_up.contains_key(name) {
                looked_up.retain(|_, asked| asked.elapsed() < crate::dns::LOOKED_UP_IDLE);
                if looked_up.len() >= crate::dns::LOOKED_UP_MAX {
                    return Err(unavailable(&format!(
                        "{name} not looked up: {} names looked up for requests already",
                        crate::dns::LOOKED_UP_MAX
                    )));
                }
            }
            looked_up.insert(name.to_string(), Instant::now());
        }
        let addresses = match self.resolver.lookup(name.to_string()).await {
            Ok(addresses) => addresses,
            Err(why) => {
                // Not kept: names that do not resolve would take the places of those that
                // do, and be looked up again and again in the background.
                if let Ok(mut looked_up) = self.looked_up.lock() {
                    looked_up.remove(name);
                }
                return Err(unavailable(&format!("{name} does not resolve: {why}")));
            }
        };
        if let Ok(mut dns) = self.dns.lock()
            && dns.resolved.get(name) != Some(&addresses)
        {
            dns.resolved.insert(name.to_string(), addresses);
            self.route_again(&dns);
        }
        self.routing()
            .ok_or_else(|| unavailable("no configuration"))
    }

    /// Notes that a request asked for `name`, looked up for requests.
    fn asked_for(&self, name: &str) {
        if let Ok(mut looked_up) = self.looked_up.lock() {
            match looked_up.get_mut(name) {
                Some(asked) => *asked = Instant::now(),
                None => {
                    looked_up.insert(name.to_string(), Instant::now());
                }
            }
        }
    }

    pub fn update(&self, routing: Routing) {
        if let Some(old) = self.routing() {
            for (service, subset, row) in routing.every_row() {
                if let Some(previous) = old.rows.get(service).and_then(|r| r.get(subset)) {
                    row.continue_from(previous);
                }
            }
        }
        if let Ok(mut r) = self.routing.write() {
            *r = Some(Arc::new(routing));
        }
        self.updates.send_modify(|n| *n += 1);
    }

    /// Changes each time a routing is taken ([`Outbound::update`]).
    pub fn updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.updates.subscribe()
    }

    /// Closes the idle connections in `upstreams` (a worker's) that the current routing
    /// has no use for ([`Routing::in_use`]).
    pub fn close_unused(&self, upstreams: &Upstreams) {
        if let Some(in_use) = self.routing().as_deref().and_then(Routing::in_use) {
            upstreams.http.close_unused(in_use);
            upstreams.h2c.close_unused(in_use);
        }
    }

    /// What the proxy routes with, for `/config_dump`: the pushed rows with where each
    /// destination is, the clusters, and VirtualServices left out.
    pub fn dump(&self) -> serde_json::Value {
        let Some(routing) = self.routing() else {
            return serde_json::json!({ "ready": false });
        };
        let mut rows: Vec<serde_json::Value> = routing
            .every_row()
            .map(|(service, subset, row)| {
                let destinations: Vec<serde_json::Value> = row
                    .destinations()
                    .iter()
                    .map(|d| {
                        let place = match &d.place {
                            Place::Local => serde_json::json!("local"),
                            Place::Remote { cluster, gateways } => {
                                serde_json::json!({ "cluster": cluster, "gateways": gateways })
                            }
                            Place::Unreachable => serde_json::json!("unreachable"),
                        };
                        serde_json::json!({
                            "locality": d.locality.to_string(),
                            "weightBp": d.weight_bp,
                            "priority": d.priority,
                            "place": place,
                            "verdict": d.verdict.to_string(),
                            "explanation": d.explanation,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "service": service,
                    "subset": subset,
                    "destinations": destinations,
                })
            })
            .collect();
        rows.sort_by_key(|r| format!("{}/{}", r["service"], r["subset"]));
        let clusters: Vec<serde_json::Value> = routing
            .clusters
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "locality": c.locality.to_string(),
                    "gateways": c.gateways,
                })
            })
            .collect();
        // What each endpoint name given for DNS resolved to (none yet: not resolved).
        let resolved = self
            .dns
            .lock()
            .map(|d| d.resolved.clone())
            .unwrap_or_default();
        let dns: serde_json::Map<String, serde_json::Value> = (routing.dns_names.iter())
            .map(|name| {
                let addresses: Vec<String> =
                    (resolved.get(name).into_iter().flat_map(|a| a.iter()))
                        .map(ToString::to_string)
                        .collect();
                (name.clone(), serde_json::json!(addresses))
            })
            .collect();
        // The names looked up for requests, each with its wildcard.
        let looked_up: serde_json::Map<String, serde_json::Value> = (resolved.iter())
            .filter_map(|(name, addresses)| {
                let under = routing.discovery.looked_up_under(name)?;
                let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                let entry = serde_json::json!({ "under": under, "addresses": addresses });
                Some((name.clone(), entry))
            })
            .collect();
        serde_json::json!({
            "ready": true,
            "services": routing.discovery.local_services(),
            "weights": rows,
            "clusters": clusters,
            "routeErrors": routing.route_errors,
            "dns": dns,
            "lookedUp": looked_up,
        })
    }

    /// Whether there is something to route with.
    pub fn is_ready(&self) -> bool {
        self.routing.read().is_ok_and(|r| r.is_some())
    }

    fn routing(&self) -> Option<Arc<Routing>> {
        self.routing.read().ok().and_then(|r| r.clone())
    }

    /// Routes and forwards one request from `client` over `upstreams`, and counts it.
    pub async fn handle<B>(
        &self,
        request: Request<B>,
        client: Option<ClientAddress>,
        upstreams: &Upstreams,
    ) -> ProxyResponse
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut response, fields) = self.handle_raw(request, client, upstreams).await;
        if let Some(fields) = fields {
            merge_raw_fields(response.headers_mut(), fields);
        }
        response
    }

    /// [`Outbound::handle`], for the proxy's HTTP/1 server: with an endpoint's answer, its
    /// fields as they came, apart from the response's header map (which holds what the
    /// proxy added, to replace the endpoint's fields of the same names), to be copied out
    /// so.
    pub(crate) async fn handle_raw<B>(
        &self,
        mut request: Request<B>,
        client: Option<ClientAddress>,
        upstreams: &Upstreams,
    ) -> (ProxyResponse, Option<RawFields>)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let line = self.log_start(&mut request, client, "outbound");
        let mut handled = Handled::new(&self.locality_text);
        let grpc = is_grpc(request.headers());
        let mut response = self
            .route_and_forward(request, client, upstreams, grpc, &mut handled)
            .await;
        self.count(&handled, &mut response, started, line);
        if grpc {
            return (for_grpc_client(response), handled.fields);
        }
        (response, handled.fields)
    }

    /// The hop mark ([`HOP_HEADER`]) of the requests another cluster's proxy (`peer`)
    /// sends: made once per east-west connection.
    pub fn hop_mark(&self, peer: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!("{peer}->{}", self.cluster)).ok()
    }

    /// Serves a request another cluster's proxy sent over the east-west listener: to this
    /// cluster's endpoints only, over `upstreams`, marked with `hop` (its [`hop_mark`]).
    ///
    /// [`hop_mark`]: Outbound::hop_mark
    pub async fn handle_east_west<B>(
        &self,
        mut request: Request<B>,
        hop: Option<&HeaderValue>,
        upstreams: &Upstreams,
    ) -> ProxyResponse
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let line = self.log_start(&mut request, None, "east-west");
        let mut handled = Handled::new(&self.locality_text);
        let mut response = self
            .serve_for_peer(request, hop, upstreams, &mut handled)
            .await;
        self.count(&handled, &mut response, started, line);
        handled.merge_fields(&mut response);
        response
    }

    /// Counts a request in the metrics with how long it took, and logs its `entry` when
    /// the proxy keeps an access log: at once for an answer held whole; for one still
    /// arriving, when it ends (or breaks off, or the client leaves), as Envoy's request
    /// duration runs to the end of the answer.
    fn count(
        &self,
        handled: &Handled,
        response: &mut ProxyResponse,
        started: Instant,
        line: Option<Line>,
    ) {
        let status = response.status().as_u16();
        let service = handled.service.as_deref().unwrap_or("unknown");
        let mut line = line;
        if let Some(line) = &mut line {
            self.log_answer(line, handled, response);
        }
        if response.body().is_streaming() {
            let metrics = Arc::clone(&self.metrics);
            let (service, locality) = (service.to_string(), Arc::clone(&handled.locality));
            let log = self.access_log.clone();
            response.body_mut().on_end(move |_| {
                let took = started.elapsed().as_secs_f64();
                metrics.count_request(&service, &locality, status, took);
                log_end(log.as_deref(), line, started);
            });
            return;
        }
        let took = started.elapsed().as_secs_f64();
        self.metrics
            .count_request(service, &handled.locality, status, took);
        log_end(self.access_log.as_deref(), line, started);
    }

    /// Opens the tunnel of a WebSocket upgrade (`Upgrade: websocket`, as Istio enables by
    /// default): the request, routed as any other to a locality by the pushed row, goes
    /// either to one of this cluster's endpoints, on a connection of its own with its
    /// Upgrade fields, or to another cluster's proxy as an h2 extended CONNECT (RFC 8441)
    /// on the east-west connection, which that proxy turns into the same upgrade to one of
    /// its endpoints. Returns the other end and what it answered so far, as HTTP/1 bytes
    /// for the client (an endpoint's answer as it gave it; a peer's `200` as
    /// `101 Switching Protocols` with its fields): the caller carries the tunnel on. An
    /// answer that is not an upgrade goes to the client all the same.
    pub(crate) async fn open_tunnel(
        &self,
        mut request: Request<ProxyBody>,
        client: Option<ClientAddress>,
        upstreams: &Upstreams,
    ) -> Result<(Box<dyn TunnelIo>, Bytes), ProxyResponse> {
        let started = Instant::now();
        let line = self.log_start(&mut request, client, "outbound");
        let mut handled = Handled::new(&self.locality_text);
        let opened = self
            .open_tunnel_routed(request, client, upstreams, &mut handled)
            .await;
        let status = match &opened {
            Ok((_, _, status)) => *status,
            Err(response) => response.status(),
        };
        self.metrics.count_request(
            handled.service.as_deref().unwrap_or("unknown"),
            &handled.locality,
            status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
        self.log_tunnel(line, (&handled, status), started);
        opened.map(|(io, answered, _)| (io, answered))
    }

    async fn open_tunnel_routed(
        &self,
        request: Request<ProxyBody>,
        client: Option<ClientAddress>,
        upstreams: &Upstreams,
        handled: &mut Handled,
    ) -> Result<(Box<dyn TunnelIo>, Bytes, StatusCode), ProxyResponse> {
        let Some(routing) = self.routing() else {
            return Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no configuration yet (no snapshot from a coordinator)",
            ));
        };
        let (mut parts, _) = request.into_parts();
        let forward = self.route(&routing, &parts, handled).map_err(|a| *a)?;
        let routing = (self.looked_up_routing(routing, &forward.target).await).map_err(|a| *a)?;
        if let Some(delay) = forward.fault.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = forward.fault.abort {
            return Err(aborted(abort));
        }
        // Named as any other request is.
        parts
            .headers
            .entry(REQUEST_ID_HEADER)
            .or_insert_with(new_request_id);
        let target = &forward.target;
        let discovery = routing.discovery.as_ref();
        let settings = discovery.balance_on(&target.host, &target.subset, target.port);
        let endpoints = endpoints_of(discovery, target);
        let local = self.not_ejected(target, endpoints, settings.outlier.as_ref());
        let row = (routing.row(target))
            .filter(|r| upstreams.east_west.is_some() && !r.is_local_only())
            .filter(|_| target.looked_up.is_none());
        let key = (settings.hash_on.as_ref()).and_then(|on| hash_key(on, &parts, client));
        let key = key.as_ref().map(|k| k.key.as_slice());
        // An open tunnel counts as a request in flight to the service.
        let held = self.admit(settings, target).await.map_err(|a| *a)?;
        let hop = self.next_hop(settings, row, key, &forward, &local, (&[], &[], &[]));
        let within = forward.retries.per_try_timeout.or(forward.timeout);
        match hop {
            Some((Hop::Local(endpoint), _)) => {
                handled.locality = self.locality_text.clone();
                let (stream, answered, status) = self
                    .upgrade_endpoint((&endpoint, settings), &parts, &forward, within)
                    .await?;
                Ok((Box::new(Holding { io: stream, held }), answered, status))
            }
            Some((
                Hop::Remote {
                    cluster,
                    gateway,
                    locality_text,
                    ..
                },
                _,
            )) => {
                handled.locality = locality_text.clone();
                let Some(pool) = &upstreams.east_west else {
                    return Err(answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no east-west transport",
                    ));
                };
                let mut request = peer_request(&parts, &forward, key, Bytes::new())
                    .map_err(|e| answer(StatusCode::BAD_REQUEST, &e))?
                    .map(|_| ());
                *request.method_mut() = Method::CONNECT;
                request
                    .extensions_mut()
                    .insert(h2::ext::Protocol::from_static("websocket"));
                let failed = |e: SendError| {
                    let (SendError::Connect(why) | SendError::Reset(why)) = e;
                    answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("WebSocket upgrade through cluster {cluster}: {why}"),
                    )
                };
                let open = pool.open(Peer::east_west(gateway, cluster), request);
                let (head, stream) = match within {
                    Some(t) => tokio::time::timeout(t, open).await.map_err(|_| {
                        answer(
                            StatusCode::GATEWAY_TIMEOUT,
                            &format!(
                                "WebSocket upgrade through cluster {cluster}: no answer in time"
                            ),
                        )
                    })?,
                    None => open.await,
                }
                .map_err(failed)?;
                if head.status != StatusCode::OK {
                    let reason = (head.headers.get(REASON_HEADER))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("WebSocket upgrade refused by the endpoint");
                    return Err(answer(head.status, reason));
                }
                // The endpoint took the upgrade: the client is told so in HTTP/1's words.
                let mut answered = Vec::with_capacity(256);
                answered.extend_from_slice(
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n",
                );
                for (name, value) in &head.headers {
                    if !is_hop_by_hop(name.as_str().as_bytes()) && name != CONTENT_LENGTH {
                        answered.extend_from_slice(name.as_str().as_bytes());
                        answered.extend_from_slice(b": ");
                        answered.extend_from_slice(value.as_bytes());
                        answered.extend_from_slice(b"\r\n");
                    }
                }
                answered.extend_from_slice(b"\r\n");
                Ok((
                    Box::new(Holding { io: stream, held }),
                    Bytes::from(answered),
                    StatusCode::SWITCHING_PROTOCOLS,
                ))
            }
            None => Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "no usable endpoint of {}{} for a WebSocket upgrade, here or in another cluster",
                    target.host,
                    subset_suffix(&target.subset)
                ),
            )),
        }
    }

    /// Serves a WebSocket upgrade another cluster's proxy sent as an h2 extended CONNECT
    /// on the east-west listener: the same upgrade, to one of this cluster's endpoints;
    /// its `101` answered `200` on the stream (with the endpoint's fields), which then
    /// carries the tunnel. Anything else is answered with its status and the stream ends.
    pub async fn tunnel_for_peer(
        &self,
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        hop: Option<&HeaderValue>,
    ) {
        let started = Instant::now();
        let mut request = request;
        let line = self.log_start(&mut request, None, "east-west");
        let mut handled = Handled::new(&self.locality_text);
        let (parts, recv) = request.into_parts();
        let opened = self.upgrade_for_peer(parts, hop, &mut handled).await;
        let status = match &opened {
            Ok((_, _, status)) => *status,
            Err(response) => response.status(),
        };
        self.metrics.count_request(
            handled.service.as_deref().unwrap_or("unknown"),
            &handled.locality,
            status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
        self.log_tunnel(line, (&handled, status), started);
        let (stream, answered) = match opened {
            Ok((stream, answered, _)) => (stream, answered),
            Err(refused) => {
                let (mut head, _) = refused.into_parts();
                head.headers.remove(CONTENT_LENGTH);
                let _ = respond.send_response(Response::from_parts(head, ()), true);
                return;
            }
        };
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(head_length)) = parsed.parse(&answered) else {
            let _ = respond.send_response(bare(StatusCode::BAD_GATEWAY), true);
            return;
        };
        if parsed.code != Some(101) {
            let code = parsed.code.and_then(|c| StatusCode::from_u16(c).ok());
            let _ = respond.send_response(bare(code.unwrap_or(StatusCode::BAD_GATEWAY)), true);
            return;
        }
        let mut accepted = Response::new(());
        for field in parsed.headers.iter() {
            if is_hop_by_hop(field.name.as_bytes())
                || field.name.eq_ignore_ascii_case("content-length")
            {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(field.name.as_bytes()),
                HeaderValue::from_bytes(field.value),
            ) {
                accepted.headers_mut().append(name, value);
            }
        }
        let Ok(send) = respond.send_response(accepted, false) else {
            return;
        };
        let mut peer = H2Stream::new(send, recv);
        let rest = &answered[head_length..];
        if !rest.is_empty() && peer.write_all(rest).await.is_err() {
            return;
        }
        splice(peer, stream, self.client_timeouts.idle).await;
    }

    /// What `tunnel_for_peer` does before the tunnel: the endpoint's connection (holding
    /// the service's request permit, when it limits requests), its answer so far, and its
    /// status.
    async fn upgrade_for_peer(
        &self,
        mut parts: http::request::Parts,
        hop: Option<&HeaderValue>,
        handled: &mut Handled,
    ) -> Result<(Holding<EndpointIo, Permit>, Bytes, StatusCode), ProxyResponse> {
        let Some(routing) = self.routing() else {
            return Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no configuration yet",
            ));
        };
        let (forward, carried_key) = self
            .peer_route(&routing, &mut parts, hop, handled)
            .map_err(|a| *a)?;
        // The sender's CONNECT is the endpoint's GET with an upgrade.
        parts.method = Method::GET;
        let target = &forward.target;
        let discovery = routing.discovery.as_ref();
        let settings = discovery.balance_on(&target.host, &target.subset, target.port);
        let endpoints = discovery.endpoints_on(&target.host, &target.subset, target.port);
        let local = self.not_ejected(target, endpoints, settings.outlier.as_ref());
        let key = carried_key.as_ref().map(HeaderValue::as_bytes);
        let held = self.admit_from_peer(settings, target).map_err(|a| *a)?;
        let Some(endpoint) = self.pick(settings, key, &forward, &local, &[]) else {
            return Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "no usable endpoint of {} in cluster {}",
                    target.host, self.cluster
                ),
            ));
        };
        let (stream, answered, status) = self
            .upgrade_endpoint((&endpoint, settings), &parts, &forward, None)
            .await?;
        Ok((Holding { io: stream, held }, answered, status))
    }

    /// Sends the WebSocket upgrade of the request in `parts`, as `forward` says, to
    /// `endpoint` on a connection of its own (under its service's `settings`: in TLS when
    /// they originate it), and reads its answer to the end of the head (within `within`,
    /// when given): the connection, what it sent so far, and its status.
    async fn upgrade_endpoint(
        &self,
        (endpoint, settings): (&Endpoint, &BalanceSettings),
        parts: &http::request::Parts,
        forward: &Forward,
        within: Option<Duration>,
    ) -> Result<(EndpointIo, Bytes, StatusCode), ProxyResponse> {
        let mut head = Http1Request::start(&parts.method, &forward.path_and_query)
            .map_err(|e| answer(StatusCode::BAD_REQUEST, &e))?;
        head.field_text(&HOST, &forward.authority)
            .map_err(|e| answer(StatusCode::BAD_REQUEST, &e))?;
        let mut fields = parts.headers.clone();
        apply_changes(&mut fields, &forward.request_headers);
        for (name, value) in &fields {
            let framing_or_host =
                name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == HOST;
            if !framing_or_host && !is_hop_by_hop(name.as_str().as_bytes()) {
                head.field(name, value);
            }
        }
        head.field(&CONNECTION, &HeaderValue::from_static("upgrade"));
        head.field(
            &http::header::UPGRADE,
            &HeaderValue::from_static("websocket"),
        );
        let head = head.finish(Bytes::new());
        let _guard = InFlight::enter(&self.in_flight, endpoint.address);
        let failed = |status: StatusCode, why: String| {
            answer(
                status,
                &format!("WebSocket upgrade to {}: {why}", endpoint.name),
            )
        };
        let pool = settings.pool.as_deref().unwrap_or(&POOL_DEFAULTS);
        let name = match &pool.tls {
            Some(tls) => Some(
                tls.server_name(tls_host(pool, &forward.authority))
                    .map_err(|e| failed(StatusCode::SERVICE_UNAVAILABLE, e))?,
            ),
            None => None,
        };
        let within_connect = pool.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut stream = connect_endpoint(endpoint.address, pool, name, false, within_connect)
            .await
            .map_err(|e| {
                let (UpstreamError::Connect(why) | UpstreamError::Reset(why)) = e;
                failed(StatusCode::SERVICE_UNAVAILABLE, why)
            })?;
        let exchange = async {
            stream.write_all(head.message()).await?;
            let mut answered = BytesMut::with_capacity(1024);
            loop {
                if stream.read_buf(&mut answered).await? == 0 {
                    return Err(std::io::Error::other("closed before answering"));
                }
                let mut fields = [httparse::EMPTY_HEADER; 64];
                match httparse::Response::new(&mut fields).parse(&answered) {
                    Ok(httparse::Status::Complete(_)) => break,
                    Ok(httparse::Status::Partial) if answered.len() < MAX_HEAD_BYTES => {}
                    Ok(httparse::Status::Partial) => {
                        return Err(std::io::Error::other("answer head too large"));
                    }
                    Err(e) => return Err(std::io::Error::other(format!("malformed answer: {e}"))),
                }
            }
            Ok(answered.freeze())
        };
        let answered = match within {
            Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer in time",
                ))
            }),
            None => exchange.await,
        };
        match answered {
            Ok(answered) => {
                let mut fields = [httparse::EMPTY_HEADER; 64];
                let mut response = httparse::Response::new(&mut fields);
                let _ = response.parse(&answered);
                let status = (response.code)
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                Ok((stream, answered, status))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(failed(StatusCode::GATEWAY_TIMEOUT, e.to_string()))
            }
            Err(e) => Err(failed(StatusCode::BAD_GATEWAY, e.to_string())),
        }
    }

    /// Where a request from an application goes, by the VirtualServices and the services
    /// its authority names; or the answer it gets here instead (a redirect, a direct
    /// response, an unknown service). Names the service in `handled` once known.
    fn route(
        &self,
        routing: &Routing,
        parts: &http::request::Parts,
        handled: &mut Handled,
    ) -> Result<Forward, Box<ProxyResponse>> {
        let known = |host: &str| {
            routing.routes.has_host(host)
                || routing.discovery.knows(host)
                || matches!(routing.names.resolve(host), Ok(Some(_)))
                || routing.discovery.wildcard_for(host).is_some()
        };
        let HostPort { host, port } = match service_authority(&parts.uri, &parts.headers, known) {
            Ok(a) => a,
            Err(reason) => return Err(Box::new(answer(StatusCode::BAD_REQUEST, &reason))),
        };
        let (service, discovered) = match routing.service_named(host) {
            Ok(named) => named,
            Err(reason) => return Err(Box::new(answer(StatusCode::NOT_FOUND, &reason))),
        };
        let service = &*service;
        // A port the service does not have: under a sidecar, no listener and no virtual
        // host take it, so no route does here (it is not sent to another port).
        // (Its ports looked up only when the request names one.)
        if discovered
            && let Some(port) = port
            && let Some(ports) = routing.discovery.ports(service)
            && !ports.contains(&port)
        {
            let reason = format!("service {service:?} has no port {port} (its ports: {ports:?})");
            return Err(Box::new(answer(StatusCode::NOT_FOUND, &reason)));
        }
        // Routed, and sent on, without its dot segments, as under Istio.
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let path_and_query = &*crate::routing::path::normalized(path_and_query);
        let (decision, cors) = routing.routes.decide_with_cors(
            &RouteRequest {
                method: parts.method.as_str(),
                scheme: parts.uri.scheme_str().unwrap_or("http"),
                authority: host,
                authority_port: port,
                service,
                path_and_query,
                headers: &parts.headers,
                port: port.unwrap_or(80),
            },
            &mut RandomChance,
        );
        if discovered || routing.routes.has_host(service) {
            handled.service = Some(service.to_string());
        }
        // The route's CORS policy: a preflight it answers here; fields for the answer.
        let cors = match cors.map(|c| c.decide(&parts.method, &parts.headers)) {
            Some(CorsOutcome::Preflight(fields)) => {
                let mut r = Response::new(ProxyBody::default());
                r.headers_mut().extend(fields);
                return Err(Box::new(r));
            }
            Some(CorsOutcome::Answer(fields)) => fields,
            Some(CorsOutcome::Pass) | None => Vec::new(),
        };
        match decision {
            RouteDecision::Forward(f) => {
                let mut forward = *f;
                // The service port: the route's, else the one the request named.
                forward.target.port = forward.target.port.or(port);
                self.to_name_asked_for(routing, &mut forward, host);
                // Set last, over the route's own changes, as Envoy's CORS filter does.
                let set = &mut forward.response_headers.set;
                set.extend(cors.into_iter().filter_map(|(name, value)| {
                    Some((name.to_string(), value.to_str().ok()?.to_string()))
                }));
                Ok(forward)
            }
            RouteDecision::Redirect {
                status,
                location,
                response_headers,
            } => {
                let mut r = answer(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                    "redirected by route",
                );
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                apply_changes(r.headers_mut(), &response_headers);
                r.headers_mut().extend(cors);
                Err(Box::new(r))
            }
            RouteDecision::Respond {
                status,
                body,
                response_headers,
            } => {
                let mut r = Response::new(ProxyBody::Whole(body));
                *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                apply_changes(r.headers_mut(), &response_headers);
                r.headers_mut().extend(cors);
                Err(Box::new(r))
            }
            RouteDecision::NoRoute if discovered => {
                let mut forward = default_route(service, with_port(host, port), path_and_query);
                forward.target.port = port;
                self.to_name_asked_for(routing, &mut forward, host);
                Ok(forward)
            }
            RouteDecision::NoMatch => Err(Box::new(answer(
                StatusCode::NOT_FOUND,
                &format!("no route of the VirtualService for {host:?} matches the request"),
            ))),
            RouteDecision::NoRoute => Err(Box::new(answer(
                StatusCode::NOT_FOUND,
                &format!("unknown service {host:?}: no route and no ServiceEntry"),
            ))),
        }
    }

    /// A request whose target is a wildcard host resolved per request goes to the name it
    /// asked for (`host`), when the wildcard covers it (looked up first when the routing
    /// does not have it yet, see [`Outbound::looked_up_routing`]).
    fn to_name_asked_for(&self, routing: &Routing, forward: &mut Forward, host: &str) {
        let discovery = routing.discovery.as_ref();
        if !discovery.resolves_per_request(&forward.target.host) {
            return;
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let wildcard = forward.target.host.to_ascii_lowercase();
        if !name.ends_with(&wildcard[1..]) {
            return;
        }
        if discovery.looked_up_under(&name).is_some() {
            self.asked_for(&name);
        }
        forward.target.looked_up = Some(name);
    }

    /// The routing to send a request for `target` with: `routing`, unless the target is a
    /// name to look up that it does not have yet; then the routing made once the name has
    /// been looked up, or the answer the request gets instead.
    async fn looked_up_routing(
        &self,
        routing: Arc<Routing>,
        target: &Target,
    ) -> Result<Arc<Routing>, Box<ProxyResponse>> {
        match &target.looked_up {
            Some(name) if routing.discovery.looked_up_under(name).is_none() => {
                self.look_up(name).await
            }
            _ => Ok(routing),
        }
    }

    /// What `handle` does; names the service and destination in `handled` once known.
    /// `grpc`: whether the request is a gRPC call, as the caller found.
    async fn route_and_forward<B>(
        &self,
        request: Request<B>,
        client: Option<ClientAddress>,
        upstreams: &Upstreams,
        grpc: bool,
        handled: &mut Handled,
    ) -> ProxyResponse
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(routing) = self.routing() else {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no configuration yet (no snapshot from a coordinator)",
            );
        };
        let (mut parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            return refuse_connect();
        }
        let mut forward = match self.route(&routing, &parts, handled) {
            Ok(forward) => forward,
            Err(answer) => return *answer,
        };
        let routing = match self.looked_up_routing(routing, &forward.target).await {
            Ok(routing) => routing,
            Err(answer) => return *answer,
        };
        if grpc {
            heed_grpc_timeout(&mut parts.headers, &mut forward);
        }
        if let Some(delay) = forward.fault.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = forward.fault.abort {
            return aborted(abort);
        }
        // Named along its way, as Envoy names a request that comes without a name.
        parts
            .headers
            .entry(REQUEST_ID_HEADER)
            .or_insert_with(new_request_id);
        let mirrors = forward.mirrors.len();
        let (body, shadows) = match self
            .request_body(&parts, body, RETRY_BUFFER_BYTES, mirrors)
            .await
        {
            Ok(b) => b,
            Err(response) => return *response,
        };
        // The connection pool's limit: over it, answer at once rather than queue.
        let discovery = routing.discovery.as_ref();
        // Looked up once for the request: the pool's limit, then the tries' balancer, hash
        // source and outlier detection.
        let settings = discovery.balance_on(
            &forward.target.host,
            &forward.target.subset,
            forward.target.port,
        );
        // Boxed: most services set no limits, and the wait for a place would otherwise
        // be part of every request's future.
        let admitted = match settings.limits.any() {
            true => Box::pin(self.admit(settings, &forward.target)).await,
            false => Ok(Permit::default()),
        };
        let permit = match admitted {
            Ok(permit) => permit,
            Err(response) => return *response,
        };
        for (mirror, shadow) in forward.mirrors.iter().zip(shadows) {
            self.mirror(upstreams, discovery, mirror, &parts, &forward, shadow);
        }
        // A name looked up here is reached from here: another cluster's proxy would have
        // to look it up too.
        let row = (routing.row(&forward.target))
            .filter(|r| upstreams.east_west.is_some() && !r.is_local_only())
            .filter(|_| forward.target.looked_up.is_none());
        let request = (&parts, KeyFrom::Client(client));
        let attempts = self.attempts(
            upstreams, &routing, row, request, &forward, settings, &body, handled,
        );
        let began = tokio::time::Instant::now();
        let timed = match forward.timeout {
            None => Ok(attempts.await),
            Some(t) if body.is_whole() => tokio::time::timeout(t, attempts).await.map_err(|_| t),
            // Boxed: rare, and its state would otherwise be part of every request's future.
            Some(t) => Box::pin(after_body(&body, began, t, attempts))
                .await
                .ok_or(t),
        };
        let mut response = match timed {
            Ok(mut r) => {
                if let Some(t) = forward.timeout {
                    // The timeout covers the whole answer: the rest of a streamed one too.
                    let from = match body.is_whole() {
                        true => began,
                        false => body.ended_at().unwrap_or_else(tokio::time::Instant::now),
                    };
                    r.body_mut().end_by(from + t, t);
                }
                r
            }
            Err(t) => {
                // Not the fields of an answer a try may have had before.
                handled.fields = None;
                answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("route timeout {}ms", t.as_millis()),
                )
            }
        };
        if !forward.response_headers.is_empty() {
            // The changes apply to the endpoint's fields too.
            handled.merge_fields(&mut response);
            apply_changes(response.headers_mut(), &forward.response_headers);
        }
        // A streamed answer is still in flight: it keeps its place in the limit.
        if permit.holds() {
            response.body_mut().keep(permit);
        }
        response
    }

    /// Where a request from another cluster's proxy goes: to the service the sender
    /// routed to (its `x-fulcrum-service`, else the one the authority names), whole or
    /// the subset it names, with the authority as it came; with the hash key the sender
    /// made, if any. The fields only a proxy sets are taken out of `parts`, and the hop is
    /// marked. Names the service in `handled`.
    fn peer_route(
        &self,
        routing: &Routing,
        parts: &mut http::request::Parts,
        hop: Option<&HeaderValue>,
        handled: &mut Handled,
    ) -> Result<(Forward, Option<HeaderValue>), Box<ProxyResponse>> {
        let refuse = |status, reason: &str| Box::new(answer(status, reason));
        let authority = authority_of(&parts.uri, &parts.headers)
            .map_err(|reason| refuse(StatusCode::BAD_REQUEST, &reason))?;
        let (host, authority, named_port) = (
            authority.host.to_string(),
            with_port(authority.host, authority.port),
            authority.port,
        );
        // The fields the sending proxy set, looked for in one pass first: most requests
        // carry none of them, and each removal is a hashed lookup.
        let carried = (parts.headers.keys()).any(|name| name.as_str().starts_with("x-fulcrum-"));
        let mut take = |name: HeaderName| match carried {
            true => parts.headers.remove(name),
            false => None,
        };
        let mut service = match take(SERVICE_HEADER) {
            Some(v) => v
                .to_str()
                .map(str::to_string)
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, "x-fulcrum-service: not text"))?,
            None => host,
        };
        // Services are named in lower case (their metrics and state are kept by name).
        service.make_ascii_lowercase();
        if !routing.discovery.knows(&service) {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                &format!("unknown service {service:?} in cluster {}", self.cluster),
            ));
        }
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut forward = default_route(&service, authority, path_and_query);
        handled.service = Some(service);
        forward.target.subset = (take(SUBSET_HEADER))
            .and_then(|v| v.to_str().ok().map(str::to_string))
            .unwrap_or_default();
        // The service port the sending proxy's route chose, else the authority's.
        let chosen = take(PORT_HEADER);
        forward.target.port = (chosen.and_then(|v| v.to_str().ok()?.parse().ok())).or(named_port);
        let carried_key = take(HASH_KEY_HEADER);
        if let Some(hop) = hop {
            parts.headers.insert(HOP_HEADER, hop.clone());
        }
        Ok((forward, carried_key))
    }

    /// What `handle_east_west` does.
    async fn serve_for_peer<B>(
        &self,
        request: Request<B>,
        hop: Option<&HeaderValue>,
        upstreams: &Upstreams,
        handled: &mut Handled,
    ) -> ProxyResponse
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(routing) = self.routing() else {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no configuration yet",
            );
        };
        let (mut parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            return refuse_connect();
        }
        let (mut forward, carried_key) = match self.peer_route(&routing, &mut parts, hop, handled) {
            Ok(routed) => routed,
            Err(answer) => return *answer,
        };
        if is_grpc(&parts.headers) {
            heed_grpc_timeout(&mut parts.headers, &mut forward);
        }
        // The sender already retried by its route; here only a connection that could not
        // be made is tried on another endpoint of this cluster.
        forward.retries = RetryPolicy {
            attempts: 1,
            retry_on: RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            },
            ..RetryPolicy::istio_default()
        };
        // Kept for no retry: the only one here is on a connection that could not be made,
        // before the body is taken.
        let (body, _) = match self.request_body(&parts, body, 0, 0).await {
            Ok(b) => b,
            Err(response) => return *response,
        };
        let discovery = routing.discovery.as_ref();
        let settings = discovery.balance_on(
            &forward.target.host,
            &forward.target.subset,
            forward.target.port,
        );
        let permit = match self.admit_from_peer(settings, &forward.target) {
            Ok(permit) => permit,
            Err(response) => return *response,
        };
        let mut response = self
            .attempts(
                upstreams,
                &routing,
                None,
                (&parts, KeyFrom::Peer(carried_key)),
                &forward,
                settings,
                &body,
                handled,
            )
            .await;
        if permit.holds() {
            response.body_mut().keep(permit);
        }
        response
    }

    /// The request's body as its tries will send it ([`crate::upload`]), keeping up to
    /// `keep` bytes of one forwarded as it arrives for a retry, and a copy of it for each
    /// of its `mirrors`. A body of a declared length of at most [`WHOLE_BODY_BYTES`] (not
    /// a gRPC call's) is read whole, and its copies are the same bytes. Any other is
    /// forwarded as it arrives, and its copies arrive as it is read ([`tee`]), each let
    /// go once it is more than [`RETRY_BUFFER_BYTES`] behind: Envoy's buffer limit, which
    /// ends a shadow too.
    async fn request_body<B>(
        &self,
        parts: &http::request::Parts,
        body: B,
        keep: usize,
        mirrors: usize,
    ) -> Result<(RequestBody, Vec<Shadow>), Box<ProxyResponse>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let whole = |bytes: Bytes| {
            let shadows = (0..mirrors).map(|_| Shadow::Whole(bytes.clone())).collect();
            (RequestBody::Whole(bytes), shadows)
        };
        // Most requests have none: known from the head (h2's END_STREAM, a zero length).
        if body.is_end_stream() {
            return Ok(whole(Bytes::new()));
        }
        let large = (body.size_hint().exact()).is_none_or(|n| n > WHOLE_BODY_BYTES);
        if !large && !is_grpc(&parts.headers) {
            // Held to its declared length by the listener that read its head.
            return match body.collect().await {
                Ok(body) => Ok(whole(body.to_bytes())),
                Err(e) => Err(Box::new(body_failed(e.into().as_ref()))),
            };
        }
        let body = body.map_err(Into::into).boxed_unsync();
        if mirrors == 0 {
            return Ok((RequestBody::arriving(body, keep), Vec::new()));
        }
        let (body, copies) = tee(body, mirrors, RETRY_BUFFER_BYTES);
        let shadows = copies.into_iter().map(Shadow::Arriving).collect();
        Ok((RequestBody::arriving(body, keep), shadows))
    }

    /// The limiters of `target`'s connection-pool limits, when its DestinationRule sets
    /// any: made anew when the limits change (requests in flight keep their places in the
    /// old ones).
    fn limiters(&self, settings: &BalanceSettings, target: &Target) -> Option<Arc<Limiters>> {
        if !settings.limits.any() {
            return None;
        }
        let mut limits = self.limits.lock().ok()?;
        let subsets = limits.entry(target.host.clone()).or_default();
        match subsets.get(&target.subset) {
            Some(l) if l.limits == settings.limits => Some(l.clone()),
            _ => {
                let made = Arc::new(Limiters::new(settings.limits));
                subsets.insert(target.subset.clone(), made.clone());
                Some(made)
            }
        }
    }

    /// A place within `target`'s connection-pool limits, as Envoy's circuit breakers
    /// give one: a connection when the service's connections are limited, waited for
    /// among at most its pending requests; then a place among its requests in flight.
    /// Over a limit, the 503 `overflow` answer.
    async fn admit(
        &self,
        settings: &BalanceSettings,
        target: &Target,
    ) -> Result<Permit, Box<ProxyResponse>> {
        let Some(limiters) = self.limiters(settings, target) else {
            return Ok(Permit::default());
        };
        // Counted from now: Envoy's budget counts the requests waiting for a connection.
        let in_flight = limiters.count_in_flight();
        let connection = match &limiters.connections {
            None => None,
            Some(connections) => match connections.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let place = match &limiters.pending {
                        Some(pending) => Some(
                            (pending.clone().try_acquire_owned())
                                .map_err(|_| self.overflow(target))?,
                        ),
                        None => None,
                    };
                    let gauge = (self.metrics.pending)
                        .get_or_create(&ProxyMetrics::service(&target.host))
                        .clone();
                    let waiting = Waiting::new(gauge, place);
                    let permit = (connections.clone().acquire_owned().await)
                        .map_err(|_| self.overflow(target))?;
                    drop(waiting);
                    Some(permit)
                }
            },
        };
        let request = match &limiters.requests {
            Some(requests) => {
                Some((requests.clone().try_acquire_owned()).map_err(|_| self.overflow(target))?)
            }
            None => None,
        };
        Ok(Permit {
            request,
            connection,
            in_flight,
        })
    }

    /// A place within `target`'s limit of requests in flight only: for a request from
    /// another cluster's proxy, which the sending proxy held to the rest of the limits.
    fn admit_from_peer(
        &self,
        settings: &BalanceSettings,
        target: &Target,
    ) -> Result<Permit, Box<ProxyResponse>> {
        let Some(limiters) = self.limiters(settings, target) else {
            return Ok(Permit::default());
        };
        let request = match &limiters.requests {
            Some(requests) => {
                Some((requests.clone().try_acquire_owned()).map_err(|_| self.overflow(target))?)
            }
            None => None,
        };
        Ok(Permit {
            request,
            connection: None,
            in_flight: limiters.count_in_flight(),
        })
    }

    /// The answer to a request over a limit, counted.
    fn overflow(&self, target: &Target) -> Box<ProxyResponse> {
        self.metrics
            .overflows
            .get_or_create(&ProxyMetrics::service(&target.host))
            .inc();
        Box::new(answer(StatusCode::SERVICE_UNAVAILABLE, "overflow"))
    }

    /// A place among `target`'s retries in flight, under its retry budget or its
    /// `http.maxRetries`; `None` (counted) when there is none left and the try is not
    /// to be retried.
    fn retry_permit(&self, settings: &BalanceSettings, target: &Target) -> Option<RetryPlace> {
        let Some(limiters) = self.limiters(settings, target) else {
            return Some(RetryPlace::default());
        };
        let place = match (&limiters.budget, &limiters.retries) {
            (Some(budget), _) => limiters.budget_retry(budget).map(|r| RetryPlace {
                _budgeted: Some(r),
                ..RetryPlace::default()
            }),
            (None, Some(retries)) => {
                (retries.clone().try_acquire_owned().ok()).map(|p| RetryPlace {
                    _counted: Some(p),
                    ..RetryPlace::default()
                })
            }
            (None, None) => Some(RetryPlace::default()),
        };
        if place.is_none() {
            self.metrics
                .retry_overflows
                .get_or_create(&ProxyMetrics::service(&target.host))
                .inc();
        }
        place
    }

    /// Counts a try's outcome for outlier detection, when the service has it.
    fn observe(
        &self,
        settings: &BalanceSettings,
        target: &Target,
        endpoint: SocketAddr,
        outcome: TryOutcome,
        total: usize,
    ) {
        if let Some(settings) = &settings.outlier {
            let place = (target.host.as_str(), endpoint, total);
            observe_outlier(&self.outliers, &self.metrics, settings, place, outcome);
        }
    }

    /// A try's outcome, to be counted once a streamed answer tells it.
    fn tally(
        &self,
        settings: &BalanceSettings,
        target: &Target,
        (cluster, locality): (&str, &Locality),
        endpoint: Option<SocketAddr>,
        total: usize,
        latency: Duration,
    ) -> Tally {
        Tally {
            stats: Arc::clone(&self.stats),
            outliers: Arc::clone(&self.outliers),
            metrics: Arc::clone(&self.metrics),
            service: target.host.clone(),
            cluster: cluster.to_string(),
            locality: locality.clone(),
            outlier: endpoint.and_then(|e| Some((settings.outlier.clone()?, e, total))),
            latency,
        }
    }

    /// The endpoints outlier detection has not ejected and health checks find up; all of
    /// them when those are fewer than the service's `minHealthPercent` (`outlier`), as
    /// Envoy's panic threshold has it.
    fn not_ejected(
        &self,
        target: &Target,
        endpoints: Arc<[Endpoint]>,
        outlier: Option<&OutlierSettings>,
    ) -> Arc<[Endpoint]> {
        let now = Instant::now().into_std();
        let outliers = self.outliers.lock().ok();
        let detector = outliers.as_ref().and_then(|o| o.get(&target.host));
        let usable = |e: &&Endpoint| {
            self.health.is_up(e.address) && detector.is_none_or(|d| !d.is_ejected(e.address, now))
        };
        // Mostly all are: then the shared list serves, uncopied.
        if endpoints.iter().all(|e| usable(&e)) {
            return endpoints;
        }
        let left: Arc<[Endpoint]> = endpoints.iter().filter(usable).cloned().collect();
        let panic = outlier.map_or(0, |o| o.min_health_percent) as usize;
        if left.len() * 100 < panic * endpoints.len() {
            return endpoints;
        }
        left
    }

    fn is_unreachable(&self, cluster: &str) -> bool {
        self.unreachable
            .lock()
            .ok()
            .and_then(|u| u.get(cluster).copied())
            .is_some_and(|until| Instant::now() < until)
    }

    fn mark_unreachable(&self, cluster: &str) {
        if let Ok(mut u) = self.unreachable.lock() {
            u.insert(cluster.to_string(), Instant::now() + UNREACHABLE_HOLD);
        }
    }

    /// The first try and its retries, never to the same endpoint (or, across clusters,
    /// the same cluster) twice. With a `row`, each try's destination locality is chosen
    /// from it; without, every try stays in this cluster.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        upstreams: &Upstreams,
        routing: &Routing,
        row: Option<&LocalityRow>,
        request: (&http::request::Parts, KeyFrom),
        forward: &Forward,
        settings: &BalanceSettings,
        body: &RequestBody,
        handled: &mut Handled,
    ) -> ProxyResponse {
        let (parts, key_from) = request;
        // The sending proxy names the cluster and counts the tries in what it answers:
        // the same fields from here would only be encoded, decoded and replaced.
        let for_peer = matches!(key_from, KeyFrom::Peer(_));
        let discovery = routing.discovery.as_ref();
        let target = &forward.target;
        let endpoints = endpoints_of(discovery, target);
        let total = endpoints.len();
        let local = self.not_ejected(target, endpoints, settings.outlier.as_ref());
        let no_local = || {
            if total == 0 {
                format!(
                    "no endpoint of {}{} in this cluster",
                    target.host,
                    subset_suffix(&target.subset)
                )
            } else {
                format!(
                    "no healthy endpoint of {}{}: all {total} ejected by outlier detection or failing health checks",
                    target.host,
                    subset_suffix(&target.subset)
                )
            }
        };
        if row.is_none() && local.is_empty() {
            return answer(StatusCode::SERVICE_UNAVAILABLE, &no_local());
        }
        let made = |client| (settings.hash_on.as_ref()).and_then(|on| hash_key(on, parts, client));
        let hash = match key_from {
            KeyFrom::Client(client) => made(client),
            // A sender that set no key (it does not hash, or predates the field): as it
            // would be made here, without a client address.
            KeyFrom::Peer(carried) => carried
                .map(|key| HashKey {
                    key: key.as_bytes().to_vec(),
                    set_cookie: None,
                })
                .or_else(|| made(None)),
        };
        let policy: &RetryPolicy = &forward.retries;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut tried_clusters: Vec<&str> = Vec::new();
        let mut tried_destinations: Vec<usize> = Vec::new();
        let mut last = None;
        let mut tries = 0u32;
        // A retry's place among the service's retries in flight, held while it is tried.
        let mut _retrying = None;
        for attempt in 0..=policy.attempts {
            // A body forwarded as it arrived, and not whole: no try can send it again.
            if attempt > 0 && !body.can_send_again() {
                break;
            }
            if attempt > 0 {
                // Over the service's limit of retries in flight, the last answer stands.
                // This request's last retry, if any, has ended: its place goes first.
                _retrying = None;
                let Some(place) = self.retry_permit(settings, target) else {
                    break;
                };
                _retrying = Some(place);
            }
            let Some(hop) = self.next_hop(
                settings,
                row,
                hash.as_ref().map(|h| h.key.as_slice()),
                forward,
                &local,
                (&tried, &tried_clusters, &tried_destinations),
            ) else {
                if attempt == 0 {
                    last = Some(answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "{}, and no other cluster can take {} now",
                            no_local(),
                            target.host
                        ),
                    ));
                }
                break;
            };
            let (hop, destination) = hop;
            tried_destinations.extend(destination);
            if attempt > 0 {
                tokio::time::sleep(policy.backoff_before(attempt, &mut RandomChance)).await;
            }
            let started = Instant::now();
            let (mut result, cluster, locality) = match &hop {
                Hop::Local(endpoint) => {
                    if policy.avoid_tried {
                        tried.push(endpoint.address);
                    }
                    // Boxed: a try's state is a kilobyte, and inline it would be copied
                    // with every future that holds this one, on every request.
                    let result = crate::boxed(|| {
                        self.try_local(upstreams, parts, forward, (endpoint, settings), body)
                    })
                    .await;
                    (result, self.cluster.as_str(), &self.locality)
                }
                Hop::Remote {
                    cluster,
                    gateway,
                    locality,
                    ..
                } => {
                    if policy.avoid_tried {
                        tried_clusters.push(*cluster);
                    }
                    // Not boxed: it boxes the exchange itself, and is small.
                    let result = self
                        .try_remote(
                            upstreams,
                            parts,
                            forward,
                            (cluster, gateway),
                            hash.as_ref().map(|h| h.key.as_slice()),
                            body,
                        )
                        .await;
                    (result, *cluster, *locality)
                }
            };
            handled.locality = match &hop {
                Hop::Local(_) => self.locality_text.clone(),
                Hop::Remote { locality_text, .. } => Arc::clone(locality_text),
            };
            let endpoint = match &hop {
                Hop::Local(endpoint) => Some(endpoint.address),
                Hop::Remote { .. } => None,
            };
            match &mut result {
                // Its status comes in its trailers, after its messages: counted then.
                Try::Answered(r, _) if status_in_trailers(r) => {
                    let place = (cluster, locality);
                    let tally =
                        self.tally(settings, target, place, endpoint, total, started.elapsed());
                    r.body_mut().on_end(move |end| tally.count(end));
                }
                // Failed by the client's doing (its body broke off): nothing to count.
                Try::Reset(_) | Try::TimedOut if body.broken_off().is_some() => {}
                tried => {
                    // A gRPC answer counts as the status its grpc-status stands for.
                    let status = match tried {
                        Try::Answered(r, _) => Some(outcome_status(r)),
                        _ => None,
                    };
                    let outcome = status.map_or(Outcome::NoAnswer, Outcome::Status);
                    self.stats
                        .record(&target.host, cluster, locality, outcome, started.elapsed());
                    if let Some(endpoint) = endpoint {
                        let outcome = status.map_or(TryOutcome::LocalFailure, TryOutcome::Status);
                        self.observe(settings, target, endpoint, outcome, total);
                    }
                }
            }
            // The fields of the answer kept, if it is an endpoint's: none of an earlier try's.
            handled.fields = None;
            let (retry, response) = match result {
                Try::Answered(r, fields) => {
                    let retry = policy.retry_on.retries_status(r.status().as_u16())
                        || (r.headers().get(GRPC_STATUS))
                            .is_some_and(|code| policy.retry_on.retries_grpc(code.as_bytes()));
                    let (mut head, body) = r.into_parts();
                    // An endpoint's fields are end-to-end already; a peer's answer is h2.
                    strip_hop_by_hop(&mut head.headers);
                    handled.fields = fields;
                    // Room for what the proxy adds: growing a map rehashes it.
                    head.headers.reserve(3);
                    match &hop {
                        Hop::Local(endpoint) => {
                            head.headers
                                .insert(UPSTREAM_HEADER, endpoint.name_value.clone());
                            if !for_peer {
                                head.headers
                                    .insert(CLUSTER_HEADER, self.cluster_value.clone());
                            }
                        }
                        Hop::Remote { .. } => {
                            if let Ok(v) = HeaderValue::from_str(cluster) {
                                head.headers.insert(CLUSTER_HEADER, v);
                            }
                        }
                    }
                    (retry, Response::from_parts(head, body))
                }
                Try::ConnectFailed(e) => {
                    self.metrics
                        .connect_errors
                        .get_or_create(&ProxyMetrics::service(&target.host))
                        .inc();
                    let to = match &hop {
                        Hop::Local(endpoint) => endpoint.address.to_string(),
                        Hop::Remote { cluster, .. } => {
                            self.mark_unreachable(cluster);
                            format!("cluster {cluster}")
                        }
                    };
                    (
                        policy.retry_on.connect_failure,
                        answer(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &format!("upstream connect error to {to}: {e}"),
                        ),
                    )
                }
                Try::Reset(e) => match body.broken_off() {
                    // The client's body broke off, not the endpoint: the client's answer.
                    Some((status, why)) => (false, answer(status, &why)),
                    None => (
                        policy.retry_on.reset,
                        answer(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &format!("upstream in {cluster} reset before answering: {e}"),
                        ),
                    ),
                },
                Try::TimedOut => (
                    policy.retry_on.reset || policy.retry_on.gateway_error,
                    answer(StatusCode::GATEWAY_TIMEOUT, "per-try timeout"),
                ),
            };
            last = Some(response);
            tries = attempt + 1;
            if !retry {
                break;
            }
        }
        let mut last =
            last.unwrap_or_else(|| answer(StatusCode::SERVICE_UNAVAILABLE, "no try was made"));
        if !for_peer {
            last.headers_mut()
                .insert(ATTEMPTS_HEADER, attempts_value(tries));
        }
        if let Some(cookie) = hash.and_then(|h| h.set_cookie) {
            // Beside the endpoint's own cookies, not instead of them.
            handled.merge_fields(&mut last);
            last.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        last
    }

    /// Where the next try goes: a destination locality from the row (or this cluster
    /// without one), then an endpoint there; with the index of the row's destination.
    /// `tried` is what earlier tries used.
    fn next_hop<'r>(
        &self,
        settings: &BalanceSettings,
        row: Option<&'r LocalityRow>,
        key: Option<&[u8]>,
        forward: &Forward,
        local: &[Endpoint],
        tried: (&[SocketAddr], &[&str], &[usize]),
    ) -> Option<(Hop<'r>, Option<usize>)> {
        let (endpoints, clusters, destinations) = tried;
        let Some(row) = row else {
            return self
                .pick(settings, key, forward, local, endpoints)
                .map(|e| (Hop::Local(e), None));
        };
        let remote_retry = forward.retries.remote_localities;
        let usable = |i: usize| {
            if remote_retry && destinations.contains(&i) {
                return false;
            }
            match &row.destinations()[i].place {
                Place::Local => local.iter().any(|e| !endpoints.contains(&e.address)),
                Place::Remote { cluster, .. } => {
                    !clusters.contains(&cluster.as_str()) && !self.is_unreachable(cluster)
                }
                Place::Unreachable => false,
            }
        };
        let i = row.choose(usable, &mut RandomChance)?;
        let destination = &row.destinations()[i];
        let hop = match &destination.place {
            Place::Local => Hop::Local(self.pick(settings, key, forward, local, endpoints)?),
            Place::Remote { cluster, gateways } if !gateways.is_empty() => {
                let n = self.rotation.fetch_add(1, Ordering::Relaxed) % gateways.len();
                Hop::Remote {
                    cluster,
                    gateway: &gateways[n],
                    locality: &destination.locality,
                    locality_text: &destination.locality_text,
                }
            }
            _ => return None,
        };
        Some((hop, Some(i)))
    }

    /// An endpoint of `endpoints` not `tried` yet, by the service's balancer (`key`: the
    /// request's consistent-hash key, when it has one).
    fn pick(
        &self,
        settings: &BalanceSettings,
        key: Option<&[u8]>,
        forward: &Forward,
        endpoints: &[Endpoint],
        tried: &[SocketAddr],
    ) -> Option<Endpoint> {
        // The first try has all to choose from, uncopied.
        if !endpoints.iter().any(|e| tried.contains(&e.address)) {
            return self.pick_among(settings, key, forward, endpoints);
        }
        let fresh: Vec<Endpoint> = endpoints
            .iter()
            .filter(|e| !tried.contains(&e.address))
            .cloned()
            .collect();
        self.pick_among(settings, key, forward, &fresh)
    }

    fn pick_among(
        &self,
        settings: &BalanceSettings,
        key: Option<&[u8]>,
        forward: &Forward,
        endpoints: &[Endpoint],
    ) -> Option<Endpoint> {
        if endpoints.is_empty() {
            return None;
        }
        // Read in place, not copied: this runs for every try. (Lock order: pickers, then
        // in_flight; nothing takes them the other way round.)
        let mut pickers = self.pickers.lock().ok()?;
        let in_flight = self.in_flight.lock().ok()?;
        let target = &forward.target;
        if !(pickers.get(&target.host)).is_some_and(|p| p.contains_key(&target.subset)) {
            let subsets = pickers.entry(target.host.clone()).or_default();
            subsets.insert(target.subset.clone(), Vec::new());
        }
        let by_port = (pickers.get_mut(&target.host)).and_then(|p| p.get_mut(&target.subset))?;
        // One per port: each port has its own endpoints, and may have its own balancer.
        let at = match by_port.iter().position(|(port, _)| *port == target.port) {
            Some(at) => at,
            None => {
                by_port.push((target.port, EndpointPicker::default()));
                by_port.len() - 1
            }
        };
        let picker = &mut by_port[at].1;
        // A new picker when the service's rule has changed its balancer since.
        let (policy, warmup) = (settings.policy, settings.warmup);
        if !picker.is_for(policy, warmup) {
            *picker = EndpointPicker::with_warmup(policy, warmup);
        }
        // An endpoint back from failing its health checks warms up again, as in Envoy.
        if warmup.is_some() {
            for e in endpoints {
                if let Some(at) = self.health.recovered_at(e.address) {
                    picker.rejoined(&e.name, at);
                }
            }
        }
        let i = picker.pick(
            endpoints,
            |i| in_flight.get(&endpoints[i].address).copied().unwrap_or(0),
            key,
            &mut RandomChance,
        )?;
        Some(endpoints[i].clone())
    }

    /// One try on `endpoint` of this cluster, under its service's `settings`.
    async fn try_local(
        &self,
        upstreams: &Upstreams,
        parts: &http::request::Parts,
        forward: &Forward,
        (endpoint, settings): (&Endpoint, &BalanceSettings),
        body: &RequestBody,
    ) -> Try {
        if in_h2(endpoint, settings, parts) {
            // Boxed: its state is several times an HTTP/1 try's, and inline it would be
            // part of (and copied with) every try's future.
            let to_h2 = self.try_h2_endpoint(upstreams, parts, forward, (endpoint, settings), body);
            return Box::pin(to_h2).await;
        }
        let (sent, mut arriving) = match body.to_send() {
            ToSend::Whole(bytes) => (Http1Body::Whole(bytes), None),
            ToSend::Arriving(forwarding) => {
                (Http1Body::Arriving(forwarding.length()), Some(forwarding))
            }
            ToSend::Gone => return Try::Reset(NOT_AGAIN.into()),
        };
        let request = match http1_request(parts, forward, sent) {
            Ok(r) => r.with_pool(settings.pool.clone()),
            Err(e) => return Try::Reset(e),
        };
        let request = match &settings.pool {
            Some(pool) => request.for_host(tls_host(pool, &forward.authority)),
            None => request,
        };
        let in_flight = InFlight::enter(&self.in_flight, endpoint.address);
        let send = async {
            let http = &upstreams.http;
            let exchanged = match &mut arriving {
                None => http.exchange(endpoint.address, &request).await,
                // Boxed: its state would otherwise be part of (and be copied with) every
                // request's future, though most bodies are whole.
                Some(body) => {
                    Box::pin(http.exchange_arriving(endpoint.address, &request, body)).await
                }
            };
            match exchanged {
                Ok(answer) => {
                    let mut response = Response::new(answer.body);
                    // A streamed answer is in flight until it ends (for LEAST_REQUEST).
                    response.body_mut().keep(in_flight);
                    // Room for the fields the proxy adds (the endpoint's stay apart, raw,
                    // for an HTTP/1 client; merging them in for another makes room then).
                    *response.headers_mut() = HeaderMap::with_capacity(PROXY_FIELDS);
                    *response.status_mut() = answer.status;
                    *response.version_mut() = answer.version;
                    Try::Answered(response, Some(answer.fields))
                }
                Err(UpstreamError::Connect(e)) => Try::ConnectFailed(e),
                Err(UpstreamError::Reset(e)) => Try::Reset(e),
            }
        };
        within(forward.retries.per_try_timeout, body, send).await
    }

    /// One try at an endpoint of this cluster that speaks h2 (gRPC), over h2c, under its
    /// service's `settings`.
    async fn try_h2_endpoint(
        &self,
        upstreams: &Upstreams,
        parts: &http::request::Parts,
        forward: &Forward,
        (endpoint, settings): (&Endpoint, &BalanceSettings),
        body: &RequestBody,
    ) -> Try {
        let to_send = body.to_send();
        let request = match h2_request(parts, forward, http::uri::Scheme::HTTP, Bytes::new()) {
            Ok(r) => r,
            Err(e) => return Try::Reset(e),
        };
        let in_flight = InFlight::enter(&self.in_flight, endpoint.address);
        let send = async {
            let settings = settings.pool.as_deref().unwrap_or(&POOL_DEFAULTS);
            let peer = Peer {
                address: &endpoint.name,
                cluster: &self.cluster,
                host: tls_host(settings, &forward.authority),
                settings,
            };
            let sent = send_h2(&upstreams.h2c, peer, request, to_send).await;
            // A streamed answer is in flight until it ends (for LEAST_REQUEST).
            answered(sent.map(|mut r| {
                r.body_mut().keep(in_flight);
                r
            }))
        };
        within(forward.retries.per_try_timeout, body, send).await
    }

    /// One try in another cluster, through its east-west listener at `gateway`.
    async fn try_remote(
        &self,
        upstreams: &Upstreams,
        parts: &http::request::Parts,
        forward: &Forward,
        (cluster, gateway): (&str, &str),
        hash_key: Option<&[u8]>,
        body: &RequestBody,
    ) -> Try {
        let Some(pool) = &upstreams.east_west else {
            return Try::ConnectFailed("no east-west transport configured".into());
        };
        let to_send = body.to_send();
        let request = match peer_request(parts, forward, hash_key, Bytes::new()) {
            Ok(r) => r,
            Err(e) => return Try::Reset(e),
        };
        let peer = Peer::east_west(gateway, cluster);
        // Boxed where it is made, so that what holds it (the per-try timeout, the
        // request's tries) holds a pointer: the h2 exchange's state is kilobytes.
        let send = crate::boxed(|| async { answered(send_h2(pool, peer, request, to_send).await) });
        within(forward.retries.per_try_timeout, body, send).await
    }

    /// Sends a copy and forgets it: the caller's response is never delayed, and the
    /// copy's answer is read to its end and dropped (a connection to the mirror's
    /// endpoint is then used again, and a stream to it ends as it would for a client).
    fn mirror(
        &self,
        upstreams: &Upstreams,
        discovery: &dyn Discovery,
        target: &Target,
        parts: &http::request::Parts,
        forward: &Forward,
        shadow: Shadow,
    ) {
        let Some(endpoint) = discovery
            .endpoints_on(&target.host, &target.subset, target.port)
            .first()
            .cloned()
        else {
            return;
        };
        // Its connections are the mirror service's, under its settings.
        let settings = discovery
            .balance_on(&target.host, &target.subset, target.port)
            .pool
            .clone();
        let mut copy = forward.clone();
        // Envoy marks mirrored requests by suffixing the authority's name (before its
        // port, when it has one).
        copy.authority = match HostPort::parse(forward.authority.as_bytes()) {
            Some(HostPort { host, port }) => with_port(&format!("{host}-shadow"), port),
            None => format!("{}-shadow", forward.authority),
        };
        // Nothing kept: a mirror is not retried.
        let to_send = match shadow {
            Shadow::Whole(bytes) => ToSend::Whole(bytes),
            Shadow::Arriving(body) => RequestBody::arriving(body, 0).to_send(),
        };
        if in_h2(
            &endpoint,
            discovery.balance_on(&target.host, &target.subset, target.port),
            parts,
        ) {
            let scheme = http::uri::Scheme::HTTP;
            let Ok(request) = h2_request(parts, &copy, scheme, Bytes::new()) else {
                return;
            };
            let (pool, cluster) = (upstreams.h2c.clone(), self.cluster.clone());
            tokio::spawn(async move {
                let settings = settings.as_deref().unwrap_or(&POOL_DEFAULTS);
                let peer = Peer {
                    address: &endpoint.name,
                    cluster: &cluster,
                    host: tls_host(settings, &copy.authority),
                    settings,
                };
                let sent = send_h2(&pool, peer, request, to_send).await;
                if let Ok(answer) = sent {
                    drain(answer.into_body()).await;
                }
            });
            return;
        }
        let (sent, arriving) = match to_send {
            ToSend::Whole(bytes) => (Http1Body::Whole(bytes), None),
            ToSend::Arriving(forwarding) => {
                (Http1Body::Arriving(forwarding.length()), Some(forwarding))
            }
            ToSend::Gone => return,
        };
        let Ok(request) = http1_request(parts, &copy, sent) else {
            return;
        };
        let request = request.with_pool(settings.clone());
        let request = match &settings {
            Some(pool) => request.for_host(tls_host(pool, &copy.authority)),
            None => request,
        };
        let pool = upstreams.http.clone();
        tokio::spawn(async move {
            let exchanged = match arriving {
                None => pool.exchange(endpoint.address, &request).await,
                Some(mut body) => {
                    pool.exchange_arriving(endpoint.address, &request, &mut body)
                        .await
                }
            };
            if let Ok(answer) = exchanged {
                drain(answer.body).await;
            }
        });
    }
}

/// The host of `authority` (without its port) when a service's connection `settings`
/// originate TLS to its endpoints (the server name, unless their rule sets one); else
/// nothing, not looked for.
fn tls_host<'a>(settings: &PoolSettings, authority: &'a str) -> &'a str {
    if settings.tls.is_none() {
        return "";
    }
    HostPort::parse(authority.as_bytes()).map_or(authority, |h| h.host)
}

/// A mirror's copy of its request's body.
enum Shadow {
    Whole(Bytes),
    /// Arriving as the request's own does ([`tee`]).
    Arriving(ArrivingBody),
}

/// Reads `body` to its end, dropping what it reads.
async fn drain(mut body: ProxyBody) {
    while let Some(Ok(_)) = body.frame().await {}
}

impl ReportSource for Outbound {
    fn inventory(&self) -> Vec<EndpointInventory> {
        let Some(routing) = self.routing() else {
            return Vec::new();
        };
        let now = Instant::now().into_std();
        let outliers = self.outliers.lock().ok();
        routing
            .discovery
            .local_services()
            .into_iter()
            .map(|service| {
                let endpoints = routing.discovery.endpoints(&service, "");
                let ejected = outliers
                    .as_ref()
                    .and_then(|o| o.get(&service))
                    .map_or(0, |d| {
                        endpoints
                            .iter()
                            .filter(|e| d.is_ejected(e.address, now))
                            .count()
                    });
                let total = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
                let ready = endpoints
                    .iter()
                    .filter(|e| self.health.is_up(e.address))
                    .count();
                EndpointInventory {
                    service,
                    locality: self.locality.clone(),
                    total,
                    ready: u32::try_from(ready).unwrap_or(u32::MAX),
                    ejected: u32::try_from(ejected).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }

    fn clusters(&self) -> Vec<ClusterInfo> {
        self.routing()
            .map(|r| r.clusters.clone())
            .unwrap_or_default()
    }
}

/// Whether `answer` is a gRPC answer whose status is yet to come, in the trailers of its
/// streamed body: a 200 with messages to follow.
fn status_in_trailers(answer: &ProxyResponse) -> bool {
    answer.status() == StatusCode::OK
        && matches!(answer.body(), ProxyBody::Streaming(_))
        && !answer.headers().contains_key(GRPC_STATUS)
        && is_grpc(answer.headers())
}

/// Counts a try's `outcome` at `place` (service, endpoint, and how many endpoints the
/// service has) for outlier detection by `settings`, and an ejection it causes.
fn observe_outlier(
    outliers: &Mutex<FastMap<String, OutlierDetector>>,
    metrics: &ProxyMetrics,
    settings: &OutlierSettings,
    (service, endpoint, total): (&str, SocketAddr, usize),
    outcome: TryOutcome,
) {
    let Ok(mut outliers) = outliers.lock() else {
        return;
    };
    // The service's name is copied for its first try only, not on each.
    if !outliers.contains_key(service) {
        outliers.insert(service.to_string(), OutlierDetector::new(settings.clone()));
    }
    let Some(detector) = outliers.get_mut(service) else {
        return;
    };
    let now = Instant::now().into_std();
    if let Some(length) = detector.record(endpoint, outcome, total, now) {
        metrics
            .ejections
            .get_or_create(&ProxyMetrics::service(service))
            .inc();
        tracing::warn!(
            service,
            %endpoint,
            "ejected for {}s by outlier detection",
            length.as_secs()
        );
    }
}

/// A try whose outcome a streamed answer tells at its end: what to count it in.
struct Tally {
    stats: Arc<Stats>,
    outliers: Arc<Mutex<FastMap<String, OutlierDetector>>>,
    metrics: Arc<ProxyMetrics>,
    service: String,
    cluster: String,
    locality: Locality,
    /// For an endpoint of this cluster, with outlier detection: its settings, address,
    /// and how many endpoints the service has.
    outlier: Option<(OutlierSettings, SocketAddr, usize)>,
    /// Until the answer's head.
    latency: Duration,
}

impl Tally {
    /// Counts the try as its answer ended: as the status its trailers' grpc-status stands
    /// for; as its head's 200 without one, or when the client left first; as no answer
    /// when it broke off.
    fn count(self, end: End<'_>) {
        let status = match end {
            End::Trailers(fields) => Some(
                fields
                    .get(GRPC_STATUS)
                    .map_or(200, |code| http_for_code(code.as_bytes())),
            ),
            End::Data | End::Dropped => Some(200),
            End::Broken => None,
        };
        let outcome = status.map_or(Outcome::NoAnswer, Outcome::Status);
        let (service, cluster) = (self.service.as_str(), self.cluster.as_str());
        self.stats
            .record(service, cluster, &self.locality, outcome, self.latency);
        if let Some((settings, endpoint, total)) = &self.outlier {
            let outcome = status.map_or(TryOutcome::LocalFailure, TryOutcome::Status);
            let place = (service, *endpoint, *total);
            observe_outlier(&self.outliers, &self.metrics, settings, place, outcome);
        }
    }
}

/// Why a try could not send a request whose body was forwarded by an earlier one.
const NOT_AGAIN: &str =
    "the request's body was forwarded as it arrived and is not whole: it cannot be sent again";

/// Sends `request` (its body empty) with the body `to_send` over `pool` to `peer`:
/// whole, or forwarded as it arrives.
async fn send_h2(
    pool: &H2Pool,
    peer: Peer<'_>,
    request: Request<Bytes>,
    to_send: ToSend,
) -> Result<ProxyResponse, SendError> {
    match to_send {
        ToSend::Whole(body) => pool.send(peer, request.map(|_| body)).await,
        ToSend::Arriving(forwarding) => {
            let mut request = request.map(|_| ());
            if let Some(length) = forwarding.length() {
                // Declared as the client declared it (h2 holds the body to it).
                (request.headers_mut()).insert(CONTENT_LENGTH, HeaderValue::from(length));
            }
            pool.send_arriving(peer, request, forwarding).await
        }
        ToSend::Gone => Err(SendError::Reset(NOT_AGAIN.into())),
    }
}

/// What an exchange over h2 came to, as a try.
fn answered(sent: Result<ProxyResponse, SendError>) -> Try {
    match sent {
        Ok(r) => Try::Answered(r, None),
        Err(SendError::Connect(e)) => Try::ConnectFailed(e),
        Err(SendError::Reset(e)) => Try::Reset(e),
    }
}

/// A request's places within its service's connection-pool limits, held while it is in
/// flight (a streamed answer's until it ends).
#[derive(Default)]
struct Permit {
    request: Option<tokio::sync::OwnedSemaphorePermit>,
    connection: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Counted for a retry budget.
    in_flight: Option<BudgetedRequest>,
}

impl Permit {
    /// Whether it holds any place.
    fn holds(&self) -> bool {
        self.request.is_some() || self.connection.is_some() || self.in_flight.is_some()
    }
}

/// A request waiting for a connection under its service's limit: its place among the
/// pending requests, counted in the `pending_requests` gauge until it stops waiting
/// (given a connection, or given up by its client).
struct Waiting {
    gauge: prometheus_client::metrics::gauge::Gauge,
    _place: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Waiting {
    fn new(
        gauge: prometheus_client::metrics::gauge::Gauge,
        place: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Waiting {
        gauge.inc();
        Waiting {
            gauge,
            _place: place,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One service's (or subset's) connection-pool limiters ([`PoolLimits`]).
struct Limiters {
    /// The limits they were made for.
    limits: PoolLimits,
    requests: Option<Arc<tokio::sync::Semaphore>>,
    connections: Option<Arc<tokio::sync::Semaphore>>,
    pending: Option<Arc<tokio::sync::Semaphore>>,
    /// The retries in flight under `http.maxRetries`, when there is no retry budget.
    retries: Option<Arc<tokio::sync::Semaphore>>,
    /// Requests and retries in flight, counted for a retry budget.
    budget: Option<BudgetCount>,
}

impl Limiters {
    fn new(limits: PoolLimits) -> Limiters {
        let make = |n: Option<u32>| n.map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize)));
        Limiters {
            limits,
            requests: make(limits.requests),
            connections: make(limits.connections),
            pending: make(limits.pending),
            // A budget replaces the fixed number, as in Envoy.
            retries: make(limits.retries.filter(|_| limits.retry_budget.is_none())),
            budget: limits.retry_budget.map(|limit| BudgetCount {
                limit,
                active: AtomicUsize::new(0),
                retrying: AtomicUsize::new(0),
            }),
        }
    }

    /// Counts a request in flight under a retry budget, until the place returned is
    /// dropped.
    fn count_in_flight(self: &Arc<Limiters>) -> Option<BudgetedRequest> {
        let budget = self.budget.as_ref()?;
        budget.active.fetch_add(1, Ordering::Relaxed);
        Some(BudgetedRequest(Arc::clone(self)))
    }

    /// A retry's place within the retry budget, if the budget has one left.
    fn budget_retry(self: &Arc<Limiters>, budget: &BudgetCount) -> Option<Retrying> {
        let allowed = budget.limit.allowed(budget.active.load(Ordering::Relaxed));
        (budget.retrying)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < allowed).then_some(n + 1)
            })
            .ok()?;
        Some(Retrying(Arc::clone(self)))
    }
}

/// What a retry budget is measured against: a service's requests in flight (those
/// waiting for a connection included) and the retries among them.
struct BudgetCount {
    limit: RetryBudgetLimit,
    active: AtomicUsize,
    retrying: AtomicUsize,
}

/// A request counted in flight for its service's retry budget.
struct BudgetedRequest(Arc<Limiters>);

impl Drop for BudgetedRequest {
    fn drop(&mut self) {
        if let Some(budget) = &self.0.budget {
            budget.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A retry in flight within its service's retry budget.
struct Retrying(Arc<Limiters>);

impl Drop for Retrying {
    fn drop(&mut self) {
        if let Some(budget) = &self.0.budget {
            budget.retrying.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A retry's place among its service's retries in flight, held while it is tried: none
/// when the service limits them neither way.
#[derive(Default)]
struct RetryPlace {
    /// One of its `http.maxRetries`.
    _counted: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Within its retry budget.
    _budgeted: Option<Retrying>,
}

/// An answer of `status` alone, for an h2 stream.
fn bare(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// The answer to a CONNECT: 404, as Envoy gives one without a `connect_matcher`. The
/// proxy makes no tunnels, and passing the method on would be worse than refusing it: an
/// endpoint that accepted would turn its pooled connection into a tunnel that the next
/// request would be written into.
fn refuse_connect() -> ProxyResponse {
    answer(
        StatusCode::NOT_FOUND,
        "CONNECT is not routed: the proxy makes no tunnels",
    )
}

/// Marks a request that asks for a WebSocket upgrade the proxy will carry: HTTP/1.1 GET
/// with `Connection: upgrade` and `Upgrade: websocket`, and no body
/// ([`Outbound::open_tunnel`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WebSocketUpgrade;

/// The address of the client a request came from (a consistent hash on `useSourceIp`
/// reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub SocketAddr);

/// Where a request's consistent-hash key comes from.
enum KeyFrom {
    /// An application's request: made from its fields or its client's address.
    Client(Option<ClientAddress>),
    /// A request from another cluster's proxy: the key it carried ([`HASH_KEY_HEADER`]).
    Peer(Option<HeaderValue>),
}

/// A request's consistent-hash key, and the cookie to set on its answer when the key was
/// made here.
struct HashKey {
    key: Vec<u8>,
    set_cookie: Option<HeaderValue>,
}

/// The consistent-hash key of the request in `parts` from `client`, taken from where `on`
/// says; none when the request lacks it (it is then balanced as RANDOM would).
fn hash_key(
    on: &HashOn,
    parts: &http::request::Parts,
    client: Option<ClientAddress>,
) -> Option<HashKey> {
    let key = |bytes: &[u8]| HashKey {
        key: bytes.to_vec(),
        set_cookie: None,
    };
    match on {
        HashOn::Header(name) => parts.headers.get(name).map(|v| key(v.as_bytes())),
        HashOn::SourceIp => client.map(|a| key(a.0.ip().to_string().as_bytes())),
        HashOn::Query(name) => parts
            .uri
            .query()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(n, _)| n == name)
            .map(|(_, value)| key(value.as_bytes())),
        HashOn::Cookie { name, path, ttl } => {
            let sent = parts
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(n, _)| n == name);
            if let Some((_, value)) = sent {
                return Some(key(value.as_bytes()));
            }
            let ttl = (*ttl)?;
            let value = format!("{:016x}", rand::random::<u64>());
            let mut cookie = format!("{name}={value}");
            if !path.is_empty() {
                cookie.push_str(&format!("; Path={path}"));
            }
            if !ttl.is_zero() {
                cookie.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
            }
            cookie.push_str("; HttpOnly");
            Some(HashKey {
                key: value.into_bytes(),
                set_cookie: HeaderValue::from_str(&cookie).ok(),
            })
        }
    }
}

/// What is learnt about a request as it is handled, for after: what it is counted under
/// in the metrics (its service, none for `unknown`, and the locality that answered), and
/// the answering endpoint's fields while they are as they came.
struct Handled {
    service: Option<String>,
    locality: Arc<str>,
    /// The fields of an endpoint's answer, not in the answer's header map (which holds
    /// what the proxy adds); `None` once merged, or for any other answer.
    fields: Option<RawFields>,
}

impl Handled {
    fn new(locality: &Arc<str>) -> Handled {
        Handled {
            service: None,
            locality: locality.clone(),
            fields: None,
        }
    }

    /// Puts the endpoint's fields, if still apart, into `response`'s header map.
    fn merge_fields(&mut self, response: &mut ProxyResponse) {
        if let Some(fields) = self.fields.take() {
            merge_raw_fields(response.headers_mut(), fields);
        }
    }
}

/// The endpoints of `target` in this cluster: those of the name it asked for, when that
/// name was looked up for it, else the service's.
fn endpoints_of(discovery: &dyn Discovery, target: &Target) -> Arc<[Endpoint]> {
    let host = target.looked_up.as_deref().unwrap_or(&target.host);
    discovery.endpoints_on(host, &target.subset, target.port)
}

/// Whether a request (`parts`) goes to `endpoint` in h2: as its port is spoken (or
/// upgraded to, by the service's rule), or as its client spoke when the rule says to keep
/// the client's protocol.
fn in_h2(endpoint: &Endpoint, settings: &BalanceSettings, parts: &http::request::Parts) -> bool {
    match settings.use_client_protocol {
        true => parts.version == Version::HTTP_2,
        false => endpoint.h2 || settings.h2_upgrade,
    }
}

/// The endpoint pickers of one service and subset, by the service port asked for.
type PickersByPort = Vec<(Option<u16>, EndpointPicker)>;

/// Logs a request's `line`, the request begun at `since`, in `log` as it ends.
fn log_end(log: Option<&AccessLog>, line: Option<Line>, since: Instant) {
    if let (Some(mut line), Some(log)) = (line, log) {
        line.number("duration", Some(since.elapsed().as_millis() as u64));
        log.log(line);
    }
}

/// How a request's protocol is written in the access log.
fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// The value of `x-fulcrum-attempts`: made without an allocation for the usual counts.
fn attempts_value(tries: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(tries as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(tries),
    }
}

/// The answer to a request whose body could not be read: 408 when it stalled, else 400.
fn body_failed(error: &(dyn std::error::Error + 'static)) -> ProxyResponse {
    if crate::h2_server::is_stall(error) {
        return answer(StatusCode::REQUEST_TIMEOUT, &error.to_string());
    }
    answer(StatusCode::BAD_REQUEST, "request body could not be read")
}

/// A gRPC call's route timeout is the one its `grpc-timeout` asks for, capped by the
/// route's ([`crate::grpc::call_timeout`]); the endpoint is told the one that holds.
fn heed_grpc_timeout(headers: &mut HeaderMap, forward: &mut Forward) {
    forward.timeout = call_timeout(forward.timeout, grpc_timeout(headers));
    if let Some(timeout) = forward.timeout {
        headers.insert(GRPC_TIMEOUT, grpc_timeout_value(timeout));
    }
}

/// One try, within the per-try `timeout` if there is one. The timer starts once the
/// request has been sent whole, as Envoy's does: for a body forwarded as it arrives, when
/// the body has ended (or when the try began, if later), so that an upload may take as
/// long as it takes.
///
/// A plain function returning a combinator, not an `async fn`: an `async fn` keeps a
/// future passed to it twice in its own, once as its argument and once where it is
/// awaited, and every try's future (kilobytes) would be copied into both.
fn within<'a>(
    timeout: Option<Duration>,
    body: &'a RequestBody,
    send: impl Future<Output = Try> + 'a,
) -> impl Future<Output = Try> + 'a {
    match timeout {
        Some(t) if body.is_whole() => Either::Left(Either::Left(
            tokio::time::timeout(t, send).map(|r| r.unwrap_or(Try::TimedOut)),
        )),
        // Boxed: rare, and its state would otherwise be part of every try's future.
        Some(t) => {
            let began = tokio::time::Instant::now();
            let timed = Box::pin(after_body(body, began, t, send));
            Either::Left(Either::Right(timed.map(|r| r.unwrap_or(Try::TimedOut))))
        }
        None => Either::Right(send),
    }
}

/// `work`, unless `t` passes after both `began` and the end of the request's `body`
/// (which may never come: then `work` has as long as it takes).
async fn after_body<T>(
    body: &RequestBody,
    began: tokio::time::Instant,
    t: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    let deadline = async { tokio::time::sleep_until(body.ended().await.max(began) + t).await };
    tokio::select! {
        biased;
        done = work => Some(done),
        () = deadline => None,
    }
}

/// Counts requests in flight per endpoint while alive (for LEAST_REQUEST).
struct InFlight {
    map: Arc<Mutex<FastMap<SocketAddr, u32>>>,
    address: SocketAddr,
}

impl InFlight {
    fn enter(map: &Arc<Mutex<FastMap<SocketAddr, u32>>>, address: SocketAddr) -> InFlight {
        if let Ok(mut m) = map.lock() {
            *m.entry(address).or_default() += 1;
        }
        InFlight {
            map: map.clone(),
            address,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.address)
        {
            *n = n.saturating_sub(1);
        }
    }
}

fn subset_suffix(subset: &str) -> String {
    if subset.is_empty() {
        String::new()
    } else {
        format!(" (subset {subset})")
    }
}

/// An error with its causes, `a: b: c`; a cause already said (libraries often repeat
/// their source's message as their own) is said once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

/// Istio's route for a known service no VirtualService names: the whole of `service`,
/// with the `authority` the request came with.
fn default_route(service: &str, authority: String, path_and_query: &str) -> Forward {
    Forward {
        route: Cow::Borrowed("default"),
        target: Target {
            host: service.to_string(),
            subset: String::new(),
            port: None,
            looked_up: None,
        },
        path_and_query: path_and_query.to_string(),
        authority,
        request_headers: HeaderChanges::default(),
        response_headers: HeaderChanges::default(),
        timeout: None,
        retries: RetryPolicy::istio_default(),
        fault: Default::default(),
        mirrors: Vec::new(),
    }
}

/// A request's authority, split: the host as sent (a name, an IPv4 address, or an IPv6
/// literal in brackets) and the port when one is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostPort<'a> {
    host: &'a str,
    port: Option<u16>,
}

/// The bytes a host name may hold (RFC 3986 §3.2.2's reg-name): unreserved characters,
/// sub-delimiters and percent-escapes. A table, as every request's authority is checked.
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%')
            || matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        b += 1;
    }
    table
};

impl<'a> HostPort<'a> {
    /// `text` as an authority without userinfo (RFC 3986 §3.2.2–3): `None` when it is not
    /// one. Parsed in place, as it is on every request.
    fn parse(text: &'a [u8]) -> Option<HostPort<'a>> {
        let (host, port) = match text.first()? {
            b'[' => {
                let end = text.iter().position(|&b| b == b']')?;
                let literal = &text[1..end];
                let ok = |b: &u8| b.is_ascii_hexdigit() || matches!(b, b':' | b'.');
                if literal.is_empty() || !literal.iter().all(ok) {
                    return None;
                }
                match &text[end + 1..] {
                    [] => (&text[..=end], None),
                    [b':', port @ ..] => (&text[..=end], Some(port)),
                    _ => return None,
                }
            }
            _ => match text.iter().rposition(|&b| b == b':') {
                Some(colon) => (&text[..colon], Some(&text[colon + 1..])),
                None => (text, None),
            },
        };
        let name_byte = |b: &u8| NAME_BYTES[usize::from(*b)];
        if host.is_empty() || (host[0] != b'[' && !host.iter().all(name_byte)) {
            return None;
        }
        let port = match port {
            None | Some([]) => None,
            Some(digits) if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => {
                let n = digits
                    .iter()
                    .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
                Some(u16::try_from(n).ok()?)
            }
            Some(_) => return None,
        };
        // Only ASCII was taken.
        let host = std::str::from_utf8(host).ok()?;
        Some(HostPort { host, port })
    }
}

/// The request's authority: the URI's (h2's `:authority`, or an absolute-form URI;
/// userinfo, which it must not carry, left out), else the Host header. A request with
/// more than one Host field is refused whichever it is (RFC 9112 §3.2): two proxies on
/// the path could each take a different one.
fn authority_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Result<HostPort<'a>, String> {
    // One lookup for both questions: is there a second Host, and what does the first say.
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if host.is_some() && hosts.next().is_some() {
        return Err("more than one Host header".into());
    }
    if let Some(a) = uri.authority() {
        let text = a.as_str();
        let text = text.rsplit_once('@').map_or(text, |(_, host)| host);
        return HostPort::parse(text.as_bytes())
            .ok_or_else(|| format!("invalid authority {text:?}"));
    }
    host_value(host)
}

/// The service a request from an application names: its [`authority_of`], except that an
/// h2 request whose `:authority` names no service `known` to this proxy (a client sent
/// to the proxy's own address, such as `h2load -H 'host: shop.example' http://proxy/`)
/// is routed by its Host header when that names one.
fn service_authority<'a>(
    uri: &'a Uri,
    headers: &'a HeaderMap,
    known: impl Fn(&str) -> bool,
) -> Result<HostPort<'a>, String> {
    let authority = authority_of(uri, headers)?;
    if uri.authority().is_some()
        && !known(authority.host)
        && headers.contains_key(HOST)
        && let Ok(host) = host_header(headers)
        && known(host.host)
    {
        return Ok(host);
    }
    Ok(authority)
}

/// The Host header, as an authority.
fn host_header(headers: &HeaderMap) -> Result<HostPort<'_>, String> {
    host_value(headers.get(HOST))
}

/// A Host header's value (`None`: the request has none), as an authority.
fn host_value(host: Option<&HeaderValue>) -> Result<HostPort<'_>, String> {
    let host =
        host.ok_or_else(|| "missing Host header: the service is named by Host".to_string())?;
    HostPort::parse(host.as_bytes()).ok_or_else(|| {
        format!(
            "invalid Host header {:?}",
            String::from_utf8_lossy(host.as_bytes())
        )
    })
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names a message has, rather than a lookup per hop-by-hop name:
    // this runs on every request and every answer.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if is_hop_by_hop(name.as_str().as_bytes()) {
            doomed.push(name.clone());
        }
        // Headers the Connection header names are hop-by-hop too.
        if name == http::header::CONNECTION
            && let Ok(text) = value.to_str()
        {
            doomed.extend(
                text.split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
            );
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

fn apply_changes(headers: &mut HeaderMap, changes: &HeaderChanges) {
    for name in &changes.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for (name, value) in &changes.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &changes.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
}

/// The request to send to an endpoint of this cluster, in HTTP/1.1: the client's, without
/// its hop-by-hop and framing fields, with the route's Host and header changes.
fn http1_request(
    parts: &http::request::Parts,
    forward: &Forward,
    body: Http1Body,
) -> Result<Http1Request, String> {
    if !forward.request_headers.is_empty() || parts.headers.contains_key(CONNECTION) {
        // The route changes fields, or the client named hop-by-hop ones: build the
        // request's fields as the east-west path does.
        let mut request = upstream_request(parts, forward, &forward.path_and_query, Bytes::new())?;
        request.headers_mut().remove(EXPECT);
        let writer = Http1Request::writer_for(&request.into_parts().0)?;
        return Ok(writer.finish_with(body));
    }
    // The common case, without a copy of the client's fields: each is written as it is
    // passed over.
    let mut writer = Http1Request::start(&parts.method, &forward.path_and_query)?;
    // Host first, as RFC 9112 §3.2 asks of clients.
    writer.field_text(&HOST, &forward.authority)?;
    for (name, value) in &parts.headers {
        // Expect too: the proxy answers `100 Continue` itself, as Envoy does.
        let framing_or_host = name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == HOST;
        if !framing_or_host && name != EXPECT && !is_hop_by_hop(name.as_str().as_bytes()) {
            writer.field(name, value);
        }
    }
    Ok(writer.finish_with(body))
}

/// The request to send to another cluster's proxy, over h2: [`h2_request`], with what
/// this proxy chose that the peer needs: the subset, the hash key, and the service when
/// the authority does not name it. Those fields replace whatever the application put in
/// them: none is the application's to choose.
fn peer_request(
    parts: &http::request::Parts,
    forward: &Forward,
    hash_key: Option<&[u8]>,
    body: Bytes,
) -> Result<Request<Bytes>, String> {
    let mut request = h2_request(parts, forward, http::uri::Scheme::HTTPS, body)?;
    let headers = request.headers_mut();
    if !forward.target.subset.is_empty()
        && let Ok(v) = HeaderValue::from_str(&forward.target.subset)
    {
        headers.insert(SUBSET_HEADER, v);
    }
    if let Some(Ok(v)) = hash_key.map(HeaderValue::from_bytes) {
        headers.insert(HASH_KEY_HEADER, v);
    }
    let authority = HostPort::parse(forward.authority.as_bytes());
    let authority_host = authority.as_ref().map(|a| a.host);
    if authority_host.is_none_or(|host| !host.eq_ignore_ascii_case(&forward.target.host)) {
        let service = HeaderValue::from_str(&forward.target.host)
            .map_err(|_| format!("invalid service name {:?}", forward.target.host))?;
        headers.insert(SERVICE_HEADER, service);
    }
    if let Some(port) = forward.target.port
        && authority.and_then(|a| a.port) != Some(port)
    {
        headers.insert(PORT_HEADER, HeaderValue::from(port));
    }
    Ok(request)
}

/// The request to send over h2 (to a peer, or to an endpoint that speaks h2): the
/// client's, without its hop-by-hop and framing fields, without Host (h2 carries the
/// authority in the URI) and without the fields proxies tell each other, with the
/// route's header changes. `TE: trailers`, the one TE h2 allows, is kept: gRPC servers
/// look for it.
fn h2_request(
    parts: &http::request::Parts,
    forward: &Forward,
    scheme: http::uri::Scheme,
    body: Bytes,
) -> Result<Request<Bytes>, String> {
    let ours = |name: &HeaderName| {
        name == SUBSET_HEADER
            || name == HASH_KEY_HEADER
            || name == SERVICE_HEADER
            || name == PORT_HEADER
    };
    let mut request =
        if !forward.request_headers.is_empty() || parts.headers.contains_key(CONNECTION) {
            let uri = format!("{scheme}://{}{}", forward.authority, forward.path_and_query);
            let mut request = upstream_request(parts, forward, &uri, body)?;
            let headers = request.headers_mut();
            for name in [
                HOST,
                SUBSET_HEADER,
                HASH_KEY_HEADER,
                SERVICE_HEADER,
                PORT_HEADER,
            ] {
                headers.remove(name);
            }
            request
        } else {
            // The common case: the fields copied in one pass, not cloned and then taken
            // out one lookup at a time.
            let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
            for (name, value) in &parts.headers {
                let framing_or_host =
                    name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == HOST;
                if !framing_or_host && !ours(name) && !is_hop_by_hop(name.as_str().as_bytes()) {
                    headers.append(name.clone(), value.clone());
                }
            }
            let mut request = Request::new(body);
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = h2_uri(parts, forward, scheme)?;
            *request.headers_mut() = headers;
            request
        };
    *request.version_mut() = Version::HTTP_2;
    // A request's id is new with every request: not worth a place in the connection's
    // HPACK table, where it would push out the fields that repeat (the authority, the
    // path) and lengthen the search for the next one.
    if let Some(id) = request.headers_mut().get_mut(REQUEST_ID_HEADER) {
        id.set_sensitive(true);
    }
    if asks_for_trailers(&parts.headers) {
        request
            .headers_mut()
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    Ok(request)
}

/// Whether a request's TE field accepts trailers (`TE: trailers`, among other codings).
fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|coding| {
                coding
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
    })
}

/// `SCHEME://AUTHORITY/PATH` of a request over h2, from its parts rather than from a
/// string made and parsed again; the client's path is shared when the route kept it.
fn h2_uri(
    parts: &http::request::Parts,
    forward: &Forward,
    scheme: http::uri::Scheme,
) -> Result<Uri, String> {
    let bad = |e: &dyn std::fmt::Display| format!("cannot build the upstream URI: {e}");
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(scheme);
    uri.authority =
        Some(http::uri::Authority::try_from(forward.authority.as_str()).map_err(|e| bad(&e))?);
    uri.path_and_query = Some(match parts.uri.path_and_query() {
        Some(p) if p.as_str() == forward.path_and_query => p.clone(),
        _ => http::uri::PathAndQuery::try_from(forward.path_and_query.as_str())
            .map_err(|e| bad(&e))?,
    });
    Uri::from_parts(uri).map_err(|e| bad(&e))
}

fn upstream_request(
    parts: &http::request::Parts,
    forward: &Forward,
    uri: &str,
    body: Bytes,
) -> Result<Request<Bytes>, String> {
    let uri: Uri = uri
        .parse()
        .map_err(|e| format!("cannot build the upstream URI: {e}"))?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    *headers = parts.headers.clone();
    strip_hop_by_hop(headers);
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    let host = HeaderValue::from_str(&forward.authority)
        .map_err(|_| format!("invalid authority {:?}", forward.authority))?;
    headers.insert(HOST, host);
    apply_changes(headers, &forward.request_headers);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error's causes follow it, each said once.
    #[test]
    fn an_error_chain_says_each_cause_once() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let refused = Layer("connection refused", None);
        let repeated = Layer("tcp connect error", Some(Box::new(refused)));
        let connect = Layer("tcp connect error", Some(Box::new(repeated)));
        let top = Layer("transport error", Some(Box::new(connect)));
        assert_eq!(
            error_chain(&top),
            "transport error: tcp connect error: connection refused"
        );
    }

    /// A name looked up for a request is resolved again in the background while requests
    /// ask for it; one that does not resolve is not kept (it would take a place among the
    /// names kept, and be looked up again and again).
    #[tokio::test]
    async fn names_that_resolve_are_kept_and_those_that_do_not_are_not() {
        let mut config = fulcrum_policy::ConfigSet::new();
        config.add_text(
            "wild.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {name: wild, namespace: shop}\nspec:\n  hosts: [\"*.wild.example\"]\n  \
             location: MESH_EXTERNAL\n  ports: [{number: 80, name: http, protocol: HTTP}]\n",
        );
        let resolver = Resolver::new(|name: String| async move {
            match name.as_str() {
                "api.wild.example" => Ok(Arc::from([std::net::IpAddr::from([127, 0, 0, 1])])),
                _ => Err("no such name".to_string()),
            }
        });
        let here: Locality = "r1/z1".parse().expect("locality");
        let outbound = Outbound::new(None, Arc::new(ProxyMetrics::new()), "east".into(), here)
            .with_resolver(resolver);
        let resources: Vec<_> = config.resources().collect();
        outbound.configure(&resources, &[], Vec::new());
        let routing = outbound
            .look_up("api.wild.example")
            .await
            .expect("resolves");
        assert_eq!(
            routing.discovery.looked_up_under("api.wild.example"),
            Some("*.wild.example")
        );
        let Err(refused) = outbound.look_up("gone.wild.example").await else {
            panic!("gone.wild.example resolved");
        };
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(outbound.dns_names(), ["api.wild.example"]);
    }

    #[test]
    fn the_request_to_an_endpoint_keeps_end_to_end_fields_only() {
        let client = |extra: &[(&str, &str)]| {
            let mut request = Request::builder()
                .method("POST")
                .uri("/orders?id=7")
                .header(HOST, "shop.example")
                .header("x-app", "1")
                .header(CONTENT_LENGTH, "2")
                .header("te", "trailers")
                .header("upgrade", "websocket")
                .header("keep-alive", "timeout=5")
                // The proxy answers `100 Continue` itself.
                .header("expect", "100-continue");
            for (name, value) in extra {
                request = request.header(*name, *value);
            }
            request.body(()).unwrap().into_parts().0
        };
        let mut forward = default_route(
            "checkout.internal",
            "checkout.internal".into(),
            "/v2/orders?id=7",
        );
        let sent = |parts: &http::request::Parts, forward: &Forward| {
            let request =
                http1_request(parts, forward, Http1Body::Whole(Bytes::from("{}"))).unwrap();
            String::from_utf8(request.message().to_vec()).unwrap()
        };
        let expected = "POST /v2/orders?id=7 HTTP/1.1\r\nhost: checkout.internal\r\n\
                        x-app: 1\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(sent(&client(&[]), &forward), expected);
        // A Connection field, and the fields it names, go too (the slower path, where the
        // fields keep the client's order).
        let named = client(&[("connection", "x-hop"), ("x-hop", "1")]);
        assert_eq!(sent(&named, &forward), expected);
        // The route's changes apply after the Host is set.
        forward.request_headers.set = vec![("x-app".into(), "2".into())];
        forward.request_headers.add = vec![("x-more".into(), "3".into())];
        let text = sent(&client(&[]), &forward);
        assert!(
            text.contains("x-app: 2\r\n") && !text.contains("x-app: 1"),
            "{text}"
        );
        assert!(text.contains("x-more: 3\r\n") && text.contains("host: checkout.internal"));
        // A body sent as it arrives: its length when known, else chunked.
        forward.request_headers = Default::default();
        for (length, framing) in [
            (Some(5_000_000), "content-length: 5000000"),
            (None, "transfer-encoding: chunked"),
        ] {
            let request =
                http1_request(&client(&[]), &forward, Http1Body::Arriving(length)).unwrap();
            let text = String::from_utf8(request.message().to_vec()).unwrap();
            assert!(
                text.ends_with(&format!("x-app: 1\r\n{framing}\r\n\r\n")),
                "{text}"
            );
        }
    }

    #[test]
    fn the_request_to_another_cluster_keeps_end_to_end_fields_and_the_proxys_own() {
        let client = |extra: &[(&str, &str)]| {
            let mut request = Request::builder()
                .method("POST")
                .uri("/orders?id=7")
                .header(HOST, "shop.example")
                .header("x-app", "1")
                .header(CONTENT_LENGTH, "2")
                .header("te", "trailers")
                .header("keep-alive", "timeout=5")
                // What only a proxy may say to its peer.
                .header(SUBSET_HEADER, "forged")
                .header(HASH_KEY_HEADER, "forged");
            for (name, value) in extra {
                request = request.header(*name, *value);
            }
            request.body(()).unwrap().into_parts().0
        };
        let mut forward = default_route(
            "checkout.internal",
            "checkout.internal".into(),
            "/v2/orders?id=7",
        );
        let sent = |parts: &http::request::Parts, forward: &Forward, key: Option<&[u8]>| {
            let request = peer_request(parts, forward, key, Bytes::from("{}")).unwrap();
            assert_eq!(request.version(), Version::HTTP_2);
            assert_eq!(request.method(), "POST");
            assert_eq!(
                request.uri().to_string(),
                format!("https://{}{}", forward.authority, forward.path_and_query),
                "the authority travels in the URI"
            );
            let mut fields: Vec<String> = (request.headers().iter())
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect();
            fields.sort();
            fields
        };
        // Fast path and the slower one (a Connection field, and what it names) alike.
        // `TE: trailers`, the one TE h2 allows, is kept: gRPC servers look for it.
        let named = client(&[("connection", "x-hop"), ("x-hop", "1")]);
        for parts in [client(&[]), named] {
            assert_eq!(sent(&parts, &forward, None), ["te: trailers", "x-app: 1"]);
            forward.target.subset = "v2".into();
            assert_eq!(
                sent(&parts, &forward, Some(b"10.0.0.7")),
                [
                    "te: trailers",
                    "x-app: 1",
                    "x-fulcrum-hash-key: 10.0.0.7",
                    "x-fulcrum-subset: v2"
                ]
            );
            forward.target.subset.clear();
        }
        forward.request_headers.set = vec![("x-app".into(), "2".into())];
        assert_eq!(
            sent(&client(&[]), &forward, None),
            ["te: trailers", "x-app: 2"]
        );
        // A route to a service the authority does not name says which, to the peer.
        let mut elsewhere = default_route(
            "checkout.shop.svc.cluster.local",
            "front".into(),
            "/v2/orders?id=7",
        );
        assert_eq!(
            sent(
                &client(&[("x-fulcrum-service", "forged")]),
                &elsewhere,
                None
            ),
            [
                "te: trailers",
                "x-app: 1",
                "x-fulcrum-service: checkout.shop.svc.cluster.local"
            ]
        );
        elsewhere.authority = "CHECKOUT.shop.svc.cluster.local:8080".into();
        assert_eq!(
            sent(&client(&[]), &elsewhere, None),
            ["te: trailers", "x-app: 1"]
        );
        // A path the route kept is the client's, shared.
        let kept = default_route(
            "checkout.internal",
            "checkout.internal".into(),
            "/orders?id=7",
        );
        let request = peer_request(&client(&[]), &kept, None, Bytes::new()).unwrap();
        assert_eq!(request.uri(), "https://checkout.internal/orders?id=7");
        // The request's id, new every time, is kept out of HPACK's table; others are not.
        let with_id = client(&[("x-request-id", "8c1e2f9a-0000-4000-8000-000000000001")]);
        let request = peer_request(&with_id, &kept, None, Bytes::new()).unwrap();
        assert!(request.headers()[REQUEST_ID_HEADER].is_sensitive());
        assert!(!request.headers()["x-app"].is_sensitive());
    }

    #[test]
    fn a_request_id_is_a_random_version_4_uuid() {
        let a = new_request_id();
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36);
        let groups: Vec<usize> = text.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(text.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert_eq!(&text[14..15], "4", "{text}");
        assert!("89ab".contains(&text[19..20]), "{text}");
        // A thousand in a row, all different.
        let ids: std::collections::HashSet<HeaderValue> =
            (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&a));
    }

    #[test]
    fn the_authority_comes_from_the_uri_or_a_valid_host_header() {
        let mut h = HeaderMap::new();
        assert!(
            authority_of(&Uri::from_static("/x"), &h)
                .unwrap_err()
                .contains("missing Host")
        );
        let uri = Uri::from_static("/x");
        let cases = [
            ("shop.example:8080", Some(("shop.example", Some(8080)))),
            ("shop.example", Some(("shop.example", None))),
            ("shop.example:", Some(("shop.example", None))),
            ("10.0.0.1:80", Some(("10.0.0.1", Some(80)))),
            ("[::1]:8443", Some(("[::1]", Some(8443)))),
            ("[fe80::1]", Some(("[fe80::1]", None))),
            ("SHOP.Example", Some(("SHOP.Example", None))),
            // Every byte a name may hold, and some it may not.
            (
                "a-b.c_d~e%41!$&'()*+,;=",
                Some(("a-b.c_d~e%41!$&'()*+,;=", None)),
            ),
            ("shop\"x", None),
            ("shop<x>", None),
            ("shop{x}", None),
            ("shop^x", None),
            ("user@shop.example", None),
            ("bad host", None),
            ("shop.example:99999", None),
            ("shop.example:8o", None),
            ("shop/example", None),
            (":80", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[]", None),
        ];
        for (text, want) in cases {
            h.insert(HOST, HeaderValue::from_static(text));
            let got = authority_of(&uri, &h).ok().map(|a| (a.host, a.port));
            assert_eq!(got, want, "{text}");
        }
        let none = HeaderMap::new();
        let uri = Uri::from_static("http://api.example/x");
        let a = authority_of(&uri, &none).unwrap();
        assert_eq!((a.host, a.port), ("api.example", None));
        let uri = Uri::from_static("http://someone@api.example:81/x");
        let a = authority_of(&uri, &none).unwrap();
        assert_eq!((a.host, a.port), ("api.example", Some(81)));
        // Two Host fields are refused, even the same twice, even beside a URI authority.
        let mut two = HeaderMap::new();
        two.append(HOST, HeaderValue::from_static("api.example"));
        two.append(HOST, HeaderValue::from_static("api.example"));
        for uri in [Uri::from_static("/x"), uri] {
            let refused = authority_of(&uri, &two).unwrap_err();
            assert!(refused.contains("more than one Host"), "{refused}");
        }
    }

    #[test]
    fn an_h2_authority_naming_no_service_gives_way_to_a_host_header_that_does() {
        let known = |h: &str| h == "shop.example";
        let uri = Uri::from_static("http://127.0.0.1:15001/x");
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("shop.example"));
        let a = service_authority(&uri, &h, known).unwrap();
        assert_eq!(a.host, "shop.example");
        // A known :authority stays, whatever Host says; an unknown Host changes nothing.
        let uri_known = Uri::from_static("http://shop.example/x");
        h.insert(HOST, HeaderValue::from_static("other.example"));
        assert_eq!(
            service_authority(&uri_known, &h, known).unwrap().host,
            "shop.example"
        );
        assert_eq!(
            service_authority(&uri, &h, known).unwrap().host,
            "127.0.0.1"
        );
        // HTTP/1 names the service by Host alone.
        let origin_form = Uri::from_static("/x");
        let a = service_authority(&origin_form, &h, known).unwrap();
        assert_eq!(a.host, "other.example");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }
}
