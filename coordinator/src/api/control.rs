//! `fulcrum.control.v1.ProxyControl`: reports in, snapshots out. A proxy may speak only
//! for its own cluster (the one in its certificate).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_policy::Locality;
use fulcrum_policy::health::HealthReport;
use fulcrum_proto::control::v1 as pb;
use fulcrum_proto::control::v1::proxy_control_server::ProxyControl;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ingest::{Ingest, Offered};
use crate::node::{Node, wall_clock_ms};
use crate::push::{Registry, SnapshotCache};
use crate::security::{Action, Caller};

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves ProxyControl for one node.
pub struct ControlService {
    node: Arc<Node>,
    ingest: Arc<Ingest>,
    registry: Arc<Registry>,
    cache: Arc<SnapshotCache>,
    shutdown: watch::Receiver<bool>,
}

impl ControlService {
    /// Serves `node`'s reports and subscriptions.
    pub fn new(
        node: Arc<Node>,
        ingest: Arc<Ingest>,
        registry: Arc<Registry>,
        cache: Arc<SnapshotCache>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        ControlService {
            node,
            ingest,
            registry,
            cache,
            shutdown,
        }
    }
}

/// How often a subscription checks that its node is still in touch with the group.
const CONTACT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// `Unavailable` when `node` is cut off from its Raft group ([`Node::cut_off`]): its
/// state is stale and what is reported to it may never commit, so proxies are sent to
/// another coordinator, as from one that is down.
fn in_touch(node: &Node) -> Result<(), Status> {
    match node.cut_off() {
        None => Ok(()),
        Some(out) => {
            node.metrics.cut_off_refusals.inc();
            Err(Status::unavailable(format!(
                "coordinator {} has been out of touch with its Raft group for {} ms: \
                 use another",
                node.id,
                out.as_millis()
            )))
        }
    }
}

/// Converts and checks a report from the wire, and checks the caller may send it.
fn accept_report(
    node: &Node,
    caller: &Caller,
    message: &pb::HealthReport,
) -> Result<HealthReport, Status> {
    let report = HealthReport::try_from(message)
        .map_err(|e| Status::invalid_argument(format!("report: {e}")))?;
    node.authz.check(
        caller,
        Action::Proxy {
            cluster: &report.cluster,
        },
    )?;
    Ok(report)
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl ProxyControl for ControlService {
    async fn report(
        &self,
        request: Request<Streaming<pb::HealthReport>>,
    ) -> Result<Response<pb::ReportSummary>, Status> {
        let caller = self.node.authz.caller(&request)?;
        in_touch(&self.node)?;
        let mut stream = request.into_inner();
        let mut summary = pb::ReportSummary::default();
        while let Some(message) = stream.next().await {
            in_touch(&self.node)?;
            let report = accept_report(&self.node, &caller, &message?)?;
            match self.ingest.offer(report) {
                Offered::Accepted | Offered::Coalesced => summary.accepted += 1,
                Offered::Dropped => summary.dropped += 1,
            }
        }
        Ok(Response::new(summary))
    }

    type SubscribeStream = SnapshotStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let caller = self.node.authz.caller(&request)?;
        in_touch(&self.node)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s of subscribing"))?
            .ok_or_else(|| Status::invalid_argument("the stream closed before its Hello"))??;
        let Some(pb::subscribe_request::Message::Hello(hello)) = first.message else {
            return Err(Status::invalid_argument(
                "message: the first message of a subscription must be a Hello",
            ));
        };
        if hello.cluster.is_empty() {
            return Err(Status::invalid_argument(
                "hello.cluster: required field is missing",
            ));
        }
        if hello.proxy_id.is_empty() {
            return Err(Status::invalid_argument(
                "hello.proxy_id: required field is missing",
            ));
        }
        let locality = match &hello.locality {
            Some(l) => Locality::try_from(l)
                .map_err(|e| Status::invalid_argument(format!("hello.locality: {e}")))?,
            None => Locality::default(),
        };
        self.node.authz.check(
            &caller,
            Action::Proxy {
                cluster: &hello.cluster,
            },
        )?;

        let (tx, rx) = mpsc::channel(4);
        let registration = self.registry.register(
            &hello.proxy_id,
            &hello.cluster,
            &locality,
            hello.last_version,
            wall_clock_ms(),
        );
        let node = self.node.clone();
        let cache = self.cache.clone();
        let mut versions = node.state.versions();
        let mut shutdown = self.shutdown.clone();
        node.metrics.connected_proxies.inc();
        tokio::spawn(async move {
            let mut held = hello.last_version;
            let mut contact_check = tokio::time::interval(CONTACT_CHECK_EVERY);
            contact_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Send the current snapshot if it is newer than what the proxy holds. A
                // lagging node waits until it catches up: a proxy never goes backwards.
                let snapshot = node.state.read(|applied| {
                    (applied.mesh.mesh_version() > held)
                        .then(|| cache.get(applied, &hello.cluster, &locality))
                });
                if let Some(snapshot) = snapshot {
                    let version = snapshot.version;
                    let latency_ms = wall_clock_ms().saturating_sub(snapshot.produced_at_ms);
                    if tx.send(Ok((*snapshot).clone())).await.is_err() {
                        break;
                    }
                    held = version;
                    registration.sent(version, wall_clock_ms());
                    node.metrics.pushes.inc();
                    node.metrics
                        .push_latency
                        .observe(latency_ms as f64 / 1_000.0);
                }
                tokio::select! {
                    changed = versions.changed() => if changed.is_err() { break },
                    message = inbound.next() => match message {
                        Some(Ok(pb::SubscribeRequest { message: Some(m) })) => match m {
                            pb::subscribe_request::Message::Ack(a) => {
                                registration.ack(a.version, wall_clock_ms());
                            }
                            pb::subscribe_request::Message::Nack(n) => {
                                tracing::warn!(proxy = %hello.proxy_id, version = n.version, reason = %n.reason, "proxy refused a snapshot");
                                registration.nack(n.version, n.reason, wall_clock_ms());
                            }
                            pb::subscribe_request::Message::Hello(_) => {
                                let _ = tx.send(Err(Status::invalid_argument(
                                    "message: Hello may only be the first message",
                                ))).await;
                                break;
                            }
                        },
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                    _ = contact_check.tick() => {
                        if let Err(status) = in_touch(&node) {
                            tracing::warn!(proxy = %hello.proxy_id, "{}", status.message());
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
            node.metrics.connected_proxies.dec();
            drop(registration);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
