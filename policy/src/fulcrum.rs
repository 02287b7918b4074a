//! Fulcrum's own kinds, `fulcrum.dev/v1alpha1`: `FailoverPolicy` (when and how fast a
//! locality leaves and rejoins service) and `MeshCluster` (a cluster of the mesh: its
//! locality, network and east-west gateways).
//!
//! Every optional field has a named default below; [`FailoverPolicySpec::settings`] applies
//! them, so the engine never reads a raw `Option`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decode::{Decode, Decoder, model};
use crate::duration::Duration;
use crate::locality::Locality;
use crate::percent::Percent;
use crate::yaml::{Node, Resolved, Value};

/// The API group of Fulcrum's kinds.
pub const GROUP: &str = "fulcrum.dev";
/// The served version of [`GROUP`].
pub const VERSION: &str = "v1alpha1";

/// Automatic failover is on unless a policy turns it off.
pub const DEFAULT_AUTO_FAILOVER: bool = true;
/// Error rates are measured over the last 10 seconds.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// A rate counts only once the window holds at least 20 requests.
pub const DEFAULT_MIN_REQUEST_VOLUME: u32 = 20;
/// A locality degrades when at least half of its requests fail (per signal).
pub const DEFAULT_DEGRADE_THRESHOLD: Percent = Percent::from_percent(50);
/// A degraded locality may recover once fewer than 10% of its requests fail (per signal).
pub const DEFAULT_RECOVER_THRESHOLD: Percent = Percent::from_percent(10);
/// Failure must persist this long before a locality is degraded: fast, but not one blip.
pub const DEFAULT_DEGRADE_AFTER: Duration = Duration::from_secs(2);
/// Health must persist this long before traffic starts to return (the hold-down).
pub const DEFAULT_RECOVER_AFTER: Duration = Duration::from_secs(30);
/// After the hold-down, a locality regains at most 10% of its share per second.
pub const DEFAULT_RAMP_STEP: Percent = Percent::from_percent(10);
/// At most half of a service's localities (at least one) are drained at once.
pub const DEFAULT_MAX_DRAINED: IntOrPercent = IntOrPercent::Percent(Percent::from_percent(50));
/// The last healthy locality is never drained.
pub const DEFAULT_NEVER_DRAIN_LAST: bool = true;

/// Shortest window accepted; shorter windows hold too few requests to mean anything.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest window accepted.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);
/// Longest `degradeAfter` / `recoverAfter` accepted.
pub const MAX_DAMPING: Duration = Duration::from_secs(3600);

model! {
    /// The `spec` of a FailoverPolicy.
    pub struct FailoverPolicySpec {
        /// The service the policy applies to, as in a DestinationRule's `host`.
        required host: String = "host",
        /// Whether Fulcrum moves traffic on its own (manual drains always work).
        optional auto_failover: Option<bool> = "autoFailover",
        /// The sliding window error rates are measured over.
        optional window: Option<Duration> = "window",
        /// Requests a window must hold before its error rates count.
        optional min_request_volume: Option<u32> = "minRequestVolume",
        /// Error rates that degrade a locality, and that let it recover.
        optional thresholds: Option<Thresholds> = "thresholds",
        /// How fast localities leave and rejoin service.
        optional damping: Option<Damping> = "damping",
        /// What each locality can take, so spill never overloads it.
        optional capacity: Vec<LocalityCapacity> = "capacity",
        /// Limits on how much may be drained at once.
        optional guards: Option<Guards> = "guards",
    }
}

model! {
    /// Degrade and recover thresholds.
    pub struct Thresholds {
        /// A locality degrades when any signal reaches its threshold.
        optional degrade: Option<SignalThresholds> = "degrade",
        /// A degraded locality may recover when every signal is below its threshold.
        optional recover: Option<SignalThresholds> = "recover",
    }
}

model! {
    /// One threshold per failure signal, as a share of requests.
    pub struct SignalThresholds {
        /// Responses with status 500-599.
        optional http_5xx: Option<Percent> = "http5xx",
        /// Responses with status 502, 503 or 504.
        optional gateway_errors: Option<Percent> = "gatewayErrors",
        /// Connect failures, resets and timeouts (no response at all).
        optional connect_failures: Option<Percent> = "connectFailures",
    }
}

model! {
    /// Damping: degrade fast, recover slow.
    pub struct Damping {
        /// How long failure must persist before the locality is degraded.
        optional degrade_after: Option<Duration> = "degradeAfter",
        /// How long health must persist before traffic starts to return.
        optional recover_after: Option<Duration> = "recoverAfter",
        /// The most share a recovering locality regains per second.
        optional ramp_step: Option<Percent> = "rampStep",
    }
}

model! {
    /// What one locality can take.
    pub struct LocalityCapacity {
        /// The locality (`region/zone`, or `region/zone/subzone`).
        required locality: Locality = "locality",
        /// Requests per second it can serve.
        optional max_requests_per_second: Option<u64> = "maxRequestsPerSecond",
        /// Largest share of the service's traffic it may receive.
        optional max_share: Option<Percent> = "maxShare",
    }
}

model! {
    /// Blast-radius guards.
    pub struct Guards {
        /// Most localities drained at once: a count (`1`) or a share (`50%`, rounded down,
        /// at least one).
        optional max_drained: Option<IntOrPercent> = "maxDrained",
        /// Never drain the last locality that is still healthy.
        optional never_drain_last: Option<bool> = "neverDrainLast",
    }
}

/// A count or a share, as Kubernetes writes `maxUnavailable`: `1` or `"25%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntOrPercent {
    /// A count.
    Int(u32),
    /// A share.
    Percent(Percent),
}

impl Default for IntOrPercent {
    fn default() -> Self {
        IntOrPercent::Int(0)
    }
}

impl IntOrPercent {
    /// The count this means out of `total`: shares round down but never below one.
    pub fn resolve(self, total: u32) -> u32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(total) * u64::from(p.basis_points()) / 10_000;
                u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
            }
        }
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Int(n) => serializer.serialize_u32(*n),
            IntOrPercent::Percent(p) => p.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(n) => Ok(IntOrPercent::Int(n)),
            Raw::Text(t) => t
                .parse()
                .map(IntOrPercent::Percent)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Decode for IntOrPercent {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        match &node.value {
            Value::Scalar(s) => match s.resolve() {
                Resolved::Int(_) => IntOrPercent::Int(u32::decode(node, d)),
                Resolved::Str(text) if text.ends_with('%') => match text.parse() {
                    Ok(p) => IntOrPercent::Percent(p),
                    Err(e) => {
                        d.error(node.mark, format!("{e}"));
                        IntOrPercent::default()
                    }
                },
                _ => {
                    d.error(
                        node.mark,
                        format!(
                            "expected a count such as 1 or a share such as \"50%\", found {}",
                            node.describe()
                        ),
                    );
                    IntOrPercent::default()
                }
            },
            _ => {
                d.error(
                    node.mark,
                    format!(
                        "expected a count such as 1 or a share such as \"50%\", found {}",
                        node.describe()
                    ),
                );
                IntOrPercent::default()
            }
        }
    }
}

/// One threshold per failure signal, with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalLimits {
    /// Share of 5xx responses.
    pub http_5xx: Percent,
    /// Share of 502/503/504 responses.
    pub gateway_errors: Percent,
    /// Share of connect failures, resets and timeouts.
    pub connect_failures: Percent,
}

impl SignalLimits {
    fn from_spec(spec: Option<&SignalThresholds>, default: Percent) -> SignalLimits {
        let get = |f: fn(&SignalThresholds) -> Option<Percent>| spec.and_then(f).unwrap_or(default);
        SignalLimits {
            http_5xx: get(|s| s.http_5xx),
            gateway_errors: get(|s| s.gateway_errors),
            connect_failures: get(|s| s.connect_failures),
        }
    }
}

/// A FailoverPolicy with every default applied: what the engine reads.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverSettings {
    /// See [`DEFAULT_AUTO_FAILOVER`].
    pub auto_failover: bool,
    /// See [`DEFAULT_WINDOW`].
    pub window: Duration,
    /// See [`DEFAULT_MIN_REQUEST_VOLUME`].
    pub min_request_volume: u32,
    /// See [`DEFAULT_DEGRADE_THRESHOLD`].
    pub degrade: SignalLimits,
    /// See [`DEFAULT_RECOVER_THRESHOLD`].
    pub recover: SignalLimits,
    /// See [`DEFAULT_DEGRADE_AFTER`].
    pub degrade_after: Duration,
    /// See [`DEFAULT_RECOVER_AFTER`].
    pub recover_after: Duration,
    /// See [`DEFAULT_RAMP_STEP`].
    pub ramp_step: Percent,
    /// Declared capacities, in the order written.
    pub capacity: Vec<LocalityCapacity>,
    /// See [`DEFAULT_MAX_DRAINED`].
    pub max_drained: IntOrPercent,
    /// See [`DEFAULT_NEVER_DRAIN_LAST`].
    pub never_drain_last: bool,
}

impl Default for FailoverSettings {
    /// The settings of a service that has no FailoverPolicy.
    fn default() -> Self {
        FailoverPolicySpec::default().settings()
    }
}

impl FailoverPolicySpec {
    /// The policy with every default applied.
    pub fn settings(&self) -> FailoverSettings {
        let thresholds = self.thresholds.as_ref();
        let damping = self.damping.as_ref();
        let guards = self.guards.as_ref();
        FailoverSettings {
            auto_failover: self.auto_failover.unwrap_or(DEFAULT_AUTO_FAILOVER),
            window: self.window.unwrap_or(DEFAULT_WINDOW),
            min_request_volume: self
                .min_request_volume
                .unwrap_or(DEFAULT_MIN_REQUEST_VOLUME),
            degrade: SignalLimits::from_spec(
                thresholds.and_then(|t| t.degrade.as_ref()),
                DEFAULT_DEGRADE_THRESHOLD,
            ),
            recover: SignalLimits::from_spec(
                thresholds.and_then(|t| t.recover.as_ref()),
                DEFAULT_RECOVER_THRESHOLD,
            ),
            degrade_after: damping
                .and_then(|d| d.degrade_after)
                .unwrap_or(DEFAULT_DEGRADE_AFTER),
            recover_after: damping
                .and_then(|d| d.recover_after)
                .unwrap_or(DEFAULT_RECOVER_AFTER),
            ramp_step: damping
                .and_then(|d| d.ramp_step)
                .unwrap_or(DEFAULT_RAMP_STEP),
            capacity: self.capacity.clone(),
            max_drained: guards
                .and_then(|g| g.max_drained)
                .unwrap_or(DEFAULT_MAX_DRAINED),
            never_drain_last: guards
                .and_then(|g| g.never_drain_last)
                .unwrap_or(DEFAULT_NEVER_DRAIN_LAST),
        }
    }
}

model! {
    /// The `spec` of a MeshCluster.
    pub struct MeshClusterSpec {
        /// The cluster's name in the mesh (its proxies' `--cluster`); `metadata.name` when
        /// unset.
        optional cluster_name: String = "clusterName",
        /// Where the cluster runs: `region/zone`, or `region/zone/subzone`.
        required locality: Locality = "locality",
        /// The network the cluster's endpoints are on.
        optional network: String = "network",
        /// Addresses other clusters reach this cluster's east-west listener on.
        optional east_west_gateways: Vec<GatewayAddress> = "eastWestGateways",
    }
}

impl MeshClusterSpec {
    /// The cluster's name in the mesh: `clusterName`, or the object's `metadata.name`.
    pub fn name<'a>(&'a self, metadata_name: &'a str) -> &'a str {
        if self.cluster_name.is_empty() {
            metadata_name
        } else {
            &self.cluster_name
        }
    }
}

model! {
    /// An east-west gateway address.
    pub struct GatewayAddress {
        /// IP address or DNS name.
        required address: String = "address",
        /// Port.
        required port: u32 = "port",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_policy_gets_every_documented_default() {
        let s = FailoverSettings::default();
        assert!(s.auto_failover);
        assert_eq!(s.window, Duration::from_secs(10));
        assert_eq!(s.min_request_volume, 20);
        assert_eq!(s.degrade.http_5xx, Percent::from_percent(50));
        assert_eq!(s.recover.connect_failures, Percent::from_percent(10));
        assert_eq!(s.degrade_after, Duration::from_secs(2));
        assert_eq!(s.recover_after, Duration::from_secs(30));
        assert_eq!(s.ramp_step, Percent::from_percent(10));
        assert_eq!(
            s.max_drained,
            IntOrPercent::Percent(Percent::from_percent(50))
        );
        assert!(s.never_drain_last);
    }

    #[test]
    fn max_drained_shares_round_down_but_never_to_zero() {
        let half = IntOrPercent::Percent(Percent::from_percent(50));
        assert_eq!(half.resolve(3), 1);
        assert_eq!(half.resolve(4), 2);
        assert_eq!(half.resolve(1), 1);
        assert_eq!(IntOrPercent::Int(2).resolve(5), 2);
    }
}
