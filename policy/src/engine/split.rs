//! The arithmetic of a split, exactly as istiod and Envoy do it: priorities from locality
//! and labels, `distribute` weights, Envoy's priority load with the overprovisioning factor,
//! locality weighting inside a priority, panic, and largest-remainder rounding to basis
//! points.
//!
//! Everything here is integer arithmetic on plain numbers, so every replica computes the
//! same bytes. Nothing here knows about health windows or verdicts: callers pass each
//! destination's health as a fraction in basis points.

use std::cmp::Ordering;

use crate::engine::topology::LocalityIds;
use crate::locality::{Locality, LocalityPattern};
use crate::weights::TOTAL_BASIS_POINTS;

/// Envoy's default overprovisioning factor, in percent (1.4).
pub const OVERPROVISIONING_PERCENT: u64 = 140;

/// Envoy's default panic threshold, in percent, used when no outlierDetection sets
/// `minHealthPercent` (Istio sets Envoy's threshold only together with outlier detection).
pub const ENVOY_DEFAULT_PANIC_PERCENT: u32 = 50;

/// The highest priority istiod's locality failover assigns before compaction.
pub const LOCALITY_PRIORITY_LEVELS: u32 = 5;

const BP: u64 = TOTAL_BASIS_POINTS as u64;

/// Why a destination got its locality priority (istiod's `LbPriority` plus failover rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalityMatch {
    /// Same region, zone and subzone: 0.
    SameSubzone,
    /// Same region and zone: 1.
    SameZone,
    /// Same region: 2.
    SameRegion,
    /// Another region, the failover target (or no failover rule for the source): 3.
    OtherRegion,
    /// Another region that is not the `to` of the source region's failover rule: 4.
    NotFailoverTarget,
}

impl LocalityMatch {
    /// The raw priority istiod gives this match.
    pub fn priority(self) -> u32 {
        match self {
            LocalityMatch::SameSubzone => 0,
            LocalityMatch::SameZone => 1,
            LocalityMatch::SameRegion => 2,
            LocalityMatch::OtherRegion => 3,
            LocalityMatch::NotFailoverTarget => 4,
        }
    }
}

/// A `failover` rule: traffic from region `from` fails over to region `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverRule {
    /// The source region.
    pub from: String,
    /// The target region.
    pub to: String,
}

/// The locality part of a destination's priority, as istiod's `applyLocalityFailover`
/// computes it, on interned locality parts: region/zone/subzone match, then, when the
/// first failover rule whose `from` is the source's region exists (`failover_to` is its
/// `to`), every other region except that one drops to 4.
pub fn locality_match_ids(
    source: LocalityIds,
    dest: LocalityIds,
    failover_to: Option<u32>,
) -> LocalityMatch {
    if source.region != dest.region {
        return match failover_to {
            Some(to) if to != dest.region => LocalityMatch::NotFailoverTarget,
            _ => LocalityMatch::OtherRegion,
        };
    }
    if source.zone != dest.zone {
        LocalityMatch::SameRegion
    } else if source.subzone != dest.subzone {
        LocalityMatch::SameZone
    } else {
        LocalityMatch::SameSubzone
    }
}

/// One `failoverPriority` entry: a label name, optionally with the value to compare to
/// (`key=value`) instead of the source's own label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityLabel {
    /// The label name.
    pub key: String,
    /// The literal value, for `key=value` entries.
    pub value: Option<String>,
}

impl PriorityLabel {
    /// Parses one `failoverPriority` entry the way istiod splits it.
    pub fn parse(entry: &str) -> PriorityLabel {
        match entry.split_once('=') {
            Some((key, value)) if !value.contains('=') => PriorityLabel {
                key: key.to_string(),
                value: Some(value.to_string()),
            },
            _ => PriorityLabel {
                key: entry.split('=').next().unwrap_or(entry).to_string(),
                value: None,
            },
        }
    }
}

/// The label part of a priority, as istiod's `applyFailoverPriorityPerLocality`: 0 when
/// every label matches, otherwise `N - j` for the first mismatching label `j`. Returns the
/// priority and the index of the first mismatch.
pub fn label_priority(
    labels: &[PriorityLabel],
    source_label: impl Fn(&str) -> Option<String>,
    dest_label: impl Fn(&str) -> Option<String>,
) -> (u32, Option<usize>) {
    let n = labels.len() as u32;
    for (j, label) in labels.iter().enumerate() {
        let wanted = match &label.value {
            Some(v) => Some(v.clone()),
            None => source_label(&label.key),
        };
        // istiod compares the strings, an absent label reading as "".
        if wanted.unwrap_or_default() != dest_label(&label.key).unwrap_or_default() {
            return (n - j as u32, Some(j));
        }
    }
    (0, None)
}

/// Renumbers priorities to 0..M without gaps, keeping their order (istiod's compaction).
pub fn compact_priorities(priorities: &mut [u32]) {
    if priorities.iter().all(|&p| p < 64) {
        // The common case (locality priorities are 0..=4): a bitmask of those in use.
        let used = priorities.iter().fold(0u64, |m, &p| m | 1 << p);
        for p in priorities.iter_mut() {
            *p = (used & ((1u64 << *p) - 1)).count_ones();
        }
        return;
    }
    let mut distinct: Vec<u32> = priorities.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for p in priorities.iter_mut() {
        // The value is always present: `distinct` holds every priority.
        *p = distinct.partition_point(|d| d < p) as u32;
    }
}

/// The `distribute` weights for a source, as istiod's `applyLocalityWeights`: the first
/// rule whose `from` matches the source; for each `to` pattern (in the order given), the
/// localities it newly matches get `ceil(orig x weight / sum of orig over them)`.
/// Localities matched by no `to` get `None` (they receive nothing). Returns `None` when no
/// rule matches the source, so the original weights stand.
pub fn distribute_weights(
    source: &Locality,
    rules: &[(LocalityPattern, Vec<(LocalityPattern, u32)>)],
    dests: &[(&Locality, u64)],
) -> Option<(usize, Vec<Option<u64>>)> {
    let (index, (_, to)) = rules
        .iter()
        .enumerate()
        .find(|(_, (from, _))| from.matches(source))?;
    let mut out: Vec<Option<u64>> = vec![None; dests.len()];
    let mut matched = vec![false; dests.len()];
    for (pattern, weight) in to {
        let members: Vec<usize> = (0..dests.len())
            .filter(|&i| !matched[i] && pattern.matches(dests[i].0))
            .collect();
        let total: u64 = members.iter().map(|&i| dests[i].1).sum();
        for &i in &members {
            matched[i] = true;
            let product = dests[i].1 * u64::from(*weight);
            // istiod keeps the original weight when the product is zero.
            out[i] = Some(if product > 0 && total > 0 {
                product.div_ceil(total)
            } else {
                dests[i].1
            });
        }
    }
    Some((index, out))
}

/// One destination as the split sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Compacted priority, 0 first.
    pub priority: u32,
    /// Locality weight: the sum of its endpoints' weights (or the `distribute` weight).
    pub weight: u64,
    /// Endpoints, for the priority's health by host count.
    pub hosts: u64,
    /// How many of them are healthy, in ten-thousandths of a host (a host that answers
    /// 70% of requests counts as 7000), at most `hosts x 10000`.
    pub healthy: u64,
}

/// What the split decided for each priority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriorityOutcome {
    /// Envoy's health of the priority, in percent (with the overprovisioning factor).
    pub health_percent: u32,
    /// The share of load it receives, in percent.
    pub load_percent: u32,
    /// True when it spreads over all its hosts because too few are healthy.
    pub panic: bool,
}

/// The result of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// Weight of each candidate, in basis points; all zero or summing to 10000.
    pub weights_bp: Vec<u32>,
    /// Per priority, in order.
    pub priorities: Vec<PriorityOutcome>,
}

impl Split {
    /// The split's total: 0 (nothing can take traffic) or 10000.
    pub fn total_bp(&self) -> u64 {
        self.weights_bp.iter().map(|&w| u64::from(w)).sum()
    }
}

/// Envoy's availability of a set of hosts: `min(100, 140 x healthy / total)`, whole percent
/// (`healthy` in ten-thousandths of a host).
fn priority_health_percent(healthy: u128, hosts: u128) -> u32 {
    if hosts == 0 {
        return 0;
    }
    let value = u128::from(OVERPROVISIONING_PERCENT) * healthy / (hosts * u128::from(BP));
    value.min(100) as u32
}

/// One unit of availability inside a priority: 10^12 is a locality at 100% or more.
const AVAILABILITY_WHOLE: u128 = 1_000_000_000_000;

/// Envoy's locality availability `min(1, 1.4 x healthy / hosts)`, in units of 10^-12.
fn availability(c: &Candidate) -> u128 {
    let healthy = u128::from(c.healthy.min(c.hosts * BP));
    let scale = 100 * u128::from(c.hosts) * u128::from(BP);
    if c.hosts == 0 {
        0
    } else if healthy * u128::from(OVERPROVISIONING_PERCENT) >= scale {
        // Enough healthy hosts for the whole share: no division needed.
        AVAILABILITY_WHOLE
    } else {
        healthy * u128::from(OVERPROVISIONING_PERCENT) * AVAILABILITY_WHOLE / scale
    }
}

/// Reusable buffers for [`split`], so computing many rows allocates nothing per row.
#[derive(Debug, Default)]
pub struct Splitter {
    hosts: Vec<u128>,
    healthy: Vec<u128>,
    effective: Vec<u128>,
    sums: Vec<u128>,
    remainders: Vec<(u128, u128, usize)>,
}

/// Effective weights are scaled down to at most this many bits before the shares are
/// taken, so every product in the rounding fits in 128 bits.
const EFFECTIVE_BITS: u32 = 48;

/// Splits load over the candidates with Envoy's priority load, locality weighting and
/// panic threshold (`panic_percent`; 0 disables panic), then rounds to basis points with
/// the largest-remainder method (ties go to the earlier candidate).
pub fn split(candidates: &[Candidate], panic_percent: u32) -> Split {
    let mut out = Split::default();
    Splitter::default().split_into(candidates, panic_percent, &mut out);
    out
}

impl Splitter {
    /// [`split`], writing into `out` and reusing this splitter's buffers.
    pub fn split_into(&mut self, candidates: &[Candidate], panic_percent: u32, out: &mut Split) {
        let levels = candidates
            .iter()
            .map(|c| c.priority as usize + 1)
            .max()
            .unwrap_or(0);
        let hosts = &mut self.hosts;
        let healthy = &mut self.healthy;
        hosts.clear();
        hosts.resize(levels, 0);
        healthy.clear();
        healthy.resize(levels, 0);
        for c in candidates {
            let p = c.priority as usize;
            hosts[p] += u128::from(c.hosts);
            healthy[p] += u128::from(c.healthy.min(c.hosts * BP));
        }
        let priorities = &mut out.priorities;
        priorities.clear();
        priorities.extend((0..levels).map(|p| PriorityOutcome {
            health_percent: priority_health_percent(healthy[p], hosts[p]),
            ..PriorityOutcome::default()
        }));
        let total_health: u32 = priorities.iter().map(|p| p.health_percent).sum();
        let normalized = total_health.min(100);
        // Panic: the healthy share, without the factor, below the threshold.
        let in_panic = |p: usize| {
            panic_percent > 0
                && hosts[p] > 0
                && 100 * healthy[p] < u128::from(panic_percent) * hosts[p] * u128::from(BP)
        };

        if normalized == 0 {
            // Nothing is healthy: Envoy sends everything to P0, which spreads over all its
            // hosts in panic, or fails when panic is disabled.
            if let Some(first) = priorities.first_mut() {
                first.load_percent = 100;
                first.panic = panic_percent > 0;
            }
        } else {
            let mut remaining = 100u32;
            let mut first_available = None;
            for (p, outcome) in priorities.iter_mut().enumerate() {
                if first_available.is_none() && outcome.health_percent > 0 {
                    first_available = Some(p);
                }
                let load = (outcome.health_percent * 100)
                    .checked_div(normalized)
                    .unwrap_or(0)
                    .min(remaining);
                outcome.load_percent = load;
                remaining -= load;
            }
            if let Some(p) = first_available {
                priorities[p].load_percent += remaining;
            }
            if normalized < 100 {
                for (p, outcome) in priorities.iter_mut().enumerate() {
                    outcome.panic = in_panic(p);
                }
            }
        }

        // Effective locality weights inside each priority that takes load, and their sums.
        let effective = &mut self.effective;
        effective.clear();
        effective.extend(candidates.iter().map(|c| {
            let outcome = &priorities[c.priority as usize];
            if outcome.load_percent == 0 {
                0
            } else if outcome.panic {
                u128::from(c.weight)
            } else {
                u128::from(c.weight) * availability(c)
            }
        }));
        let sums = &mut self.sums;
        let sum_up = |sums: &mut Vec<u128>, effective: &[u128]| {
            sums.clear();
            sums.resize(levels, 0);
            for (c, e) in candidates.iter().zip(effective) {
                sums[c.priority as usize] += e;
            }
        };
        sum_up(sums, effective);
        let largest = sums.iter().copied().max().unwrap_or(0);
        let bits = 128 - largest.leading_zeros();
        if bits > EFFECTIVE_BITS {
            let shift = bits - EFFECTIVE_BITS;
            for e in effective.iter_mut() {
                *e >>= shift;
            }
            sum_up(sums, effective);
        }
        // A priority with load but no effective weight cannot take it: its load is lost,
        // and the row is renormalised over what remains.
        let live_load: u128 = priorities
            .iter()
            .zip(sums.iter())
            .filter(|(_, s)| **s > 0)
            .map(|(o, _)| u128::from(o.load_percent))
            .sum();
        let weights_bp = &mut out.weights_bp;
        weights_bp.clear();
        weights_bp.resize(candidates.len(), 0);
        if live_load == 0 {
            return;
        }
        // Exact share of candidate i = load_p x eff_i / (sum_p x live_load); in basis
        // points the numerator is BP x load_p x eff_i and the denominator sum_p x live_load.
        let remainders = &mut self.remainders;
        remainders.clear();
        let mut assigned: u64 = 0;
        for (i, (c, e)) in candidates.iter().zip(effective.iter()).enumerate() {
            let p = c.priority as usize;
            if sums[p] == 0 || *e == 0 || priorities[p].load_percent == 0 {
                continue;
            }
            let numerator = u128::from(BP) * u128::from(priorities[p].load_percent) * e;
            let denominator = sums[p] * live_load;
            let whole = numerator / denominator;
            weights_bp[i] = whole as u32;
            assigned += whole as u64;
            let rest = numerator - whole * denominator;
            if rest > 0 {
                remainders.push((rest, denominator, i));
            }
        }
        let leftover = (BP - assigned) as usize;
        // Largest remainder first; equal remainders go to the earlier candidate.
        remainders.sort_unstable_by(|a, b| match (b.0 * a.1).cmp(&(a.0 * b.1)) {
            Ordering::Equal => a.2.cmp(&b.2),
            other => other,
        });
        for &(_, _, i) in remainders.iter().take(leftover) {
            weights_bp[i] += 1;
        }
    }
}

/// Splits `total` in proportion to `weights` with the largest-remainder method: the parts
/// add up to exactly `total` (when any weight is positive); equal remainders go to the
/// earlier index.
pub fn apportion(total: u32, weights: &[u64]) -> Vec<u32> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut parts = vec![0u32; weights.len()];
    if sum == 0 {
        return parts;
    }
    let mut assigned = 0u64;
    let mut remainders = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let numerator = u128::from(total) * u128::from(w);
        parts[i] = (numerator / sum) as u32;
        assigned += u64::from(parts[i]);
        let rest = numerator % sum;
        if rest > 0 {
            remainders.push((rest, i));
        }
    }
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let leftover = (u64::from(total) - assigned) as usize;
    for &(_, i) in remainders.iter().take(leftover) {
        parts[i] += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(text: &str) -> Locality {
        text.parse().unwrap()
    }

    /// Interned parts for test localities: each distinct text gets its own number.
    fn ids(text: &str) -> LocalityIds {
        let l = loc(text);
        let n = |part: &str| {
            part.bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        };
        LocalityIds {
            region: n(&l.region),
            zone: n(&l.zone),
            subzone: n(&l.subzone),
        }
    }

    fn cand(priority: u32, weight: u64, hosts: u64, healthy_percent: u64) -> Candidate {
        Candidate {
            priority,
            weight,
            hosts,
            healthy: hosts * healthy_percent * 100,
        }
    }

    fn percents(split: &Split) -> Vec<u32> {
        split.weights_bp.iter().map(|w| (w + 50) / 100).collect()
    }

    // Envoy's priority-level table (intro/arch_overview/upstream/load_balancing/priority).
    #[test]
    fn envoy_priority_table_71_percent_healthy_gives_99_1() {
        let s = split(&[cand(0, 1, 100, 71), cand(1, 1, 100, 100)], 0);
        assert_eq!(s.weights_bp, vec![9900, 100]);
    }

    #[test]
    fn envoy_priority_table_50_percent_healthy_gives_70_30() {
        let s = split(&[cand(0, 1, 100, 50), cand(1, 1, 100, 100)], 0);
        assert_eq!(s.weights_bp, vec![7000, 3000]);
    }

    #[test]
    fn envoy_priority_table_25_and_25_gives_50_50() {
        let s = split(&[cand(0, 1, 100, 25), cand(1, 1, 100, 25)], 0);
        assert_eq!(s.weights_bp, vec![5000, 5000]);
        assert_eq!(s.priorities[0].health_percent, 35);
    }

    #[test]
    fn envoy_priority_table_healthy_p0_takes_everything() {
        let s = split(&[cand(0, 1, 10, 100), cand(1, 1, 10, 100)], 0);
        assert_eq!(s.weights_bp, vec![10_000, 0]);
        let s = split(&[cand(0, 1, 100, 72), cand(1, 1, 100, 100)], 0);
        assert_eq!(s.weights_bp, vec![10_000, 0], "72% x 1.4 is over 100%");
    }

    #[test]
    fn envoy_three_priorities_spill_in_order() {
        // P0 20% -> 28, P1 20% -> 28, P2 100% -> 100: NTH 100 -> 28/28/44.
        let s = split(
            &[cand(0, 1, 10, 20), cand(1, 1, 10, 20), cand(2, 1, 10, 100)],
            0,
        );
        assert_eq!(s.weights_bp, vec![2800, 2800, 4400]);
    }

    // Envoy's locality-weighted table: weights 1:2, the first 50% healthy -> 26/74.
    #[test]
    fn envoy_locality_weights_1_2_first_half_healthy_gives_26_74() {
        let s = split(&[cand(0, 1, 2, 50), cand(0, 2, 2, 100)], 0);
        assert_eq!(percents(&s), vec![26, 74]);
        assert_eq!(s.total_bp(), 10_000);
    }

    #[test]
    fn five_of_seven_ready_is_exactly_100_percent_with_the_factor() {
        // 140 x 5 / 7 = 100: no spill, as Envoy computes it with host counts.
        let s = split(&[cand_hosts(0, 7, 5), cand_hosts(1, 1, 1)], 0);
        assert_eq!(s.weights_bp, vec![10_000, 0]);
        let s = split(&[cand_hosts(0, 7, 5), cand_hosts(0, 7, 7)], 0);
        assert_eq!(
            s.weights_bp,
            vec![5000, 5000],
            "both localities fully available"
        );
    }

    fn cand_hosts(priority: u32, hosts: u64, ready: u64) -> Candidate {
        Candidate {
            priority,
            weight: 1,
            hosts,
            healthy: ready * 10_000,
        }
    }

    #[test]
    fn locality_weight_follows_endpoint_weight_sum() {
        let s = split(&[cand(0, 1, 1, 100), cand(0, 3, 3, 100)], 0);
        assert_eq!(s.weights_bp, vec![2500, 7500]);
    }

    #[test]
    fn panic_spreads_over_every_host_of_the_priority() {
        // Only one priority at 40% healthy: NTH 56 < 100 and 40% < 50%: panic.
        let s = split(&[cand(0, 1, 5, 0), cand(0, 1, 5, 80)], 50);
        assert!(s.priorities[0].panic);
        assert_eq!(s.weights_bp, vec![5000, 5000]);
        // Without panic the healthy locality takes everything.
        let s = split(&[cand(0, 1, 5, 0), cand(0, 1, 5, 80)], 0);
        assert_eq!(s.weights_bp, vec![0, 10_000]);
    }

    #[test]
    fn panic_is_ignored_when_lower_priorities_cover_the_load() {
        let s = split(&[cand(0, 1, 10, 10), cand(1, 1, 10, 100)], 50);
        assert!(!s.priorities[0].panic);
        assert_eq!(s.weights_bp, vec![1400, 8600]);
    }

    #[test]
    fn nothing_healthy_routes_nothing_without_panic() {
        let s = split(&[cand(0, 1, 3, 0), cand(1, 1, 3, 0)], 0);
        assert_eq!(s.total_bp(), 0);
        let s = split(&[cand(0, 1, 3, 0), cand(1, 1, 3, 0)], 50);
        assert_eq!(s.weights_bp, vec![10_000, 0], "all load to P0, in panic");
    }

    #[test]
    fn huge_endpoint_weights_neither_overflow_nor_skew() {
        let big = |priority, weight| Candidate {
            priority,
            weight,
            hosts: 1,
            healthy: 10_000,
        };
        let s = split(
            &[
                big(0, u64::from(u32::MAX) * 100),
                big(0, u64::from(u32::MAX) * 300),
            ],
            0,
        );
        assert_eq!(s.weights_bp, vec![2500, 7500]);
    }

    #[test]
    fn rounding_gives_exactly_10000_with_ties_to_the_first() {
        let s = split(
            &[cand(0, 1, 1, 100), cand(0, 1, 1, 100), cand(0, 1, 1, 100)],
            0,
        );
        assert_eq!(s.weights_bp, vec![3334, 3333, 3333]);
    }

    #[test]
    fn apportion_is_exact_and_deterministic() {
        assert_eq!(apportion(10_000, &[1, 1, 1]), vec![3334, 3333, 3333]);
        assert_eq!(apportion(7, &[0, 5, 0]), vec![0, 7, 0]);
        assert_eq!(apportion(10, &[0, 0]), vec![0, 0]);
        assert_eq!(apportion(100, &[1, 2]), vec![33, 67]);
    }

    #[test]
    fn istio_failover_task_priorities() {
        // Caller in region1/zone1 with failover region1 -> region2 (Istio's failover task).
        let source = ids("region1/zone1");
        let failover_to = Some(ids("region2").region);
        let raw: Vec<u32> = [
            "region1/zone1",
            "region1/zone2",
            "region2/zone3",
            "region3/zone4",
        ]
        .iter()
        .map(|d| locality_match_ids(source, ids(d), failover_to).priority())
        .collect();
        assert_eq!(raw, vec![0, 2, 3, 4]);
        let mut compacted = raw.clone();
        compact_priorities(&mut compacted);
        assert_eq!(compacted, vec![0, 1, 2, 3]);
        let mut large = vec![100, 7, 7, 300, 0];
        compact_priorities(&mut large);
        assert_eq!(large, vec![2, 1, 1, 3, 0]);
    }

    #[test]
    fn locality_priorities_without_rules() {
        let source = ids("r/z/s");
        let p = |d: &str| locality_match_ids(source, ids(d), None).priority();
        assert_eq!(
            [p("r/z/s"), p("r/z/t"), p("r/y/s"), p("q/z/s")],
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn failover_priority_labels_count_from_the_first_mismatch() {
        let labels: Vec<PriorityLabel> =
            ["topology.istio.io/network", "topology.kubernetes.io/region"]
                .iter()
                .map(|l| PriorityLabel::parse(l))
                .collect();
        let source = |k: &str| {
            Some(match k {
                "topology.istio.io/network" => "n1".to_string(),
                _ => "r1".to_string(),
            })
        };
        let dest = |net: &'static str, region: &'static str| {
            move |k: &str| {
                Some(match k {
                    "topology.istio.io/network" => net.to_string(),
                    _ => region.to_string(),
                })
            }
        };
        assert_eq!(label_priority(&labels, source, dest("n1", "r1")).0, 0);
        assert_eq!(label_priority(&labels, source, dest("n1", "r2")).0, 1);
        assert_eq!(label_priority(&labels, source, dest("n2", "r1")).0, 2);
        // `key=value` compares with the literal value.
        let literal = [PriorityLabel::parse("version=v2")];
        let v = |value: &'static str| move |_: &str| Some(value.to_string());
        assert_eq!(label_priority(&literal, v("v1"), v("v2")).0, 0);
        assert_eq!(label_priority(&literal, v("v2"), v("v1")).0, 1);
    }

    #[test]
    fn distribute_uses_the_ceil_rule_and_drops_unmatched_localities() {
        let pattern = |t: &str| t.parse::<LocalityPattern>().unwrap();
        let rules = vec![(
            pattern("region1/zone1/*"),
            vec![
                (pattern("region1/zone1/*"), 80),
                (pattern("region1/zone2/*"), 20),
            ],
        )];
        let a = loc("region1/zone1/s1");
        let b = loc("region1/zone1/s2");
        let c = loc("region1/zone2/s1");
        let d = loc("region2/zone1/s1");
        // zone1 has two subzones with 1 and 2 endpoints: 80 x 1/3 -> 27, 80 x 2/3 -> 54.
        let (index, weights) =
            distribute_weights(&a, &rules, &[(&a, 1), (&b, 2), (&c, 5), (&d, 4)]).unwrap();
        assert_eq!(index, 0);
        assert_eq!(weights, vec![Some(27), Some(54), Some(20), None]);
        assert!(distribute_weights(&d, &rules, &[(&a, 1)]).is_none());
    }
}
