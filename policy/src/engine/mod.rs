//! The failover engine: a pure, deterministic function from (resources, cluster registry,
//! health windows, drains, previous state, the entry's timestamp) to weight tables and
//! events.
//!
//! The coordinator runs it inside its Raft state machine, so it must compute the same bytes
//! on every replica: integer arithmetic only, ordered maps only, and time only as passed in
//! (the leader's timestamp), never read from a clock. It never does I/O.
//!
//! The pieces, in the order data flows through them:
//! - [`topology`]: the resources compiled once per configuration change;
//! - [`state`]: the folds [`apply_digest`] (what proxies saw) and [`tick`] (time passes);
//!   [`window`] holds the sliding windows and [`verdict`] the damped state machine;
//! - [`compute`]: standing, priorities, Envoy's split ([`split`]), ramp and guards, into
//!   rows of basis points;
//! - [`explain`]: the words for all of it.
//!
//! ```
//! use fulcrum_policy::ConfigSet;
//! use fulcrum_policy::engine::{self, EngineState, Topology};
//!
//! let mut config = ConfigSet::new();
//! config.add_text("mesh.yaml", r#"
//! apiVersion: fulcrum.dev/v1alpha1
//! kind: MeshCluster
//! metadata: {name: east}
//! spec: {locality: us-east/us-east-1a}
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: api, namespace: shop}
//! spec:
//!   hosts: [api.shop.svc.cluster.local]
//!   location: MESH_INTERNAL
//!   resolution: STATIC
//!   ports: [{number: 80, name: http, protocol: HTTP}]
//!   endpoints:
//!   - {address: 10.0.0.1, locality: us-east/us-east-1a}
//!   - {address: 10.0.1.1, locality: us-west/us-west-1a}
//! "#);
//! let topology = Topology::build(config.resources());
//! let mut state = EngineState::default();
//! engine::tick(&mut state, &topology, 1_000);
//! let weights = engine::compute(&state, &topology);
//! let row = &weights[0].subsets[0].rows[0];
//! // No outlierDetection: one priority, split by endpoint count, as Istio does.
//! assert_eq!(row.entries.iter().map(|e| e.weight_bp).collect::<Vec<_>>(), [5000, 5000]);
//! ```

pub mod capacity;
pub mod compute;
pub mod digest;
pub mod explain;
mod guards;
pub mod split;
pub mod state;
pub mod topology;
pub mod verdict;
pub mod window;

pub use compute::{ServiceWeights, SourceRow, compute, compute_service};
pub use digest::HealthDigest;
pub use state::{DrainTarget, EngineSettings, EngineState, Event, apply_digest, tick};
pub use topology::Topology;
