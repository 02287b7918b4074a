//! Outlier detection, as a DestinationRule's `outlierDetection` asks and Envoy does it:
//! an endpoint that answers `consecutive5xxErrors` 5xx in a row (or
//! `consecutiveGatewayErrors` 502/503/504 in a row) is ejected for `baseEjectionTime` x the
//! times it has been ejected (capped at 300 s), while no more than `maxEjectionPercent` of
//! the endpoints are out (at least one may always be). A failure to connect, a reset or a
//! timeout counts as a 503, as Envoy counts local-origin errors when they are not split.
//! A success resets the counts; the multiplier drops by one per `interval` without an
//! ejection. Time comes in as an argument: no clock here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::FastMap;
use fulcrum_policy::istio::OutlierDetection;

/// Istio's defaults.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Base ejection time.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Envoy's cap on one ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Share of endpoints that may be out.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// How often the multiplier decays.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The detector's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSettings {
    /// 5xx in a row that eject (0: off).
    pub consecutive_5xx: u32,
    /// 502/503/504 in a row that eject (0: off).
    pub consecutive_gateway: u32,
    /// One ejection's base length.
    pub base_ejection: Duration,
    /// Most endpoints out at once, in percent.
    pub max_ejection_percent: u32,
    /// The multiplier's decay period.
    pub interval: Duration,
    /// Below this share of usable endpoints, in percent, ejections are set aside and
    /// every endpoint is used (`minHealthPercent`, Envoy's panic threshold; 0: never).
    pub min_health_percent: u32,
    /// With `splitExternalLocalOriginErrors`: the failures to reach an endpoint (no
    /// connection, a reset, a timeout) in a row that eject it
    /// (`consecutiveLocalOriginFailures`, 5 by default), counted apart from its answers'
    /// 5xx. Without, such a failure counts as a 503.
    pub local_origin: Option<u32>,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
            consecutive_gateway: 0,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            interval: DEFAULT_INTERVAL,
            min_health_percent: 0,
            local_origin: None,
        }
    }
}

impl OutlierSettings {
    /// From a DestinationRule's `outlierDetection`. The older `consecutiveErrors` counts
    /// gateway errors (502, 503, 504) alone, as istiod reads it: it sets the gateway
    /// detector's threshold and turns the 5xx detector off, unless the newer fields say
    /// otherwise.
    pub fn from_rule(o: &OutlierDetection) -> OutlierSettings {
        let d = OutlierSettings::default();
        let positive = |v: i32| u32::try_from(v).ok();
        let older = positive(o.consecutive_errors).filter(|v| *v > 0);
        OutlierSettings {
            consecutive_5xx: match (o.consecutive_5xx_errors, older) {
                (Some(n), _) => n,
                (None, Some(_)) => 0,
                (None, None) => d.consecutive_5xx,
            },
            consecutive_gateway: o.consecutive_gateway_errors.or(older).unwrap_or(0),
            base_ejection: o
                .base_ejection_time
                .and_then(|t| t.to_std())
                .unwrap_or(d.base_ejection),
            max_ejection_percent: positive(o.max_ejection_percent)
                .filter(|v| *v > 0)
                .unwrap_or(d.max_ejection_percent)
                .min(100),
            interval: o.interval.and_then(|t| t.to_std()).unwrap_or(d.interval),
            min_health_percent: positive(o.min_health_percent).unwrap_or(0).min(100),
            local_origin: o
                .split_external_local_origin_errors
                .then(|| o.consecutive_local_origin_failures.unwrap_or(5)),
        }
    }
}

/// What one try came to, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// An answer with this status.
    Status(u16),
    /// No answer: connect failure, reset or timeout (counted as a 503).
    LocalFailure,
}

#[derive(Debug, Clone, Default)]
struct EndpointHealth {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    last_ejection_end: Option<Instant>,
}

/// Outlier state of one service's endpoints.
#[derive(Debug, Clone, Default)]
pub struct OutlierDetector {
    settings: OutlierSettings,
    endpoints: FastMap<SocketAddr, EndpointHealth>,
}

impl OutlierDetector {
    /// A detector with `settings`.
    pub fn new(settings: OutlierSettings) -> OutlierDetector {
        OutlierDetector {
            settings,
            endpoints: FastMap::default(),
        }
    }

    /// Whether `endpoint` is ejected at `now`.
    pub fn is_ejected(&self, endpoint: SocketAddr, now: Instant) -> bool {
        self.endpoints
            .get(&endpoint)
            .and_then(|h| h.ejected_until)
            .is_some_and(|until| now < until)
    }

    /// How many endpoints are ejected at `now`.
    pub fn ejected(&self, now: Instant) -> usize {
        self.endpoints
            .values()
            .filter(|h| h.ejected_until.is_some_and(|u| now < u))
            .count()
    }

    /// Counts `outcome` for `endpoint` (one of `total` endpoints). Returns how long it is
    /// ejected for when this ejects it.
    pub fn record(
        &mut self,
        endpoint: SocketAddr,
        outcome: TryOutcome,
        total: usize,
        now: Instant,
    ) -> Option<Duration> {
        let s = &self.settings;
        let health = self.endpoints.entry(endpoint).or_default();
        if health.ejected_until.is_some_and(|u| now >= u) {
            health.ejected_until = None;
        }
        let status = match (outcome, s.local_origin) {
            (TryOutcome::Status(status), _) => {
                // It was reached.
                health.consecutive_local = 0;
                status
            }
            (TryOutcome::LocalFailure, None) => 503,
            // Counted apart from the answers' 5xx.
            (TryOutcome::LocalFailure, Some(most)) => {
                health.consecutive_local += 1;
                let tripped = most > 0 && health.consecutive_local >= most;
                if !tripped || health.ejected_until.is_some() {
                    return None;
                }
                return self.eject(endpoint, total, now);
            }
        };
        if !(500..600).contains(&status) {
            health.consecutive_5xx = 0;
            health.consecutive_gateway = 0;
            return None;
        }
        health.consecutive_5xx += 1;
        if matches!(status, 502..=504) {
            health.consecutive_gateway += 1;
        } else {
            health.consecutive_gateway = 0;
        }
        let tripped = (s.consecutive_5xx > 0 && health.consecutive_5xx >= s.consecutive_5xx)
            || (s.consecutive_gateway > 0 && health.consecutive_gateway >= s.consecutive_gateway);
        if !tripped || health.ejected_until.is_some() {
            return None;
        }
        self.eject(endpoint, total, now)
    }

    /// Ejects `endpoint` (one of `total`) at `now`, unless as many are out as may be;
    /// returns for how long.
    fn eject(&mut self, endpoint: SocketAddr, total: usize, now: Instant) -> Option<Duration> {
        let s = &self.settings;
        // At least one endpoint may always be out, whatever the percentage.
        let allowed = (total * s.max_ejection_percent as usize / 100).max(1);
        if self.ejected(now) >= allowed {
            return None;
        }
        let s = self.settings.clone();
        let health = self.endpoints.entry(endpoint).or_default();
        let decayed = health.last_ejection_end.map_or(0, |end| {
            let healthy_for = now.saturating_duration_since(end);
            (healthy_for.as_millis() / s.interval.as_millis().max(1)) as u32
        });
        health.times_ejected = health.times_ejected.saturating_sub(decayed) + 1;
        let length = s
            .base_ejection
            .saturating_mul(health.times_ejected)
            .min(MAX_EJECTION.max(s.base_ejection));
        health.ejected_until = Some(now + length);
        health.last_ejection_end = Some(now + length);
        health.consecutive_5xx = 0;
        health.consecutive_gateway = 0;
        health.consecutive_local = 0;
        Some(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8080))
    }

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
            interval: Duration::from_secs(10),
            min_health_percent: 0,
            local_origin: None,
        }
    }

    #[test]
    fn consecutive_5xx_eject_for_the_base_time_then_the_endpoint_returns() {
        let mut d = OutlierDetector::new(settings());
        let t0 = Instant::now();
        assert_eq!(d.record(ep(1), TryOutcome::Status(500), 4, t0), None);
        assert_eq!(d.record(ep(1), TryOutcome::LocalFailure, 4, t0), None);
        assert_eq!(
            d.record(ep(1), TryOutcome::Status(503), 4, t0),
            Some(Duration::from_secs(10))
        );
        assert!(d.is_ejected(ep(1), t0 + Duration::from_secs(9)));
        assert!(!d.is_ejected(ep(1), t0 + Duration::from_secs(10)));
    }

    #[test]
    fn split_local_origin_failures_eject_on_their_own_count() {
        let split = OutlierSettings {
            local_origin: Some(2),
            ..settings()
        };
        let mut d = OutlierDetector::new(split);
        let t0 = Instant::now();
        // Two answers' 5xx and a failure to reach it: neither count reaches its limit.
        for outcome in [
            TryOutcome::Status(500),
            TryOutcome::Status(500),
            TryOutcome::LocalFailure,
        ] {
            assert_eq!(d.record(ep(1), outcome, 4, t0), None);
        }
        // The failure to reach it left the answers' run alone: a third 5xx ejects it.
        assert_eq!(
            d.record(ep(1), TryOutcome::Status(500), 4, t0),
            Some(Duration::from_secs(10))
        );
        let t1 = t0 + Duration::from_secs(10);
        assert!(!d.is_ejected(ep(1), t1));
        // An answer between two failures to reach it starts their count again.
        assert_eq!(d.record(ep(1), TryOutcome::LocalFailure, 4, t1), None);
        assert_eq!(d.record(ep(1), TryOutcome::Status(200), 4, t1), None);
        assert_eq!(d.record(ep(1), TryOutcome::LocalFailure, 4, t1), None);
        // Two in a row.
        assert!(d.record(ep(1), TryOutcome::LocalFailure, 4, t1).is_some());
        assert!(d.is_ejected(ep(1), t1));
    }

    #[test]
    fn a_rule_splits_local_origin_failures_only_when_it_says_so() {
        let read = |split: bool, failures: Option<u32>| {
            let rule = OutlierDetection {
                split_external_local_origin_errors: split,
                consecutive_local_origin_failures: failures,
                ..OutlierDetection::default()
            };
            OutlierSettings::from_rule(&rule).local_origin
        };
        assert_eq!(read(false, Some(2)), None);
        assert_eq!(read(true, None), Some(5), "Envoy's default");
        assert_eq!(read(true, Some(2)), Some(2));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut d = OutlierDetector::new(settings());
        let t0 = Instant::now();
        for outcome in [500, 500, 200, 500, 500] {
            assert_eq!(d.record(ep(1), TryOutcome::Status(outcome), 4, t0), None);
        }
        assert!(!d.is_ejected(ep(1), t0));
    }

    #[test]
    fn each_ejection_is_longer_until_the_endpoint_stays_healthy() {
        let mut d = OutlierDetector::new(settings());
        let t0 = Instant::now();
        let eject = |d: &mut OutlierDetector, at: Instant| {
            (0..3)
                .filter_map(|_| d.record(ep(1), TryOutcome::Status(500), 4, at))
                .next()
        };
        assert_eq!(eject(&mut d, t0), Some(Duration::from_secs(10)));
        // Back at 10 s and failing at once: twice as long.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(eject(&mut d, t1), Some(Duration::from_secs(20)));
        // Healthy for two intervals after that: the multiplier is back to one.
        let t2 = t1 + Duration::from_secs(20) + Duration::from_secs(20);
        assert_eq!(eject(&mut d, t2), Some(Duration::from_secs(10)));
    }

    #[test]
    fn no_more_than_the_max_ejection_percent_are_out_but_one_always_may_be() {
        let mut d = OutlierDetector::new(settings());
        let t0 = Instant::now();
        for i in 1..=3 {
            for _ in 0..3 {
                d.record(ep(i), TryOutcome::Status(500), 4, t0);
            }
        }
        // 50% of 4: two out, the third stays in.
        assert_eq!(d.ejected(t0), 2);
        assert!(!d.is_ejected(ep(3), t0));
        // With 10% of 2 endpoints, one may still be ejected.
        let mut small = OutlierDetector::new(OutlierSettings {
            max_ejection_percent: 10,
            ..settings()
        });
        for _ in 0..3 {
            small.record(ep(1), TryOutcome::Status(500), 2, t0);
        }
        assert!(small.is_ejected(ep(1), t0));
    }

    #[test]
    fn the_older_consecutive_errors_counts_gateway_errors_alone() {
        let rule = |consecutive_errors: i32, newer_5xx: Option<u32>| {
            let o = OutlierDetection {
                consecutive_errors,
                consecutive_5xx_errors: newer_5xx,
                ..OutlierDetection::default()
            };
            let s = OutlierSettings::from_rule(&o);
            (s.consecutive_5xx, s.consecutive_gateway)
        };
        assert_eq!(rule(3, None), (0, 3), "500s do not count");
        assert_eq!(rule(3, Some(7)), (7, 3));
        assert_eq!(rule(0, None), (DEFAULT_CONSECUTIVE_5XX, 0));
    }

    #[test]
    fn gateway_errors_eject_on_their_own_count_when_set() {
        let mut d = OutlierDetector::new(OutlierSettings {
            consecutive_5xx: 0,
            consecutive_gateway: 2,
            ..settings()
        });
        let t0 = Instant::now();
        assert_eq!(d.record(ep(1), TryOutcome::Status(500), 4, t0), None);
        assert_eq!(d.record(ep(1), TryOutcome::Status(502), 4, t0), None);
        assert!(d.record(ep(1), TryOutcome::Status(504), 4, t0).is_some());
    }
}
