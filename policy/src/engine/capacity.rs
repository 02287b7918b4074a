//! The capacity guard: failover must not overload the locality it fails over to.
//!
//! A FailoverPolicy may declare, per locality, `maxRequestsPerSecond` and `maxShare`.
//! Spill (weight toward a locality at priority > 0 for the source) is cut so that the
//! locality's load — its own sources' traffic plus spill, from the demand each source sent
//! over the window — stays within `maxRequestsPerSecond`, and no source sends it more than
//! `maxShare`. The cut is fair: every source's spill toward a full locality shrinks by the
//! same factor.
//!
//! What was cut moves on, priority by priority, to the row's other serving localities:
//! those without a declared capacity take all of it, those with one take what headroom
//! they have left. What nobody can take stays on the source's own priority-0 localities
//! (requests there are expected to fail fast rather than overload a healthy locality) and
//! is reported as a [`Shortfall`]. Nothing is silently dropped: every row still sums to
//! 10000.

use crate::engine::compute::{EntryNote, LocalityStatus, Shortfall, Standing, SubsetRows};
use crate::engine::split::apportion;
use crate::engine::state::EngineState;
use crate::engine::topology::ServiceTopology;
use crate::engine::window::{bucket_of, buckets_for};
use crate::locality::Locality;
use crate::weights::TOTAL_BASIS_POINTS;

const BP: u64 = TOTAL_BASIS_POINTS as u64;

/// One declared capacity, resolved against current demand.
#[derive(Debug, Clone, Copy)]
struct Cap {
    /// `maxRequestsPerSecond`, when declared.
    limit_rps: Option<u64>,
    /// `maxShare`, basis points (10000 when not declared).
    share_bp: u32,
    /// Load from sources for which it is priority 0.
    home_rps: u64,
    /// Load spill wants to send it.
    spill_rps: u64,
}

impl Cap {
    /// The fraction of spill that fits, as (numerator, denominator).
    fn spill_fraction(&self) -> (u64, u64) {
        match self.limit_rps {
            Some(limit) if self.spill_rps > limit.saturating_sub(self.home_rps) => {
                (limit.saturating_sub(self.home_rps), self.spill_rps)
            }
            _ => (1, 1),
        }
    }
}

/// Requests per second each source sent the service, over the part of the window that
/// has seen traffic.
fn demand(
    state: &EngineState,
    service: &ServiceTopology,
    sources: &[(&Locality, &[String])],
) -> Vec<u64> {
    let buckets = buckets_for(service.settings.window.as_millis().max(1) as u64);
    let last = bucket_of(state.now_ms);
    let known = state.services.get(&service.host);
    sources
        .iter()
        .map(|(_, clusters)| {
            let (requests, seen) = clusters
                .iter()
                .filter_map(|c| known.and_then(|s| s.demand.get(c)))
                .fold((0u64, 0u64), |(r, s), w| {
                    (
                        r + w.sum(last, buckets).requests,
                        s.max(w.seen(last, buckets)),
                    )
                });
            requests.checked_div(seen).unwrap_or(0)
        })
        .collect()
}

/// Applies the guard to every row of a service and returns what could not be placed.
pub fn apply(
    state: &EngineState,
    service: &ServiceTopology,
    statuses: &[LocalityStatus],
    sources: &[(&Locality, &[String])],
    subsets: &mut [SubsetRows],
) -> Vec<Shortfall> {
    let settings = &service.settings;
    if settings.capacity.is_empty() || subsets.is_empty() {
        return Vec::new();
    }
    let demand_rps = demand(state, service, sources);
    let mut caps: Vec<Option<Cap>> = vec![None; service.localities.len()];
    for declared in &settings.capacity {
        let Some(l) = service.locality_index(&declared.locality) else {
            continue;
        };
        if caps[l].is_some() {
            continue;
        }
        let (mut home_rps, mut spill_rps) = (0u64, 0u64);
        for (s, row) in subsets[0].rows.iter().enumerate() {
            for e in row.entries.iter().filter(|e| e.locality == l) {
                let load = demand_rps[s] * u64::from(e.weight_bp) / BP;
                if e.priority == 0 {
                    home_rps += load;
                } else {
                    spill_rps += load;
                }
            }
        }
        caps[l] = Some(Cap {
            limit_rps: declared.max_requests_per_second,
            share_bp: declared.max_share.map_or(TOTAL_BASIS_POINTS, |p| {
                p.basis_points().min(TOTAL_BASIS_POINTS)
            }),
            home_rps,
            spill_rps,
        });
    }

    let mut shortfalls = Vec::new();
    for (subset_index, subset) in subsets.iter_mut().enumerate() {
        // Headroom left after the fair cut, shared by this subset's rows in source order.
        let mut headroom: Vec<u64> = caps
            .iter()
            .map(|cap| match cap {
                Some(c) => {
                    let (num, den) = c.spill_fraction();
                    c.limit_rps.map_or(u64::MAX, |limit| {
                        limit.saturating_sub(c.home_rps + c.spill_rps * num / den)
                    })
                }
                None => u64::MAX,
            })
            .collect();
        for (s, row) in subset.rows.iter_mut().enumerate() {
            let demand = demand_rps[s];
            let mut cut = vec![0u32; row.entries.len()];
            for (k, e) in row.entries.iter_mut().enumerate() {
                let Some(cap) = caps[e.locality] else {
                    continue;
                };
                if e.priority == 0 || e.weight_bp == 0 {
                    continue;
                }
                let (num, den) = cap.spill_fraction();
                let allowed = ((u64::from(e.weight_bp) * num / den) as u32).min(cap.share_bp);
                if allowed < e.weight_bp {
                    cut[k] = e.weight_bp - allowed;
                    e.note = EntryNote::CapacityCapped {
                        wanted_bp: e.weight_bp,
                    };
                    e.weight_bp = allowed;
                }
            }
            let mut excess: u32 = cut.iter().sum();
            if excess == 0 {
                continue;
            }

            // Move the excess on, priority by priority.
            let mut order: Vec<usize> = (0..row.entries.len())
                .filter(|&k| {
                    let e = &row.entries[k];
                    cut[k] == 0
                        && statuses[e.locality].takes_traffic()
                        && statuses[e.locality].health.bp() > 0
                        && matches!(e.note, EntryNote::Split | EntryNote::Ramp { .. })
                })
                .collect();
            order.sort_by_key(|&k| (row.entries[k].priority, k));
            let mut level_start = 0;
            while excess > 0 && level_start < order.len() {
                let priority = row.entries[order[level_start]].priority;
                let level_end = order[level_start..]
                    .iter()
                    .position(|&k| row.entries[k].priority != priority)
                    .map_or(order.len(), |n| level_start + n);
                let level = &order[level_start..level_end];
                let open: Vec<usize> = level
                    .iter()
                    .copied()
                    .filter(|&k| caps[row.entries[k].locality].is_none())
                    .collect();
                if !open.is_empty() {
                    let keys: Vec<u64> = open
                        .iter()
                        .map(|&k| {
                            let e = &row.entries[k];
                            1 + u64::from(e.weight_bp) + u64::from(statuses[e.locality].health.bp())
                        })
                        .collect();
                    for (k, part) in open.iter().zip(apportion(excess, &keys)) {
                        row.entries[*k].weight_bp += part;
                    }
                    excess = 0;
                    break;
                }
                for &k in level {
                    let e = &mut row.entries[k];
                    let Some(cap) = caps[e.locality] else {
                        continue;
                    };
                    let by_rate = headroom[e.locality]
                        .saturating_mul(BP)
                        .checked_div(demand)
                        .unwrap_or(u64::from(TOTAL_BASIS_POINTS));
                    let by_share = cap.share_bp.saturating_sub(e.weight_bp);
                    let take = (by_rate.min(u64::from(by_share)) as u32).min(excess);
                    if take > 0 {
                        e.weight_bp += take;
                        excess -= take;
                        headroom[e.locality] =
                            headroom[e.locality].saturating_sub(u64::from(take) * demand / BP);
                    }
                }
                level_start = level_end;
            }
            if excess == 0 {
                continue;
            }

            // Nobody can take the rest: it stays home.
            let homes: Vec<u64> = row
                .entries
                .iter()
                .map(|e| {
                    // Only hosts of the row: not drained, reachable, distributed to.
                    u64::from(
                        e.priority == 0
                            && !matches!(statuses[e.locality].standing, Standing::Drained(_))
                            && !matches!(
                                e.note,
                                EntryNote::Unreachable | EntryNote::NotDistributed
                            ),
                    )
                })
                .collect();
            let parts = apportion(excess, &homes);
            if parts.iter().all(|&p| p == 0) {
                // Not even a home: give the weight back rather than lose it.
                for (e, c) in row.entries.iter_mut().zip(&cut) {
                    e.weight_bp += c;
                }
                continue;
            }
            for (e, p) in row.entries.iter_mut().zip(&parts) {
                if *p > 0 {
                    e.weight_bp += p;
                    e.note = EntryNote::Shed { shed_bp: *p };
                }
            }
            if subset_index == 0 {
                shortfalls.push(Shortfall {
                    source: row.source.clone(),
                    unplaced_rps: u64::from(excess) * demand / BP,
                    full: row
                        .entries
                        .iter()
                        .zip(&cut)
                        .filter(|(_, c)| **c > 0)
                        .map(|(e, _)| {
                            let limit = caps[e.locality].and_then(|c| c.limit_rps).unwrap_or(0);
                            (service.localities[e.locality].locality.clone(), limit)
                        })
                        .collect(),
                });
            }
        }
    }
    shortfalls
}
