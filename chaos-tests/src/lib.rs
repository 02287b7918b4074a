//! `fulcrum-chaos`: Fulcrum's lab.
//!
//! - [`harness`]: a local mesh of real processes on loopback (coordinators, a proxy per
//!   cluster, test backends), with faults done by signals and knobs, and nothing left
//!   running when it drops;
//! - [`backend`]: the test backend, with knobs over HTTP (error rate, latency, refuse,
//!   hang);
//! - [`load`]: an open-loop load generator recording every request;
//! - [`relay`]: the fault relay on the mesh's links (cut, blackhole, delay, reset);
//! - [`drill`]: a fault at a set time and what it did: time to detect, time to shift,
//!   errors, time to failback, regressions; as JSON, a summary and an SVG timeline;
//! - [`scenario`]: drill files (`deploy/local/drills/`) with their expectations;
//! - [`remote`]: an existing mesh as a drill's target, through its coordinators' API.
//!
//! `fulcrum-drill demo` runs the local three-cluster mesh with a cluster outage; the
//! drills in `tests/` run the same way under `cargo test`.

#![forbid(unsafe_code)]

pub mod backend;
pub mod drill;
pub mod harness;
pub mod load;
pub mod relay;
pub mod remote;
pub mod scenario;
