//! The route decision, as a table: a VirtualService, a request, what must happen.

use std::collections::VecDeque;

use fulcrum_policy::ConfigSet;
use http::{HeaderMap, HeaderValue};

use super::*;

/// Plays back fixed rolls (each taken modulo the bound), then zeros.
struct Rolls(VecDeque<u64>);

impl Rolls {
    fn none() -> Rolls {
        Rolls(VecDeque::new())
    }
    fn of(rolls: &[u64]) -> Rolls {
        Rolls(rolls.iter().copied().collect())
    }
}

impl Chance for Rolls {
    fn below(&mut self, bound: u64) -> u64 {
        self.0.pop_front().unwrap_or(0) % bound
    }
}

fn table(yaml: &str) -> RouteTable {
    let mut config = ConfigSet::new();
    config.add_text("test.yaml", yaml);
    let errors: Vec<_> = config
        .diagnostics()
        .filter(|d| d.severity == fulcrum_policy::Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let (table, errors) = RouteTable::build(config.resources());
    assert!(errors.is_empty(), "{errors:?}");
    table
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: shop, namespace: shop}}\nspec:\n  hosts: [shop.example, \"*.wild.example\"]\n  http:\n{http}"
    )
}

struct Req {
    method: &'static str,
    authority: &'static str,
    authority_port: Option<u16>,
    path: &'static str,
    headers: HeaderMap,
    port: u16,
}

fn get(path: &'static str) -> Req {
    Req {
        method: "GET",
        authority: "shop.example",
        authority_port: None,
        path,
        headers: HeaderMap::new(),
        port: 80,
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.insert(name, HeaderValue::from_static(value));
        self
    }
    fn append(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }
    fn method(mut self, m: &'static str) -> Req {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> Req {
        self.authority = h;
        self
    }
    fn authority_port(mut self, port: u16) -> Req {
        self.authority_port = Some(port);
        self
    }
    /// For `port`, named in its authority as the proxy reads it.
    fn on_port(mut self, port: u16) -> Req {
        self.authority_port = Some(port);
        self.port = port;
        self
    }
    fn decide(&self, t: &RouteTable, chance: &mut dyn Chance) -> RouteDecision {
        t.decide(
            &RouteRequest {
                method: self.method,
                scheme: "http",
                authority: self.authority,
                authority_port: self.authority_port,
                service: self.authority,
                path_and_query: self.path,
                headers: &self.headers,
                port: self.port,
            },
            chance,
        )
    }
}

#[test]
fn an_authority_match_reads_the_authority_as_sent_port_included() {
    // As Envoy matches `:authority`: `Host: shop.example:8080` is not exactly
    // `shop.example`, but starts with it.
    let t = table(&vs(r#"
  - match: [{authority: {exact: shop.example}}]
    route: [{destination: {host: exact}}]
  - match: [{authority: {exact: "shop.example:8080"}}]
    route: [{destination: {host: with-port}}]
  - match: [{authority: {prefix: shop.example}}]
    route: [{destination: {host: prefix}}]
"#));
    let host = |r: Req| forward(r.decide(&t, &mut Rolls::none())).target.host;
    assert_eq!(host(get("/")), "exact.shop.svc.cluster.local");
    assert_eq!(
        host(get("/").authority_port(8080)),
        "with-port.shop.svc.cluster.local"
    );
    assert_eq!(
        host(get("/").authority_port(9090)),
        "prefix.shop.svc.cluster.local"
    );
}

fn forward(d: RouteDecision) -> Forward {
    match d {
        RouteDecision::Forward(f) => *f,
        other => panic!("expected a forward, got {other:?}"),
    }
}

fn route_of(t: &RouteTable, r: Req) -> String {
    match r.decide(t, &mut Rolls::none()) {
        RouteDecision::Forward(f) => f.route.into_owned(),
        RouteDecision::NoRoute => "none".into(),
        RouteDecision::NoMatch => "no match".into(),
        other => format!("{other:?}"),
    }
}

const MATCHES: &str = r#"
  - name: exact-cart
    match: [{uri: {exact: /cart}}]
    route: [{destination: {host: cart}}]
  - name: api-prefix-nocase
    match: [{uri: {prefix: /API/}, ignoreUriCase: true}]
    route: [{destination: {host: api}}]
  - name: versioned-regex
    match: [{uri: {regex: "/v[0-9]+/items"}}]
    route: [{destination: {host: items}}]
  - name: canary-header-and-post
    match: [{headers: {x-canary: {exact: "yes"}}, method: {exact: POST}}]
    route: [{destination: {host: canary}}]
  - name: debug-query-or-beta-host
    match: [{queryParams: {debug: {exact: "1"}}}, {authority: {prefix: beta.}}]
    route: [{destination: {host: debug}}]
  - name: not-internal
    match: [{withoutHeaders: {x-internal: {exact: "true"}}, uri: {prefix: /public}}]
    route: [{destination: {host: public}}]
  - name: any-trace-id
    match: [{headers: {x-trace: {}}, uri: {prefix: /traced}}]
    route: [{destination: {host: traced}}]
  - name: no-debug-flag
    match: [{withoutHeaders: {x-debug: {}}, uri: {prefix: /quiet}}]
    route: [{destination: {host: quiet}}]
  - name: any-page
    match: [{queryParams: {page: {}}, uri: {prefix: /list}}]
    route: [{destination: {host: paged}}]
  - name: not-empty-tenant
    match: [{withoutHeaders: {x-tenant: {exact: ""}}, uri: {prefix: /tenant}}]
    route: [{destination: {host: tenant}}]
  - name: from-a-labelled-workload
    match: [{sourceLabels: {app: reviews}}]
    route: [{destination: {host: never}}]
  - name: catch-all
    route: [{destination: {host: default}}]
"#;

#[test]
fn the_first_matching_route_wins_and_conditions_follow_istio() {
    let t = table(&vs(MATCHES));
    let cases = [
        (get("/cart"), "exact-cart"),
        (get("/cart/items"), "catch-all"),
        (get("/api/v1"), "api-prefix-nocase"),
        (get("/Api/v1"), "api-prefix-nocase"),
        (get("/v12/items"), "versioned-regex"),
        (get("/v12/items/3"), "catch-all"),
        (
            get("/x").header("x-canary", "yes").method("POST"),
            "canary-header-and-post",
        ),
        (get("/x").header("x-canary", "yes"), "catch-all"),
        (get("/x?a=2&debug=1"), "debug-query-or-beta-host"),
        (get("/x?debug=10"), "catch-all"),
        (
            get("/x").host("beta.wild.example"),
            "debug-query-or-beta-host",
        ),
        (get("/public/a"), "not-internal"),
        (get("/public/a").header("x-internal", "true"), "catch-all"),
        (
            get("/public/a").header("x-internal", "false"),
            "not-internal",
        ),
        // A StringMatch that sets nothing is a presence match, as istiod makes it.
        (get("/traced").header("x-trace", ""), "any-trace-id"),
        (get("/traced"), "catch-all"),
        (get("/quiet"), "no-debug-flag"),
        (get("/quiet").header("x-debug", "0"), "catch-all"),
        (get("/list?page"), "any-page"),
        (get("/list?page=3"), "any-page"),
        (get("/list?pages=3"), "catch-all"),
        // A field sent twice is matched as Envoy joins it: "yes,no" is not "yes".
        (
            get("/x")
                .header("x-canary", "yes")
                .append("x-canary", "no")
                .method("POST"),
            "catch-all",
        ),
        // withoutHeaders takes a missing field as empty (treat_missing_header_as_empty).
        (get("/tenant").header("x-tenant", "a"), "not-empty-tenant"),
        (get("/tenant"), "catch-all"),
        (get("/anything"), "catch-all"),
        (get("/x").host("other.example"), "none"),
        (get("/x").host("SHOP.example"), "catch-all"),
    ];
    for (request, want) in cases {
        let what = format!("{} {} {}", request.method, request.authority, request.path);
        assert_eq!(route_of(&t, request), want, "{what}");
    }
}

#[test]
fn weights_split_by_share_and_zero_weight_gets_nothing() {
    let t = table(&vs(r#"
  - route:
    - {destination: {host: shop, subset: v1}, weight: 75}
    - {destination: {host: shop, subset: v2}, weight: 25}
    - {destination: {host: shop, subset: v3}, weight: 0}
"#));
    let subset = |roll: u64| {
        forward(get("/").decide(&t, &mut Rolls::of(&[roll])))
            .target
            .subset
    };
    assert_eq!(subset(0), "v1");
    assert_eq!(subset(74), "v1");
    assert_eq!(subset(75), "v2");
    assert_eq!(subset(99), "v2");
}

#[test]
fn rewrite_replaces_the_matched_prefix_or_the_whole_path() {
    let t = table(&vs(r#"
  - match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/, authority: backend.internal}
    route: [{destination: {host: shop}}]
  - match: [{uri: {exact: /login}}]
    rewrite: {uri: /auth/login}
    route: [{destination: {host: shop}}]
  - match: [{uri: {prefix: /users/}}]
    rewrite: {uriRegexRewrite: {match: "^/users/([^/]+)/profile$", rewrite: "/profiles/\\1"}}
    route: [{destination: {host: shop}}]
  - match: [{headers: {x-version: {exact: "2"}}}]
    rewrite: {uri: /v2}
    route: [{destination: {host: shop}}]
  - rewrite: {uri: /api/}
    route: [{destination: {host: shop}}]
"#));
    let f = forward(get("/old/a/b?x=1").decide(&t, &mut Rolls::none()));
    assert_eq!(f.path_and_query, "/new/a/b?x=1");
    assert_eq!(f.authority, "backend.internal");
    let f = forward(get("/login").decide(&t, &mut Rolls::none()));
    assert_eq!(
        (f.path_and_query.as_str(), f.authority.as_str()),
        ("/auth/login", "shop.example")
    );
    let f = forward(get("/users/ana/profile").decide(&t, &mut Rolls::none()));
    assert_eq!(f.path_and_query, "/profiles/ana");
    // No condition on the path: matched by the prefix `/`, which the rewrite replaces,
    // as Envoy does under istiod (hence the trailing slash Istio's examples give).
    let v2 = get("/orders/7").header("x-version", "2");
    assert_eq!(
        forward(v2.decide(&t, &mut Rolls::none())).path_and_query,
        "/v2orders/7"
    );
    let f = forward(get("/orders/7?a=1").decide(&t, &mut Rolls::none()));
    assert_eq!(f.path_and_query, "/api/orders/7?a=1");
}

#[test]
fn redirects_and_direct_responses_answer_without_forwarding() {
    let t = table(&vs(r#"
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: www.example, redirectCode: 308}
  - match: [{uri: {prefix: /secure}}]
    redirect: {scheme: https}
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 200, body: {string: "ok"}}
    headers: {response: {set: {cache-control: no-store}}, request: {set: {x-unused: "1"}}}
  - match: [{uri: {prefix: /search}}]
    redirect: {uri: "/find?from=search"}
  - match: [{uri: {exact: /logo}}]
    directResponse: {status: 200, body: {bytes: "iVBORw0KGgo="}}
  - match: [{uri: {exact: /logo-url-safe}}]
    directResponse: {status: 200, body: {bytes: "-_8"}}
"#));
    // A query in the redirect's uri takes the request's place (Envoy's path_redirect).
    assert_eq!(
        get("/search?q=1").decide(&t, &mut Rolls::none()),
        RouteDecision::Redirect {
            status: 301,
            location: "http://shop.example/find?from=search".into(),
            response_headers: HeaderChanges::default(),
        }
    );
    // `bytes` is base64, as protobuf's JSON has a bytes field: either alphabet, padded
    // or not.
    for (path, body) in [
        ("/logo", &b"\x89PNG\r\n\x1a\n"[..]),
        ("/logo-url-safe", &[0xfb, 0xff][..]),
    ] {
        assert_eq!(
            get(path).decide(&t, &mut Rolls::none()),
            RouteDecision::Respond {
                status: 200,
                body: Bytes::copy_from_slice(body),
                response_headers: HeaderChanges::default(),
            },
            "{path}"
        );
    }
    assert_eq!(
        get("/old/page?q=1").decide(&t, &mut Rolls::none()),
        RouteDecision::Redirect {
            status: 308,
            location: "http://www.example/new?q=1".into(),
            response_headers: HeaderChanges::default(),
        }
    );
    assert_eq!(
        get("/secure/x").decide(&t, &mut Rolls::none()),
        RouteDecision::Redirect {
            status: 301,
            location: "https://shop.example/secure/x".into(),
            response_headers: HeaderChanges::default(),
        }
    );
    // The route's changes to answers' fields hold for the answers it gives itself.
    assert_eq!(
        get("/health").decide(&t, &mut Rolls::none()),
        RouteDecision::Respond {
            status: 200,
            body: Bytes::from_static(b"ok"),
            response_headers: HeaderChanges {
                set: vec![("cache-control".into(), "no-store".into())],
                ..HeaderChanges::default()
            },
        }
    );
    assert_eq!(
        get("/other").decide(&t, &mut Rolls::none()),
        RouteDecision::NoMatch
    );
}

#[test]
fn a_host_with_a_virtual_service_has_no_default_route_on_the_ports_it_routes() {
    let t = table(&vs(r#"
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api}}]
"#));
    assert_eq!(
        get("/other").decide(&t, &mut Rolls::none()),
        RouteDecision::NoMatch,
        "404, not the service"
    );
    // Routes only for port 8080: on port 80 istiod builds none, and the service's
    // default route holds.
    let t = table(&vs(r#"
  - match: [{uri: {prefix: /api}, port: 8080}]
    route: [{destination: {host: api}}]
"#));
    assert_eq!(
        get("/other").decide(&t, &mut Rolls::none()),
        RouteDecision::NoRoute
    );
    assert_eq!(
        get("/other").on_port(8080).decide(&t, &mut Rolls::none()),
        RouteDecision::NoMatch
    );
    // Routes only for a calling workload's labels: none is built for this proxy.
    let t = table(&vs(r#"
  - match: [{sourceLabels: {app: reviews}}]
    route: [{destination: {host: never}}]
"#));
    assert_eq!(
        get("/other").decide(&t, &mut Rolls::none()),
        RouteDecision::NoRoute
    );
}

#[test]
fn retries_timeouts_and_headers_come_from_the_route_and_its_destination() {
    let t = table(&vs(r#"
  - timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset,409", retryRemoteLocalities: true}
    headers:
      request: {set: {x-route: a}, remove: [x-secret]}
      response: {add: {x-served-by: fulcrum}}
    route:
    - destination: {host: shop}
      headers: {request: {add: {x-dest: one}}}
"#));
    let f = forward(get("/").decide(&t, &mut Rolls::none()));
    assert_eq!(f.timeout, Some(Duration::from_secs(2)));
    assert_eq!(f.retries.attempts, 3);
    assert_eq!(f.retries.per_try_timeout, Some(Duration::from_millis(500)));
    assert!(f.retries.remote_localities);
    assert!(f.retries.retry_on.reset && f.retries.retry_on.retries_status(502));
    assert!(f.retries.retry_on.retries_status(409) && !f.retries.retry_on.retries_status(404));
    assert_eq!(f.request_headers.set, vec![("x-route".into(), "a".into())]);
    assert_eq!(f.request_headers.add, vec![("x-dest".into(), "one".into())]);
    assert_eq!(f.request_headers.remove, vec!["x-secret".to_string()]);
    assert_eq!(
        f.response_headers.add,
        vec![("x-served-by".into(), "fulcrum".into())]
    );
}

#[test]
fn a_route_without_retries_gets_istios_default() {
    let t = table(&vs("  - route: [{destination: {host: shop}}]\n"));
    let f = forward(get("/").decide(&t, &mut Rolls::none()));
    assert_eq!(f.retries, RetryPolicy::istio_default());
    assert_eq!(f.retries.attempts, 2);
    assert!(f.retries.retry_on.connect_failure && f.retries.retry_on.retries_status(503));
    assert!(!f.retries.retry_on.retries_status(500));
    // gRPC: unavailable (14) and cancelled (1), not internal (13) or OK.
    let on = &f.retries.retry_on;
    assert!(on.retries_grpc(b"14") && on.retries_grpc(b"1"));
    assert!(!on.retries_grpc(b"13") && !on.retries_grpc(b"0") && !on.retries_grpc(b"x"));
    assert_eq!(f.timeout, None);
}

#[test]
fn grpc_retry_tokens_name_grpc_status_codes() {
    let on = RetryOn::parse("deadline-exceeded,internal,resource-exhausted", "retryOn").unwrap();
    for code in [&b"4"[..], b"13", b"8"] {
        assert!(on.retries_grpc(code), "{code:?}");
    }
    assert!(!on.retries_grpc(b"14") && !on.retries_grpc(b"1") && !on.retries_status(503));
}

#[test]
fn faults_and_mirrors_fire_at_their_percentage() {
    let t = table(&vs(r#"
  - fault:
      delay: {fixedDelay: 5s, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 0.5}}
    mirror: {host: shadow}
    mirrorPercentage: {value: 25}
    route: [{destination: {host: shop}}]
"#));
    // Rolls in order: weight, delay, abort, mirror (each out of 1,000,000 for percents).
    let f = forward(get("/").decide(&t, &mut Rolls::of(&[0, 99_999, 4_999, 249_999])));
    assert_eq!(f.fault.delay, Some(Duration::from_secs(5)));
    assert_eq!(f.fault.abort, Some(Abort::Http(503)));
    assert_eq!(f.mirrors.len(), 1);
    let f = forward(get("/").decide(&t, &mut Rolls::of(&[0, 100_000, 5_000, 250_000])));
    assert_eq!(f.fault, FaultDecision::default());
    assert!(f.mirrors.is_empty());
}

#[test]
fn a_fault_without_a_percentage_touches_no_request_and_a_mirror_every_one() {
    let t = table(&vs(r#"
  - match: [{uri: {prefix: /old}}]
    fault: {delay: {fixedDelay: 1s, percent: 100}}
    route: [{destination: {host: shop}}]
  - fault:
      delay: {fixedDelay: 5s}
      abort: {httpStatus: 503}
    mirror: {host: shadow}
    route: [{destination: {host: shop}}]
"#));
    // Rolls of zero: anything with a share above zero happens.
    let f = forward(get("/").decide(&t, &mut Rolls::of(&[0, 0, 0, 0])));
    assert_eq!(f.fault, FaultDecision::default(), "as Istio: no request");
    assert_eq!(
        f.mirrors.len(),
        1,
        "a mirror without a percentage: every request"
    );
    // The older integer percent, when percentage is unset.
    let f = forward(get("/old").decide(&t, &mut Rolls::of(&[0, 0])));
    assert_eq!(f.fault.delay, Some(Duration::from_secs(1)));
}

#[test]
fn a_grpc_abort_names_its_status_code() {
    let t = table(&vs(r#"
  - fault: {abort: {grpcStatus: NOT_FOUND, percentage: {value: 100}}}
    route: [{destination: {host: shop}}]
"#));
    let f = forward(get("/").decide(&t, &mut Rolls::none()));
    assert_eq!(f.fault.abort, Some(Abort::Grpc(5)));
    assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
    assert_eq!(grpc_code("unavailable"), None);
}

#[test]
fn a_bad_virtual_service_is_left_out_alone_with_its_field() {
    // Validation in fulcrum-policy refuses this before it reaches a proxy; the proxy
    // checks again what it compiles, and one bad object must not take the others down.
    let mut config = ConfigSet::new();
    config.add_text(
        "good.yaml",
        &vs("  - route: [{destination: {host: shop}}]\n"),
    );
    let good = config.resources().next().cloned().expect("parsed");
    let Resource::VirtualService(mut broken) = good.clone() else {
        panic!("a VirtualService");
    };
    broken.metadata.name = "broken".into();
    broken.spec.hosts = vec!["broken.example".into()];
    broken.spec.http[0].retries = Some(HttpRetry {
        attempts: 1,
        retry_on: "5xx,sometimes".into(),
        ..HttpRetry::default()
    });
    let resources = [good, Resource::VirtualService(broken)];
    let (t, errors) = RouteTable::build(&resources);
    assert!(t.has_host("shop.example"));
    assert!(!t.has_host("broken.example"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].object, "VirtualService shop/broken");
    assert_eq!(errors[0].field, "spec.http[0].retries.retryOn");
    assert!(errors[0].reason.contains("sometimes"), "{}", errors[0]);
}

#[test]
fn a_virtual_service_bound_to_gateways_only_routes_no_mesh_request() {
    // Istio's bookinfo ingress route: hosts `*`, bound to its gateway.
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/istio-samples/bookinfo/bookinfo-gateway.yaml");
    let mut config = ConfigSet::new();
    config.add_path(&corpus);
    let (t, errors) = RouteTable::build(config.resources());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        !t.has_host("shop.example"),
        "the gateway's `*` claims nothing here"
    );
    assert!(matches!(
        get("/productpage").decide(&t, &mut Rolls::none()),
        RouteDecision::NoRoute
    ));
    // Bound to `mesh` as well, it routes here too.
    let both = |gateways: &str| {
        table(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: shop, namespace: shop}}\nspec:\n  hosts: [shop.example]\n  \
             gateways: {gateways}\n  http:\n  - route: [{{destination: {{host: cart}}}}]\n"
        ))
    };
    assert!(both("[shop/ingress, mesh]").has_host("shop.example"));
    assert!(!both("[shop/ingress]").has_host("shop.example"));
}

#[test]
fn of_two_virtual_services_for_a_host_the_older_routes_it_alone() {
    // "b" is older than "a": istiod sorts by creation time before names.
    let t = table(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: shop, creationTimestamp: "2026-03-02T10:00:00Z"}
spec:
  hosts: [shop.example, a-only.example]
  http:
  - name: from-a
    route: [{destination: {host: a}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: shop, creationTimestamp: "2026-03-01T10:00:00Z"}
spec:
  hosts: [shop.example]
  http:
  - name: from-b
    match: [{uri: {prefix: /b}}]
    route: [{destination: {host: b}}]
"#,
    );
    assert_eq!(route_of(&t, get("/b/x")), "from-b");
    // Not merged: what the older one does not match is no route's, not the newer's.
    assert_eq!(route_of(&t, get("/other")), "no match");
    // The newer one's other hosts are its own.
    assert_eq!(route_of(&t, get("/other").host("a-only.example")), "from-a");
}

#[test]
fn retries_back_off_as_envoy_does_jittered_and_exponential() {
    /// Draws the largest value each time.
    struct Top;
    impl Chance for Top {
        fn below(&mut self, bound: u64) -> u64 {
            bound - 1
        }
    }
    let policy = RetryPolicy::istio_default();
    // The largest draw each time: just under the ceiling.
    let most = |n: u32| policy.backoff_before(n, &mut Top);
    let ms = |n: u32| most(n).as_micros() as f64 / 1000.0;
    for (n, ceiling) in [(1, 25.0), (2, 75.0), (3, 175.0), (4, 250.0), (9, 250.0)] {
        assert!(
            ms(n) < ceiling && ms(n) > ceiling - 0.01,
            "retry {n}: {}",
            ms(n)
        );
    }
    // The smallest: no wait at all.
    assert_eq!(
        policy.backoff_before(3, &mut Rolls::of(&[0])),
        Duration::ZERO
    );
}

#[test]
fn a_cookie_sent_in_crumbs_is_matched_whole() {
    let t = table(&vs(r#"
  - name: jason
    match: [{headers: {cookie: {regex: "^(.*?; *)?(user=jason)(;.*)?$"}}}]
    route: [{destination: {host: reviews-v2}}]
  - name: everyone
    route: [{destination: {host: reviews-v1}}]
"#));
    let crumbs = get("/")
        .header("cookie", "theme=dark")
        .append("cookie", "user=jason");
    assert_eq!(route_of(&t, crumbs), "jason");
    assert_eq!(
        route_of(&t, get("/").header("cookie", "theme=dark")),
        "everyone"
    );
}
