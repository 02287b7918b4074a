//! The verdict of one (service, locality): a small state machine that degrades fast and
//! recovers slowly.
//!
//! ```text
//!   Healthy -> Degraded           window failure rate above the recover threshold
//!   Degraded -> Healthy           good (under the recover threshold) for `recoverAfter`
//!   any -> Failed                 every bucket of the last `degradeAfter` at or over the
//!                                 degrade threshold (with enough volume), or no ready endpoint
//!   Failed -> Recovering          good for `recoverAfter` without a break (the hold-down)
//!   Recovering -> Healthy         the ramp, `rampStep` per second, reaches 100%
//! ```
//!
//! The gap between the degrade and the recover thresholds is the hysteresis: a locality
//! that failed at 50% 5xx is not trusted again until it is under 10% for the whole
//! hold-down. The success rate the weights scale by is damped the same way: it follows a
//! worse window at once, and a better one only after `recoverAfter`, at the ramp's pace.
//! Unknown and Drained are not states of this machine; they are decided on top
//! of it (see `engine::evaluate`), so the machine keeps learning while a cluster is silent.

use serde::{Deserialize, Serialize};

use crate::fulcrum::FailoverSettings;
use crate::weights::{TOTAL_BASIS_POINTS, Verdict};

/// Which failure signal a rate is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Signal {
    /// Responses 500-599.
    Http5xx,
    /// Responses 502, 503, 504.
    GatewayErrors,
    /// Connect failures, resets, timeouts.
    ConnectFailures,
}

impl Signal {
    /// How the signal is written in explanations and in FailoverPolicy thresholds.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Http5xx => "5xx",
            Signal::GatewayErrors => "gateway errors",
            Signal::ConnectFailures => "connect failures",
        }
    }
}

/// A failure rate measured over a span, and the threshold it was compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateReading {
    /// The signal.
    pub signal: Signal,
    /// Its rate over the span, in basis points.
    pub rate_bp: u32,
    /// Requests in the span.
    pub requests: u64,
    /// The span, in milliseconds.
    pub span_ms: u64,
    /// The threshold it was compared with, in basis points.
    pub threshold_bp: u32,
    /// True for the degrade threshold (at or over it fails the locality); false for the
    /// recover threshold (over it keeps the locality from being trusted).
    pub degrade: bool,
}

/// Why a locality has its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cause {
    /// Within every threshold (or too little traffic for a rate to count).
    Nominal,
    /// A rate crossed a threshold.
    Rate(RateReading),
    /// No endpoint is ready.
    NoReadyEndpoints,
    /// Healthy again since this time; waiting out `recoverAfter`.
    HoldDown {
        /// When the signals became good.
        good_since_ms: u64,
    },
    /// Regaining share step by step.
    Ramp,
}

/// What the signals say right now, before damping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    /// Sustained failure: every bucket of the degrade span at or over a degrade threshold.
    pub tripped: Option<RateReading>,
    /// The window's rate above a recover threshold (the hysteresis band or worse).
    pub above_recover: Option<RateReading>,
    /// Endpoints exist and none is ready.
    pub no_ready_endpoints: bool,
    /// Share of requests that succeeded over the window, basis points (10000 when too
    /// few requests to count, or when automatic failover is off).
    pub success_bp: u32,
    /// Share of the endpoints that can take traffic (ready, not ejected), basis points.
    pub available_bp: u32,
}

fn all_available() -> u32 {
    TOTAL_BASIS_POINTS
}

/// Nothing wrong: no rate over a threshold, every endpoint available, and no success
/// counted yet (0: tests and callers set what they observed).
impl Default for Assessment {
    fn default() -> Self {
        Assessment {
            tripped: None,
            above_recover: None,
            no_ready_endpoints: false,
            success_bp: 0,
            available_bp: TOTAL_BASIS_POINTS,
        }
    }
}

/// The damped state of one (service, locality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VerdictState {
    /// Healthy, Degraded, Failed or Recovering.
    pub verdict: Verdict,
    /// Leader time the verdict began, in milliseconds.
    pub since_ms: u64,
    /// Why.
    pub cause: Cause,
    /// While Recovering: the share of full weight allowed now, in basis points. It rises
    /// in whole steps of `rampStep`, one per second of good signals, so no one-second
    /// span ever sees more than one step.
    pub ramp_bp: u32,
    /// While Recovering: milliseconds of good signals since the ramp began.
    pub ramp_ms: u64,
    /// The success rate the weights use, basis points: it follows the window down at once
    /// but back up only after `recoverAfter` of good signals, by at most `rampStep` per
    /// second, so weights do not chase a flapping error rate.
    pub success_bp: u32,
    /// The share of endpoints the weights may count as available, basis points. In a
    /// healthy locality, what is reported; in one that is not, down at once and back up
    /// only once the signals have been good for `recoverAfter`, so that an endpoint whose
    /// ejection ends while its locality still fails does not bring its weight back
    /// mid-flap.
    #[serde(default = "all_available")]
    pub available_bp: u32,
    /// Since when the signals have been good without a break (none now: `None`).
    pub good_since_ms: Option<u64>,
    /// Leader time of the last step, in milliseconds.
    pub last_ms: u64,
    /// When the locality last began to ramp back after a failure: its signals count from
    /// then on (for one window), so the errors that failed it do not fail it again.
    #[serde(default)]
    pub counted_from_ms: Option<u64>,
}

impl VerdictState {
    /// A locality nobody has said anything about yet: healthy.
    pub fn new(now_ms: u64) -> Self {
        VerdictState {
            verdict: Verdict::Healthy,
            since_ms: now_ms,
            cause: Cause::Nominal,
            ramp_bp: TOTAL_BASIS_POINTS,
            ramp_ms: 0,
            success_bp: TOTAL_BASIS_POINTS,
            available_bp: TOTAL_BASIS_POINTS,
            good_since_ms: Some(now_ms),
            last_ms: now_ms,
            counted_from_ms: None,
        }
    }

    fn enter(&mut self, verdict: Verdict, cause: Cause, now_ms: u64) {
        if verdict == Verdict::Failed {
            self.counted_from_ms = None;
        }
        if self.verdict != verdict {
            self.verdict = verdict;
            self.since_ms = now_ms;
        }
        self.cause = cause;
    }

    /// Advances the machine to `now_ms` with what the signals say.
    pub fn step(&mut self, input: &Assessment, settings: &FailoverSettings, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms.max(self.last_ms);
        let good =
            !input.no_ready_endpoints && input.tripped.is_none() && input.above_recover.is_none();
        let good_since_ms = if good {
            *self.good_since_ms.get_or_insert(now_ms)
        } else {
            self.good_since_ms = None;
            now_ms
        };
        let recover_after = settings.recover_after.as_millis().max(0) as u64;
        let trusted = good && now_ms.saturating_sub(good_since_ms) >= recover_after;
        let ramp = |level: u32| {
            let gained = u64::from(settings.ramp_step.basis_points()) * elapsed_ms / 1_000;
            (u64::from(level) + gained).min(u64::from(TOTAL_BASIS_POINTS)) as u32
        };

        // The success rate the weights use: down at once, up only once trusted, ramped.
        self.success_bp = if trusted {
            input.success_bp.min(ramp(self.success_bp))
        } else {
            self.success_bp.min(input.success_bp)
        };
        // The endpoints' share alike while the locality is unwell, but whole once trusted
        // (an endpoint is back or not); a healthy locality's readiness counts at once, as
        // Envoy counts it.
        self.available_bp = if trusted || self.verdict == Verdict::Healthy {
            input.available_bp
        } else {
            self.available_bp.min(input.available_bp)
        };

        if input.no_ready_endpoints {
            self.enter(Verdict::Failed, Cause::NoReadyEndpoints, now_ms);
            return;
        }
        if let Some(reading) = input.tripped {
            self.enter(Verdict::Failed, Cause::Rate(reading), now_ms);
            return;
        }
        let hold_down = Cause::HoldDown { good_since_ms };
        match self.verdict {
            Verdict::Healthy | Verdict::Degraded => match input.above_recover {
                Some(reading) => self.enter(Verdict::Degraded, Cause::Rate(reading), now_ms),
                // Leaving Degraded takes the same hold-down as leaving Failed.
                None if self.verdict == Verdict::Degraded && !trusted => self.cause = hold_down,
                None => self.enter(Verdict::Healthy, Cause::Nominal, now_ms),
            },
            Verdict::Failed => match input.above_recover {
                // Not good yet: the hold-down starts over.
                Some(reading) => self.cause = Cause::Rate(reading),
                None if trusted => {
                    // The ramp is the damping from here: weights use today's success rate.
                    self.success_bp = input.success_bp;
                    self.start_ramp(settings, now_ms);
                }
                None => self.cause = hold_down,
            },
            Verdict::Recovering => {
                if input.above_recover.is_some() {
                    // The ramp pauses while the signals sit in the hysteresis band.
                    return;
                }
                self.ramp_ms += elapsed_ms;
                let step = u64::from(settings.ramp_step.basis_points().max(1));
                let level = step * (1 + self.ramp_ms / 1_000);
                if level >= u64::from(TOTAL_BASIS_POINTS) {
                    self.enter(Verdict::Healthy, Cause::Nominal, now_ms);
                    self.ramp_bp = TOTAL_BASIS_POINTS;
                } else {
                    self.ramp_bp = level as u32;
                }
            }
            // Unknown and Drained are never states of the machine.
            Verdict::Unknown | Verdict::Drained => {
                self.enter(Verdict::Healthy, Cause::Nominal, now_ms)
            }
        }
    }

    fn start_ramp(&mut self, settings: &FailoverSettings, now_ms: u64) {
        self.counted_from_ms = Some(now_ms);
        let step = settings
            .ramp_step
            .basis_points()
            .clamp(1, TOTAL_BASIS_POINTS);
        if step >= TOTAL_BASIS_POINTS {
            self.enter(Verdict::Healthy, Cause::Nominal, now_ms);
            self.ramp_bp = TOTAL_BASIS_POINTS;
        } else {
            self.enter(Verdict::Recovering, Cause::Ramp, now_ms);
            self.ramp_bp = step;
            self.ramp_ms = 0;
        }
    }

    /// The share of its full weight the locality may have now, in basis points: 0 when
    /// Failed, the ramp while Recovering, all of it otherwise.
    pub fn allowance_bp(&self) -> u32 {
        match self.verdict {
            Verdict::Failed => 0,
            Verdict::Recovering => self.ramp_bp,
            _ => TOTAL_BASIS_POINTS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Duration;
    use crate::percent::Percent;

    fn settings() -> FailoverSettings {
        FailoverSettings {
            recover_after: Duration::from_secs(5),
            ramp_step: Percent::from_percent(25),
            ..FailoverSettings::default()
        }
    }

    fn reading(rate: u32) -> RateReading {
        RateReading {
            signal: Signal::Http5xx,
            rate_bp: rate * 100,
            requests: 100,
            span_ms: 1000,
            threshold_bp: 5000,
            degrade: true,
        }
    }

    fn tripped() -> Assessment {
        Assessment {
            tripped: Some(reading(90)),
            above_recover: Some(reading(90)),
            no_ready_endpoints: false,
            success_bp: 1_000,
            available_bp: TOTAL_BASIS_POINTS,
        }
    }

    fn band() -> Assessment {
        Assessment {
            tripped: None,
            above_recover: Some(reading(30)),
            no_ready_endpoints: false,
            success_bp: 7_000,
            available_bp: TOTAL_BASIS_POINTS,
        }
    }

    #[test]
    fn failure_is_immediate_once_tripped() {
        let mut v = VerdictState::new(0);
        v.step(&tripped(), &settings(), 1_000);
        assert_eq!((v.verdict, v.since_ms), (Verdict::Failed, 1_000));
        assert_eq!(v.allowance_bp(), 0);
    }

    fn good() -> Assessment {
        Assessment {
            success_bp: 10_000,
            ..Assessment::default()
        }
    }

    #[test]
    fn the_band_degrades_but_does_not_fail_and_leaves_after_the_hold_down() {
        let mut v = VerdictState::new(0);
        v.step(&band(), &settings(), 1_000);
        assert_eq!((v.verdict, v.success_bp), (Verdict::Degraded, 7_000));
        v.step(&good(), &settings(), 2_000);
        assert_eq!(v.verdict, Verdict::Degraded, "held down");
        assert_eq!(v.success_bp, 7_000, "success held too");
        v.step(&good(), &settings(), 7_000);
        assert_eq!(v.verdict, Verdict::Healthy);
        assert_eq!(
            v.success_bp, 10_000,
            "trusted again: up to the window's rate"
        )
    }

    /// An endpoint ejected while its locality fails, back while it still does: the
    /// weights keep counting it out until the signals have been good for `recoverAfter`.
    #[test]
    fn the_available_share_follows_worse_at_once_and_better_only_when_trusted() {
        let s = settings();
        let mut v = VerdictState::new(0);
        let half = Assessment {
            available_bp: 5_000,
            ..band()
        };
        v.step(&half, &s, 1_000);
        assert_eq!(v.available_bp, 5_000, "down at once");
        v.step(&band(), &s, 2_000);
        assert_eq!(v.available_bp, 5_000, "back while failing: still out");
        v.step(&good(), &s, 3_000);
        assert_eq!(v.available_bp, 5_000, "good, not yet for recoverAfter");
        v.step(&good(), &s, 8_000);
        assert_eq!(v.available_bp, 10_000, "trusted: all of it at once");
    }

    #[test]
    fn success_follows_worse_at_once_and_better_only_when_trusted() {
        let s = settings();
        let mut v = VerdictState::new(0);
        let with = |rate: u32| Assessment {
            success_bp: rate,
            ..Assessment::default()
        };
        v.step(&band(), &s, 1_000);
        v.step(&with(9_000), &s, 2_000);
        assert_eq!(v.success_bp, 7_000);
        v.step(&band(), &s, 3_000);
        v.step(&with(9_500), &s, 4_000);
        v.step(&with(9_500), &s, 8_000);
        assert_eq!(v.success_bp, 7_000, "good only since 4s");
        v.step(&with(9_500), &s, 9_000);
        assert_eq!(v.success_bp, 9_500);
    }

    #[test]
    fn recovery_waits_out_the_hold_down_then_ramps() {
        let s = settings();
        let mut v = VerdictState::new(0);
        v.step(&tripped(), &s, 1_000);
        for t in 2..=6 {
            v.step(&good(), &s, t * 1_000);
            assert_eq!(v.verdict, Verdict::Failed, "at {t}s");
        }
        v.step(&good(), &s, 7_000);
        assert_eq!((v.verdict, v.ramp_bp), (Verdict::Recovering, 2_500));
        v.step(&good(), &s, 8_000);
        assert_eq!(v.ramp_bp, 5_000);
        v.step(&band(), &s, 9_000);
        assert_eq!(v.ramp_bp, 5_000, "the band pauses the ramp");
        v.step(&good(), &s, 10_000);
        v.step(&good(), &s, 11_000);
        assert_eq!(v.verdict, Verdict::Healthy);
    }

    #[test]
    fn a_bad_moment_restarts_the_hold_down() {
        let s = settings();
        let mut v = VerdictState::new(0);
        v.step(&tripped(), &s, 1_000);
        v.step(&good(), &s, 2_000);
        v.step(&good(), &s, 5_000);
        v.step(&band(), &s, 6_000);
        v.step(&good(), &s, 7_000);
        v.step(&good(), &s, 11_000);
        assert_eq!(v.verdict, Verdict::Failed, "good only since 7s");
        v.step(&good(), &s, 12_000);
        assert_eq!(v.verdict, Verdict::Recovering);
    }

    #[test]
    fn no_ready_endpoint_fails_at_once() {
        let mut v = VerdictState::new(0);
        v.step(
            &Assessment {
                no_ready_endpoints: true,
                ..Assessment::default()
            },
            &settings(),
            500,
        );
        assert_eq!(
            (v.verdict, v.cause),
            (Verdict::Failed, Cause::NoReadyEndpoints)
        );
    }
}
