//! TLS the proxy originates to a service's endpoints: a DestinationRule's `tls` in mode
//! `SIMPLE` or `MUTUAL`, as a sidecar applies it to an external service (Istio's "egress
//! TLS origination"). Applications send plaintext to the proxy; the proxy speaks TLS to
//! the endpoints.
//!
//! What the server presents is checked as Envoy checks it under istiod's settings:
//! - the chain against `caCertificates`, else the system's CA bundle (Istio's `system`);
//!   with `caCrl`, no certificate of the chain may be revoked, and each must be covered
//!   by a list (Envoy's default);
//! - its names against `subjectAltNames` (else the ServiceEntry's), any of them, DNS
//!   names with a certificate's wildcard matching one label;
//! - with neither those names nor an `sni` in the rule, against the request's host, which
//!   is then also the SNI (Envoy's `auto_sni` and `auto_san_validation`);
//! - with an `sni` and no names, the chain only;
//! - with `insecureSkipVerify`, nothing.
//!
//! `MUTUAL` presents `clientCertificate` with `privateKey`. The files are read again when
//! they change (looked at when a connection is made), as istio-agent serves them; a file
//! that cannot be used fails the connections with the reason, rather than sending in
//! plaintext. `credentialName` (a Kubernetes secret) applies at a sidecar only in a rule
//! with a `workloadSelector` (elsewhere it is left out, see
//! `discovery::as_a_sidecar_reads`); there it is not read: connections fail, and say so.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fulcrum_policy::istio::{ClientTlsSettings, TlsMode};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::tls::ALPN_H2;

/// Where the system's CA bundle is looked for, after `SSL_CERT_FILE`: Debian and Ubuntu,
/// Fedora and RHEL, openSUSE, Alpine.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A service's TLS to its endpoints.
pub struct OriginTls {
    /// Tells its connections from those of other settings in a pool: made from the
    /// settings, so that the same settings in the next configuration keep their
    /// connections.
    id: u64,
    /// The rule's `sni`; the request's host when none.
    sni: Option<String>,
    files: Files,
    check: Check,
    /// Set when the settings cannot work whatever the files hold (`credentialName`).
    unusable: Option<String>,
    built: Mutex<Option<(Stamp, Result<Built, String>)>>,
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Check {
    /// Not at all (`insecureSkipVerify`).
    Nothing,
    /// Its chain only (an `sni` and no names).
    Chain,
    /// Its chain, and one of its names is one of these.
    Names(Vec<String>),
    /// Its chain, and it is for the server name the connection was made to.
    ServerName,
}

/// The files a rule names.
#[derive(Debug, Clone, Default, Hash)]
struct Files {
    /// None: the system's bundle.
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    crl: Option<PathBuf>,
}

/// What the files held, hashed (read whole: they are small, and a change within the
/// clock's granularity that kept their length would escape their times and sizes).
type Stamp = u64;

impl Files {
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.ca, &self.cert, &self.key, &self.crl]
            .into_iter()
            .flatten()
    }

    fn stamp(&self) -> Stamp {
        let mut held = std::hash::DefaultHasher::new();
        for path in self.all() {
            std::fs::read(path).ok().hash(&mut held);
        }
        held.finish()
    }
}

/// The configurations made from the files: for HTTP/1.1 (no ALPN, as istiod sets none)
/// and for h2 (ALPN `h2`).
struct Built {
    http1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

impl PartialEq for OriginTls {
    fn eq(&self, other: &OriginTls) -> bool {
        self.id == other.id
    }
}

impl Eq for OriginTls {}

impl std::fmt::Debug for OriginTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginTls")
            .field("id", &self.id)
            .field("sni", &self.sni)
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

impl OriginTls {
    /// The TLS `settings` set for a service's endpoints, with the ServiceEntry's
    /// `subjectAltNames` for when they name none. None unless their mode is `SIMPLE` or
    /// `MUTUAL` (`ISTIO_MUTUAL` and `DISABLE` are what the proxy does already: plaintext
    /// in its cluster, the mesh's mTLS across clusters).
    pub fn of(settings: &ClientTlsSettings, service_sans: &[String]) -> Option<Arc<OriginTls>> {
        let mode = settings.mode.unwrap_or_default();
        if !matches!(mode, TlsMode::Simple | TlsMode::Mutual) {
            return None;
        }
        let file = |path: &str| Some(PathBuf::from(path)).filter(|_| !path.is_empty());
        let mutual = mode == TlsMode::Mutual;
        let files = Files {
            ca: file(&settings.ca_certificates),
            cert: file(&settings.client_certificate).filter(|_| mutual),
            key: file(&settings.private_key).filter(|_| mutual),
            crl: file(&settings.ca_crl),
        };
        let sni = Some(settings.sni.clone()).filter(|s| !s.is_empty());
        let names = if settings.subject_alt_names.is_empty() {
            service_sans
        } else {
            &settings.subject_alt_names
        };
        let check = if settings.insecure_skip_verify == Some(true) {
            Check::Nothing
        } else if !names.is_empty() {
            Check::Names(names.to_vec())
        } else if sni.is_some() {
            Check::Chain
        } else {
            Check::ServerName
        };
        let unusable = if !settings.credential_name.is_empty() {
            Some(format!(
                "credentialName {:?} names a Kubernetes secret, which fulcrum-proxy does not \
                 read; name the files in caCertificates (and clientCertificate, privateKey)",
                settings.credential_name
            ))
        } else if mutual && (files.cert.is_none() || files.key.is_none()) {
            Some("MUTUAL needs clientCertificate and privateKey".into())
        } else {
            None
        };
        let mut id = std::hash::DefaultHasher::new();
        (mutual, &files, &sni, &check, &unusable).hash(&mut id);
        Some(Arc::new(OriginTls {
            id: id.finish(),
            sni,
            files,
            check,
            unusable,
            built: Mutex::new(None),
        }))
    }

    /// What tells its connections from others' in a pool.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The name a connection for a request to `host` (its authority's host, without a
    /// port) is made to: the rule's `sni`, else the host.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        let name = self.sni.as_deref().unwrap_or(host);
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        ServerName::try_from(name.to_string())
            .map_err(|e| format!("{name:?} cannot be a TLS server name: {e}"))
    }

    /// Makes TLS on `tcp` to the server `name`, offering h2 by ALPN when `h2`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        name: ServerName<'static>,
        h2: bool,
    ) -> Result<TlsStream<TcpStream>, String> {
        let config = self.config(h2)?;
        let shown = name.to_str().into_owned();
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {shown} failed: {e}"))
    }

    /// The configuration for a new connection, made again when a file has changed.
    fn config(&self, h2: bool) -> Result<Arc<ClientConfig>, String> {
        if let Some(why) = &self.unusable {
            return Err(why.clone());
        }
        let stamp = self.files.stamp();
        let mut built = self.built.lock().map_err(|_| "TLS settings unavailable")?;
        if built.as_ref().is_none_or(|(at, _)| *at != stamp) {
            let fresh = self.build();
            if let Err(why) = &fresh {
                tracing::warn!("TLS to endpoints cannot be originated: {why}");
            }
            *built = Some((stamp, fresh));
        }
        match built.as_ref().map(|(_, b)| b) {
            Some(Ok(b)) => Ok(if h2 { b.h2.clone() } else { b.http1.clone() }),
            Some(Err(why)) => Err(why.clone()),
            None => Err("TLS settings unavailable".into()),
        }
    }

    fn build(&self) -> Result<Built, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ServerCheck {
            chain: match self.check {
                Check::Nothing => None,
                _ => Some(self.chain_verifier(&provider)?),
            },
            check: self.check.clone(),
            provider: provider.clone(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let http1 = match (&self.files.cert, &self.files.key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!(
                        "{}: does not match the certificate {}: {e}",
                        self.files.key.as_deref().unwrap_or(Path::new("")).display(),
                        cert.display()
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        let mut h2 = http1.clone();
        h2.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Built {
            http1: Arc::new(http1),
            h2: Arc::new(h2),
        })
    }

    /// The chain's checker: the CA files (else the system's), and the CRL when named.
    fn chain_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>, String> {
        let mut roots = RootCertStore::empty();
        match &self.files.ca {
            Some(ca) => {
                for c in certificates(ca)? {
                    roots.add(c).map_err(|e| {
                        format!("{}: not a usable CA certificate: {e}", ca.display())
                    })?;
                }
            }
            None => {
                let bundle = system_bundle().ok_or_else(|| {
                    format!(
                        "no caCertificates, and no system CA bundle (SSL_CERT_FILE, {})",
                        SYSTEM_BUNDLES.join(", ")
                    )
                })?;
                let (added, _) = roots.add_parsable_certificates(certificates(&bundle)?);
                if added == 0 {
                    return Err(format!("{}: no usable CA certificate", bundle.display()));
                }
            }
        }
        let mut builder =
            WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone());
        if let Some(crl) = &self.files.crl {
            let lists = CertificateRevocationListDer::pem_slice_iter(&read(crl)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: not a PEM CRL file: {e}", crl.display()))?;
            if lists.is_empty() {
                return Err(format!("{}: no CRL in the file", crl.display()));
            }
            builder = builder.with_crls(lists);
        }
        builder
            .build()
            .map_err(|e| format!("cannot check servers' certificates: {e}"))
    }
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first of [`SYSTEM_BUNDLES`] there is.
fn system_bundle() -> Option<PathBuf> {
    let named = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    named
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// Checks a server's certificate by a rule's [`Check`].
#[derive(Debug)]
struct ServerCheck {
    /// None when nothing is checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain {
            // webpki checks the chain, then the name: a name error means the chain holds.
            match chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => {}
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if self.check != Check::ServerName => {}
                Err(e) => return Err(e),
            }
        }
        if let Check::Names(names) = &self.check {
            let presented = subject_alt_names(end_entity.as_ref());
            if !names.iter().any(|n| presented.iter().any(|p| p.matches(n))) {
                let why = NamesNone(names.clone());
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(why)),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server's certificate names none of those a rule accepts. Shown the same either way,
/// as rustls shows it in debug form.
struct NamesNone(Vec<String>);

impl std::fmt::Display for NamesNone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the certificate names none of {}", self.0.join(", "))
    }
}

impl std::fmt::Debug for NamesNone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NamesNone {}

/// A name a certificate carries.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    Dns(String),
    /// A URI, an e-mail address or an IP address, compared whole.
    Other(String),
}

impl Presented {
    /// Whether a rule's `name` is this one, as Envoy matches `subjectAltNames`: exactly,
    /// or by a DNS name's wildcard standing for the first label.
    fn matches(&self, name: &str) -> bool {
        match self {
            Presented::Other(presented) => presented == name,
            Presented::Dns(presented) => {
                if presented.eq_ignore_ascii_case(name) {
                    return true;
                }
                let Some(suffix) = presented.strip_prefix("*.") else {
                    return false;
                };
                name.split_once('.').is_some_and(|(first, rest)| {
                    !first.is_empty() && rest.eq_ignore_ascii_case(suffix)
                })
            }
        }
    }
}

/// The subject alternative names of a certificate (none when it cannot be parsed).
fn subject_alt_names(der: &[u8]) -> Vec<Presented> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(sans)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    sans.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(n) => Some(Presented::Dns(n.to_string())),
            GeneralName::URI(u) => Some(Presented::Other(u.to_string())),
            GeneralName::RFC822Name(e) => Some(Presented::Other(e.to_string())),
            GeneralName::IPAddress(bytes) => ip_text(bytes).map(Presented::Other),
            _ => None,
        })
        .collect()
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple() -> ClientTlsSettings {
        ClientTlsSettings {
            mode: Some(TlsMode::Simple),
            ..ClientTlsSettings::default()
        }
    }

    #[test]
    fn only_simple_and_mutual_are_originated() {
        for mode in [TlsMode::Disable, TlsMode::IstioMutual] {
            let settings = ClientTlsSettings {
                mode: Some(mode),
                ..ClientTlsSettings::default()
            };
            assert!(OriginTls::of(&settings, &[]).is_none());
        }
        assert!(OriginTls::of(&ClientTlsSettings::default(), &[]).is_none());
        assert!(OriginTls::of(&simple(), &[]).is_some());
    }

    #[test]
    fn the_server_is_checked_as_istiod_sets_envoy_up() {
        let check = |settings: ClientTlsSettings, service_sans: &[&str]| {
            let sans: Vec<String> = service_sans.iter().map(|s| s.to_string()).collect();
            OriginTls::of(&settings, &sans).unwrap().check.clone()
        };
        let sni = |name: &str| ClientTlsSettings {
            sni: name.into(),
            ..simple()
        };
        assert_eq!(check(simple(), &[]), Check::ServerName);
        assert_eq!(check(sni("api.example.com"), &[]), Check::Chain);
        assert_eq!(
            check(sni("x"), &["spiffe://td/ns/a/sa/b"]),
            Check::Names(vec!["spiffe://td/ns/a/sa/b".into()])
        );
        let named = ClientTlsSettings {
            subject_alt_names: vec!["a.example.com".into()],
            ..simple()
        };
        assert_eq!(
            check(named, &["b"]),
            Check::Names(vec!["a.example.com".into()])
        );
        let skip = ClientTlsSettings {
            insecure_skip_verify: Some(true),
            ..simple()
        };
        assert_eq!(check(skip, &["b"]), Check::Nothing);
    }

    #[test]
    fn the_server_name_is_the_rules_sni_else_the_requests_host() {
        let auto = OriginTls::of(&simple(), &[]).unwrap();
        let name =
            |tls: &OriginTls, host: &str| tls.server_name(host).map(|n| n.to_str().into_owned());
        assert_eq!(name(&auto, "api.example.com").unwrap(), "api.example.com");
        assert_eq!(name(&auto, "[::1]").unwrap(), "::1");
        assert!(name(&auto, "bad name").is_err());
        let settings = ClientTlsSettings {
            sni: "other.example".into(),
            ..simple()
        };
        let fixed = OriginTls::of(&settings, &[]).unwrap();
        assert_eq!(name(&fixed, "api.example.com").unwrap(), "other.example");
    }

    #[test]
    fn the_same_settings_in_the_next_configuration_keep_their_connections() {
        let id = |settings: &ClientTlsSettings| OriginTls::of(settings, &[]).unwrap().id();
        assert_eq!(id(&simple()), id(&simple()));
        let other = ClientTlsSettings {
            sni: "other.example".into(),
            ..simple()
        };
        assert_ne!(id(&simple()), id(&other));
    }

    #[test]
    fn names_match_exactly_or_by_a_certificates_wildcard() {
        let dns = Presented::Dns("*.example.com".into());
        assert!(dns.matches("api.example.com"));
        assert!(dns.matches("API.Example.com"));
        assert!(!dns.matches("a.b.example.com"));
        assert!(!dns.matches("example.com"));
        assert!(Presented::Dns("api.example.com".into()).matches("api.example.com"));
        let uri = Presented::Other("spiffe://td/ns/a/sa/b".into());
        assert!(uri.matches("spiffe://td/ns/a/sa/b"));
        assert!(!uri.matches("spiffe://td/ns/a/sa/c"));
    }

    #[test]
    fn a_credential_name_or_a_missing_file_fails_connections_with_the_reason() {
        let secret = ClientTlsSettings {
            credential_name: "cacert".into(),
            ..simple()
        };
        let why = OriginTls::of(&secret, &[])
            .unwrap()
            .config(false)
            .unwrap_err();
        assert!(why.contains("Kubernetes secret"), "{why}");
        let missing = ClientTlsSettings {
            ca_certificates: "/nonexistent/ca.pem".into(),
            ..simple()
        };
        let why = OriginTls::of(&missing, &[])
            .unwrap()
            .config(false)
            .unwrap_err();
        assert!(why.contains("/nonexistent/ca.pem"), "{why}");
    }
}
