//! From state to weight tables: per service, the standing of every destination locality
//! (verdict, guards), then per (subset, source locality) a row in basis points with the
//! priority and the reason of every entry.
//!
//! The order of the work is the order an operator reads an explanation in:
//! 1. standing: drained, taken out by the engine, or in service; guards may keep a
//!    locality in (`maxDrained`, `neverDrainLast`);
//! 2. priorities exactly as istiod assigns them, or the `distribute` split;
//! 3. Envoy's priority load and locality weighting ([`split`]);
//! 4. the failback ramp, blended between the row without and with the recovering locality;
//! 5. the capacity guard ([`capacity`]), which caps spill and says what it could not place.
//!
//! Rows hold numbers and small enums only; words are made on demand by `explain`, so
//! recomputing a large mesh does not format a million strings.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::split::{
    self, Candidate, LocalityMatch, PriorityOutcome, apportion, compact_priorities,
    distribute_weights, label_priority, locality_match_ids,
};
use crate::engine::state::{
    Drain, EngineState, Health, Inventory, LocalityState, inventory_of, is_engine_failure,
    signals_of,
};
use crate::engine::topology::{LocalityIds, LocalityLb, ServiceTopology, SubsetTopology, Topology};
use crate::engine::verdict::Cause;
use crate::engine::window::Counters;
use crate::engine::{capacity, guards};
use crate::locality::Locality;
use crate::weights::{Signals, TOTAL_BASIS_POINTS, Verdict};

/// A guard that kept a locality in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// `maxDrained` was reached.
    MaxDrained {
        /// The limit, resolved to a count.
        limit: u32,
    },
    /// It is among the last localities still able to serve.
    NeverDrainLast,
}

/// Whether a locality takes traffic, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It takes its share (its health may still reduce it).
    InService,
    /// An operator drained it.
    Drained(Box<Drain>),
    /// The engine took it out, or it has no endpoint to send to.
    Removed,
    /// It would be out, but a guard keeps it in service on its readiness alone.
    Held(Guard),
}

/// A destination locality of a service, as every row sees it. Its name is at the same
/// index in [`ServiceWeights::destinations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityStatus {
    /// The verdict shown.
    pub verdict: Verdict,
    /// When it began (leader time, ms).
    pub since_ms: u64,
    /// Why the machine says what it says.
    pub cause: Cause,
    /// What it was judged on.
    pub signals: Signals,
    /// Health used for the split.
    pub health: Health,
    /// Share of its full weight it may have (the ramp), in basis points.
    pub allowance_bp: u32,
    /// Whether it takes traffic.
    pub standing: Standing,
}

impl LocalityStatus {
    /// True when it is in service (on its own or held by a guard).
    pub fn takes_traffic(&self) -> bool {
        matches!(self.standing, Standing::InService | Standing::Held(_))
    }
}

/// How a row's priorities were assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowMode {
    /// `localityLbSetting.enabled: false`: one priority, no locality preference.
    LocalityLbDisabled,
    /// No outlierDetection: Istio puts everything at priority 0.
    NoOutlierDetection,
    /// Priorities from locality and `failover` / `failoverPriority`.
    Failover,
    /// The `distribute` rule at this index.
    Distribute(usize),
}

/// Why an entry has its priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityWhy {
    /// Everything is at priority 0 (see the row's mode).
    Flat,
    /// From the locality match (and the source region's failover rule, by index).
    Locality {
        /// The match.
        matched: LocalityMatch,
        /// The failover rule that applied, by index.
        rule: Option<u16>,
    },
    /// From `failoverPriority` labels (and the locality, when `failover` is also set).
    Labels {
        /// The first label that did not match, by index.
        mismatch: Option<u16>,
        /// The locality part, when combined.
        matched: Option<LocalityMatch>,
        /// The failover rule that applied, by index.
        rule: Option<u16>,
    },
    /// Weighted by the `distribute` rule with this locality weight.
    Distribute {
        /// The weight it gave (saturated at `u32::MAX`).
        weight: u32,
    },
}

/// What happened to an entry beyond the plain split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryNote {
    /// Its share of the split.
    Split,
    /// Its priority is in panic: spread over all hosts, healthy or not.
    Panic,
    /// Not in service (see its standing).
    OutOfService,
    /// The source reported its gateway unreachable.
    Unreachable,
    /// The `distribute` rule sends it nothing.
    NotDistributed,
    /// Still ramping back: this share of its full weight.
    Ramp {
        /// The allowance, basis points.
        allowance_bp: u32,
    },
    /// Spill toward it was cut to respect its declared capacity.
    CapacityCapped {
        /// Weight it would have had.
        wanted_bp: u32,
    },
    /// Weight left here because no destination had capacity for it; requests sent here
    /// are expected to fail rather than overload another locality.
    Shed {
        /// Weight added here by the guard.
        shed_bp: u32,
    },
}

/// One destination of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowEntry {
    /// Index into [`ServiceWeights::localities`].
    pub locality: usize,
    /// Share, in basis points.
    pub weight_bp: u32,
    /// Compacted priority.
    pub priority: u32,
    /// Why that priority.
    pub why: PriorityWhy,
    /// What else happened.
    pub note: EntryNote,
}

/// The split of one subset from one source locality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    /// The source locality.
    pub source: Locality,
    /// How priorities were assigned.
    pub mode: RowMode,
    /// Envoy's view of each priority.
    pub priorities: Vec<PriorityOutcome>,
    /// The destinations, in locality order.
    pub entries: Vec<RowEntry>,
}

impl SourceRow {
    /// The row's total: 0 (nothing can take traffic) or 10000.
    pub fn total_bp(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.weight_bp)).sum()
    }
}

/// All rows of one subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetRows {
    /// The subset; "" for the whole service.
    pub subset: String,
    /// One row per source locality.
    pub rows: Vec<SourceRow>,
}

/// Traffic from one source the capacity guard could not place anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The source locality.
    pub source: Locality,
    /// Requests per second left on the source's own (failing) localities.
    pub unplaced_rps: u64,
    /// The localities that were full, with their declared capacity in requests per second
    /// (0 when only `maxShare` limited them).
    pub full: Vec<(Locality, u64)>,
}

/// The weights of one service, and the standing they were made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceWeights {
    /// The service host.
    pub service: String,
    /// `namespace/name` of its FailoverPolicy.
    pub policy: Option<String>,
    /// Its destination localities' names; row entries and statuses index into it.
    pub destinations: Arc<[Locality]>,
    /// Its destination localities' standing, in the same order.
    pub localities: Vec<LocalityStatus>,
    /// Rows per subset, the whole service first.
    pub subsets: Vec<SubsetRows>,
    /// What the capacity guard could not place.
    pub shortfalls: Vec<Shortfall>,
}

impl ServiceWeights {
    /// The name of the destination locality at `index`.
    pub fn destination(&self, index: usize) -> &Locality {
        &self.destinations[index]
    }

    /// The rows of a subset ("" for the whole service).
    pub fn subset(&self, name: &str) -> Option<&SubsetRows> {
        self.subsets.iter().find(|s| s.subset == name)
    }

    /// Whether `other` routes as these weights do: the same rows, and every destination
    /// with the same verdict (since the same time), standing, ramp allowance and endpoint
    /// counts, whatever the traffic counts and the causes behind them. Those move with
    /// every report while the split stays put; they are for people (`explain`,
    /// `status`), and a proxy has nothing to do with them.
    pub fn routes_as(&self, other: &ServiceWeights) -> bool {
        let same_standing = |a: &LocalityStatus, b: &LocalityStatus| {
            a.verdict == b.verdict
                && a.since_ms == b.since_ms
                && a.standing == b.standing
                && a.allowance_bp == b.allowance_bp
                && a.health.available == b.health.available
                && a.health.total == b.health.total
                && a.signals.ready_endpoints == b.signals.ready_endpoints
                && a.signals.total_endpoints == b.signals.total_endpoints
        };
        self.service == other.service
            && self.policy == other.policy
            && self.destinations == other.destinations
            && self.subsets == other.subsets
            && self.localities.len() == other.localities.len()
            && self
                .localities
                .iter()
                .zip(&other.localities)
                .all(|(a, b)| same_standing(a, b))
    }
}

impl Default for ServiceWeights {
    fn default() -> Self {
        ServiceWeights {
            service: String::new(),
            policy: None,
            destinations: Arc::from(Vec::new()),
            localities: Vec::new(),
            subsets: Vec::new(),
            shortfalls: Vec::new(),
        }
    }
}

impl Default for SourceRow {
    fn default() -> Self {
        SourceRow {
            source: Locality::default(),
            mode: RowMode::Failover,
            priorities: Vec::new(),
            entries: Vec::new(),
        }
    }
}

/// Computes every service's weights.
pub fn compute(state: &EngineState, topology: &Topology) -> Vec<ServiceWeights> {
    let mut out = Vec::new();
    compute_into(state, topology, &mut out);
    out
}

/// Computes every service's weights into `out`, reusing the memory of the tables already
/// there: a coordinator that keeps its tables recomputes without allocating them again.
pub fn compute_into(state: &EngineState, topology: &Topology, out: &mut Vec<ServiceWeights>) {
    out.resize_with(topology.services.len(), ServiceWeights::default);
    let mut scratch = Scratch::default();
    for (service, weights) in topology.services.values().zip(out.iter_mut()) {
        compute_service_with(state, topology, service, &mut scratch, weights);
    }
}

/// Computes one service's weights.
pub fn compute_service(
    state: &EngineState,
    topology: &Topology,
    service: &ServiceTopology,
) -> ServiceWeights {
    let mut out = ServiceWeights::default();
    compute_service_with(state, topology, service, &mut Scratch::default(), &mut out);
    out
}

fn compute_service_with(
    state: &EngineState,
    topology: &Topology,
    service: &ServiceTopology,
    scratch: &mut Scratch,
    out: &mut ServiceWeights,
) {
    if out.service != service.host {
        out.service = service.host.clone();
    }
    out.policy.clone_from(&service.policy);
    out.destinations = service.destinations.clone();
    standings(state, topology, service, &mut out.localities);
    let sources: Vec<RowSource> = if topology.sources.is_empty() {
        service
            .localities
            .iter()
            .map(|d| RowSource {
                locality: &d.locality,
                ids: d.ids,
                clusters: &d.owners,
                labels: None,
            })
            .collect()
    } else {
        topology
            .sources
            .iter()
            .map(|s| RowSource {
                locality: &s.locality,
                ids: s.ids,
                clusters: &s.clusters,
                labels: Some(&s.labels),
            })
            .collect()
    };
    let unreachable: Vec<Vec<bool>> = sources
        .iter()
        .map(|source| unreachable_from(state, service, source))
        .collect();
    out.subsets.truncate(service.subsets.len());
    out.subsets
        .resize_with(service.subsets.len(), || SubsetRows {
            subset: String::new(),
            rows: Vec::new(),
        });
    for (subset, rows) in service.subsets.iter().zip(out.subsets.iter_mut()) {
        if rows.subset != subset.name {
            rows.subset = subset.name.clone();
        }
        rows.rows.resize_with(sources.len(), SourceRow::default);
        rows.rows.truncate(sources.len());
        for ((source, unreachable), row) in
            sources.iter().zip(&unreachable).zip(rows.rows.iter_mut())
        {
            build_row(
                service,
                subset,
                &out.localities,
                source,
                unreachable,
                scratch,
                row,
            );
        }
    }
    let source_clusters: Vec<(&Locality, &[String])> =
        sources.iter().map(|s| (s.locality, s.clusters)).collect();
    out.shortfalls = capacity::apply(
        state,
        service,
        &out.localities,
        &source_clusters,
        &mut out.subsets,
    );
}

/// Step 1: the standing of every destination locality, guards included.
fn standings(
    state: &EngineState,
    topology: &Topology,
    service: &ServiceTopology,
    statuses: &mut Vec<LocalityStatus>,
) {
    let settings = &service.settings;
    let known = state.services.get(&service.host);
    let states = aligned_states(known, service);
    statuses.clear();
    statuses.extend(service.localities.iter().zip(&states).map(|(dest, loc)| {
        let loc = *loc;
        // What the last tick saw; before any tick, the configuration (all ready).
        let (counts, inventory) = match loc.and_then(|l| l.observed) {
            Some(observed) => observed,
            None => (
                Counters::default(),
                loc.map(|l| inventory_of(l, dest.endpoints))
                    .unwrap_or(Inventory {
                        total: dest.endpoints,
                        ready: dest.endpoints,
                        ejected: 0,
                    }),
            ),
        };
        let signals = signals_of(&counts, inventory, settings.window);
        let configured = Health::full(dest.endpoints);
        let (mut verdict, since_ms, cause, health, allowance_bp, engine_failure) = match loc {
            Some(l) => (
                l.shown,
                l.shown_since_ms,
                l.machine.cause,
                l.health.unwrap_or(configured),
                l.allowance_bp,
                is_engine_failure(&l.machine),
            ),
            None => (
                Verdict::Healthy,
                0,
                Cause::Nominal,
                configured,
                TOTAL_BASIS_POINTS,
                false,
            ),
        };
        let drain = if state.drains.is_empty() {
            None
        } else {
            state.drain_of(topology, &service.host, &dest.locality)
        };
        let standing = if let Some(drain) = drain {
            verdict = Verdict::Drained;
            Standing::Drained(Box::new(drain.clone()))
        } else if health.bp() == 0
            || (allowance_bp == 0 && (settings.auto_failover || !engine_failure))
        {
            Standing::Removed
        } else {
            Standing::InService
        };
        let since_ms = match (drain, verdict) {
            (Some(d), _) => d.since_ms,
            _ => since_ms,
        };
        LocalityStatus {
            verdict,
            since_ms,
            cause,
            signals,
            health,
            allowance_bp: if settings.auto_failover {
                allowance_bp
            } else {
                TOTAL_BASIS_POINTS
            },
            standing,
        }
    }));
    let engine_failures: Vec<bool> = states
        .iter()
        .map(|l| l.is_some_and(|l| is_engine_failure(&l.machine)))
        .collect();
    guards::apply(statuses, service, &engine_failures);
}

/// The state of each of the service's localities, in the topology's order. Both are
/// sorted by locality, so one merge pass finds them all.
fn aligned_states<'a>(
    known: Option<&'a crate::engine::state::ServiceState>,
    service: &ServiceTopology,
) -> Vec<Option<&'a LocalityState>> {
    let mut out = Vec::with_capacity(service.localities.len());
    let Some(known) = known else {
        out.resize(service.localities.len(), None);
        return out;
    };
    if known.layout == service.layout && known.localities.len() == service.localities.len() {
        // Lined up by the last tick: the same localities in the same order.
        out.extend(known.localities.values().map(Some));
        return out;
    }
    let mut states = known.localities.iter().peekable();
    for dest in &service.localities {
        while states.next_if(|(l, _)| *l < &dest.locality).is_some() {}
        out.push(
            states
                .next_if(|(l, _)| *l == &dest.locality)
                .map(|(_, s)| s),
        );
    }
    out
}

/// Localities a source cannot reach: every cluster owning them has its gateway reported
/// unreachable by the source's clusters. A source always reaches its own locality.
fn unreachable_from(
    state: &EngineState,
    service: &ServiceTopology,
    source: &RowSource,
) -> Vec<bool> {
    let blocked: Vec<&String> = source
        .clusters
        .iter()
        .filter_map(|c| state.clusters.get(c))
        .flat_map(|c| c.unreachable.iter())
        .collect();
    if blocked.is_empty() {
        return vec![false; service.localities.len()];
    }
    service
        .localities
        .iter()
        .map(|d| {
            &d.locality != source.locality
                && !d.owners.is_empty()
                && d.owners.iter().all(|o| blocked.contains(&o))
        })
        .collect()
}

/// Where a row's traffic comes from.
struct RowSource<'a> {
    locality: &'a Locality,
    ids: LocalityIds,
    clusters: &'a [String],
    labels: Option<&'a BTreeMap<String, String>>,
}

/// Buffers reused from row to row, so a recompute allocates only its output.
#[derive(Default)]
struct Scratch {
    raw: Vec<u32>,
    included: Vec<usize>,
    candidates: Vec<Candidate>,
    weights: Vec<u64>,
    hosts: Vec<u64>,
    result: Vec<u32>,
    splitter: split::Splitter,
    full: split::Split,
    base: split::Split,
}

/// Steps 2-4 for one (subset, source).
fn build_row(
    service: &ServiceTopology,
    subset: &SubsetTopology,
    statuses: &[LocalityStatus],
    row_source: &RowSource,
    unreachable: &[bool],
    scratch: &mut Scratch,
    out: &mut SourceRow,
) {
    let source = row_source.locality;
    let source_labels = row_source.labels;
    let Scratch {
        raw,
        included,
        candidates,
        weights,
        hosts,
        result,
        splitter,
        full,
        base,
    } = scratch;
    let entries = &mut out.entries;
    entries.clear();
    entries.extend(subset.members.iter().map(|m| RowEntry {
        locality: m.locality,
        weight_bp: 0,
        priority: 0,
        why: PriorityWhy::Flat,
        note: EntryNote::Split,
    }));
    let mut mode = match &subset.locality_lb {
        LocalityLb::Disabled => RowMode::LocalityLbDisabled,
        LocalityLb::Failover { enabled: false, .. } => RowMode::NoOutlierDetection,
        LocalityLb::Failover { .. } => RowMode::Failover,
        LocalityLb::Distribute(_) => RowMode::Failover,
    };

    // Which members are hosts at all: drained and unreachable ones are not.
    included.clear();
    for (k, m) in subset.members.iter().enumerate() {
        let status = &statuses[m.locality];
        if unreachable[m.locality] {
            entries[k].note = EntryNote::Unreachable;
        } else if matches!(status.standing, Standing::Drained(_)) {
            entries[k].note = EntryNote::OutOfService;
        } else {
            if matches!(status.standing, Standing::Removed) {
                entries[k].note = EntryNote::OutOfService;
            }
            included.push(k);
        }
    }

    // Step 2: priorities (or distribute weights).
    weights.clear();
    weights.extend(subset.member_sizes.iter().map(|(weight, _)| *weight));
    // Envoy counts hosts: for the whole service that is the endpoint count its cluster
    // reports (so ready/total stays exact); a subset counts its configured endpoints.
    hosts.clear();
    hosts.extend(
        subset
            .members
            .iter()
            .zip(&subset.member_sizes)
            .map(|(m, (_, count))| {
                if subset.name.is_empty() {
                    u64::from(statuses[m.locality].health.total)
                } else {
                    *count
                }
            }),
    );
    match &subset.locality_lb {
        LocalityLb::Disabled | LocalityLb::Failover { enabled: false, .. } => {}
        LocalityLb::Failover {
            rules,
            labels,
            rule_ids,
            ..
        } => {
            let rule_for_source = rule_ids
                .iter()
                .position(|(from, _)| *from == row_source.ids.region);
            let failover_to = rule_for_source.map(|i| rule_ids[i].1);
            let rule_index = rule_for_source.and_then(|i| u16::try_from(i).ok());
            let labels_apply = !labels.is_empty() && source_labels.is_some_and(|l| !l.is_empty());
            raw.clear();
            let mut label_part = Vec::new();
            if labels_apply {
                for &k in included.iter() {
                    let m = &subset.members[k];
                    // istiod splits a locality by label priority; Fulcrum keeps one entry
                    // per locality, made of its best-matching endpoints.
                    let mut best = (u32::MAX, None, 0u64, 0u64);
                    for e in &m.endpoints {
                        let (p, mismatch) = label_priority(
                            labels,
                            |key| source_labels.and_then(|l| l.get(key)).cloned(),
                            |key| e.labels.get(key).cloned(),
                        );
                        if p < best.0 {
                            best = (p, mismatch, 0, 0);
                        }
                        if p == best.0 {
                            best.2 += e.weight;
                            best.3 += 1;
                        }
                    }
                    weights[k] = best.2;
                    hosts[k] = best.3;
                    label_part.push((best.0, best.1.and_then(|j| u16::try_from(j).ok())));
                }
                let mut compacted: Vec<u32> = label_part.iter().map(|(p, _)| *p).collect();
                compact_priorities(&mut compacted);
                for (j, p) in compacted.into_iter().enumerate() {
                    label_part[j].0 = p;
                }
            }
            for (j, &k) in included.iter().enumerate() {
                let dest = service.localities[subset.members[k].locality].ids;
                let (p, why) = if labels_apply {
                    let (p_label, mismatch) = label_part[j];
                    if rules.is_empty() {
                        (
                            p_label,
                            PriorityWhy::Labels {
                                mismatch,
                                matched: None,
                                rule: None,
                            },
                        )
                    } else {
                        let matched = locality_match_ids(row_source.ids, dest, failover_to);
                        (
                            p_label * split::LOCALITY_PRIORITY_LEVELS + matched.priority(),
                            PriorityWhy::Labels {
                                mismatch,
                                matched: Some(matched),
                                rule: rule_index.filter(|_| matched.priority() >= 3),
                            },
                        )
                    }
                } else {
                    let matched = locality_match_ids(row_source.ids, dest, failover_to);
                    (
                        matched.priority(),
                        PriorityWhy::Locality {
                            matched,
                            rule: rule_index.filter(|_| matched.priority() >= 3),
                        },
                    )
                };
                raw.push(p);
                entries[k].why = why;
            }
            compact_priorities(raw);
            for (j, &k) in included.iter().enumerate() {
                entries[k].priority = raw[j];
            }
        }
        LocalityLb::Distribute(rules) => {
            let dests: Vec<(&Locality, u64)> = subset
                .members
                .iter()
                .zip(weights.iter())
                .map(|(m, w)| (&service.localities[m.locality].locality, *w))
                .collect();
            if let Some((index, distributed)) = distribute_weights(source, rules, &dests) {
                mode = RowMode::Distribute(index);
                for (k, w) in distributed.into_iter().enumerate() {
                    match w {
                        Some(w) => {
                            weights[k] = w;
                            entries[k].why = PriorityWhy::Distribute {
                                weight: u32::try_from(w).unwrap_or(u32::MAX),
                            };
                        }
                        None => {
                            entries[k].note = EntryNote::NotDistributed;
                            weights[k] = 0;
                        }
                    }
                }
                included.retain(|&k| weights[k] > 0);
            }
        }
    }

    // Step 3: Envoy's split, with recovering localities at full health.
    candidates.clear();
    let mut ramping = false;
    for &k in included.iter() {
        let status = &statuses[subset.members[k].locality];
        let healthy = if matches!(status.standing, Standing::Removed) {
            0
        } else {
            status.health.healthy_units(hosts[k])
        };
        ramping |= healthy > 0 && status.allowance_bp < TOTAL_BASIS_POINTS;
        candidates.push(Candidate {
            priority: entries[k].priority,
            weight: weights[k],
            hosts: hosts[k],
            healthy,
        });
    }
    splitter.split_into(candidates, subset.panic_percent, full);
    result.clear();
    result.extend_from_slice(&full.weights_bp);

    // Step 4: the ramp. A recovering locality gets its allowance of what it would have at
    // full health; the rest is split as if it were still out.
    if ramping {
        let allowance: Vec<u32> = included
            .iter()
            .zip(candidates.iter())
            .map(|(&k, c)| {
                let a = statuses[subset.members[k].locality].allowance_bp;
                // Only localities that can serve are ramping; the rest keep their split.
                if c.healthy > 0 { a } else { TOTAL_BASIS_POINTS }
            })
            .collect();
        let ramps = |j: usize| allowance[j] < TOTAL_BASIS_POINTS;
        let mut without = candidates.clone();
        for (j, c) in without.iter_mut().enumerate() {
            if ramps(j) {
                c.healthy = 0;
            }
        }
        // Without panic: taking the recovering localities out is this blend's own
        // device, not a reason to spread load over unhealthy hosts.
        splitter.split_into(&without, 0, base);
        let rest: Vec<u64> = (0..allowance.len())
            .map(|j| {
                if ramps(j) {
                    0
                } else {
                    u64::from(base.weights_bp[j])
                }
            })
            .collect();
        // Blend only when something else can carry the rest; otherwise the recovering
        // localities are all there is.
        if rest.iter().any(|&w| w > 0) {
            let mut taken = 0u32;
            for (j, a) in allowance.iter().enumerate() {
                if ramps(j) {
                    result[j] = (u64::from(full.weights_bp[j]) * u64::from(*a)
                        / u64::from(TOTAL_BASIS_POINTS)) as u32;
                    taken += result[j];
                    entries[included[j]].note = EntryNote::Ramp { allowance_bp: *a };
                }
            }
            let parts = apportion(TOTAL_BASIS_POINTS - taken, &rest);
            for j in 0..allowance.len() {
                if !ramps(j) {
                    result[j] = parts[j];
                }
            }
        }
    }
    for (j, &k) in included.iter().enumerate() {
        entries[k].weight_bp = result[j];
        let p = entries[k].priority as usize;
        if full.priorities.get(p).is_some_and(|o| o.panic)
            && matches!(entries[k].note, EntryNote::Split | EntryNote::OutOfService)
        {
            entries[k].note = EntryNote::Panic;
        }
    }
    if &out.source != source {
        out.source = source.clone();
    }
    out.mode = mode;
    out.priorities.clear();
    out.priorities.extend_from_slice(&full.priorities);
}
