//! `fulcrum.status.v1.Status`: read-only views of the mesh, served from this node's
//! applied state with its applied index and leader attached, or after a linearizable read
//! point when `consistent` is asked. Any identity of the trust domain may call it.

use std::pin::Pin;
use std::sync::Arc;

use fulcrum_policy::engine::DrainTarget;
use fulcrum_policy::engine::compute::Standing;
use fulcrum_policy::engine::explain::weight_rows;
use fulcrum_policy::weights::Verdict;
use fulcrum_proto::common::v1 as common;
use fulcrum_proto::status::v1 as pb;
use fulcrum_proto::status::v1::status_client::StatusClient;
use fulcrum_proto::status::v1::status_server::Status as StatusRpc;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::mesh::{EventKind, MeshEvent};
use crate::node::{Node, wall_clock_ms};
use crate::push::{DEFAULT_STALE_AFTER, Registry};
use crate::raft::store::Applied;
use crate::security::Action;

/// Serves Status for one node.
pub struct StatusService {
    node: Arc<Node>,
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
}

impl StatusService {
    /// Serves `node`'s status.
    pub fn new(node: Arc<Node>, registry: Arc<Registry>, shutdown: watch::Receiver<bool>) -> Self {
        StatusService {
            node,
            registry,
            shutdown,
        }
    }

    async fn read_info(&self, consistent: bool) -> Result<pb::ReadInfo, Status> {
        if consistent {
            self.node.consistent().await?;
        }
        Ok(pb::ReadInfo {
            node_id: self.node.id,
            applied_index: self
                .node
                .state
                .read(|a| a.last_applied.map_or(0, |l| l.index)),
            leader_id: self.node.leader().map_or(0, |(id, _)| id),
            consistent,
        })
    }
}

fn drain_target_text(target: &DrainTarget) -> String {
    match target {
        DrainTarget::Cluster(c) => c.clone(),
        DrainTarget::Locality(l) => l.to_string(),
    }
}

fn event_kind(kind: EventKind) -> pb::EventKind {
    match kind {
        EventKind::VerdictChanged => pb::EventKind::VerdictChanged,
        EventKind::Drained => pb::EventKind::Drained,
        EventKind::Undrained => pb::EventKind::Undrained,
        EventKind::ConfigApplied => pb::EventKind::ConfigApplied,
        EventKind::ConfigDeleted => pb::EventKind::ConfigDeleted,
        EventKind::MembershipChanged => pb::EventKind::MembershipChanged,
    }
}

fn to_event(e: &MeshEvent) -> pb::Event {
    let verdict = |v: Option<Verdict>| v.map_or(0, |v| common::Verdict::from(v) as i32);
    pb::Event {
        index: e.index,
        time_ms: e.time_ms,
        kind: event_kind(e.kind) as i32,
        service: e.service.clone(),
        locality: e.locality.as_ref().map(common::Locality::from),
        from: verdict(e.verdicts.map(|v| v.0)),
        to: verdict(e.verdicts.map(|v| v.1)),
        explanation: e.explanation.clone(),
    }
}

/// The mesh overview from the applied state.
fn mesh_view(applied: &Applied, registry: &Registry) -> pb::Mesh {
    let mesh = &applied.mesh;
    let engine = mesh.engine();
    let now = mesh.now_ms();
    let per_cluster = registry.per_cluster();
    let clusters = mesh
        .topology()
        .clusters
        .values()
        .map(|c| {
            let last = engine.clusters.get(&c.name).map(|s| s.last_report_ms);
            pb::ClusterStatus {
                name: c.name.clone(),
                locality: Some(common::Locality::from(&c.locality)),
                report_age_ms: last.map_or(0, |t| now.saturating_sub(t)),
                lease_expired: !engine.is_leased(&c.name),
                proxies: per_cluster.get(&c.name).copied().unwrap_or(0),
            }
        })
        .collect();
    let services = mesh
        .weights()
        .iter()
        .map(|(host, w)| pb::ServiceSummary {
            host: host.clone(),
            version: mesh.version_of(host),
            localities: w.localities.len() as u32,
            localities_healthy: w
                .localities
                .iter()
                .filter(|l| l.verdict == Verdict::Healthy && l.takes_traffic())
                .count() as u32,
            localities_drained: w
                .localities
                .iter()
                .filter(|l| matches!(l.standing, Standing::Drained(_)))
                .count() as u32,
        })
        .collect();
    pb::Mesh {
        read: None,
        clusters,
        services,
        proxies_synced: 0,
        proxies_total: 0,
    }
}

/// One service's rows, localities and drains from the applied state.
fn service_view(applied: &Applied, host: &str) -> Option<pb::ServiceStatus> {
    let mesh = &applied.mesh;
    let weights = mesh.weights().get(host)?;
    let service = mesh.topology().services.get(host)?;
    let rows = weight_rows(weights, service, mesh.epoch_ms());
    let localities = weights
        .localities
        .iter()
        .enumerate()
        .map(|(i, status)| {
            let name = weights.destination(i);
            let explanation = rows
                .iter()
                .flat_map(|r| &r.entries)
                .find(|e| &e.destination == name)
                .map(|e| e.explanation.clone())
                .unwrap_or_default();
            pb::LocalityHealth {
                locality: Some(common::Locality::from(name)),
                verdict: common::Verdict::from(status.verdict) as i32,
                since_ms: status.since_ms,
                signals: Some(common::Signals::from(&status.signals)),
                explanation,
            }
        })
        .collect();
    let drains = mesh
        .engine()
        .drains
        .iter()
        .filter(|d| d.service.as_deref().is_none_or(|s| s == host))
        .map(|d| pb::Drain {
            target: drain_target_text(&d.target),
            service: d.service.clone().unwrap_or_default(),
            reason: d.reason.clone(),
            requested_by: mesh
                .drain_requester(&d.target, d.service.as_deref())
                .to_string(),
            since_ms: d.since_ms,
        })
        .collect();
    Some(pb::ServiceStatus {
        read: None,
        host: host.to_string(),
        version: mesh.version_of(host),
        rows: rows.iter().map(common::WeightRow::from).collect(),
        localities,
        drains,
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl StatusRpc for StatusService {
    async fn get_mesh(
        &self,
        request: Request<pb::GetMeshRequest>,
    ) -> Result<Response<pb::Mesh>, Status> {
        self.node.authz.authorize(&request, Action::Read)?;
        let read = self.read_info(request.get_ref().consistent).await?;
        let mut mesh = self.node.state.read(|a| mesh_view(a, &self.registry));
        let latest = self.node.state.read(|a| a.mesh.mesh_version());
        let statuses = self.registry.statuses(
            "",
            latest,
            self.node.id,
            wall_clock_ms(),
            DEFAULT_STALE_AFTER,
        );
        mesh.proxies_total = statuses.len() as u32;
        mesh.proxies_synced = statuses
            .iter()
            .filter(|s| s.state == pb::SyncState::Synced as i32)
            .count() as u32;
        mesh.read = Some(read);
        Ok(Response::new(mesh))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        self.node.authz.authorize(&request, Action::Read)?;
        let read = self.read_info(request.get_ref().consistent).await?;
        let host = &request.get_ref().host;
        let mut view = self
            .node
            .state
            .read(|a| service_view(a, host))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no service {host:?} in the mesh (a ServiceEntry host with endpoints)"
                ))
            })?;
        view.read = Some(read);
        Ok(Response::new(view))
    }

    async fn list_proxies(
        &self,
        request: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        self.node.authz.authorize(&request, Action::Read)?;
        let message = request.get_ref();
        let read = self.read_info(message.consistent).await?;
        let latest = self.node.state.read(|a| a.mesh.mesh_version());
        let mut proxies = self.registry.statuses(
            &message.cluster,
            latest,
            self.node.id,
            wall_clock_ms(),
            DEFAULT_STALE_AFTER,
        );
        let mut unreachable_members = Vec::new();
        if !message.local_only {
            let members: Vec<(u64, String)> = self.node.state.read(|a| {
                a.membership
                    .membership()
                    .nodes()
                    .filter(|(id, _)| **id != self.node.id)
                    .map(|(id, n)| (*id, n.addr.clone()))
                    .collect()
            });
            for (id, address) in members {
                let asked = async {
                    let channel = self
                        .node
                        .dialer
                        .channel(&address)
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    let mut request = Request::new(pb::ListProxiesRequest {
                        cluster: message.cluster.clone(),
                        consistent: false,
                        local_only: true,
                    });
                    request.set_timeout(std::time::Duration::from_secs(2));
                    StatusClient::new(channel).list_proxies(request).await
                };
                match asked.await {
                    Ok(r) => proxies.extend(r.into_inner().proxies.into_iter().map(|mut p| {
                        // Lag against the newest version this node knows.
                        p.lag = latest.saturating_sub(p.acked_version);
                        p
                    })),
                    Err(s) => {
                        unreachable_members.push(format!("node {id} at {address}: {}", s.message()))
                    }
                }
            }
        }
        proxies.sort_by(|a, b| (&a.cluster, &a.proxy_id).cmp(&(&b.cluster, &b.proxy_id)));
        Ok(Response::new(pb::ListProxiesResponse {
            read: Some(read),
            proxies,
            unreachable_members,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.node.authz.authorize(&request, Action::Read)?;
        let message = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let node = self.node.clone();
        let mut applied = node.raft_metrics();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut next = message.since_index;
            loop {
                let batch: Vec<pb::Event> = node.state.read(|a| {
                    a.mesh
                        .events()
                        .filter(|e| e.index >= next)
                        .filter(|e| message.service.is_empty() || e.service == message.service)
                        .map(to_event)
                        .collect()
                });
                let newest = node
                    .state
                    .read(|a| a.mesh.events().next_back().map(|e| e.index));
                for event in batch {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if let Some(newest) = newest {
                    next = next.max(newest + 1);
                }
                if !message.follow {
                    return;
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_raft(
        &self,
        request: Request<pb::GetRaftRequest>,
    ) -> Result<Response<pb::RaftStatus>, Status> {
        self.node.authz.authorize(&request, Action::Read)?;
        let metrics = self.node.raft_metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let matched = |id: u64| -> u64 {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |l| l.index)
        };
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        let is_leader = metrics.current_leader == Some(metrics.id);
        // openraft 0.9 does not publish the commit index; on the leader it is the highest
        // index a majority of voters has, elsewhere the applied index is its lower bound.
        let commit_index = if is_leader {
            let mut indexes: Vec<u64> = voters
                .iter()
                .map(|id| {
                    if *id == metrics.id {
                        metrics.last_log_index.unwrap_or(0)
                    } else {
                        matched(*id)
                    }
                })
                .collect();
            indexes.sort_unstable_by(|a, b| b.cmp(a));
            indexes
                .get(voters.len() / 2)
                .copied()
                .unwrap_or(applied)
                .max(applied)
        } else {
            applied
        };
        let members = membership
            .nodes()
            .map(|(id, node)| pb::RaftMember {
                node_id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: if *id == metrics.id {
                    metrics.last_log_index.unwrap_or(0)
                } else {
                    matched(*id)
                },
            })
            .collect();
        Ok(Response::new(pb::RaftStatus {
            node_id: metrics.id,
            leader_id: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index,
            applied_index: applied,
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            members,
            out_of_touch_ms: self.node.out_of_touch().as_millis() as u64,
            cut_off: self.node.cut_off().is_some(),
        }))
    }
}
