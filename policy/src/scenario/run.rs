//! Replaying a scenario through the engine on a simulated clock.
//!
//! Every `tick` the simulated reporters send one digest: the scenario's traffic for the
//! interval, split evenly across the clusters still reporting (so a silent cluster's
//! traffic is still seen by the others), each locality's endpoint counts from the cluster
//! that runs there, and the gateways each source cannot reach. Then the engine ticks.
//! At a step's time the expected weights are checked first, then the step's inputs apply
//! and the weights are computed again.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::engine::digest::{HealthDigest, InventorySample, ReachabilitySample, TrafficSample};
use crate::engine::explain::{row_summary, weight_rows};
use crate::engine::state::{DrainTarget, Event, Inventory};
use crate::engine::window::Counters;
use crate::engine::{EngineState, Topology, apply_digest, compute, tick};
use crate::locality::Locality;
use crate::scenario::{HealthInput, Scenario};
use crate::weights::WeightRow;

/// One expectation, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Expectation {
    /// The service.
    pub service: String,
    /// The source locality.
    pub source: Locality,
    /// What the scenario expected, basis points per destination.
    pub expected: BTreeMap<Locality, u32>,
    /// What the engine computed.
    pub actual: BTreeMap<Locality, u32>,
    /// Allowed difference.
    pub tolerance: u32,
    /// True when every destination is within the tolerance.
    pub ok: bool,
}

/// A row in one line of words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RowSummary {
    /// The service.
    pub service: String,
    /// The source locality.
    pub source: Locality,
    /// Weights by destination, basis points.
    pub weights: BTreeMap<Locality, u32>,
    /// What fired.
    pub summary: String,
}

/// What happened at one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// The step's index in the scenario.
    pub index: usize,
    /// Its time, in milliseconds since the start.
    pub at_ms: u64,
    /// Expectations checked at this time, before the step's inputs.
    pub expectations: Vec<Expectation>,
    /// Verdict changes since the previous step, up to and including this one's inputs.
    pub events: Vec<Event>,
    /// The whole-service rows after the step's inputs, in words.
    pub summaries: Vec<RowSummary>,
    /// Every row (all subsets) after the step's inputs, with explanations.
    pub rows: Vec<WeightRow>,
}

/// The result of a simulation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Per step.
    pub steps: Vec<StepReport>,
    /// True when every expectation held.
    pub ok: bool,
}

#[derive(Default)]
struct Reporters {
    health: BTreeMap<(String, Locality), HealthInput>,
    carry: BTreeMap<(String, Locality), [u64; 4]>,
    silent: BTreeSet<String>,
    unreachable: BTreeSet<(String, String)>,
}

impl Reporters {
    /// The digest for the interval ending at `now_ms`, `elapsed_ms` long.
    fn digest(&mut self, topology: &Topology, elapsed_ms: u64) -> HealthDigest {
        let reporting: Vec<&String> = topology
            .clusters
            .keys()
            .filter(|c| !self.silent.contains(*c))
            .collect();
        let mut digest = HealthDigest {
            reporters: reporting.iter().map(|c| (*c).clone()).collect(),
            ..HealthDigest::default()
        };
        for (key, input) in &self.health {
            let carry = self.carry.entry(key.clone()).or_default();
            let rates = [
                input.requests,
                input.errors_5xx,
                input.gateway_errors,
                input.connect_failures,
            ];
            let mut counts = [0u64; 4];
            for k in 0..4 {
                let total = rates[k].saturating_mul(elapsed_ms).saturating_add(carry[k]);
                counts[k] = total / 1_000;
                carry[k] = total % 1_000;
            }
            if !reporting.is_empty() && counts[0] > 0 {
                let n = reporting.len() as u64;
                for (r, cluster) in reporting.iter().enumerate() {
                    let share = |c: u64| c / n + u64::from((r as u64) < c % n);
                    digest.traffic.push(TrafficSample {
                        service: input.service.clone(),
                        source_cluster: (*cluster).clone(),
                        locality: input.locality.clone(),
                        counters: Counters {
                            requests: share(counts[0]),
                            http_5xx: share(counts[1]),
                            gateway_errors: share(counts[2]),
                            connect_failures: share(counts[3]),
                        },
                    });
                }
            }
            let Some(service) = topology.services.get(&input.service) else {
                continue;
            };
            let Some(i) = service.locality_index(&input.locality) else {
                continue;
            };
            let dest = &service.localities[i];
            let owner = dest.owners.first().cloned().unwrap_or_default();
            if self.silent.contains(&owner) {
                continue;
            }
            let total = input.total.unwrap_or(dest.endpoints);
            digest.inventory.push(InventorySample {
                cluster: owner,
                service: input.service.clone(),
                locality: input.locality.clone(),
                inventory: Inventory {
                    total,
                    ready: input.ready.unwrap_or(total).min(total),
                    ejected: 0,
                },
            });
        }
        for (source, target) in &self.unreachable {
            if !self.silent.contains(source) {
                digest.reachability.push(ReachabilitySample {
                    source_cluster: source.clone(),
                    target_cluster: target.clone(),
                    reachable: false,
                });
            }
        }
        digest
    }
}

fn row_weights(
    row: &crate::engine::SourceRow,
    weights: &crate::engine::ServiceWeights,
) -> BTreeMap<Locality, u32> {
    row.entries
        .iter()
        .map(|e| (weights.destination(e.locality).clone(), e.weight_bp))
        .collect()
}

/// Feeds the digest for the interval up to `to_ms`, then ticks.
fn advance(
    topology: &Topology,
    state: &mut EngineState,
    reporters: &mut Reporters,
    to_ms: u64,
    events: &mut Vec<Event>,
    last_ms: &mut u64,
) {
    let digest = reporters.digest(topology, to_ms - *last_ms);
    apply_digest(state, &digest, to_ms);
    events.extend(tick(state, topology, to_ms));
    *last_ms = to_ms;
}

/// Replays `scenario` on `topology`. The scenario must have passed [`Scenario::check`].
pub fn simulate(topology: &Topology, scenario: &Scenario) -> Outcome {
    let tick_ms = scenario.tick().as_millis().max(1) as u64;
    let mut state = EngineState::default();
    let mut reporters = Reporters::default();
    let mut events: Vec<Event> = Vec::new();
    let mut last_ms = 0u64;
    let mut next_tick = tick_ms;
    let mut steps = Vec::new();
    for (index, step) in scenario.steps.iter().enumerate() {
        let at_ms = step.at.as_millis().max(0) as u64;
        while next_tick < at_ms {
            advance(
                topology,
                &mut state,
                &mut reporters,
                next_tick,
                &mut events,
                &mut last_ms,
            );
            next_tick += tick_ms;
        }
        if at_ms > last_ms || index == 0 {
            advance(
                topology,
                &mut state,
                &mut reporters,
                at_ms,
                &mut events,
                &mut last_ms,
            );
        }
        if next_tick == at_ms {
            next_tick += tick_ms;
        }

        // Expectations: the weights in effect now, before this step's inputs.
        let before = compute(&state, topology);
        let expectations: Vec<Expectation> = step
            .expect
            .iter()
            .map(|e| {
                let actual = before
                    .iter()
                    .find(|w| w.service == e.service)
                    .and_then(|w| {
                        let rows = w.subset("")?;
                        let row = rows.rows.iter().find(|r| r.source == e.source)?;
                        Some(row_weights(row, w))
                    })
                    .unwrap_or_default();
                let expected = e.expected();
                let within = |want: u32, got: u32| want.abs_diff(got) <= e.tolerance;
                let ok = expected
                    .iter()
                    .all(|(l, want)| within(*want, actual.get(l).copied().unwrap_or(0)))
                    && actual
                        .iter()
                        .filter(|(l, _)| !expected.contains_key(*l))
                        .all(|(_, got)| within(0, *got));
                Expectation {
                    service: e.service.clone(),
                    source: e.source.clone(),
                    expected,
                    actual,
                    tolerance: e.tolerance,
                    ok,
                }
            })
            .collect();

        // The step's inputs.
        for h in &step.health {
            reporters
                .health
                .insert((h.service.clone(), h.locality.clone()), h.clone());
        }
        for d in &step.drain {
            let reason = if d.reason.trim().is_empty() {
                "drained by the scenario"
            } else {
                d.reason.as_str()
            };
            // The scenario was checked: the reason is never empty here and drains are few.
            let _ = state.drain(
                DrainTarget::Locality(d.locality.clone()),
                None,
                reason,
                at_ms,
            );
        }
        for l in &step.undrain {
            state.undrain(&DrainTarget::Locality(l.clone()), None, at_ms);
        }
        reporters.silent.extend(step.silent.iter().cloned());
        for u in &step.unreachable {
            for source in topology.clusters_at(&u.source) {
                for target in topology.clusters_at(&u.locality) {
                    reporters
                        .unreachable
                        .insert((source.to_string(), target.to_string()));
                }
            }
        }
        advance(
            topology,
            &mut state,
            &mut reporters,
            at_ms,
            &mut events,
            &mut last_ms,
        );

        let after = compute(&state, topology);
        let mut summaries = Vec::new();
        let mut rows = Vec::new();
        for weights in &after {
            let Some(service) = topology.services.get(&weights.service) else {
                continue;
            };
            if let (Some(whole), Some(subset)) = (weights.subset(""), service.subsets.first()) {
                for row in &whole.rows {
                    summaries.push(RowSummary {
                        service: weights.service.clone(),
                        source: row.source.clone(),
                        weights: row_weights(row, weights),
                        summary: row_summary(weights, subset, row, &service.settings, 0),
                    });
                }
            }
            rows.extend(weight_rows(weights, service, 0));
        }
        steps.push(StepReport {
            index,
            at_ms,
            expectations,
            events: std::mem::take(&mut events),
            summaries,
            rows,
        });
    }
    let ok = steps.iter().all(|s| s.expectations.iter().all(|e| e.ok));
    Outcome { steps, ok }
}
