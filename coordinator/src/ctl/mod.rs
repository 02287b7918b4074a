//! `fulcrumctl`: the command line definition and its dispatch.
//!
//! Commands write to the writers they are given and return an [`Outcome`], so tests run
//! them in-process and check both what they print and how they exit.

mod certs;
mod remote;
mod simulate;
mod validate;

use std::io::Write;

use clap::{Parser, Subcommand, ValueEnum};

pub use certs::CertsCommand;
pub use remote::{ConnectArgs, MembersCommand, RemoteCommand};
pub use simulate::SimulateArgs;
pub use validate::ValidateArgs;

/// How a command ended, and the exit code that tells scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything is fine (warnings allowed): exit 0.
    Ok,
    /// The input was read, and something in it is invalid: exit 1.
    Invalid,
    /// The command could not do its job (usage, missing file, unreadable input): exit 2.
    Failed,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Invalid => 1,
            Outcome::Failed => 2,
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document for machines.
    Json,
}

/// Fulcrum's command line.
#[derive(Debug, Parser)]
#[command(
    name = "fulcrumctl",
    version,
    about = "Validate, inspect and operate a Fulcrum mesh."
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check Istio and Fulcrum configuration files, as the coordinator would before
    /// accepting them.
    ///
    /// Prints every error and warning as FILE:LINE: KIND ns/name: PATH: reason. Exits 0
    /// when everything is valid (warnings allowed), 1 when anything is invalid, and 2 when
    /// an input cannot be read.
    Validate(ValidateArgs),
    /// Replay a failover scenario through the engine against a configuration.
    ///
    /// Prints the weight table and its explanations after every step (JSON with -o json)
    /// and checks the weights the scenario expects. Exits 0 when every expectation holds,
    /// 1 when any fails (printing expected and actual), 2 when the configuration or the
    /// scenario cannot be used.
    Simulate(SimulateArgs),
    /// Development certificates for a local mesh.
    #[command(subcommand)]
    Certs(CertsCommand),
    #[command(flatten)]
    #[allow(missing_docs)]
    Remote(RemoteCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Outcome {
    match cli.command {
        Command::Validate(args) => validate::run(&args, stdout, stderr),
        Command::Simulate(args) => simulate::run(&args, stdout, stderr),
        Command::Certs(command) => certs::run(&command, stdout, stderr),
        Command::Remote(command) => remote::run(&command, stdout, stderr),
    }
}
