//! Words for the engine's numbers: why a locality has its verdict, why an entry has its
//! priority, and what fired. Rows stay numeric (cheap to recompute); these functions make
//! the text for the status API, `fulcrumctl explain`, `simulate` and events.
//!
//! Times are printed relative to an epoch the caller picks: the start of a simulation,
//! or whatever the coordinator shows its operators.

use std::fmt::Write as _;

use crate::duration::Duration;
use crate::engine::compute::{
    EntryNote, Guard, LocalityStatus, PriorityWhy, RowMode, ServiceWeights, SourceRow, Standing,
};
use crate::engine::split::LocalityMatch;
use crate::engine::topology::{LocalityLb, ServiceTopology, SubsetTopology};
use crate::engine::verdict::{Cause, VerdictState};
use crate::fulcrum::FailoverSettings;
use crate::locality::Locality;
use crate::percent::Percent;
use crate::weights::{Signals, Verdict, WeightEntry, WeightRow};

/// `12.0s`: milliseconds since the epoch, with one decimal.
pub fn seconds(ms: u64) -> String {
    format!("{}.{}s", ms / 1_000, (ms % 1_000) / 100)
}

/// A weight in basis points as a percentage; `0` for nothing.
pub fn weight(bp: u32) -> String {
    if bp == 0 {
        "0".to_string()
    } else {
        Percent::from_basis_points(bp).to_string()
    }
}

fn rate(bp: u32) -> String {
    Percent::from_basis_points(bp).to_string()
}

/// Why the machine says what it says, in words: `5xx 97% of 1204 req in 10s >= 50%`.
pub fn cause_text(
    cause: &Cause,
    signals: &Signals,
    settings: &FailoverSettings,
    epoch_ms: u64,
) -> String {
    match cause {
        Cause::Nominal => {
            let ready = format!(
                "{}/{} ready",
                signals.ready_endpoints, signals.total_endpoints
            );
            if signals.requests >= u64::from(settings.min_request_volume).max(1) {
                let failures = signals.http_5xx + signals.connect_failures;
                let failure_bp = (u128::from(failures.min(signals.requests)) * 10_000
                    / u128::from(signals.requests)) as u32;
                format!(
                    "{ready}, errors {} of {} req in {}",
                    rate(failure_bp),
                    signals.requests,
                    signals.window
                )
            } else {
                format!(
                    "{ready}, {} req in {} (under minRequestVolume {})",
                    signals.requests, signals.window, settings.min_request_volume
                )
            }
        }
        Cause::Rate(r) if r.degrade => format!(
            "{} {} of {} req in {} >= {}",
            r.signal.label(),
            rate(r.rate_bp),
            r.requests,
            Duration::from_millis(r.span_ms as i64),
            rate(r.threshold_bp)
        ),
        Cause::Rate(r) => format!(
            "{} {} of {} req in {} > recover threshold {}",
            r.signal.label(),
            rate(r.rate_bp),
            r.requests,
            Duration::from_millis(r.span_ms as i64),
            rate(r.threshold_bp)
        ),
        Cause::NoReadyEndpoints => format!("0/{} endpoints ready", signals.total_endpoints),
        Cause::HoldDown { good_since_ms } => format!(
            "good since {}, held out for recoverAfter {}",
            seconds(good_since_ms.saturating_sub(epoch_ms)),
            settings.recover_after
        ),
        Cause::Ramp => format!("ramping back by {} per second", settings.ramp_step),
    }
}

/// The detail of a verdict-change event.
pub fn verdict_detail(
    verdict: Verdict,
    machine: &VerdictState,
    signals: &Signals,
    settings: &FailoverSettings,
) -> String {
    match verdict {
        Verdict::Unknown => format!(
            "its cluster stopped reporting: weights frozen unless others see it fail ({})",
            cause_text(&machine.cause, signals, settings, 0)
        ),
        Verdict::Drained => "drained by an operator".to_string(),
        _ => cause_text(&machine.cause, signals, settings, 0),
    }
}

fn locality_match_text(
    matched: LocalityMatch,
    rule: Option<u16>,
    subset: &SubsetTopology,
) -> String {
    let rule_text = |i: u16| match &subset.locality_lb {
        LocalityLb::Failover { rules, .. } => rules
            .get(usize::from(i))
            .map(|r| (format!("{}->{}", r.from, r.to), r.to.clone())),
        _ => None,
    };
    match (matched, rule.and_then(rule_text)) {
        (LocalityMatch::SameSubzone, _) => "same region/zone/subzone".to_string(),
        (LocalityMatch::SameZone, _) => "same region/zone".to_string(),
        (LocalityMatch::SameRegion, _) => "same region".to_string(),
        (LocalityMatch::OtherRegion, Some((rule, _))) => format!("failover rule {rule}"),
        (LocalityMatch::OtherRegion, None) => "other region".to_string(),
        (LocalityMatch::NotFailoverTarget, Some((rule, to))) => {
            format!("other region, after {to} (failover rule {rule})")
        }
        (LocalityMatch::NotFailoverTarget, None) => {
            "other region, not the failover target".to_string()
        }
    }
}

/// Why an entry has its priority.
pub fn priority_text(why: &PriorityWhy, mode: RowMode, subset: &SubsetTopology) -> String {
    match why {
        PriorityWhy::Flat => match mode {
            RowMode::LocalityLbDisabled => "localityLbSetting disabled: one priority".to_string(),
            RowMode::NoOutlierDetection => {
                "no outlierDetection: one priority, as Istio (no locality failover)".to_string()
            }
            _ => "one priority".to_string(),
        },
        PriorityWhy::Locality { matched, rule } => locality_match_text(*matched, *rule, subset),
        PriorityWhy::Labels {
            mismatch,
            matched,
            rule,
        } => {
            let labels = match &subset.locality_lb {
                LocalityLb::Failover { labels, .. } => labels.as_slice(),
                _ => &[],
            };
            let mut text = match mismatch.and_then(|j| labels.get(usize::from(j))) {
                None => "failoverPriority: every label matches".to_string(),
                Some(label) => format!("failoverPriority: {} differs", label.key),
            };
            if let Some(m) = matched {
                let _ = write!(text, "; {}", locality_match_text(*m, *rule, subset));
            }
            text
        }
        PriorityWhy::Distribute { weight } => match mode {
            RowMode::Distribute(i) => format!("distribute rule {i}: locality weight {weight}"),
            _ => format!("distribute: locality weight {weight}"),
        },
    }
}

fn standing_text(status: &LocalityStatus) -> Option<String> {
    match &status.standing {
        Standing::InService | Standing::Removed => None,
        Standing::Drained(d) => Some(format!("drained: {}", d.reason)),
        Standing::Held(Guard::MaxDrained { limit }) => Some(format!(
            "kept in service on readiness alone: maxDrained {limit} already out"
        )),
        Standing::Held(Guard::NeverDrainLast) => Some(
            "kept in service on readiness alone: neverDrainLast (nothing else can serve)"
                .to_string(),
        ),
    }
}

fn note_text(note: &EntryNote, row: &SourceRow) -> Option<String> {
    match note {
        EntryNote::Split | EntryNote::OutOfService => None,
        EntryNote::Panic => Some("priority in panic: spread over every endpoint".to_string()),
        EntryNote::Unreachable => Some(format!("gateway unreachable from {}", row.source)),
        EntryNote::NotDistributed => Some("no distribute target matches it".to_string()),
        EntryNote::Ramp { allowance_bp } => {
            Some(format!("ramp at {} of full weight", rate(*allowance_bp)))
        }
        EntryNote::CapacityCapped { wanted_bp } => Some(format!(
            "capacity guard: spill capped (wanted {})",
            weight(*wanted_bp)
        )),
        EntryNote::Shed { shed_bp } => Some(format!(
            "capacity guard: {} left here, no destination has capacity for it",
            weight(*shed_bp)
        )),
    }
}

/// The words for one entry: `eu-west/eu-west-1a: Failed since 12.0s (5xx 97% of 1204
/// req in 10s >= 50%) -> 0`, then what else fired.
pub fn entry_text(
    locality: &Locality,
    status: &LocalityStatus,
    entry_weight_bp: u32,
    note: &EntryNote,
    row: &SourceRow,
    settings: &FailoverSettings,
    epoch_ms: u64,
) -> String {
    let cause = match status.verdict {
        Verdict::Unknown => format!(
            "its cluster stopped reporting; weights frozen ({})",
            cause_text(&status.cause, &status.signals, settings, epoch_ms)
        ),
        Verdict::Drained => match &status.standing {
            Standing::Drained(d) => format!("drained: {}", d.reason),
            _ => "drained".to_string(),
        },
        _ => cause_text(&status.cause, &status.signals, settings, epoch_ms),
    };
    let mut text = format!(
        "{}: {} since {} ({}) -> {}",
        locality,
        status.verdict,
        seconds(status.since_ms.saturating_sub(epoch_ms)),
        cause,
        weight(entry_weight_bp)
    );
    if !matches!(status.standing, Standing::Drained(_))
        && let Some(s) = standing_text(status)
    {
        let _ = write!(text, "; {s}");
    }
    if let Some(n) = note_text(note, row) {
        let _ = write!(text, "; {n}");
    }
    text
}

/// A row in one paragraph: the localities that are not plainly healthy at priority 0,
/// then where the traffic spills, e.g. `us-east/us-east-1a: Failed since 12.0s (...) -> 0;
/// spill to us-central/us-central-1a (priority 1, failover rule us-east->us-central)`.
pub fn row_summary(
    weights: &ServiceWeights,
    subset: &SubsetTopology,
    row: &SourceRow,
    settings: &FailoverSettings,
    epoch_ms: u64,
) -> String {
    let mut parts = Vec::new();
    for e in &row.entries {
        let status = &weights.localities[e.locality];
        let plain = e.priority == 0
            && status.verdict == Verdict::Healthy
            && matches!(e.note, EntryNote::Split);
        if e.priority == 0 && !plain {
            parts.push(entry_text(
                weights.destination(e.locality),
                status,
                e.weight_bp,
                &e.note,
                row,
                settings,
                epoch_ms,
            ));
        }
    }
    for e in &row.entries {
        if e.priority > 0 && e.weight_bp > 0 {
            parts.push(format!(
                "spill {} to {} (priority {}, {})",
                weight(e.weight_bp),
                weights.destination(e.locality),
                e.priority,
                priority_text(&e.why, row.mode, subset)
            ));
        }
    }
    if parts.is_empty() {
        let serving: Vec<String> = row
            .entries
            .iter()
            .filter(|e| e.weight_bp > 0)
            .map(|e| {
                format!(
                    "{} {}",
                    weights.destination(e.locality),
                    weight(e.weight_bp)
                )
            })
            .collect();
        return format!("all healthy: {}", serving.join(", "));
    }
    parts.join("; ")
}

/// The rows of a service as the wire and the status API carry them, with every
/// explanation written out.
pub fn weight_rows(
    weights: &ServiceWeights,
    service: &ServiceTopology,
    epoch_ms: u64,
) -> Vec<WeightRow> {
    let mut out = Vec::new();
    for (subset_rows, subset) in weights.subsets.iter().zip(&service.subsets) {
        for row in &subset_rows.rows {
            let entries = row
                .entries
                .iter()
                .map(|e| {
                    let status = &weights.localities[e.locality];
                    WeightEntry {
                        destination: weights.destination(e.locality).clone(),
                        weight_bp: e.weight_bp,
                        priority: e.priority,
                        priority_reason: priority_text(&e.why, row.mode, subset),
                        verdict: status.verdict,
                        verdict_since_ms: status.since_ms,
                        signals: status.signals.clone(),
                        explanation: entry_text(
                            weights.destination(e.locality),
                            status,
                            e.weight_bp,
                            &e.note,
                            row,
                            &service.settings,
                            epoch_ms,
                        ),
                    }
                })
                .collect();
            out.push(WeightRow {
                service: weights.service.clone(),
                subset: subset_rows.subset.clone(),
                source: row.source.clone(),
                entries,
            });
        }
    }
    out
}
