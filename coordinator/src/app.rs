//! Wiring one coordinator node: the store, Raft, the gRPC services on one mTLS port, the
//! metrics port, and the background loops (digest batcher, leader tick, join, config
//! directory). [`Coordinator::start`] returns a handle that tests start and stop
//! in-process; the binary is a thin shell around it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_proto::control::v1::proxy_control_server::ProxyControlServer;
use fulcrum_proto::raft::v1::raft_server::RaftServer;
use fulcrum_proto::status::v1 as status_pb;
use fulcrum_proto::status::v1::admin_client::AdminClient;
use fulcrum_proto::status::v1::admin_server::AdminServer;
use fulcrum_proto::status::v1::status_server::StatusServer;
use openraft::BasicNode;
use openraft::error::{InitializeError, RaftError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::api::admin::AdminService;
use crate::api::control::ControlService;
use crate::api::status::StatusService;
use crate::ingest::{self, DEFAULT_BATCH_INTERVAL, DEFAULT_MAX_PENDING_PROXIES, Ingest};
use crate::mesh::{Change, store_object};
use crate::metrics::{self, Metrics};
use crate::node::{LEADER_ADDRESS_HEADER, Node};
use crate::push::{Registry, SnapshotCache};
use crate::raft::network::{MAX_MESSAGE_BYTES, Network};
use crate::raft::reach::{GroupContact, LeaderReach};
use crate::raft::service::RaftService;
use crate::raft::{Raft, RaftSettings, store};
use crate::security::{Authorizer, Credentials, Role};
use crate::transport::Dialer;

/// How often the leader proposes a Tick, by default.
pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the config directory is checked for changes, by default.
pub const DEFAULT_CONFIG_POLL: Duration = Duration::from_secs(2);
/// The store file inside the data dir.
pub const STORE_FILE: &str = "fulcrum.redb";

/// How the node proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// mTLS with the certificates in this directory (`coordinator-<id>.pem` and `ca.pem`).
    Certificates(PathBuf),
    /// No TLS and no authorization: local experiments only.
    InsecureDev,
}

/// How the node joins a Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Start with what the data dir holds (a restart, or waiting to be added).
    Resume,
    /// Create a new group with this node as its only member.
    Init,
    /// Ask the node at this address to add this one.
    Join(String),
    /// Create a group with these members (the same list on every initial node).
    Members(BTreeMap<u64, String>),
}

/// Everything one node needs to start.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// This node's id (positive, unique in the group).
    pub node_id: u64,
    /// Where to listen for gRPC (Raft, proxies, status, admin).
    pub listen: SocketAddr,
    /// The address other nodes reach this one on; the bound address when `None`.
    pub advertise: Option<String>,
    /// Where the store file lives.
    pub data_dir: PathBuf,
    /// mTLS or plaintext.
    pub security: Security,
    /// How to join.
    pub bootstrap: Bootstrap,
    /// Raft timing and compaction.
    pub raft: RaftSettings,
    /// Digest batch interval.
    pub batch_interval: Duration,
    /// Leader tick interval.
    pub tick_interval: Duration,
    /// Where to serve `/metrics` (plain HTTP), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// A directory of configuration files to apply and watch.
    pub config_dir: Option<PathBuf>,
}

impl CoordinatorConfig {
    /// Defaults for everything but identity, address, data and security.
    pub fn new(node_id: u64, listen: SocketAddr, data_dir: PathBuf, security: Security) -> Self {
        CoordinatorConfig {
            node_id,
            listen,
            advertise: None,
            data_dir,
            security,
            bootstrap: Bootstrap::Resume,
            raft: RaftSettings::default(),
            batch_interval: DEFAULT_BATCH_INTERVAL,
            tick_interval: DEFAULT_TICK_INTERVAL,
            metrics_listen: None,
            config_dir: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad flags.
    #[error("{0}")]
    Invalid(String),
    /// The data dir belongs to another node.
    #[error(
        "the data dir {dir} belongs to node {recorded}, not node {asked}: pass --node-id {recorded} or use another --data-dir"
    )]
    WrongDataDir {
        /// The directory.
        dir: String,
        /// The id recorded in it.
        recorded: u64,
        /// The id asked for.
        asked: u64,
    },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] store::OpenError),
    /// Certificates are missing or wrong.
    #[error(transparent)]
    Certificates(#[from] crate::security::certs::CertError),
    /// I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Raft refused to start.
    #[error("Raft: {0}")]
    Raft(String),
}

/// A running node.
pub struct Coordinator {
    node: Arc<Node>,
    address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    store_closed: store::StoreClosed,
}

/// The listen queue the gRPC listener asks for; the kernel holds it to
/// `net.core.somaxconn`. A plain bind asks for 128, and the proxies a node served
/// reconnect at once when it comes back or another node fails: past the queue, their
/// SYNs are dropped and sent again only a second later.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// A listener on `address` (SO_REUSEADDR, as a plain bind sets it) with a listen queue of
/// [`LISTEN_BACKLOG`].
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long [`Coordinator::stop`] waits for Raft to let go of the store file.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Coordinator {
    /// Listens on `config.listen`, opens the store, starts Raft and serves.
    pub async fn start(config: CoordinatorConfig) -> Result<Coordinator, StartError> {
        let listener = listen(config.listen).map_err(|source| StartError::Io {
            what: format!("cannot listen on {}", config.listen),
            source,
        })?;
        Self::start_on(config, listener).await
    }

    /// [`Coordinator::start`] on a socket already bound (`config.listen` is not used), so
    /// that whoever chose the address holds it from the moment it was chosen: a group
    /// whose addresses were picked one by one and let go could be handed the same port
    /// twice.
    pub async fn start_on(
        config: CoordinatorConfig,
        listener: TcpListener,
    ) -> Result<Coordinator, StartError> {
        if config.node_id == 0 {
            return Err(StartError::Invalid(
                "--node-id must be a positive number".into(),
            ));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::Io {
            what: format!("cannot create the data dir {}", config.data_dir.display()),
            source,
        })?;
        let (log, state_machine) = store::open(&config.data_dir.join(STORE_FILE))?;
        let store_closed = log.closed_watch();
        match store::recorded_node_id(&log).map_err(|e| StartError::Raft(e.to_string()))? {
            Some(recorded) if recorded != config.node_id => {
                return Err(StartError::WrongDataDir {
                    dir: config.data_dir.display().to_string(),
                    recorded,
                    asked: config.node_id,
                });
            }
            Some(_) => {}
            None => store::record_node_id(&log, config.node_id)
                .map_err(|e| StartError::Raft(e.to_string()))?,
        }

        let (authz, dialer, server_tls) = match &config.security {
            Security::Certificates(dir) => {
                let credentials = Credentials::load(dir, &Role::Coordinator(config.node_id))?;
                (
                    Authorizer::new(credentials.identity.trust_domain.clone()),
                    Dialer::new(Some(credentials.coordinator_client_tls())),
                    Some(credentials.server_tls()),
                )
            }
            Security::InsecureDev => (Authorizer::insecure(), Dialer::new(None), None),
        };

        let address = listener.local_addr().map_err(|source| StartError::Io {
            what: "cannot read the bound address".into(),
            source,
        })?;
        let dialer = dialer.leaving_from(address.ip());
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| address.to_string());

        let raft_config = config
            .raft
            .to_config()
            .map_err(|e| StartError::Invalid(format!("Raft settings: {e}")))?;
        let reader = state_machine.reader();
        let last_log = log.last_log_id();
        let contact = Arc::new(GroupContact::default());
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network::new(dialer.clone(), contact.clone()),
            log,
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let metrics = Arc::new(Metrics::new());
        let writer = crate::node::Writer::start(raft.clone(), reader.clone());
        let node = Arc::new(Node {
            id: config.node_id,
            advertise: advertise.clone(),
            raft,
            state: reader,
            dialer,
            authz,
            metrics: metrics.clone(),
            settings: config.raft,
            writer,
            reach: LeaderReach::default(),
            contact,
            last_log,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let ingest = Arc::new(Ingest::new(DEFAULT_MAX_PENDING_PROXIES, metrics.clone()));
        let registry = Arc::new(Registry::default());
        let cache = Arc::new(SnapshotCache::default());

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<StatusServer<StatusService>>().await;
        // Both reflection versions: grpcurl speaks v1, many client libraries still v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fulcrum_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError::Invalid(format!("gRPC reflection: {e}")))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fulcrum_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| StartError::Invalid(format!("gRPC reflection: {e}")))?;

        let mut server = Server::builder().tcp_nodelay(true);
        if let Some(tls) = server_tls {
            server = server
                .tls_config(tls)
                .map_err(|e| StartError::Invalid(format!("TLS: {e}")))?;
        }
        let router = server
            .add_service(
                RaftServer::new(RaftService::new(node.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(ProxyControlServer::new(ControlService::new(
                node.clone(),
                ingest.clone(),
                registry.clone(),
                cache,
                shutdown_rx.clone(),
            )))
            .add_service(StatusServer::new(StatusService::new(
                node.clone(),
                registry,
                shutdown_rx.clone(),
            )))
            .add_service(
                AdminServer::new(AdminService::new(node.clone()))
                    .max_decoding_message_size(crate::api::admin::MAX_APPLY_BYTES + 64 * 1024),
            )
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha);
        let mut stop = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.changed().await;
                })
                .await
            {
                tracing::error!(error = %e, "the gRPC server stopped");
            }
        }));

        let metrics_address = match config.metrics_listen {
            Some(at) => {
                let listener = metrics::bind(at).await.map_err(|source| StartError::Io {
                    what: format!("cannot listen for metrics on {at}"),
                    source,
                })?;
                let bound = listener.local_addr().ok();
                tasks.push(tokio::spawn(metrics::serve(
                    listener,
                    metrics.clone(),
                    shutdown_rx.clone(),
                )));
                bound
            }
            None => None,
        };
        tasks.push(tokio::spawn(
            metrics.clone().follow_raft(node.raft_metrics()),
        ));
        tasks.push(tokio::spawn(ingest::run_batcher(
            node.clone(),
            ingest,
            config.batch_interval,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(node.clone().probe_leader(shutdown_rx.clone())));
        tasks.push(tokio::spawn(crate::raft::prevote::run(
            node.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(run_ticker(
            node.clone(),
            config.tick_interval,
            shutdown_rx.clone(),
        )));

        match &config.bootstrap {
            Bootstrap::Resume => {}
            Bootstrap::Init => {
                let members = BTreeMap::from([(config.node_id, BasicNode::new(&advertise))]);
                initialize(&node, members).await?;
            }
            Bootstrap::Members(list) => {
                if !list.contains_key(&config.node_id) {
                    return Err(StartError::Invalid(format!(
                        "the initial member list does not include this node ({})",
                        config.node_id
                    )));
                }
                let members = list
                    .iter()
                    .map(|(id, a)| (*id, BasicNode::new(a)))
                    .collect();
                initialize(&node, members).await?;
            }
            Bootstrap::Join(seed) => {
                tasks.push(tokio::spawn(run_join(
                    node.clone(),
                    seed.clone(),
                    shutdown_rx.clone(),
                )));
            }
        }
        if let Some(dir) = &config.config_dir {
            tasks.push(tokio::spawn(run_config_dir(
                node.clone(),
                dir.clone(),
                DEFAULT_CONFIG_POLL,
                shutdown_rx.clone(),
            )));
        }
        tracing::info!(node = config.node_id, %address, "coordinator serving");
        Ok(Coordinator {
            node,
            address,
            metrics_address,
            shutdown,
            tasks,
            store_closed,
        })
    }

    /// The node's core.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The gRPC address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The metrics address, when serving metrics.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Stops serving and shuts Raft down; returns once the store file is closed (so the
    /// same data dir can be opened again), or after a few seconds.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.node.raft.shutdown().await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        drop(self.node);
        let deadline = tokio::time::Instant::now() + STORE_CLOSE_TIMEOUT;
        while !self.store_closed.is_closed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn initialize(node: &Node, members: BTreeMap<u64, BasicNode>) -> Result<(), StartError> {
    let initialized = node
        .raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if initialized {
        tracing::info!("the data dir already holds a Raft group; not initializing again");
        return Ok(());
    }
    match node.raft.initialize(members).await {
        Ok(()) => Ok(()),
        // With a static member list every initial node initializes; whichever did first
        // may already have replicated to this one between its start and this call. The
        // group exists, which is what initializing was for.
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
            tracing::info!(%e, "the group was formed by another member");
            Ok(())
        }
        Err(e) => Err(StartError::Raft(format!(
            "cannot initialize the group: {e}"
        ))),
    }
}

/// The leader proposes a Tick every `interval`, so time moves in the state machine even
/// without traffic.
async fn run_ticker(node: Arc<Node>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if node.is_leader()
            && let Err(status) = node.propose_here(Change::Tick).await
        {
            tracing::debug!(%status, "tick not committed");
        }
    }
}

/// Asks `seed` (then the leader it points to) to add this node, until it is a member.
async fn run_join(node: Arc<Node>, seed: String, mut shutdown: watch::Receiver<bool>) {
    let mut target = seed.clone();
    let mut backoff = Duration::from_millis(200);
    loop {
        let member = node
            .raft_metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == node.id);
        if member {
            tracing::info!(node = node.id, "joined the group");
            return;
        }
        let attempt = async {
            let channel = node
                .dialer
                .channel(&target)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            AdminClient::new(channel)
                .add_member(status_pb::AddMemberRequest {
                    node_id: node.id,
                    address: node.advertise.clone(),
                    learner_only: false,
                })
                .await
        };
        match attempt.await {
            Ok(_) => continue,
            Err(status) => {
                if let Some(leader) = status
                    .metadata()
                    .get(LEADER_ADDRESS_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    target = leader.to_string();
                    continue;
                }
                if status.code() == tonic::Code::AlreadyExists {
                    tracing::error!(%status, "cannot join");
                    return;
                }
                tracing::warn!(%status, %target, "join not accepted yet; retrying");
                target = seed.clone();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Applies the configuration directory when it changes (on the leader only, so a change
/// is proposed once). Invalid configuration is logged with its field paths and not
/// applied; what was applied before stays.
async fn run_config_dir(
    node: Arc<Node>,
    dir: PathBuf,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applied: Option<fulcrum_policy::Fingerprint> = None;
    let mut ticker = tokio::time::interval(poll);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !node.is_leader() {
            applied = None;
            continue;
        }
        let fingerprint = fulcrum_policy::Fingerprint::of(&[dir.as_path()]);
        if applied.as_ref() == Some(&fingerprint) {
            continue;
        }
        let mut config = fulcrum_policy::ConfigSet::new();
        config.add_path(&dir);
        // A file that cannot be read (being written, not text) holds the whole directory
        // back, as an invalid object does, until it changes.
        if config.has_errors() || !config.source_errors.is_empty() {
            for e in &config.source_errors {
                tracing::error!(config_dir = %dir.display(), "{e}");
            }
            for d in config.diagnostics().filter(|d| d.is_error()) {
                tracing::error!(config_dir = %dir.display(), "{d}");
            }
            applied = Some(fingerprint);
            continue;
        }
        let objects: Vec<_> = config.resources().map(store_object).collect();
        let unchanged = node.state.read(|a| {
            objects.iter().all(|o| {
                a.mesh
                    .objects()
                    .any(|(s, _)| s.key == o.key && s.json == o.json)
            })
        });
        if objects.is_empty() || unchanged {
            applied = Some(fingerprint);
            continue;
        }
        match node.propose_here(Change::Apply { objects }).await {
            Ok(p) => {
                tracing::info!(index = p.index, config_dir = %dir.display(), "configuration directory applied");
                applied = Some(fingerprint);
            }
            Err(status) => tracing::warn!(%status, "configuration directory not applied yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections the node has not accepted yet wait in the listen queue: a burst past
    /// the 128 a plain bind allows is connected at once, none of it dropped to send its
    /// SYN again a second later.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_listen_queue() {
        // The kernel holds the queue to somaxconn; a machine that allows less than the
        // burst cannot show it.
        let allowed = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(128);
        let burst = allowed.min(512) - 1;
        let listener = listen("127.0.0.1:0".parse().expect("address")).expect("listen");
        let address = listener.local_addr().expect("address");
        // Nothing accepts. Under the second a dropped SYN waits before it is sent again.
        let connects = (0..burst).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(900),
                tokio::net::TcpStream::connect(address),
            )
        });
        let connected = futures::future::join_all(connects).await;
        let made = connected.iter().filter(|c| matches!(c, Ok(Ok(_)))).count();
        assert_eq!(made, burst, "connections made while none was accepted");
        drop(listener);
    }
}
