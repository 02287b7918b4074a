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

use crate::engine::capacity;
use crate::engine::split::{
    self, Candidate, LocalityMatch, PriorityOutcome, apportion, compact_priorities,
    distribute_weights, label_priority, locality_match,
};
use crate::engine::state::{
    Drain, EngineState, Health, Inventory, inventory_of, is_engine_failure, signals,
};
use crate::engine::topology::{LocalityLb, Members, ServiceTopology, SubsetTopology, Topology};
use crate::engine::verdict::Cause;
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
    Drained(Drain),
    /// The engine took it out, or it has no endpoint to send to.
    Removed,
    /// It would be out, but a guard keeps it in service on its readiness alone.
    Held(Guard),
}

/// A destination locality of a service, as every row sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityStatus {
    /// The locality.
    pub locality: Locality,
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
        /// The failover rule that applied.
        rule: Option<usize>,
    },
    /// From `failoverPriority` labels (and the locality, when `failover` is also set).
    Labels {
        /// The first label that did not match.
        mismatch: Option<usize>,
        /// The locality part, when combined.
        matched: Option<LocalityMatch>,
        /// The failover rule that applied.
        rule: Option<usize>,
    },
    /// Weighted by the `distribute` rule with this locality weight.
    Distribute {
        /// The weight it gave.
        weight: u64,
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
    /// Its destination localities.
    pub localities: Vec<LocalityStatus>,
    /// Rows per subset, the whole service first.
    pub subsets: Vec<SubsetRows>,
    /// What the capacity guard could not place.
    pub shortfalls: Vec<Shortfall>,
}

impl ServiceWeights {
    /// The rows of a subset ("" for the whole service).
    pub fn subset(&self, name: &str) -> Option<&SubsetRows> {
        self.subsets.iter().find(|s| s.subset == name)
    }
}

/// Computes every service's weights.
pub fn compute(state: &EngineState, topology: &Topology) -> Vec<ServiceWeights> {
    topology
        .services
        .values()
        .map(|service| compute_service(state, topology, service))
        .collect()
}

/// Computes one service's weights.
pub fn compute_service(
    state: &EngineState,
    topology: &Topology,
    service: &ServiceTopology,
) -> ServiceWeights {
    let localities = standings(state, topology, service);
    let sources: Vec<(Locality, Vec<String>)> = if topology.sources.is_empty() {
        service
            .localities
            .iter()
            .map(|d| (d.locality.clone(), d.owners.clone()))
            .collect()
    } else {
        topology
            .sources
            .iter()
            .map(|s| (s.locality.clone(), s.clusters.clone()))
            .collect()
    };
    let mut scratch = Scratch::default();
    let mut subsets: Vec<SubsetRows> = service
        .subsets
        .iter()
        .map(|subset| SubsetRows {
            subset: subset.name.clone(),
            rows: sources
                .iter()
                .map(|(source, clusters)| {
                    let unreachable = unreachable_from(state, service, source, clusters);
                    let labels = topology
                        .sources
                        .iter()
                        .find(|s| &s.locality == source)
                        .map(|s| &s.labels);
                    build_row(
                        subset,
                        &localities,
                        source,
                        labels,
                        &unreachable,
                        &mut scratch,
                    )
                })
                .collect(),
        })
        .collect();
    let shortfalls = capacity::apply(state, service, &localities, &sources, &mut subsets);
    ServiceWeights {
        service: service.host.clone(),
        policy: service.policy.clone(),
        localities,
        subsets,
        shortfalls,
    }
}

/// Step 1: the standing of every destination locality, guards included.
fn standings(
    state: &EngineState,
    topology: &Topology,
    service: &ServiceTopology,
) -> Vec<LocalityStatus> {
    let settings = &service.settings;
    let known = state.services.get(&service.host);
    let now_ms = state.now_ms;
    let mut statuses: Vec<LocalityStatus> = service
        .localities
        .iter()
        .map(|dest| {
            let loc = known.and_then(|s| s.localities.get(&dest.locality));
            let inventory = loc
                .map(|l| inventory_of(l, dest.endpoints))
                .unwrap_or(Inventory {
                    total: dest.endpoints,
                    ready: dest.endpoints,
                    ejected: 0,
                });
            let signals = match loc {
                Some(l) => signals(l, inventory, settings, now_ms),
                None => Signals {
                    ready_endpoints: inventory.available(),
                    total_endpoints: inventory.total,
                    window: settings.window,
                    ..Signals::default()
                },
            };
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
            let drain = state.drain_of(topology, &service.host, &dest.locality);
            let standing = if let Some(drain) = drain {
                verdict = Verdict::Drained;
                Standing::Drained(drain.clone())
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
                locality: dest.locality.clone(),
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
        })
        .collect();
    apply_guards(&mut statuses, service, known);
    statuses
}

/// The blast-radius guards: at most `maxDrained` localities out at once (manual drains
/// first, then the engine's removals, oldest first), and never the last that can serve.
fn apply_guards(
    statuses: &mut [LocalityStatus],
    service: &ServiceTopology,
    known: Option<&crate::engine::state::ServiceState>,
) {
    let settings = &service.settings;
    let engine_failure = |s: &LocalityStatus| {
        known
            .and_then(|k| k.localities.get(&s.locality))
            .is_some_and(|l| is_engine_failure(&l.machine))
            && s.signals.ready_endpoints > 0
    };
    // Localities taken out by a decision (an operator's or the engine's), in the order the
    // cap keeps them out.
    let mut decided: Vec<(u8, u64, usize)> = statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.standing {
            Standing::Drained(d) => Some((0, d.since_ms, i)),
            Standing::Removed if engine_failure(s) => Some((1, s.since_ms, i)),
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

/// Localities a source cannot reach: every cluster owning them has its gateway reported
/// unreachable by the source's clusters. A source always reaches its own locality.
fn unreachable_from(
    state: &EngineState,
    service: &ServiceTopology,
    source: &Locality,
    clusters: &[String],
) -> Vec<bool> {
    let blocked: Vec<&String> = clusters
        .iter()
        .filter_map(|c| state.clusters.get(c))
        .flat_map(|c| c.unreachable.iter())
        .collect();
    service
        .localities
        .iter()
        .map(|d| {
            &d.locality != source
                && !blocked.is_empty()
                && !d.owners.is_empty()
                && d.owners.iter().all(|o| blocked.contains(&o))
        })
        .collect()
}

#[derive(Default)]
struct Scratch {
    raw: Vec<u32>,
    included: Vec<usize>,
    candidates: Vec<Candidate>,
}

/// Steps 2-4 for one (subset, source).
fn build_row(
    subset: &SubsetTopology,
    statuses: &[LocalityStatus],
    source: &Locality,
    source_labels: Option<&std::collections::BTreeMap<String, String>>,
    unreachable: &[bool],
    scratch: &mut Scratch,
) -> SourceRow {
    let mut entries: Vec<RowEntry> = subset
        .members
        .iter()
        .map(|m| RowEntry {
            locality: m.locality,
            weight_bp: 0,
            priority: 0,
            why: PriorityWhy::Flat,
            note: EntryNote::Split,
        })
        .collect();
    let mut mode = match &subset.locality_lb {
        LocalityLb::Disabled => RowMode::LocalityLbDisabled,
        LocalityLb::Failover { enabled: false, .. } => RowMode::NoOutlierDetection,
        LocalityLb::Failover { .. } => RowMode::Failover,
        LocalityLb::Distribute(_) => RowMode::Failover,
    };

    // Which members are hosts at all: drained and unreachable ones are not.
    scratch.included.clear();
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
            scratch.included.push(k);
        }
    }

    // Step 2: priorities (or distribute weights).
    let mut weights: Vec<u64> = subset.members.iter().map(Members::weight).collect();
    // Envoy counts hosts: for the whole service that is the endpoint count its cluster
    // reports (so ready/total stays exact); a subset counts its configured endpoints.
    let mut hosts: Vec<u64> = subset
        .members
        .iter()
        .map(|m| {
            if subset.name.is_empty() {
                u64::from(statuses[m.locality].health.total)
            } else {
                m.endpoints.len() as u64
            }
        })
        .collect();
    match &subset.locality_lb {
        LocalityLb::Disabled | LocalityLb::Failover { enabled: false, .. } => {}
        LocalityLb::Failover { rules, labels, .. } => {
            let rule_for_source = rules.iter().position(|r| r.from == source.region);
            let labels_apply = !labels.is_empty() && source_labels.is_some_and(|l| !l.is_empty());
            scratch.raw.clear();
            let mut label_part = Vec::new();
            if labels_apply {
                let source_labels = source_labels.cloned().unwrap_or_default();
                for &k in &scratch.included {
                    let m = &subset.members[k];
                    // istiod splits a locality by label priority; Fulcrum keeps one entry
                    // per locality, made of its best-matching endpoints.
                    let mut best = (u32::MAX, None, 0u64, 0u64);
                    for e in &m.endpoints {
                        let (p, mismatch) = label_priority(
                            labels,
                            |key| source_labels.get(key).cloned(),
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
                    label_part.push((best.0, best.1));
                }
                let mut compacted: Vec<u32> = label_part.iter().map(|(p, _)| *p).collect();
                compact_priorities(&mut compacted);
                for (j, p) in compacted.into_iter().enumerate() {
                    label_part[j].0 = p;
                }
            }
            for (j, &k) in scratch.included.iter().enumerate() {
                let dest = &statuses[subset.members[k].locality].locality;
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
                        let matched = locality_match(source, dest, rules);
                        (
                            p_label * split::LOCALITY_PRIORITY_LEVELS + matched.priority(),
                            PriorityWhy::Labels {
                                mismatch,
                                matched: Some(matched),
                                rule: rule_for_source.filter(|_| matched.priority() >= 3),
                            },
                        )
                    }
                } else {
                    let matched = locality_match(source, dest, rules);
                    (
                        matched.priority(),
                        PriorityWhy::Locality {
                            matched,
                            rule: rule_for_source.filter(|_| matched.priority() >= 3),
                        },
                    )
                };
                scratch.raw.push(p);
                entries[k].why = why;
            }
            compact_priorities(&mut scratch.raw);
            for (j, &k) in scratch.included.iter().enumerate() {
                entries[k].priority = scratch.raw[j];
            }
        }
        LocalityLb::Distribute(rules) => {
            let dests: Vec<(&Locality, u64)> = subset
                .members
                .iter()
                .zip(&weights)
                .map(|(m, w)| (&statuses[m.locality].locality, *w))
                .collect();
            if let Some((index, distributed)) = distribute_weights(source, rules, &dests) {
                mode = RowMode::Distribute(index);
                for (k, w) in distributed.into_iter().enumerate() {
                    match w {
                        Some(w) => {
                            weights[k] = w;
                            entries[k].why = PriorityWhy::Distribute { weight: w };
                        }
                        None => {
                            entries[k].note = EntryNote::NotDistributed;
                            weights[k] = 0;
                        }
                    }
                }
                scratch.included.retain(|&k| weights[k] > 0);
            }
        }
    }

    // Step 3: Envoy's split, with recovering localities at full health.
    scratch.candidates.clear();
    let mut ramping = false;
    for &k in &scratch.included {
        let status = &statuses[subset.members[k].locality];
        let healthy = if matches!(status.standing, Standing::Removed) {
            0
        } else {
            status.health.healthy_units(hosts[k])
        };
        ramping |= healthy > 0 && status.allowance_bp < TOTAL_BASIS_POINTS;
        scratch.candidates.push(Candidate {
            priority: entries[k].priority,
            weight: weights[k],
            hosts: hosts[k],
            healthy,
        });
    }
    let full = split::split(&scratch.candidates, subset.panic_percent);
    let mut result = full.weights_bp.clone();

    // Step 4: the ramp. A recovering locality gets its allowance of what it would have at
    // full health; the rest is split as if it were still out.
    if ramping {
        let allowance: Vec<u32> = scratch
            .included
            .iter()
            .zip(&scratch.candidates)
            .map(|(&k, c)| {
                let a = statuses[subset.members[k].locality].allowance_bp;
                // Only localities that can serve are ramping; the rest keep their split.
                if c.healthy > 0 { a } else { TOTAL_BASIS_POINTS }
            })
            .collect();
        let ramps = |j: usize| allowance[j] < TOTAL_BASIS_POINTS;
        let mut without = scratch.candidates.clone();
        for (j, c) in without.iter_mut().enumerate() {
            if ramps(j) {
                c.healthy = 0;
            }
        }
        // Without panic: taking the recovering localities out is this blend's own
        // device, not a reason to spread load over unhealthy hosts.
        let base = split::split(&without, 0);
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
                    entries[scratch.included[j]].note = EntryNote::Ramp { allowance_bp: *a };
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
    for (j, &k) in scratch.included.iter().enumerate() {
        entries[k].weight_bp = result[j];
        let p = entries[k].priority as usize;
        if full.priorities.get(p).is_some_and(|o| o.panic)
            && matches!(entries[k].note, EntryNote::Split | EntryNote::OutOfService)
        {
            entries[k].note = EntryNote::Panic;
        }
    }
    SourceRow {
        source: source.clone(),
        mode,
        priorities: full.priorities,
        entries,
    }
}
