//! `fulcrum-proxy`: one cluster's data plane. Today: the outbound listener routing with
//! VirtualService semantics to this cluster's endpoints, on snapshots from the
//! coordinators (or on a configuration file), and the admin listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fulcrum_policy::Locality;
use fulcrum_proxy::app::{Proxy, ProxyConfig, load_config};
use fulcrum_proxy::control::{ClientTls, ControlSettings};

/// Flags.
#[derive(Debug, Parser)]
#[command(name = "fulcrum-proxy", version, about = "Fulcrum's per-cluster proxy")]
struct Flags {
    /// This proxy's cluster (a MeshCluster name); endpoints labelled
    /// topology.istio.io/cluster with it are the ones it forwards to.
    #[arg(long)]
    cluster: String,
    /// This proxy's locality, region/zone/subzone.
    #[arg(long)]
    locality: Locality,
    /// Where applications send requests (HTTP/1.1 and h2c), Host naming the service.
    #[arg(long, default_value = "127.0.0.1:15001")]
    listen: SocketAddr,
    /// Admin listener: /ready, /config_dump, /metrics.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Configuration: Istio and Fulcrum YAML or JSON, files or directories. With
    /// coordinators, used only until the first snapshot when there is no last-known-good.
    #[arg(long, required_unless_present = "coordinators")]
    config: Vec<PathBuf>,
    /// Coordinators to subscribe to, host:port, comma separated; any one will do.
    #[arg(long, value_delimiter = ',')]
    coordinators: Vec<String>,
    /// Where the last-known-good snapshot is kept (required with --coordinators).
    #[arg(long, requires = "coordinators")]
    state_dir: Option<PathBuf>,
    /// Certificates from `fulcrumctl certs init`: ca.pem, proxy-CLUSTER.pem and its key.
    #[arg(long, conflicts_with = "insecure_dev")]
    certs: Option<PathBuf>,
    /// Talk to coordinators in plaintext (they must run with --insecure-dev too).
    #[arg(long)]
    insecure_dev: bool,
    /// This proxy's id among its cluster's proxies (default: CLUSTER-PID).
    #[arg(long)]
    proxy_id: Option<String>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let paths: Vec<&std::path::Path> = flags.config.iter().map(PathBuf::as_path).collect();
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        };
        let proxy = match Proxy::start(settings, config.as_ref()).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("fulcrum-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let _ = tokio::signal::ctrl_c().await;
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
