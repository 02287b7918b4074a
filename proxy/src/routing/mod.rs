//! VirtualService HTTP routing as a pure decision.
//!
//! [`RouteTable::build`] compiles VirtualServices once (regexes, retry tokens, weights),
//! refusing only the bad ones with the field at fault. [`RouteTable::decide`] takes a
//! request's method, scheme, authority, path, headers and port, and a source of chance
//! (weighted splits, fault and mirror percentages), and says what to do: forward, with
//! everything the forwarding needs; redirect; answer directly; or that no route matches.
//! It never does I/O and never panics on what a client sent. A route's `corsPolicy`
//! comes with the decision ([`RouteTable::decide_with_cors`]) and is a pure decision of
//! its own ([`Cors::decide`]).
//!
//! Semantics follow Istio: routes in order, first match wins; the blocks of a `match` are
//! ORed and the conditions in one block ANDed; a route without `match` matches
//! everything; a destination's share is its weight over the sum; `rewrite.uri` replaces
//! the matched prefix when the match was by prefix, the whole path otherwise; a route
//! without `retries` gets Istio's default (2 attempts on connect-failure, refused-stream,
//! unavailable, cancelled and 503).

mod cors;
mod delegate;
mod matching;
pub mod names;
pub mod path;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Duration;

use crate::FastMap;
use bytes::Bytes;
use fulcrum_policy::istio::{
    Destination, HeaderOperations, HttpRedirect, HttpRetry, HttpRoute, Percentage,
    RedirectPortSelection, VirtualServiceSpec,
};
use fulcrum_policy::references::qualify_host;
use fulcrum_policy::{Object, Resource};
use http::HeaderMap;
use regex::Regex;

pub use cors::{Cors, CorsOutcome};
pub use matching::{MatchBlock, Matcher};

/// Why a VirtualService (or one of its routes) was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {reason}")]
pub struct RouteError {
    /// `VirtualService namespace/name`, once known.
    pub object: String,
    /// The field, e.g. `spec.http[1].retries.retryOn`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl RouteError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RouteError {
            object: String::new(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// What routing looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The Host (HTTP/1.1) or `:authority` (h2), without the port. With the port, as
    /// sent, it is what `authority` matches test.
    pub authority: &'a str,
    /// The port the authority gave, if it gave one. Unless a rewrite changes it, the
    /// authority is sent on as it came, with its port, as Envoy passes the Host on.
    pub authority_port: Option<u16>,
    /// The service that authority names, as the mesh knows it: the same, or the full name
    /// of a Kubernetes service given short (`reviews` for
    /// `reviews.default.svc.cluster.local`). The VirtualServices of this host apply.
    pub service: &'a str,
    /// Path and query, as sent (`/cart?id=3`).
    pub path_and_query: &'a str,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The port the request arrived for.
    pub port: u16,
}

impl RouteRequest<'_> {
    fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.path_and_query.split_once('?').map_or("", |(_, q)| q)
    }
}

/// A source of chance for weighted choices and percentages: uniform in `[0, bound)`.
/// Tests pass fixed sequences; the proxy passes a fast random generator.
pub trait Chance {
    /// A number in `[0, bound)`; `bound` is at least 1.
    fn below(&mut self, bound: u64) -> u64;
}

/// Chance from `rand`'s thread-local generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomChance;

impl Chance for RandomChance {
    fn below(&mut self, bound: u64) -> u64 {
        use rand::RngExt;
        rand::rng().random_range(0..bound.max(1))
    }
}

/// Percentages are compared in millionths, so 0.01% is honoured.
const PERCENT_SCALE: u64 = 10_000;

fn happens(chance: &mut dyn Chance, percent: f64) -> bool {
    let threshold = (percent.clamp(0.0, 100.0) * PERCENT_SCALE as f64).round() as u64;
    chance.below(100 * PERCENT_SCALE) < threshold
}

/// Where a request goes: a service host, an optional subset and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Service host.
    pub host: String,
    /// DestinationRule subset, empty for the whole service.
    pub subset: String,
    /// Port, when the route names one.
    pub port: Option<u16>,
    /// When `host` is a wildcard whose names are looked up as requests come: the name
    /// this request asked for, whose endpoints it goes to. The service stays the
    /// wildcard (its counters, limits and outlier detection, as Envoy's dynamic forward
    /// proxy is one cluster).
    pub looked_up: Option<String>,
}

impl Target {
    fn from_destination(d: &Destination, field: &str) -> Result<Target, RouteError> {
        let port = match d.port.as_ref().map(|p| p.number) {
            None | Some(0) => None,
            Some(p) => Some(u16::try_from(p).map_err(|_| {
                RouteError::new(format!("{field}.port.number"), format!("{p} is not a port"))
            })?),
        };
        Ok(Target {
            host: d.host.clone(),
            subset: d.subset.clone(),
            port,
            looked_up: None,
        })
    }
}

/// Header changes, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderChanges {
    /// Overwrite.
    pub set: Vec<(String, String)>,
    /// Append.
    pub add: Vec<(String, String)>,
    /// Remove.
    pub remove: Vec<String>,
}

impl HeaderChanges {
    fn from_ops(ops: Option<&HeaderOperations>) -> HeaderChanges {
        let Some(ops) = ops else {
            return HeaderChanges::default();
        };
        HeaderChanges {
            set: ops
                .set
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            add: ops
                .add
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            remove: ops.remove.clone(),
        }
    }

    fn then(mut self, more: &HeaderChanges) -> HeaderChanges {
        self.set.extend(more.set.iter().cloned());
        self.add.extend(more.add.iter().cloned());
        self.remove.extend(more.remove.iter().cloned());
        self
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Conditions a retry may be made on (Envoy's `retry_on` tokens, as Istio passes them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx answer.
    pub server_error: bool,
    /// 502, 503, 504.
    pub gateway_error: bool,
    /// The upstream reset the stream or connection before answering.
    pub reset: bool,
    /// The connection could not be made.
    pub connect_failure: bool,
    /// HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// 409.
    pub retriable_4xx: bool,
    /// gRPC status codes by name (`unavailable`, `cancelled`, ...).
    pub grpc: Cow<'static, [&'static str]>,
    /// These status codes.
    pub status_codes: Cow<'static, [u16]>,
}

impl RetryOn {
    /// Parses `5xx,gateway-error,503`; unknown tokens are errors naming `field`.
    pub fn parse(text: &str, field: &str) -> Result<RetryOn, RouteError> {
        let mut on = RetryOn::default();
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                // Envoy's own switch for the numeric codes listed with it.
                "retriable-status-codes" => {}
                "cancelled" => on.grpc.to_mut().push("cancelled"),
                "deadline-exceeded" => on.grpc.to_mut().push("deadline-exceeded"),
                "internal" => on.grpc.to_mut().push("internal"),
                "resource-exhausted" => on.grpc.to_mut().push("resource-exhausted"),
                "unavailable" => on.grpc.to_mut().push("unavailable"),
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => on.status_codes.to_mut().push(c),
                    _ => {
                        return Err(RouteError::new(
                            field,
                            format!("unknown retry condition {code:?}"),
                        ));
                    }
                },
            }
        }
        Ok(on)
    }

    /// Whether an answer whose gRPC status (in its head: a trailers-only answer, as
    /// Envoy reads it) is `code` may be retried: the gRPC tokens name codes 1, 4, 8, 13
    /// and 14.
    pub fn retries_grpc(&self, code: &[u8]) -> bool {
        let name = match code {
            b"1" => "cancelled",
            b"4" => "deadline-exceeded",
            b"8" => "resource-exhausted",
            b"13" => "internal",
            b"14" => "unavailable",
            _ => return false,
        };
        self.grpc.contains(&name)
    }

    /// Whether an answer with `status` may be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.server_error && (500..600).contains(&status))
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || self.status_codes.contains(&status)
            || (status == 503 && self.grpc.contains(&"unavailable"))
    }
}

/// How a forwarded request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first (0: none).
    pub attempts: u32,
    /// Timeout per try; the route timeout when unset.
    pub per_try_timeout: Option<Duration>,
    /// What may be retried.
    pub retry_on: RetryOn,
    /// Retries may go to other localities.
    pub remote_localities: bool,
    /// Base backoff between tries.
    pub backoff: Duration,
    /// A retry goes to an endpoint (or cluster) no earlier try went to
    /// (`retryIgnorePreviousHosts`, true unless the route says false).
    pub avoid_tried: bool,
}

impl RetryPolicy {
    /// How long to wait before retry `n` (1 for the first): Envoy's fully jittered
    /// exponential back-off, a random wait below `(2^n - 1)` times the base, at most ten
    /// times the base (25, 75, 175, then 250 ms with the default base).
    pub fn backoff_before(&self, n: u32, chance: &mut dyn Chance) -> Duration {
        let multiplier = (1u32 << n.clamp(1, 16)) - 1;
        let ceiling = (self.backoff.saturating_mul(multiplier)).min(self.backoff * 10);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(chance.below(micros.max(1)))
    }
}

/// Envoy's base retry backoff, which Istio keeps.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);

impl RetryPolicy {
    /// Istio's policy for a route that sets none.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                // Borrowed: this is built for every request no route names a policy for.
                grpc: Cow::Borrowed(&["unavailable", "cancelled"]),
                status_codes: Cow::Borrowed(&[503]),
                ..RetryOn::default()
            },
            remote_localities: false,
            backoff: DEFAULT_RETRY_BACKOFF,
            avoid_tried: true,
        }
    }

    fn compile(r: &HttpRetry, field: &str) -> Result<RetryPolicy, RouteError> {
        let attempts = u32::try_from(r.attempts)
            .map_err(|_| RouteError::new(format!("{field}.attempts"), "must not be negative"))?;
        let retry_on = if r.retry_on.is_empty() {
            RetryPolicy::istio_default().retry_on
        } else {
            RetryOn::parse(&r.retry_on, &format!("{field}.retryOn"))?
        };
        Ok(RetryPolicy {
            attempts,
            per_try_timeout: r.per_try_timeout.and_then(|d| d.to_std()),
            retry_on,
            remote_localities: r.retry_remote_localities.unwrap_or(false),
            avoid_tried: r.retry_ignore_previous_hosts.unwrap_or(true),
            backoff: r
                .backoff
                .and_then(|d| d.to_std())
                .unwrap_or(DEFAULT_RETRY_BACKOFF),
        })
    }
}

/// A fault decided for this request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultDecision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer so instead of forwarding.
    pub abort: Option<Abort>,
}

/// How an injected fault answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// With this HTTP status (`httpStatus`).
    Http(u16),
    /// With this gRPC status code (`grpcStatus`): a gRPC client gets it in a gRPC
    /// answer; any other client gets 503.
    Grpc(u8),
}

#[derive(Debug, Clone)]
struct Fault {
    delay: Option<(Duration, f64)>,
    abort: Option<(Abort, f64)>,
}

/// A mirror's `percentage`: all requests when unset.
fn percentage(p: Option<&Percentage>) -> f64 {
    p.map_or(100.0, |p| p.value)
}

/// A fault's `percentage`: no request when unset, as Istio documents it (istiod sets
/// Envoy's fault percentages to zero then).
fn fault_percentage(p: Option<&Percentage>) -> f64 {
    p.map_or(0.0, |p| p.value)
}

/// The code of the gRPC status `name` (`UNAVAILABLE`: 14), as Istio reads `grpcStatus`.
fn grpc_code(name: &str) -> Option<u8> {
    let names = fulcrum_policy::validate::names::GRPC_STATUS_NAMES;
    names
        .iter()
        .position(|n| *n == name)
        .and_then(|code| u8::try_from(code).ok())
}

/// A compiled mirror: where, and how often.
#[derive(Debug, Clone)]
struct Mirror {
    target: Target,
    percent: f64,
}

#[derive(Debug, Clone)]
struct WeightedTarget {
    target: Target,
    weight: u32,
    headers: HeaderChanges,
    response_headers: HeaderChanges,
}

#[derive(Debug, Clone)]
enum RouteAction {
    Forward(Vec<WeightedTarget>),
    Redirect(HttpRedirect),
    Respond { status: u16, body: Bytes },
}

#[derive(Debug, Clone)]
enum UriRewrite {
    Replace(String),
    Regex(Regex, String),
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: String,
    /// Empty: matches every request.
    blocks: Vec<MatchBlock>,
    action: RouteAction,
    uri_rewrite: Option<UriRewrite>,
    authority_rewrite: Option<String>,
    timeout: Option<Duration>,
    retries: RetryPolicy,
    fault: Option<Fault>,
    mirrors: Vec<Mirror>,
    request_headers: HeaderChanges,
    response_headers: HeaderChanges,
    cors: Option<std::sync::Arc<Cors>>,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// Send it upstream.
    Forward(Box<Forward>),
    /// Answer with a redirect.
    Redirect {
        /// 301 unless the route says otherwise.
        status: u16,
        /// The `Location`.
        location: String,
        /// The route's own changes to answers' fields (`headers.response`): Envoy makes
        /// them on the answers a route gives itself too.
        response_headers: HeaderChanges,
    },
    /// Answer directly.
    Respond {
        /// Status.
        status: u16,
        /// Body.
        body: Bytes,
        /// As for a redirect.
        response_headers: HeaderChanges,
    },
    /// No VirtualService routes the host on the request's port; the caller falls back to
    /// the host as a service (Istio's default route) or answers 404.
    NoRoute,
    /// A VirtualService routes the host on the request's port, and none of its routes
    /// matched: 404, as Envoy answers a request no route of its virtual host matches
    /// (istiod gives a host with a VirtualService no default route).
    NoMatch,
}

/// Everything needed to forward one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The route's name (or `http[i]`), for metrics and logs; "default" (not allocated)
    /// for a service's own route, when no VirtualService routes it.
    pub route: Cow<'static, str>,
    /// The destination chosen by weight.
    pub target: Target,
    /// The path and query to send, after any rewrite.
    pub path_and_query: String,
    /// The authority to send, after any rewrite.
    pub authority: String,
    /// Changes to the request's headers.
    pub request_headers: HeaderChanges,
    /// Changes to the response's headers.
    pub response_headers: HeaderChanges,
    /// Whole-request timeout (none when the route sets none).
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: RetryPolicy,
    /// Injected fault, when one fires for this request.
    pub fault: FaultDecision,
    /// Copies to send and forget.
    pub mirrors: Vec<Target>,
}

/// Every compiled VirtualService route, by host.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Exact hosts.
    exact: FastMap<String, Vec<CompiledRoute>>,
    /// `*.suffix` hosts, longest suffix first; `*` last.
    wildcard: Vec<(String, Vec<CompiledRoute>)>,
}

impl RouteTable {
    /// Compiles every VirtualService in `resources`. A VirtualService with an error is
    /// left out whole (its routes would be partial), and the error returned beside.
    pub fn build<'a>(
        resources: impl IntoIterator<Item = &'a Resource>,
    ) -> (RouteTable, Vec<RouteError>) {
        let mut table = RouteTable::default();
        let mut errors = Vec::new();
        let mut services: Vec<_> = resources
            .into_iter()
            .filter_map(|r| match r {
                Resource::VirtualService(vs) => Some(vs),
                _ => None,
            })
            .collect();
        // When two VirtualServices claim a host, istiod gives a sidecar the older one's
        // routes only (the other's virtual host is a duplicate domain, dropped): oldest
        // first by creation time (RFC 3339 text, which sorts as the times do; none when
        // not read from Kubernetes), then by namespace and name, as istiod sorts them.
        services.sort_by(|a, b| {
            let key = |vs: &Object<VirtualServiceSpec>| {
                let m = &vs.metadata;
                (
                    m.creation_timestamp.clone(),
                    m.namespace.clone(),
                    m.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        // Which VirtualService routes each host, by the first to claim it.
        let mut claimed: FastMap<String, String> = FastMap::default();
        // Delegates (VirtualServices without hosts), by namespace and name.
        let delegates: FastMap<(&str, &str), (&str, &[HttpRoute])> = services
            .iter()
            .filter(|vs| vs.spec.hosts.is_empty())
            .map(|vs| {
                let (namespace, name) = (vs.metadata.namespace.as_str(), vs.metadata.name.as_str());
                ((namespace, name), (namespace, vs.spec.http.as_slice()))
            })
            .collect();
        for vs in &services {
            // A delegate has no hosts; one bound to gateways, but not to `mesh`, routes
            // at those gateways only, as in Istio: neither routes this proxy's requests.
            let gateways = &vs.spec.gateways;
            let mesh = gateways.is_empty() || gateways.iter().any(|g| g == "mesh");
            if vs.spec.hosts.is_empty() || !mesh {
                continue;
            }
            let object = format!(
                "VirtualService {}/{}",
                vs.metadata.namespace, vs.metadata.name
            );
            let resolved = delegate::resolve(&vs.spec.http, &vs.metadata.namespace, |ns, name| {
                delegates.get(&(ns, name)).copied()
            });
            let compiled: Result<Vec<CompiledRoute>, RouteError> = resolved
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut route = compile_route(&r.route, &r.field, i)?;
                    // Short names (`reviews`) are services in the namespace of the
                    // VirtualService the route is written in, in its hosts and its
                    // destinations alike, as in Istio.
                    route.qualify_hosts(r.namespace);
                    Ok(route)
                })
                .collect();
            match compiled {
                Ok(routes) => {
                    let namespace = &vs.metadata.namespace;
                    for host in &vs.spec.hosts {
                        let host = qualify_host(host, namespace).to_ascii_lowercase();
                        if let Some(first) = claimed.get(&host) {
                            warn_once(format!(
                                "{object}: host {host} is routed by the older {first} only, as \
                                 istiod gives a sidecar one VirtualService per host"
                            ));
                            continue;
                        }
                        claimed.insert(host.clone(), object.clone());
                        table.insert(&host, routes.clone());
                    }
                }
                Err(mut e) => {
                    e.object = object;
                    errors.push(e);
                }
            }
        }
        table
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        (table, errors)
    }

    /// Routes `host` (lower case, claimed by no other VirtualService) by `routes`.
    fn insert(&mut self, host: &str, routes: Vec<CompiledRoute>) {
        if host == "*" {
            self.wildcard.push((String::new(), routes));
        } else if let Some(suffix) = host.strip_prefix('*') {
            self.wildcard.push((suffix.to_string(), routes));
        } else {
            self.exact.insert(host.to_string(), routes);
        }
    }

    fn routes_for(&self, authority: &str) -> Option<&[CompiledRoute]> {
        let host = crate::lower_case(authority);
        if let Some(routes) = self.exact.get(host.as_ref()) {
            return Some(routes);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| host.ends_with(suffix.as_str()) && host.len() > suffix.len())
            .or_else(|| self.wildcard.iter().find(|(suffix, _)| suffix.is_empty()))
            .map(|(_, routes)| routes.as_slice())
    }

    /// Whether any VirtualService claims `authority`.
    pub fn has_host(&self, authority: &str) -> bool {
        self.routes_for(authority).is_some()
    }

    /// The hosts VirtualServices claim by name (not by wildcard), lowercase.
    pub fn exact_hosts(&self) -> impl Iterator<Item = &str> {
        self.exact.keys().map(String::as_str)
    }

    /// Whether a VirtualService claims `host` by name (not by wildcard).
    pub fn claims_exactly(&self, host: &str) -> bool {
        self.exact.contains_key(crate::lower_case(host).as_ref())
    }

    /// What to do with `request`.
    pub fn decide(&self, request: &RouteRequest<'_>, chance: &mut dyn Chance) -> RouteDecision {
        self.decide_with_cors(request, chance).0
    }

    /// [`RouteTable::decide`], with the `corsPolicy` of the route that matched, if it has
    /// one (the caller applies it: [`Cors::decide`]).
    pub fn decide_with_cors(
        &self,
        request: &RouteRequest<'_>,
        chance: &mut dyn Chance,
    ) -> (RouteDecision, Option<&Cors>) {
        let Some(routes) = self.routes_for(request.service) else {
            return (RouteDecision::NoRoute, None);
        };
        // Routes whose every match block is for another port or for a source this proxy
        // cannot be: istiod builds none of them for this port.
        let mut any_here = false;
        for route in routes {
            any_here = any_here
                || route.blocks.is_empty()
                || route.blocks.iter().any(|b| b.could_match_on(request.port));
            // No match block: Envoy's route matches by the prefix `/`.
            let matched = if route.blocks.is_empty() {
                Some(Some("/"))
            } else {
                route
                    .blocks
                    .iter()
                    .find(|b| b.matches(request))
                    .map(|b| b.uri_prefix())
            };
            if let Some(prefix) = matched {
                return (route.decide(request, prefix, chance), route.cors.as_deref());
            }
        }
        match any_here {
            true => (RouteDecision::NoMatch, None),
            false => (RouteDecision::NoRoute, None),
        }
    }
}

fn compile_route(r: &HttpRoute, field: &str, index: usize) -> Result<CompiledRoute, RouteError> {
    let blocks = r
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| MatchBlock::compile(m, &format!("{field}.match[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let action = if let Some(redirect) = &r.redirect {
        RouteAction::Redirect(redirect.clone())
    } else if let Some(direct) = &r.direct_response {
        let status = u16::try_from(direct.status)
            .ok()
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| {
                RouteError::new(
                    format!("{field}.directResponse.status"),
                    format!("{} is not an HTTP status", direct.status),
                )
            })?;
        let body = match &direct.body {
            Some(body) => body.content().map_err(|reason| {
                RouteError::new(format!("{field}.directResponse.body.bytes"), reason)
            })?,
            None => Vec::new(),
        };
        RouteAction::Respond {
            status,
            body: Bytes::from(body),
        }
    } else {
        if r.route.is_empty() {
            return Err(RouteError::new(
                format!("{field}.route"),
                "a route needs a destination, a redirect or a direct response",
            ));
        }
        let single = r.route.len() == 1;
        let targets = r
            .route
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let at = format!("{field}.route[{i}]");
                let weight = match (d.weight, single) {
                    (0, true) => 100,
                    (w, _) => u32::try_from(w).map_err(|_| {
                        RouteError::new(format!("{at}.weight"), "must not be negative")
                    })?,
                };
                let headers = d.headers.as_ref();
                Ok(WeightedTarget {
                    target: Target::from_destination(&d.destination, &format!("{at}.destination"))?,
                    weight,
                    headers: HeaderChanges::from_ops(headers.and_then(|h| h.request.as_ref())),
                    response_headers: HeaderChanges::from_ops(
                        headers.and_then(|h| h.response.as_ref()),
                    ),
                })
            })
            .collect::<Result<Vec<_>, RouteError>>()?;
        if targets.iter().all(|t| t.weight == 0) {
            return Err(RouteError::new(
                format!("{field}.route"),
                "every destination has weight 0",
            ));
        }
        RouteAction::Forward(targets)
    };
    let uri_rewrite = match &r.rewrite {
        Some(rw) if !rw.uri.is_empty() => Some(UriRewrite::Replace(rw.uri.clone())),
        Some(rw) => match &rw.uri_regex_rewrite {
            Some(rr) => {
                let regex = Regex::new(&rr.regex).map_err(|e| {
                    RouteError::new(
                        format!("{field}.rewrite.uriRegexRewrite.match"),
                        format!("invalid regex {:?}: {e}", rr.regex),
                    )
                })?;
                // RE2 writes groups as \1; the regex crate as ${1}.
                let replacement = Regex::new(r"\\(\d)")
                    .map(|g| g.replace_all(&rr.rewrite, "$${$1}").into_owned())
                    .unwrap_or_else(|_| rr.rewrite.clone());
                Some(UriRewrite::Regex(regex, replacement))
            }
            None => None,
        },
        None => None,
    };
    let fault = r.fault.as_ref().map(|f| -> Result<Fault, RouteError> {
        Ok(Fault {
            delay: f.delay.as_ref().and_then(|d| {
                // The older integer `percent` when `percentage` is unset, as istiod reads it.
                let percent = match &d.percentage {
                    None => f64::from(d.percent),
                    Some(p) => p.value,
                };
                d.fixed_delay
                    .and_then(|fd| fd.to_std())
                    .map(|fd| (fd, percent))
            }),
            abort: match f.abort.as_ref() {
                None => None,
                Some(a) => {
                    let abort = match (a.http_status, &a.grpc_status) {
                        (Some(s), _) => u16::try_from(s).ok().map(Abort::Http),
                        (None, Some(name)) => {
                            Some(Abort::Grpc(grpc_code(name).ok_or_else(|| {
                                RouteError::new(
                                    format!("{field}.fault.abort.grpcStatus"),
                                    format!("{name:?} is not a gRPC status name"),
                                )
                            })?))
                        }
                        (None, None) => None,
                    };
                    abort.map(|abort| (abort, fault_percentage(a.percentage.as_ref())))
                }
            },
        })
    });
    let fault = fault.transpose()?;
    let mut mirrors = Vec::new();
    if let Some(m) = &r.mirror {
        let percent = r
            .mirror_percentage
            .as_ref()
            .map(|p| p.value)
            .or(r.mirror_percent.map(f64::from))
            .or(r.mirror_percent_legacy.map(f64::from))
            .unwrap_or(100.0);
        mirrors.push(Mirror {
            target: Target::from_destination(m, &format!("{field}.mirror"))?,
            percent,
        });
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        mirrors.push(Mirror {
            target: Target::from_destination(
                &m.destination,
                &format!("{field}.mirrors[{i}].destination"),
            )?,
            percent: percentage(m.percentage.as_ref()),
        });
    }
    let retries = match &r.retries {
        Some(retry) => RetryPolicy::compile(retry, &format!("{field}.retries"))?,
        None => RetryPolicy::istio_default(),
    };
    let cors = match &r.cors_policy {
        Some(policy) => Some(std::sync::Arc::new(Cors::compile(
            policy,
            &format!("{field}.corsPolicy"),
        )?)),
        None => None,
    };
    let headers = r.headers.as_ref();
    Ok(CompiledRoute {
        name: if r.name.is_empty() {
            format!("http[{index}]")
        } else {
            r.name.clone()
        },
        blocks,
        action,
        uri_rewrite,
        authority_rewrite: r
            .rewrite
            .as_ref()
            .map(|rw| rw.authority.clone())
            .filter(|a| !a.is_empty()),
        timeout: r.timeout.and_then(|t| t.to_std()).filter(|t| !t.is_zero()),
        retries,
        fault,
        mirrors,
        request_headers: HeaderChanges::from_ops(headers.and_then(|h| h.request.as_ref())),
        response_headers: HeaderChanges::from_ops(headers.and_then(|h| h.response.as_ref())),
        cors,
    })
}

impl CompiledRoute {
    /// Its destinations' and mirrors' short names made full, for a VirtualService in
    /// `namespace`.
    fn qualify_hosts(&mut self, namespace: &str) {
        let targets = match &mut self.action {
            RouteAction::Forward(targets) => targets.iter_mut().map(|t| &mut t.target).collect(),
            _ => Vec::new(),
        };
        for target in targets
            .into_iter()
            .chain(self.mirrors.iter_mut().map(|m| &mut m.target))
        {
            target.host = qualify_host(&target.host, namespace);
        }
    }

    fn decide(
        &self,
        request: &RouteRequest<'_>,
        matched_prefix: Option<&str>,
        chance: &mut dyn Chance,
    ) -> RouteDecision {
        let targets = match &self.action {
            RouteAction::Redirect(r) => {
                let (status, location) = redirect(r, request, matched_prefix);
                return RouteDecision::Redirect {
                    status,
                    location,
                    response_headers: self.response_headers.clone(),
                };
            }
            RouteAction::Respond { status, body } => {
                return RouteDecision::Respond {
                    status: *status,
                    body: body.clone(),
                    response_headers: self.response_headers.clone(),
                };
            }
            RouteAction::Forward(targets) => targets,
        };
        let chosen = pick_weighted(targets, chance);
        let fault = match &self.fault {
            None => FaultDecision::default(),
            Some(f) => FaultDecision {
                delay: f
                    .delay
                    .filter(|(_, pct)| happens(chance, *pct))
                    .map(|(d, _)| d),
                abort: f
                    .abort
                    .filter(|(_, pct)| happens(chance, *pct))
                    .map(|(s, _)| s),
            },
        };
        let mirrors = self
            .mirrors
            .iter()
            .filter(|m| happens(chance, m.percent))
            .map(|m| m.target.clone())
            .collect();
        RouteDecision::Forward(Box::new(Forward {
            route: Cow::Owned(self.name.clone()),
            target: chosen.target.clone(),
            path_and_query: self.rewrite_path(request, matched_prefix),
            authority: self
                .authority_rewrite
                .clone()
                .unwrap_or_else(|| with_port(request.authority, request.authority_port)),
            request_headers: self.request_headers.clone().then(&chosen.headers),
            response_headers: self.response_headers.clone().then(&chosen.response_headers),
            timeout: self.timeout,
            retries: self.retries.clone(),
            fault,
            mirrors,
        }))
    }

    fn rewrite_path(&self, request: &RouteRequest<'_>, matched_prefix: Option<&str>) -> String {
        let path = request.path();
        let query = request.query();
        let new_path = match &self.uri_rewrite {
            None => return request.path_and_query.to_string(),
            Some(UriRewrite::Replace(uri)) => match matched_prefix {
                // The matched prefix may differ in case under ignoreUriCase: cut by length.
                Some(prefix) if path.len() >= prefix.len() => {
                    format!("{uri}{}", &path[prefix.len()..])
                }
                _ => uri.clone(),
            },
            Some(UriRewrite::Regex(regex, replacement)) => {
                regex.replace_all(path, replacement.as_str()).into_owned()
            }
        };
        if query.is_empty() {
            new_path
        } else {
            format!("{new_path}?{query}")
        }
    }
}

fn pick_weighted<'a>(targets: &'a [WeightedTarget], chance: &mut dyn Chance) -> &'a WeightedTarget {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    let mut roll = chance.below(total.max(1));
    for t in targets {
        let w = u64::from(t.weight);
        if roll < w {
            return t;
        }
        roll -= w;
    }
    // Unreachable with total > 0 (compile refuses all-zero weights).
    &targets[0]
}

/// `host`, and `:port` when there is one.
pub fn with_port(host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// The status and `Location` of the redirect `r` answers `request` with.
fn redirect(
    r: &HttpRedirect,
    request: &RouteRequest<'_>,
    matched_prefix: Option<&str>,
) -> (u16, String) {
    let scheme = if r.scheme.is_empty() {
        request.scheme
    } else {
        &r.scheme
    };
    let authority = if r.authority.is_empty() {
        request.authority
    } else {
        &r.authority
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = match (r.port, r.derive_port) {
        (Some(p), _) if p != 0 => Some(p),
        (_, Some(RedirectPortSelection::FromRequestPort)) => Some(u32::from(request.port)),
        _ => None,
    }
    .filter(|p| *p != default_port);
    let path = request.path();
    let path = if !r.uri.is_empty() {
        r.uri.clone()
    } else if !r.prefix_rewrite.is_empty() {
        match matched_prefix {
            Some(prefix) if path.len() >= prefix.len() => {
                format!("{}{}", r.prefix_rewrite, &path[prefix.len()..])
            }
            _ => r.prefix_rewrite.clone(),
        }
    } else {
        path.to_string()
    };
    // A query in the route's `uri` takes the place of the request's, as Envoy's
    // `path_redirect` has it; else the request's query goes with the redirect.
    let query = match r.uri.contains('?') {
        true => "",
        false => request.query(),
    };
    let mut location = format!("{scheme}://{authority}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&path);
    if !query.is_empty() {
        location.push('?');
        location.push_str(query);
    }
    let status = match r.redirect_code {
        0 => 301,
        c => u16::try_from(c).unwrap_or(301),
    };
    (status, location)
}

/// Logs `message` as a warning the first time it comes: routing is built again for
/// every configuration, and the same finding would otherwise repeat with each.
fn warn_once(message: String) {
    static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let Ok(mut warned) = WARNED.lock() else {
        return;
    };
    if !warned.contains(&message) {
        tracing::warn!("{message}");
        warned.insert(message);
    }
}

#[cfg(test)]
mod tests;
