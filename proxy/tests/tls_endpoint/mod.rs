//! Endpoints that speak TLS, with certificates made for the test: what a DestinationRule's
//! `tls` (SIMPLE, MUTUAL) has the proxy originate to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The names the endpoints' certificate carries.
pub const SERVER_DNS: &str = "api.example.com";
pub const SERVER_URI: &str = "spiffe://example.org/ns/api/sa/api";

/// The files of a test's certificates, in a directory of their own.
pub struct Certificates {
    _dir: tempfile::TempDir,
    /// The CA that signed the endpoints' certificate.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// A client certificate and its key, signed by `ca`.
    pub client: PathBuf,
    pub client_key: PathBuf,
    /// The endpoints' chain and key.
    server: PathBuf,
    server_key: PathBuf,
}

impl Certificates {
    pub fn make() -> Certificates {
        let dir = tempfile::tempdir().expect("temporary directory");
        let at = |name: &str| dir.path().join(name);
        let ca = authority("endpoints CA");
        let other = authority("another CA");
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        let leaf = |sans: Vec<rcgen::SanType>, usage| {
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![usage];
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec![
                rcgen::SanType::DnsName(SERVER_DNS.try_into().expect("dns")),
                rcgen::SanType::DnsName("*.wild.example".try_into().expect("dns")),
                rcgen::SanType::URI(SERVER_URI.try_into().expect("uri")),
            ],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec![rcgen::SanType::URI(
                "spiffe://example.org/ns/shop/sa/proxy"
                    .try_into()
                    .expect("uri"),
            )],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let files = [
            ("ca.pem", ca.cert.pem()),
            ("other-ca.pem", other.cert.pem()),
            ("server.pem", server),
            ("server-key.pem", server_key),
            ("client.pem", client),
            ("client-key.pem", client_key),
        ];
        for (name, pem) in files {
            std::fs::write(at(name), pem).expect("write a certificate file");
        }
        Certificates {
            ca: at("ca.pem"),
            other_ca: at("other-ca.pem"),
            client: at("client.pem"),
            client_key: at("client-key.pem"),
            server: at("server.pem"),
            server_key: at("server-key.pem"),
            _dir: dir,
        }
    }
}

struct Authority {
    params: rcgen::CertificateParams,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn authority(name: &str) -> Authority {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    Authority { params, cert, key }
}

fn pem_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("read")
        .collect::<Result<_, _>>()
        .expect("certificates")
}

/// A TLS endpoint on loopback (HTTP/1.1, and h2 when the client offers it by ALPN),
/// requiring a client certificate signed by the test CA when `mutual`. Its answers say
/// what it saw: `<HTTP version> sni=<server name> client=<yes|no> body=<bytes>`; a
/// WebSocket upgrade is taken (101), and what comes after it echoed. Counts the TLS
/// connections it accepted.
pub async fn tls_endpoint(certs: &Certificates, mutual: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if mutual {
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_chain(&certs.ca) {
            roots.add(c).expect("root");
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .expect("verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::from_pem_file(&certs.server_key).expect("key");
    let mut config = builder
        .with_single_cert(pem_chain(&certs.server), key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let session = tls.get_ref().1;
                let sni = session.server_name().unwrap_or("none").to_string();
                let client = if session.peer_certificates().is_some() {
                    "yes"
                } else {
                    "no"
                };
                let service = service_fn(move |mut r: Request<Incoming>| {
                    let seen = format!("{:?} sni={sni} client={client}", r.version());
                    let upgrade = r.headers().get(http::header::UPGRADE).is_some();
                    let upgraded = upgrade.then(|| hyper::upgrade::on(&mut r));
                    async move {
                        if let Some(upgraded) = upgraded {
                            tokio::spawn(async move {
                                let Ok(io) = upgraded.await else { return };
                                let (mut from, mut to) = tokio::io::split(TokioIo::new(io));
                                let _ = tokio::io::copy(&mut from, &mut to).await;
                            });
                            let mut taken = Response::new(Full::new(Bytes::new()));
                            *taken.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                            let fields = taken.headers_mut();
                            fields.insert(http::header::UPGRADE, "websocket".parse().unwrap());
                            fields.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
                            return Ok::<_, Infallible>(taken);
                        }
                        let body = r.into_body().collect().await.map(|b| b.to_bytes().len());
                        let text = format!("{seen} body={}", body.unwrap_or(0));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (address, accepted)
}
