//! A coordinator group in-process: real gRPC on loopback, real mTLS with generated
//! certificates, real store files in a temp dir.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fulcrum_coordinator::app::{Bootstrap, Coordinator, CoordinatorConfig, Security};
use fulcrum_coordinator::raft::RaftSettings;
use fulcrum_coordinator::security::certs::{self, InitPlan};
use fulcrum_coordinator::security::{Credentials, Role};
use fulcrum_coordinator::transport::Dialer;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub const TRUST_DOMAIN: &str = "test.fulcrum";

pub const MESH: &str = r#"
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {name: east}
spec: {locality: us-east/us-east-1a}
---
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {name: west}
spec: {locality: us-west/us-west-1a}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.1, locality: us-east/us-east-1a}
  - {address: 10.0.1.1, locality: us-west/us-west-1a}
"#;

/// Polls `check` until it returns `Some`, or panics after `timeout` with what it last saw.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fast timings for tests: snapshots every 50 entries so catch-up by snapshot is exercised.
pub fn test_raft() -> RaftSettings {
    RaftSettings {
        snapshot_every: 50,
        keep_after_snapshot: 0,
        ..RaftSettings::default()
    }
}

/// A group of nodes with their certificates and data dirs.
pub struct Group {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Coordinator>,
    pub addresses: BTreeMap<u64, String>,
}

pub fn certs_dir(dir: &Path) -> PathBuf {
    dir.join("certs")
}

pub fn make_certs(dir: &Path, coordinators: u64) {
    certs::init(
        &InitPlan {
            trust_domain: TRUST_DOMAIN.into(),
            coordinators,
            clusters: vec!["east".into(), "west".into()],
            admins: vec!["ops".into()],
            valid_days: 1,
        },
        &certs_dir(dir),
    )
    .expect("certs init");
}

pub fn config(dir: &Path, id: u64, listen: &str) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(
        id,
        listen.parse().expect("address"),
        dir.join(format!("node-{id}")),
        Security::Certificates(certs_dir(dir)),
    );
    c.raft = test_raft();
    c.batch_interval = Duration::from_millis(50);
    c.tick_interval = Duration::from_millis(200);
    c
}

/// A loopback socket for a node, and its address. The node is started on the socket
/// itself ([`Coordinator::start_on`]): an address let go before the node binds it could
/// be handed to another node or taken by a client's connection meanwhile.
pub async fn reserve() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    (listener, address)
}

impl Group {
    /// Starts `n` nodes with a static initial membership and waits for a leader.
    pub async fn start(n: u64) -> Group {
        let dir = tempfile::tempdir().expect("tempdir");
        make_certs(dir.path(), n + 2);
        let mut sockets = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for id in 1..=n {
            let (listener, address) = reserve().await;
            sockets.insert(id, listener);
            addresses.insert(id, address);
        }
        let members = addresses.clone();
        Group::start_on(dir, sockets, members).await
    }

    /// Starts a node on each of `sockets` (by node id), all with the initial membership
    /// `members`, which may name nodes not started here; waits for a leader. `dir` holds
    /// the certificates.
    pub async fn start_on(
        dir: tempfile::TempDir,
        sockets: BTreeMap<u64, TcpListener>,
        members: BTreeMap<u64, String>,
    ) -> Group {
        let mut nodes = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for (id, listener) in sockets {
            let address = listener.local_addr().expect("address").to_string();
            let mut c = config(dir.path(), id, &address);
            c.bootstrap = Bootstrap::Members(members.clone());
            let node = Coordinator::start_on(c, listener)
                .await
                .expect("node starts");
            nodes.insert(id, node);
            addresses.insert(id, address);
        }
        let group = Group {
            dir,
            nodes,
            addresses,
        };
        group.leader().await;
        group
    }

    /// The leader every running node agrees on.
    pub async fn leader(&self) -> u64 {
        eventually(
            Duration::from_secs(10),
            "a leader all nodes agree on",
            || async {
                let leaders: Vec<Option<u64>> = self
                    .nodes
                    .values()
                    .map(|c| c.node().leader().map(|(id, _)| id))
                    .collect();
                match leaders.first() {
                    Some(Some(l))
                        if leaders.iter().all(|x| *x == Some(*l)) && self.nodes.contains_key(l) =>
                    {
                        Ok(*l)
                    }
                    _ => Err(format!("{leaders:?}")),
                }
            },
        )
        .await
    }

    /// Stops a node (its store stays).
    pub async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.stop().await;
        }
    }

    /// Starts a stopped node again from its data dir.
    pub async fn restart(&mut self, id: u64) {
        let c = config(self.dir.path(), id, &self.addresses[&id]);
        let node = eventually(Duration::from_secs(5), "the node restarts", || async {
            Coordinator::start(c.clone())
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        self.nodes.insert(id, node);
    }

    pub fn credentials(&self, role: Role) -> Credentials {
        Credentials::load(&certs_dir(self.dir.path()), &role).expect("credentials")
    }

    /// A channel to node `id` with the identity of `role`.
    pub fn channel_as(&self, id: u64, role: Role) -> Channel {
        let tls = self.credentials(role).coordinator_client_tls();
        Dialer::new(Some(tls))
            .channel(&self.addresses[&id])
            .expect("channel")
    }

    /// A channel to node `id` as the admin.
    pub fn admin(&self, id: u64) -> Channel {
        self.channel_as(id, Role::Admin("ops".into()))
    }
}
