//! Fulcrum's control plane: the replicated coordinator (`fulcrum-coordinator`) and
//! `fulcrumctl`, the command line over it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ctl;
pub mod mesh;
pub mod raft;
