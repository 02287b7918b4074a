//! `ServiceEntry` and `WorkloadEntry`: services and endpoints added to the mesh's registry.
//!
//! Fulcrum reads endpoints (with their localities) from ServiceEntries and WorkloadEntries,
//! so these are how a local mesh, or a mesh outside Kubernetes, says where things run.

use std::collections::BTreeMap;

use crate::decode::{model, string_enum};

string_enum! {
    /// Whether the service is inside or outside the mesh.
    pub enum ServiceLocation {
        /// Outside the mesh.
        MeshExternal = "MESH_EXTERNAL",
        /// Part of the mesh.
        MeshInternal = "MESH_INTERNAL",
    }
    default MeshExternal;
}

string_enum! {
    /// How endpoints are discovered.
    pub enum Resolution {
        /// Use the address the caller connected to.
        None = "NONE",
        /// Use the listed endpoints.
        Static = "STATIC",
        /// Resolve the hosts (or endpoint names) by DNS, all addresses.
        Dns = "DNS",
        /// Resolve by DNS, first address only.
        DnsRoundRobin = "DNS_ROUND_ROBIN",
        /// Resolve by DNS dynamically.
        DynamicDns = "DYNAMIC_DNS",
    }
    default None;
}

model! {
    /// The `spec` of a ServiceEntry.
    pub struct ServiceEntrySpec {
        /// Hosts of the service (at least one).
        required hosts: Vec<String> = "hosts",
        /// Virtual IPs or CIDR ranges.
        optional addresses: Vec<String> = "addresses",
        /// Ports of the service.
        optional ports: Vec<ServicePort> = "ports",
        /// Inside or outside the mesh.
        optional location: Option<ServiceLocation> = "location",
        /// Endpoint discovery mode (NONE when unset).
        optional resolution: Option<Resolution> = "resolution",
        /// Endpoints listed in place.
        optional endpoints: Vec<WorkloadEntrySpec> = "endpoints",
        /// Selects WorkloadEntries (or pods) as endpoints instead.
        optional workload_selector: Option<SeWorkloadSelector> = "workloadSelector",
        /// Namespaces the service is visible in.
        optional export_to: Vec<String> = "exportTo",
        /// Accepted server identities.
        optional subject_alt_names: Vec<String> = "subjectAltNames",
    }
}

impl ServiceEntrySpec {
    /// The resolution mode, with the default made explicit.
    pub fn resolution(&self) -> Resolution {
        self.resolution.unwrap_or_default()
    }
}

model! {
    /// One port of a ServiceEntry.
    pub struct ServicePort {
        /// Port number.
        required number: u32 = "number",
        /// Protocol (`HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, ...).
        optional protocol: String = "protocol",
        /// Port name, unique in the ServiceEntry.
        required name: String = "name",
        /// Port on the endpoints (the same as `number` when unset).
        optional target_port: u32 = "targetPort",
    }
}

model! {
    /// Label selector of a ServiceEntry (`labels`, unlike DestinationRule's `matchLabels`).
    pub struct SeWorkloadSelector {
        /// Labels a workload must carry.
        optional labels: BTreeMap<String, String> = "labels",
    }
}

model! {
    /// An endpoint: the `spec` of a WorkloadEntry, or one of a ServiceEntry's `endpoints`.
    pub struct WorkloadEntrySpec {
        /// IP, host name or `unix://` socket path.
        optional address: String = "address",
        /// Port numbers by service port name.
        optional ports: BTreeMap<String, u32> = "ports",
        /// Labels of the endpoint.
        optional labels: BTreeMap<String, String> = "labels",
        /// Network the endpoint is on.
        optional network: String = "network",
        /// Locality, `region/zone/subzone`.
        optional locality: String = "locality",
        /// Load balancing weight (1 when 0).
        optional weight: u32 = "weight",
        /// Service account of the workload.
        optional service_account: String = "serviceAccount",
    }
}

/// The endpoints of the ServiceEntry `entry`: its inline `endpoints`, then the
/// `workloads` of its namespace its `workloadSelector` selects (a label counts from the
/// WorkloadEntry's spec, else from its metadata). The engine and the proxies both read
/// endpoints through this, so they agree on what a service has.
pub fn endpoints_of<'a>(
    entry: &'a crate::resource::Object<ServiceEntrySpec>,
    workloads: &[&'a crate::resource::Object<WorkloadEntrySpec>],
) -> Vec<&'a WorkloadEntrySpec> {
    let mut endpoints: Vec<&WorkloadEntrySpec> = entry.spec.endpoints.iter().collect();
    if let Some(selector) = &entry.spec.workload_selector {
        endpoints.extend(
            workloads
                .iter()
                .filter(|w| w.metadata.namespace == entry.metadata.namespace)
                .filter(|w| {
                    selector
                        .labels
                        .iter()
                        .all(|(k, v)| w.spec.labels.get(k).or(w.metadata.labels.get(k)) == Some(v))
                })
                .map(|w| &w.spec),
        );
    }
    endpoints
}
