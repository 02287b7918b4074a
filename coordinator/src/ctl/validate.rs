//! `fulcrumctl validate`: load configuration with fulcrum-policy and report, per object,
//! whether it is accepted, rejected or ignored, with every error and warning.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use clap::Args;
use fulcrum_policy::load::YAML_EXTENSIONS;
use fulcrum_policy::yaml::DEFAULT_MAX_BYTES;
use fulcrum_policy::{ConfigSet, Diagnostic, LoadedObject, Outcome as ObjectOutcome, Severity};
use serde::Serialize;

use super::{Format, Outcome};

/// The name stdin goes by in diagnostics.
const STDIN_NAME: &str = "<stdin>";

/// Arguments of `fulcrumctl validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// A file, or a directory to read every .yaml, .yml and .json file under
    /// (recursively); `-` reads standard input. Repeat to validate several together.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// Runs the command.
pub fn run(args: &ValidateArgs, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Outcome {
    let mut config = ConfigSet::new();
    let mut input_failures = Vec::new();
    for path in &args.files {
        if path.as_os_str() == "-" {
            match read_stdin() {
                Ok(bytes) => {
                    if let Err(e) = config.add_bytes(STDIN_NAME, &bytes) {
                        input_failures.push(e.to_string());
                    }
                }
                Err(e) => input_failures.push(format!("{STDIN_NAME}: {e}")),
            }
        } else {
            config.add_path(path);
        }
    }
    config.check_consistency();
    input_failures.extend(config.source_errors.iter().map(ToString::to_string));
    if config.objects.is_empty() && input_failures.is_empty() {
        input_failures.push(format!(
            "no objects found in the input (only {} files are read from directories)",
            YAML_EXTENSIONS
                .iter()
                .map(|e| format!(".{e}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let outcome = if !input_failures.is_empty() {
        Outcome::Failed
    } else if config.has_errors() {
        Outcome::Invalid
    } else {
        Outcome::Ok
    };
    let written = match args.output {
        Format::Text => write_text(&config, &input_failures, stdout, stderr),
        Format::Json => write_json(&config, &input_failures, stdout),
    };
    // A closed pipe (`fulcrumctl validate ... | head`) is not a failure of validation.
    match written {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            let _ = writeln!(stderr, "fulcrumctl: cannot write output: {e}");
            Outcome::Failed
        }
        _ => outcome,
    }
}

fn read_stdin() -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::stdin()
        .lock()
        .take(DEFAULT_MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > DEFAULT_MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("input is larger than the limit of {DEFAULT_MAX_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn describe(object: &LoadedObject) -> String {
    match &object.object {
        Some(o) => o.to_string(),
        None if object.document > 0 => format!("document {}", object.document),
        None => "the whole file".to_string(),
    }
}

fn write_text(
    config: &ConfigSet,
    input_failures: &[String],
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> io::Result<()> {
    for object in &config.objects {
        for diagnostic in &object.diagnostics {
            writeln!(stdout, "{diagnostic}")?;
        }
        let place = format!("{}:{}", object.source, object.line);
        match &object.outcome {
            ObjectOutcome::Accepted(_) => {
                writeln!(stdout, "accepted: {} ({place})", describe(object))?;
            }
            ObjectOutcome::Rejected => {
                writeln!(stdout, "rejected: {} ({place})", describe(object))?;
            }
            ObjectOutcome::Ignored { api_version, kind } => writeln!(
                stdout,
                "ignored: {} ({place}): {kind} ({api_version}) is not a kind Fulcrum handles",
                describe(object)
            )?,
        }
    }
    for failure in input_failures {
        writeln!(stderr, "fulcrumctl: error: {failure}")?;
    }
    writeln!(stdout, "{config}")?;
    Ok(())
}

/// The `-o json` document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    valid: bool,
    objects: Vec<ObjectReport<'a>>,
    input_errors: &'a [String],
    summary: Summary,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectReport<'a> {
    source: &'a str,
    document: usize,
    line: u32,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<&'a str>,
    diagnostics: &'a [Diagnostic],
}

#[derive(Serialize)]
struct Summary {
    accepted: usize,
    rejected: usize,
    ignored: usize,
    errors: usize,
    warnings: usize,
}

fn write_json(
    config: &ConfigSet,
    input_failures: &[String],
    stdout: &mut dyn Write,
) -> io::Result<()> {
    let objects: Vec<ObjectReport> = config
        .objects
        .iter()
        .map(|o| {
            let (status, api_version) = match &o.outcome {
                ObjectOutcome::Accepted(r) => ("accepted", Some(r.api_version())),
                ObjectOutcome::Rejected => ("rejected", None),
                ObjectOutcome::Ignored { api_version, .. } => {
                    ("ignored", Some(api_version.as_str()))
                }
            };
            ObjectReport {
                source: &o.source,
                document: o.document,
                line: o.line,
                status,
                kind: o.object.as_ref().map(|r| r.kind.as_str()),
                namespace: o.object.as_ref().map(|r| r.namespace.as_str()),
                name: o.object.as_ref().map(|r| r.name.as_str()),
                api_version,
                diagnostics: &o.diagnostics,
            }
        })
        .collect();
    let count = |status: &str| objects.iter().filter(|o| o.status == status).count();
    let severity = |s: Severity| config.diagnostics().filter(|d| d.severity == s).count();
    let report = Report {
        valid: input_failures.is_empty() && !config.has_errors(),
        summary: Summary {
            accepted: count("accepted"),
            rejected: count("rejected"),
            ignored: count("ignored"),
            errors: severity(Severity::Error),
            warnings: severity(Severity::Warning),
        },
        objects,
        input_errors: input_failures,
    };
    serde_json::to_writer_pretty(&mut *stdout, &report)?;
    writeln!(stdout)
}
