//! Fulcrum's control plane: the replicated coordinator (`fulcrum-coordinator`) and
//! `fulcrumctl`, the command line over it.
//!
//! - [`mesh`]: the replicated state and its transition function (runs fulcrum-policy's
//!   engine on apply);
//! - [`raft`]: openraft on a redb store, and its gRPC transport;
//! - [`node`]: proposing (forwarded to the leader) and linearizable reads;
//! - [`ingest`], [`push`], [`api`]: reports in, snapshots out, status and admin;
//! - [`security`]: mTLS credentials and SPIFFE authorization;
//! - [`app`]: the wiring of one node.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod ctl;
pub mod ingest;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod push;
pub mod raft;
pub mod security;
pub mod transport;
