//! `fulcrum-proxy`: one cluster's data plane. Today: the outbound listener routing with
//! VirtualService semantics to this cluster's endpoints, and the admin listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fulcrum_policy::Locality;
use fulcrum_proxy::app::{Proxy, ProxyConfig, load_config};

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
    /// Configuration: Istio and Fulcrum YAML or JSON, files or directories.
    #[arg(long, required = true)]
    config: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let paths: Vec<&std::path::Path> = flags.config.iter().map(PathBuf::as_path).collect();
    let config = match load_config(&paths) {
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
        };
        let proxy = match Proxy::start(settings, &config).await {
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
