//! The outbound path: an application's request, addressed to a service by its Host, is
//! routed ([`crate::routing`]), balanced ([`crate::balance`]) and forwarded to an endpoint
//! of this cluster, with the route's timeout, retries, faults, header changes and mirrors.
//!
//! Every answer the proxy makes itself carries `x-fulcrum-reason` saying why: a bad Host
//! (400), an unknown service (404), no endpoint (503), an upstream that could not be
//! reached (503), a timeout (504), an injected fault. It never panics on what a client
//! sent; hyper refuses malformed HTTP (bad framing, invalid or differing Content-Length,
//! oversized heads) before a request gets here. A request with both Content-Length and
//! Transfer-Encoding is read by Transfer-Encoding alone, as RFC 9112 §6.1 allows, and
//! forwarded with the proxy's own framing, so it cannot smuggle a second request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::balance::{EndpointPicker, OutlierDetector, TryOutcome};
use crate::discovery::{Discovery, Endpoint};
use crate::metrics::ProxyMetrics;
use crate::routing::{
    Forward, HeaderChanges, RandomChance, RetryPolicy, RouteDecision, RouteRequest, RouteTable,
    Target,
};

/// The header on every answer the proxy makes itself.
pub const REASON_HEADER: &str = "x-fulcrum-reason";
/// The header naming the endpoint that answered.
pub const UPSTREAM_HEADER: &str = "x-fulcrum-upstream";
/// Largest request body the proxy buffers (it keeps the body to retry).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How long a connection to an endpoint may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Headers that describe one hop's connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The answer type of the outbound path.
pub type ProxyResponse = Response<Full<Bytes>>;

/// An answer the proxy makes itself.
pub fn answer(status: StatusCode, reason: &str) -> ProxyResponse {
    let mut response = Response::new(Full::new(Bytes::from(format!("{reason}\n"))));
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
}

/// The routing and forwarding state of the outbound listener. The routing is swapped on
/// each accepted snapshot; balancing, outlier and limit state stay across swaps.
pub struct Outbound {
    routing: std::sync::RwLock<Option<Arc<Routing>>>,
    pickers: Mutex<HashMap<(String, String), EndpointPicker>>,
    in_flight: Arc<Mutex<HashMap<SocketAddr, u32>>>,
    /// Per service host.
    outliers: Mutex<HashMap<String, OutlierDetector>>,
    /// Per service host, when its DestinationRule limits requests in flight.
    limits: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    client: Client<HttpConnector, Full<Bytes>>,
    max_body_bytes: usize,
    metrics: Arc<ProxyMetrics>,
    /// This proxy's locality: where its endpoints are (the destination locality label).
    locality: String,
}

/// What happened to one try.
enum Try {
    Answered(Response<Bytes>),
    ConnectFailed(String),
    Reset(String),
    TimedOut,
}

impl Outbound {
    /// Forwards with `routing` (none yet: answers 503 until [`Outbound::update`]) to
    /// endpoints in `locality`.
    pub fn new(routing: Option<Routing>, metrics: Arc<ProxyMetrics>, locality: String) -> Outbound {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Outbound {
            routing: std::sync::RwLock::new(routing.map(Arc::new)),
            pickers: Mutex::new(HashMap::new()),
            in_flight: Arc::default(),
            outliers: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            metrics,
            locality,
        }
    }

    /// Routes with `routing` from now on.
    pub fn update(&self, routing: Routing) {
        if let Ok(mut r) = self.routing.write() {
            *r = Some(Arc::new(routing));
        }
    }

    /// Whether there is something to route with.
    pub fn is_ready(&self) -> bool {
        self.routing.read().is_ok_and(|r| r.is_some())
    }

    fn routing(&self) -> Option<Arc<Routing>> {
        self.routing.read().ok().and_then(|r| r.clone())
    }

    /// Routes and forwards one request, and counts it.
    pub async fn handle<B>(&self, request: Request<B>) -> ProxyResponse
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = tokio::time::Instant::now();
        let mut service = String::from("unknown");
        let response = self.route_and_forward(request, &mut service).await;
        self.metrics
            .latency
            .get_or_create(&ProxyMetrics::service(&service))
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .requests
            .get_or_create(&vec![
                ("service", service),
                ("locality", self.locality.clone()),
                ("code", response.status().as_u16().to_string()),
            ])
            .inc();
        response
    }

    /// What `handle` does; sets `service` once the request names a known one.
    async fn route_and_forward<B>(&self, request: Request<B>, service: &mut String) -> ProxyResponse
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(routing) = self.routing() else {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no configuration yet (no snapshot from a coordinator)",
            );
        };
        let (parts, body) = request.into_parts();
        let authority = match authority_of(&parts.uri, &parts.headers) {
            Ok(a) => a,
            Err(reason) => return answer(StatusCode::BAD_REQUEST, &reason),
        };
        let host = authority.host().to_string();
        let port = authority.port_u16().unwrap_or(80);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let decision = routing.routes.decide(
            &RouteRequest {
                method: parts.method.as_str(),
                scheme: parts.uri.scheme_str().unwrap_or("http"),
                authority: &host,
                path_and_query: &path_and_query,
                headers: &parts.headers,
                port,
            },
            &mut RandomChance,
        );
        if routing.routes.has_host(&host) || routing.discovery.knows(&host) {
            *service = host.clone();
        }
        let forward = match decision {
            RouteDecision::Forward(f) => *f,
            RouteDecision::Redirect { status, location } => {
                let mut r = answer(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                    "redirected by route",
                );
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                return r;
            }
            RouteDecision::Respond { status, body } => {
                let mut r = Response::new(Full::new(body));
                *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                return r;
            }
            RouteDecision::NoRoute if routing.discovery.knows(&host) => {
                default_route(&host, &path_and_query)
            }
            RouteDecision::NoRoute => {
                return answer(
                    StatusCode::NOT_FOUND,
                    &format!("unknown service {host:?}: no route and no ServiceEntry"),
                );
            }
        };
        if let Some(delay) = forward.fault.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = forward.fault.abort {
            return answer(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "fault injected by route",
            );
        }
        let body = match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return if e.downcast_ref::<LengthLimitError>().is_some() {
                    answer(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("request body over {} bytes", self.max_body_bytes),
                    )
                } else {
                    answer(StatusCode::BAD_REQUEST, "request body could not be read")
                };
            }
        };
        // The connection pool's limit: over it, answer at once rather than queue.
        let discovery = routing.discovery.as_ref();
        let _permit = match self.admit(discovery, &forward.target) {
            Ok(permit) => permit,
            Err(()) => {
                self.metrics
                    .overflows
                    .get_or_create(&ProxyMetrics::service(&forward.target.host))
                    .inc();
                return answer(StatusCode::SERVICE_UNAVAILABLE, "overflow");
            }
        };
        for mirror in &forward.mirrors {
            self.mirror(discovery, mirror, &parts, &forward, body.clone());
        }
        let attempts = self.attempts(discovery, &parts, &forward, body);
        let mut response = match forward.timeout {
            Some(t) => match tokio::time::timeout(t, attempts).await {
                Ok(r) => r,
                Err(_) => answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("route timeout {}ms", t.as_millis()),
                ),
            },
            None => attempts.await,
        };
        apply_changes(response.headers_mut(), &forward.response_headers);
        response
    }

    /// A place within the service's request limit, when it has one.
    fn admit(
        &self,
        discovery: &dyn Discovery,
        target: &Target,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ()> {
        let Some(max) = discovery.balance(&target.host, &target.subset).max_requests else {
            return Ok(None);
        };
        let semaphore = {
            let Ok(mut limits) = self.limits.lock() else {
                return Ok(None);
            };
            limits
                .entry(target.host.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max as usize)))
                .clone()
        };
        semaphore.try_acquire_owned().map(Some).map_err(|_| ())
    }

    /// Counts a try's outcome for outlier detection, when the service has it.
    fn observe(
        &self,
        discovery: &dyn Discovery,
        target: &Target,
        endpoint: SocketAddr,
        outcome: TryOutcome,
        total: usize,
    ) {
        let Some(settings) = discovery.balance(&target.host, &target.subset).outlier else {
            return;
        };
        let Ok(mut outliers) = self.outliers.lock() else {
            return;
        };
        let detector = outliers
            .entry(target.host.clone())
            .or_insert_with(|| OutlierDetector::new(settings));
        let now = tokio::time::Instant::now().into_std();
        if let Some(length) = detector.record(endpoint, outcome, total, now) {
            self.metrics
                .ejections
                .get_or_create(&ProxyMetrics::service(&target.host))
                .inc();
            tracing::warn!(
                service = %target.host,
                %endpoint,
                "ejected for {}s by outlier detection",
                length.as_secs()
            );
        }
    }

    /// The endpoints outlier detection has not ejected.
    fn not_ejected(&self, target: &Target, endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
        let now = tokio::time::Instant::now().into_std();
        let Ok(outliers) = self.outliers.lock() else {
            return endpoints;
        };
        match outliers.get(&target.host) {
            None => endpoints,
            Some(d) => endpoints
                .into_iter()
                .filter(|e| !d.is_ejected(e.address, now))
                .collect(),
        }
    }

    /// The first try and its retries, never on the same endpoint twice.
    async fn attempts(
        &self,
        discovery: &dyn Discovery,
        parts: &http::request::Parts,
        forward: &Forward,
        body: Bytes,
    ) -> ProxyResponse {
        let endpoints = discovery.endpoints(&forward.target.host, &forward.target.subset);
        if endpoints.is_empty() {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "no endpoint of {}{} in this cluster",
                    forward.target.host,
                    subset_suffix(&forward.target.subset)
                ),
            );
        }
        let total = endpoints.len();
        let endpoints = self.not_ejected(&forward.target, endpoints);
        if endpoints.is_empty() {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "no healthy endpoint of {}{}: all {total} ejected by outlier detection",
                    forward.target.host,
                    subset_suffix(&forward.target.subset)
                ),
            );
        }
        let policy: &RetryPolicy = &forward.retries;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last = answer(StatusCode::SERVICE_UNAVAILABLE, "no try was made");
        for attempt in 0..=policy.attempts {
            let Some(endpoint) = self.pick(discovery, parts, forward, &endpoints, &tried) else {
                break;
            };
            tried.push(endpoint.address);
            if attempt > 0 {
                tokio::time::sleep(policy.backoff * attempt).await;
            }
            let result = self.try_once(parts, forward, &endpoint, body.clone()).await;
            let outcome = match &result {
                Try::Answered(r) => TryOutcome::Status(r.status().as_u16()),
                _ => TryOutcome::LocalFailure,
            };
            self.observe(discovery, &forward.target, endpoint.address, outcome, total);
            let (retry, response) = match result {
                Try::Answered(r) => {
                    let retry = policy.retry_on.retries_status(r.status().as_u16());
                    let (mut head, body) = r.into_parts();
                    strip_hop_by_hop(&mut head.headers);
                    if let Ok(v) = HeaderValue::from_str(&endpoint.address.to_string()) {
                        head.headers.insert(UPSTREAM_HEADER, v);
                    }
                    (retry, Response::from_parts(head, Full::new(body)))
                }
                Try::ConnectFailed(e) => {
                    self.metrics
                        .connect_errors
                        .get_or_create(&ProxyMetrics::service(&forward.target.host))
                        .inc();
                    (
                        policy.retry_on.connect_failure,
                        answer(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &format!("upstream connect error to {}: {e}", endpoint.address),
                        ),
                    )
                }
                Try::Reset(e) => (
                    policy.retry_on.reset,
                    answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("upstream {} reset before answering: {e}", endpoint.address),
                    ),
                ),
                Try::TimedOut => (
                    policy.retry_on.reset || policy.retry_on.gateway_error,
                    answer(StatusCode::GATEWAY_TIMEOUT, "per-try timeout"),
                ),
            };
            last = response;
            if !retry {
                break;
            }
        }
        last
    }

    fn pick(
        &self,
        discovery: &dyn Discovery,
        parts: &http::request::Parts,
        forward: &Forward,
        endpoints: &[Endpoint],
        tried: &[SocketAddr],
    ) -> Option<Endpoint> {
        let fresh: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| !tried.contains(&e.address))
            .collect();
        if fresh.is_empty() {
            return None;
        }
        let addresses: Vec<String> = fresh.iter().map(|e| e.address.to_string()).collect();
        let settings = discovery.balance(&forward.target.host, &forward.target.subset);
        let key = settings
            .hash_header
            .as_deref()
            .and_then(|h| parts.headers.get(h))
            .map(|v| v.as_bytes().to_vec());
        // Read in place, not copied: this runs for every try. (Lock order: pickers, then
        // in_flight; nothing takes them the other way round.)
        let mut pickers = self.pickers.lock().ok()?;
        let in_flight = self.in_flight.lock().ok()?;
        let picker = pickers
            .entry((forward.target.host.clone(), forward.target.subset.clone()))
            .or_insert_with(|| EndpointPicker::new(settings.policy));
        let i = picker.pick(
            &addresses,
            |i| in_flight.get(&fresh[i].address).copied().unwrap_or(0),
            key.as_deref(),
            &mut RandomChance,
        )?;
        Some(fresh[i].clone())
    }

    async fn try_once(
        &self,
        parts: &http::request::Parts,
        forward: &Forward,
        endpoint: &Endpoint,
        body: Bytes,
    ) -> Try {
        let request = match upstream_request(parts, forward, endpoint.address, body) {
            Ok(r) => r,
            Err(e) => return Try::Reset(e),
        };
        let _guard = InFlight::enter(&self.in_flight, endpoint.address);
        let send = async {
            let response = self.client.request(request).await;
            match response {
                Ok(r) => {
                    let (head, body) = r.into_parts();
                    match body.collect().await {
                        Ok(b) => Try::Answered(Response::from_parts(head, b.to_bytes())),
                        Err(e) => Try::Reset(e.to_string()),
                    }
                }
                Err(e) if e.is_connect() => Try::ConnectFailed(error_chain(&e)),
                Err(e) => Try::Reset(error_chain(&e)),
            }
        };
        match forward.retries.per_try_timeout {
            Some(t) => tokio::time::timeout(t, send).await.unwrap_or(Try::TimedOut),
            None => send.await,
        }
    }

    /// Sends a copy and forgets it: the answer is dropped, and the caller's response is
    /// never delayed.
    fn mirror(
        &self,
        discovery: &dyn Discovery,
        target: &Target,
        parts: &http::request::Parts,
        forward: &Forward,
        body: Bytes,
    ) {
        let Some(endpoint) = discovery
            .endpoints(&target.host, &target.subset)
            .first()
            .cloned()
        else {
            return;
        };
        let mut shadow = forward.clone();
        // Envoy marks mirrored requests by suffixing the authority.
        shadow.authority = format!("{}-shadow", forward.authority);
        let Ok(request) = upstream_request(parts, &shadow, endpoint.address, body) else {
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = client.request(request).await;
        });
    }
}

/// Counts requests in flight per endpoint while alive (for LEAST_REQUEST).
struct InFlight {
    map: Arc<Mutex<HashMap<SocketAddr, u32>>>,
    address: SocketAddr,
}

impl InFlight {
    fn enter(map: &Arc<Mutex<HashMap<SocketAddr, u32>>>, address: SocketAddr) -> InFlight {
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Istio's route for a known service no VirtualService names: the whole service.
fn default_route(host: &str, path_and_query: &str) -> Forward {
    Forward {
        route: "default".into(),
        target: Target {
            host: host.to_string(),
            subset: String::new(),
            port: None,
        },
        path_and_query: path_and_query.to_string(),
        authority: host.to_string(),
        request_headers: HeaderChanges::default(),
        response_headers: HeaderChanges::default(),
        timeout: None,
        retries: RetryPolicy::istio_default(),
        fault: Default::default(),
        mirrors: Vec::new(),
    }
}

/// The request's authority: the URI's (h2, absolute form), else the Host header.
fn authority_of(uri: &Uri, headers: &HeaderMap) -> Result<http::uri::Authority, String> {
    if let Some(a) = uri.authority() {
        return Ok(a.clone());
    }
    let host = headers
        .get(HOST)
        .ok_or_else(|| "missing Host header: the service is named by Host".to_string())?;
    let text = host
        .to_str()
        .map_err(|_| "Host header is not valid text".to_string())?;
    let authority: http::uri::Authority = text
        .parse()
        .map_err(|_| format!("invalid Host header {text:?}"))?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(format!("invalid Host header {text:?}"));
    }
    Ok(authority)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
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

fn upstream_request(
    parts: &http::request::Parts,
    forward: &Forward,
    address: SocketAddr,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let uri: Uri = format!("http://{address}{}", forward.path_and_query)
        .parse()
        .map_err(|e| format!("cannot build the upstream URI: {e}"))?;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    *headers = parts.headers.clone();
    strip_hop_by_hop(headers);
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::TRANSFER_ENCODING);
    let host = HeaderValue::from_str(&forward.authority)
        .map_err(|_| format!("invalid authority {:?}", forward.authority))?;
    headers.insert(HOST, host);
    apply_changes(headers, &forward.request_headers);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_comes_from_the_uri_or_a_valid_host_header() {
        let mut h = HeaderMap::new();
        assert!(
            authority_of(&Uri::from_static("/x"), &h)
                .unwrap_err()
                .contains("missing Host")
        );
        h.insert(HOST, HeaderValue::from_static("shop.example:8080"));
        let a = authority_of(&Uri::from_static("/x"), &h).unwrap();
        assert_eq!((a.host(), a.port_u16()), ("shop.example", Some(8080)));
        h.insert(HOST, HeaderValue::from_static("user@shop.example"));
        assert!(authority_of(&Uri::from_static("/x"), &h).is_err());
        h.insert(HOST, HeaderValue::from_static("bad host"));
        assert!(authority_of(&Uri::from_static("/x"), &h).is_err());
        let a = authority_of(&Uri::from_static("http://api.example/x"), &HeaderMap::new()).unwrap();
        assert_eq!(a.host(), "api.example");
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
