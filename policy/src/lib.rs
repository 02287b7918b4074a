//! Fulcrum's traffic-policy model.
//!
//! This crate reads the configuration a Fulcrum mesh runs on — Istio's `networking.istio.io`
//! VirtualService, DestinationRule, ServiceEntry and WorkloadEntry, and Fulcrum's own
//! FailoverPolicy and MeshCluster — and says, for every problem, the file, the line, the
//! object and the field path, the way Istio's validation would.
//!
//! It is pure: no async runtime, no network. Reading files and directories (in [`load`]) is
//! its only I/O. The coordinator and the proxies both build on it, so the rules live here
//! once.
//!
//! ```
//! use fulcrum_policy::ConfigSet;
//!
//! let mut config = ConfigSet::new();
//! config.add_text("inline.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: DestinationRule
//! metadata: {name: checkout, namespace: shop}
//! spec:
//!   host: checkout.shop.svc.cluster.local
//!   trafficPolicy:
//!     outlierDetection: {maxEjectionPercent: 150}
//! "#);
//! let problem = config.diagnostics().next().unwrap();
//! assert_eq!(
//!     problem.to_string(),
//!     "inline.yaml:8: DestinationRule shop/checkout: \
//!      spec.trafficPolicy.outlierDetection.maxEjectionPercent: \
//!      150 is not a percentage: must be 0 to 100"
//! );
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod decode;
pub mod diag;
pub mod duration;
pub mod engine;
pub mod fulcrum;
pub mod health;
pub mod identity;
pub mod istio;
pub mod load;
pub mod locality;
pub mod path;
pub mod percent;
pub mod references;
pub mod resource;
pub mod scenario;
pub mod validate;
pub mod weights;
pub mod yaml;

pub use diag::{Diagnostic, ObjectRef, Severity};
pub use duration::Duration;
pub use load::{ConfigSet, Fingerprint, LoadedObject, SourceError};
pub use locality::{Locality, LocalityPattern};
pub use path::FieldPath;
pub use percent::Percent;
pub use resource::{Kind, Object, ObjectMeta, Outcome, Resource};
