//! The `fulcrumctl` commands that talk to a running mesh: status, services, explain,
//! events, proxies, apply, delete, drain, undrain, members.
//!
//! Every command connects to one coordinator (any node: reads are answered locally,
//! writes are forwarded to the leader; membership changes are retried at the leader the
//! node names). Tables for people, `-o json` for machines. Exit codes: 0 done, 1 the mesh
//! refused (invalid argument, not found, permission denied), 2 cannot connect or bad
//! usage.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use fulcrum_policy::Locality;
use fulcrum_policy::engine::explain::weight;
use fulcrum_proto::common::v1 as common;
use fulcrum_proto::status::v1 as pb;
use fulcrum_proto::status::v1::admin_client::AdminClient;
use fulcrum_proto::status::v1::status_client::StatusClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::{Format, Outcome};
use crate::node::LEADER_ADDRESS_HEADER;
use crate::security::{Credentials, Role};
use crate::transport::Dialer;

/// Where the mesh is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Coordinator addresses (any node; more, comma-separated, are tried in turn while
    /// one cannot be reached).
    #[arg(
        long,
        value_name = "ADDR",
        env = "FULCRUM_COORDINATOR",
        default_value = "127.0.0.1:7001"
    )]
    pub coordinator: String,
    /// Certificate directory (ca.pem, admin-<name>.pem); see `fulcrumctl certs init`.
    #[arg(long, value_name = "DIR", env = "FULCRUM_CERTS")]
    pub certs: Option<PathBuf>,
    /// Which admin certificate to use (admin-<NAME>.pem); the first one when omitted.
    #[arg(long = "as", value_name = "NAME", env = "FULCRUM_ADMIN")]
    pub admin: Option<String>,
    /// Plaintext, for a coordinator started with --insecure-dev.
    #[arg(long, global = true)]
    pub insecure_dev: bool,
    /// Give up on a call after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

impl ConnectArgs {
    fn dialer(&self) -> Result<Dialer, String> {
        if self.insecure_dev {
            return Ok(Dialer::new(None));
        }
        let Some(dir) = &self.certs else {
            return Err(
                "no --certs DIR (or FULCRUM_CERTS) given; use --insecure-dev only for a coordinator started with it"
                    .to_string(),
            );
        };
        let credentials = match &self.admin {
            Some(name) => Credentials::load(dir, &Role::Admin(name.clone())),
            None => Credentials::first_admin(dir),
        }
        .map_err(|e| e.to_string())?;
        Ok(Dialer::new(Some(credentials.coordinator_client_tls())))
    }

    fn channel(&self, address: &str) -> Result<Channel, String> {
        self.dialer()?.channel(address).map_err(|e| e.to_string())
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(Duration::from_secs(self.timeout.max(1)));
        r
    }
}

/// `fulcrumctl members ...`
#[derive(Debug, Clone, Subcommand)]
pub enum MembersCommand {
    /// The Raft group: members, leader, replication.
    List {
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Add a node (it must be running, started without --init).
    Add {
        /// Its node id.
        node_id: u64,
        /// Its address (host:port).
        address: String,
        /// Add as a learner only (it replicates but does not vote).
        #[arg(long)]
        learner: bool,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a node.
    Remove {
        /// Its node id.
        node_id: u64,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// The commands that talk to a mesh.
#[derive(Debug, Clone, Subcommand)]
pub enum RemoteCommand {
    /// Leader, term, members, clusters with report age, proxies.
    Status {
        /// Linearizable: confirm with the leader before answering.
        #[arg(long)]
        consistent: bool,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Every service with its table version and locality health.
    Services {
        /// Linearizable read.
        #[arg(long)]
        consistent: bool,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Per source locality: the weights of a service and why.
    Explain {
        /// The service host.
        host: String,
        /// Linearizable read.
        #[arg(long)]
        consistent: bool,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// The event log (verdict changes, drains, config changes).
    Events {
        /// Keep following new events.
        #[arg(long)]
        follow: bool,
        /// Only events of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only events at or after this log index.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Proxies and whether they hold the latest version (SYNCED / STALE / NACKED).
    Proxies {
        /// Only this cluster's proxies.
        #[arg(long)]
        cluster: Option<String>,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Validate and apply configuration files.
    Apply {
        /// Files or directories (recursively).
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE|DIR",
            required = true
        )]
        files: Vec<PathBuf>,
        /// Validate against the mesh and show what would change, without applying.
        #[arg(long)]
        dry_run: bool,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete one configuration object.
    Delete {
        /// Its kind (DestinationRule, ServiceEntry, MeshCluster, ...).
        kind: String,
        /// Its name, or namespace/name.
        name: String,
        /// Its namespace (default `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Take a cluster or a locality (region/zone[/subzone]) out of service.
    Drain {
        /// A cluster name or a locality.
        target: String,
        /// Only this service (every service when omitted).
        #[arg(long)]
        service: Option<String>,
        /// Why: shown in every explanation and event.
        #[arg(long)]
        reason: String,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Put a drained cluster or locality back.
    Undrain {
        /// A cluster name or a locality.
        target: String,
        /// Only the drain of this service.
        #[arg(long)]
        service: Option<String>,
        /// Where and as whom.
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// The Raft group's membership.
    #[command(subcommand)]
    Members(MembersCommand),
}

impl RemoteCommand {
    /// Where to connect and as whom.
    pub fn connect(&self) -> &ConnectArgs {
        match self {
            RemoteCommand::Status { connect, .. }
            | RemoteCommand::Services { connect, .. }
            | RemoteCommand::Explain { connect, .. }
            | RemoteCommand::Events { connect, .. }
            | RemoteCommand::Proxies { connect, .. }
            | RemoteCommand::Apply { connect, .. }
            | RemoteCommand::Delete { connect, .. }
            | RemoteCommand::Drain { connect, .. }
            | RemoteCommand::Undrain { connect, .. }
            | RemoteCommand::Members(
                MembersCommand::List { connect }
                | MembersCommand::Add { connect, .. }
                | MembersCommand::Remove { connect, .. },
            ) => connect,
        }
    }
}

fn locality_text(l: Option<&common::Locality>) -> String {
    l.and_then(|l| Locality::try_from(l).ok())
        .map_or_else(|| "-".to_string(), |l| l.to_string())
}

fn verdict_text(v: i32) -> &'static str {
    match common::Verdict::try_from(v) {
        Ok(common::Verdict::Healthy) => "Healthy",
        Ok(common::Verdict::Degraded) => "Degraded",
        Ok(common::Verdict::Failed) => "Failed",
        Ok(common::Verdict::Recovering) => "Recovering",
        Ok(common::Verdict::Unknown) => "Unknown",
        Ok(common::Verdict::Drained) => "Drained",
        _ => "-",
    }
}

fn sync_text(v: i32) -> &'static str {
    match pb::SyncState::try_from(v) {
        Ok(pb::SyncState::Synced) => "SYNCED",
        Ok(pb::SyncState::Stale) => "STALE",
        Ok(pb::SyncState::Nacked) => "NACKED",
        Ok(pb::SyncState::Disconnected) => "DISCONNECTED",
        _ => "-",
    }
}

fn event_kind_text(v: i32) -> &'static str {
    match pb::EventKind::try_from(v) {
        Ok(pb::EventKind::VerdictChanged) => "verdict",
        Ok(pb::EventKind::Drained) => "drained",
        Ok(pb::EventKind::Undrained) => "undrained",
        Ok(pb::EventKind::ConfigApplied) => "config",
        Ok(pb::EventKind::ConfigDeleted) => "deleted",
        Ok(pb::EventKind::MembershipChanged) => "membership",
        _ => "-",
    }
}

fn read_json(r: Option<&pb::ReadInfo>) -> Value {
    r.map_or(Value::Null, |r| {
        json!({"nodeId": r.node_id, "appliedIndex": r.applied_index, "leaderId": r.leader_id, "consistent": r.consistent})
    })
}

fn read_line(r: Option<&pb::ReadInfo>) -> String {
    r.map_or_else(String::new, |r| {
        format!(
            "(answered by node {} at applied index {}, leader {}{})",
            r.node_id,
            r.applied_index,
            if r.leader_id == 0 {
                "unknown".to_string()
            } else {
                r.leader_id.to_string()
            },
            if r.consistent { ", linearizable" } else { "" }
        )
    })
}

fn row_json(row: &common::WeightRow) -> Value {
    json!({
        "service": row.service,
        "subset": row.subset,
        "source": locality_text(row.source.as_ref()),
        "entries": row.entries.iter().map(|e| json!({
            "destination": locality_text(e.destination.as_ref()),
            "weightBp": e.weight_bp,
            "priority": e.priority,
            "priorityReason": e.priority_reason,
            "verdict": verdict_text(e.verdict),
            "verdictSinceMs": e.verdict_since_ms,
            "explanation": e.explanation,
            "signals": e.signals.as_ref().map(|s| json!({
                "readyEndpoints": s.ready_endpoints, "totalEndpoints": s.total_endpoints,
                "requests": s.requests, "http5xx": s.http_5xx, "gatewayErrors": s.gateway_errors,
                "connectFailures": s.connect_failures, "windowMs": s.window_ms,
            })),
        })).collect::<Vec<_>>(),
    })
}

fn member_json(m: &pb::RaftMember) -> Value {
    json!({"nodeId": m.node_id, "address": m.address, "voter": m.voter, "matchedIndex": m.matched_index})
}

/// True when the coordinator could not be reached at all (so another may be tried).
fn unreachable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status.metadata().get(LEADER_ADDRESS_HEADER).is_none()
        && (status.message().contains("connect") || status.message().contains("transport"))
}

/// Why a call failed, with the causes tonic keeps under its message (`tcp connect error`
/// alone does not say that the connection was refused, or timed out).
fn reason(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = e.source();
    }
    text
}

/// Exit code for a gRPC failure, after printing it.
fn failed(stderr: &mut dyn Write, status: &tonic::Status) -> Outcome {
    let _ = writeln!(stderr, "fulcrumctl: {}", reason(status));
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::NotFound
        | tonic::Code::PermissionDenied
        | tonic::Code::AlreadyExists
        | tonic::Code::FailedPrecondition
        | tonic::Code::Unimplemented => Outcome::Invalid,
        _ => Outcome::Failed,
    }
}

/// Runs a remote command.
pub fn run(command: &RemoteCommand, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Outcome {
    let connect = command.connect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(stderr, "fulcrumctl: cannot start a runtime: {e}");
            return Outcome::Failed;
        }
    };
    runtime.block_on(async {
        // Try each listed coordinator in turn while the previous cannot be reached.
        let addresses: Vec<&str> = connect
            .coordinator
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        let mut unreached = Vec::new();
        for address in &addresses {
            // Channels need the runtime, even lazy ones.
            let channel = match connect.channel(address) {
                Ok(c) => c,
                Err(e) => {
                    let _ = writeln!(stderr, "fulcrumctl: {e}");
                    return Outcome::Failed;
                }
            };
            match dispatch(command, connect, channel, stdout).await {
                Ok(outcome) => return outcome,
                Err(status) if unreachable(&status) => {
                    unreached.push(format!("{address} ({})", reason(&status)));
                }
                Err(status) => return failed(stderr, &status),
            }
        }
        match unreached.is_empty() {
            true => {
                let _ = writeln!(stderr, "fulcrumctl: --coordinator names no address");
            }
            false => {
                let _ = writeln!(
                    stderr,
                    "fulcrumctl: no coordinator could be reached: {}",
                    unreached.join("; ")
                );
            }
        }
        Outcome::Failed
    })
}

fn out(stdout: &mut dyn Write, text: impl AsRef<str>) {
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = stdout.write_all(text.as_ref().as_bytes());
}

fn print_json(stdout: &mut dyn Write, value: &Value) {
    out(
        stdout,
        format!(
            "{}\n",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
    );
}

async fn dispatch(
    command: &RemoteCommand,
    connect: &ConnectArgs,
    channel: Channel,
    stdout: &mut dyn Write,
) -> Result<Outcome, tonic::Status> {
    let mut status = StatusClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    let json = connect.output == Format::Json;
    match command {
        RemoteCommand::Status { consistent, .. } => {
            let mesh = status
                .get_mesh(connect.request(pb::GetMeshRequest {
                    consistent: *consistent,
                }))
                .await?
                .into_inner();
            let raft = status
                .get_raft(connect.request(pb::GetRaftRequest {}))
                .await?
                .into_inner();
            if json {
                print_json(
                    stdout,
                    &json!({
                        "read": read_json(mesh.read.as_ref()),
                        "raft": {"nodeId": raft.node_id, "leaderId": raft.leader_id, "term": raft.term,
                                 "lastLogIndex": raft.last_log_index, "commitIndex": raft.commit_index,
                                 "appliedIndex": raft.applied_index, "snapshotIndex": raft.snapshot_index,
                                 "outOfTouchMs": raft.out_of_touch_ms, "cutOff": raft.cut_off,
                                 "members": raft.members.iter().map(member_json).collect::<Vec<_>>()},
                        "clusters": mesh.clusters.iter().map(|c| json!({
                            "name": c.name, "locality": locality_text(c.locality.as_ref()),
                            "reportAgeMs": c.report_age_ms, "leaseExpired": c.lease_expired, "proxies": c.proxies,
                        })).collect::<Vec<_>>(),
                        "proxiesSynced": mesh.proxies_synced, "proxiesTotal": mesh.proxies_total,
                    }),
                );
                return Ok(Outcome::Ok);
            }
            let cut_off = match raft.cut_off {
                true => format!(
                    "\nnode {} has been out of touch with its group for {:.1}s: it sends proxies \
                     to another coordinator\n",
                    raft.node_id,
                    raft.out_of_touch_ms as f64 / 1000.0
                ),
                false => String::new(),
            };
            let mut text = format!(
                "leader: {}   term: {}   node {}: commit {} applied {} snapshot {}\n{cut_off}\nMEMBER  ADDRESS                 VOTER  MATCHED\n",
                if raft.leader_id == 0 {
                    "none".to_string()
                } else {
                    format!("node {}", raft.leader_id)
                },
                raft.term,
                raft.node_id,
                raft.commit_index,
                raft.applied_index,
                raft.snapshot_index
            );
            for m in &raft.members {
                text.push_str(&format!(
                    "{:<7} {:<23} {:<6} {}\n",
                    m.node_id,
                    m.address,
                    if m.voter { "yes" } else { "no" },
                    m.matched_index
                ));
            }
            text.push_str("\nCLUSTER        LOCALITY                    REPORTED   PROXIES\n");
            for c in &mesh.clusters {
                let age = if c.lease_expired && c.report_age_ms == 0 {
                    "never".to_string()
                } else {
                    format!(
                        "{:.1}s ago{}",
                        c.report_age_ms as f64 / 1000.0,
                        if c.lease_expired {
                            " (lease expired)"
                        } else {
                            ""
                        }
                    )
                };
                text.push_str(&format!(
                    "{:<14} {:<27} {:<10} {}\n",
                    c.name,
                    locality_text(c.locality.as_ref()),
                    age,
                    c.proxies
                ));
            }
            text.push_str(&format!(
                "\nproxies on this node: {} of {} synced\n{}\n",
                mesh.proxies_synced,
                mesh.proxies_total,
                read_line(mesh.read.as_ref())
            ));
            out(stdout, text);
        }
        RemoteCommand::Services { consistent, .. } => {
            let mesh = status
                .get_mesh(connect.request(pb::GetMeshRequest {
                    consistent: *consistent,
                }))
                .await?
                .into_inner();
            if json {
                print_json(
                    stdout,
                    &json!({
                        "read": read_json(mesh.read.as_ref()),
                        "services": mesh.services.iter().map(|s| json!({
                            "host": s.host, "version": s.version, "localities": s.localities,
                            "healthy": s.localities_healthy, "drained": s.localities_drained,
                        })).collect::<Vec<_>>(),
                    }),
                );
                return Ok(Outcome::Ok);
            }
            let mut text =
                "SERVICE                                   VERSION  LOCALITIES  HEALTHY  DRAINED\n"
                    .to_string();
            for s in &mesh.services {
                text.push_str(&format!(
                    "{:<41} {:<8} {:<11} {:<8} {}\n",
                    s.host, s.version, s.localities, s.localities_healthy, s.localities_drained
                ));
            }
            text.push_str(&format!("{}\n", read_line(mesh.read.as_ref())));
            out(stdout, text);
        }
        RemoteCommand::Explain {
            host, consistent, ..
        } => {
            let service = status
                .get_service(connect.request(pb::GetServiceRequest {
                    host: host.clone(),
                    consistent: *consistent,
                }))
                .await?
                .into_inner();
            if json {
                print_json(
                    stdout,
                    &json!({
                        "read": read_json(service.read.as_ref()),
                        "host": service.host, "version": service.version,
                        "rows": service.rows.iter().map(row_json).collect::<Vec<_>>(),
                        "localities": service.localities.iter().map(|l| json!({
                            "locality": locality_text(l.locality.as_ref()), "verdict": verdict_text(l.verdict),
                            "sinceMs": l.since_ms, "explanation": l.explanation,
                        })).collect::<Vec<_>>(),
                        "drains": service.drains.iter().map(|d| json!({
                            "target": d.target, "service": d.service, "reason": d.reason,
                            "requestedBy": d.requested_by, "sinceMs": d.since_ms,
                        })).collect::<Vec<_>>(),
                    }),
                );
                return Ok(Outcome::Ok);
            }
            let mut text = format!("{} (version {})\n", service.host, service.version);
            for row in &service.rows {
                let subset = if row.subset.is_empty() {
                    String::new()
                } else {
                    format!(" subset {}", row.subset)
                };
                text.push_str(&format!(
                    "\nfrom {}{}:\n",
                    locality_text(row.source.as_ref()),
                    subset
                ));
                for e in &row.entries {
                    text.push_str(&format!(
                        "  {:<28} {:>7}  P{} ({})  {}\n      {}\n",
                        locality_text(e.destination.as_ref()),
                        weight(e.weight_bp),
                        e.priority,
                        e.priority_reason,
                        verdict_text(e.verdict),
                        e.explanation
                    ));
                }
            }
            for d in &service.drains {
                text.push_str(&format!(
                    "\ndrained: {} ({}) by {}\n",
                    d.target, d.reason, d.requested_by
                ));
            }
            text.push_str(&format!("\n{}\n", read_line(service.read.as_ref())));
            out(stdout, text);
        }
        RemoteCommand::Events {
            follow,
            service,
            since,
            ..
        } => {
            let mut stream = status
                .watch_events(pb::WatchEventsRequest {
                    since_index: *since,
                    service: service.clone().unwrap_or_default(),
                    follow: *follow,
                })
                .await?
                .into_inner();
            while let Some(event) = stream.message().await? {
                if json {
                    out(
                        stdout,
                        format!(
                            "{}\n",
                            json!({
                                "index": event.index, "timeMs": event.time_ms, "kind": event_kind_text(event.kind),
                                "service": event.service, "locality": locality_text(event.locality.as_ref()),
                                "from": verdict_text(event.from), "to": verdict_text(event.to),
                                "explanation": event.explanation,
                            })
                        ),
                    );
                } else {
                    let change = if event.kind == pb::EventKind::VerdictChanged as i32 {
                        format!(
                            " {} {} -> {}:",
                            locality_text(event.locality.as_ref()),
                            verdict_text(event.from),
                            verdict_text(event.to)
                        )
                    } else {
                        String::new()
                    };
                    out(
                        stdout,
                        format!(
                            "#{:<6} {:<9} {}{} {}\n",
                            event.index,
                            event_kind_text(event.kind),
                            event.service,
                            change,
                            event.explanation
                        ),
                    );
                }
                let _ = stdout.flush();
            }
        }
        RemoteCommand::Proxies { cluster, .. } => {
            let list = status
                .list_proxies(connect.request(pb::ListProxiesRequest {
                    cluster: cluster.clone().unwrap_or_default(),
                    consistent: false,
                    local_only: false,
                }))
                .await?
                .into_inner();
            if json {
                print_json(
                    stdout,
                    &json!({
                        "read": read_json(list.read.as_ref()),
                        "proxies": list.proxies.iter().map(|p| json!({
                            "proxyId": p.proxy_id, "cluster": p.cluster, "locality": locality_text(p.locality.as_ref()),
                            "state": sync_text(p.state), "ackedVersion": p.acked_version, "lag": p.lag,
                            "lastNackReason": p.last_nack_reason, "connectedNode": p.connected_node,
                            "lastSeenAgeMs": p.last_seen_age_ms,
                        })).collect::<Vec<_>>(),
                        "unreachableMembers": list.unreachable_members,
                    }),
                );
                return Ok(Outcome::Ok);
            }
            let mut text =
                "PROXY                  CLUSTER      STATE    ACKED    LAG  NODE  LAST NACK\n"
                    .to_string();
            for p in &list.proxies {
                text.push_str(&format!(
                    "{:<22} {:<12} {:<8} {:<8} {:<4} {:<5} {}\n",
                    p.proxy_id,
                    p.cluster,
                    sync_text(p.state),
                    p.acked_version,
                    p.lag,
                    p.connected_node,
                    p.last_nack_reason
                ));
            }
            for m in &list.unreachable_members {
                text.push_str(&format!("(not asked: {m})\n"));
            }
            out(stdout, text);
        }
        RemoteCommand::Apply { files, dry_run, .. } => {
            let mut documents = Vec::new();
            for path in files {
                for file in config_files(path).map_err(tonic::Status::invalid_argument)? {
                    let text = std::fs::read_to_string(&file).map_err(|e| {
                        tonic::Status::invalid_argument(format!("{}: {e}", file.display()))
                    })?;
                    documents.push(pb::Document {
                        source: file.display().to_string(),
                        text,
                    });
                }
            }
            let response = admin
                .apply(connect.request(pb::ApplyRequest {
                    documents,
                    dry_run: *dry_run,
                }))
                .await?
                .into_inner();
            let action = |a: i32| match pb::ApplyAction::try_from(a) {
                Ok(pb::ApplyAction::Created) => "created",
                Ok(pb::ApplyAction::Updated) => "updated",
                Ok(pb::ApplyAction::Unchanged) => "unchanged",
                Ok(pb::ApplyAction::Ignored) => "ignored (not a kind Fulcrum reads)",
                _ => "-",
            };
            if json {
                print_json(
                    stdout,
                    &json!({
                        "index": response.index, "dryRun": dry_run,
                        "results": response.results.iter().map(|r| json!({
                            "kind": r.kind, "namespace": r.namespace, "name": r.name, "action": action(r.action),
                        })).collect::<Vec<_>>(),
                        "warnings": response.diagnostics.iter().map(|d| json!({
                            "source": d.source, "line": d.line, "path": d.path, "message": d.message,
                        })).collect::<Vec<_>>(),
                    }),
                );
                return Ok(Outcome::Ok);
            }
            let mut text = String::new();
            for r in &response.results {
                text.push_str(&format!(
                    "{} {}/{} {}{}\n",
                    r.kind,
                    r.namespace,
                    r.name,
                    action(r.action),
                    if *dry_run { " (dry run)" } else { "" }
                ));
            }
            for d in &response.diagnostics {
                text.push_str(&format!(
                    "warning: {}:{}: {}: {}\n",
                    d.source, d.line, d.path, d.message
                ));
            }
            if response.index > 0 {
                text.push_str(&format!("committed at log index {}\n", response.index));
            }
            out(stdout, text);
        }
        RemoteCommand::Delete {
            kind,
            name,
            namespace,
            ..
        } => {
            let (ns, name) = match (namespace, name.split_once('/')) {
                (Some(ns), _) => (ns.clone(), name.clone()),
                (None, Some((ns, n))) => (ns.to_string(), n.to_string()),
                (None, None) => ("default".to_string(), name.clone()),
            };
            let response = admin
                .delete(connect.request(pb::DeleteRequest {
                    kind: kind.clone(),
                    namespace: ns.clone(),
                    name: name.clone(),
                }))
                .await?
                .into_inner();
            if json {
                print_json(
                    stdout,
                    &json!({"index": response.index, "existed": response.existed}),
                );
            } else if response.existed {
                out(
                    stdout,
                    format!(
                        "{kind} {ns}/{name} deleted (log index {})\n",
                        response.index
                    ),
                );
            } else {
                out(stdout, format!("{kind} {ns}/{name} did not exist\n"));
            }
        }
        RemoteCommand::Drain {
            target,
            service,
            reason,
            ..
        } => {
            let response = admin
                .drain(connect.request(pb::DrainRequest {
                    target: target.clone(),
                    service: service.clone().unwrap_or_default(),
                    reason: reason.clone(),
                }))
                .await?
                .into_inner();
            if json {
                print_json(stdout, &json!({"index": response.index}));
            } else {
                out(
                    stdout,
                    format!("{target} drained (log index {})\n", response.index),
                );
            }
        }
        RemoteCommand::Undrain {
            target, service, ..
        } => {
            let response = admin
                .undrain(connect.request(pb::UndrainRequest {
                    target: target.clone(),
                    service: service.clone().unwrap_or_default(),
                }))
                .await?
                .into_inner();
            if json {
                print_json(stdout, &json!({"index": response.index}));
            } else {
                out(
                    stdout,
                    format!("{target} undrained (log index {})\n", response.index),
                );
            }
        }
        RemoteCommand::Members(action) => {
            let response = match action {
                MembersCommand::List { .. } => {
                    let raft = status
                        .get_raft(connect.request(pb::GetRaftRequest {}))
                        .await?
                        .into_inner();
                    pb::MembershipResponse {
                        index: raft.applied_index,
                        members: raft.members,
                    }
                }
                MembersCommand::Add {
                    node_id,
                    address,
                    learner,
                    ..
                } => {
                    let message = pb::AddMemberRequest {
                        node_id: *node_id,
                        address: address.clone(),
                        learner_only: *learner,
                    };
                    let first = admin.add_member(connect.request(message.clone())).await;
                    at_leader(first, connect, |mut c| {
                        let message = message.clone();
                        async move { c.add_member(connect.request(message)).await }
                    })
                    .await?
                }
                MembersCommand::Remove { node_id, .. } => {
                    let message = pb::RemoveMemberRequest { node_id: *node_id };
                    let first = admin.remove_member(connect.request(message)).await;
                    at_leader(first, connect, |mut c| async move {
                        c.remove_member(connect.request(message)).await
                    })
                    .await?
                }
            };
            if json {
                print_json(
                    stdout,
                    &json!({"index": response.index, "members": response.members.iter().map(member_json).collect::<Vec<_>>()}),
                );
            } else {
                let mut text = "MEMBER  ADDRESS                 VOTER  MATCHED\n".to_string();
                for m in &response.members {
                    text.push_str(&format!(
                        "{:<7} {:<23} {:<6} {}\n",
                        m.node_id,
                        m.address,
                        if m.voter { "yes" } else { "no" },
                        m.matched_index
                    ));
                }
                out(stdout, text);
            }
        }
    }
    Ok(Outcome::Ok)
}

/// Retries a call at the leader when the node answered with the leader's address.
async fn at_leader<T, F, Fut>(
    first: Result<tonic::Response<T>, tonic::Status>,
    connect: &ConnectArgs,
    retry: F,
) -> Result<T, tonic::Status>
where
    F: Fn(AdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match first {
        Ok(r) => Ok(r.into_inner()),
        Err(status) => {
            let Some(leader) = status
                .metadata()
                .get(LEADER_ADDRESS_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
            else {
                return Err(status);
            };
            let channel = connect
                .channel(&leader)
                .map_err(tonic::Status::unavailable)?;
            retry(AdminClient::new(channel))
                .await
                .map(|r| r.into_inner())
        }
    }
}

/// The configuration files at `path`: the file itself, or the .yaml/.yml/.json files of
/// a directory, recursively, sorted.
fn config_files(path: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
