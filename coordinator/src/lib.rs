//! Fulcrum's control plane.
//!
//! Today this crate holds `fulcrumctl`, the command line operators use; the replicated
//! coordinator daemon (`fulcrum-coordinator`) joins it here.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ctl;
