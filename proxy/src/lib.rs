//! `fulcrum-proxy`: the per-cluster data plane.
//!
//! What is here today:
//!
//! - [`routing`]: VirtualService HTTP semantics as a pure decision, from a request's
//!   method, scheme, authority, path, headers and port to what to do with it (forward to a
//!   weighted destination with rewrites, header changes, timeout, retries, faults and
//!   mirrors; redirect; answer directly; or no route);
//! - [`balance`]: the choice of a destination locality from a pushed weight row, smooth
//!   (a 1% weight gets every hundredth request, not bursts), and of an endpoint inside it
//!   by the DestinationRule's load balancer.
//!
//! Neither does I/O: listeners, upstream connections, mTLS and the coordinator session
//! are separate adapters that call them.

#![forbid(unsafe_code)]

pub mod balance;
pub mod routing;
