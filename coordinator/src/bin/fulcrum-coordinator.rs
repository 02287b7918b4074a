//! `fulcrum-coordinator`: one node of the replicated control plane. Parses flags and hands
//! over to [`fulcrum_coordinator::app`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use fulcrum_coordinator::app::{Bootstrap, Coordinator, CoordinatorConfig, Security};
use fulcrum_coordinator::raft::RaftSettings;
use fulcrum_policy::Duration as PolicyDuration;

/// One node of Fulcrum's replicated coordinator.
///
/// Start the first node with --init (or every initial node with the same --members),
/// then add others with --join ADDR or `fulcrumctl members add`. A restarted node needs
/// none of these: it resumes from its data dir.
#[derive(Debug, Parser)]
#[command(name = "fulcrum-coordinator", version)]
#[command(group(ArgGroup::new("security").required(true).args(["certs", "insecure_dev"])))]
#[command(group(ArgGroup::new("bootstrap").args(["init", "join", "members", "members_file"])))]
struct Flags {
    /// This node's id: a positive number, unique in the group, kept for its lifetime.
    #[arg(long, value_name = "N")]
    node_id: u64,
    /// Address for gRPC (Raft, proxies, status, admin), e.g. 127.0.0.1:7001. Calls to the
    /// other nodes leave from its IP address, unless that is 0.0.0.0 or ::, or a loopback
    /// address and the node called is not on one.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Address other nodes reach this one on, when not --listen (e.g. behind NAT).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Directory for the node's store file (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Directory with ca.pem and coordinator-<N>.pem / -key.pem (see `fulcrumctl certs init`).
    #[arg(long, value_name = "DIR")]
    certs: Option<PathBuf>,
    /// Plaintext, no authentication: for experiments on one machine only.
    #[arg(long)]
    insecure_dev: bool,
    /// Create a new group with this node as its first member.
    #[arg(long)]
    init: bool,
    /// Ask the node at ADDR to add this one to its group.
    #[arg(long, value_name = "ADDR")]
    join: Option<String>,
    /// Create a group with these members: ID=ADDR,ID=ADDR,... (the same list on every
    /// initial node).
    #[arg(long, value_name = "ID=ADDR,...", value_delimiter = ',')]
    members: Vec<String>,
    /// The same as --members, from a YAML or JSON file: `members: [{id: 1, address: ...}]`.
    #[arg(long, value_name = "FILE")]
    members_file: Option<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP here (e.g. 127.0.0.1:9101).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Apply the configuration files in DIR, and again whenever they change.
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// Leader heartbeat interval.
    #[arg(long, value_name = "DURATION", default_value = "50ms")]
    heartbeat: PolicyDuration,
    /// Shortest election timeout. Across a WAN keep it at least ten round trips.
    #[arg(long, value_name = "DURATION", default_value = "150ms")]
    election_min: PolicyDuration,
    /// Longest election timeout.
    #[arg(long, value_name = "DURATION", default_value = "300ms")]
    election_max: PolicyDuration,
    /// Snapshot (and compact the log) every this many entries.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    snapshot_every: u64,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersFile {
    members: Vec<Member>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    id: u64,
    address: String,
}

fn parse_members(list: &[String]) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for item in list {
        let (id, address) = item
            .split_once('=')
            .ok_or_else(|| format!("--members: {item:?} is not ID=ADDR"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("--members: {id:?} is not a node id"))?;
        if out.insert(id, address.trim().to_string()).is_some() {
            return Err(format!("--members: node {id} is listed twice"));
        }
    }
    Ok(out)
}

fn read_members_file(path: &PathBuf) -> Result<BTreeMap<u64, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--members-file {}: {e}", path.display()))?;
    let file: MembersFile = serde_saphyr::from_str(&text)
        .map_err(|e| format!("--members-file {}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for m in file.members {
        if out.insert(m.id, m.address).is_some() {
            return Err(format!(
                "--members-file {}: node {} is listed twice",
                path.display(),
                m.id
            ));
        }
    }
    Ok(out)
}

fn std_duration(flag: &str, d: PolicyDuration) -> Result<std::time::Duration, String> {
    d.to_std()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--{flag} must be positive"))
}

fn config(flags: Flags) -> Result<CoordinatorConfig, String> {
    let security = match (&flags.certs, flags.insecure_dev) {
        (Some(dir), false) => Security::Certificates(dir.clone()),
        _ => Security::InsecureDev,
    };
    let bootstrap = if flags.init {
        Bootstrap::Init
    } else if let Some(seed) = &flags.join {
        Bootstrap::Join(seed.clone())
    } else if !flags.members.is_empty() {
        Bootstrap::Members(parse_members(&flags.members)?)
    } else if let Some(path) = &flags.members_file {
        Bootstrap::Members(read_members_file(path)?)
    } else {
        Bootstrap::Resume
    };
    let raft = RaftSettings {
        heartbeat: std_duration("heartbeat", flags.heartbeat)?,
        election_min: std_duration("election-min", flags.election_min)?,
        election_max: std_duration("election-max", flags.election_max)?,
        snapshot_every: flags.snapshot_every.max(1),
        ..RaftSettings::default()
    };
    if raft.election_min <= raft.heartbeat || raft.election_max <= raft.election_min {
        return Err(
            "election timeouts must satisfy heartbeat < --election-min < --election-max".into(),
        );
    }
    let mut c = CoordinatorConfig::new(flags.node_id, flags.listen, flags.data_dir, security);
    c.advertise = flags.advertise;
    c.bootstrap = bootstrap;
    c.raft = raft;
    c.metrics_listen = flags.metrics;
    c.config_dir = flags.config_dir;
    Ok(c)
}

/// glibc's allocator keeps freed memory in one arena per thread that used it; under a
/// stream of digests that doubled the resident set over the live heap. mimalloc returns
/// it (see docs/benchmarks.md, memory).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if flags.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    if flags.insecure_dev {
        tracing::warn!(
            "--insecure-dev: no TLS and no authorization; anyone who can reach this port can change the mesh"
        );
    }
    let config = match config(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fulcrum-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fulcrum-coordinator: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        // Taken before the node serves, so that none ends it without its stop.
        let stop = stop_signal();
        let coordinator = match Coordinator::start(config).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fulcrum-coordinator: {e}");
                return ExitCode::from(1);
            }
        };
        stop.await;
        tracing::info!("stopping");
        coordinator.stop().await;
        ExitCode::SUCCESS
    })
}

/// Takes the signals at once: SIGTERM or SIGINT (Ctrl-C), when the returned future
/// ends; SIGHUP, which a terminal sends its processes as it closes, is said and
/// ignored rather than left to end the node unannounced.
fn stop_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::warn!("SIGHUP taken and ignored (SIGTERM stops the node)");
                    }
                });
            }
            Err(e) => tracing::warn!("SIGHUP would end the node: {e}"),
        }
        let (term, interrupt) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
