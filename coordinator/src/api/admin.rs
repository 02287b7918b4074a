//! `fulcrum.status.v1.Admin`: changes to the mesh. Admin identities only (and a
//! coordinator adding itself, for `--join`).
//!
//! Configuration is validated here with fulcrum-policy, off the Raft path: an invalid
//! object never reaches the log, and the caller gets every error with its field path as
//! `InvalidArgument`. Writes sent to a follower are forwarded to the leader; membership
//! changes must run on the leader, so a follower answers them with `Unavailable` and the
//! leader's address (clients retry there).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;

use fulcrum_policy::engine::DrainTarget;
use fulcrum_policy::{ConfigSet, Locality, Outcome as LoadOutcome};
use fulcrum_proto::common::v1 as common;
use fulcrum_proto::status::v1 as pb;
use fulcrum_proto::status::v1::admin_server::Admin;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tonic::{Request, Response, Status};

use crate::mesh::{ApplyAction, Change, ObjectKey, Outcome, store_object};
use crate::node::{Node, forward_to_leader};
use crate::security::{Action, Caller, Role};

/// Most bytes of configuration text one Apply may carry.
pub const MAX_APPLY_BYTES: usize = 8 * 1024 * 1024;
/// Most errors quoted in an `InvalidArgument` message (all are in the details).
const QUOTED_ERRORS: usize = 20;

/// Serves Admin for one node.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// Serves `node`'s admin API.
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

fn refused(outcome: Outcome) -> Status {
    match outcome {
        Outcome::Refused { reason } => Status::invalid_argument(reason),
        other => Status::internal(format!(
            "unexpected answer from the state machine: {other:?}"
        )),
    }
}

/// A drain target: a locality when it has a `/`, otherwise a cluster name.
fn parse_target(node: &Node, text: &str) -> Result<DrainTarget, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Status::invalid_argument(
            "target: required: a cluster name or a locality (region/zone)",
        ));
    }
    node.state.read(|a| {
        let topology = a.mesh.topology();
        if text.contains('/') {
            let locality = Locality::from_str(text)
                .map_err(|e| Status::invalid_argument(format!("target: {e}")))?;
            let known = topology.clusters.values().any(|c| c.locality == locality)
                || topology
                    .services
                    .values()
                    .any(|s| s.locality_index(&locality).is_some());
            if !known {
                return Err(Status::invalid_argument(format!(
                    "target: no cluster or endpoint is at locality {locality}"
                )));
            }
            Ok(DrainTarget::Locality(locality))
        } else if topology.clusters.contains_key(text) {
            Ok(DrainTarget::Cluster(text.to_string()))
        } else {
            let known: Vec<&str> = topology.clusters.keys().map(String::as_str).collect();
            Err(Status::invalid_argument(format!(
                "target: no MeshCluster named {text:?} (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )))
        }
    })
}

fn check_service(node: &Node, service: &str) -> Result<Option<String>, Status> {
    if service.is_empty() {
        return Ok(None);
    }
    let known = node.state.read(|a| a.mesh.weights().contains_key(service));
    if known {
        Ok(Some(service.to_string()))
    } else {
        Err(Status::invalid_argument(format!(
            "service: no service {service:?} in the mesh"
        )))
    }
}

fn members(node: &Node) -> Vec<pb::RaftMember> {
    let metrics = node.raft_metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, n)| pb::RaftMember {
            node_id: *id,
            address: n.addr.clone(),
            voter: voters.contains(id),
            matched_index: 0,
        })
        .collect()
}

fn membership_status(node: &Node, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forward_to_leader(
            f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            "membership changes run on the leader",
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(e.to_string())
        }
        RaftError::Fatal(e) => {
            Status::unavailable(format!("Raft on node {} stopped: {e}", node.id))
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        self.node.authz.authorize(&request, Action::Admin)?;
        let message = request.into_inner();
        let bytes: usize = message.documents.iter().map(|d| d.text.len()).sum();
        if bytes > MAX_APPLY_BYTES {
            return Err(Status::invalid_argument(format!(
                "documents: {bytes} bytes, more than the limit of {MAX_APPLY_BYTES}; apply in parts"
            )));
        }
        let mut config = ConfigSet::new();
        for (i, doc) in message.documents.iter().enumerate() {
            let source = if doc.source.is_empty() {
                format!("document {}", i + 1)
            } else {
                doc.source.clone()
            };
            config.add_text(&source, &doc.text);
        }
        let diagnostics: Vec<common::Diagnostic> =
            config.diagnostics().map(common::Diagnostic::from).collect();
        if config.has_errors() {
            let errors: Vec<String> = config
                .diagnostics()
                .filter(|d| d.is_error())
                .map(|d| d.to_string())
                .collect();
            let mut text = errors
                .iter()
                .take(QUOTED_ERRORS)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            if errors.len() > QUOTED_ERRORS {
                text.push_str(&format!("\n(and {} more)", errors.len() - QUOTED_ERRORS));
            }
            return Err(Status::invalid_argument(format!(
                "the configuration is invalid; nothing was applied:\n{text}"
            )));
        }
        let mut results = Vec::new();
        let mut objects = Vec::new();
        for loaded in &config.objects {
            match &loaded.outcome {
                LoadOutcome::Accepted(resource) => {
                    let stored = store_object(resource);
                    objects.push(stored);
                }
                LoadOutcome::Ignored { kind, .. } => {
                    let object = loaded.object.clone();
                    results.push(pb::ApplyResult {
                        kind: kind.clone(),
                        namespace: object
                            .as_ref()
                            .map(|o| o.namespace.clone())
                            .unwrap_or_default(),
                        name: object.map(|o| o.name).unwrap_or_default(),
                        action: pb::ApplyAction::Ignored as i32,
                    });
                }
                LoadOutcome::Rejected => {}
            }
        }
        let current: Vec<(ObjectKey, ApplyAction)> = self.node.state.read(|a| {
            objects
                .iter()
                .map(|o| {
                    let action = match a.mesh.object(&o.key) {
                        None => ApplyAction::Created,
                        Some(s) if s.json == o.json => ApplyAction::Unchanged,
                        Some(_) => ApplyAction::Updated,
                    };
                    (o.key.clone(), action)
                })
                .collect()
        });
        let everything_unchanged = current.iter().all(|(_, a)| *a == ApplyAction::Unchanged);
        let (index, actions) = if message.dry_run || objects.is_empty() || everything_unchanged {
            (0, current)
        } else {
            let proposed = self.node.propose(Change::Apply { objects }).await?;
            match proposed.outcome {
                Outcome::Applied { actions } => (proposed.index, actions),
                other => return Err(refused(other)),
            }
        };
        for (key, action) in actions {
            results.push(pb::ApplyResult {
                kind: key.kind,
                namespace: key.namespace,
                name: key.name,
                action: match action {
                    ApplyAction::Created => pb::ApplyAction::Created,
                    ApplyAction::Updated => pb::ApplyAction::Updated,
                    ApplyAction::Unchanged => pb::ApplyAction::Unchanged,
                } as i32,
            });
        }
        Ok(Response::new(pb::ApplyResponse {
            index,
            results,
            diagnostics,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.node.authz.authorize(&request, Action::Admin)?;
        let m = request.into_inner();
        if m.kind.is_empty() || m.name.is_empty() {
            return Err(Status::invalid_argument("kind and name are required"));
        }
        let key = ObjectKey {
            kind: m.kind,
            namespace: if m.namespace.is_empty() {
                "default".to_string()
            } else {
                m.namespace
            },
            name: m.name,
        };
        let proposed = self.node.propose(Change::Delete { key }).await?;
        match proposed.outcome {
            Outcome::Deleted { existed } => Ok(Response::new(pb::DeleteResponse {
                index: proposed.index,
                existed,
            })),
            other => Err(refused(other)),
        }
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let caller = self.node.authz.authorize(&request, Action::Admin)?;
        let m = request.into_inner();
        if m.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reason: a drain needs a reason (it is shown in every explanation)",
            ));
        }
        let target = parse_target(&self.node, &m.target)?;
        let service = check_service(&self.node, &m.service)?;
        let requested_by = match &caller {
            Caller::Verified(id) => id.to_string(),
            Caller::Anonymous => "anonymous (insecure-dev)".to_string(),
        };
        let proposed = self
            .node
            .propose(Change::Drain {
                target,
                service,
                reason: m.reason,
                requested_by,
            })
            .await?;
        match proposed.outcome {
            Outcome::Drained => Ok(Response::new(pb::DrainResponse {
                index: proposed.index,
            })),
            other => Err(refused(other)),
        }
    }

    async fn undrain(
        &self,
        request: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.node.authz.authorize(&request, Action::Admin)?;
        let m = request.into_inner();
        let target = parse_target(&self.node, &m.target)?;
        let service = (!m.service.is_empty()).then_some(m.service);
        let proposed = self
            .node
            .propose(Change::Undrain { target, service })
            .await?;
        match proposed.outcome {
            Outcome::Undrained { removed: 0 } => Err(Status::not_found(format!(
                "no drain of {} is in place",
                m.target
            ))),
            Outcome::Undrained { .. } => Ok(Response::new(pb::DrainResponse {
                index: proposed.index,
            })),
            other => Err(refused(other)),
        }
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = self.node.authz.caller(&request)?;
        let m = request.into_inner();
        // A coordinator may add itself (`--join`); anything else needs an admin.
        let self_join =
            matches!(&caller, Caller::Verified(id) if id.role == Role::Coordinator(m.node_id));
        // Either way the caller must be of this trust domain: a coordinator joining is
        // checked as a coordinator, anyone else as an admin.
        let needed = if self_join {
            Action::Raft
        } else {
            Action::Admin
        };
        self.node.authz.check(&caller, needed)?;
        if m.node_id == 0 {
            return Err(Status::invalid_argument(
                "node_id: must be a positive number",
            ));
        }
        if m.address.parse::<std::net::SocketAddr>().is_err() && !m.address.contains(':') {
            return Err(Status::invalid_argument(format!(
                "address: {:?} is not host:port",
                m.address
            )));
        }
        if !self.node.is_leader() {
            return Err(forward_to_leader(
                self.node.leader(),
                "membership changes run on the leader",
            ));
        }
        let existing = self
            .node
            .raft_metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&m.node_id)
            .cloned();
        if let Some(node) = &existing {
            if node.addr != m.address {
                return Err(Status::already_exists(format!(
                    "node id {} is already a member at {}; pick another id or remove it first",
                    m.node_id, node.addr
                )));
            }
        } else {
            self.node
                .raft
                .add_learner(m.node_id, BasicNode::new(&m.address), true)
                .await
                .map_err(|e| membership_status(&self.node, e))?;
        }
        let mut index = self
            .node
            .state
            .read(|a| a.last_applied.map_or(0, |l| l.index));
        let is_voter = self
            .node
            .raft_metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == m.node_id);
        if !m.learner_only && !is_voter {
            let response = self
                .node
                .raft
                .change_membership(ChangeMembers::AddVoterIds([m.node_id].into()), false)
                .await
                .map_err(|e| membership_status(&self.node, e))?;
            index = response.log_id.index;
        }
        Ok(Response::new(pb::MembershipResponse {
            index,
            members: members(&self.node),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.node.authz.authorize(&request, Action::Admin)?;
        let id = request.into_inner().node_id;
        if !self.node.is_leader() {
            return Err(forward_to_leader(
                self.node.leader(),
                "membership changes run on the leader",
            ));
        }
        let membership = self
            .node
            .raft_metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        let response = self
            .node
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| membership_status(&self.node, e))?;
        Ok(Response::new(pb::MembershipResponse {
            index: response.log_id.index,
            members: members(&self.node),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.node.authz.authorize(&request, Action::Admin)?;
        Err(Status::unimplemented(
            "openraft 0.9 has no leadership transfer; stop the leader (it is re-elected elsewhere in under a second)",
        ))
    }
}
