//! `fulcrumctl`: validate configuration (and, as the coordinator grows, inspect and
//! change a running mesh).

use std::process::ExitCode;

use clap::Parser;
use fulcrum_coordinator::ctl::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    ExitCode::from(run(cli, &mut stdout, &mut stderr).code())
}
