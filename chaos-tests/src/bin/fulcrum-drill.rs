//! `fulcrum-drill`: the local mesh and its failover drills.
//!
//! - `fulcrum-drill demo [--no-drill] [--for DURATION] [--plain] [--rate N]`: starts a
//!   three-cluster mesh of real processes on loopback (3 coordinators, 3 proxies, 2
//!   backends per cluster), sends traffic through every proxy, shows the traffic share
//!   per cluster and the weights live, and unless `--no-drill` fails one cluster's
//!   backends after a warm-up, brings them back, and prints the drill's report. Stops
//!   everything on Ctrl-C or SIGTERM.
//! - `fulcrum-drill run FILE [--plain]`: a drill from a file (`deploy/local/drills/`) on
//!   the same local mesh; exits non-zero when its expectations fail.
//! - `fulcrum-drill run FILE --mesh ADDR --service HOST [--proxy CLUSTER=ADDR]...`: the
//!   drill against an existing mesh through its coordinators' status and admin API (as
//!   `fulcrumctl`, with `--certs`/`--as` or `FULCRUM_CERTS`/`FULCRUM_ADMIN`); faults and
//!   actions that need process control are skipped with a note.
//! - `fulcrum-drill backend --listen ADDR --control ADDR --cluster NAME --name NAME`:
//!   the drills' test backend (started by the harness).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fulcrum_chaos::drill::{self, Plan, Progress};
use fulcrum_chaos::drill::{Report, Target};
use fulcrum_chaos::harness::{Binaries, ClusterSpec, Mesh, MeshSpec};
use fulcrum_chaos::remote::{Connection, RemoteMesh};
use fulcrum_chaos::scenario::Drill;

#[derive(Debug, Parser)]
#[command(
    name = "fulcrum-drill",
    version,
    about = "Fulcrum's local mesh and failover drills"
)]
struct Flags {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A local three-cluster mesh with traffic and a cluster-outage drill.
    Demo(DemoArgs),
    /// A drill from a file, on the local three-cluster mesh, or with --mesh on an existing
    /// mesh through its coordinators' API.
    Run(RunArgs),
    /// The drills' test backend.
    Backend {
        /// Where to serve requests.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Where to serve the knobs (never refused).
        #[arg(long)]
        control: std::net::SocketAddr,
        /// The cluster it runs in (answered in x-backend-cluster).
        #[arg(long)]
        cluster: String,
        /// Its name (answered in x-backend-name).
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The drill (see deploy/local/drills/).
    file: PathBuf,
    /// Progress lines instead of the live view.
    #[arg(long)]
    plain: bool,
    /// Keep the mesh's files in this directory.
    #[arg(long)]
    mesh_dir: Option<PathBuf>,
    /// Where to write the report (default target/drill-reports/<name>).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Run against an existing mesh: any of its coordinators (host:port, comma separated
    /// for more), through the status and admin API.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "service",
        conflicts_with = "mesh_dir"
    )]
    mesh: Option<String>,
    /// With --mesh: the service to watch and send traffic to (its host).
    #[arg(long, value_name = "HOST", requires = "mesh")]
    service: Option<String>,
    /// With --mesh: a cluster's proxy outbound listener to send traffic through; repeat
    /// for each cluster. Without any, only weights are watched.
    #[arg(long, value_name = "CLUSTER=ADDR", requires = "mesh", value_parser = parse_proxy)]
    proxy: Vec<(String, std::net::SocketAddr)>,
    /// With --mesh: the certificates directory with an admin certificate.
    // Not tied to --mesh: an exported FULCRUM_CERTS must not get in the way of local drills.
    #[arg(long, value_name = "DIR", env = "FULCRUM_CERTS")]
    certs: Option<PathBuf>,
    /// With --mesh: which admin certificate (admin-NAME.pem).
    #[arg(long = "as", value_name = "NAME", env = "FULCRUM_ADMIN")]
    admin: Option<String>,
    /// With --mesh: plaintext, for coordinators started with --insecure-dev.
    #[arg(long, requires = "mesh")]
    insecure_dev: bool,
}

fn parse_proxy(text: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (cluster, address) = text
        .split_once('=')
        .ok_or_else(|| format!("{text}: expected CLUSTER=HOST:PORT"))?;
    let address = address
        .parse()
        .map_err(|e| format!("{text}: {address:?} is not an address (HOST:PORT): {e}"))?;
    if cluster.is_empty() {
        return Err(format!("{text}: the cluster name is empty"));
    }
    Ok((cluster.to_string(), address))
}

/// The demo's drill.
const CLUSTER_OUTAGE: &str = include_str!("../../../deploy/local/drills/cluster-outage.yaml");

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Traffic only: no fault.
    #[arg(long)]
    no_drill: bool,
    /// Run this long, then print the report and exit (e.g. 60s); default: the drill's
    /// length (deploy/local/drills/cluster-outage.yaml, 50 s), or until Ctrl-C with
    /// --no-drill.
    #[arg(long = "for", value_parser = parse_duration)]
    run_for: Option<Duration>,
    /// Progress lines instead of the live view.
    #[arg(long)]
    plain: bool,
    /// Requests per second through the proxies, in turn.
    #[arg(long, default_value_t = fulcrum_chaos::load::DEFAULT_RATE)]
    rate: u32,
    /// Keep the mesh's files (certificates, data, logs) in this directory instead of a
    /// temporary one removed at the end.
    #[arg(long)]
    mesh_dir: Option<PathBuf>,
    /// Where to write the report (report.json, summary.txt, timeline.svg).
    #[arg(long, default_value = "target/drill-reports/demo")]
    report_dir: PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text}: not a duration like 60s or 2m"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("{text}: the unit must be ms, s or m")),
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fulcrum-drill: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match flags.command {
        Command::Backend {
            listen,
            control,
            cluster,
            name,
        } => runtime.block_on(async {
            match fulcrum_chaos::backend::serve(listen, control, cluster, name).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fulcrum-drill backend: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Demo(args) => {
            logging();
            runtime.block_on(demo(args))
        }
        Command::Run(args) => {
            logging();
            runtime.block_on(run(args))
        }
    }
}

fn logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// The demo's drill: `cluster-outage.yaml`, stretched to `--for` when given, or traffic
/// alone.
fn demo_drill(args: &DemoArgs) -> Result<Drill, String> {
    let spec = MeshSpec::local();
    let mut drill =
        Drill::parse(CLUSTER_OUTAGE, &spec).map_err(|e| format!("cluster-outage.yaml: {e}"))?;
    drill.plan.rate = args.rate;
    if args.no_drill {
        drill.plan = Plan {
            name: "traffic".into(),
            warmup: Duration::ZERO,
            fault: None,
            fault_for: Duration::ZERO,
            after: args.run_for.unwrap_or(Duration::from_secs(24 * 3600)),
            rate: args.rate,
            actions: Vec::new(),
        };
        drill.expect = Default::default();
    } else if let Some(total) = args.run_for {
        // 10% warm-up (at least 5 s), 20% outage, the rest for failback (which waits for
        // the outage's errors to leave the 10 s window, then the hold-down and the ramp).
        drill.plan.warmup = (total / 10).max(Duration::from_secs(5));
        drill.plan.fault_for = total / 5;
        drill.plan.after = total.saturating_sub(drill.plan.warmup + drill.plan.fault_for);
    }
    Ok(drill)
}

fn view(p: &Progress, clusters: &[String], plain: bool) {
    let shares: Vec<String> = clusters
        .iter()
        .zip(&p.share)
        .map(|(c, s)| format!("{c} {s:5.1}%"))
        .collect();
    let rows: Vec<String> = clusters
        .iter()
        .zip(&p.weights)
        .map(|(c, w)| match w {
            Some((version, weights)) => {
                let split: Vec<String> = weights
                    .iter()
                    .filter(|(_, bp)| *bp > 0)
                    .map(|(l, bp)| {
                        format!(
                            "{}={:.0}%",
                            l.split('/').next().unwrap_or(l),
                            *bp as f64 / 100.0
                        )
                    })
                    .collect();
                format!("{c} v{version}: {}", split.join(" "))
            }
            None => format!("{c}: (no answer)"),
        })
        .collect();
    if plain {
        println!(
            "t={:5.1}s {:<8} served: {} | errors {} | rows: {}",
            p.t,
            p.phase,
            shares.join("  "),
            p.errors,
            rows.join("; ")
        );
    } else {
        // Clear the screen and draw the view again.
        print!("\x1b[2J\x1b[H");
        println!(
            "fulcrum-drill demo   t={:.1}s   phase: {}   (Ctrl-C stops)\n",
            p.t, p.phase
        );
        println!("traffic served in the last second, by cluster:");
        for (c, s) in clusters.iter().zip(&p.share) {
            let bar = "#".repeat((*s / 2.0).round() as usize);
            println!("  {c:<12} {s:5.1}% {bar}");
        }
        println!("  errors       {}\n", p.errors);
        println!("weights each proxy routes on (destination region = share):");
        for r in &rows {
            println!("  {r}");
        }
    }
}

async fn demo(args: DemoArgs) -> ExitCode {
    let drill = match demo_drill(&args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fulcrum-drill: {e}");
            return ExitCode::from(2);
        }
    };
    let report_dir = args.report_dir.clone();
    on_local_mesh(drill, args.plain, args.mesh_dir.clone(), report_dir).await
}

async fn run(args: RunArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fulcrum-drill: {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    if args.mesh.is_some() {
        return on_existing_mesh(&text, args).await;
    }
    let drill = match Drill::parse(&text, &MeshSpec::local()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fulcrum-drill: {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/drill-reports").join(&drill.plan.name));
    on_local_mesh(drill, args.plain, args.mesh_dir.clone(), report_dir).await
}

/// Runs the drill in `text` against the mesh `args.mesh` names.
async fn on_existing_mesh(text: &str, args: RunArgs) -> ExitCode {
    let stopped = stop_on_signal();
    let bins = match Binaries::locate(true) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fulcrum-drill: {e}");
            return ExitCode::FAILURE;
        }
    };
    let connection = Connection {
        coordinators: args.mesh.clone().unwrap_or_default(),
        certs: args.certs.clone(),
        admin: args.admin.clone(),
        insecure_dev: args.insecure_dev,
    };
    let service = args.service.clone().unwrap_or_default();
    let reach = {
        let (ctl, proxies) = (bins.ctl.clone(), args.proxy.clone());
        tokio::task::spawn_blocking(move || RemoteMesh::connect(ctl, connection, service, &proxies))
            .await
    };
    let mut mesh = match reach {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            eprintln!("fulcrum-drill: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("fulcrum-drill: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The drill's cluster names are the mesh's.
    let spec = MeshSpec {
        clusters: mesh
            .clusters()
            .into_iter()
            .map(|(name, locality)| ClusterSpec {
                name,
                locality,
                ip: std::net::Ipv4Addr::LOCALHOST,
            })
            .collect(),
        coordinators: usize::from(u8::MAX),
        ..MeshSpec::local()
    };
    let drill = match Drill::parse(text, &spec) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fulcrum-drill: {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let clusters: Vec<String> = spec.clusters.iter().map(|c| c.name.clone()).collect();
    eprintln!(
        "fulcrum-drill: on the mesh at {} ({}), service {}, traffic through {} prox{}",
        args.mesh.as_deref().unwrap_or_default(),
        clusters.join(", "),
        mesh.service(),
        args.proxy.len(),
        if args.proxy.len() == 1 { "y" } else { "ies" }
    );
    let report = drive(&mut mesh, &drill, &clusters, args.plain, stopped).await;
    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fulcrum-drill: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !drill.damping.is_empty() {
        report
            .notes
            .push("damping ignored: the mesh's own FailoverPolicy applies".to_string());
    }
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/drill-reports").join(&drill.plan.name));
    finish(&drill, &report, &report_dir)
}

/// Runs `drill` on a new local mesh, prints and writes its report, and checks it.
async fn on_local_mesh(
    drill: Drill,
    plain: bool,
    mesh_dir: Option<PathBuf>,
    report_dir: PathBuf,
) -> ExitCode {
    let stopped = stop_on_signal();
    eprintln!("fulcrum-drill: building the mesh's binaries (cargo, incremental)...");
    let bins = match Binaries::locate(true) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fulcrum-drill: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut spec = MeshSpec::local();
    spec.damping = drill.damping.clone();
    let clusters: Vec<String> = spec.clusters.iter().map(|c| c.name.clone()).collect();
    eprintln!(
        "fulcrum-drill: starting 3 coordinators, 3 proxies and 6 backends on 127.0.{{0,1,2,3}}.1..."
    );
    // A signal while the mesh starts drops what has started, which stops it.
    let mut stop = stopped.clone();
    let interrupted = || eprintln!("fulcrum-drill: interrupted; the mesh is stopped");
    let started = tokio::select! {
        started = Mesh::start(spec, bins, mesh_dir) => started,
        _ = stop.wait_for(|stopped| *stopped) => {
            interrupted();
            return ExitCode::FAILURE;
        }
    };
    let mut mesh = match started {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fulcrum-drill: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ready = tokio::select! {
        ready = mesh.wait_ready(Duration::from_secs(60)) => ready,
        _ = stop.wait_for(|stopped| *stopped) => {
            interrupted();
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = ready {
        eprintln!("fulcrum-drill: {e}");
        keep_for_a_look(&mut mesh);
        return ExitCode::FAILURE;
    }
    eprintln!(
        "fulcrum-drill: mesh ready (logs in {}); leader: node {}",
        mesh.logs().display(),
        mesh.leader().map_or("?".to_string(), |l| l.to_string())
    );
    let report = drive(&mut mesh, &drill, &clusters, plain, stopped).await;
    let code = match report {
        Ok(report) => finish(&drill, &report, &report_dir),
        Err(e) => {
            eprintln!("fulcrum-drill: {e}");
            ExitCode::FAILURE
        }
    };
    if code != ExitCode::SUCCESS {
        keep_for_a_look(&mut mesh);
    }
    code
}

/// When a drill fails, keeps its mesh's files, whose logs say what each process saw, and
/// says where they are. The processes are stopped all the same when `mesh` is dropped.
fn keep_for_a_look(mesh: &mut Mesh) {
    mesh.keep_files();
    eprintln!(
        "fulcrum-drill: the mesh's files are kept for a look (logs in {})",
        mesh.logs().display()
    );
}

/// Runs `drill` on `target` with the live view (or progress lines), until it ends or
/// `stopped` turns true ([`stop_on_signal`]).
async fn drive<T: Target>(
    target: &mut T,
    drill: &Drill,
    clusters: &[String],
    plain: bool,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Report, fulcrum_chaos::harness::HarnessError> {
    drill::run(
        target,
        drill.plan.clone(),
        |p| view(p, clusters, plain),
        stopped,
    )
    .await
}

/// Prints and writes `report`, and checks `drill`'s expectations against it.
fn finish(drill: &Drill, report: &Report, report_dir: &std::path::Path) -> ExitCode {
    println!("\n{}", report.summary());
    match report.write(report_dir) {
        Ok(()) => println!(
            "report: {}/{{report.json,summary.txt,timeline.svg}}",
            report_dir.display()
        ),
        Err(e) => eprintln!("fulcrum-drill: cannot write the report: {e}"),
    }
    if drill.plan.fault.is_none() && drill.plan.actions.is_empty() {
        return ExitCode::SUCCESS;
    }
    if report.fault_skipped {
        println!("expectations about the fault: not checked (the fault was skipped)");
    }
    let failed = drill.check(report);
    if failed.is_empty() {
        println!("expectations: all met");
        ExitCode::SUCCESS
    } else {
        println!("expectations not met:\n  {}", failed.join("\n  "));
        ExitCode::FAILURE
    }
}

/// A watch that turns true at SIGINT (Ctrl-C) or SIGTERM, taken from now on: either
/// stops the drill, undoes its fault and stops every process the mesh started, or, while
/// the mesh starts, what has started (a signal that ended this process at once would
/// leave them running). Both are taken over here, before anything starts, so that no
/// moment is left where one would end the process.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    // One that cannot be taken over keeps its default: it ends the process.
    let received = |taken: std::io::Result<tokio::signal::unix::Signal>| async move {
        match taken {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            () = received(term) => {}
            () = received(int) => {}
        }
        let _ = stop.send(true);
    });
    stopped
}
