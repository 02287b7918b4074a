//! Drill files (`deploy/local/drills/*.yaml`): a drill's traffic, fault, actions and
//! expectations, run by `fulcrum-drill run FILE` on the local mesh.
//!
//! ```yaml
//! name: cluster-outage
//! rate: 500                    # requests per second, through every proxy in turn
//! warmup: 5s
//! fault: {kind: errorRate, cluster: us-east, rate: 1.0}
//! # or {kind: latency, cluster: ..., latency: 300ms}; refuse; hang; killBackends; drain
//! faultFor: 12s
//! after: 20s
//! damping: {recoverAfter: 8s, rampStep: 25%}              # the service's FailoverPolicy
//! actions:                     # at times from the start
//! - {at: 6s, kind: killLeader}
//! - {at: 7s, kind: killCoordinators, count: 2}
//! - {at: 9s, kind: restartCoordinators}
//! - {at: 10s, kind: pauseCoordinator, node: 1}               # SIGSTOP; resumeCoordinator: SIGCONT
//! - {at: 12s, kind: partition, node: 2}                      # fault relays; heal: all pass
//! - {at: 12s, kind: partitionFollower}                       # a node that is not the leader
//! - {at: 12s, kind: partitionLeader}                         # the leader, made deaf
//! - {at: 12s, kind: isolateFollower}                         # from the other nodes only
//! - {at: 8s, kind: restartProxy, cluster: us-central}
//! - {at: 10s, kind: setErrorRate, cluster: eu-west, rate: 0.5}
//! expect:
//!   timeToShiftMax: 2s
//!   timeToDetectMax: 5s
//!   errorsDuringShiftMax: 0
//!   errorsMax: 0
//!   failback: true
//! ```
//!
//! Durations are Istio's (`250ms`, `5s`, `1m30s`). Unknown fields are errors, and every
//! error names the field.
//!
//! On a mesh reached through its API (`fulcrum-drill run FILE --mesh ADDR`), only a
//! `drain` fault can be done; other faults, actions and `damping` are skipped with a note,
//! and expectations about a skipped fault are not checked.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::drill::{Action, Fault, Plan, Report};
use crate::harness::MeshSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    name: String,
    rate: Option<u32>,
    warmup: String,
    fault: Option<FaultFile>,
    fault_for: Option<String>,
    after: String,
    damping: Option<DampingFile>,
    #[serde(default)]
    actions: Vec<ActionFile>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FaultFile {
    kind: String,
    cluster: String,
    rate: Option<f64>,
    latency: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DampingFile {
    degrade_after: Option<String>,
    recover_after: Option<String>,
    ramp_step: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ActionFile {
    at: String,
    kind: String,
    cluster: Option<String>,
    count: Option<usize>,
    node: Option<u64>,
    rate: Option<f64>,
}

/// What a drill must show.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// Fault -> under 1% served by the failed cluster, at most.
    pub time_to_shift_max: Option<String>,
    /// Fault -> first weight change, at most.
    pub time_to_detect_max: Option<String>,
    /// Errors among requests sent during the shift, at most.
    pub errors_during_shift_max: Option<u64>,
    /// Errors over the whole run, at most.
    pub errors_max: Option<u64>,
    /// Weights back to where they were after the recovery.
    pub failback: Option<bool>,
}

/// A drill read from a file.
#[derive(Debug, Clone)]
pub struct Drill {
    /// What to run.
    pub plan: Plan,
    /// The service's FailoverPolicy damping, as YAML lines (empty: the defaults).
    pub damping: String,
    /// What must hold.
    pub expect: Expect,
}

fn duration(field: &str, text: &str) -> Result<Duration, String> {
    let d = fulcrum_policy::Duration::from_str(text).map_err(|e| format!("{field}: {e}"))?;
    d.to_std()
        .ok_or_else(|| format!("{field}: {text} must not be negative"))
}

fn cluster(field: &str, name: &str, spec: &MeshSpec) -> Result<usize, String> {
    spec.cluster(name).ok_or_else(|| {
        let names: Vec<&str> = spec.clusters.iter().map(|c| c.name.as_str()).collect();
        format!(
            "{field}: no cluster {name:?} in the mesh ({})",
            names.join(", ")
        )
    })
}

fn rate(field: &str, rate: Option<f64>) -> Result<f64, String> {
    match rate {
        Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Some(r) => Err(format!("{field}: {r} is not between 0 and 1")),
        None => Err(format!("{field}: required for this kind")),
    }
}

impl Drill {
    /// Reads a drill for the mesh `spec`.
    pub fn parse(text: &str, spec: &MeshSpec) -> Result<Drill, String> {
        let file: File = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if file.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        let fault = match &file.fault {
            None => None,
            Some(f) => {
                let c = cluster("fault.cluster", &f.cluster, spec)?;
                if f.rate.is_some() && f.kind != "errorRate" {
                    return Err(format!("fault.rate: not used by {}", f.kind));
                }
                if f.latency.is_some() && f.kind != "latency" {
                    return Err(format!("fault.latency: not used by {}", f.kind));
                }
                Some(match f.kind.as_str() {
                    "errorRate" => Fault::ErrorRate {
                        cluster: c,
                        rate: rate("fault.rate", f.rate)?,
                    },
                    "latency" => Fault::Latency {
                        cluster: c,
                        latency: match &f.latency {
                            Some(t) => duration("fault.latency", t)?,
                            None => return Err("fault.latency: required for this kind".into()),
                        },
                    },
                    "refuse" => Fault::Refuse { cluster: c },
                    "hang" => Fault::Hang { cluster: c },
                    "killBackends" => Fault::KillBackends { cluster: c },
                    "drain" => Fault::Drain { cluster: c },
                    other => {
                        return Err(format!(
                            "fault.kind: {other:?} is not one of errorRate, latency, refuse, hang, killBackends, drain"
                        ));
                    }
                })
            }
        };
        let fault_for = match (&fault, &file.fault_for) {
            (Some(_), Some(t)) => duration("faultFor", t)?,
            (Some(_), None) => return Err("faultFor: required with a fault".into()),
            (None, Some(_)) => return Err("faultFor: given without a fault".into()),
            (None, None) => Duration::ZERO,
        };
        let mut actions = Vec::new();
        for (i, a) in file.actions.iter().enumerate() {
            let field = |name: &str| format!("actions[{i}].{name}");
            let at = duration(&field("at"), &a.at)?;
            let action_cluster = || {
                cluster(
                    &field("cluster"),
                    a.cluster.as_deref().unwrap_or_default(),
                    spec,
                )
            };
            let action = match a.kind.as_str() {
                "killLeader" => Action::KillLeader,
                "killCoordinators" => Action::KillCoordinators {
                    count: a
                        .count
                        .filter(|n| *n > 0 && *n <= spec.coordinators)
                        .ok_or_else(|| {
                            format!(
                                "{}: 1 to {} coordinators",
                                field("count"),
                                spec.coordinators
                            )
                        })?,
                },
                "restartCoordinators" => Action::RestartCoordinators,
                "heal" => Action::Heal,
                "partitionFollower" => Action::PartitionFollower,
                "partitionLeader" => Action::PartitionLeader,
                "isolateFollower" => Action::IsolateFollower,
                "partition" | "pauseCoordinator" | "resumeCoordinator" => {
                    let node = a
                        .node
                        .filter(|n| *n >= 1 && *n <= spec.coordinators as u64)
                        .ok_or_else(|| {
                            format!("{}: a node id, 1 to {}", field("node"), spec.coordinators)
                        })?;
                    match a.kind.as_str() {
                        "partition" => Action::Partition { node },
                        "pauseCoordinator" => Action::PauseCoordinator { node },
                        _ => Action::ResumeCoordinator { node },
                    }
                }
                "restartProxy" => Action::RestartProxy {
                    cluster: action_cluster()?,
                },
                "setErrorRate" => Action::SetErrorRate {
                    cluster: action_cluster()?,
                    rate: rate(&field("rate"), a.rate)?,
                },
                other => {
                    return Err(format!(
                        "{}: {other:?} is not killLeader, killCoordinators, restartCoordinators, pauseCoordinator, resumeCoordinator, partition, partitionFollower, partitionLeader, isolateFollower, heal, restartProxy or setErrorRate",
                        field("kind")
                    ));
                }
            };
            actions.push((at, action));
        }
        actions.sort_by_key(|(at, _)| *at);
        let mut damping = Vec::new();
        if let Some(d) = &file.damping {
            for (name, value) in [
                ("degradeAfter", &d.degrade_after),
                ("recoverAfter", &d.recover_after),
            ] {
                if let Some(v) = value {
                    duration(&format!("damping.{name}"), v)?;
                    damping.push(format!("    {name}: {v}"));
                }
            }
            if let Some(step) = &d.ramp_step {
                fulcrum_policy::Percent::from_str(step)
                    .map_err(|e| format!("damping.rampStep: {e}"))?;
                damping.push(format!("    rampStep: {step}"));
            }
        }
        for (name, value) in [
            ("expect.timeToShiftMax", &file.expect.time_to_shift_max),
            ("expect.timeToDetectMax", &file.expect.time_to_detect_max),
        ] {
            if let Some(v) = value {
                duration(name, v)?;
            }
        }
        let rate = file.rate.unwrap_or(crate::load::DEFAULT_RATE);
        if rate == 0 || rate > 20_000 {
            return Err(format!(
                "rate: {rate} is not 1 to 20000 requests per second"
            ));
        }
        Ok(Drill {
            plan: Plan {
                name: file.name,
                warmup: duration("warmup", &file.warmup)?,
                fault,
                fault_for,
                after: duration("after", &file.after)?,
                rate,
                actions,
            },
            damping: damping.join("\n"),
            expect: file.expect,
        })
    }

    /// The expectations that failed, in words (empty: all hold).
    pub fn check(&self, report: &Report) -> Vec<String> {
        // Whatever the file expects, and whether or not the fault could be done.
        let mut failed = Vec::new();
        if report.weight_regressions > 0 {
            failed.push(format!("{} weight regressions", report.weight_regressions));
        }
        if !report.config_lost.is_empty() {
            failed.push(format!(
                "configuration lost at {}",
                report.config_lost.join(", ")
            ));
        }
        if report.fault_skipped {
            // Nothing happened to measure.
            return failed;
        }
        let ms = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| duration("", t).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let e = &self.expect;
        if let Some(max) = ms(&e.time_to_shift_max)
            && report.time_to_shift_ms.is_none_or(|t| t > max)
        {
            failed.push(format!(
                "time to shift {:?} ms, expected at most {max} ms",
                report.time_to_shift_ms
            ));
        }
        if let Some(max) = ms(&e.time_to_detect_max)
            && report.time_to_detect_ms.is_none_or(|t| t > max)
        {
            failed.push(format!(
                "time to detect {:?} ms, expected at most {max} ms",
                report.time_to_detect_ms
            ));
        }
        if let Some(max) = e.errors_during_shift_max
            && report.errors_during_shift > max
        {
            failed.push(format!(
                "{} errors during the shift, expected at most {max}",
                report.errors_during_shift
            ));
        }
        if let Some(max) = e.errors_max
            && report.errors > max
        {
            failed.push(format!("{} errors, expected at most {max}", report.errors));
        }
        if e.failback == Some(true) && report.time_to_failback_ms.is_none() {
            failed.push("no failback after the recovery".into());
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drill_in_deploy_local_reads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/drills");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("deploy/local/drills") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).expect("readable");
                if let Err(e) = Drill::parse(&text, &MeshSpec::local()) {
                    panic!("{}: {e}", path.display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} drills");
    }

    #[test]
    fn a_bad_drill_is_refused_naming_the_field() {
        let spec = MeshSpec::local();
        let bad = |text: &str, needle: &str| {
            let e = Drill::parse(text, &spec).expect_err(text);
            assert!(e.contains(needle), "{e} (wanted {needle})");
        };
        bad("name: x\nwarmup: 1s\nafter: 1s\nextra: 1\n", "extra");
        bad("name: x\nwarmup: soon\nafter: 1s\n", "warmup");
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nfault: {kind: errorRate, cluster: mars, rate: 1}\nfaultFor: 1s\n",
            "fault.cluster",
        );
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nfault: {kind: errorRate, cluster: us-east, rate: 3}\nfaultFor: 1s\n",
            "fault.rate",
        );
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nfault: {kind: killBackends, cluster: us-east}\n",
            "faultFor",
        );
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nfault: {kind: latency, cluster: us-east}\nfaultFor: 1s\n",
            "fault.latency: required",
        );
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nfault: {kind: latency, cluster: us-east, latency: slow}\nfaultFor: 1s\n",
            "fault.latency",
        );
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nfault: {kind: hang, cluster: us-east, rate: 0.5}\nfaultFor: 1s\n",
            "fault.rate: not used by hang",
        );
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nfault: {kind: melt, cluster: us-east}\nfaultFor: 1s\n",
            "fault.kind",
        );
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nactions: [{at: 1s, kind: nap}]\n",
            "actions[0].kind",
        );
        bad(
            "name: x\nwarmup: 1s\nafter: 1s\nactions: [{at: 1s, kind: killCoordinators, count: 9}]\n",
            "actions[0].count",
        );
        let ok = Drill::parse(
            "name: x\nwarmup: 1s\nafter: 2s\nfault: {kind: killBackends, cluster: eu-west}\nfaultFor: 3s\ndamping: {recoverAfter: 4s, rampStep: 50%}\n",
            &spec,
        )
        .expect("reads");
        assert_eq!(ok.plan.fault, Some(Fault::KillBackends { cluster: 2 }));
        assert_eq!(ok.damping, "    recoverAfter: 4s\n    rampStep: 50%");
        let late = Drill::parse(
            "name: x\nwarmup: 1s\nafter: 2s\nfault: {kind: latency, cluster: us-central, latency: 300ms}\nfaultFor: 3s\n",
            &spec,
        )
        .expect("reads");
        let fault = late.plan.fault.expect("a fault");
        assert_eq!(
            fault,
            Fault::Latency {
                cluster: 1,
                latency: std::time::Duration::from_millis(300)
            }
        );
        assert_eq!(fault.knobs().map(|k| k.latency_ms), Some(300));
    }
}
