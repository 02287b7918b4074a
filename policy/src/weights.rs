//! Weight rows: how one service's traffic from one source locality is split over
//! destination localities, in integer basis points, with the reason for every share.
//!
//! A row either routes nothing (no entries, or every weight 0: no destination can take
//! traffic, and the entries say why) or its weights add up to exactly
//! [`TOTAL_BASIS_POINTS`]. [`WeightRow::check`] enforces that, so a row that came
//! from a peer is refused rather than routed on.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::locality::Locality;

/// The sum of a non-empty row's weights: 100.00%.
pub const TOTAL_BASIS_POINTS: u32 = 10_000;

/// How the failover engine judges a locality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Serving normally.
    Healthy,
    /// Failing often enough to lose share, not yet out.
    Degraded,
    /// Out of service.
    Failed,
    /// Healthy again, regaining share step by step.
    Recovering,
    /// Its cluster stopped reporting; weights are frozen.
    Unknown,
    /// Taken out by an operator.
    Drained,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Healthy => "Healthy",
            Verdict::Degraded => "Degraded",
            Verdict::Failed => "Failed",
            Verdict::Recovering => "Recovering",
            Verdict::Unknown => "Unknown",
            Verdict::Drained => "Drained",
        })
    }
}

/// The signals a verdict was made from, over one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signals {
    /// Endpoints passing readiness.
    pub ready_endpoints: u32,
    /// All endpoints.
    pub total_endpoints: u32,
    /// Requests observed by every reporter.
    pub requests: u64,
    /// Of those, answered 500-599.
    pub http_5xx: u64,
    /// Of those, answered 502, 503 or 504.
    pub gateway_errors: u64,
    /// Requests that got no answer (connect failure, reset, timeout).
    pub connect_failures: u64,
    /// The window the counts cover.
    pub window: Duration,
}

/// One destination of a row, with its share and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightEntry {
    /// The destination locality.
    pub destination: Locality,
    /// Share of the row, in basis points.
    pub weight_bp: u32,
    /// Failover priority (0 is preferred).
    pub priority: u32,
    /// Why this priority.
    pub priority_reason: String,
    /// The locality's verdict.
    pub verdict: Verdict,
    /// Leader time, in milliseconds, when the verdict began.
    pub verdict_since_ms: u64,
    /// What the verdict was made from.
    pub signals: Signals,
    /// The rule that fired, for an operator.
    pub explanation: String,
}

/// The split of one service (or subset) from one source locality.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightRow {
    /// Service host.
    pub service: String,
    /// Subset; empty for the whole service.
    pub subset: String,
    /// The source locality.
    pub source: Locality,
    /// The destinations, each at most once.
    pub entries: Vec<WeightEntry>,
}

/// Why a row is not a valid split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightRowError {
    /// The row names no service.
    #[error("the row names no service")]
    NoService,
    /// A weight above 100%.
    #[error("weight of {destination} is {weight_bp} basis points, more than {TOTAL_BASIS_POINTS}")]
    WeightTooLarge {
        /// The destination.
        destination: Locality,
        /// Its weight.
        weight_bp: u32,
    },
    /// The weights do not add up to 100%.
    #[error("weights add up to {total} basis points, not {TOTAL_BASIS_POINTS}")]
    BadTotal {
        /// Their sum.
        total: u64,
    },
    /// A destination listed twice.
    #[error("{destination} is listed twice")]
    DuplicateDestination {
        /// The destination.
        destination: Locality,
    },
}

impl WeightRow {
    /// The sum of the row's weights.
    pub fn total_bp(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.weight_bp)).sum()
    }

    /// Checks the row's invariants: a service, no destination twice, no weight above
    /// 100%, and a total of exactly 100% unless the row routes nothing (total 0).
    pub fn check(&self) -> Result<(), WeightRowError> {
        if self.service.is_empty() {
            return Err(WeightRowError::NoService);
        }
        let mut seen = BTreeSet::new();
        for entry in &self.entries {
            if entry.weight_bp > TOTAL_BASIS_POINTS {
                return Err(WeightRowError::WeightTooLarge {
                    destination: entry.destination.clone(),
                    weight_bp: entry.weight_bp,
                });
            }
            if !seen.insert(&entry.destination) {
                return Err(WeightRowError::DuplicateDestination {
                    destination: entry.destination.clone(),
                });
            }
        }
        let total = self.total_bp();
        if total != 0 && total != u64::from(TOTAL_BASIS_POINTS) {
            return Err(WeightRowError::BadTotal { total });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(zone: &str, weight_bp: u32) -> WeightEntry {
        WeightEntry {
            destination: Locality::new("r", zone, ""),
            weight_bp,
            priority: 0,
            priority_reason: String::new(),
            verdict: Verdict::Healthy,
            verdict_since_ms: 0,
            signals: Signals::default(),
            explanation: String::new(),
        }
    }

    fn row(entries: Vec<WeightEntry>) -> WeightRow {
        WeightRow {
            service: "checkout".into(),
            subset: String::new(),
            source: Locality::new("r", "a", ""),
            entries,
        }
    }

    #[test]
    fn rows_must_sum_to_10000_or_be_empty() {
        assert_eq!(
            row(vec![entry("a", 7000), entry("b", 3000)]).check(),
            Ok(())
        );
        assert_eq!(row(vec![]).check(), Ok(()));
        assert_eq!(row(vec![entry("a", 0), entry("b", 0)]).check(), Ok(()));
        assert_eq!(
            row(vec![entry("a", 7000), entry("b", 2999)]).check(),
            Err(WeightRowError::BadTotal { total: 9999 })
        );
        assert!(matches!(
            row(vec![entry("a", 10_001)]).check(),
            Err(WeightRowError::WeightTooLarge { .. })
        ));
        assert!(matches!(
            row(vec![entry("a", 5000), entry("a", 5000)]).check(),
            Err(WeightRowError::DuplicateDestination { .. })
        ));
    }
}
