//! `DestinationRule`: what happens to traffic for a host after routing — load balancing,
//! locality failover, connection pools, outlier detection, TLS — per subset and per port.
//!
//! Field names follow the `networking.istio.io` CRD schema exactly; every field the schema
//! has is modelled so that no valid Istio field is reported as unknown. Integer fields that
//! are plain `int32` in Istio's protos use 0 for "unset", as Istio does; wrapper types
//! (`UInt32Value`, `BoolValue`, `DoubleValue`) are `Option`s.

use std::collections::BTreeMap;

use crate::decode::{model, string_enum};
use crate::duration::Duration;
use crate::istio::PortSelector;

model! {
    /// The `spec` of a DestinationRule.
    pub struct DestinationRuleSpec {
        /// The service the rule applies to (FQDN, short name or `*.` wildcard).
        required host: String = "host",
        /// Policies for all subsets and ports unless overridden.
        optional traffic_policy: Option<TrafficPolicy> = "trafficPolicy",
        /// Named versions of the service, selected by endpoint labels.
        optional subsets: Vec<Subset> = "subsets",
        /// Namespaces the rule is visible in.
        optional export_to: Vec<String> = "exportTo",
        /// Restricts the rule to workloads with these labels.
        optional workload_selector: Option<WorkloadSelector> = "workloadSelector",
    }
}

model! {
    /// Selects workloads by label (`matchLabels`).
    pub struct WorkloadSelector {
        /// Labels a workload must carry.
        optional match_labels: BTreeMap<String, String> = "matchLabels",
    }
}

model! {
    /// A named version of the service.
    pub struct Subset {
        /// The subset's name, referenced from VirtualService destinations.
        required name: String = "name",
        /// Endpoint labels selecting the subset.
        optional labels: BTreeMap<String, String> = "labels",
        /// Replaces the rule-level policy for this subset.
        optional traffic_policy: Option<TrafficPolicy> = "trafficPolicy",
    }
}

model! {
    /// Traffic policy for a host, subset or port.
    pub struct TrafficPolicy {
        /// Load balancing, including locality failover.
        optional load_balancer: Option<LoadBalancerSettings> = "loadBalancer",
        /// Connection pool limits.
        optional connection_pool: Option<ConnectionPoolSettings> = "connectionPool",
        /// Ejection of failing endpoints.
        optional outlier_detection: Option<OutlierDetection> = "outlierDetection",
        /// TLS to the upstream.
        optional tls: Option<ClientTlsSettings> = "tls",
        /// Per-port policies; each replaces the policy above it entirely.
        optional port_level_settings: Vec<PortTrafficPolicy> = "portLevelSettings",
        /// HTTP CONNECT/POST tunnelling.
        optional tunnel: Option<TunnelSettings> = "tunnel",
        /// PROXY protocol to the upstream.
        optional proxy_protocol: Option<ProxyProtocol> = "proxyProtocol",
        /// Limit on concurrent retries.
        optional retry_budget: Option<RetryBudget> = "retryBudget",
    }
}

model! {
    /// A traffic policy for one port.
    pub struct PortTrafficPolicy {
        /// The port the policy applies to.
        optional port: Option<PortSelector> = "port",
        /// Load balancing for this port.
        optional load_balancer: Option<LoadBalancerSettings> = "loadBalancer",
        /// Connection pool for this port.
        optional connection_pool: Option<ConnectionPoolSettings> = "connectionPool",
        /// Outlier detection for this port.
        optional outlier_detection: Option<OutlierDetection> = "outlierDetection",
        /// TLS for this port.
        optional tls: Option<ClientTlsSettings> = "tls",
    }
}

string_enum! {
    /// The simple load balancing algorithms.
    pub enum SimpleLb {
        /// Istio's default (least request).
        Unspecified = "UNSPECIFIED",
        /// Deprecated alias of LEAST_REQUEST.
        LeastConn = "LEAST_CONN",
        /// Random choice.
        Random = "RANDOM",
        /// Forward to the address the caller asked for.
        Passthrough = "PASSTHROUGH",
        /// Round robin.
        RoundRobin = "ROUND_ROBIN",
        /// Least request (power of two choices).
        LeastRequest = "LEAST_REQUEST",
    }
    default Unspecified;
}

model! {
    /// Load balancing settings. `simple`, `consistentHash` and `backendUtilization` are
    /// mutually exclusive.
    pub struct LoadBalancerSettings {
        /// A simple algorithm.
        optional simple: Option<SimpleLb> = "simple",
        /// Consistent hashing for session affinity.
        optional consistent_hash: Option<ConsistentHashLb> = "consistentHash",
        /// Load-report based balancing.
        optional backend_utilization: Option<BackendUtilization> = "backendUtilization",
        /// Locality-aware distribution and failover.
        optional locality_lb_setting: Option<LocalityLbSetting> = "localityLbSetting",
        /// Deprecated slow start duration (use `warmup`).
        optional warmup_duration_secs: Option<Duration> = "warmupDurationSecs",
        /// Slow start for new endpoints.
        optional warmup: Option<WarmupConfiguration> = "warmup",
        /// Zone-aware routing settings.
        optional zone_aware_lb_setting: Option<ZoneAwareLbSetting> = "zoneAwareLbSetting",
    }
}

model! {
    /// Consistent hash load balancing: one hash key and at most one hash algorithm.
    pub struct ConsistentHashLb {
        /// Hash on this request header.
        optional http_header_name: Option<String> = "httpHeaderName",
        /// Hash on this cookie (generated when absent).
        optional http_cookie: Option<HttpCookie> = "httpCookie",
        /// Hash on the source IP.
        optional use_source_ip: Option<bool> = "useSourceIp",
        /// Hash on this query parameter.
        optional http_query_parameter_name: Option<String> = "httpQueryParameterName",
        /// Ring hash algorithm.
        optional ring_hash: Option<RingHash> = "ringHash",
        /// Maglev algorithm.
        optional maglev: Option<Maglev> = "maglev",
        /// Deprecated ring size (use `ringHash.minimumRingSize`).
        optional minimum_ring_size: u64 = "minimumRingSize",
    }
}

model! {
    /// The cookie a consistent hash uses.
    pub struct HttpCookie {
        /// Cookie name.
        required name: String = "name",
        /// Cookie path.
        optional path: String = "path",
        /// Cookie lifetime; a cookie is generated when set.
        optional ttl: Option<Duration> = "ttl",
        /// Extra cookie attributes.
        optional attributes: Vec<CookieAttribute> = "attributes",
    }
}

model! {
    /// An attribute of a generated cookie.
    pub struct CookieAttribute {
        /// Attribute name.
        required name: String = "name",
        /// Attribute value.
        optional value: String = "value",
    }
}

model! {
    /// Ring hash settings.
    pub struct RingHash {
        /// Minimum number of virtual nodes (1024 by default).
        optional minimum_ring_size: u64 = "minimumRingSize",
    }
}

model! {
    /// Maglev settings.
    pub struct Maglev {
        /// Lookup table size; must be prime (65537 by default).
        optional table_size: u64 = "tableSize",
    }
}

model! {
    /// Load-report based balancing settings (ORCA).
    pub struct BackendUtilization {
        /// Minimum interval between weight updates.
        optional weight_update_period: Option<Duration> = "weightUpdatePeriod",
        /// Time before a stale weight is dropped.
        optional weight_expiration_period: Option<Duration> = "weightExpirationPeriod",
        /// Blackout period for new endpoints.
        optional weight_stabilization_period: Option<Duration> = "weightStabilizationPeriod",
        /// Error rate penalty multiplier.
        optional error_utilization_penalty_percent: u32 = "errorUtilizationPenaltyPercent",
        /// Metrics used for utilization.
        optional metric_names_for_computing_utilization: Vec<String> =
            "metricNamesForComputingUtilization",
    }
}

model! {
    /// Locality load balancing: `distribute` (explicit split) or `failover` /
    /// `failoverPriority` (priorities), never both.
    pub struct LocalityLbSetting {
        /// Explicit traffic split per source locality.
        optional distribute: Vec<LocalityDistribute> = "distribute",
        /// Region to fail over to, per source region.
        optional failover: Vec<LocalityFailover> = "failover",
        /// Labels ordering failover priority.
        optional failover_priority: Vec<String> = "failoverPriority",
        /// Turns locality load balancing on or off.
        optional enabled: Option<bool> = "enabled",
    }
}

model! {
    /// One `distribute` rule: traffic from `from` is split over `to` by weight.
    pub struct LocalityDistribute {
        /// Source locality pattern.
        optional from: String = "from",
        /// Destination locality patterns and their weights (which sum to 100).
        optional to: BTreeMap<String, u32> = "to",
    }
}

model! {
    /// One `failover` rule: when `from`'s region is unhealthy, go to `to`.
    pub struct LocalityFailover {
        /// Source region.
        optional from: String = "from",
        /// Destination region.
        optional to: String = "to",
    }
}

model! {
    /// Zone-aware routing settings.
    pub struct ZoneAwareLbSetting {
        /// Turns zone-aware routing on or off.
        optional enabled: Option<bool> = "enabled",
        /// Failover rules.
        optional failover: Vec<LocalityFailover> = "failover",
        /// Failover priority labels.
        optional failover_priority: Vec<String> = "failoverPriority",
        /// Minimum cluster size for zone-aware routing.
        optional min_cluster_size: Option<u32> = "minClusterSize",
    }
}

model! {
    /// Slow start for new endpoints.
    pub struct WarmupConfiguration {
        /// How long the warmup lasts.
        required duration: Duration = "duration",
        /// Starting share of traffic, in percent (10 by default).
        optional minimum_percent: Option<f64> = "minimumPercent",
        /// Curve of the ramp (1.0 = linear).
        optional aggression: Option<f64> = "aggression",
    }
}

model! {
    /// Connection pool limits, for TCP and HTTP.
    pub struct ConnectionPoolSettings {
        /// TCP settings.
        optional tcp: Option<TcpSettings> = "tcp",
        /// HTTP settings.
        optional http: Option<HttpSettings> = "http",
    }
}

model! {
    /// TCP connection pool settings.
    pub struct TcpSettings {
        /// Maximum connections to a host (0 = unlimited).
        optional max_connections: i32 = "maxConnections",
        /// Connect timeout.
        optional connect_timeout: Option<Duration> = "connectTimeout",
        /// TCP keepalive.
        optional tcp_keepalive: Option<TcpKeepalive> = "tcpKeepalive",
        /// Maximum connection lifetime.
        optional max_connection_duration: Option<Duration> = "maxConnectionDuration",
        /// Idle timeout.
        optional idle_timeout: Option<Duration> = "idleTimeout",
    }
}

model! {
    /// TCP keepalive settings.
    pub struct TcpKeepalive {
        /// Unanswered probes before the connection is dead.
        optional probes: u32 = "probes",
        /// Idle time before probes start.
        optional time: Option<Duration> = "time",
        /// Time between probes.
        optional interval: Option<Duration> = "interval",
    }
}

string_enum! {
    /// Whether HTTP/1.1 connections are upgraded to HTTP/2.
    pub enum H2UpgradePolicy {
        /// The mesh default.
        Default = "DEFAULT",
        /// Never upgrade.
        DoNotUpgrade = "DO_NOT_UPGRADE",
        /// Upgrade.
        Upgrade = "UPGRADE",
    }
    default Default;
}

model! {
    /// HTTP connection pool settings.
    pub struct HttpSettings {
        /// Maximum queued requests (0 = unlimited).
        optional http1_max_pending_requests: i32 = "http1MaxPendingRequests",
        /// Maximum active requests (0 = unlimited).
        optional http2_max_requests: i32 = "http2MaxRequests",
        /// Requests per connection (0 = unlimited).
        optional max_requests_per_connection: i32 = "maxRequestsPerConnection",
        /// Maximum concurrent retries (0 = unlimited).
        optional max_retries: i32 = "maxRetries",
        /// Idle timeout.
        optional idle_timeout: Option<Duration> = "idleTimeout",
        /// HTTP/2 upgrade policy.
        optional h2_upgrade_policy: Option<H2UpgradePolicy> = "h2UpgradePolicy",
        /// Use the client's protocol upstream.
        optional use_client_protocol: bool = "useClientProtocol",
        /// Maximum concurrent streams per HTTP/2 connection.
        optional max_concurrent_streams: i32 = "maxConcurrentStreams",
        /// HTTP/2 keepalive pings.
        optional http2_keep_alive: Option<Http2KeepAlive> = "http2KeepAlive",
    }
}

model! {
    /// HTTP/2 keepalive ping settings.
    pub struct Http2KeepAlive {
        /// Time between pings.
        optional interval: Option<Duration> = "interval",
        /// Time to wait for a ping's answer.
        optional timeout: Option<Duration> = "timeout",
    }
}

model! {
    /// Ejection of endpoints that keep failing.
    pub struct OutlierDetection {
        /// Deprecated; use `consecutive5xxErrors` or `consecutiveGatewayErrors`.
        optional consecutive_errors: i32 = "consecutiveErrors",
        /// Split local-origin failures from upstream ones.
        optional split_external_local_origin_errors: bool = "splitExternalLocalOriginErrors",
        /// Local-origin failures before ejection (split mode only).
        optional consecutive_local_origin_failures: Option<u32> =
            "consecutiveLocalOriginFailures",
        /// 502/503/504s before ejection (off by default).
        optional consecutive_gateway_errors: Option<u32> = "consecutiveGatewayErrors",
        /// 5xxs before ejection (5 by default; 0 disables).
        optional consecutive_5xx_errors: Option<u32> = "consecutive5xxErrors",
        /// Time between ejection sweeps (10s by default).
        optional interval: Option<Duration> = "interval",
        /// Minimum ejection time, multiplied by the times ejected (30s by default).
        optional base_ejection_time: Option<Duration> = "baseEjectionTime",
        /// Most endpoints that may be ejected, in percent (10 by default).
        optional max_ejection_percent: i32 = "maxEjectionPercent",
        /// Panic threshold, in percent (0 under Istio).
        optional min_health_percent: i32 = "minHealthPercent",
        /// Status codes counted as errors.
        optional outlier_detection_http_error_codes: Vec<u32> = "outlierDetectionHttpErrorCodes",
    }
}

string_enum! {
    /// TLS mode toward the upstream.
    pub enum TlsMode {
        /// Plain text.
        Disable = "DISABLE",
        /// TLS.
        Simple = "SIMPLE",
        /// Mutual TLS with given certificates.
        Mutual = "MUTUAL",
        /// Istio's mutual TLS.
        IstioMutual = "ISTIO_MUTUAL",
    }
    default Disable;
}

model! {
    /// TLS settings toward the upstream.
    pub struct ClientTlsSettings {
        /// TLS mode.
        optional mode: Option<TlsMode> = "mode",
        /// Client certificate file (MUTUAL).
        optional client_certificate: String = "clientCertificate",
        /// Private key file (MUTUAL).
        optional private_key: String = "privateKey",
        /// CA bundle file.
        optional ca_certificates: String = "caCertificates",
        /// Secret holding the credentials.
        optional credential_name: String = "credentialName",
        /// Accepted server SANs.
        optional subject_alt_names: Vec<String> = "subjectAltNames",
        /// SNI to present.
        optional sni: String = "sni",
        /// Skip server verification.
        optional insecure_skip_verify: Option<bool> = "insecureSkipVerify",
        /// Certificate revocation list file.
        optional ca_crl: String = "caCrl",
    }
}

model! {
    /// Tunnelling settings.
    pub struct TunnelSettings {
        /// `CONNECT` (default) or `POST`.
        optional protocol: String = "protocol",
        /// Host to tunnel to.
        required target_host: String = "targetHost",
        /// Port to tunnel to.
        required target_port: u32 = "targetPort",
    }
}

string_enum! {
    /// PROXY protocol version.
    pub enum ProxyProtocolVersion {
        /// Version 1 (text).
        V1 = "V1",
        /// Version 2 (binary).
        V2 = "V2",
    }
    default V1;
}

model! {
    /// PROXY protocol settings.
    pub struct ProxyProtocol {
        /// Protocol version.
        optional version: Option<ProxyProtocolVersion> = "version",
    }
}

model! {
    /// Limit on concurrent retries.
    pub struct RetryBudget {
        /// Share of active requests that may be retries, in percent.
        optional percent: Option<f64> = "percent",
        /// Minimum concurrent retries always allowed.
        optional min_retry_concurrency: u32 = "minRetryConcurrency",
        /// Window over which the budget is computed.
        optional budget_interval: Option<Duration> = "budgetInterval",
    }
}
