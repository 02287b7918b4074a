//! mTLS credentials and SPIFFE authorization (DESIGN §7).

pub mod certs;
pub mod identity;

pub use certs::Credentials;
pub use identity::{Action, Authorizer, Caller, Identity, Role};
