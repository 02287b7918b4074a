//! The blast-radius guards, applied to a service's localities before any row is split:
//! at most `maxDrained` localities out at once (an operator's drains first and always, then
//! the engine's failures, oldest first), and, with `neverDrainLast`, never the last that
//! could serve. A locality a guard keeps in serves on its readiness alone: the error rate
//! that took it out is exactly what the guard overrides.

use crate::engine::compute::{Guard, LocalityStatus, Standing};
use crate::engine::topology::ServiceTopology;
use crate::weights::TOTAL_BASIS_POINTS;

/// The blast-radius guards: at most `maxDrained` localities out at once (manual drains
/// first, then the engine's removals, oldest first), and never the last that can serve.
pub(crate) fn apply(
    statuses: &mut [LocalityStatus],
    service: &ServiceTopology,
    engine_failures: &[bool],
) {
    let settings = &service.settings;
    let engine_failure = |i: usize| engine_failures[i] && statuses[i].signals.ready_endpoints > 0;
    // Localities taken out by a decision (an operator's or the engine's), in the order the
    // cap keeps them out.
    let mut decided: Vec<(u8, u64, usize)> = statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.standing {
            Standing::Drained(d) => Some((0, d.since_ms, i)),
            Standing::Removed if engine_failure(i) => Some((1, s.since_ms, i)),
            _ => None,
        })
        .collect();
    decided.sort_unstable();
    let limit = settings.max_drained.resolve(statuses.len() as u32);
    for &(kind, _, i) in decided.iter().skip(limit as usize) {
        // Operators' drains always stand; only the engine's own removals are capped.
        if kind == 1 {
            hold(&mut statuses[i], Guard::MaxDrained { limit });
        }
    }
    if settings.never_drain_last
        && !statuses
            .iter()
            .any(|s| s.takes_traffic() && s.health.bp() > 0)
    {
        // Keep the most recently removed localities that still have endpoints to serve.
        let latest = decided
            .iter()
            .filter(|(_, _, i)| statuses[*i].signals.ready_endpoints > 0)
            .map(|(_, since, _)| *since)
            .max();
        if let Some(latest) = latest {
            for &(_, since, i) in &decided {
                if since == latest && statuses[i].signals.ready_endpoints > 0 {
                    hold(&mut statuses[i], Guard::NeverDrainLast);
                }
            }
        }
    }
}

fn hold(status: &mut LocalityStatus, guard: Guard) {
    status.standing = Standing::Held(guard);
    status.allowance_bp = TOTAL_BASIS_POINTS;
    // Readiness alone: the error rate that took it out is what the guard overrides.
    status.health.success_bp = TOTAL_BASIS_POINTS;
}
