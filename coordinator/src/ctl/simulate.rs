//! `fulcrumctl simulate`: replay a failover scenario through the engine against a
//! configuration, print the weights and why after every step, and check what the scenario
//! expects.
//!
//! Exit codes: 0 when every expectation holds, 1 when any fails (expected and actual are
//! printed), 2 when the configuration or the scenario cannot be used.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use fulcrum_policy::ConfigSet;
use fulcrum_policy::engine::Topology;
use fulcrum_policy::engine::explain::{seconds, weight};
use fulcrum_policy::scenario::{Outcome as SimOutcome, Scenario, simulate};
use fulcrum_policy::{Locality, Severity};

use super::{Format, Outcome};

/// Largest scenario file read.
const MAX_SCENARIO_BYTES: u64 = 8 * 1024 * 1024;

/// Arguments of `fulcrumctl simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Configuration: a file, or a directory of .yaml, .yml and .json files (recursively).
    /// Repeat to combine several. MeshClusters, ServiceEntries, WorkloadEntries,
    /// DestinationRules and FailoverPolicies are used.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,

    /// The scenario to replay.
    #[arg(long, value_name = "FILE")]
    pub scenario: PathBuf,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// Runs the command.
pub fn run(args: &SimulateArgs, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Outcome {
    let mut config = ConfigSet::new();
    for path in &args.files {
        config.add_path(path);
    }
    config.check_consistency();
    let mut unusable = Vec::new();
    unusable.extend(config.source_errors.iter().map(ToString::to_string));
    unusable.extend(
        config
            .diagnostics()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string),
    );
    if config.objects.is_empty() && unusable.is_empty() {
        unusable.push("no objects found in the configuration".to_string());
    }
    if !unusable.is_empty() {
        return fail(stderr, "the configuration cannot be used", &unusable);
    }
    let topology = Topology::build(config.resources());

    let scenario_name = args.scenario.display().to_string();
    let text = match read_scenario(&args.scenario) {
        Ok(text) => text,
        Err(e) => return fail(stderr, &format!("cannot read {scenario_name}"), &[e]),
    };
    let scenario = match Scenario::parse(&text) {
        Ok(s) => s,
        Err(problems) => {
            let lines: Vec<String> = problems
                .iter()
                .map(|p| format!("{scenario_name}: {p}"))
                .collect();
            return fail(stderr, "the scenario is invalid", &lines);
        }
    };
    let problems = scenario.check(&topology);
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{scenario_name}: {p}"))
            .collect();
        return fail(
            stderr,
            "the scenario does not fit the configuration",
            &lines,
        );
    }

    let outcome = simulate(&topology, &scenario);
    let written = match args.output {
        Format::Text => write_text(&outcome, stdout),
        Format::Json => serde_json::to_writer_pretty(&mut *stdout, &outcome)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(stdout)),
    };
    match written {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            let _ = writeln!(stderr, "fulcrumctl: cannot write output: {e}");
            Outcome::Failed
        }
        _ if outcome.ok => Outcome::Ok,
        _ => Outcome::Invalid,
    }
}

fn read_scenario(path: &PathBuf) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if metadata.len() > MAX_SCENARIO_BYTES {
        return Err(format!(
            "it is {} bytes, more than the limit of {MAX_SCENARIO_BYTES}",
            metadata.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

fn fail(stderr: &mut dyn Write, what: &str, lines: &[String]) -> Outcome {
    let _ = writeln!(stderr, "fulcrumctl: error: {what}:");
    for line in lines {
        let _ = writeln!(stderr, "  {line}");
    }
    Outcome::Failed
}

fn weights_line(weights: &BTreeMap<Locality, u32>) -> String {
    weights
        .iter()
        .map(|(l, w)| format!("{l} {}", weight(*w)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn basis_points_line(weights: &BTreeMap<Locality, u32>) -> String {
    let parts: Vec<String> = weights.iter().map(|(l, w)| format!("{l}: {w}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn write_text(outcome: &SimOutcome, out: &mut dyn Write) -> io::Result<()> {
    let mut held = 0;
    let mut failed = 0;
    for step in &outcome.steps {
        writeln!(out, "step {} at {}", step.index, seconds(step.at_ms))?;
        for e in &step.expectations {
            if e.ok {
                held += 1;
                writeln!(out, "  expect {} from {}: ok", e.service, e.source)?;
            } else {
                failed += 1;
                writeln!(
                    out,
                    "  expect {} from {}: FAILED (tolerance {})",
                    e.service, e.source, e.tolerance
                )?;
                writeln!(out, "    expected: {}", basis_points_line(&e.expected))?;
                writeln!(out, "    actual:   {}", basis_points_line(&e.actual))?;
            }
        }
        for event in &step.events {
            writeln!(
                out,
                "  event {} {} {}: {} -> {} ({})",
                seconds(event.at_ms),
                event.service,
                event.locality,
                event.from,
                event.to,
                event.detail
            )?;
        }
        for row in &step.summaries {
            writeln!(
                out,
                "  {} from {}: {}",
                row.service,
                row.source,
                weights_line(&row.weights)
            )?;
            writeln!(out, "    {}", row.summary)?;
        }
    }
    if failed == 0 {
        writeln!(out, "result: all {held} expectations hold")
    } else {
        writeln!(
            out,
            "result: {failed} of {} expectations FAILED",
            held + failed
        )
    }
}
