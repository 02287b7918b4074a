//! `VirtualService`: how requests for a set of hosts are routed — matches, weighted
//! destinations, redirects, rewrites, retries, timeouts, faults, mirroring.
//!
//! Field names follow the `networking.istio.io` CRD schema exactly.

use std::collections::BTreeMap;

use crate::decode::{model, string_enum};
use crate::duration::Duration;
use crate::istio::{Percentage, PortSelector, StringMatch};

model! {
    /// The `spec` of a VirtualService.
    pub struct VirtualServiceSpec {
        /// Hosts the routes apply to. Empty for a delegate VirtualService.
        optional hosts: Vec<String> = "hosts",
        /// Gateways (and `mesh`) the routes apply to; only `mesh` when empty.
        optional gateways: Vec<String> = "gateways",
        /// HTTP routes, checked in order; the first match wins.
        optional http: Vec<HttpRoute> = "http",
        /// TLS (SNI) routes.
        optional tls: Vec<TlsRoute> = "tls",
        /// TCP routes.
        optional tcp: Vec<TcpRoute> = "tcp",
        /// Namespaces the VirtualService is visible in.
        optional export_to: Vec<String> = "exportTo",
    }
}

model! {
    /// One HTTP route: conditions and what to do with a matching request.
    pub struct HttpRoute {
        /// Name, for logs and statistics.
        optional name: String = "name",
        /// Conditions; the route applies when any block matches (all when empty).
        optional matches: Vec<HttpMatchRequest> = "match",
        /// Weighted destinations.
        optional route: Vec<HttpRouteDestination> = "route",
        /// Redirect instead of forwarding.
        optional redirect: Option<HttpRedirect> = "redirect",
        /// Answer directly instead of forwarding.
        optional direct_response: Option<HttpDirectResponse> = "directResponse",
        /// Hand the route to another VirtualService.
        optional delegate: Option<Delegate> = "delegate",
        /// Rewrite the path or authority before forwarding.
        optional rewrite: Option<HttpRewrite> = "rewrite",
        /// Overall request timeout (off when unset).
        optional timeout: Option<Duration> = "timeout",
        /// Retry policy.
        optional retries: Option<HttpRetry> = "retries",
        /// Fault injection.
        optional fault: Option<HttpFaultInjection> = "fault",
        /// Deprecated single mirror destination (use `mirrors`).
        optional mirror: Option<Destination> = "mirror",
        /// Mirror destinations.
        optional mirrors: Vec<HttpMirrorPolicy> = "mirrors",
        /// Deprecated whole-number mirror percentage.
        optional mirror_percent: Option<u32> = "mirrorPercent",
        /// The same deprecated field under its original proto name.
        optional mirror_percent_legacy: Option<u32> = "mirror_percent",
        /// Share of traffic mirrored to `mirror` (100% when unset).
        optional mirror_percentage: Option<Percentage> = "mirrorPercentage",
        /// CORS policy.
        optional cors_policy: Option<CorsPolicy> = "corsPolicy",
        /// Header manipulation.
        optional headers: Option<Headers> = "headers",
    }
}

model! {
    /// One block of match conditions; all conditions in a block must hold.
    pub struct HttpMatchRequest {
        /// Name of the block, for logs.
        optional name: String = "name",
        /// Path match.
        optional uri: Option<StringMatch> = "uri",
        /// Scheme match.
        optional scheme: Option<StringMatch> = "scheme",
        /// Method match.
        optional method: Option<StringMatch> = "method",
        /// Authority (Host) match.
        optional authority: Option<StringMatch> = "authority",
        /// Header matches (names are lowercase).
        optional headers: BTreeMap<String, StringMatch> = "headers",
        /// Port the request arrived on.
        optional port: u32 = "port",
        /// Labels of the calling workload.
        optional source_labels: BTreeMap<String, String> = "sourceLabels",
        /// Gateways the condition applies to.
        optional gateways: Vec<String> = "gateways",
        /// Query parameter matches.
        optional query_params: BTreeMap<String, StringMatch> = "queryParams",
        /// Case-insensitive path matching (exact and prefix only).
        optional ignore_uri_case: bool = "ignoreUriCase",
        /// Headers that must be absent (or not match).
        optional without_headers: BTreeMap<String, StringMatch> = "withoutHeaders",
        /// Namespace of the calling workload.
        optional source_namespace: String = "sourceNamespace",
        /// Statistics prefix.
        optional stat_prefix: String = "statPrefix",
    }
}

model! {
    /// Where a service is reached: host, optional subset and port.
    pub struct Destination {
        /// Service host, as in the service registry.
        required host: String = "host",
        /// Subset defined by a DestinationRule.
        optional subset: String = "subset",
        /// Port on the host.
        optional port: Option<PortSelector> = "port",
    }
}

model! {
    /// An HTTP destination with its share of traffic.
    pub struct HttpRouteDestination {
        /// Where to send.
        required destination: Destination = "destination",
        /// Relative weight (share = weight / sum of weights).
        optional weight: i32 = "weight",
        /// Header manipulation for this destination.
        optional headers: Option<Headers> = "headers",
    }
}

model! {
    /// A TCP or TLS destination with its share of traffic.
    pub struct RouteDestination {
        /// Where to send.
        required destination: Destination = "destination",
        /// Relative weight.
        optional weight: i32 = "weight",
    }
}

model! {
    /// Header changes for requests and responses.
    pub struct Headers {
        /// Changes to the request.
        optional request: Option<HeaderOperations> = "request",
        /// Changes to the response.
        optional response: Option<HeaderOperations> = "response",
    }
}

model! {
    /// Set, add and remove headers.
    pub struct HeaderOperations {
        /// Overwrite these headers.
        optional set: BTreeMap<String, String> = "set",
        /// Append these headers.
        optional add: BTreeMap<String, String> = "add",
        /// Remove these headers.
        optional remove: Vec<String> = "remove",
    }
}

string_enum! {
    /// Which port a redirect keeps.
    pub enum RedirectPortSelection {
        /// 80 for http, 443 for https.
        FromProtocolDefault = "FROM_PROTOCOL_DEFAULT",
        /// The port the request used.
        FromRequestPort = "FROM_REQUEST_PORT",
    }
    default FromProtocolDefault;
}

model! {
    /// An HTTP redirect.
    pub struct HttpRedirect {
        /// Replacement path.
        optional uri: String = "uri",
        /// Replacement authority.
        optional authority: String = "authority",
        /// Replacement port.
        optional port: Option<u32> = "port",
        /// Derive the port instead of naming it.
        optional derive_port: Option<RedirectPortSelection> = "derivePort",
        /// Replacement scheme (`http` or `https`).
        optional scheme: String = "scheme",
        /// Status code (301 by default).
        optional redirect_code: u32 = "redirectCode",
        /// Replacement for the matched prefix.
        optional prefix_rewrite: String = "prefixRewrite",
    }
}

model! {
    /// A fixed answer.
    pub struct HttpDirectResponse {
        /// Status code.
        required status: u32 = "status",
        /// Body.
        optional body: Option<HttpBody> = "body",
    }
}

model! {
    /// A direct response body: text or base64 bytes.
    pub struct HttpBody {
        /// Text body.
        optional string: Option<String> = "string",
        /// Base64-encoded body.
        optional bytes: Option<String> = "bytes",
    }
}

impl HttpBody {
    /// The body's bytes: its `string`, else its `bytes` decoded. Those are base64 as
    /// protobuf's JSON mapping writes a `bytes` field, which accepts the standard or the
    /// URL-safe alphabet, padded or not; an error says why they are not.
    pub fn content(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
        match (&self.string, &self.bytes) {
            (Some(text), _) => Ok(text.clone().into_bytes()),
            (None, Some(encoded)) => {
                let engine = match encoded.contains(['-', '_']) {
                    true => URL_SAFE_PAD_INDIFFERENT,
                    false => STANDARD_PAD_INDIFFERENT,
                };
                engine
                    .decode(encoded.trim())
                    .map_err(|e| format!("not base64: {e}"))
            }
            (None, None) => Ok(Vec::new()),
        }
    }
}

model! {
    /// Delegation to another VirtualService.
    pub struct Delegate {
        /// Name of the delegate VirtualService.
        optional name: String = "name",
        /// Its namespace (the same as this one when empty).
        optional namespace: String = "namespace",
    }
}

model! {
    /// Path and authority rewrite before forwarding.
    pub struct HttpRewrite {
        /// Replacement for the matched path or prefix.
        optional uri: String = "uri",
        /// Replacement authority.
        optional authority: String = "authority",
        /// Regex based path rewrite.
        optional uri_regex_rewrite: Option<RegexRewrite> = "uriRegexRewrite",
    }
}

model! {
    /// A regex path rewrite.
    pub struct RegexRewrite {
        /// RE2 expression to match.
        optional regex: String = "match",
        /// Replacement, with `\1` style groups.
        optional rewrite: String = "rewrite",
    }
}

model! {
    /// Retry policy.
    pub struct HttpRetry {
        /// Retries allowed (0 disables retries).
        optional attempts: i32 = "attempts",
        /// Timeout per attempt (the route timeout when unset).
        optional per_try_timeout: Option<Duration> = "perTryTimeout",
        /// Comma separated conditions (`5xx,gateway-error,connect-failure,503`).
        optional retry_on: String = "retryOn",
        /// Retry in other localities.
        optional retry_remote_localities: Option<bool> = "retryRemoteLocalities",
        /// Avoid hosts already tried (true by default).
        optional retry_ignore_previous_hosts: Option<bool> = "retryIgnorePreviousHosts",
        /// Base interval between retries (25ms by default).
        optional backoff: Option<Duration> = "backoff",
    }
}

model! {
    /// Fault injection: delays and aborts.
    pub struct HttpFaultInjection {
        /// Delay before forwarding.
        optional delay: Option<FaultDelay> = "delay",
        /// Abort with an error instead of forwarding.
        optional abort: Option<FaultAbort> = "abort",
    }
}

model! {
    /// An injected delay.
    pub struct FaultDelay {
        /// Fixed delay.
        optional fixed_delay: Option<Duration> = "fixedDelay",
        /// Exponential delay (not supported by Istio).
        optional exponential_delay: Option<Duration> = "exponentialDelay",
        /// Deprecated whole-number percentage.
        optional percent: i32 = "percent",
        /// Share of requests delayed.
        optional percentage: Option<Percentage> = "percentage",
    }
}

model! {
    /// An injected abort.
    pub struct FaultAbort {
        /// HTTP status to answer with.
        optional http_status: Option<i32> = "httpStatus",
        /// gRPC status to answer with (`UNAVAILABLE`, ...).
        optional grpc_status: Option<String> = "grpcStatus",
        /// HTTP/2 error (not supported by Istio).
        optional http2_error: Option<String> = "http2Error",
        /// Share of requests aborted.
        optional percentage: Option<Percentage> = "percentage",
    }
}

model! {
    /// A mirror destination and its share.
    pub struct HttpMirrorPolicy {
        /// Where mirrored requests go.
        required destination: Destination = "destination",
        /// Share mirrored (100% when unset).
        optional percentage: Option<Percentage> = "percentage",
    }
}

string_enum! {
    /// What happens to preflight requests that match no CORS origin.
    pub enum UnmatchedPreflights {
        /// The mesh default.
        Unspecified = "UNSPECIFIED",
        /// Forward them.
        Forward = "FORWARD",
        /// Answer them without CORS headers.
        Ignore = "IGNORE",
    }
    default Unspecified;
}

model! {
    /// Cross-origin resource sharing policy.
    pub struct CorsPolicy {
        /// Deprecated exact origins.
        optional allow_origin: Vec<String> = "allowOrigin",
        /// Allowed origins.
        optional allow_origins: Vec<StringMatch> = "allowOrigins",
        /// Allowed methods.
        optional allow_methods: Vec<String> = "allowMethods",
        /// Allowed request headers.
        optional allow_headers: Vec<String> = "allowHeaders",
        /// Headers exposed to the browser.
        optional expose_headers: Vec<String> = "exposeHeaders",
        /// How long preflight answers are cached.
        optional max_age: Option<Duration> = "maxAge",
        /// Allow credentials.
        optional allow_credentials: Option<bool> = "allowCredentials",
        /// Unmatched preflight handling.
        optional unmatched_preflights: Option<UnmatchedPreflights> = "unmatchedPreflights",
    }
}

model! {
    /// A TLS route: SNI conditions and destinations.
    pub struct TlsRoute {
        /// Conditions (at least one).
        required matches: Vec<TlsMatchAttributes> = "match",
        /// Destinations.
        optional route: Vec<RouteDestination> = "route",
    }
}

model! {
    /// TLS match conditions.
    pub struct TlsMatchAttributes {
        /// SNI names to match (at least one).
        required sni_hosts: Vec<String> = "sniHosts",
        /// Destination IP ranges.
        optional destination_subnets: Vec<String> = "destinationSubnets",
        /// Port.
        optional port: u32 = "port",
        /// Labels of the calling workload.
        optional source_labels: BTreeMap<String, String> = "sourceLabels",
        /// Gateways the condition applies to.
        optional gateways: Vec<String> = "gateways",
        /// Namespace of the calling workload.
        optional source_namespace: String = "sourceNamespace",
    }
}

model! {
    /// A TCP route.
    pub struct TcpRoute {
        /// Conditions.
        optional matches: Vec<L4MatchAttributes> = "match",
        /// Destinations.
        optional route: Vec<RouteDestination> = "route",
    }
}

model! {
    /// Layer 4 match conditions.
    pub struct L4MatchAttributes {
        /// Destination IP ranges.
        optional destination_subnets: Vec<String> = "destinationSubnets",
        /// Port.
        optional port: u32 = "port",
        /// Labels of the calling workload.
        optional source_labels: BTreeMap<String, String> = "sourceLabels",
        /// Gateways the condition applies to.
        optional gateways: Vec<String> = "gateways",
        /// Namespace of the calling workload.
        optional source_namespace: String = "sourceNamespace",
        /// Source IP range.
        optional source_subnet: String = "sourceSubnet",
    }
}
