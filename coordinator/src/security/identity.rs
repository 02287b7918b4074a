//! Who is calling (the SPIFFE identity of a peer certificate, read by
//! [`fulcrum_policy::identity`]) and what each caller may do.
//!
//! Identities are URIs in the certificate's subject alternative names:
//! `spiffe://<trust-domain>/fulcrum/coordinator/<node-id>`, `.../fulcrum/proxy/<cluster>`
//! and `.../fulcrum/admin/<name>`. The TLS layer has already checked the chain against
//! the mesh's CA; this module reads the identity and answers authorization questions.
//! It never trusts anything but the verified certificate.

use std::fmt;

pub use fulcrum_policy::identity::{Identity, IdentityError, Role};
use tonic::{Request, Status};

/// What a caller wants to do, for [`Authorizer::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Raft RPCs and forwarded proposals.
    Raft,
    /// Report or subscribe for a cluster.
    Proxy {
        /// The cluster the message speaks for.
        cluster: &'a str,
    },
    /// Change the mesh.
    Admin,
    /// Read status.
    Read,
}

/// Decides who may do what, for one trust domain. `None` as the trust domain means the
/// node runs with `--insecure-dev`: no TLS, nobody is identified, everything is allowed.
#[derive(Debug, Clone)]
pub struct Authorizer {
    trust_domain: Option<String>,
}

/// The caller, as far as the transport says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A verified identity.
    Verified(Identity),
    /// No TLS (`--insecure-dev`).
    Anonymous,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Verified(id) => id.fmt(f),
            Caller::Anonymous => f.write_str("anonymous (insecure-dev)"),
        }
    }
}

impl Authorizer {
    /// Authorizes identities of `trust_domain`.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Authorizer {
            trust_domain: Some(trust_domain.into()),
        }
    }

    /// Allows everything (plaintext development mode).
    pub fn insecure() -> Self {
        Authorizer { trust_domain: None }
    }

    /// The trust domain, unless insecure.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// The caller of a request: its verified identity, or `Unauthenticated`.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if self.trust_domain.is_none() {
            return Ok(Caller::Anonymous);
        }
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
        Identity::from_certificate(leaf.as_ref())
            .map(Caller::Verified)
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
    }

    /// Checks that the caller may do `action`; `PermissionDenied` says why not.
    pub fn check(&self, caller: &Caller, action: Action<'_>) -> Result<(), Status> {
        let Some(td) = &self.trust_domain else {
            return Ok(());
        };
        let Caller::Verified(id) = caller else {
            return Err(Status::unauthenticated("no verified identity"));
        };
        if &id.trust_domain != td {
            return Err(Status::permission_denied(format!(
                "{id} is not of this mesh's trust domain {td}"
            )));
        }
        let allowed = match (action, &id.role) {
            (Action::Read, _) => true,
            (Action::Raft, Role::Coordinator(_)) => true,
            (Action::Admin, Role::Admin(_)) => true,
            (Action::Proxy { cluster }, Role::Proxy(own)) => own == cluster,
            _ => false,
        };
        if allowed {
            return Ok(());
        }
        Err(Status::permission_denied(match action {
            Action::Raft => format!("{id} may not call the Raft service: coordinators only"),
            Action::Admin => format!("{id} may not change the mesh: admin identities only"),
            Action::Proxy { cluster } => match &id.role {
                Role::Proxy(own) => {
                    format!("{id} speaks for cluster {own:?}, not {cluster:?}")
                }
                _ => format!("{id} is not a proxy"),
            },
            Action::Read => format!("{id} may not read the mesh's status"),
        }))
    }

    /// [`Self::caller`] then [`Self::check`].
    pub fn authorize<T>(&self, request: &Request<T>, action: Action<'_>) -> Result<Caller, Status> {
        let caller = self.caller(request)?;
        self.check(&caller, action)?;
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(uri: &str) -> Caller {
        Caller::Verified(Identity::parse(uri).expect("parses"))
    }

    #[test]
    fn a_proxy_speaks_only_for_its_own_cluster() {
        let authz = Authorizer::new("mesh.local");
        let east = id("spiffe://mesh.local/fulcrum/proxy/east");
        assert!(
            authz
                .check(&east, Action::Proxy { cluster: "east" })
                .is_ok()
        );
        let denied = authz
            .check(&east, Action::Proxy { cluster: "west" })
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn only_coordinators_speak_raft_and_only_admins_change_the_mesh() {
        let authz = Authorizer::new("mesh.local");
        let node = id("spiffe://mesh.local/fulcrum/coordinator/1");
        let admin = id("spiffe://mesh.local/fulcrum/admin/ops");
        let proxy = id("spiffe://mesh.local/fulcrum/proxy/east");
        assert!(authz.check(&node, Action::Raft).is_ok());
        assert!(authz.check(&admin, Action::Raft).is_err());
        assert!(authz.check(&proxy, Action::Raft).is_err());
        assert!(authz.check(&admin, Action::Admin).is_ok());
        assert!(authz.check(&node, Action::Admin).is_err());
        assert!(authz.check(&proxy, Action::Read).is_ok());
    }

    #[test]
    fn another_trust_domain_is_denied_everything() {
        let authz = Authorizer::new("mesh.local");
        let stranger = id("spiffe://other.local/fulcrum/admin/ops");
        assert!(authz.check(&stranger, Action::Read).is_err());
        assert!(authz.check(&stranger, Action::Admin).is_err());
    }
}
