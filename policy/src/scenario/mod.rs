//! Failover scenarios: a timeline of health, drains, silent clusters and unreachable
//! gateways, with the weights expected along the way. `fulcrumctl simulate` replays them
//! through the engine, so users can test their FailoverPolicy the way they test code.
//!
//! The format is Fulcrum's own, so it is read strictly: an unknown field is an error, and
//! every problem is reported with its line and field path (`steps[2].health[0].ready`).
//! [`Scenario::check`] then checks it against the configuration it will run on (known
//! services, localities and clusters).

mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::decode::{Decode, Decoder, model};
use crate::diag::Severity;
use crate::duration::Duration;
use crate::engine::Topology;
use crate::locality::Locality;
use crate::path::FieldPath;
use crate::weights::TOTAL_BASIS_POINTS;
use crate::yaml::{Limits, parse_documents};

pub use run::{Expectation, Outcome, StepReport, simulate};

/// The default simulated clock step.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// The smallest clock step: the coordinator batches reports every 250 ms.
pub const MIN_TICK: Duration = Duration::from_millis(100);
/// The largest clock step.
pub const MAX_TICK: Duration = Duration::from_secs(60);
/// The longest timeline a scenario may describe.
pub const MAX_SPAN: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most clock steps one simulation may take.
pub const MAX_TICKS: u64 = 1_000_000;

model! {
    /// A scenario file.
    pub struct Scenario {
        /// How often the simulated clock feeds digests to the engine.
        optional tick: Option<Duration> = "tick",
        /// The timeline, in increasing order of `at`.
        required steps: Vec<Step> = "steps",
    }
}

model! {
    /// Inputs that change at one time, and the weights expected just before they do.
    pub struct Step {
        /// Time since the start.
        required at: Duration = "at",
        /// Traffic and endpoints per (service, locality), from now until changed.
        optional health: Vec<HealthInput> = "health",
        /// Localities an operator drains now.
        optional drain: Vec<DrainInput> = "drain",
        /// Localities undrained now.
        optional undrain: Vec<Locality> = "undrain",
        /// Clusters that stop reporting from now on.
        optional silent: Vec<String> = "silent",
        /// Gateways a source reports unreachable from now on.
        optional unreachable: Vec<UnreachableInput> = "unreachable",
        /// The weights in effect at `at`, before this step's inputs change anything.
        optional expect: Vec<ExpectInput> = "expect",
    }
}

model! {
    /// Traffic toward one service in one destination locality, per second, as all
    /// reporters together see it.
    pub struct HealthInput {
        /// The service host.
        required service: String = "service",
        /// The destination locality.
        required locality: Locality = "locality",
        /// Ready endpoints (all of them when unset).
        optional ready: Option<u32> = "ready",
        /// All endpoints (the configured count when unset).
        optional total: Option<u32> = "total",
        /// Requests per second.
        optional requests: u64 = "requests",
        /// Of which answered 5xx.
        optional errors_5xx: u64 = "errors5xx",
        /// Of which answered 502/503/504 (part of `errors5xx`).
        optional gateway_errors: u64 = "gatewayErrors",
        /// Of which got no answer.
        optional connect_failures: u64 = "connectFailures",
    }
}

model! {
    /// A manual drain.
    pub struct DrainInput {
        /// The locality drained (for every service).
        required locality: Locality = "locality",
        /// Why.
        optional reason: String = "reason",
    }
}

model! {
    /// A source that cannot reach a locality's gateway.
    pub struct UnreachableInput {
        /// The source locality.
        required source: Locality = "source",
        /// The locality whose gateway it cannot reach.
        required locality: Locality = "locality",
    }
}

model! {
    /// The weights expected from one source toward one service.
    pub struct ExpectInput {
        /// The service host.
        required service: String = "service",
        /// The source locality.
        required source: Locality = "source",
        /// Basis points per destination; destinations not listed must be 0.
        required weights: BTreeMap<String, u32> = "weights",
        /// Allowed difference, in basis points.
        optional tolerance: u32 = "tolerance",
    }
}

impl ExpectInput {
    /// The expected weights by locality (keys were checked when the scenario was read).
    pub fn expected(&self) -> BTreeMap<Locality, u32> {
        self.weights
            .iter()
            .filter_map(|(l, w)| Some((l.parse().ok()?, *w)))
            .collect()
    }
}

/// One problem with a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioProblem {
    /// Line in the scenario file, when known.
    pub line: Option<u32>,
    /// The field.
    pub path: FieldPath,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScenarioProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_root() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl Scenario {
    /// Reads a scenario, reporting every problem found.
    pub fn parse(text: &str) -> Result<Scenario, Vec<ScenarioProblem>> {
        let documents = parse_documents(text, &Limits::default()).map_err(|p| {
            vec![ScenarioProblem {
                line: Some(p.mark.line),
                path: p.path,
                message: p.message,
            }]
        })?;
        let mut problems: Vec<ScenarioProblem> = Vec::new();
        let document = match documents.as_slice() {
            [one] => one,
            [] => {
                return Err(vec![ScenarioProblem {
                    line: None,
                    path: FieldPath::root(),
                    message: "the scenario is empty: it needs `steps`".to_string(),
                }]);
            }
            [_, second, ..] => {
                return Err(vec![ScenarioProblem {
                    line: None,
                    path: FieldPath::root(),
                    message: format!(
                        "a scenario is one YAML document; document {} is one too many",
                        second.index
                    ),
                }]);
            }
        };
        problems.extend(document.problems.iter().map(|p| ScenarioProblem {
            line: Some(p.mark.line),
            path: p.path.clone(),
            message: p.message.clone(),
        }));
        let mut d = Decoder::strict();
        let scenario = Scenario::decode(&document.root, &mut d);
        problems.extend(d.into_findings().into_iter().map(|f| ScenarioProblem {
            line: f.mark.map(|m| m.line),
            path: f.path,
            message: match f.severity {
                Severity::Error => f.message,
                Severity::Warning => f.message,
            },
        }));
        if problems.is_empty() {
            problems.extend(scenario.check_self());
        }
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(problems)
        }
    }

    /// The clock step.
    pub fn tick(&self) -> Duration {
        self.tick.unwrap_or(DEFAULT_TICK)
    }

    /// Checks what can be checked without the configuration.
    fn check_self(&self) -> Vec<ScenarioProblem> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| {
            problems.push(ScenarioProblem {
                line: None,
                path: FieldPath::parse(&path),
                message,
            })
        };
        let tick = self.tick();
        if tick < MIN_TICK || tick > MAX_TICK {
            problem(
                "tick".into(),
                format!("{tick} is outside {MIN_TICK} to {MAX_TICK}"),
            );
        }
        if self.steps.is_empty() {
            problem("steps".into(), "a scenario needs at least one step".into());
        }
        let mut previous: Option<Duration> = None;
        for (i, step) in self.steps.iter().enumerate() {
            if step.at < Duration::ZERO {
                problem(
                    format!("steps[{i}].at"),
                    format!("{} is before the start", step.at),
                );
            } else if step.at > MAX_SPAN {
                problem(
                    format!("steps[{i}].at"),
                    format!("{} is past the longest timeline, {MAX_SPAN}", step.at),
                );
            }
            if let Some(p) = previous
                && step.at <= p
            {
                problem(
                    format!("steps[{i}].at"),
                    format!(
                        "{} is not after the previous step's {p}: steps go in increasing order",
                        step.at
                    ),
                );
            }
            previous = Some(step.at);
            for (j, h) in step.health.iter().enumerate() {
                let at = |field: &str| format!("steps[{i}].health[{j}].{field}");
                if let (Some(ready), Some(total)) = (h.ready, h.total)
                    && ready > total
                {
                    problem(
                        at("ready"),
                        format!("{ready} ready endpoints out of {total}"),
                    );
                }
                if h.errors_5xx.saturating_add(h.connect_failures) > h.requests {
                    problem(
                        at("errors5xx"),
                        format!(
                            "errors5xx {} + connectFailures {} exceed requests {}",
                            h.errors_5xx, h.connect_failures, h.requests
                        ),
                    );
                }
                if h.gateway_errors > h.errors_5xx {
                    problem(
                        at("gatewayErrors"),
                        format!(
                            "gatewayErrors {} exceed errors5xx {} (they are 5xx responses)",
                            h.gateway_errors, h.errors_5xx
                        ),
                    );
                }
            }
            for (j, e) in step.expect.iter().enumerate() {
                for (locality, weight) in &e.weights {
                    if let Err(err) = locality.parse::<Locality>() {
                        problem(
                            format!("steps[{i}].expect[{j}].weights[{locality}]"),
                            err.to_string(),
                        );
                    }
                    if *weight > TOTAL_BASIS_POINTS {
                        problem(
                            format!("steps[{i}].expect[{j}].weights[{locality}]"),
                            format!("{weight} basis points is more than {TOTAL_BASIS_POINTS}"),
                        );
                    }
                }
                if e.tolerance > TOTAL_BASIS_POINTS {
                    problem(
                        format!("steps[{i}].expect[{j}].tolerance"),
                        format!(
                            "{} basis points is more than {TOTAL_BASIS_POINTS}",
                            e.tolerance
                        ),
                    );
                }
            }
        }
        if let Some(last) = self.steps.last() {
            let ticks = (last.at.as_nanos() / tick.as_nanos().max(1)) as u64;
            if ticks > MAX_TICKS {
                problem(
                    "tick".into(),
                    format!(
                        "{ticks} clock steps to reach {}: more than {MAX_TICKS}; use a longer tick",
                        last.at
                    ),
                );
            }
        }
        problems
    }

    /// Checks the scenario against the configuration: every service, locality, source and
    /// cluster it names must exist there.
    pub fn check(&self, topology: &Topology) -> Vec<ScenarioProblem> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| {
            problems.push(ScenarioProblem {
                line: None,
                path: FieldPath::parse(&path),
                message,
            })
        };
        let services: Vec<&str> = topology.services.keys().map(String::as_str).collect();
        let sources: BTreeSet<Locality> = if topology.sources.is_empty() {
            topology
                .services
                .values()
                .flat_map(|s| s.localities.iter().map(|d| d.locality.clone()))
                .collect()
        } else {
            topology
                .sources
                .iter()
                .map(|s| s.locality.clone())
                .collect()
        };
        let all_localities: BTreeSet<Locality> = topology
            .services
            .values()
            .flat_map(|s| s.localities.iter().map(|d| d.locality.clone()))
            .chain(sources.iter().cloned())
            .collect();
        let unknown_service = |name: &str| {
            format!(
                "no ServiceEntry in the configuration serves {name:?} (known: {})",
                if services.is_empty() {
                    "none".to_string()
                } else {
                    services.join(", ")
                }
            )
        };
        let list = |set: &BTreeSet<Locality>| {
            set.iter()
                .map(Locality::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, step) in self.steps.iter().enumerate() {
            for (j, h) in step.health.iter().enumerate() {
                match topology.services.get(&h.service) {
                    None => problem(
                        format!("steps[{i}].health[{j}].service"),
                        unknown_service(&h.service),
                    ),
                    Some(s) if s.locality_index(&h.locality).is_none() => {
                        let known: BTreeSet<Locality> =
                            s.localities.iter().map(|d| d.locality.clone()).collect();
                        problem(
                            format!("steps[{i}].health[{j}].locality"),
                            format!(
                                "{} has no endpoints in {} (it has: {})",
                                h.service,
                                h.locality,
                                list(&known)
                            ),
                        )
                    }
                    _ => {}
                }
            }
            for (j, d) in step.drain.iter().enumerate() {
                if !all_localities.contains(&d.locality) {
                    problem(
                        format!("steps[{i}].drain[{j}].locality"),
                        format!(
                            "{} is not a locality of the mesh (known: {})",
                            d.locality,
                            list(&all_localities)
                        ),
                    );
                }
            }
            for (j, l) in step.undrain.iter().enumerate() {
                if !all_localities.contains(l) {
                    problem(
                        format!("steps[{i}].undrain[{j}]"),
                        format!(
                            "{l} is not a locality of the mesh (known: {})",
                            list(&all_localities)
                        ),
                    );
                }
            }
            for (j, c) in step.silent.iter().enumerate() {
                if !topology.clusters.contains_key(c) {
                    let known: Vec<&str> = topology.clusters.keys().map(String::as_str).collect();
                    problem(
                        format!("steps[{i}].silent[{j}]"),
                        format!(
                            "no MeshCluster is named {c:?} (known: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
            for (j, u) in step.unreachable.iter().enumerate() {
                if topology.clusters_at(&u.source).next().is_none() {
                    problem(
                        format!("steps[{i}].unreachable[{j}].source"),
                        format!("no MeshCluster runs in {}", u.source),
                    );
                }
                if topology.clusters_at(&u.locality).next().is_none() {
                    problem(
                        format!("steps[{i}].unreachable[{j}].locality"),
                        format!(
                            "no MeshCluster runs in {} (gateways belong to clusters)",
                            u.locality
                        ),
                    );
                }
            }
            for (j, e) in step.expect.iter().enumerate() {
                if !topology.services.contains_key(&e.service) {
                    problem(
                        format!("steps[{i}].expect[{j}].service"),
                        unknown_service(&e.service),
                    );
                }
                if !sources.contains(&e.source) {
                    problem(
                        format!("steps[{i}].expect[{j}].source"),
                        format!(
                            "{} is not a source locality (known: {})",
                            e.source,
                            list(&sources)
                        ),
                    );
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_fields_are_errors_with_their_path() {
        let problems = Scenario::parse(
            "steps:\n- at: 0s\n  health:\n  - service: a\n    locality: r/z\n    redy: 3\n",
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "line 6: steps[0].health[0].redy: unknown field \"redy\"; did you mean \"ready\"?"
        );
    }

    #[test]
    fn steps_must_increase_and_counts_must_agree() {
        let problems = Scenario::parse(
            "steps:\n- at: 2s\n- at: 1s\n  health:\n  - {service: a, locality: r/z, requests: 5, errors5xx: 9}\n",
        )
        .unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("steps[1].at: 1s is not after"),
            "{text:?}"
        );
        assert!(text[1].contains("steps[1].health[0].errors5xx"), "{text:?}");
    }

    #[test]
    fn a_valid_scenario_reads() {
        let s = Scenario::parse(
            "tick: 500ms\nsteps:\n- at: 0s\n  expect:\n  - service: a\n    source: r/z\n    weights: {r/z: 10000}\n",
        )
        .unwrap();
        assert_eq!(s.tick(), Duration::from_millis(500));
        assert_eq!(s.steps[0].expect[0].weights.len(), 1);
    }
}
