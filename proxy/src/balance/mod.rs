//! Choosing where a request goes once routing has named a service: first the destination
//! locality, from the weight row the coordinator pushed for this proxy's locality
//! ([`row`], chosen smoothly by [`locality`]); then an endpoint inside it, by the
//! DestinationRule's load balancer ([`endpoint`]). Pure state machines: no sockets, and
//! chance is injected; the clock is read only for a warmup, and can be given
//! ([`EndpointPicker::pick_at`]).

pub mod endpoint;
pub mod locality;
pub mod outlier;
pub mod row;

pub use endpoint::{EndpointPicker, LbPolicy, Warmup, Weighted};
pub use locality::SmoothWeights;
pub use outlier::{OutlierDetector, OutlierSettings, TryOutcome};
pub use row::{ClusterInfo, LocalityRow, Place};
