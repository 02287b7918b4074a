//! Where a service's endpoints are: this cluster's endpoints of each service, with the
//! labels subsets select on and the load balancer its DestinationRule asks for.
//!
//! [`Discovery`] is the seam: [`StaticDiscovery`] reads the endpoints of ServiceEntries
//! (inline, and the WorkloadEntries their `workloadSelector` selects) from configuration; a Kubernetes EndpointSlice watcher can
//! implement the same trait. An endpoint is this cluster's when its
//! `topology.istio.io/cluster` label names it, or when it carries no such label and its
//! locality is this proxy's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use fulcrum_policy::istio::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, Resolution, RetryBudget, ServicePort, SimpleLb, TlsMode, TrafficPolicy,
    WorkloadEntrySpec, endpoints_of,
};
use fulcrum_policy::references::{merged_policy, qualify_host, rule_for_host};
use fulcrum_policy::{Locality, Object, Resource};
use http::HeaderValue;

use crate::FastMap;
use crate::balance::{LbPolicy, OutlierSettings, Warmup};
use crate::transport::origin::OriginTls;
use crate::upstream::{Keepalive, POOL_DEFAULTS, PoolSettings};

/// Istio's label naming the cluster a workload runs in.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";

/// One endpoint of a service in this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// Its address as text (the consistent-hash ring's name for it).
    pub name: Arc<str>,
    /// The same, as the value of the answers' `x-fulcrum-upstream` field (made once).
    pub name_value: HeaderValue,
    /// Its labels (subsets select on them).
    pub labels: Arc<BTreeMap<String, String>>,
    /// Whether it is spoken to in h2 (prior knowledge, plaintext) rather than HTTP/1.1.
    pub h2: bool,
    /// The service port it serves (a ServiceEntry `ports[].number`).
    pub port: u16,
    /// Its load-balancing weight (`weight`; 1 when unset).
    pub weight: u32,
}

/// An endpoint goes by its address (the consistent-hash ring's name for it).
impl AsRef<str> for Endpoint {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl crate::balance::Weighted for Endpoint {
    fn weight(&self) -> u32 {
        self.weight
    }
}

/// How a service's endpoints are balanced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BalanceSettings {
    /// The algorithm.
    pub policy: LbPolicy,
    /// For a consistent hash: what the key is taken from.
    pub hash_on: Option<HashOn>,
    /// Outlier detection, when the rule asks for it (none without `outlierDetection`).
    pub outlier: Option<OutlierSettings>,
    /// The DestinationRule's connection-pool limits.
    pub limits: PoolLimits,
    /// And its settings for each connection, when it sets any.
    pub pool: Option<Arc<PoolSettings>>,
    /// How a new endpoint's share grows (`loadBalancer.warmup`), for round robin and
    /// least request.
    pub warmup: Option<Warmup>,
    /// Each request goes to the endpoint in its client's protocol, h2 or HTTP/1.1, not
    /// the port's (`http.useClientProtocol`).
    pub use_client_protocol: bool,
    /// Endpoints of HTTP/1.1 ports are spoken to in h2 (`http.h2UpgradePolicy:
    /// UPGRADE`).
    pub h2_upgrade: bool,
}

/// A DestinationRule's `connectionPool` limits, Envoy's circuit breakers: each off
/// unless set above zero (Istio leaves them at 2^32-1). A subset's own policy has its
/// own limits, as each subset is its own Envoy cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolLimits {
    /// Most requests in flight to the service (`http.http2MaxRequests`); more are
    /// answered 503 `overflow`.
    pub requests: Option<u32>,
    /// Most connections to the service's endpoints (`tcp.maxConnections`). An HTTP/1
    /// connection carries one request at a time, so for a service spoken to in HTTP/1
    /// this is how many of its requests may be in flight; more wait for one to end.
    /// (Over h2 a connection carries every request to its endpoint, and this does not
    /// bind.)
    pub connections: Option<u32>,
    /// Most requests waiting for one of those connections
    /// (`http.http1MaxPendingRequests`); more are answered 503 `overflow`.
    pub pending: Option<u32>,
    /// Most retries in flight to the service (`http.maxRetries`); past it a failed try
    /// is not retried, and its answer stands.
    pub retries: Option<u32>,
    /// The rule's retry budget, which replaces `retries` when set, as in Envoy.
    pub retry_budget: Option<RetryBudgetLimit>,
}

/// A retry budget (`trafficPolicy.retryBudget`), Envoy's circuit breaker of that name:
/// the retries in flight to a service may number a share of its requests in flight
/// (those waiting for a connection included), and never fewer than a minimum. Past it a
/// failed try is not retried, and its answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetLimit {
    /// The share, in millionths of the requests in flight (`percent` x 10,000).
    pub per_million: u32,
    /// The retries in flight always allowed (`minRetryConcurrency`).
    pub min_concurrency: u32,
}

impl RetryBudgetLimit {
    /// The budget as istiod writes it for Envoy: `percent` else 0.2, which Envoy reads
    /// as 0.2% (istiod's comment says 20%, Envoy's own default; its value is in
    /// percent); `minRetryConcurrency` else 3 (zero is unset). `budgetInterval` is not
    /// written: Envoy's budget has no window, it counts what is in flight.
    fn of(budget: &RetryBudget) -> RetryBudgetLimit {
        let percent = budget.percent.unwrap_or(0.2).clamp(0.0, 100.0);
        RetryBudgetLimit {
            per_million: (percent * 10_000.0).round() as u32,
            min_concurrency: match budget.min_retry_concurrency {
                0 => 3,
                n => n,
            },
        }
    }

    /// How many retries may be in flight while `active` requests are: the share of them
    /// rounded down, and at least the minimum.
    pub fn allowed(&self, active: usize) -> usize {
        let share = active as u64 * u64::from(self.per_million) / 1_000_000;
        (share as usize).max(self.min_concurrency as usize)
    }
}

impl PoolLimits {
    fn of(
        pool: Option<&ConnectionPoolSettings>,
        budget: Option<&RetryBudget>,
        h2: bool,
    ) -> PoolLimits {
        let set = |n: i32| u32::try_from(n).ok().filter(|n| *n > 0);
        let (tcp, http) = (
            pool.and_then(|p| p.tcp.as_ref()),
            pool.and_then(|p| p.http.as_ref()),
        );
        PoolLimits {
            requests: http.and_then(|h| set(h.http2_max_requests)),
            connections: tcp.and_then(|t| set(t.max_connections)).filter(|_| !h2),
            pending: http
                .and_then(|h| set(h.http1_max_pending_requests))
                .filter(|_| !h2),
            retries: http.and_then(|h| set(h.max_retries)),
            retry_budget: budget.map(RetryBudgetLimit::of),
        }
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        *self != PoolLimits::default()
    }
}

/// Where a consistent hash (`loadBalancer.consistentHash`) takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value (`httpHeaderName`).
    Header(String),
    /// A cookie's value (`httpCookie`). With a `ttl`, a request without the cookie gets a
    /// new value, set on its answer (`Max-Age` the ttl; a session cookie for zero), so
    /// that the client's next requests go to the same endpoint, as Envoy does.
    Cookie {
        /// The cookie's name.
        name: String,
        /// Its `Path` attribute, when set.
        path: String,
        /// Its lifetime, when one is generated.
        ttl: Option<std::time::Duration>,
    },
    /// The client's IP address (`useSourceIp`).
    SourceIp,
    /// A query parameter's value (`httpQueryParameterName`).
    Query(String),
}

/// The endpoints of services in this cluster.
pub trait Discovery: Send + Sync {
    /// The endpoints of `host` in `subset` (empty: every endpoint), this cluster only,
    /// on every port of the service.
    fn endpoints(&self, host: &str, subset: &str) -> Arc<[Endpoint]>;
    /// The same, serving one port of the service: `port` when the service declares it,
    /// else 80 when it declares that (a request that names no port), else its first.
    /// Read on every request: implementations hand out a shared list, not a copy.
    fn endpoints_on(&self, host: &str, subset: &str, port: Option<u16>) -> Arc<[Endpoint]> {
        let _ = port;
        self.endpoints(host, subset)
    }
    /// Whether `host` is a service this mesh knows (in any cluster).
    fn knows(&self, host: &str) -> bool;
    /// The ports `host` declares (`ports[].number`), when it is a service that declares
    /// some; none when this discovery does not say.
    fn ports(&self, host: &str) -> Option<&[u16]> {
        let _ = host;
        None
    }
    /// The most specific wildcard service (`*.example.com`) whose name covers `host`,
    /// for a host no service is named exactly, as Envoy matches a virtual host.
    fn wildcard_for(&self, host: &str) -> Option<&str> {
        let _ = host;
        None
    }
    /// Whether `host` is a wildcard whose names are looked up as requests come: a
    /// ServiceEntry's without endpoints under `resolution: NONE` or `DYNAMIC_DNS`.
    fn resolves_per_request(&self, host: &str) -> bool {
        let _ = host;
        false
    }
    /// The wildcard host `host` falls under, when `host` is a name looked up for a
    /// request ([`Discovery::resolves_per_request`]).
    fn looked_up_under(&self, host: &str) -> Option<&str> {
        let _ = host;
        None
    }
    /// How `host` (and `subset`) is balanced.
    fn balance(&self, host: &str, subset: &str) -> &BalanceSettings;
    /// The same, on one of its ports (as [`Discovery::endpoints_on`] picks it), whose
    /// own settings (`portLevelSettings`) hold when it has some.
    fn balance_on(&self, host: &str, subset: &str, port: Option<u16>) -> &BalanceSettings {
        let _ = port;
        self.balance(host, subset)
    }
    /// The services with at least one endpoint in this cluster, sorted.
    fn local_services(&self) -> Vec<String>;
    /// Every service this mesh knows (in any cluster), by its full name, sorted.
    fn known_services(&self) -> Vec<String>;
    /// The endpoints a connection may still be kept open to, each with the connection
    /// settings it is spoken to under; `None` when this discovery does not say (then
    /// idle connections are closed by their idle timeout alone).
    fn in_use(&self) -> Option<InUse> {
        None
    }
}

/// The endpoints of a configuration, each with the connection settings of the services
/// (and subsets and ports) it serves, for the pools to close the idle connections it
/// has no use for: to an endpoint since removed, or made under a rule since changed.
#[derive(Debug, Default)]
pub struct InUse(FastMap<SocketAddr, Vec<Option<Arc<PoolSettings>>>>);

/// Settings as a connection is made under them: the pool's own when a rule sets none.
fn or_defaults(settings: &Option<Arc<PoolSettings>>) -> &PoolSettings {
    settings.as_deref().unwrap_or(&POOL_DEFAULTS)
}

impl InUse {
    /// Notes that `address` is spoken to under `settings`.
    fn add(&mut self, address: SocketAddr, settings: &Option<Arc<PoolSettings>>) {
        let under = self.0.entry(address).or_default();
        if !under
            .iter()
            .any(|s| or_defaults(s) == or_defaults(settings))
        {
            under.push(settings.clone());
        }
    }

    /// Whether a connection to `address` made under `settings` may still be used.
    pub fn fits(&self, address: SocketAddr, settings: &PoolSettings) -> bool {
        (self.0.get(&address)).is_some_and(|under| under.iter().any(|s| or_defaults(s) == settings))
    }
}

#[derive(Debug, Clone, Default)]
struct Service {
    endpoints: Arc<[Endpoint]>,
    /// Each subset's endpoints, selected once when the configuration is read.
    subsets: FastMap<String, Arc<[Endpoint]>>,
    balance: BalanceSettings,
    subset_balance: FastMap<String, BalanceSettings>,
    /// Its ports (`ports[].number`), in the order they were declared.
    ports: Vec<u16>,
    /// With more than one port: by subset (empty: every endpoint), the endpoints of each
    /// port, selected once.
    by_port: FastMap<String, FastMap<u16, Arc<[Endpoint]>>>,
    /// By subset (empty: the whole service), the settings of the ports a rule's
    /// `portLevelSettings` name.
    port_balance: FastMap<String, FastMap<u16, BalanceSettings>>,
    /// For a name looked up for a request, the wildcard host it falls under.
    under: Option<String>,
}

impl Service {
    /// The endpoints of `subset` (empty: every endpoint), on every port.
    fn endpoints_of(&self, subset: &str) -> Arc<[Endpoint]> {
        if subset.is_empty() {
            return self.endpoints.clone();
        }
        // A subset no DestinationRule defines selects nothing, as in Istio.
        (self.subsets.get(subset).cloned()).unwrap_or_else(|| Arc::new([]))
    }

    /// The port a request for `wanted` goes to: it, when declared; else 80, when
    /// declared (a request naming no port is for port 80, as it would be through a
    /// sidecar); else the first declared.
    fn port_for(&self, wanted: Option<u16>) -> Option<u16> {
        let declared = |p: u16| self.ports.contains(&p);
        wanted
            .filter(|p| declared(*p))
            .or(Some(80).filter(|p| declared(*p)))
            .or(self.ports.first().copied())
    }

    /// Splits the endpoints of every subset by port, when there is more than one.
    fn split_by_port(&mut self) {
        if self.ports.len() < 2 {
            return;
        }
        let lists = std::iter::once((String::new(), self.endpoints.clone()))
            .chain(self.subsets.iter().map(|(n, e)| (n.clone(), e.clone())));
        for (subset, endpoints) in lists {
            let ports = self.ports.iter().map(|&port| {
                let serving: Arc<[Endpoint]> = endpoints
                    .iter()
                    .filter(|e| e.port == port)
                    .cloned()
                    .collect();
                (port, serving)
            });
            self.by_port.insert(subset, ports.collect());
        }
    }
}

/// How a service nobody configured is balanced (Istio's defaults).
static DEFAULT_BALANCE: BalanceSettings = BalanceSettings {
    policy: LbPolicy::LeastRequest,
    hash_on: None,
    outlier: None,
    limits: PoolLimits {
        requests: None,
        connections: None,
        pending: None,
        retries: None,
        retry_budget: None,
    },
    pool: None,
    warmup: None,
    use_client_protocol: false,
    h2_upgrade: false,
};

/// Endpoints read from ServiceEntry objects.
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    services: FastMap<String, Service>,
    /// The endpoint names its ServiceEntries have resolved by DNS (lower case, sorted).
    dns_names: Vec<String>,
    /// Wildcard hosts whose names are looked up as requests come (lower case).
    per_request: BTreeSet<String>,
}

/// What endpoint names resolved to, by name (lower case).
pub type Resolved = FastMap<String, Arc<[std::net::IpAddr]>>;

/// A DestinationRule's settings for each connection: `tcp.connectTimeout`,
/// `tcp.maxConnectionDuration`, `tcp.tcpKeepalive`, `http.maxRequestsPerConnection`
/// (0, Istio's default: unlimited), `http.idleTimeout` and `http.maxConcurrentStreams`,
/// and `tls` to originate. A zero duration is unset; none when nothing is set.
fn pool_settings(
    pool: Option<&ConnectionPoolSettings>,
    tls: Option<Arc<OriginTls>>,
) -> Option<Arc<PoolSettings>> {
    let (tcp, http) = (
        pool.and_then(|p| p.tcp.as_ref()),
        pool.and_then(|p| p.http.as_ref()),
    );
    let set =
        |d: Option<fulcrum_policy::Duration>| d.and_then(|d| d.to_std()).filter(|d| !d.is_zero());
    let settings = PoolSettings {
        connect_timeout: set(tcp.and_then(|t| t.connect_timeout)),
        max_requests_per_connection: http
            .and_then(|h| u32::try_from(h.max_requests_per_connection).ok())
            .filter(|n| *n > 0),
        idle_timeout: set(http.and_then(|h| h.idle_timeout)),
        max_connection_duration: set(tcp.and_then(|t| t.max_connection_duration)),
        max_concurrent_streams: http
            .and_then(|h| u32::try_from(h.max_concurrent_streams).ok())
            .filter(|n| *n > 0),
        keepalive: tcp
            .and_then(|t| t.tcp_keepalive.as_ref())
            .map(|k| Keepalive {
                time: set(k.time),
                interval: set(k.interval),
                probes: Some(k.probes).filter(|n| *n > 0),
            }),
        tls,
    };
    (settings != PoolSettings::default()).then(|| Arc::new(settings))
}

/// `rule` as a sidecar reads it: `tls.credentialName` applies at a sidecar only when the
/// rule has a `workloadSelector` (istio/api: otherwise it is for gateways, and sidecars
/// keep to the certificate paths), so from any other rule it is left out, and the
/// connections are made with the rule's files (or the system's CA bundle).
fn as_a_sidecar_reads(rule: &Object<DestinationRuleSpec>) -> Object<DestinationRuleSpec> {
    let mut rule = rule.clone();
    if rule.spec.workload_selector.is_some() {
        return rule;
    }
    let policies = (rule.spec.traffic_policy.iter_mut())
        .chain((rule.spec.subsets.iter_mut()).filter_map(|s| s.traffic_policy.as_mut()));
    for policy in policies {
        let ports = policy.port_level_settings.iter_mut().map(|p| &mut p.tls);
        for tls in std::iter::once(&mut policy.tls).chain(ports).flatten() {
            tls.credential_name.clear();
        }
    }
    rule
}

/// The settings of a traffic policy this proxy does not apply: credentials for TLS to
/// endpoints in a Kubernetes secret (`tls.credentialName` in a rule with a
/// `workloadSelector`: connections fail, see [`OriginTls`]), tunnels, the PROXY protocol
/// and balancing by backend utilization.
fn unapplied(policy: &TrafficPolicy) -> Vec<&'static str> {
    let from_secret = |tls: &Option<ClientTlsSettings>| {
        tls.as_ref().is_some_and(|t| {
            matches!(t.mode, Some(TlsMode::Simple | TlsMode::Mutual))
                && !t.credential_name.is_empty()
        })
    };
    let mut fields = Vec::new();
    if from_secret(&policy.tls)
        || policy
            .port_level_settings
            .iter()
            .any(|p| from_secret(&p.tls))
    {
        fields.push("tls.credentialName");
    }
    let set = [
        (policy.tunnel.is_some(), "tunnel"),
        (policy.proxy_protocol.is_some(), "proxyProtocol"),
        (
            (policy.load_balancer.as_ref()).is_some_and(|lb| lb.backend_utilization.is_some()),
            "loadBalancer.backendUtilization",
        ),
    ];
    fields.extend(
        set.into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, field)| field),
    );
    fields
}

/// Warns, once per rule and field, of the settings of `rule` this proxy does not apply.
fn warn_unapplied(rule: &Object<DestinationRuleSpec>) {
    static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let policies = (rule.spec.traffic_policy.iter()).chain(
        rule.spec
            .subsets
            .iter()
            .filter_map(|s| s.traffic_policy.as_ref()),
    );
    let name = format!("{}/{}", rule.metadata.namespace, rule.metadata.name);
    for field in policies.flat_map(unapplied) {
        let Ok(mut warned) = WARNED.lock() else {
            return;
        };
        if warned.insert(format!("{name} {field}")) {
            tracing::warn!(
                "DestinationRule {name}: trafficPolicy.{field} is not applied by fulcrum-proxy"
            );
        }
    }
}

/// The ports the `portLevelSettings` of a rule's `top` policy and of a subset's `own`
/// name.
fn port_level_ports(top: Option<&TrafficPolicy>, own: Option<&TrafficPolicy>) -> Vec<u16> {
    let mut ports: Vec<u16> = [top, own]
        .into_iter()
        .flatten()
        .flat_map(|p| &p.port_level_settings)
        .filter_map(|p| u16::try_from(p.port.as_ref()?.number).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The policy on `port` of a rule's `top` policy and a subset's `own`, merged as istiod
/// merges them: the rule's own settings for the port over the rule's, the subset's over
/// those, and the subset's for the port over all. Settings for a port replace the load
/// balancer, connection pool, outlier detection and TLS whole, unset ones included.
fn policy_on_port(
    top: Option<&TrafficPolicy>,
    own: Option<&TrafficPolicy>,
    port: u16,
) -> TrafficPolicy {
    let on_port = |policy: &mut TrafficPolicy, of: Option<&TrafficPolicy>| {
        let Some(settings) = of
            .into_iter()
            .flat_map(|p| &p.port_level_settings)
            .find(|p| {
                p.port
                    .as_ref()
                    .is_some_and(|s| u16::try_from(s.number) == Ok(port))
            })
        else {
            return;
        };
        policy.load_balancer = settings.load_balancer.clone();
        policy.connection_pool = settings.connection_pool.clone();
        policy.outlier_detection = settings.outlier_detection.clone();
        policy.tls = settings.tls.clone();
    };
    let mut policy = top.cloned().unwrap_or_default();
    on_port(&mut policy, top);
    let mut policy = merged_policy(Some(&policy), own);
    on_port(&mut policy, own);
    policy
}

/// Whether a rule's `policy` has its service's HTTP/1.1 endpoints spoken to in h2
/// (`h2UpgradePolicy: UPGRADE`, not undone by `useClientProtocol`).
fn upgrades(policy: Option<&TrafficPolicy>) -> bool {
    let http = policy.and_then(|p| p.connection_pool.as_ref()?.http.as_ref());
    http.is_some_and(|h| {
        h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && !h.use_client_protocol
    })
}

/// How a service is balanced under `policy`; `h2`: the service is spoken to in h2;
/// `sans`: the names its ServiceEntry says its endpoints' certificates carry.
fn balance_of(
    policy: Option<&TrafficPolicy>,
    h2: bool,
    sans: &[String],
) -> Option<BalanceSettings> {
    let policy = policy?;
    let mut settings = BalanceSettings {
        outlier: policy
            .outlier_detection
            .as_ref()
            .map(OutlierSettings::from_rule),
        limits: PoolLimits::of(
            policy.connection_pool.as_ref(),
            policy.retry_budget.as_ref(),
            h2,
        ),
        pool: pool_settings(
            policy.connection_pool.as_ref(),
            (policy.tls.as_ref()).and_then(|tls| OriginTls::of(tls, sans)),
        ),
        use_client_protocol: (policy.connection_pool.as_ref())
            .and_then(|p| p.http.as_ref())
            .is_some_and(|h| h.use_client_protocol),
        h2_upgrade: upgrades(Some(policy)),
        ..BalanceSettings::default()
    };
    if let Some(lb) = &policy.load_balancer {
        if let Some(hash) = &lb.consistent_hash {
            // Maglev is served by the same ring: either way, a key keeps its endpoint
            // while the endpoint set does not change.
            settings.policy = LbPolicy::RingHash;
            settings.hash_on = if let Some(header) = &hash.http_header_name {
                Some(HashOn::Header(header.to_ascii_lowercase()))
            } else if let Some(cookie) = &hash.http_cookie {
                Some(HashOn::Cookie {
                    name: cookie.name.clone(),
                    path: cookie.path.clone(),
                    ttl: cookie.ttl.and_then(|t| t.to_std()),
                })
            } else if hash.use_source_ip == Some(true) {
                Some(HashOn::SourceIp)
            } else {
                hash.http_query_parameter_name.clone().map(HashOn::Query)
            };
        } else if let Some(simple) = lb.simple {
            settings.policy = match simple {
                SimpleLb::RoundRobin => LbPolicy::RoundRobin,
                SimpleLb::Random => LbPolicy::Random,
                SimpleLb::Unspecified
                | SimpleLb::LeastConn
                | SimpleLb::LeastRequest
                | SimpleLb::Passthrough => LbPolicy::LeastRequest,
            };
        }
        settings.warmup = warmup_of(lb).filter(|_| {
            matches!(
                settings.policy,
                LbPolicy::RoundRobin | LbPolicy::LeastRequest
            )
        });
    }
    Some(settings)
}

/// A load balancer's `warmup` (else its older `warmupDurationSecs`), with Istio's
/// defaults: a 10% minimum, a linear ramp. None for a zero duration.
fn warmup_of(lb: &LoadBalancerSettings) -> Option<Warmup> {
    let (duration, minimum, aggression) = match (&lb.warmup, lb.warmup_duration_secs) {
        (Some(w), _) => (Some(w.duration), w.minimum_percent, w.aggression),
        (None, duration) => (duration, None, None),
    };
    let duration = duration?.to_std().filter(|d| !d.is_zero())?;
    let minimum = minimum.filter(|p| p.is_finite()).unwrap_or(10.0);
    let aggression = aggression.filter(|a| a.is_finite()).unwrap_or(1.0);
    Some(Warmup {
        duration,
        minimum: (minimum / 100.0).clamp(0.0, 1.0),
        aggression: aggression.max(0.0),
    })
}

/// Whether endpoints on `port` speak h2, as Istio selects a port's protocol: its
/// `protocol` (`HTTP2`, `GRPC`, in any case), else the name's prefix before any `-`
/// (`grpc`, `http2`). gRPC-Web (a name starting `grpc-web`) is HTTP/1.1-compatible, and
/// stays HTTP/1.1.
fn speaks_h2(port: &ServicePort) -> bool {
    let protocol = match port.protocol.as_str() {
        "" if port
            .name
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("grpc-web")) =>
        {
            return false;
        }
        "" => port.name.split('-').next().unwrap_or(""),
        declared => declared,
    };
    protocol.eq_ignore_ascii_case("grpc") || protocol.eq_ignore_ascii_case("http2")
}

impl StaticDiscovery {
    /// The endpoints in `resources` that belong to `cluster` (at `locality`), those named
    /// by DNS without their addresses.
    pub fn from_resources<'a>(
        resources: impl IntoIterator<Item = &'a Resource>,
        cluster: &str,
        locality: &Locality,
    ) -> StaticDiscovery {
        StaticDiscovery::resolving(resources, cluster, locality, &Resolved::default())
    }

    /// [`StaticDiscovery::from_resources`], the endpoints named by DNS (those of a
    /// ServiceEntry whose `resolution` is `DNS` or `DNS_ROUND_ROBIN`, given by name rather
    /// than by IP address) at the addresses `resolved` has for their names: every address
    /// under `DNS`, as Envoy's strict DNS clusters use them, the first under
    /// `DNS_ROUND_ROBIN`. An endpoint belongs to a cluster as any other does, by its
    /// cluster label or locality.
    pub fn resolving<'a>(
        resources: impl IntoIterator<Item = &'a Resource>,
        cluster: &str,
        locality: &Locality,
        resolved: &Resolved,
    ) -> StaticDiscovery {
        let resources: Vec<&Resource> = resources.into_iter().collect();
        let mut dns_names: BTreeSet<String> = BTreeSet::new();
        let workloads: Vec<_> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::WorkloadEntry(we) => Some(we.as_ref()),
                _ => None,
            })
            .collect();
        let mut endpoints: FastMap<String, Vec<Endpoint>> = FastMap::default();
        // Whether each service is spoken to in h2, by its ports (whether or not it has
        // endpoints here).
        let mut speaks_h2_by_host: FastMap<String, bool> = FastMap::default();
        let mut ports_by_host: FastMap<String, Vec<u16>> = FastMap::default();
        // The names its endpoints' certificates carry, for TLS to them.
        let mut sans_by_host: FastMap<String, Vec<String>> = FastMap::default();
        // Wildcard hosts whose names are looked up as requests come, and each name looked
        // up with the wildcard it falls under.
        let mut per_request: BTreeSet<String> = BTreeSet::new();
        let mut under_by_host: FastMap<String, String> = FastMap::default();
        // The names resolved for requests under a wildcard host (`resolved` holds them
        // beside the configuration's own names), by the most specific wildcard of a
        // ServiceEntry that covers them, as a request for one is matched.
        let wildcards: Vec<String> = (resources.iter())
            .filter_map(|r| match r {
                Resource::ServiceEntry(se) => Some(se.spec.hosts.iter()),
                _ => None,
            })
            .flatten()
            .filter(|h| h.starts_with("*."))
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let mut names_under: FastMap<&str, Vec<&str>> = FastMap::default();
        for name in resolved.keys() {
            let covering = (wildcards.iter())
                .filter(|w| name.ends_with(&w[1..]))
                .max_by_key(|w| w.len());
            if let Some(wildcard) = covering {
                names_under.entry(wildcard).or_default().push(name);
            }
        }
        for r in &resources {
            let Resource::ServiceEntry(se) = r else {
                continue;
            };
            let selected = endpoints_of(se, &workloads);
            let resolution = se.spec.resolution();
            // Resolved by DNS with no endpoints of its own: each host is its own endpoint,
            // as istiod makes one service per host with the host as its address. So too
            // under `NONE` (Envoy connects where the application was connecting, to the
            // address it looked the host up at; the application connects to this proxy
            // instead, which looks the host up itself) and `DYNAMIC_DNS`. Such endpoints
            // have no locality, and every cluster reaches them from where it is.
            let hosts_are_endpoints = selected.is_empty()
                && matches!(
                    resolution,
                    Resolution::Dns
                        | Resolution::DnsRoundRobin
                        | Resolution::None
                        | Resolution::DynamicDns
                );
            let by_dns = matches!(
                resolution,
                Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns
            ) || hosts_are_endpoints;
            for written in &se.spec.hosts {
                let host = qualify_host(written, &se.metadata.namespace).to_ascii_lowercase();
                // A wildcard host without endpoints under `NONE` or `DYNAMIC_DNS`: each
                // name under it that a request asks for is looked up then (Envoy's
                // dynamic forward proxy), and is a service of its own once resolved,
                // with the wildcard's ports and policy.
                let mut names: Vec<(String, &str, Option<&str>)> = Vec::new();
                if hosts_are_endpoints
                    && host.starts_with("*.")
                    && matches!(resolution, Resolution::None | Resolution::DynamicDns)
                {
                    per_request.insert(host.clone());
                    for name in names_under.get(host.as_str()).into_iter().flatten() {
                        names.push((name.to_string(), name, Some(written)));
                    }
                }
                names.push((host, written, None));
                for (host, address, under) in names {
                    speaks_h2_by_host.insert(host.clone(), se.spec.ports.iter().any(speaks_h2));
                    if !se.spec.subject_alt_names.is_empty() {
                        sans_by_host.insert(host.clone(), se.spec.subject_alt_names.clone());
                    }
                    if let Some(wildcard) = under {
                        under_by_host.insert(host.clone(), wildcard.to_ascii_lowercase());
                    }
                    let ports = ports_by_host.entry(host.clone()).or_default();
                    for port in &se.spec.ports {
                        if let Ok(number) = u16::try_from(port.number)
                            && !ports.contains(&number)
                        {
                            ports.push(number);
                        }
                    }
                    let itself;
                    let serving: Vec<&WorkloadEntrySpec> = match hosts_are_endpoints {
                        true if address.starts_with('*') => Vec::new(),
                        true => {
                            itself = WorkloadEntrySpec {
                                address: address.to_string(),
                                ..WorkloadEntrySpec::default()
                            };
                            vec![&itself]
                        }
                        false => selected.clone(),
                    };
                    let service = endpoints.entry(host).or_default();
                    for we in serving {
                        let ours = match we.labels.get(CLUSTER_LABEL) {
                            Some(c) => c == cluster,
                            None if hosts_are_endpoints => true,
                            None => we.locality.parse::<Locality>().ok().as_ref() == Some(locality),
                        };
                        if !ours {
                            continue;
                        }
                        let addresses = match we.address.parse::<std::net::IpAddr>() {
                            Ok(ip) => Arc::from([ip]),
                            Err(_) => {
                                let name = we.address.to_ascii_lowercase();
                                if !by_dns || name.is_empty() {
                                    continue;
                                }
                                let found = resolved.get(&name).cloned();
                                // Names looked up for requests are not the configuration's.
                                if under.is_none() {
                                    dns_names.insert(name);
                                }
                                match found {
                                    Some(all) if resolution == Resolution::DnsRoundRobin => {
                                        all.iter().take(1).copied().collect()
                                    }
                                    Some(all) => all,
                                    None => continue,
                                }
                            }
                        };
                        for port in &se.spec.ports {
                            let number = we.ports.get(&port.name).copied().unwrap_or(
                                if port.target_port != 0 {
                                    port.target_port
                                } else {
                                    port.number
                                },
                            );
                            let Ok(number) = u16::try_from(number) else {
                                continue;
                            };
                            for &ip in addresses.iter() {
                                let address = SocketAddr::new(ip, number);
                                let name = address.to_string();
                                service.push(Endpoint {
                                    address,
                                    name_value: HeaderValue::from_str(&name)
                                        .unwrap_or(HeaderValue::from_static("")),
                                    name: name.into(),
                                    labels: Arc::new(we.labels.clone()),
                                    h2: speaks_h2(port),
                                    port: u16::try_from(port.number).unwrap_or(0),
                                    weight: we.weight.max(1),
                                });
                            }
                        }
                    }
                }
            }
        }
        let mut services: FastMap<String, Service> = endpoints
            .into_iter()
            .map(|(host, endpoints)| {
                let service = Service {
                    endpoints: endpoints.into(),
                    ports: ports_by_host.remove(&host).unwrap_or_default(),
                    under: under_by_host.remove(&host),
                    ..Service::default()
                };
                (host, service)
            })
            .collect();
        // Each service takes the rule istiod would give it (its exact host, else the most
        // specific wildcard), with each subset's policy merged over the rule's.
        let read: Vec<Object<DestinationRuleSpec>> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::DestinationRule(dr) => Some(as_a_sidecar_reads(dr)),
                _ => None,
            })
            .collect();
        let mut rules: Vec<_> = read.iter().collect();
        rules.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        for (host, service) in services.iter_mut() {
            // A name looked up for a request takes its wildcard's rule, as the requests
            // for it go to the wildcard's cluster under Istio.
            let ruled = service.under.as_deref().unwrap_or(host);
            let Some(rule) = rule_for_host(&rules, ruled) else {
                continue;
            };
            let top = rule.spec.traffic_policy.as_ref();
            warn_unapplied(rule);
            let h2 = speaks_h2_by_host
                .get(host.as_str())
                .copied()
                .unwrap_or(false);
            let sans = sans_by_host
                .get(host.as_str())
                .map_or(&[][..], Vec::as_slice);
            let balance_of =
                |policy: Option<&TrafficPolicy>| balance_of(policy, h2 || upgrades(policy), sans);
            if let Some(b) = balance_of(top) {
                service.balance = b;
            }
            for port in port_level_ports(top, None) {
                let policy = policy_on_port(top, None, port);
                let b = balance_of(Some(&policy));
                (service.port_balance.entry(String::new()).or_default())
                    .insert(port, b.unwrap_or_default());
            }
            for subset in &rule.spec.subsets {
                let selected: Arc<[Endpoint]> = service
                    .endpoints
                    .iter()
                    .filter(|e| (subset.labels.iter()).all(|(k, v)| e.labels.get(k) == Some(v)))
                    .cloned()
                    .collect();
                let merged = merged_policy(top, subset.traffic_policy.as_ref());
                service.subsets.insert(subset.name.clone(), selected);
                if subset.traffic_policy.is_some()
                    && let Some(b) = balance_of(Some(&merged))
                {
                    service.subset_balance.insert(subset.name.clone(), b);
                }
                let own = subset.traffic_policy.as_ref();
                for port in port_level_ports(top, own) {
                    let policy = policy_on_port(top, own, port);
                    let b = balance_of(Some(&policy));
                    (service.port_balance.entry(subset.name.clone()).or_default())
                        .insert(port, b.unwrap_or_default());
                }
            }
        }
        for service in services.values_mut() {
            service.split_by_port();
        }
        StaticDiscovery {
            services,
            dns_names: dns_names.into_iter().collect(),
            per_request,
        }
    }
}

impl StaticDiscovery {
    /// The endpoint names to resolve by DNS (lower case, sorted).
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// Whether it has wildcard hosts whose names are looked up as requests come.
    pub fn looks_up_names(&self) -> bool {
        !self.per_request.is_empty()
    }

    /// The service named `host`, in any letter case.
    fn service(&self, host: &str) -> Option<&Service> {
        self.services.get(crate::lower_case(host).as_ref())
    }
}

impl Discovery for StaticDiscovery {
    fn endpoints(&self, host: &str, subset: &str) -> Arc<[Endpoint]> {
        match self.service(host) {
            Some(service) => service.endpoints_of(subset),
            None => Arc::new([]),
        }
    }

    fn endpoints_on(&self, host: &str, subset: &str, port: Option<u16>) -> Arc<[Endpoint]> {
        let Some(service) = self.service(host) else {
            return Arc::new([]);
        };
        if service.by_port.is_empty() {
            return service.endpoints_of(subset);
        }
        let port = service.port_for(port);
        (service.by_port.get(subset))
            .and_then(|ports| ports.get(&port?))
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }

    fn balance_on(&self, host: &str, subset: &str, port: Option<u16>) -> &BalanceSettings {
        let Some(service) = self.service(host) else {
            return &DEFAULT_BALANCE;
        };
        if !service.port_balance.is_empty()
            && let Some(port) = service.port_for(port)
            && let Some(settings) = (service.port_balance.get(subset)).and_then(|p| p.get(&port))
        {
            return settings;
        }
        service
            .subset_balance
            .get(subset)
            .unwrap_or(&service.balance)
    }

    fn ports(&self, host: &str) -> Option<&[u16]> {
        let ports = &self.service(host)?.ports;
        (!ports.is_empty()).then_some(ports.as_slice())
    }

    // A name looked up for a request is a service of the wildcard it falls under.
    fn knows(&self, host: &str) -> bool {
        self.service(host).is_some_and(|s| s.under.is_none())
    }

    fn wildcard_for(&self, host: &str) -> Option<&str> {
        let host = crate::lower_case(host);
        (self.services.keys())
            .filter(|name| name.starts_with("*.") && host.ends_with(&name[1..]))
            .max_by_key(|name| name.len())
            .map(String::as_str)
    }

    fn in_use(&self) -> Option<InUse> {
        let mut in_use = InUse::default();
        for service in self.services.values() {
            // Every settings the service's endpoints may be spoken to under, for every
            // endpoint of it: a subset's or a port's own settings over all of them keeps
            // a little more than it must, never less.
            let port_settings = service.port_balance.values().flat_map(|p| p.values());
            let settings: Vec<&Option<Arc<PoolSettings>>> = std::iter::once(&service.balance)
                .chain(service.subset_balance.values())
                .chain(port_settings)
                .map(|b| &b.pool)
                .collect();
            for endpoint in service.endpoints.iter() {
                for pool in &settings {
                    in_use.add(endpoint.address, pool);
                }
            }
        }
        Some(in_use)
    }

    fn resolves_per_request(&self, host: &str) -> bool {
        !self.per_request.is_empty() && self.per_request.contains(crate::lower_case(host).as_ref())
    }

    fn looked_up_under(&self, host: &str) -> Option<&str> {
        self.service(host)?.under.as_deref()
    }

    fn balance(&self, host: &str, subset: &str) -> &BalanceSettings {
        self.service(host).map_or(&DEFAULT_BALANCE, |s| {
            s.subset_balance.get(subset).unwrap_or(&s.balance)
        })
    }

    // Names looked up for requests are neither: they come and go with the requests.
    fn local_services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| !s.endpoints.is_empty() && s.under.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    fn known_services(&self) -> Vec<String> {
        let mut names: Vec<String> = (self.services.iter())
            .filter(|(_, s)| s.under.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use fulcrum_policy::ConfigSet;

    use super::*;

    /// The discovery of cluster `east` (at r1/z1) from `yaml`, which must be valid.
    fn east_of(yaml: &str) -> StaticDiscovery {
        east_resolving(yaml, &[])
    }

    /// [`east_of`], each name of `resolved` resolving to its addresses.
    fn east_resolving(yaml: &str, resolved: &[(&str, &[[u8; 4]])]) -> StaticDiscovery {
        let mut config = ConfigSet::new();
        config.add_text("test.yaml", yaml);
        let errors: Vec<_> = config
            .diagnostics()
            .filter(|d| d.severity == fulcrum_policy::Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let resolved: Resolved = (resolved.iter())
            .map(|(name, ips)| {
                let ips: Arc<[std::net::IpAddr]> = ips.iter().map(|ip| (*ip).into()).collect();
                (name.to_string(), ips)
            })
            .collect();
        let here = "r1/z1".parse().unwrap();
        StaticDiscovery::resolving(config.resources(), "east", &here, &resolved)
    }

    /// The addresses of `host`'s endpoints in `discovery`.
    fn addresses(discovery: &StaticDiscovery, host: &str) -> Vec<String> {
        (discovery.endpoints(host, "").iter())
            .map(|e| e.address.to_string())
            .collect()
    }

    #[test]
    fn endpoints_named_by_dns_are_at_the_addresses_their_names_resolve_to() {
        let entry = |name: &str, resolution: &str, address: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                 metadata: {{name: {name}, namespace: shop}}\nspec:\n  \
                 hosts: [{name}.example]\n  location: MESH_EXTERNAL\n  resolution: {resolution}\n  \
                 ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]\n  \
                 endpoints:\n  - {{address: {address}, locality: r1/z1}}\n---\n"
            )
        };
        let yaml = entry("all", "DNS", "vm.internal")
            + &entry("first", "DNS_ROUND_ROBIN", "VM.internal")
            + &entry("unresolved", "DNS", "later.internal")
            + &entry("ip", "DNS", "127.0.0.9")
            // No endpoints: the host is the endpoint, in every cluster.
            + "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
               metadata: {name: api, namespace: shop}\nspec:\n  hosts: [vm.internal]\n  \
               location: MESH_EXTERNAL\n  resolution: DNS\n  \
               ports: [{number: 443, name: http, protocol: HTTP}]\n";
        let east = east_resolving(&yaml, &[("vm.internal", &[[127, 0, 0, 5], [127, 0, 0, 6]])]);
        let addresses = |host: &str| addresses(&east, host);
        assert_eq!(
            addresses("all.example"),
            ["127.0.0.5:8080", "127.0.0.6:8080"]
        );
        assert_eq!(addresses("first.example"), ["127.0.0.5:8080"]);
        assert!(addresses("unresolved.example").is_empty());
        assert_eq!(addresses("ip.example"), ["127.0.0.9:8080"]);
        assert_eq!(addresses("vm.internal"), ["127.0.0.5:443", "127.0.0.6:443"]);
        assert_eq!(east.dns_names(), ["later.internal", "vm.internal"]);
    }

    /// A ServiceEntry with several hosts and no endpoints is one service per host, each
    /// with its own name as its endpoint (istiod's `convertServiceEntryToInstances`), not
    /// every host's.
    #[test]
    fn each_host_without_endpoints_is_its_own_endpoint() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                    metadata: {name: two, namespace: shop}\nspec:\n  \
                    hosts: [a.internal, b.internal]\n  location: MESH_EXTERNAL\n  \
                    resolution: DNS\n  ports: [{number: 80, name: http, protocol: HTTP}]\n";
        let resolved: [(&str, &[[u8; 4]]); 2] = [
            ("a.internal", &[[127, 0, 0, 1]]),
            ("b.internal", &[[127, 0, 0, 2]]),
        ];
        let east = east_resolving(yaml, &resolved);
        assert_eq!(addresses(&east, "a.internal"), ["127.0.0.1:80"]);
        assert_eq!(addresses(&east, "b.internal"), ["127.0.0.2:80"]);
    }

    /// Names looked up for requests under a wildcard without endpoints are services of
    /// their own, with the wildcard's ports and rule, known as the wildcard's: they are
    /// not reported as services of the mesh, and names under a wildcard that is not
    /// resolved per request are not taken.
    #[test]
    fn names_looked_up_under_a_wildcard_take_its_ports_and_rule() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                    metadata: {name: wild, namespace: shop}\nspec:\n  \
                    hosts: [\"*.wild.example\"]\n  location: MESH_EXTERNAL\n  \
                    ports: [{number: 8080, name: http, protocol: HTTP}]\n---\n\
                    apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                    metadata: {name: fixed, namespace: shop}\nspec:\n  \
                    hosts: [\"*.fixed.example\"]\n  location: MESH_EXTERNAL\n  \
                    resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  \
                    endpoints: [{address: 127.0.0.9, locality: r1/z1}]\n---\n\
                    apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                    metadata: {name: wild, namespace: shop}\nspec:\n  \
                    host: \"*.wild.example\"\n  \
                    trafficPolicy: {loadBalancer: {simple: RANDOM}}\n";
        let resolved: [(&str, &[[u8; 4]]); 2] = [
            ("api.wild.example", &[[127, 0, 0, 3]]),
            ("x.fixed.example", &[[127, 0, 0, 4]]),
        ];
        let east = east_resolving(yaml, &resolved);
        assert!(east.looks_up_names());
        assert!(east.resolves_per_request("*.wild.example"));
        assert!(!east.resolves_per_request("*.fixed.example"));
        assert_eq!(addresses(&east, "api.wild.example"), ["127.0.0.3:8080"]);
        assert_eq!(
            east.looked_up_under("api.wild.example"),
            Some("*.wild.example")
        );
        assert_eq!(
            east.balance("api.wild.example", "").policy,
            LbPolicy::Random,
            "the wildcard's rule"
        );
        assert!(
            !east.knows("api.wild.example"),
            "a service of the wildcard's"
        );
        assert_eq!(
            east.wildcard_for("api.wild.example"),
            Some("*.wild.example")
        );
        assert!(
            !east
                .local_services()
                .iter()
                .any(|s| s == "api.wild.example")
        );
        assert!(
            !east
                .known_services()
                .iter()
                .any(|s| s == "api.wild.example")
        );
        assert!(east.endpoints("x.fixed.example", "").is_empty());
        assert!(east.dns_names().is_empty(), "{:?}", east.dns_names());
    }

    fn sample() -> ConfigSet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/config");
        let mut config = ConfigSet::new();
        config.add_path(&dir);
        config
    }

    #[test]
    fn a_proxy_sees_only_its_own_clusters_endpoints() {
        let config = sample();
        let east = StaticDiscovery::from_resources(
            config.resources(),
            "us-east",
            &"us-east/us-east-1a".parse().unwrap(),
        );
        let host = "checkout.shop.svc.cluster.local";
        let ports: Vec<u16> = east
            .endpoints(host, "")
            .iter()
            .map(|e| e.address.port())
            .collect();
        assert_eq!(ports, vec![18001, 18002]);
        assert!(east.knows(host));
        assert!(!east.knows("nowhere.example"));
        let central = StaticDiscovery::from_resources(
            config.resources(),
            "us-central",
            &"us-central/us-central-1a".parse().unwrap(),
        );
        let ports: Vec<u16> = central
            .endpoints(host, "")
            .iter()
            .map(|e| e.address.port())
            .collect();
        assert_eq!(ports, vec![18101]);
    }

    #[test]
    fn a_port_speaks_h2_when_its_protocol_or_name_says_grpc_or_http2() {
        let port = |name: &str, protocol: &str| ServicePort {
            number: 80,
            name: name.into(),
            protocol: protocol.into(),
            target_port: 0,
        };
        for (name, protocol, h2) in [
            ("api", "GRPC", true),
            ("api", "grpc", true),
            ("api", "HTTP2", true),
            ("api", "HTTP", false),
            ("api", "GRPC-WEB", false),
            ("grpc", "", true),
            ("grpc-api", "", true),
            ("http2-api", "", true),
            ("grpc-web", "", false),
            ("GRPC-Web-api", "", false),
            ("grpcweb", "", false),
            ("http", "", false),
            // A declared protocol wins over the name.
            ("grpc-api", "HTTP", false),
        ] {
            assert_eq!(speaks_h2(&port(name, protocol)), h2, "{name} {protocol}");
        }
    }

    #[test]
    fn subsets_select_by_label_and_the_rule_names_the_balancer() {
        let config = sample();
        let east = StaticDiscovery::from_resources(
            config.resources(),
            "us-east",
            &"us-east/us-east-1a".parse().unwrap(),
        );
        let host = "checkout.shop.svc.cluster.local";
        let v2: Vec<u16> = east
            .endpoints(host, "v2")
            .iter()
            .map(|e| e.address.port())
            .collect();
        assert_eq!(v2, vec![18002]);
        assert!(east.endpoints(host, "no-such-subset").is_empty());
        assert_eq!(east.balance(host, "").policy, LbPolicy::LeastRequest);
    }

    #[test]
    fn a_workload_selector_takes_the_matching_workload_entries_of_its_namespace() {
        let mut config = ConfigSet::new();
        config.add_text(
            "workloads.yaml",
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: shop}
spec:
  hosts: [vms.shop.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: vms}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: vms, topology.istio.io/cluster: east}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-2, namespace: shop}
spec: {address: 10.0.0.2, ports: {http: 9090}, labels: {app: vms, version: v2, topology.istio.io/cluster: east}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other-app, namespace: shop}
spec: {address: 10.0.0.3, labels: {app: db, topology.istio.io/cluster: east}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other-namespace, namespace: billing}
spec: {address: 10.0.0.4, labels: {app: vms, topology.istio.io/cluster: east}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other-cluster, namespace: shop}
spec: {address: 10.0.0.5, labels: {app: vms, topology.istio.io/cluster: west}}
"#,
        );
        let errors: Vec<String> = config
            .diagnostics()
            .filter(|d| d.severity == fulcrum_policy::Severity::Error)
            .map(|d| d.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let east =
            StaticDiscovery::from_resources(config.resources(), "east", &"r1/z1".parse().unwrap());
        let endpoints: Vec<String> = east
            .endpoints("vms.shop.example", "")
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(endpoints, vec!["10.0.0.1:8080", "10.0.0.2:9090"]);
    }

    #[test]
    fn a_warmup_is_read_with_istios_defaults_for_the_balancers_that_ramp() {
        let rule = |host: &str, lb: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                 metadata: {{name: {host}, namespace: shop}}\nspec:\n  hosts: [{host}.example]\n  \
                 location: MESH_INTERNAL\n  resolution: STATIC\n  \
                 ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n  \
                 - {{address: 10.0.0.1, locality: r1/z1}}\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 metadata: {{name: {host}, namespace: shop}}\n\
                 spec: {{host: {host}.example, trafficPolicy: {{loadBalancer: {lb}}}}}\n---\n"
            )
        };
        let east = east_of(&[
                rule("full", "{simple: ROUND_ROBIN, warmup: {duration: 30s, minimumPercent: 25, aggression: 2}}"),
                rule("defaults", "{warmup: {duration: 1m}}"),
                rule("older", "{simple: LEAST_REQUEST, warmupDurationSecs: 20s}"),
                rule("hashed", "{consistentHash: {httpHeaderName: x-user}, warmup: {duration: 1m}}"),
            ]
            .concat());
        let warmup = |host: &str| east.balance(host, "").warmup;
        let seconds = std::time::Duration::from_secs;
        assert_eq!(
            warmup("full.example"),
            Some(Warmup {
                duration: seconds(30),
                minimum: 0.25,
                aggression: 2.0
            })
        );
        assert_eq!(
            warmup("defaults.example"),
            Some(Warmup {
                duration: seconds(60),
                minimum: 0.1,
                aggression: 1.0
            })
        );
        assert_eq!(
            warmup("older.example"),
            Some(Warmup {
                duration: seconds(20),
                minimum: 0.1,
                aggression: 1.0
            })
        );
        assert_eq!(
            warmup("hashed.example"),
            None,
            "no ramp for a consistent hash"
        );
    }

    #[test]
    fn a_service_with_several_ports_gives_each_port_its_own_endpoints() {
        let here = east_of(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 9090, name: grpc, protocol: GRPC}
  endpoints:
  - {address: 10.0.0.1, ports: {http: 8080, grpc: 9000}, labels: {version: v1}, locality: r1/z1}
  - {address: 10.0.0.2, ports: {http: 8080, grpc: 9000}, labels: {version: v2}, locality: r1/z1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: admin, namespace: shop}
spec:
  hosts: [admin.shop.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8443, name: http-admin, protocol: HTTP}
  - {number: 9443, name: http-metrics, protocol: HTTP}
  endpoints:
  - {address: 10.0.0.3, locality: r1/z1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.example
  subsets: [{name: v2, labels: {version: v2}}]
"#,
        );
        let on = |host: &str, subset: &str, port: Option<u16>| -> Vec<String> {
            let endpoints = here.endpoints_on(host, subset, port);
            endpoints.iter().map(|e| e.name.to_string()).collect()
        };
        assert_eq!(
            here.endpoints("web.shop.example", "").len(),
            4,
            "every port"
        );
        assert_eq!(
            on("web.shop.example", "", Some(9090)),
            ["10.0.0.1:9000", "10.0.0.2:9000"]
        );
        // No port named, or one not declared: port 80.
        assert_eq!(
            on("web.shop.example", "", None),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        assert_eq!(
            on("web.shop.example", "", Some(81)),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        assert_eq!(on("web.shop.example", "v2", Some(9090)), ["10.0.0.2:9000"]);
        let grpc = here.endpoints_on("web.shop.example", "", Some(9090));
        assert!(grpc.iter().all(|e| e.h2 && e.port == 9090));
        // Without a port 80, the first declared.
        assert_eq!(on("admin.shop.example", "", None), ["10.0.0.3:8443"]);
        assert_eq!(on("admin.shop.example", "", Some(9443)), ["10.0.0.3:9443"]);
        assert!(on("nowhere.example", "", None).is_empty());
    }

    /// A service on two ports (80 and 9090) with one endpoint, labelled `version: v2`;
    /// a DestinationRule for it follows.
    const WEB_ON_TWO_PORTS: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 9090, name: http-api, protocol: HTTP}
  endpoints:
  - {address: 10.0.0.1, labels: {version: v2}, locality: r1/z1}
---
"#;

    #[test]
    fn port_level_settings_replace_the_rules_on_their_port() {
        let here = east_of(&format!(
            "{WEB_ON_TWO_PORTS}{}",
            r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.example
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: RANDOM}
      connectionPool: {http: {http2MaxRequests: 7}}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 3}
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: LEAST_REQUEST}
"#,
        ));
        let on =
            |subset: &str, port: Option<u16>| here.balance_on("web.shop.example", subset, port);
        assert_eq!(on("", Some(80)).policy, LbPolicy::RoundRobin);
        assert_eq!(on("", None).policy, LbPolicy::RoundRobin, "port 80");
        let api = on("", Some(9090));
        assert_eq!(
            (api.policy, api.limits.requests),
            (LbPolicy::Random, Some(7))
        );
        // The rule's settings for the port, then the subset's own over them.
        let v2_api = on("v2", Some(9090));
        assert_eq!(
            (v2_api.policy, v2_api.limits.requests),
            (LbPolicy::Random, Some(7))
        );
        assert_eq!(v2_api.outlier.as_ref().map(|o| o.consecutive_5xx), Some(3));
        // The subset's settings for its port replace the rest whole.
        let v2_web = on("v2", None);
        assert_eq!(v2_web.policy, LbPolicy::LeastRequest);
        assert_eq!(
            (v2_web.outlier.as_ref(), v2_web.limits.requests),
            (None, None)
        );
        // Without a port, the rule's own.
        assert_eq!(
            here.balance("web.shop.example", "").policy,
            LbPolicy::RoundRobin
        );
    }

    #[test]
    fn the_endpoints_in_use_are_each_under_every_settings_its_services_give_it() {
        let here = east_of(&format!(
            "{WEB_ON_TWO_PORTS}{}",
            r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.example
  trafficPolicy:
    portLevelSettings:
    - port: {number: 9090}
      connectionPool: {http: {maxRequestsPerConnection: 10}}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {tcp: {connectTimeout: 2s}}
"#,
        ));
        let in_use = here.in_use().expect("a static discovery says");
        let web: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let pool = |subset: &str, port| {
            here.balance_on("web.shop.example", subset, port)
                .pool
                .clone()
        };
        let (v2, api) = (pool("v2", Some(80)), pool("", Some(9090)));
        assert!(v2.is_some() && api.is_some(), "{v2:?} {api:?}");
        assert!(in_use.fits(web, &POOL_DEFAULTS), "the whole service's");
        assert!(in_use.fits(web, v2.as_deref().unwrap()), "its subset's");
        assert!(in_use.fits("10.0.0.1:9090".parse().unwrap(), api.as_deref().unwrap()));
        let other = PoolSettings {
            connect_timeout: Some(std::time::Duration::from_secs(9)),
            ..POOL_DEFAULTS.clone()
        };
        assert!(!in_use.fits(web, &other), "settings no rule gives");
        assert!(
            !in_use.fits("10.0.0.2:80".parse().unwrap(), &POOL_DEFAULTS),
            "no endpoint"
        );
    }

    #[test]
    fn the_settings_the_proxy_does_not_apply_are_named() {
        let mut config = ConfigSet::new();
        config.add_text(
            "unapplied.yaml",
            r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mtls, namespace: shop}
spec:
  host: mtls.shop.example
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egress, namespace: shop}
spec:
  host: egress.shop.example
  trafficPolicy:
    proxyProtocol: {version: V1}
    tls: {mode: SIMPLE}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE, credentialName: api-cert}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: selected, namespace: shop}
spec:
  host: selected.shop.example
  workloadSelector: {matchLabels: {app: web}}
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: api-cert}
"#,
        );
        let errors: Vec<_> = config
            .diagnostics()
            .filter(|d| d.severity == fulcrum_policy::Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let unapplied_by: BTreeMap<String, Vec<&str>> = config
            .resources()
            .filter_map(|r| match r {
                Resource::DestinationRule(dr) => Some((
                    dr.metadata.name.clone(),
                    (as_a_sidecar_reads(dr).spec.traffic_policy.as_ref())
                        .map(unapplied)
                        .unwrap_or_default(),
                )),
                _ => None,
            })
            .collect();
        // The mesh's own mutual TLS is what the proxy does, and TLS to endpoints from
        // files is originated: nothing to say of them.
        assert_eq!(unapplied_by["mtls"], Vec::<&str>::new());
        // A sidecar reads a secret only under a rule with a workloadSelector; elsewhere
        // it keeps to the files, as the proxy does.
        assert_eq!(unapplied_by["egress"], ["proxyProtocol"]);
        assert_eq!(unapplied_by["selected"], ["tls.credentialName"]);
    }

    #[test]
    fn connection_pool_limits_are_read_per_service_and_subset() {
        let east = east_of(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1, labels: {version: v1, topology.istio.io/cluster: east}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rpc, namespace: shop}
spec:
  hosts: [rpc.shop.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 90, name: grpc, protocol: GRPC}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.example
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 25ms, maxConnectionDuration: 10m, tcpKeepalive: {time: 30s, probes: 3}}
      http: {http1MaxPendingRequests: 2, http2MaxRequests: 3, maxRetries: 4, maxRequestsPerConnection: 5, idleTimeout: 30s, maxConcurrentStreams: 6}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 10}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: rpc, namespace: shop}
spec:
  host: rpc.shop.example
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 2, http2MaxRequests: 3}
"#,
        );
        let limits = |host: &str, subset: &str| east.balance(host, subset).limits;
        let all = PoolLimits {
            requests: Some(3),
            connections: Some(1),
            pending: Some(2),
            retries: Some(4),
            retry_budget: None,
        };
        assert_eq!(limits("web.shop.example", ""), all);
        assert_eq!(
            east.balance("web.shop.example", "").pool.as_deref(),
            Some(&PoolSettings {
                connect_timeout: Some(std::time::Duration::from_millis(25)),
                max_requests_per_connection: Some(5),
                idle_timeout: Some(std::time::Duration::from_secs(30)),
                max_connection_duration: Some(std::time::Duration::from_secs(600)),
                keepalive: Some(Keepalive {
                    time: Some(std::time::Duration::from_secs(30)),
                    interval: None,
                    probes: Some(3),
                }),
                max_concurrent_streams: Some(6),
                tls: None,
            })
        );
        assert_eq!(east.balance("rpc.shop.example", "").pool, None);
        // The subset's own setting over the rule's.
        assert_eq!(
            limits("web.shop.example", "v1").connections,
            Some(10),
            "{:?}",
            limits("web.shop.example", "v1")
        );
        // Over h2 one connection carries every request: only the request limit binds.
        assert_eq!(
            limits("rpc.shop.example", ""),
            PoolLimits {
                requests: Some(3),
                ..PoolLimits::default()
            }
        );
        assert!(!limits("nowhere.example", "").any());
    }
    #[test]
    fn a_retry_budget_takes_istiods_defaults_and_rounds_its_share_down() {
        let budget = |percent: Option<f64>, min_retry_concurrency: u32| {
            RetryBudgetLimit::of(&RetryBudget {
                percent,
                min_retry_concurrency,
                ..RetryBudget::default()
            })
        };
        // Unset: what istiod writes, 0.2 (per cent, as Envoy reads it) and 3.
        let unset = budget(None, 0);
        assert_eq!(
            unset,
            RetryBudgetLimit {
                per_million: 2_000,
                min_concurrency: 3
            }
        );
        assert_eq!(unset.allowed(0), 3);
        assert_eq!(unset.allowed(1_999), 3);
        assert_eq!(unset.allowed(2_000), 4);
        let set = budget(Some(25.0), 1);
        assert_eq!((set.allowed(3), set.allowed(4), set.allowed(11)), (1, 1, 2));
        assert_eq!(budget(Some(12.5), 0).allowed(8), 3);
        assert_eq!(budget(Some(12.5), 0).allowed(40), 5);
    }
}
