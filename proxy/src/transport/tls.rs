//! The proxy's mTLS material: the mesh CA, this proxy's certificate and key, read from
//! the certificates directory (`ca.pem`, `proxy-<cluster>.pem`, `proxy-<cluster>-key.pem`,
//! as `fulcrumctl certs init` writes them or cert-manager mounts them), and the rustls
//! configurations built from them, rebuilt when the files change.
//!
//! Chains are checked by rustls (webpki, ring) against the mesh CA: a peer without a
//! certificate, with an expired one or one from another CA fails the handshake. So does
//! a client whose certificate is not a proxy's of this trust domain (its SPIFFE
//! identity is checked in the handshake). A client checks after the handshake that the
//! server is the proxy of the cluster it meant to reach.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fulcrum_policy::identity::{Identity, Role};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::sync::watch;

/// The name every proxy certificate carries as a DNS SAN (`fulcrumctl certs init`); the
/// cluster is then checked from the SPIFFE identity.
pub const PROXY_SERVER_NAME: &str = "proxy.fulcrum.internal";
/// ALPN of the east-west protocol.
pub const ALPN_H2: &[u8] = b"h2";
/// How often the files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why the material could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// Which.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The files do not make a usable configuration.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The three files, and when each last changed.
#[derive(Debug, Clone)]
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

impl Files {
    fn stamp(&self) -> Stamp {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// The configurations in use.
struct Built {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: Identity,
}

/// This proxy's mTLS configurations, kept current with the files.
pub struct MeshTls {
    files: Files,
    cluster: String,
    built: RwLock<Arc<Built>>,
    stamp: Mutex<Stamp>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in the file".into()));
    }
    Ok(certs)
}

fn build(files: &Files, cluster: &str) -> Result<Built, TlsError> {
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let ca = certificates(&files.ca)?;
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| invalid(&files.key, format!("not a PEM private key: {e}")))?;
    let identity =
        Identity::from_certificate(chain[0].as_ref()).map_err(|e| invalid(&files.cert, e))?;
    if identity.role != Role::Proxy(cluster.to_string()) {
        return Err(invalid(
            &files.cert,
            format!("the certificate is for {identity}, not the proxy of cluster {cluster:?}"),
        ));
    }
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| invalid(&files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let chain_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| invalid(&files.ca, format!("cannot verify clients with it: {e}")))?;
    let verifier = Arc::new(MeshProxiesOnly {
        chain: chain_verifier,
        trust_domain: identity.trust_domain.clone(),
    });
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| invalid(&files.key, format!("does not match the certificate: {e}")))?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid(&files.key, format!("does not match the certificate: {e}")))?;
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Built {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
    })
}

/// The east-west listener's client verifier: the chain must verify against the mesh CA
/// (webpki), and the leaf must carry the SPIFFE identity of a proxy of this trust domain.
/// A peer that fails either is refused in the handshake, with a TLS alert.
#[derive(Debug)]
struct MeshProxiesOnly {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for MeshProxiesOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let refuse = |reason: String| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    reason,
                )),
            )))
        };
        let peer = Identity::from_certificate(end_entity.as_ref()).map_err(refuse)?;
        if peer.trust_domain != self.trust_domain {
            return Err(refuse(format!(
                "{peer} is not of this mesh's trust domain {}",
                self.trust_domain
            )));
        }
        if !matches!(peer.role, Role::Proxy(_)) {
            return Err(refuse(format!("{peer} is not a proxy")));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

impl MeshTls {
    /// Reads the material of `cluster`'s proxy from `dir`; the certificate must carry
    /// that proxy's SPIFFE identity.
    pub fn load(dir: &Path, cluster: &str) -> Result<MeshTls, TlsError> {
        let files = Files {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("proxy-{cluster}.pem")),
            key: dir.join(format!("proxy-{cluster}-key.pem")),
        };
        let stamp = files.stamp();
        let built = build(&files, cluster)?;
        Ok(MeshTls {
            files,
            cluster: cluster.to_string(),
            built: RwLock::new(Arc::new(built)),
            stamp: Mutex::new(stamp),
        })
    }

    fn built(&self) -> Arc<Built> {
        match self.built.read() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The server configuration for the next connection accepted.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.built().server.clone()
    }

    /// The client configuration for the next connection made.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.built().client.clone()
    }

    /// This proxy's identity.
    pub fn identity(&self) -> Identity {
        self.built().identity.clone()
    }

    /// Rebuilds the configurations when a file changed. `Ok(true)` when it did; on an
    /// error the configurations in use stay (a half-written renewal is retried later).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = self.files.stamp();
        let Ok(mut last) = self.stamp.lock() else {
            return Ok(false);
        };
        if *last == stamp {
            return Ok(false);
        }
        let built = build(&self.files, &self.cluster)?;
        *last = stamp;
        if let Ok(mut b) = self.built.write() {
            *b = Arc::new(built);
        }
        Ok(true)
    }

    /// Checks the files every `every` until `stop`, logging reloads and failures.
    pub async fn watch(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "certificates changed; new connections use them"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!("certificates not reloaded, the old ones stay: {e}"),
            }
        }
    }

    /// The peer's identity from its verified certificate chain, when it is a proxy of
    /// this trust domain (and of `cluster`, when given).
    pub fn check_peer(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
        cluster: Option<&str>,
    ) -> Result<String, String> {
        let leaf = certs
            .and_then(|c| c.first())
            .ok_or("the peer presented no certificate")?;
        let peer = Identity::from_certificate(leaf.as_ref())?;
        let own = self.identity();
        if peer.trust_domain != own.trust_domain {
            return Err(format!(
                "{peer} is not of this mesh's trust domain {}",
                own.trust_domain
            ));
        }
        let Role::Proxy(peer_cluster) = peer.role else {
            return Err(format!("{peer} is not a proxy"));
        };
        if let Some(expected) = cluster
            && expected != peer_cluster
        {
            return Err(format!(
                "the peer is the proxy of cluster {peer_cluster:?}, not of {expected:?}"
            ));
        }
        Ok(peer_cluster)
    }
}
