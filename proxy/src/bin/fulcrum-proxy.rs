//! `fulcrum-proxy`: one cluster's data plane. The outbound listener routes with
//! VirtualService semantics and sends each request to a locality by the weights the
//! coordinators push (or, on a configuration file alone, to this cluster); the east-west
//! listener (h2 over mTLS, with `--certs`) serves other clusters' proxies; the admin
//! listener serves /ready, /version, /config_dump and /metrics. On SIGINT or SIGTERM it
//! drains (connections close as their requests finish, for at most `--drain-duration`),
//! then exits; a second signal ends the drain at once. docs/proxy.md says what it does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use fulcrum_policy::{Fingerprint, Locality};
use fulcrum_proxy::access_log::Destination;
use fulcrum_proxy::app::{
    CONFIG_LOOK_EVERY, ConfigFiles, EastWestSettings, Proxy, ProxyConfig, load_config,
};
use fulcrum_proxy::control::{ClientTls, ControlSettings};
use fulcrum_proxy::downstream::ClientTimeouts;
use fulcrum_proxy::health::HealthCheckSettings;

/// mimalloc: the request path allocates small, short-lived buffers on every worker
/// thread, which glibc's allocator serves with locks and consolidation; mimalloc's
/// thread-local pages cut that cost (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags.
#[derive(Debug, Parser)]
#[command(name = "fulcrum-proxy", version, about = "Fulcrum's per-cluster proxy")]
struct Flags {
    /// This proxy's cluster (a MeshCluster name); endpoints labelled
    /// topology.istio.io/cluster with it are the ones it forwards to.
    #[arg(long, value_parser = parse_cluster)]
    cluster: String,
    /// This proxy's locality, region/zone/subzone.
    #[arg(long)]
    locality: Locality,
    /// Where applications send requests (HTTP/1.1 and h2c), Host naming the service.
    #[arg(long, default_value = "127.0.0.1:15001")]
    listen: SocketAddr,
    /// East-west listener (h2 over mTLS) other clusters' proxies connect to; needs
    /// --certs.
    #[arg(long, default_value = "127.0.0.1:15443")]
    east_west: SocketAddr,
    /// How often to report what this proxy saw to the coordinators (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    report_interval: std::time::Duration,
    /// Probe this cluster's endpoints this often (e.g. 1s); a down endpoint gets no
    /// requests and is reported not ready. Off unless given.
    #[arg(long, value_parser = parse_interval)]
    health_check_interval: Option<std::time::Duration>,
    /// With --health-check-interval: GET this path and expect 2xx, instead of a TCP
    /// connect (in h2c to endpoints on a GRPC or HTTP2 port).
    #[arg(long, requires = "health_check_interval", value_parser = parse_path)]
    health_check_path: Option<String>,
    /// Admin listener: /ready, /version, /config_dump, /metrics.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Configuration: Istio and Fulcrum YAML or JSON, files or directories. Without
    /// coordinators, followed: read again within two seconds of a change (a change with
    /// errors is logged and not applied). With coordinators, used only until the first
    /// snapshot when there is no last-known-good.
    #[arg(long, required_unless_present = "coordinators")]
    config: Vec<PathBuf>,
    /// Coordinators to subscribe to, host:port, comma separated; any one will do.
    #[arg(long, value_delimiter = ',')]
    coordinators: Vec<String>,
    /// Where the last-known-good snapshot is kept (required with --coordinators).
    #[arg(long, requires = "coordinators")]
    state_dir: Option<PathBuf>,
    /// Certificates from `fulcrumctl certs init`: ca.pem, proxy-CLUSTER.pem and its key;
    /// for the coordinators and the east-west listener. Reloaded when the files change.
    #[arg(long, conflicts_with = "insecure_dev")]
    certs: Option<PathBuf>,
    /// Talk to coordinators in plaintext (they must run with --insecure-dev too).
    #[arg(long)]
    insecure_dev: bool,
    /// This proxy's id among its cluster's proxies (default: CLUSTER-PID).
    #[arg(long)]
    proxy_id: Option<String>,
    /// Close an application's connection after it waited this long for its next request.
    #[arg(long, default_value = "1h", value_parser = parse_timeout)]
    idle_timeout: std::time::Duration,
    /// Answer 408 and close when a request's head is not whole this long after its first
    /// byte, or its body sends nothing for this long (not a gRPC request's body over h2:
    /// a stream may pause).
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    request_stall_timeout: std::time::Duration,
    /// Threads serving the outbound and east-west listeners, each with its own
    /// connections to upstreams (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// On SIGTERM or SIGINT, how long connections get to finish their requests before
    /// the proxy exits (Istio's terminationDrainDuration); it exits sooner once none is
    /// open. 0s exits at once.
    #[arg(long, default_value = "5s", value_parser = parse_drain)]
    drain_duration: std::time::Duration,
    /// Write a JSON line per request to this file (appended to; opened again by its path
    /// on SIGUSR1, after a rotation), or to standard output with `-`. Off unless given
    #[arg(long, value_name = "PATH")]
    access_log: Option<String>,
    /// How often the endpoint names ServiceEntries give for DNS are resolved again (a
    /// configuration that names new ones has them resolved at once).
    #[arg(long, default_value = "5s", value_parser = parse_refresh)]
    dns_refresh: std::time::Duration,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let paths: Vec<&std::path::Path> = flags.config.iter().map(PathBuf::as_path).collect();
    // Followed without coordinators only. Taken first: a change made while the files are
    // read is then seen, and read again.
    let follow = flags.coordinators.is_empty() && !paths.is_empty();
    let read = follow.then(|| Fingerprint::of(&paths));
    let config = if paths.is_empty() {
        None
    } else {
        match load_config(&paths) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("fulcrum-proxy: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let control = match control_settings(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fulcrum-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // This thread runs the control side (coordinator session, reports, health checks,
    // admin); the listeners' connections are served by the worker threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fulcrum-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let settings = ProxyConfig {
            cluster: flags.cluster,
            locality: flags.locality,
            outbound: flags.listen,
            admin: flags.admin,
            control,
            east_west: flags.certs.clone().map(|certs| EastWestSettings {
                listen: flags.east_west,
                certs,
            }),
            report_interval: flags.report_interval,
            health_checks: flags
                .health_check_interval
                .map(|every| HealthCheckSettings {
                    path: flags.health_check_path.clone(),
                    ..HealthCheckSettings::tcp(every)
                }),
            workers: flags.workers.map_or_else(
                || std::thread::available_parallelism().map_or(1, usize::from),
                usize::from,
            ),
            client_timeouts: ClientTimeouts {
                idle: flags.idle_timeout,
                stall: flags.request_stall_timeout,
            },
            access_log: flags.access_log.as_deref().map(Destination::parse),
            dns_refresh: flags.dns_refresh,
            resolver: fulcrum_proxy::dns::Resolver::system(),
            config_files: read.map(|read| ConfigFiles {
                paths: flags.config.clone(),
                read,
                every: CONFIG_LOOK_EVERY,
            }),
        };
        // Taken before the proxy is ready, so that none ends it without its drain.
        let mut signals = Signals::new();
        take_sighup();
        let proxy = match Proxy::start(settings, config.as_ref()).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("fulcrum-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let proxy = Arc::new(proxy);
        reopen_on_sigusr1(proxy.clone());
        signals.next().await;
        if !flags.drain_duration.is_zero() {
            proxy.drain();
            tokio::select! {
                drained = proxy.drained(flags.drain_duration) => {
                    if drained {
                        tracing::info!("drained: no connection left");
                    }
                }
                () = signals.next() => tracing::info!("a second signal: not waiting any longer"),
            }
        }
        proxy.stop();
        ExitCode::SUCCESS
    })
}

/// The coordinator session the flags ask for, if any.
fn control_settings(flags: &Flags) -> Result<Option<ControlSettings>, String> {
    if flags.coordinators.is_empty() {
        return Ok(None);
    }
    let state_dir = flags.state_dir.clone().ok_or(
        "--state-dir is required with --coordinators (it keeps the last-known-good snapshot)",
    )?;
    let tls = match (&flags.certs, flags.insecure_dev) {
        (Some(dir), false) => Some(ClientTls::from_dir(dir, &flags.cluster)?),
        (None, true) => {
            tracing::warn!("--insecure-dev: talking to coordinators in plaintext, unauthenticated");
            None
        }
        _ => {
            return Err(
                "give --certs DIR, or --insecure-dev for a plaintext development mesh".into(),
            );
        }
    };
    Ok(Some(ControlSettings {
        coordinators: flags.coordinators.clone(),
        cluster: flags.cluster.clone(),
        locality: flags.locality.clone(),
        proxy_id: flags
            .proxy_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", flags.cluster, std::process::id())),
        state_dir,
        tls,
    }))
}

/// `--report-interval`: an Istio duration, above zero and at most a minute.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let d: fulcrum_policy::Duration = text.parse().map_err(|e| format!("{e}"))?;
    match d.to_std() {
        Some(d) if !d.is_zero() && d <= std::time::Duration::from_secs(60) => Ok(d),
        _ => Err(format!("{text}: must be above 0s and at most 1m")),
    }
}

/// A timeout: above 0 and at most a day.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d: fulcrum_policy::Duration = text.parse().map_err(|e| format!("{e}"))?;
    match d.to_std() {
        Some(d) if !d.is_zero() && d <= std::time::Duration::from_secs(24 * 3600) => Ok(d),
        _ => Err(format!("{text}: must be above 0s and at most 24h")),
    }
}

/// SIGINT and SIGTERM, as they come.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let unix = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(interrupt), Ok(terminate)) => Some((interrupt, terminate)),
                _ => None,
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((interrupt, terminate)) = &mut self.unix {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Takes SIGHUP (which a terminal sends its processes as it closes) and says so, as
/// Envoy does, rather than let it end the proxy without a drain: nothing needs it, as
/// certificates are read again when their files change and the access log is reopened
/// on SIGUSR1.
fn take_sighup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::warn!(
                            "SIGHUP taken and ignored (certificates are read again when their \
                             files change, the access log reopened on SIGUSR1; SIGTERM drains)"
                        );
                    }
                });
            }
            Err(e) => tracing::warn!("SIGHUP would end the proxy: {e}"),
        }
    }
}

/// On each SIGUSR1, has the proxy reopen its access log (after a rotation moved it
/// away), as Envoy does.
fn reopen_on_sigusr1(proxy: Arc<Proxy>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::user_defined1()) {
            Ok(mut reopen) => {
                tokio::spawn(async move {
                    while reopen.recv().await.is_some() {
                        proxy.reopen_access_log();
                    }
                });
            }
            Err(e) => tracing::warn!("SIGUSR1 will not reopen the access log: {e}"),
        }
    }
    #[cfg(not(unix))]
    let _ = proxy;
}

/// `--cluster`: a name a MeshCluster may have, a lowercase DNS-1123 label (it is part of
/// the proxy's SPIFFE identity).
fn parse_cluster(text: &str) -> Result<String, String> {
    match fulcrum_policy::validate::names::is_namespace(text) {
        true => Ok(text.to_string()),
        false => Err(format!(
            "{text:?} is not a cluster name: a MeshCluster's is a lowercase DNS-1123 label \
             (letters, digits and '-', at most 63), part of the proxies' SPIFFE identities"
        )),
    }
}

/// `--drain-duration`: from 0s (no drain) to an hour.
fn parse_drain(text: &str) -> Result<std::time::Duration, String> {
    let d: fulcrum_policy::Duration = text.parse().map_err(|e| format!("{e}"))?;
    match d.to_std() {
        Some(d) if d <= std::time::Duration::from_secs(3600) => Ok(d),
        _ => Err(format!("{text}: must be from 0s to 1h")),
    }
}

/// `--dns-refresh`: from 1s to a day.
fn parse_refresh(text: &str) -> Result<std::time::Duration, String> {
    let d: fulcrum_policy::Duration = text.parse().map_err(|e| format!("{e}"))?;
    match d.to_std() {
        Some(d) if (1..=86_400).contains(&d.as_secs()) => Ok(d),
        _ => Err(format!("{text}: must be from 1s to 24h")),
    }
}

/// `--health-check-path`: an absolute path, no spaces or control characters.
fn parse_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?}: must start with /"));
    }
    if text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{text:?}: spaces and control characters are not allowed"
        ));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bad flags are refused before anything starts, with the flag and the reason named.
    #[test]
    fn bad_flags_are_refused_naming_the_flag_and_the_reason() {
        let base = ["fulcrum-proxy", "--config", "mesh.yaml"];
        let parse = |extra: &[&str]| {
            let args = base.iter().chain(extra);
            Flags::try_parse_from(args).map_err(|e| e.to_string())
        };
        let good = parse(&["--cluster", "east-1", "--locality", "r1/z1"]).expect("good flags");
        assert_eq!(good.cluster, "east-1");
        for (extra, named, reason) in [
            (
                ["--cluster", "East 1", "--locality", "r1/z1"],
                "--cluster",
                "lowercase DNS-1123 label",
            ),
            (
                ["--cluster", "east", "--locality", "r1//z"],
                "--locality",
                "a part is empty",
            ),
            (
                ["--cluster", "east", "--idle-timeout", "5x"],
                "--idle-timeout",
                "unknown unit",
            ),
            (
                ["--cluster", "east", "--workers", "0"],
                "--workers",
                "not in 1..=1024",
            ),
        ] {
            let refused = parse(&extra).expect_err("refused");
            assert!(refused.contains(named), "{refused}");
            assert!(refused.contains(reason), "{refused}");
        }
    }
}
