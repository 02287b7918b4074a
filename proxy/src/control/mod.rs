//! The session with the coordinators: subscribe to any of them (moving to the next, with
//! backoff, when one fails), check every snapshot before taking it, ACK or NACK it (a
//! NACKed snapshot leaves the previous one in force), and keep every accepted snapshot as
//! the last-known-good file in the state directory, written atomically, so a proxy that
//! starts while no coordinator answers routes on what it last had.
//!
//! Versions only go forward: a snapshot not newer than the one held is ignored, whichever
//! coordinator sent it.

pub mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fulcrum_policy::weights::WeightRow;
use fulcrum_policy::{Locality, Resource};
use fulcrum_proto::common::v1 as common;
use fulcrum_proto::control::v1 as pb;
use fulcrum_proto::control::v1::proxy_control_client::ProxyControlClient;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::balance::ClusterInfo;
use crate::routing::RouteTable;

/// The last-known-good snapshot's file in the state directory.
pub const SNAPSHOT_FILE: &str = "snapshot.pb";
/// The name coordinators' certificates carry (`fulcrumctl certs init`).
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.fulcrum.internal";
/// First wait after a failed session; doubled up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between sessions.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting to a coordinator may take, handshakes included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a session pings its coordinator when nothing has come from it.
///
/// Pings are what notice a coordinator that stopped answering with its connections open
/// (frozen, or cut off by a partition): a report stream sent into such a node is lost, and
/// the failover it should have caused waits until the proxy moves. With these two
/// settings it moves within 1.5 s of the last answer. A pong is answered by the
/// coordinator's connection task, not by Raft or the store, so only a node whose runtime
/// is stalled for a second misses one; a proxy that leaves it just subscribes elsewhere.
pub const KEEPALIVE: Duration = Duration::from_millis(500);
/// How long a ping may go unanswered before the session is given up.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// A snapshot that passed the checks.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its version (a Raft log index).
    pub version: u64,
    /// When the coordinators produced it, Unix milliseconds of the leader's clock.
    pub produced_at_ms: u64,
    /// The configuration objects.
    pub resources: Vec<Resource>,
    /// The weight rows for this proxy's locality.
    pub weights: Vec<WeightRow>,
    /// The clusters of the mesh and their east-west gateways.
    pub clusters: Vec<ClusterInfo>,
}

/// A snapshot's cluster, checked.
fn cluster_info(c: &pb::Cluster) -> Result<ClusterInfo, String> {
    if c.name.is_empty() {
        return Err("name: required field is missing".into());
    }
    let locality = c
        .locality
        .as_ref()
        .ok_or("locality: required field is missing")
        .and_then(|l| Locality::try_from(l).map_err(|_| "locality: not a valid locality"))?;
    let gateways = c
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| match u16::try_from(g.port) {
            Ok(port) if port > 0 && !g.address.is_empty() => Ok(format!("{}:{port}", g.address)),
            _ => Err(format!(
                "gateways[{i}]: needs an address and a port in 1..65535"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ClusterInfo {
        name: c.name.clone(),
        locality,
        gateways,
    })
}

/// Checks a snapshot: every object and row converts, and every VirtualService compiles.
/// The error says which, for the NACK.
pub fn check(snapshot: &pb::Snapshot) -> Result<Accepted, String> {
    let resources = snapshot
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| Resource::try_from(r).map_err(|e| format!("resources[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let weights = snapshot
        .weights
        .iter()
        .enumerate()
        .map(|(i, w)| WeightRow::try_from(w).map_err(|e| format!("weights[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let clusters = snapshot
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| cluster_info(c).map_err(|e| format!("clusters[{i}].{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let (_, errors) = RouteTable::build(&resources);
    if let Some(e) = errors.first() {
        return Err(format!("{e}"));
    }
    Ok(Accepted {
        version: snapshot.version,
        produced_at_ms: snapshot.produced_at_ms,
        resources,
        weights,
        clusters,
    })
}

/// Writes `bytes` as the last-known-good snapshot: a temporary file, fsynced, renamed
/// over the old one, and the directory fsynced, so a crash leaves the old or the new file,
/// never a torn one.
pub fn store(state_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let target = state_dir.join(SNAPSHOT_FILE);
    let temporary = state_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &target)?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// [`store`] on a thread that may block: two fsyncs can take a while on a busy disk, and
/// the session's pings must not wait for them.
async fn store_off_runtime(state_dir: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let dir = state_dir.to_path_buf();
    tokio::task::spawn_blocking(move || store(&dir, &bytes))
        .await
        .map_err(std::io::Error::other)?
}

/// The last-known-good snapshot, when there is a good one. A damaged file is reported,
/// not trusted.
pub fn load(state_dir: &Path) -> Result<Option<(pb::Snapshot, Accepted)>, String> {
    let path = state_dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let snapshot = pb::Snapshot::decode(bytes.as_slice())
        .map_err(|e| format!("{}: not a snapshot: {e}", path.display()))?;
    let accepted = check(&snapshot).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some((snapshot, accepted)))
}

/// mTLS material for talking to coordinators.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The mesh CA.
    pub ca_pem: Vec<u8>,
    /// This proxy's certificate (its cluster's SPIFFE identity).
    pub cert_pem: Vec<u8>,
    /// Its key.
    pub key_pem: Vec<u8>,
}

impl ClientTls {
    /// Reads `ca.pem`, `proxy-CLUSTER.pem` and `proxy-CLUSTER-key.pem` from `dir`.
    pub fn from_dir(dir: &Path, cluster: &str) -> Result<ClientTls, String> {
        let read = |name: String| {
            let path = dir.join(&name);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        Ok(ClientTls {
            ca_pem: read("ca.pem".into())?,
            cert_pem: read(format!("proxy-{cluster}.pem"))?,
            key_pem: read(format!("proxy-{cluster}-key.pem"))?,
        })
    }
}

/// Who this proxy is and where its coordinators are.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// `host:port` of each coordinator.
    pub coordinators: Vec<String>,
    /// This proxy's cluster.
    pub cluster: String,
    /// Its locality.
    pub locality: Locality,
    /// Its id among the cluster's proxies.
    pub proxy_id: String,
    /// Where the last-known-good snapshot is kept.
    pub state_dir: PathBuf,
    /// mTLS, or plaintext (`None`) for coordinators run with `--insecure-dev`.
    pub tls: Option<ClientTls>,
}

/// How a session ended.
enum SessionEnd {
    Stopped,
    Failed(String),
}

/// Subscribes until `stop`, calling `accepted` with each snapshot taken (after it is
/// stored). `version` is the version already held (0 for none).
pub async fn run(
    settings: ControlSettings,
    mut version: u64,
    accepted: impl Fn(Accepted) + Send + Sync,
    connected: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut next = 0usize;
    loop {
        if settings.coordinators.is_empty() || *stop.borrow() {
            return;
        }
        let address = &settings.coordinators[next % settings.coordinators.len()];
        next += 1;
        let end = session(
            &settings,
            address,
            &mut version,
            &accepted,
            &connected,
            &mut stop,
        )
        .await;
        // A session that was under way ended: the next coordinator is tried at once
        // rather than after the waits of earlier failures.
        if connected.send_replace(false) {
            backoff = FIRST_BACKOFF;
        }
        match end {
            SessionEnd::Stopped => return,
            SessionEnd::Failed(why) => {
                tracing::warn!(coordinator = %address, "coordinator session ended: {why}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A gRPC channel to the coordinator at `address`, over mTLS unless the settings have
/// none.
pub async fn connect(settings: &ControlSettings, address: &str) -> Result<Channel, String> {
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("bad address: {e}"))?
        .tcp_nodelay(true)
        // A coordinator that stops answering (frozen, cut off) sends no snapshot and no
        // error: without pings the stream would sit silent until TCP gave up, minutes
        // later. With them, the session ends within KEEPALIVE + KEEPALIVE_TIMEOUT and
        // the proxy moves to the next coordinator.
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let endpoint = match &settings.tls {
        None => endpoint,
        Some(tls) => {
            let config = ClientTlsConfig::new()
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .domain_name(COORDINATOR_SERVER_NAME);
            endpoint
                .tls_config(config)
                .map_err(|e| format!("TLS settings: {e}"))?
        }
    };
    // Timed as a whole: a frozen node's kernel still completes the TCP connect, and the
    // TLS handshake then waits for as long as the node stays frozen.
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        // With its causes: tonic's own message is a bare "transport error".
        Ok(Err(e)) => Err(format!(
            "cannot connect: {}",
            crate::outbound::error_chain(&e)
        )),
        Err(_) => Err(format!(
            "no connection within {}ms (TCP, TLS and HTTP/2 handshakes)",
            CONNECT_TIMEOUT.as_millis()
        )),
    }
}

async fn session(
    settings: &ControlSettings,
    address: &str,
    version: &mut u64,
    accepted: &(impl Fn(Accepted) + Send + Sync),
    connected: &watch::Sender<bool>,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let channel = match connect(settings, address).await {
        Ok(c) => c,
        Err(e) => return SessionEnd::Failed(e),
    };
    let (tx, rx) = mpsc::channel(16);
    let hello = pb::SubscribeRequest {
        message: Some(pb::subscribe_request::Message::Hello(pb::Hello {
            cluster: settings.cluster.clone(),
            locality: Some(common::Locality::from(&settings.locality)),
            proxy_id: settings.proxy_id.clone(),
            last_version: *version,
        })),
    };
    if tx.send(hello).await.is_err() {
        return SessionEnd::Failed("the request stream closed".into());
    }
    let mut stream = match ProxyControlClient::new(channel)
        .subscribe(ReceiverStream::new(rx))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(status) => return SessionEnd::Failed(format!("subscribe refused: {status}")),
    };
    let _ = connected.send(true);
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = stop.changed() => return SessionEnd::Stopped,
        };
        let snapshot = match message {
            Ok(Some(s)) => s,
            Ok(None) => return SessionEnd::Failed("the coordinator closed the stream".into()),
            Err(status) => return SessionEnd::Failed(format!("stream error: {status}")),
        };
        if snapshot.version <= *version {
            continue;
        }
        let reply = match check(&snapshot) {
            Ok(taken) => {
                match store_off_runtime(&settings.state_dir, snapshot.encode_to_vec()).await {
                    Ok(()) => {
                        *version = snapshot.version;
                        accepted(taken);
                        pb::subscribe_request::Message::Ack(pb::Ack {
                            version: snapshot.version,
                        })
                    }
                    Err(e) => pb::subscribe_request::Message::Nack(pb::Nack {
                        version: snapshot.version,
                        reason: format!("cannot store it in {}: {e}", settings.state_dir.display()),
                    }),
                }
            }
            Err(reason) => {
                tracing::warn!(version = snapshot.version, "snapshot refused: {reason}");
                pb::subscribe_request::Message::Nack(pb::Nack {
                    version: snapshot.version,
                    reason,
                })
            }
        };
        let reply = pb::SubscribeRequest {
            message: Some(reply),
        };
        if tx.send(reply).await.is_err() {
            return SessionEnd::Failed("the request stream closed".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64, json: &str) -> pb::Snapshot {
        pb::Snapshot {
            version,
            resources: vec![common::Resource {
                kind: "ServiceEntry".into(),
                namespace: "shop".into(),
                name: "hello".into(),
                json: json.as_bytes().to_vec(),
            }],
            ..pb::Snapshot::default()
        }
    }

    const GOOD: &str = r#"{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"hello","namespace":"shop"},"spec":{"hosts":["hello.example"],"resolution":"STATIC","ports":[{"number":80,"name":"http","protocol":"HTTP"}]}}"#;

    #[test]
    fn a_snapshot_with_a_bad_object_is_refused_naming_it() {
        assert_eq!(check(&snapshot(7, GOOD)).map(|a| a.version), Ok(7));
        let err = check(&snapshot(8, "{not json")).unwrap_err();
        assert!(err.starts_with("resources[0]"), "{err}");
    }

    #[test]
    fn the_last_known_good_file_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("no file is fine").is_none());
        store(dir.path(), &snapshot(3, GOOD).encode_to_vec()).expect("store");
        store(dir.path(), &snapshot(4, GOOD).encode_to_vec()).expect("store again");
        let (_, accepted) = load(dir.path()).expect("readable").expect("present");
        assert_eq!(accepted.version, 4);
        assert!(!dir.path().join(format!("{SNAPSHOT_FILE}.tmp")).exists());
    }
}
