//! Certificates: a development CA and leaf certificates (`fulcrumctl certs init`), and
//! loading a component's credentials from a certificate directory.
//!
//! Directory layout (what `certs init` writes and every component reads):
//!
//! ```text
//! ca.pem                      the mesh CA certificate (trust anchor)
//! ca-key.pem                  its key: keep it off the nodes in production
//! coordinator-<N>.pem/-key.pem  spiffe://TD/fulcrum/coordinator/N, server + client
//! proxy-<cluster>.pem/-key.pem  spiffe://TD/fulcrum/proxy/<cluster>, server + client
//! admin-<name>.pem/-key.pem     spiffe://TD/fulcrum/admin/<name>, client
//! ```
//!
//! Coordinator certificates also carry the DNS name [`COORDINATOR_SERVER_NAME`]: clients
//! verify the server against it, so only a coordinator certificate can serve the
//! coordinator API, whatever address it is reached on.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

use super::identity::{Identity, Role};

/// The DNS name every coordinator certificate carries and every client verifies.
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.fulcrum.internal";
/// The DNS name every proxy certificate carries, for east-west connections.
pub const PROXY_SERVER_NAME: &str = "proxy.fulcrum.internal";
/// How long a client of the coordinator's gRPC listener has to finish its TLS handshake
/// (as long as a proxy's east-west listener gives its peers).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why credentials could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source} (create certificates with `fulcrumctl certs init`)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate does not carry the identity it should.
    #[error("{path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A name that cannot be part of a SPIFFE identity.
    #[error("{0}")]
    BadName(String),
}

/// A component's certificate, key and the CA it trusts, as PEM.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Who the certificate says it is.
    pub identity: Identity,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The file stem of a role's certificate: `coordinator-1`, `proxy-east`, `admin-ops`.
pub fn file_stem(role: &Role) -> String {
    match role {
        Role::Coordinator(n) => format!("coordinator-{n}"),
        Role::Proxy(c) => format!("proxy-{c}"),
        Role::Admin(a) => format!("admin-{a}"),
    }
}

impl Credentials {
    /// Loads `<stem>.pem`, `<stem>-key.pem` and `ca.pem` from `dir`, and checks that the
    /// certificate carries a Fulcrum identity for `role`.
    pub fn load(dir: &Path, role: &Role) -> Result<Credentials, CertError> {
        let stem = file_stem(role);
        let cert_path = dir.join(format!("{stem}.pem"));
        let ca_pem = read(&dir.join("ca.pem"))?;
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&dir.join(format!("{stem}-key.pem")))?;
        let der = pem_der(&cert_pem).ok_or_else(|| CertError::Identity {
            path: cert_path.clone(),
            reason: "no PEM certificate in the file".to_string(),
        })?;
        let identity = Identity::from_certificate(&der).map_err(|reason| CertError::Identity {
            path: cert_path.clone(),
            reason,
        })?;
        if &identity.role != role {
            return Err(CertError::Identity {
                path: cert_path,
                reason: format!("the certificate is for {identity}, not the expected role"),
            });
        }
        Ok(Credentials {
            identity,
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// The first admin certificate in `dir` (`admin-*.pem`), for `fulcrumctl` when no
    /// name is given.
    pub fn first_admin(dir: &Path) -> Result<Credentials, CertError> {
        let entries = fs::read_dir(dir).map_err(|source| CertError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| {
                n.strip_prefix("admin-")
                    .and_then(|r| r.strip_suffix(".pem"))
                    .filter(|r| !r.ends_with("-key"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        let Some(name) = names.first() else {
            return Err(CertError::Read {
                path: dir.join("admin-<name>.pem"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no admin certificate in the directory",
                ),
            });
        };
        Credentials::load(dir, &Role::Admin(name.clone()))
    }

    /// TLS for a server: present this certificate, require client certificates from the
    /// CA, and close a connection whose handshake is not done within
    /// [`HANDSHAKE_TIMEOUT`] (one that sends nothing, or a byte now and then).
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// TLS for a client of the coordinator API: present this certificate, accept only a
    /// coordinator certificate from the CA.
    pub fn coordinator_client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(COORDINATOR_SERVER_NAME)
    }
}

fn pem_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
}

/// What `certs init` creates.
#[derive(Debug, Clone)]
pub struct InitPlan {
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// Coordinator node ids (1..=N).
    pub coordinators: u64,
    /// Cluster names, one proxy certificate each.
    pub clusters: Vec<String>,
    /// Admin names.
    pub admins: Vec<String>,
    /// How long the certificates are valid, in days.
    pub valid_days: u32,
}

fn check_name(what: &str, name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CertError::BadName(format!(
            "{what} {name:?} cannot be part of a SPIFFE identity: use letters, digits, '-', '.', '_'"
        )))
    }
}

fn params(cn: &str, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let now = time_now();
    params.not_before = now - std::time::Duration::from_secs(3_600);
    params.not_after = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    params
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Creates the CA and every leaf certificate in `out` (which may exist; files in it are
/// replaced). Returns the files written.
pub fn init(plan: &InitPlan, out: &Path) -> Result<Vec<PathBuf>, CertError> {
    check_name("trust domain", &plan.trust_domain)?;
    for c in &plan.clusters {
        check_name("cluster", c)?;
    }
    for a in &plan.admins {
        check_name("admin", a)?;
    }
    fs::create_dir_all(out).map_err(|source| CertError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let generate = |what: &str, source| CertError::Generate {
        what: what.to_string(),
        source,
    };
    let mut written = Vec::new();
    let mut write = |name: String, text: &str| -> Result<(), CertError> {
        let path = out.join(name);
        fs::write(&path, text).map_err(|source| CertError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
        Ok(())
    };

    let ca_key = KeyPair::generate().map_err(|e| generate("the CA key", e))?;
    let mut ca_params = params(
        &format!("Fulcrum development CA ({})", plan.trust_domain),
        plan.valid_days,
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| generate("the CA", e))?;
    write("ca.pem".into(), &ca_cert.pem())?;
    write("ca-key.pem".into(), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut roles: Vec<Role> = (1..=plan.coordinators).map(Role::Coordinator).collect();
    roles.extend(plan.clusters.iter().cloned().map(Role::Proxy));
    roles.extend(plan.admins.iter().cloned().map(Role::Admin));
    for role in roles {
        let identity = Identity {
            trust_domain: plan.trust_domain.clone(),
            role: role.clone(),
        };
        let stem = file_stem(&role);
        let mut leaf = params(&stem, plan.valid_days);
        let uri = identity.to_string();
        leaf.subject_alt_names.push(SanType::URI(
            uri.as_str().try_into().map_err(|e| generate(&stem, e))?,
        ));
        let server_name = match role {
            Role::Coordinator(_) => Some(COORDINATOR_SERVER_NAME),
            Role::Proxy(_) => Some(PROXY_SERVER_NAME),
            Role::Admin(_) => None,
        };
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(name) = server_name {
            leaf.subject_alt_names.push(SanType::DnsName(
                name.try_into().map_err(|e| generate(&stem, e))?,
            ));
            leaf.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(|e| generate(&stem, e))?;
        let cert = leaf
            .signed_by(&key, &issuer)
            .map_err(|e| generate(&stem, e))?;
        write(format!("{stem}.pem"), &cert.pem())?;
        write(format!("{stem}-key.pem"), &key.serialize_pem())?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_certificates_that_load_with_their_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = InitPlan {
            trust_domain: "mesh.local".into(),
            coordinators: 2,
            clusters: vec!["east".into()],
            admins: vec!["ops".into()],
            valid_days: 30,
        };
        init(&plan, dir.path()).expect("init");
        let node = Credentials::load(dir.path(), &Role::Coordinator(2)).expect("loads");
        assert_eq!(
            node.identity.to_string(),
            "spiffe://mesh.local/fulcrum/coordinator/2"
        );
        let admin = Credentials::first_admin(dir.path()).expect("admin");
        assert_eq!(admin.identity.role, Role::Admin("ops".into()));
        let wrong = Credentials::load(dir.path(), &Role::Coordinator(3)).unwrap_err();
        assert!(wrong.to_string().contains("coordinator-3.pem"), "{wrong}");
    }

    #[test]
    fn a_name_that_cannot_be_an_identity_is_refused() {
        let plan = InitPlan {
            trust_domain: "mesh.local".into(),
            coordinators: 1,
            clusters: vec!["east/1".into()],
            admins: vec![],
            valid_days: 30,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            init(&plan, dir.path()),
            Err(CertError::BadName(_))
        ));
    }
}
