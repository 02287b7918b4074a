//! The harness: a local mesh of real processes on loopback — coordinators, one proxy per
//! cluster, test backends — with certificates from `fulcrumctl certs init` and data in a
//! temporary directory. Each cluster gets its own 127.0.N.1 address; ports are chosen
//! free. Faults are done to processes with real signals (`kill -9`, SIGSTOP/SIGCONT) and
//! to backends through their knobs.
//!
//! Every process the harness starts is killed and reaped when its [`Process`] drops, which
//! happens when the [`Mesh`] drops: also when a test fails or panics.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::backend::{KNOBS_PATH, Knobs};
use crate::drill::{Action, Applied, ExplainedRow, Fault, Target};
use crate::relay::{LinkState, Relay};

/// A proxy's weight row for the drills' service: its snapshot version and (destination
/// locality, basis points) per destination.
pub type Row = (u64, Vec<(String, u32)>);

/// The service every drill sends traffic to.
pub const SERVICE: &str = "checkout.drill";

/// Why the harness could not do something.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary is missing and could not be built.
    #[error("{0}")]
    Binaries(String),
    /// A process did not start.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// Which.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// Setting up files.
    #[error("{0}")]
    Setup(String),
    /// Something did not happen in time.
    #[error("{what} did not happen within {within:?}; logs are in {logs}\n{detail}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        within: Duration,
        /// Where the processes' logs are.
        logs: String,
        /// What was still missing, with the ends of the logs that matter.
        detail: String,
    },
    /// A process the mesh needs ended.
    #[error("{name} exited ({status}); the end of its log:\n{tail}")]
    Exited {
        /// Which.
        name: String,
        /// How.
        status: std::process::ExitStatus,
        /// The last lines of its log.
        tail: String,
    },
}

/// The built binaries the mesh runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `fulcrum-coordinator`.
    pub coordinator: PathBuf,
    /// `fulcrum-proxy`.
    pub proxy: PathBuf,
    /// `fulcrumctl`.
    pub ctl: PathBuf,
    /// `fulcrum-drill` (the test backend runs as `fulcrum-drill backend`).
    pub drill: PathBuf,
}

/// Whether `name` is one of the variables `cargo run` and `cargo test` set for the
/// package they run (its manifest's directory, its name, version, ...). They must not
/// reach the cargo that builds the mesh: a build script that asks to be rerun when one of
/// them changes (ring's does, for `CARGO_MANIFEST_DIR`) would see it set there and unset
/// in the user's own `cargo run`, and each would rebuild ring and everything above it,
/// several minutes for the release binaries.
fn set_for_the_running_package(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || name.starts_with("CARGO_BIN_")
        || matches!(
            name,
            "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
        )
}

const BINARIES: [&str; 4] = [
    "fulcrum-coordinator",
    "fulcrum-proxy",
    "fulcrumctl",
    "fulcrum-drill",
];

impl Binaries {
    /// The binaries in the same target directory as the running executable (a test's
    /// `deps/` parent, or `fulcrum-drill`'s own directory). With `build`, or when one is
    /// missing, they are built first with cargo, in the same profile.
    pub fn locate(build: bool) -> Result<Binaries, HarnessError> {
        let exe = std::env::current_exe()
            .map_err(|e| HarnessError::Binaries(format!("where am I: {e}")))?;
        let mut dir = exe
            .parent()
            .ok_or_else(|| HarnessError::Binaries("the executable has no directory".into()))?
            .to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let path = |name: &str| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        let missing = BINARIES.iter().any(|b| !path(b).exists());
        if build || missing {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let mut command = Command::new(&cargo);
            command.current_dir(&workspace).args(["build", "--quiet"]);
            for (name, _) in std::env::vars_os() {
                if name.to_str().is_some_and(set_for_the_running_package) {
                    command.env_remove(&name);
                }
            }
            if dir.file_name().is_some_and(|n| n == "release") {
                command.arg("--release");
            }
            for b in BINARIES {
                command.args(["--bin", b]);
            }
            let status = command.status().map_err(|e| {
                HarnessError::Binaries(format!("cannot run {cargo} to build the mesh: {e}"))
            })?;
            if !status.success() {
                return Err(HarnessError::Binaries(format!(
                    "building {} failed ({status})",
                    BINARIES.join(", ")
                )));
            }
        }
        for b in BINARIES {
            if !path(b).exists() {
                return Err(HarnessError::Binaries(format!(
                    "{} is missing after the build",
                    path(b).display()
                )));
            }
        }
        Ok(Binaries {
            coordinator: path("fulcrum-coordinator"),
            proxy: path("fulcrum-proxy"),
            ctl: path("fulcrumctl"),
            drill: path("fulcrum-drill"),
        })
    }
}

/// A process the harness started, killed when dropped.
#[derive(Debug)]
pub struct Process {
    /// Its name in logs and reports.
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// A process to run, not started yet.
    fn new(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Process {
        Process {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            log,
            child: None,
        }
    }

    /// Starts it (again), appending to its log.
    pub fn start(&mut self) -> Result<(), HarnessError> {
        if self.child.is_some() {
            return Ok(());
        }
        let spawn_error = |source| HarnessError::Spawn {
            name: self.name.clone(),
            source,
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(spawn_error)?;
        let err = log.try_clone().map_err(spawn_error)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(spawn_error)?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) with `kill(1)`.
    pub fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        let Some(pid) = self.pid() else {
            return Err(HarnessError::Setup(format!("{} is not running", self.name)));
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| HarnessError::Setup(format!("kill -{signal} {pid}: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Setup(format!(
                "kill -{signal} {pid}: {status}"
            )))
        }
    }

    /// Its process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the harness started it and has not killed it.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How it ended, when it ended on its own (not killed by the harness).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log, each indented, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let mut tail = format!("  --- {} ({}) ---\n", self.name, self.log.display());
        for line in &all[all.len().saturating_sub(lines)..] {
            tail.push_str("  ");
            tail.push_str(line);
            tail.push('\n');
        }
        tail
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (SIGSTOP) process too.
        self.kill();
    }
}

/// One cluster of the mesh.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Its name.
    pub name: String,
    /// Its locality.
    pub locality: String,
    /// Its loopback address.
    pub ip: Ipv4Addr,
}

/// The shape of a mesh.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// The clusters.
    pub clusters: Vec<ClusterSpec>,
    /// Coordinator nodes.
    pub coordinators: usize,
    /// Test backends per cluster.
    pub backends_per_cluster: usize,
    /// Extra FailoverPolicy damping for the service (YAML under `spec.damping`), or
    /// empty for the defaults.
    pub damping: String,
}

impl MeshSpec {
    /// The local three-cluster mesh of `deploy/local/`: us-east, us-central, eu-west.
    pub fn local() -> MeshSpec {
        let cluster = |name: &str, locality: &str, n: u8| ClusterSpec {
            name: name.into(),
            locality: locality.into(),
            ip: Ipv4Addr::new(127, 0, n, 1),
        };
        MeshSpec {
            clusters: vec![
                cluster("us-east", "us-east/us-east-1a", 1),
                cluster("us-central", "us-central/us-central-1a", 2),
                cluster("eu-west", "eu-west/eu-west-1a", 3),
            ],
            coordinators: 3,
            backends_per_cluster: 2,
            damping: String::new(),
        }
    }

    /// The index of the cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| c.name == name)
    }
}

/// Ports for the mesh's processes, held (bound, not listening for anyone) until every
/// process is about to start: a port handed out stays out of the kernel's choice for
/// the next `bind(0)` (another reservation, a fault relay), so no two parts of the mesh
/// can be given the same port.
#[derive(Default)]
struct Ports(Vec<TcpListener>);

impl Ports {
    /// A free port at `ip`, kept until [`Ports::release`].
    fn reserve(&mut self, ip: Ipv4Addr) -> Result<SocketAddr, HarnessError> {
        let listener = TcpListener::bind((ip, 0))
            .map_err(|e| HarnessError::Setup(format!("no free port on {ip}: {e}")))?;
        let address = listener
            .local_addr()
            .map_err(|e| HarnessError::Setup(format!("no free port on {ip}: {e}")))?;
        self.0.push(listener);
        Ok(address)
    }

    /// Frees every reserved port for the processes that are about to bind them.
    fn release(self) {}
}

/// The loopback address coordinator `index` (0-based) listens on, and calls the other
/// nodes from: one of its own, so that a fault relay can tell its calls apart from the
/// others' (a two-way partition). Not 127.0.0.1: that is every other loopback
/// connection's source address, so a port there can be taken, while a coordinator is
/// down, by a client's own ephemeral port (a connection retried against a dead port in
/// the ephemeral range can even connect to itself), and the coordinator could not bind
/// it again.
fn coordinator_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(index).unwrap_or(u8::MAX - 2))
}

/// A coordinator's pre-votes so far, from its metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreVotes {
    /// Rounds a majority granted (`fulcrum_coordinator_raft_pre_votes_won_total`).
    pub won: f64,
    /// Rounds it did not (`fulcrum_coordinator_raft_pre_votes_lost_total`).
    pub lost: f64,
}

/// A coordinator cut off by a partitioning action, and its pre-votes once cut off and
/// when the links were healed: what it did while it was, apart from any election before
/// (a leader held up by a slow disk, say).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partitioned {
    /// Its node id.
    pub node: u64,
    /// Read just after it was cut off (none if its metrics did not answer).
    pub at_cut: Option<PreVotes>,
    /// Read just before the links were healed.
    pub at_heal: Option<PreVotes>,
}

/// A coordinator node.
#[derive(Debug)]
pub struct CoordinatorNode {
    /// Its node id.
    pub id: u64,
    /// Its gRPC address.
    pub address: SocketAddr,
    /// Where it serves its Prometheus metrics.
    pub metrics: SocketAddr,
    /// The process.
    pub process: Process,
}

/// A cluster's proxy.
#[derive(Debug)]
pub struct ProxyNode {
    /// Its cluster's index in the spec.
    pub cluster: usize,
    /// Where applications send requests.
    pub outbound: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
    /// Its east-west listener.
    pub east_west: SocketAddr,
    /// The process.
    pub process: Process,
}

/// A test backend.
#[derive(Debug)]
pub struct BackendNode {
    /// Its cluster's index in the spec.
    pub cluster: usize,
    /// Its name.
    pub name: String,
    /// Where it serves.
    pub address: SocketAddr,
    /// Where its knobs are.
    pub control: SocketAddr,
    /// The process.
    pub process: Process,
}

/// The fault relays on the mesh's links.
#[derive(Debug, Default)]
pub struct Links {
    /// Into each coordinator: Raft and API traffic from the other nodes (the member
    /// list names these), by node index.
    pub coordinator_in: Vec<Relay>,
    /// Each proxy's sessions with each coordinator, `[proxy][node index]`.
    pub proxy_to_coordinator: Vec<Vec<Relay>>,
    /// Into each cluster's east-west listener (its MeshCluster gateway), by cluster.
    pub gateway_in: Vec<Relay>,
}

impl Links {
    /// Partitions coordinator `node` (1-based) away, both ways: what reaches it from the
    /// other nodes and from every proxy is swallowed, and so is what it sends the other
    /// nodes (each relay into another node swallows what comes from its address).
    pub fn partition(&self, node: u64) {
        self.deafen(node);
        let i = usize::try_from(node.saturating_sub(1)).unwrap_or(usize::MAX);
        let from = self.coordinator_in.get(i).map(|r| r.address().ip());
        for (j, r) in self.coordinator_in.iter().enumerate() {
            if j != i {
                r.swallow_from(from);
            }
        }
    }

    /// Makes coordinator `node` (1-based) deaf: what reaches it from the other nodes and
    /// from every proxy is swallowed, nothing comes back; its own calls to the other
    /// nodes still pass, and are answered.
    pub fn deafen(&self, node: u64) {
        let i = usize::try_from(node.saturating_sub(1)).unwrap_or(usize::MAX);
        if let Some(r) = self.coordinator_in.get(i) {
            r.set(LinkState::Blackhole);
        }
        for links in &self.proxy_to_coordinator {
            if let Some(r) = links.get(i) {
                r.set(LinkState::Blackhole);
            }
        }
    }

    /// Cuts coordinator `node` (1-based) off from the other nodes only: what they send
    /// it is swallowed; the proxies still reach it.
    pub fn isolate(&self, node: u64) {
        let i = usize::try_from(node.saturating_sub(1)).unwrap_or(usize::MAX);
        if let Some(r) = self.coordinator_in.get(i) {
            r.set(LinkState::Blackhole);
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        let all = self
            .coordinator_in
            .iter()
            .chain(self.proxy_to_coordinator.iter().flatten())
            .chain(&self.gateway_in);
        for r in all {
            r.set(LinkState::Pass);
            r.swallow_from(None);
        }
    }
}

/// A running mesh.
pub struct Mesh {
    /// Its shape.
    pub spec: MeshSpec,
    /// The coordinators.
    pub coordinators: Vec<CoordinatorNode>,
    /// One proxy per cluster, in the spec's order.
    pub proxies: Vec<ProxyNode>,
    /// The backends.
    pub backends: Vec<BackendNode>,
    /// The fault relays on its links.
    pub links: Links,
    /// The coordinator the last partitioning action cut off, if any, with its pre-vote
    /// counts while it was.
    pub partitioned: Option<Partitioned>,
    /// Where everything is kept.
    pub dir: PathBuf,
    bins: Binaries,
    http: Client<HttpConnector, Full<Bytes>>,
    // Last: the directory goes after the processes that write to it.
    temp: Option<tempfile::TempDir>,
}

impl Drop for Mesh {
    /// A mesh dropped while its test fails keeps its directory, logs and all, and says
    /// where: a drill that fails once in many runs cannot be asked again.
    fn drop(&mut self) {
        if std::thread::panicking() && self.temp.is_some() {
            self.keep_files();
            eprintln!("the failed mesh's files are kept in {}", self.dir.display());
        }
    }
}

/// The drill service's policies (DestinationRule, VirtualService, FailoverPolicy last).
const POLICIES: &str = include_str!("../../deploy/local/drill/checkout.yaml");

/// The mesh configuration the coordinators are given: a MeshCluster per cluster with its
/// east-west `gateways`, the [`SERVICE`]'s ServiceEntry with the `backends` (cluster
/// index, address) as endpoints, and its policies from `deploy/local/drill/checkout.yaml`
/// with the spec's damping.
pub fn mesh_yaml(
    spec: &MeshSpec,
    gateways: &[SocketAddr],
    backends: &[(usize, SocketAddr)],
) -> String {
    let mut y = String::new();
    for (c, gw) in spec.clusters.iter().zip(gateways) {
        y += &format!(
            "apiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {{name: {}}}\nspec:\n  locality: {}\n  network: net-{}\n  eastWestGateways: [{{address: {}, port: {}}}]\n---\n",
            c.name,
            c.locality,
            c.name,
            gw.ip(),
            gw.port()
        );
    }
    y += &format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: checkout, namespace: drill}}\nspec:\n  hosts: [{SERVICE}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n"
    );
    for (cluster, address) in backends {
        let c = &spec.clusters[*cluster];
        y += &format!(
            "  - {{address: {}, ports: {{http: {}}}, locality: {}, labels: {{topology.istio.io/cluster: {}}}}}\n",
            address.ip(),
            address.port(),
            c.locality,
            c.name
        );
    }
    y += "---\n";
    y += POLICIES;
    if !spec.damping.is_empty() {
        y += &format!("  damping:\n{}\n", spec.damping);
    }
    y
}

impl Mesh {
    /// Starts the mesh in a new temporary directory, or in `dir` when given (kept).
    pub async fn start(
        spec: MeshSpec,
        bins: Binaries,
        dir: Option<PathBuf>,
    ) -> Result<Mesh, HarnessError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| HarnessError::Setup(format!("{what}: {e}"));
        let (temp, dir) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d).map_err(|e| setup("mesh directory", &e))?;
                (None, d)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("fulcrum-mesh.")
                    .tempdir()
                    .map_err(|e| setup("temporary directory", &e))?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let logs = dir.join("logs");
        let config = dir.join("config");
        let certs = dir.join("certs");
        for d in [&logs, &config] {
            std::fs::create_dir_all(d).map_err(|e| setup("mesh directory", &e))?;
        }
        let names: Vec<&str> = spec.clusters.iter().map(|c| c.name.as_str()).collect();
        let status = Command::new(&bins.ctl)
            .args(["certs", "init", "--trust-domain", "drill.local", "--out"])
            .arg(&certs)
            .args(["--coordinators", &spec.coordinators.to_string()])
            .args(["--clusters", &names.join(","), "--admins", "drill"])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| setup("fulcrumctl certs init", &e))?;
        if !status.success() {
            return Err(HarnessError::Setup(format!(
                "fulcrumctl certs init: {status}"
            )));
        }
        let http = Client::builder(TokioExecutor::new()).build_http();
        let mut mesh = Mesh {
            spec: spec.clone(),
            coordinators: Vec::new(),
            proxies: Vec::new(),
            backends: Vec::new(),
            links: Links::default(),
            partitioned: None,
            dir: dir.clone(),
            bins: bins.clone(),
            http,
            temp,
        };
        // Every address first, held until the processes start; backends first: the
        // configuration names them.
        let mut ports = Ports::default();
        let mut endpoints = Vec::new();
        for (ci, c) in spec.clusters.iter().enumerate() {
            for n in 1..=spec.backends_per_cluster {
                let (address, control) = (ports.reserve(c.ip)?, ports.reserve(c.ip)?);
                let name = format!("{}-{n}", c.name);
                let process = Process::new(
                    &format!("backend {name}"),
                    &bins.drill,
                    vec![
                        "backend".into(),
                        "--listen".into(),
                        address.to_string(),
                        "--control".into(),
                        control.to_string(),
                        "--cluster".into(),
                        c.name.clone(),
                        "--name".into(),
                        name.clone(),
                    ],
                    logs.join(format!("backend-{name}.log")),
                );
                endpoints.push((ci, address));
                mesh.backends.push(BackendNode {
                    cluster: ci,
                    name,
                    address,
                    control,
                    process,
                });
            }
        }
        let addresses: Vec<SocketAddr> = (0..spec.coordinators)
            .map(|i| ports.reserve(coordinator_ip(i)))
            .collect::<Result<_, _>>()?;
        let relay_error = |e: std::io::Error| setup("fault relay", &e);
        // The other nodes reach each coordinator through its relay.
        for (i, a) in addresses.iter().enumerate() {
            let name = format!("into coordinator {}", i + 1);
            let relay = Relay::start(&name, a.ip(), *a).await.map_err(relay_error)?;
            mesh.links.coordinator_in.push(relay);
        }
        let members: Vec<String> = mesh
            .links
            .coordinator_in
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{}={}", i + 1, r.address()))
            .collect();
        let east_west: Vec<SocketAddr> = spec
            .clusters
            .iter()
            .map(|c| ports.reserve(c.ip))
            .collect::<Result<_, _>>()?;
        for (c, listener) in spec.clusters.iter().zip(&east_west) {
            let name = format!("into {}'s gateway", c.name);
            let relay = Relay::start(&name, c.ip.into(), *listener)
                .await
                .map_err(relay_error)?;
            mesh.links.gateway_in.push(relay);
        }
        let gateways: Vec<SocketAddr> = mesh.links.gateway_in.iter().map(Relay::address).collect();
        std::fs::write(
            config.join("mesh.yaml"),
            mesh_yaml(&spec, &gateways, &endpoints),
        )
        .map_err(|e| setup("mesh.yaml", &e))?;
        for (i, address) in addresses.iter().enumerate() {
            let id = i as u64 + 1;
            let metrics = ports.reserve(coordinator_ip(i))?;
            let mut args = vec![
                "--node-id".to_string(),
                id.to_string(),
                "--listen".into(),
                address.to_string(),
                "--data-dir".into(),
                dir.join(format!("coordinator-{id}")).display().to_string(),
                "--certs".into(),
                certs.display().to_string(),
                "--members".into(),
                members.join(","),
                "--metrics".into(),
                metrics.to_string(),
            ];
            // Every node watches the directory; the leader applies it.
            args.extend(["--config-dir".into(), config.display().to_string()]);
            let process = Process::new(
                &format!("coordinator {id}"),
                &bins.coordinator,
                args,
                logs.join(format!("coordinator-{id}.log")),
            );
            mesh.coordinators.push(CoordinatorNode {
                id,
                address: *address,
                metrics,
                process,
            });
        }
        for (ci, c) in spec.clusters.iter().enumerate() {
            let mut links = Vec::new();
            for (i, a) in addresses.iter().enumerate() {
                let name = format!("proxy {} to coordinator {}", c.name, i + 1);
                links.push(
                    Relay::start(&name, c.ip.into(), *a)
                        .await
                        .map_err(relay_error)?,
                );
            }
            // Each proxy starts with a different coordinator (us-east with node 1,
            // us-central with node 2, ...), so the sessions spread over the group.
            let mut coordinators: Vec<String> =
                links.iter().map(|r| r.address().to_string()).collect();
            coordinators.rotate_left(ci % addresses.len().max(1));
            mesh.links.proxy_to_coordinator.push(links);
            let (outbound, admin) = (ports.reserve(c.ip)?, ports.reserve(c.ip)?);
            let east_west = east_west[ci];
            let process = Process::new(
                &format!("proxy {}", c.name),
                &bins.proxy,
                vec![
                    "--cluster".into(),
                    c.name.clone(),
                    "--locality".into(),
                    c.locality.clone(),
                    "--listen".into(),
                    outbound.to_string(),
                    "--admin".into(),
                    admin.to_string(),
                    "--east-west".into(),
                    east_west.to_string(),
                    "--coordinators".into(),
                    coordinators.join(","),
                    "--state-dir".into(),
                    dir.join(format!("proxy-{}", c.name)).display().to_string(),
                    "--certs".into(),
                    certs.display().to_string(),
                    "--proxy-id".into(),
                    format!("{}-1", c.name),
                    "--health-check-interval".into(),
                    "500ms".into(),
                ],
                logs.join(format!("proxy-{}.log", c.name)),
            );
            mesh.proxies.push(ProxyNode {
                cluster: ci,
                outbound,
                admin,
                east_west,
                process,
            });
        }
        ports.release();
        let processes = (mesh.backends.iter_mut().map(|b| &mut b.process))
            .chain(mesh.coordinators.iter_mut().map(|c| &mut c.process))
            .chain(mesh.proxies.iter_mut().map(|p| &mut p.process));
        for process in processes {
            process.start()?;
        }
        Ok(mesh)
    }

    /// Where the processes' logs are.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Keeps the mesh's directory ([`Mesh::dir`]: certificates, data, logs) when the
    /// mesh is dropped, if it was a temporary one.
    pub fn keep_files(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = temp.keep();
        }
    }

    async fn get(&self, url: &str) -> Option<(StatusCode, String)> {
        let request = Request::get(url).body(Full::new(Bytes::new())).ok()?;
        let response = tokio::time::timeout(Duration::from_secs(2), self.http.request(request))
            .await
            .ok()?
            .ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A proxy's `/config_dump`, when it answers.
    pub async fn config_dump(&self, proxy: usize) -> Option<serde_json::Value> {
        let admin = self.proxies.get(proxy)?.admin;
        let (status, body) = self.get(&format!("http://{admin}/config_dump")).await?;
        if status != StatusCode::OK {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The weight row a proxy routes [`SERVICE`] with: (destination locality, basis
    /// points), and the snapshot version.
    pub async fn weights(&self, proxy: usize) -> Option<Row> {
        self.explained_weights(proxy).await.map(|(row, _)| row)
    }

    /// [`Mesh::weights`], with the coordinators' explanation of each destination.
    pub async fn explained_weights(&self, proxy: usize) -> Option<(Row, Vec<String>)> {
        let dump = self.config_dump(proxy).await?;
        let version = dump["version"].as_u64()?;
        let row = dump["weights"]
            .as_array()?
            .iter()
            .find(|r| r["service"] == SERVICE && r["subset"] == "")?;
        Some(explained_row(
            version,
            row["destinations"].as_array()?,
            "locality",
        ))
    }

    /// Waits until every proxy routes [`SERVICE`] on pushed weights and every backend
    /// answers. Fails early when a process of the mesh exits; on timeout, says what was
    /// missing with the ends of the logs that explain it.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            let mut missing = Vec::new();
            for p in 0..self.proxies.len() {
                if self.weights(p).await.is_none_or(|(_, w)| w.is_empty()) {
                    missing.push(p);
                }
            }
            let mut silent = Vec::new();
            for b in &self.backends {
                let url = format!("http://{}{KNOBS_PATH}", b.control);
                if self.get(&url).await.is_none() {
                    silent.push(b.process.name.clone());
                }
            }
            if missing.is_empty() && silent.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let mut detail = String::new();
                for &p in &missing {
                    detail.push_str(&format!(
                        "{} has no weights\n",
                        self.proxies[p].process.name
                    ));
                }
                for name in &silent {
                    detail.push_str(&format!("{name} does not answer\n"));
                }
                let logs = missing
                    .iter()
                    .map(|&p| &self.proxies[p].process)
                    .chain(self.coordinators.iter().map(|c| &c.process));
                for process in logs {
                    detail.push_str(&process.log_tail(12));
                }
                return Err(HarnessError::Timeout {
                    what: "the mesh becoming ready (every proxy with weights)".into(),
                    within,
                    logs: self.logs().display().to_string(),
                    detail,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An error naming the first process of the mesh that ended on its own.
    fn check_alive(&mut self) -> Result<(), HarnessError> {
        let processes = self
            .coordinators
            .iter_mut()
            .map(|c| &mut c.process)
            .chain(self.proxies.iter_mut().map(|p| &mut p.process))
            .chain(self.backends.iter_mut().map(|b| &mut b.process));
        for process in processes {
            if let Some(status) = process.exited() {
                return Err(HarnessError::Exited {
                    name: process.name.clone(),
                    status,
                    tail: process.log_tail(20),
                });
            }
        }
        Ok(())
    }

    /// Sets the knobs of every backend of `cluster`.
    pub async fn set_knobs(&self, cluster: usize, knobs: Knobs) -> Result<(), HarnessError> {
        for b in self.backends.iter().filter(|b| b.cluster == cluster) {
            let url = format!("http://{}{KNOBS_PATH}?{}", b.control, knobs.query());
            let request = Request::post(url)
                .body(Full::new(Bytes::new()))
                .map_err(|e| HarnessError::Setup(e.to_string()))?;
            let answered = tokio::time::timeout(Duration::from_secs(2), self.http.request(request))
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|r| r.status().is_success());
            if !answered {
                return Err(HarnessError::Setup(format!(
                    "backend {} took no knobs",
                    b.name
                )));
            }
        }
        Ok(())
    }

    /// `kill -9` every backend of `cluster`.
    pub fn kill_backends(&mut self, cluster: usize) {
        for b in self.backends.iter_mut().filter(|b| b.cluster == cluster) {
            b.process.kill();
        }
    }

    /// Starts the killed backends of `cluster` again.
    pub fn restart_backends(&mut self, cluster: usize) -> Result<(), HarnessError> {
        for b in self.backends.iter_mut().filter(|b| b.cluster == cluster) {
            b.process.start()?;
        }
        Ok(())
    }

    /// The leader's node id, as the first coordinator that answers `fulcrumctl status`
    /// says.
    pub fn leader(&self) -> Option<u64> {
        let addresses: Vec<SocketAddr> = self.coordinators.iter().map(|c| c.address).collect();
        ask_leader(&self.bins.ctl, &self.dir.join("certs"), &addresses)
    }

    /// The leader and its term, as the leader itself says (`fulcrumctl status`), once it
    /// answers (within `within`).
    pub async fn leader_and_term(&self, within: Duration) -> Option<(u64, u64)> {
        let leader = self.leader_within(within).await?;
        let address = self.coordinators.iter().find(|c| c.id == leader)?.address;
        let (ctl, certs) = (self.bins.ctl.clone(), self.dir.join("certs"));
        let status = tokio::task::spawn_blocking(move || ask_status(&ctl, &certs, address))
            .await
            .ok()??;
        let raft = &status["raft"];
        Some((raft["leaderId"].as_u64()?, raft["term"].as_u64()?))
    }

    /// Coordinator `node`'s Raft term, as it answers `fulcrumctl status` itself (within
    /// a second).
    pub async fn term_of(&self, node: u64) -> Option<u64> {
        let address = self.coordinators.iter().find(|c| c.id == node)?.address;
        let (ctl, certs) = (self.bins.ctl.clone(), self.dir.join("certs"));
        let status = tokio::task::spawn_blocking(move || ask_status(&ctl, &certs, address))
            .await
            .ok()??;
        status["raft"]["term"].as_u64()
    }

    /// The value of the series `name` (a counter's, with its `_total`) on coordinator
    /// `node`'s `/metrics`, when it answers and has it.
    pub async fn coordinator_metric(&self, node: u64, name: &str) -> Option<f64> {
        let address = self.coordinators.iter().find(|c| c.id == node)?.metrics;
        let (status, text) = self.get(&format!("http://{address}/metrics")).await?;
        if !status.is_success() {
            return None;
        }
        text.lines().find_map(|line| {
            let (series, value) = line.split_once(' ')?;
            (series == name).then(|| value.trim().parse().ok())?
        })
    }

    /// Coordinator `node`'s pre-votes so far ([`PreVotes`]), from its metrics.
    pub async fn pre_votes(&self, node: u64) -> Option<PreVotes> {
        let won = self.coordinator_metric(node, "fulcrum_coordinator_raft_pre_votes_won_total");
        let lost = self.coordinator_metric(node, "fulcrum_coordinator_raft_pre_votes_lost_total");
        Some(PreVotes {
            won: won.await?,
            lost: lost.await?,
        })
    }

    /// Notes that `node` was cut off just now, with its pre-votes so far.
    async fn cut_off(&mut self, node: u64) {
        let at_cut = self.pre_votes(node).await;
        self.partitioned = Some(Partitioned {
            node,
            at_cut,
            at_heal: None,
        });
    }

    /// A coordinator that is not the leader, once a leader is known (within 5 s):
    /// without one, the node picked could be it.
    async fn a_follower(&self) -> Option<u64> {
        let leader = self.leader_within(Duration::from_secs(5)).await?;
        (self.coordinators.iter())
            .map(|c| c.id)
            .find(|id| *id != leader)
    }

    /// [`Mesh::leader`], asked again until a coordinator names one or `within` has
    /// passed (an election, or coordinators slow to answer on a loaded machine), without
    /// holding up the runtime's threads.
    pub async fn leader_within(&self, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        let ctl = self.bins.ctl.clone();
        let certs = self.dir.join("certs");
        let addresses: Vec<SocketAddr> = self.coordinators.iter().map(|c| c.address).collect();
        loop {
            let (ctl, certs, addresses) = (ctl.clone(), certs.clone(), addresses.clone());
            let asked =
                tokio::task::spawn_blocking(move || ask_leader(&ctl, &certs, &addresses)).await;
            if let Ok(Some(leader)) = asked {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The leader's node id as the first of `coordinators` that answers `fulcrumctl status`
/// within a second says.
fn ask_leader(ctl: &Path, certs: &Path, coordinators: &[SocketAddr]) -> Option<u64> {
    coordinators.iter().find_map(|address| {
        let status = ask_status(ctl, certs, *address)?;
        status["raft"]["leaderId"].as_u64().filter(|l| *l != 0)
    })
}

/// `fulcrumctl status -o json` of the coordinator at `address`, when it answers within a
/// second.
fn ask_status(ctl: &Path, certs: &Path, address: SocketAddr) -> Option<serde_json::Value> {
    let output = Command::new(ctl)
        .args(["status", "-o", "json", "--timeout", "1", "--coordinator"])
        .arg(address.to_string())
        .env("FULCRUM_CERTS", certs)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// A weight row from JSON (a proxy's `/config_dump`, `fulcrumctl explain -o json`): each
/// destination's locality (under `locality_key`), basis points (`weightBp`) and
/// explanation.
pub(crate) fn explained_row(
    version: u64,
    destinations: &[serde_json::Value],
    locality_key: &str,
) -> ExplainedRow {
    let weights = destinations
        .iter()
        .filter_map(|d| {
            Some((
                d[locality_key].as_str()?.to_string(),
                u32::try_from(d["weightBp"].as_u64()?).ok()?,
            ))
        })
        .collect();
    let explanations = destinations
        .iter()
        .map(|d| d["explanation"].as_str().unwrap_or_default().to_string())
        .collect();
    ((version, weights), explanations)
}

impl Mesh {
    /// The process ids of every process it runs now (coordinators, proxies, backends).
    pub fn pids(&self) -> Vec<u32> {
        let coordinators = self.coordinators.iter().map(|c| &c.process);
        let proxies = self.proxies.iter().map(|p| &p.process);
        let backends = self.backends.iter().map(|b| &b.process);
        coordinators
            .chain(proxies)
            .chain(backends)
            .filter_map(Process::pid)
            .collect()
    }

    /// Runs `fulcrumctl ARGS` as the mesh's admin against each coordinator in turn until
    /// one succeeds; the last failure's output otherwise.
    pub fn ctl(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut failure = String::from("no coordinator");
        for c in &self.coordinators {
            let output = Command::new(&self.bins.ctl)
                .args(args)
                .args(["--timeout", "2", "--coordinator"])
                .arg(c.address.to_string())
                .env("FULCRUM_CERTS", self.dir.join("certs"))
                .output()
                .map_err(|source| HarnessError::Spawn {
                    name: "fulcrumctl".into(),
                    source,
                })?;
            if output.status.success() {
                return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
            }
            failure = String::from_utf8_lossy(&output.stderr).trim().to_string();
        }
        Err(HarnessError::Setup(format!(
            "fulcrumctl {}: {failure}",
            args.join(" ")
        )))
    }
}

impl Target for Mesh {
    fn clusters(&self) -> Vec<(String, String)> {
        self.spec
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.locality.clone()))
            .collect()
    }

    fn service(&self) -> String {
        SERVICE.to_string()
    }

    fn traffic(&self) -> Vec<(u8, SocketAddr)> {
        self.proxies
            .iter()
            .map(|p| (u8::try_from(p.cluster).unwrap_or(u8::MAX), p.outbound))
            .collect()
    }

    async fn rows(&self) -> Vec<Option<ExplainedRow>> {
        let mut rows = Vec::new();
        for p in 0..self.proxies.len() {
            rows.push(self.explained_weights(p).await);
        }
        rows
    }

    async fn config_lost(&self) -> Vec<String> {
        let mut lost = Vec::new();
        for p in &self.proxies {
            let has = self.config_dump(p.cluster).await.is_some_and(|d| {
                d["services"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s == SERVICE))
            });
            if !has {
                lost.push(self.spec.clusters[p.cluster].name.clone());
            }
        }
        lost
    }

    async fn inject(&mut self, fault: &Fault) -> Result<Applied, HarnessError> {
        if let Some(knobs) = fault.knobs() {
            self.set_knobs(fault.cluster(), knobs).await?;
            return Ok(Applied::Done);
        }
        let name = self.spec.clusters[fault.cluster()].name.clone();
        match fault {
            Fault::KillBackends { cluster } => self.kill_backends(*cluster),
            Fault::Drain { .. } => {
                self.ctl(&[
                    "drain",
                    &name,
                    "--service",
                    SERVICE,
                    "--reason",
                    "fulcrum-drill",
                ])?;
            }
            _ => {}
        }
        Ok(Applied::Done)
    }

    async fn recover(&mut self, fault: &Fault) -> Result<Applied, HarnessError> {
        if fault.knobs().is_some() {
            self.set_knobs(fault.cluster(), Knobs::default()).await?;
            return Ok(Applied::Done);
        }
        let name = self.spec.clusters[fault.cluster()].name.clone();
        match fault {
            Fault::KillBackends { cluster } => self.restart_backends(*cluster)?,
            Fault::Drain { .. } => {
                self.ctl(&["undrain", &name, "--service", SERVICE])?;
            }
            _ => {}
        }
        Ok(Applied::Done)
    }

    async fn act(&mut self, action: &Action) -> Applied {
        match action {
            Action::KillLeader => {
                let Some(leader) = self.leader_within(Duration::from_secs(5)).await else {
                    return Applied::Skipped("no coordinator named a leader within 5s".into());
                };
                if let Some(c) = self.coordinators.iter_mut().find(|c| c.id == leader) {
                    tracing::info!(node = leader, "killing the leader");
                    c.process.kill();
                }
            }
            Action::KillCoordinators { count } => {
                let leader = self.leader_within(Duration::from_secs(5)).await;
                let mut order: Vec<usize> = (0..self.coordinators.len()).collect();
                order.sort_by_key(|&i| Some(self.coordinators[i].id) != leader);
                for i in order.into_iter().take(*count) {
                    self.coordinators[i].process.kill();
                }
            }
            Action::RestartCoordinators => {
                for c in &mut self.coordinators {
                    if let Err(e) = c.process.start() {
                        tracing::warn!("{e}");
                    }
                }
            }
            Action::RestartProxy { cluster } => {
                if let Some(p) = self.proxies.iter_mut().find(|p| p.cluster == *cluster) {
                    p.process.kill();
                    if let Err(e) = p.process.start() {
                        tracing::warn!("{e}");
                    }
                }
            }
            Action::PauseCoordinator { node } | Action::ResumeCoordinator { node } => {
                let signal = if matches!(action, Action::PauseCoordinator { .. }) {
                    "STOP"
                } else {
                    "CONT"
                };
                if let Some(c) = self.coordinators.iter().find(|c| c.id == *node)
                    && let Err(e) = c.process.signal(signal)
                {
                    tracing::warn!("{e}");
                }
            }
            Action::Partition { node } => {
                self.links.partition(*node);
                self.cut_off(*node).await;
            }
            Action::PartitionFollower => match self.a_follower().await {
                Some(node) => {
                    tracing::info!(node, "partitioning away a follower");
                    self.links.partition(node);
                    self.cut_off(node).await;
                }
                None => tracing::warn!("no leader known: no follower partitioned"),
            },
            Action::IsolateFollower => match self.a_follower().await {
                Some(node) => {
                    tracing::info!(node, "cutting a follower off from its peers");
                    self.links.isolate(node);
                }
                None => tracing::warn!("no leader known: no follower cut off"),
            },
            Action::PartitionLeader => match self.leader_within(Duration::from_secs(5)).await {
                Some(leader) => {
                    tracing::info!(node = leader, "making the leader deaf");
                    self.links.deafen(leader);
                    self.cut_off(leader).await;
                }
                None => tracing::warn!("no leader known: nothing partitioned"),
            },
            Action::Heal => {
                if let Some(cut) = self.partitioned
                    && cut.at_heal.is_none()
                {
                    let at_heal = self.pre_votes(cut.node).await;
                    self.partitioned = Some(Partitioned { at_heal, ..cut });
                }
                self.links.heal();
            }
            Action::SetErrorRate { cluster, rate } => {
                let knobs = Knobs {
                    error_rate: *rate,
                    ..Knobs::default()
                };
                if let Err(e) = self.set_knobs(*cluster, knobs).await {
                    tracing::warn!("{e}");
                }
            }
        }
        Applied::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_policy::{ConfigSet, Resource};

    #[test]
    fn the_local_mesh_is_the_sample_meshs_clusters() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/config");
        let mut config = ConfigSet::new();
        config.add_path(&dir.join("clusters.yaml"));
        assert!(!config.has_errors());
        let mut sample: Vec<(String, String)> = config
            .resources()
            .filter_map(|r| match r {
                Resource::MeshCluster(o) => Some((
                    o.spec.name(&o.metadata.name).to_string(),
                    o.spec.locality.to_string(),
                )),
                _ => None,
            })
            .collect();
        let mut local: Vec<(String, String)> = MeshSpec::local()
            .clusters
            .into_iter()
            .map(|c| (c.name, c.locality))
            .collect();
        sample.sort();
        local.sort();
        assert_eq!(local, sample);
    }

    #[test]
    fn the_drill_mesh_configuration_is_valid_with_and_without_damping() {
        let mut spec = MeshSpec::local();
        let gateways: Vec<SocketAddr> = (1..=3)
            .map(|n| SocketAddr::from(([127, 0, n, 1], 15443)))
            .collect();
        let backends: Vec<(usize, SocketAddr)> = (0..3)
            .map(|c| (c, SocketAddr::from(([127, 0, c as u8 + 1, 1], 18000))))
            .collect();
        for damping in ["", "    recoverAfter: 3s\n    rampStep: 50%"] {
            spec.damping = damping.into();
            let mut config = ConfigSet::new();
            config.add_text("drill mesh", &mesh_yaml(&spec, &gateways, &backends));
            let errors: Vec<String> = config.diagnostics().map(|d| d.to_string()).collect();
            assert!(!config.has_errors(), "{errors:?}");
            let policy = config
                .resources()
                .find_map(|r| match r {
                    Resource::FailoverPolicy(o) => Some(o.spec.clone()),
                    _ => None,
                })
                .expect("the FailoverPolicy");
            assert_eq!(policy.damping.is_some(), !damping.is_empty());
            let kinds = config.resources().count();
            assert_eq!(kinds, 3 + 1 + 3, "3 clusters, a ServiceEntry, 3 policies");
        }
    }

    #[test]
    fn a_process_that_ends_on_its_own_is_told_with_the_end_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let script = (1..=30)
            .map(|n| format!("echo line {n}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut p = Process::new(
            "short-lived",
            Path::new("sh"),
            vec!["-c".into(), format!("{script}; exit 3")],
            dir.path().join("short-lived.log"),
        );
        assert!(!p.is_running() && p.exited().is_none(), "not started yet");
        p.start().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = p.exited() {
                break status;
            }
            assert!(Instant::now() < deadline, "sh did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(3));
        let tail = p.log_tail(12);
        assert!(
            tail.contains("short-lived") && tail.contains("line 30"),
            "{tail}"
        );
        assert!(
            tail.contains("line 19") && !tail.contains("line 18\n"),
            "{tail}"
        );
    }

    #[test]
    fn reserved_ports_are_never_handed_out_twice() {
        let mut ports = Ports::default();
        let ip = Ipv4Addr::LOCALHOST;
        let taken: Vec<SocketAddr> = (0..50).map(|_| ports.reserve(ip).unwrap()).collect();
        let mut unique = taken.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), taken.len());
        // Held until released: nothing else can bind them meanwhile.
        assert!(TcpListener::bind(taken[0]).is_err());
        ports.release();
        // Then free. A child another test in this process is spawning holds copies of
        // every descriptor from its fork until its exec closes them (close-on-exec), so
        // the port may stay busy for that moment: bindable within a second is the
        // property, not at once.
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Err(e) = TcpListener::bind(taken[0]) {
            assert!(Instant::now() < deadline, "{} still taken: {e}", taken[0]);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_running_package_s_variables_are_kept_from_the_mesh_build() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "OUT_DIR",
        ] {
            assert!(
                set_for_the_running_package(name),
                "{name} should be removed"
            );
        }
        // What configures cargo itself is passed on.
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO_PROFILE_RELEASE_LTO",
            "CARGO_INCREMENTAL",
            "RUSTFLAGS",
        ] {
            assert!(!set_for_the_running_package(name), "{name} should be kept");
        }
    }
}
