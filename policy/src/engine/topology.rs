//! The mesh as the engine needs it: built once from the resources each time they change,
//! so the per-tick work only looks things up.
//!
//! [`Topology::build`] reads MeshClusters (sources and who owns which locality),
//! ServiceEntries and WorkloadEntries (endpoints with their localities, weights and labels),
//! DestinationRules (subsets, outlier detection, `localityLbSetting`, resolved per subset as
//! istiod merges them) and FailoverPolicies (with every default applied).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::engine::split::{ENVOY_DEFAULT_PANIC_PERCENT, FailoverRule, PriorityLabel};
use crate::fulcrum::FailoverSettings;
use crate::istio::{DestinationRuleSpec, LocalityLbSetting, TrafficPolicy};
use crate::locality::{Locality, LocalityPattern};
use crate::references::{merged_policy, qualify_host, rule_for_host};
use crate::resource::{Object, Resource};

/// Istio's label naming an endpoint's (or proxy's) cluster.
pub const LABEL_CLUSTER: &str = "topology.istio.io/cluster";
/// Istio's label naming the network.
pub const LABEL_NETWORK: &str = "topology.istio.io/network";
/// Kubernetes' region label.
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
/// Kubernetes' zone label.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Istio's subzone label.
pub const LABEL_SUBZONE: &str = "topology.istio.io/subzone";

/// A cluster of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Its name (proxies report under it).
    pub name: String,
    /// Where it runs.
    pub locality: Locality,
    /// Its network.
    pub network: String,
}

/// A locality's parts as small numbers, so the per-row work compares integers, not
/// strings. Equal numbers mean equal text within one [`Topology`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LocalityIds {
    /// The region.
    pub region: u32,
    /// The zone.
    pub zone: u32,
    /// The subzone.
    pub subzone: u32,
}

/// A source locality: where proxies run, one weight row per service each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The locality.
    pub locality: Locality,
    /// Its parts as numbers (set by [`Topology::finish`]).
    pub ids: LocalityIds,
    /// The clusters there.
    pub clusters: Vec<String>,
    /// The labels a proxy there carries for `failoverPriority` (cluster, network, region,
    /// zone, subzone), as istiod augments proxy labels.
    pub labels: BTreeMap<String, String>,
}

/// How a subset's localities are prioritised, from its effective `localityLbSetting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalityLb {
    /// `enabled: false`: no locality preference at all.
    Disabled,
    /// Priorities from locality and labels (istiod's failover), used only when
    /// outlier detection is set.
    Failover {
        /// `failover` rules.
        rules: Vec<FailoverRule>,
        /// `failoverPriority` labels.
        labels: Vec<PriorityLabel>,
        /// False without outlierDetection: everything stays at priority 0.
        enabled: bool,
        /// `rules` as region numbers (from, to) (set by [`Topology::finish`]).
        rule_ids: Vec<(u32, u32)>,
    },
    /// `distribute`: fixed split per source, no failover.
    Distribute(Vec<(LocalityPattern, Vec<(LocalityPattern, u32)>)>),
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Load-balancing weight (1 when unset).
    pub weight: u64,
    /// Its labels, augmented with the topology labels as istiod does.
    pub labels: BTreeMap<String, String>,
}

/// A subset's endpoints in one locality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// Index into [`ServiceTopology::localities`].
    pub locality: usize,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl Members {
    /// The locality weight: the sum of its endpoints' weights.
    pub fn weight(&self) -> u64 {
        self.endpoints.iter().map(|e| e.weight).sum()
    }
}

/// A subset of a service (the whole service is the subset named "").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetTopology {
    /// The subset's name; "" for the whole service.
    pub name: String,
    /// Locality load balancing in effect for it.
    pub locality_lb: LocalityLb,
    /// Envoy's panic threshold, in percent (0: never panic).
    pub panic_percent: u32,
    /// Its endpoints, per locality, in locality order.
    pub members: Vec<Members>,
    /// Per member: its locality weight (the sum of its endpoints' weights) and its
    /// endpoint count (set by [`Topology::finish`]).
    pub member_sizes: Vec<(u64, u64)>,
}

/// A destination locality of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestLocality {
    /// The locality.
    pub locality: Locality,
    /// Its parts as numbers (set by [`Topology::finish`]).
    pub ids: LocalityIds,
    /// The clusters whose proxies report this locality's endpoints.
    pub owners: Vec<String>,
    /// Their positions in [`Topology::clusters`] (set by [`Topology::finish`]).
    pub owner_positions: Vec<usize>,
    /// Endpoints there, across subsets.
    pub endpoints: u32,
}

/// Everything the engine knows about one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceTopology {
    /// The service's host.
    pub host: String,
    /// Its destination localities, sorted.
    pub localities: Vec<DestLocality>,
    /// The same localities, shared with every weight table computed for the service (set
    /// by [`Topology::finish`]).
    pub destinations: Arc<[Locality]>,
    /// A stamp of the list of localities (FNV-1a of their names, never 0; set by
    /// [`Topology::finish`]): state lined up with an equal stamp is in the same order.
    pub layout: u64,
    /// The whole service first, then each DestinationRule subset.
    pub subsets: Vec<SubsetTopology>,
    /// Its FailoverPolicy, with defaults applied.
    pub settings: FailoverSettings,
    /// `namespace/name` of the FailoverPolicy, when there is one.
    pub policy: Option<String>,
}

impl ServiceTopology {
    /// The index of a destination locality.
    pub fn locality_index(&self, locality: &Locality) -> Option<usize> {
        self.localities
            .binary_search_by(|d| d.locality.cmp(locality))
            .ok()
    }
}

/// The mesh, compiled for the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Clusters by name.
    pub clusters: BTreeMap<String, ClusterInfo>,
    /// Source localities, sorted.
    pub sources: Vec<Source>,
    /// Services by host.
    pub services: BTreeMap<String, ServiceTopology>,
}

struct RawEndpoint {
    locality: Locality,
    cluster: Option<String>,
    network: String,
    weight: u64,
    labels: BTreeMap<String, String>,
}

impl Topology {
    /// Compiles the resources. Resources are assumed validated; anything unusable (an
    /// endpoint without a locality) lands in the empty locality rather than failing.
    pub fn build<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> Topology {
        let mut clusters = BTreeMap::new();
        let mut entries = Vec::new();
        let mut workloads = Vec::new();
        let mut rules: Vec<&Object<DestinationRuleSpec>> = Vec::new();
        let mut policies = BTreeMap::new();
        for resource in resources {
            match resource {
                Resource::MeshCluster(o) => {
                    let name = o.spec.name(&o.metadata.name).to_string();
                    clusters.entry(name.clone()).or_insert(ClusterInfo {
                        name,
                        locality: o.spec.locality.clone(),
                        network: o.spec.network.clone(),
                    });
                }
                Resource::ServiceEntry(o) => entries.push(o.as_ref()),
                Resource::WorkloadEntry(o) => workloads.push(o.as_ref()),
                Resource::DestinationRule(o) => rules.push(o.as_ref()),
                Resource::FailoverPolicy(o) => {
                    let host = qualify_host(&o.spec.host, &o.metadata.namespace);
                    policies.entry(host).or_insert((
                        format!("{}/{}", o.metadata.namespace, o.metadata.name),
                        o.spec.settings(),
                    ));
                }
                Resource::VirtualService(_) => {}
            }
        }
        rules.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });

        let mut by_host: BTreeMap<String, Vec<RawEndpoint>> = BTreeMap::new();
        for entry in &entries {
            let ns = &entry.metadata.namespace;
            let endpoints = crate::istio::endpoints_of(entry, &workloads);
            for host in &entry.spec.hosts {
                let host = qualify_host(host, ns);
                let list = by_host.entry(host).or_default();
                for e in &endpoints {
                    let locality: Locality = e.locality.parse().unwrap_or_default();
                    let cluster =
                        e.labels.get(LABEL_CLUSTER).cloned().or_else(|| {
                            owner_of(&clusters, &locality, &e.network).map(str::to_string)
                        });
                    list.push(RawEndpoint {
                        locality,
                        cluster,
                        network: e.network.clone(),
                        weight: u64::from(e.weight.max(1)),
                        labels: e.labels.clone(),
                    });
                }
            }
        }

        let services = by_host
            .into_iter()
            .map(|(host, raw)| {
                let rule = rule_for_host(&rules, &host);
                let (policy, settings) = match policies.get(&host) {
                    Some((name, settings)) => (Some(name.clone()), settings.clone()),
                    None => (None, FailoverSettings::default()),
                };
                let service = build_service(host.clone(), raw, rule, settings, policy);
                (host, service)
            })
            .collect();

        let mut sources: BTreeMap<Locality, Source> = BTreeMap::new();
        for info in clusters.values() {
            let source = sources
                .entry(info.locality.clone())
                .or_insert_with(|| Source {
                    locality: info.locality.clone(),
                    ids: LocalityIds::default(),
                    clusters: Vec::new(),
                    labels: topology_labels(&info.locality, &info.name, &info.network),
                });
            source.clusters.push(info.name.clone());
        }
        Topology {
            clusters,
            sources: sources.into_values().collect(),
            services,
        }
        .finish()
    }

    /// Fills in the derived fields (locality numbers, owner positions, rule numbers, the
    /// shared destination lists) from the text ones. [`Topology::build`] calls it; call it
    /// after assembling a topology by hand.
    pub fn finish(mut self) -> Topology {
        let mut names: BTreeMap<String, u32> = BTreeMap::new();
        let mut intern = |text: &str| {
            let next = names.len() as u32;
            *names.entry(text.to_string()).or_insert(next)
        };
        let mut ids = |l: &Locality| LocalityIds {
            region: intern(&l.region),
            zone: intern(&l.zone),
            subzone: intern(&l.subzone),
        };
        for source in &mut self.sources {
            source.ids = ids(&source.locality);
        }
        let positions: BTreeMap<&str, usize> = self
            .clusters
            .keys()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        for service in self.services.values_mut() {
            for dest in &mut service.localities {
                dest.ids = ids(&dest.locality);
                dest.owner_positions = dest
                    .owners
                    .iter()
                    .filter_map(|o| positions.get(o.as_str()).copied())
                    .collect();
            }
            service.destinations = service
                .localities
                .iter()
                .map(|d| d.locality.clone())
                .collect();
            service.layout = layout_stamp(&service.localities);
            for subset in &mut service.subsets {
                subset.member_sizes = subset
                    .members
                    .iter()
                    .map(|m| (m.weight(), m.endpoints.len() as u64))
                    .collect();
                if let LocalityLb::Failover {
                    rules, rule_ids, ..
                } = &mut subset.locality_lb
                {
                    *rule_ids = rules
                        .iter()
                        .map(|r| {
                            (
                                ids(&Locality::new(&r.from, "", "")).region,
                                ids(&Locality::new(&r.to, "", "")).region,
                            )
                        })
                        .collect();
                }
            }
        }
        self
    }

    /// The cluster names at a locality.
    pub fn clusters_at(&self, locality: &Locality) -> impl Iterator<Item = &str> {
        self.clusters
            .values()
            .filter(move |c| &c.locality == locality)
            .map(|c| c.name.as_str())
    }
}

/// FNV-1a over the locality names, separated, and never 0 (0 means "not lined up").
fn layout_stamp(localities: &[DestLocality]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for dest in localities {
        for part in [
            &dest.locality.region,
            &dest.locality.zone,
            &dest.locality.subzone,
        ] {
            for byte in part.bytes().chain([0xff]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    hash.max(1)
}

/// The cluster that owns endpoints at `locality` on `network`: the MeshCluster on that
/// network, else the one at that locality.
fn owner_of<'a>(
    clusters: &'a BTreeMap<String, ClusterInfo>,
    locality: &Locality,
    network: &str,
) -> Option<&'a str> {
    let on_network = clusters
        .values()
        .find(|c| !network.is_empty() && c.network == network);
    on_network
        .or_else(|| clusters.values().find(|c| &c.locality == locality))
        .map(|c| c.name.as_str())
}

fn topology_labels(locality: &Locality, cluster: &str, network: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            labels.insert(k.to_string(), v.to_string());
        }
    };
    put(LABEL_CLUSTER, cluster);
    put(LABEL_NETWORK, network);
    put(LABEL_REGION, &locality.region);
    put(LABEL_ZONE, &locality.zone);
    put(LABEL_SUBZONE, &locality.subzone);
    labels
}

fn locality_lb(policy: &TrafficPolicy) -> (LocalityLb, u32) {
    let outlier = policy.outlier_detection.as_ref();
    let panic_percent = match outlier {
        Some(o) => o.min_health_percent.clamp(0, 100) as u32,
        None => ENVOY_DEFAULT_PANIC_PERCENT,
    };
    let setting: Option<&LocalityLbSetting> = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref());
    let lb = match setting {
        Some(s) if s.enabled == Some(false) => LocalityLb::Disabled,
        Some(s) if !s.distribute.is_empty() => LocalityLb::Distribute(
            s.distribute
                .iter()
                .filter_map(|d| {
                    let from = d.from.parse().ok()?;
                    let to =
                        d.to.iter()
                            .filter_map(|(p, w)| Some((p.parse().ok()?, *w)))
                            .collect();
                    Some((from, to))
                })
                .collect(),
        ),
        Some(s) => LocalityLb::Failover {
            rules: s
                .failover
                .iter()
                .map(|f| FailoverRule {
                    from: f.from.clone(),
                    to: f.to.clone(),
                })
                .collect(),
            labels: s
                .failover_priority
                .iter()
                .map(|l| PriorityLabel::parse(l))
                .collect(),
            enabled: outlier.is_some(),
            rule_ids: Vec::new(),
        },
        // The mesh default: locality load balancing on, no rules.
        None => LocalityLb::Failover {
            rules: Vec::new(),
            labels: Vec::new(),
            enabled: outlier.is_some(),
            rule_ids: Vec::new(),
        },
    };
    (lb, panic_percent)
}

fn build_service(
    host: String,
    raw: Vec<RawEndpoint>,
    rule: Option<&Object<DestinationRuleSpec>>,
    settings: FailoverSettings,
    policy: Option<String>,
) -> ServiceTopology {
    let mut owners: BTreeMap<Locality, (BTreeSet<String>, u32)> = BTreeMap::new();
    for e in &raw {
        let slot = owners.entry(e.locality.clone()).or_default();
        slot.0.extend(e.cluster.clone());
        slot.1 += 1;
    }
    let localities: Vec<DestLocality> = owners
        .into_iter()
        .map(|(locality, (owners, endpoints))| DestLocality {
            locality,
            ids: LocalityIds::default(),
            owners: owners.into_iter().collect(),
            owner_positions: Vec::new(),
            endpoints,
        })
        .collect();
    let index_of = |l: &Locality| {
        localities
            .binary_search_by(|d| d.locality.cmp(l))
            .unwrap_or_default()
    };
    let endpoint = |e: &RawEndpoint| {
        let mut labels = topology_labels(
            &e.locality,
            e.cluster.as_deref().unwrap_or_default(),
            &e.network,
        );
        labels.extend(e.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        Endpoint {
            weight: e.weight,
            labels,
        }
    };
    let members_of = |keep: &dyn Fn(&RawEndpoint) -> bool| {
        let mut by_locality: BTreeMap<usize, Vec<Endpoint>> = BTreeMap::new();
        for e in raw.iter().filter(|e| keep(e)) {
            by_locality
                .entry(index_of(&e.locality))
                .or_default()
                .push(endpoint(e));
        }
        by_locality
            .into_iter()
            .map(|(locality, endpoints)| Members {
                locality,
                endpoints,
            })
            .collect::<Vec<_>>()
    };

    let top = rule.and_then(|r| r.spec.traffic_policy.as_ref());
    let (lb, panic_percent) = locality_lb(&merged_policy(top, None));
    let mut subsets = vec![SubsetTopology {
        name: String::new(),
        locality_lb: lb,
        panic_percent,
        members: members_of(&|_| true),
        member_sizes: Vec::new(),
    }];
    for subset in rule.map(|r| r.spec.subsets.as_slice()).unwrap_or_default() {
        let (lb, panic_percent) = locality_lb(&merged_policy(top, subset.traffic_policy.as_ref()));
        subsets.push(SubsetTopology {
            name: subset.name.clone(),
            locality_lb: lb,
            panic_percent,
            members: members_of(&|e: &RawEndpoint| {
                subset
                    .labels
                    .iter()
                    .all(|(k, v)| e.labels.get(k) == Some(v))
            }),
            member_sizes: Vec::new(),
        });
    }
    ServiceTopology {
        host,
        localities,
        destinations: Arc::from(Vec::new()),
        layout: 0,
        subsets,
        settings,
        policy,
    }
}
