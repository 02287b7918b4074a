//! A drill target reached only through its coordinators' status and admin API: an
//! existing mesh (`fulcrum-drill run FILE --mesh ADDR`). Every call is `fulcrumctl`
//! against the given coordinators, as the mesh's admin; nothing here starts, stops or
//! signals a process.
//!
//! What a drill can do to such a mesh: drain a cluster for its service (`fault: {kind:
//! drain}`) and undrain it. Weights are each cluster's row in `fulcrumctl explain`;
//! traffic, when proxies are named (`--proxy CLUSTER=ADDR`), goes through them. Faults
//! and actions that need process control (killing, pausing, partitioning, backend knobs)
//! are skipped, each with a note in the report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::drill::{Action, Applied, ExplainedRow, Fault, Target};
use crate::harness::{HarnessError, explained_row};

/// Where the mesh's coordinators are and how to talk to them (as `fulcrumctl` takes it).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Coordinator addresses, comma separated (any node).
    pub coordinators: String,
    /// The certificates directory with an admin certificate (`fulcrumctl certs init`).
    pub certs: Option<PathBuf>,
    /// Which admin certificate (`admin-NAME.pem`).
    pub admin: Option<String>,
    /// Plaintext, for coordinators started with `--insecure-dev`.
    pub insecure_dev: bool,
}

/// An existing mesh, as a drill target (shared with the blocking threads that run
/// `fulcrumctl`).
pub struct RemoteMesh(Arc<Mesh>);

/// What is known of the mesh; fixed once connected.
struct Mesh {
    ctl: PathBuf,
    connection: Connection,
    service: String,
    clusters: Vec<(String, String)>,
    proxies: Vec<(u8, SocketAddr)>,
}

const SKIPPED: &str =
    "needs control of the mesh's processes; run this drill on the local mesh (without --mesh)";

impl RemoteMesh {
    /// Reaches the mesh with `ctl` (the `fulcrumctl` binary): reads its clusters, checks
    /// that it serves `service`, and places each of `proxies` (cluster name, outbound
    /// listener) in its cluster.
    pub fn connect(
        ctl: PathBuf,
        connection: Connection,
        service: String,
        proxies: &[(String, SocketAddr)],
    ) -> Result<RemoteMesh, HarnessError> {
        let mut mesh = Mesh {
            ctl,
            connection,
            service,
            clusters: Vec::new(),
            proxies: Vec::new(),
        };
        let status = mesh.json(&["status"])?;
        mesh.clusters = status["clusters"]
            .as_array()
            .map(|clusters| {
                clusters
                    .iter()
                    .filter_map(|c| {
                        Some((
                            c["name"].as_str()?.to_string(),
                            c["locality"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if mesh.clusters.is_empty() {
            return Err(HarnessError::Setup(format!(
                "the mesh at {} has no clusters (no MeshCluster applied)",
                mesh.connection.coordinators
            )));
        }
        if !mesh.serves_service()? {
            return Err(HarnessError::Setup(format!(
                "the mesh at {} has no service {:?} (fulcrumctl services lists what it has)",
                mesh.connection.coordinators, mesh.service
            )));
        }
        for (name, address) in proxies {
            let index = mesh.cluster(name).ok_or_else(|| {
                HarnessError::Setup(format!(
                    "--proxy {name}={address}: the mesh has no cluster {name:?} ({})",
                    mesh.names().join(", ")
                ))
            })?;
            mesh.proxies
                .push((u8::try_from(index).unwrap_or(u8::MAX), *address));
        }
        Ok(RemoteMesh(Arc::new(mesh)))
    }

    /// The index of the cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<usize> {
        self.0.cluster(name)
    }

    /// Runs `work` on a blocking thread (each `fulcrumctl` call is a process).
    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Mesh) -> R + Send + 'static,
    ) -> R {
        let mesh = self.0.clone();
        match tokio::task::spawn_blocking(move || work(&mesh)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Mesh {
    fn cluster(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|(n, _)| n == name)
    }

    fn names(&self) -> Vec<&str> {
        self.clusters.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// `fulcrumctl ARGS`, its standard output, or what it said went wrong.
    fn ctl(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut command = Command::new(&self.ctl);
        command
            .args(args)
            .args(["--timeout", "2", "--coordinator"])
            .arg(&self.connection.coordinators);
        if let Some(certs) = &self.connection.certs {
            command.arg("--certs").arg(certs);
        }
        if let Some(admin) = &self.connection.admin {
            command.args(["--as", admin]);
        }
        if self.connection.insecure_dev {
            command.arg("--insecure-dev");
        }
        let output = command.output().map_err(|source| HarnessError::Spawn {
            name: "fulcrumctl".into(),
            source,
        })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(HarnessError::Setup(format!(
                "fulcrumctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// `fulcrumctl ARGS -o json`, parsed.
    fn json(&self, args: &[&str]) -> Result<serde_json::Value, HarnessError> {
        let mut with_format = args.to_vec();
        with_format.extend(["-o", "json"]);
        let text = self.ctl(&with_format)?;
        serde_json::from_str(&text).map_err(|e| {
            HarnessError::Setup(format!("fulcrumctl {}: not JSON: {e}", args.join(" ")))
        })
    }

    fn serves_service(&self) -> Result<bool, HarnessError> {
        let services = self.json(&["services"])?;
        Ok(services["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["host"] == self.service.as_str())))
    }

    /// Each cluster's row from `fulcrumctl explain` (the version is the table's).
    fn explained(&self) -> Vec<Option<ExplainedRow>> {
        let Ok(service) = self.json(&["explain", &self.service]) else {
            return vec![None; self.clusters.len()];
        };
        let version = service["version"].as_u64().unwrap_or(0);
        let rows = service["rows"].as_array().cloned().unwrap_or_default();
        self.clusters
            .iter()
            .map(|(_, locality)| {
                let row = rows
                    .iter()
                    .find(|r| r["source"] == locality.as_str() && r["subset"] == "")?;
                Some(explained_row(
                    version,
                    row["entries"].as_array()?,
                    "destination",
                ))
            })
            .collect()
    }

    fn drain(&self, cluster: usize, undo: bool) -> Result<Applied, HarnessError> {
        let name = self.clusters[cluster].0.clone();
        if undo {
            self.ctl(&["undrain", &name, "--service", &self.service])?;
        } else {
            self.ctl(&[
                "drain",
                &name,
                "--service",
                &self.service,
                "--reason",
                "fulcrum-drill",
            ])?;
        }
        Ok(Applied::Done)
    }
}

impl Target for RemoteMesh {
    fn clusters(&self) -> Vec<(String, String)> {
        self.0.clusters.clone()
    }

    fn service(&self) -> String {
        self.0.service.clone()
    }

    fn traffic(&self) -> Vec<(u8, SocketAddr)> {
        self.0.proxies.clone()
    }

    async fn rows(&self) -> Vec<Option<ExplainedRow>> {
        self.blocking(|mesh| mesh.explained()).await
    }

    async fn config_lost(&self) -> Vec<String> {
        // The coordinators hold the configuration; proxies are not reachable from here.
        match self.blocking(|mesh| mesh.serves_service()).await {
            Ok(true) => Vec::new(),
            _ => vec![format!(
                "the coordinators at {}",
                self.0.connection.coordinators
            )],
        }
    }

    async fn inject(&mut self, fault: &Fault) -> Result<Applied, HarnessError> {
        match *fault {
            Fault::Drain { cluster } => self.blocking(move |m| m.drain(cluster, false)).await,
            _ => Ok(Applied::Skipped(SKIPPED.into())),
        }
    }

    async fn recover(&mut self, fault: &Fault) -> Result<Applied, HarnessError> {
        match *fault {
            Fault::Drain { cluster } => self.blocking(move |m| m.drain(cluster, true)).await,
            _ => Ok(Applied::Skipped(SKIPPED.into())),
        }
    }

    async fn act(&mut self, _action: &Action) -> Applied {
        Applied::Skipped(SKIPPED.into())
    }
}
