//! Who is who in a Fulcrum mesh: the SPIFFE identities in component certificates.
//!
//! Identities are URIs in the certificate's subject alternative names:
//! `spiffe://<trust-domain>/fulcrum/coordinator/<node-id>`, `.../fulcrum/proxy/<cluster>`
//! and `.../fulcrum/admin/<name>`. The TLS layer checks the chain against the mesh's CA;
//! this module reads the identity from the verified certificate. Coordinators and proxies
//! both use it, so both read identities the same way.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A component of the mesh, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// A coordinator node.
    Coordinator(u64),
    /// A proxy of one cluster.
    Proxy(String),
    /// An operator or automation with admin rights.
    Admin(String),
}

/// A verified caller: trust domain and role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// What it is.
    pub role: Role,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let td = &self.trust_domain;
        match &self.role {
            Role::Coordinator(n) => write!(f, "spiffe://{td}/fulcrum/coordinator/{n}"),
            Role::Proxy(c) => write!(f, "spiffe://{td}/fulcrum/proxy/{c}"),
            Role::Admin(a) => write!(f, "spiffe://{td}/fulcrum/admin/{a}"),
        }
    }
}

/// Why a SPIFFE URI is not a Fulcrum identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri:?} is not a Fulcrum SPIFFE identity: {reason}")]
pub struct IdentityError {
    uri: String,
    reason: &'static str,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

impl Identity {
    /// Parses `spiffe://<td>/fulcrum/<role>/<name>`.
    pub fn parse(uri: &str) -> Result<Identity, IdentityError> {
        let fail = |reason| IdentityError {
            uri: uri.to_string(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("not a spiffe:// URI"))?;
        let mut parts = rest.split('/');
        let td = parts.next().unwrap_or_default();
        if !is_name(td) {
            return Err(fail(
                "the trust domain is empty or has characters DNS names do not",
            ));
        }
        let (Some("fulcrum"), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("the path is not /fulcrum/<role>/<name>"));
        };
        if !is_name(name) {
            return Err(fail(
                "the name is empty or has characters other than [A-Za-z0-9._-]",
            ));
        }
        let role = match kind {
            "coordinator" => Role::Coordinator(
                name.parse()
                    .map_err(|_| fail("a coordinator's name is its node id, a number"))?,
            ),
            "proxy" => Role::Proxy(name.to_string()),
            "admin" => Role::Admin(name.to_string()),
            _ => return Err(fail("the role is not coordinator, proxy or admin")),
        };
        Ok(Identity {
            trust_domain: td.to_string(),
            role,
        })
    }

    /// The Fulcrum identity in a DER certificate's URI SANs.
    pub fn from_certificate(der: &[u8]) -> Result<Identity, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("its subject alternative names do not parse: {e}"))?
            .ok_or("the certificate has no subject alternative names")?;
        let mut last_error = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                match Identity::parse(uri) {
                    Ok(id) => return Ok(id),
                    Err(e) => last_error = Some(e.to_string()),
                }
            }
        }
        Err(last_error.unwrap_or_else(|| "the certificate has no spiffe:// URI".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_roles() {
        assert_eq!(
            Identity::parse("spiffe://mesh.local/fulcrum/coordinator/3").map(|i| i.role),
            Ok(Role::Coordinator(3))
        );
        assert_eq!(
            Identity::parse("spiffe://mesh.local/fulcrum/proxy/east").map(|i| i.role),
            Ok(Role::Proxy("east".into()))
        );
        assert_eq!(
            Identity::parse("spiffe://mesh.local/fulcrum/admin/ops").map(|i| i.role),
            Ok(Role::Admin("ops".into()))
        );
    }

    #[test]
    fn refuses_what_is_not_a_fulcrum_identity() {
        for bad in [
            "https://mesh.local/fulcrum/admin/ops",
            "spiffe:///fulcrum/admin/ops",
            "spiffe://mesh.local/ns/default/sa/ops",
            "spiffe://mesh.local/fulcrum/coordinator/one",
            "spiffe://mesh.local/fulcrum/root/ops",
            "spiffe://mesh.local/fulcrum/admin/ops/extra",
            "spiffe://mesh.local/fulcrum/admin/",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
