//! VirtualService validation: Istio's `ValidateVirtualService` and the rules it calls for
//! HTTP, TLS and TCP routes, plus its analysis of rules that can never match.

use std::collections::BTreeMap;

use super::names::{self, check_header_name, check_header_value, check_regex};
use super::{Checker, export_to};
use crate::istio::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpFaultInjection, HttpMatchRequest,
    HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, HttpRouteDestination, L4MatchAttributes,
    Percentage, RouteDestination, StringMatch, TcpRoute, TlsRoute, VirtualServiceSpec,
};

/// The gateway name meaning "every sidecar in the mesh".
const MESH_GATEWAY: &str = "mesh";
/// Header-match keys with this prefix route on JWT claims (gateways only).
const JWT_CLAIM_PREFIX: &str = "@request.auth.claims.";
/// Direct responses above this size are refused (they travel in every proxy's config).
const MAX_DIRECT_RESPONSE: usize = 1024 * 1024;
/// Direct responses above this size get a warning.
const WARN_DIRECT_RESPONSE: usize = 100 * 1024;

/// How a route relates to delegation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteKind {
    /// An ordinary route.
    Independent,
    /// A route that hands off to a delegate VirtualService.
    Root,
    /// A route inside a delegate VirtualService (one without hosts).
    Delegate,
}

pub(super) fn check(c: &mut Checker, spec: &VirtualServiceSpec, namespace: &str) {
    let is_delegate = spec.hosts.is_empty();
    if is_delegate {
        if !spec.gateways.is_empty() {
            c.error_in(
                "gateways",
                "a delegate VirtualService (one without hosts) cannot name gateways",
            );
        }
        if !spec.tls.is_empty() {
            c.error_in(
                "tls",
                "a delegate VirtualService (one without hosts) cannot have tls routes",
            );
        }
        if !spec.tcp.is_empty() {
            c.error_in(
                "tcp",
                "a delegate VirtualService (one without hosts) cannot have tcp routes",
            );
        }
    }
    gateway_names(c, "gateways", &spec.gateways);
    let applies_to_gateway =
        !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == MESH_GATEWAY);
    let applies_to_mesh = !applies_to_gateway;

    let mut all_hosts_valid = true;
    c.at("hosts", |c| {
        for (i, host) in spec.hosts.iter().enumerate() {
            c.at_index(i, |c| match names::check_wildcard_domain(host) {
                Err(e) if names::parse_ip(host).is_none() => {
                    c.error(e);
                    all_hosts_valid = false;
                }
                Err(_) => {}
                Ok(()) if applies_to_mesh && host == "*" => {
                    c.error(
                        "the wildcard host \"*\" is not allowed for a VirtualService bound to \
                         the mesh; name the hosts, or bind it to a gateway",
                    );
                    all_hosts_valid = false;
                }
                Ok(()) => {}
            });
        }
        if all_hosts_valid {
            for (j, later) in spec.hosts.iter().enumerate() {
                if let Some(earlier) = spec.hosts[..j]
                    .iter()
                    .find(|h| names::hosts_overlap(h, later))
                {
                    c.at_index(j, |c| {
                        c.error(format!(
                            "duplicate hosts in virtual service: {earlier} & {later}"
                        ))
                    });
                }
            }
        }
    });

    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        c.error("a VirtualService needs at least one http, tcp or tls route");
    }
    c.each("http", &spec.http, |c, route| {
        http_route(c, route, is_delegate, applies_to_gateway)
    });
    c.each("tls", &spec.tls, |c, route| {
        tls_route(c, route, &spec.hosts)
    });
    c.each("tcp", &spec.tcp, tcp_route);
    export_to(c, namespace, &spec.export_to, false, false);
    unreachable_http_rules(c, &spec.http);
}

/// Istio's `validateGatewayNames`.
fn gateway_names(c: &mut Checker, field: &str, gateways: &[String]) {
    c.at(field, |c| {
        for (i, gateway) in gateways.iter().enumerate() {
            c.at_index(i, |c| match gateway.split_once('/') {
                None => {
                    if let Some((name, ns)) = gateway.split_once('.') {
                        c.warn(format!(
                            "legacy gateway name format {gateway:?}; prefer namespace/name: \
                             \"{}/{name}\"",
                            ns.split('.').next().unwrap_or(ns)
                        ));
                    }
                    c.check(names::check_fqdn(gateway));
                }
                Some((ns, name)) => {
                    if ns.is_empty() || name.is_empty() {
                        c.error("gateway namespace and name cannot be empty");
                    } else {
                        if !names::is_dns1123_label(ns) {
                            c.error(format!("invalid gateway namespace {ns:?}"));
                        }
                        if !names::is_dns1123_label(name) {
                            c.error(format!("invalid gateway name {name:?}"));
                        }
                    }
                }
            });
        }
    });
}

fn http_route(c: &mut Checker, route: &HttpRoute, in_delegate: bool, applies_to_gateway: bool) {
    let kind = if in_delegate {
        RouteKind::Delegate
    } else if route.delegate.is_some() {
        RouteKind::Root
    } else {
        RouteKind::Independent
    };
    route_conflicts(c, route, kind);
    c.each("match", &route.matches, |c, m| {
        match_request(c, m, kind, applies_to_gateway)
    });
    c.some("headers", &route.headers, header_operations);
    c.some("corsPolicy", &route.cors_policy, cors_policy);
    c.some("fault", &route.fault, fault);
    for (field, value) in [
        ("mirrorPercent", route.mirror_percent),
        ("mirror_percent", route.mirror_percent_legacy),
    ] {
        if let Some(p) = value {
            c.at(field, |c| {
                if p > 100 {
                    c.error(format!("{p} is not a percentage: must be 0 to 100"));
                }
                c.warn(format!("{field} is deprecated; use mirrorPercentage"));
            });
        }
    }
    c.some("mirrorPercentage", &route.mirror_percentage, |c, p| {
        if !(0.0..=100.0).contains(&p.value) {
            c.error(format!("{} is not a percentage: must be 0 to 100", p.value));
        }
    });
    c.some("mirror", &route.mirror, destination);
    c.each("mirrors", &route.mirrors, |c, mirror| {
        c.at("destination", |c| destination(c, &mirror.destination));
        c.some("percentage", &mirror.percentage, |c, p| {
            if !(0.0..=100.0).contains(&p.value) {
                c.error(format!("{} is not a percentage: must be 0 to 100", p.value));
            }
        });
    });
    c.some("redirect", &route.redirect, redirect);
    c.some("retries", &route.retries, retries);
    c.some("rewrite", &route.rewrite, rewrite);
    authority_rewrites(c, route);
    weighted_destinations(c, &route.route, http_destination);
    c.some("directResponse", &route.direct_response, |c, response| {
        if !(200..=599).contains(&response.status) {
            c.error_in(
                "status",
                format!(
                    "HTTP status {} is not in the range 200-599",
                    response.status
                ),
            );
        }
        c.some("body", &response.body, |c, body| {
            if body.string.is_some() && body.bytes.is_some() {
                c.error("only one of string or bytes may be set");
            } else if let (Some(_), Err(reason)) = (&body.bytes, body.content()) {
                c.error_in("bytes", reason);
            }
            let size = body
                .string
                .as_ref()
                .or(body.bytes.as_ref())
                .map_or(0, String::len);
            if size > MAX_DIRECT_RESPONSE {
                c.error("a direct response body must be smaller than 1MB");
            } else if size > WARN_DIRECT_RESPONSE {
                c.warn("a large direct response body travels in every proxy's configuration");
            }
        });
    });
    c.duration("timeout", &route.timeout);
}

/// Istio's `validateHTTPRouteConflict`.
fn route_conflicts(c: &mut Checker, route: &HttpRoute, kind: RouteKind) {
    if kind == RouteKind::Root {
        if route.redirect.is_some() {
            c.error_in("redirect", "a route that delegates cannot also redirect");
        }
        if !route.route.is_empty() {
            c.error_in(
                "route",
                "a route that delegates cannot also have destinations",
            );
        }
        return;
    }
    if kind == RouteKind::Delegate && route.delegate.is_some() {
        c.error_in(
            "delegate",
            "a route of a delegate VirtualService cannot delegate again",
        );
    }
    if route.redirect.is_some() {
        if !route.route.is_empty() {
            c.error("a route cannot have both destinations (route) and a redirect");
        }
        if route.fault.is_some() {
            c.error("a route cannot have both fault injection and a redirect");
        }
        if route.rewrite.is_some() {
            c.error("a route cannot have both a rewrite and a redirect");
        }
        if route.direct_response.is_some() {
            c.error("a route cannot have both a direct response and a redirect");
        }
    } else if route.direct_response.is_some() {
        if !route.route.is_empty() {
            c.error("a route cannot have both destinations (route) and a direct response");
        }
    } else if route.route.is_empty() {
        c.error("a route needs destinations (route), a redirect or a direct response");
    }
}

fn string_match(c: &mut Checker, sm: &StringMatch, allow_regex: bool) {
    let set = [&sm.exact, &sm.prefix, &sm.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        c.error("only one of exact, prefix or regex may be set");
    }
    if let Some(re) = &sm.regex {
        if allow_regex {
            c.check_in("regex", check_regex(re));
        } else {
            c.error_in(
                "regex",
                "regex matches are not supported in delegating routes",
            );
        }
    }
}

fn match_request(c: &mut Checker, m: &HttpMatchRequest, kind: RouteKind, applies_to_gateway: bool) {
    let allow_regex = kind == RouteKind::Independent;
    for (field, value) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        c.some(field, value, |c, sm| string_match(c, sm, allow_regex));
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        c.at(field, |c| {
            for (name, sm) in map {
                c.at_key(name, |c| {
                    if let Some(claim) = name.strip_prefix(JWT_CLAIM_PREFIX) {
                        if !applies_to_gateway {
                            c.error(format!(
                                "routing on the JWT claim {claim:?} is only supported on \
                                 gateways"
                            ));
                        }
                    } else {
                        c.check(check_header_name(name));
                    }
                    string_match(c, sm, allow_regex);
                });
            }
        });
    }
    c.at("queryParams", |c| {
        for (name, sm) in &m.query_params {
            c.at_key(name, |c| string_match(c, sm, allow_regex));
        }
    });
    if m.port != 0 {
        c.port("port", m.port);
    }
    c.labels("sourceLabels", &m.source_labels);
    gateway_names(c, "gateways", &m.gateways);
    if !m.source_namespace.is_empty() && !names::is_namespace(&m.source_namespace) {
        c.error_in(
            "sourceNamespace",
            format!("{:?} is not a valid namespace name", m.source_namespace),
        );
    }
}

/// Header names and values for set/add/remove (`ValidateHTTPHeader*OperationName`).
fn header_operations(c: &mut Checker, headers: &Headers) {
    let check_ops = |c: &mut Checker, ops: &HeaderOperations, is_request: bool| {
        for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
            c.at(field, |c| {
                for (name, value) in map {
                    c.at_key(name, |c| {
                        let is_authority = name.eq_ignore_ascii_case("host")
                            || name.eq_ignore_ascii_case(":authority");
                        if name.is_empty() {
                            c.error("header name cannot be empty");
                        } else if (name.starts_with(':') || name.eq_ignore_ascii_case("host"))
                            && !(is_request && is_authority)
                        {
                            c.error(format!("the header {name:?} cannot be changed here"));
                        }
                        c.check(check_header_value(value));
                    });
                }
            });
        }
        c.at("remove", |c| {
            for (i, name) in ops.remove.iter().enumerate() {
                c.at_index(i, |c| {
                    if name.is_empty() {
                        c.error("header name cannot be empty");
                    } else if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
                        c.error(format!("the header {name:?} cannot be removed"));
                    }
                });
            }
        });
    };
    c.some("request", &headers.request, |c, ops| {
        check_ops(c, ops, true)
    });
    c.some("response", &headers.response, |c, ops| {
        check_ops(c, ops, false)
    });
}

fn cors_policy(c: &mut Checker, cors: &CorsPolicy) {
    c.each("allowOrigins", &cors.allow_origins, |c, origin| {
        let text = origin
            .exact
            .as_ref()
            .or(origin.prefix.as_ref())
            .or(origin.regex.as_ref());
        if text.is_none_or(|t| t.is_empty()) {
            c.error("an allowed origin needs a non-empty exact, prefix or regex");
        }
        string_match(c, origin, true);
    });
    c.at("allowMethods", |c| {
        for (i, method) in cors.allow_methods.iter().enumerate() {
            // `*` echoes the preflight's method; Istio accepts it beside the methods.
            if method != "*" && !names::HTTP_METHODS.contains(&method.as_str()) {
                c.at_index(i, |c| {
                    c.error(format!("{method:?} is not a supported HTTP method"))
                });
            }
        }
    });
    for (field, list) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        c.at(field, |c| {
            for (i, name) in list.iter().enumerate() {
                if name != "*" {
                    c.at_index(i, |c| c.check(check_header_name(name)));
                }
            }
        });
    }
    c.duration("maxAge", &cors.max_age);
    if let Some(age) = cors.max_age
        && !age.is_whole_seconds()
    {
        c.error_in("maxAge", "maxAge is only precise to whole seconds");
    }
}

fn percentage(c: &mut Checker, field: &str, value: &Option<Percentage>) {
    c.some(field, value, |c, p| {
        if p.value < 0.0 || p.value > 100.0 || (p.value > 0.0 && p.value < 0.0001) {
            c.error(format!(
                "percentage {} is neither 0 nor in the range [0.0001, 100]",
                p.value
            ));
        }
    });
}

fn fault(c: &mut Checker, f: &HttpFaultInjection) {
    if f.abort.is_none() && f.delay.is_none() {
        c.error("fault injection needs an abort, a delay, or both");
    }
    c.some("abort", &f.abort, |c, abort| {
        percentage(c, "percentage", &abort.percentage);
        let set = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set > 1 {
            c.error("only one of httpStatus, grpcStatus or http2Error may be set");
        }
        if let Some(status) = abort.http_status
            && !(200..=599).contains(&status)
        {
            c.error_in(
                "httpStatus",
                format!("HTTP status {status} is not in the range 200-599"),
            );
        }
        if let Some(status) = &abort.grpc_status
            && !names::GRPC_STATUS_NAMES.contains(&status.as_str())
        {
            c.error_in(
                "grpcStatus",
                format!(
                    "gRPC status {status:?} is not supported; use a code name such as \
                     UNAVAILABLE or NOT_FOUND"
                ),
            );
        }
        if abort.http2_error.is_some() {
            c.error_in(
                "http2Error",
                "HTTP/2 abort fault injection is not supported",
            );
        }
        if set == 0 {
            c.warn("abort is configured without httpStatus or grpcStatus, so it does nothing");
        }
    });
    c.some("delay", &f.delay, |c, delay| {
        percentage(c, "percentage", &delay.percentage);
        c.percent_range("percent", delay.percent.into());
        if delay.fixed_delay.is_some() && delay.exponential_delay.is_some() {
            c.error("only one of fixedDelay or exponentialDelay may be set");
        }
        c.duration("fixedDelay", &delay.fixed_delay);
        if delay.exponential_delay.is_some() {
            c.error_in(
                "exponentialDelay",
                "exponentialDelay is not supported; use fixedDelay",
            );
        }
        if delay.fixed_delay.is_none() && delay.exponential_delay.is_none() {
            c.warn("delay is configured without fixedDelay, so it does nothing");
        }
    });
}

/// Istio's `validateDestination`.
fn destination(c: &mut Checker, d: &Destination) {
    if d.host == "*" {
        c.error_in("host", "\"*\" is not a valid destination host");
    } else {
        c.check_in("host", names::check_wildcard_domain(&d.host));
    }
    if !d.subset.is_empty() && !names::is_dns1123_label(&d.subset) {
        c.error_in("subset", format!("subset name {:?} is invalid", d.subset));
    }
    c.some("port", &d.port, |c, port| c.port("number", port.number));
}

/// Istio's `validateRouteDestinations` for HTTP, TCP and TLS routes alike: each
/// destination valid, no negative weight, and not every weight zero.
fn weighted_destinations<T>(
    c: &mut Checker,
    routes: &[T],
    parts: impl Fn(&T) -> (&Destination, i32, Option<&Headers>),
) {
    let mut total: i64 = 0;
    c.each("route", routes, |c, r| {
        let (dest, weight, headers) = parts(r);
        c.at("destination", |c| destination(c, dest));
        if let Some(h) = headers {
            c.at("headers", |c| header_operations(c, h));
        }
        if weight < 0 {
            c.error_in("weight", format!("weight {weight} must not be negative"));
        }
        total += i64::from(weight);
    });
    if routes.len() > 1 && total == 0 {
        c.error_in(
            "route",
            "the destination weights add up to 0, so no destination gets any traffic",
        );
    }
}

fn http_destination(r: &HttpRouteDestination) -> (&Destination, i32, Option<&Headers>) {
    (&r.destination, r.weight, r.headers.as_ref())
}

fn l4_destination(r: &RouteDestination) -> (&Destination, i32, Option<&Headers>) {
    (&r.destination, r.weight, None)
}

fn redirect(c: &mut Checker, r: &HttpRedirect) {
    if r.uri.is_empty()
        && r.authority.is_empty()
        && r.port.is_none()
        && r.derive_port.is_none()
        && r.scheme.is_empty()
    {
        c.error("a redirect must change the uri, authority, scheme or port");
    }
    if r.port.is_some() && r.derive_port.is_some() {
        c.error("only one of port or derivePort may be set");
    }
    if r.redirect_code != 0 && !(300..=399).contains(&r.redirect_code) {
        c.error_in(
            "redirectCode",
            format!("{} is not a redirect code: must be 3xx", r.redirect_code),
        );
    }
    if !r.scheme.is_empty() && r.scheme != "http" && r.scheme != "https" {
        c.error_in("scheme", "a redirect scheme must be \"http\" or \"https\"");
    }
    if let Some(port) = r.port {
        c.port("port", port);
    }
}

fn retries(c: &mut Checker, r: &HttpRetry) {
    if r.attempts < 0 {
        c.error_in(
            "attempts",
            format!("attempts {} must not be negative", r.attempts),
        );
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || !r.retry_on.is_empty()
            || r.retry_remote_localities.is_some())
    {
        c.error(
            "a retry policy is configured but attempts is 0, which disables retries; set \
             attempts",
        );
    }
    c.duration("perTryTimeout", &r.per_try_timeout);
    c.duration("backoff", &r.backoff);
    if !r.retry_on.is_empty() {
        c.at("retryOn", |c| {
            for token in r.retry_on.split(',') {
                let known_status = token.parse::<u16>().is_ok_and(names::is_known_http_status);
                if !known_status && !names::RETRY_ON_POLICIES.contains(&token) {
                    c.error(format!(
                        "{token:?} is not a valid retryOn condition; use 5xx, gateway-error, \
                         reset, connect-failure, refused-stream, retriable-4xx or an HTTP \
                         status code"
                    ));
                }
            }
        });
    }
}

fn rewrite(c: &mut Checker, r: &HttpRewrite) {
    if !r.uri.is_empty() && r.uri_regex_rewrite.is_some() {
        c.error("only one of uri or uriRegexRewrite may be set");
    }
    if r.uri.is_empty() && r.uri_regex_rewrite.is_none() && r.authority.is_empty() {
        c.error("a rewrite must set uri, uriRegexRewrite or authority");
    }
    c.some("uriRegexRewrite", &r.uri_regex_rewrite, |c, re| {
        if re.regex.is_empty() || re.rewrite.is_empty() {
            c.error("uriRegexRewrite needs both match and rewrite");
        } else {
            c.check_in("match", check_regex(&re.regex));
        }
    });
}

/// Istio's `validateAuthorityRewrite`: the authority may be rewritten in one place only.
fn authority_rewrites(c: &mut Checker, route: &HttpRoute) {
    let mut current = route
        .rewrite
        .as_ref()
        .map(|r| r.authority.clone())
        .unwrap_or_default();
    let Some(request) = route.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for map in [&request.set, &request.add] {
        for (name, value) in map {
            let is_authority =
                name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority");
            if !is_authority {
                continue;
            }
            if !current.is_empty() {
                c.error_in(
                    "headers",
                    format!("the authority is rewritten twice: to {current:?} and to {value:?}"),
                );
                return;
            }
            current = value.clone();
        }
    }
}

fn tls_route(c: &mut Checker, route: &TlsRoute, hosts: &[String]) {
    if route.matches.is_empty() {
        c.error_in("match", "a TLS route needs at least one match condition");
    }
    c.each("match", &route.matches, |c, m| {
        if m.sni_hosts.is_empty() {
            c.error_in("sniHosts", "a TLS match needs at least one SNI host");
        }
        c.at("sniHosts", |c| {
            for (i, sni) in m.sni_hosts.iter().enumerate() {
                c.at_index(i, |c| match names::check_wildcard_domain(sni) {
                    Err(_) if names::parse_ip(sni).is_some() => c.warn(format!(
                        "using an IP address ({sni:?}) as SNI goes against the SNI spec; most \
                         clients do not send it"
                    )),
                    Err(e) => c.error(e),
                    Ok(()) => {
                        if !hosts.iter().any(|h| names::host_is_subset(sni, h)) {
                            c.error(format!(
                                "SNI host {sni:?} is not covered by any host of the \
                                 VirtualService: [{}]",
                                hosts.join(", ")
                            ));
                        }
                    }
                });
            }
        });
        subnets(c, &m.destination_subnets);
        if m.port != 0 {
            c.port("port", m.port);
        }
        c.labels("sourceLabels", &m.source_labels);
        gateway_names(c, "gateways", &m.gateways);
    });
    if route.route.is_empty() {
        c.error_in("route", "a TLS route needs at least one destination");
    }
    weighted_destinations(c, &route.route, l4_destination);
}

fn tcp_route(c: &mut Checker, route: &TcpRoute) {
    c.each("match", &route.matches, |c, m: &L4MatchAttributes| {
        subnets(c, &m.destination_subnets);
        if m.port != 0 {
            c.port("port", m.port);
        }
        c.labels("sourceLabels", &m.source_labels);
        gateway_names(c, "gateways", &m.gateways);
    });
    if route.route.is_empty() {
        c.error_in("route", "a TCP route needs at least one destination");
    }
    weighted_destinations(c, &route.route, l4_destination);
}

fn subnets(c: &mut Checker, subnets: &[String]) {
    c.at("destinationSubnets", |c| {
        for (i, subnet) in subnets.iter().enumerate() {
            c.at_index(i, |c| c.check(names::check_ip_subnet(subnet)));
        }
    });
}

/// Istio's `analyzeUnreachableHTTPRules`, as warnings: rules after a catch-all, and match
/// blocks an earlier rule already matches identically.
fn unreachable_http_rules(c: &mut Checker, routes: &[HttpRoute]) {
    let mut catch_all: Option<usize> = None;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    c.at("http", |c| {
        for (i, route) in routes.iter().enumerate() {
            c.at_index(i, |c| {
                if let Some(first) = catch_all {
                    c.warn(format!(
                        "this rule is never used: rule http[{first}] has no match conditions, \
                         so it takes every request first"
                    ));
                    return;
                }
                if route.matches.is_empty() {
                    catch_all = Some(i);
                    return;
                }
                let mut duplicates = 0;
                for (j, m) in route.matches.iter().enumerate() {
                    let key = match_key(m);
                    match seen.get(&key) {
                        Some(&earlier) => {
                            duplicates += 1;
                            c.at("match", |c| {
                                c.at_index(j, |c| {
                                    c.warn(format!(
                                        "this match is never used: rule http[{earlier}] has \
                                         the same conditions"
                                    ))
                                })
                            });
                        }
                        None => {
                            seen.insert(key, i);
                        }
                    }
                }
                if duplicates == route.matches.len() {
                    c.warn("this rule is never used: earlier rules take all of its matches");
                }
            });
        }
    });
}

/// The conditions of a match block, without its name, as comparable text.
fn match_key(m: &HttpMatchRequest) -> String {
    let mut unnamed = m.clone();
    unnamed.name.clear();
    serde_json::to_string(&unnamed).unwrap_or_default()
}
