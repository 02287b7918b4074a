//! `fulcrumctl certs init`: a development CA and leaf certificates for a local mesh.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Outcome;
use crate::security::certs::{self, InitPlan};

/// `fulcrumctl certs ...`
#[derive(Debug, Clone, Subcommand)]
pub enum CertsCommand {
    /// Create a CA and certificates for coordinators, cluster proxies and admins.
    Init(InitArgs),
}

/// Arguments of `fulcrumctl certs init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The SPIFFE trust domain, e.g. mesh.local.
    #[arg(long, value_name = "TD")]
    pub trust_domain: String,
    /// Where to write the files (created if missing; existing files are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// How many coordinator certificates (node ids 1..=N).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub coordinators: u64,
    /// Cluster names, one proxy certificate each.
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    pub clusters: Vec<String>,
    /// Admin names, one certificate each.
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        default_value = "admin"
    )]
    pub admins: Vec<String>,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    pub valid_days: u32,
}

/// Runs `certs`.
pub fn run(command: &CertsCommand, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Outcome {
    let CertsCommand::Init(args) = command;
    let plan = InitPlan {
        trust_domain: args.trust_domain.clone(),
        coordinators: args.coordinators,
        clusters: args.clusters.clone(),
        admins: args.admins.clone(),
        valid_days: args.valid_days.max(1),
    };
    match certs::init(&plan, &args.out) {
        Ok(files) => {
            let _ = writeln!(
                stdout,
                "wrote {} files to {} (trust domain {}); keep ca-key.pem off the nodes",
                files.len(),
                args.out.display(),
                args.trust_domain
            );
            Outcome::Ok
        }
        Err(e) => {
            let _ = writeln!(stderr, "fulcrumctl: {e}");
            Outcome::Failed
        }
    }
}
