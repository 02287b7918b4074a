//! Connections to other clusters' east-west listeners: one h2 connection over mTLS per
//! gateway address, shared by every request to it (h2 multiplexes), made again when it
//! closes. Only one connection attempt per gateway runs at a time; requests arriving
//! meanwhile wait for it rather than open their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{ALPN_H2, MeshTls, PROXY_SERVER_NAME};

/// Why a request to another cluster got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No connection: TCP, TLS or the peer's identity failed.
    Connect(String),
    /// The connection or stream broke before an answer.
    Reset(String),
}

type Sender = http2::SendRequest<Full<Bytes>>;

/// The pool of east-west connections.
pub struct EastWestPool {
    tls: Arc<MeshTls>,
    connect_timeout: Duration,
    gateways: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Sender>>>>>,
}

impl EastWestPool {
    /// A pool presenting `tls`'s certificate.
    pub fn new(tls: Arc<MeshTls>, connect_timeout: Duration) -> EastWestPool {
        EastWestPool {
            tls,
            connect_timeout,
            gateways: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `request` to `cluster`'s listener at `gateway` (`host:port`). The request's URI must be
    /// absolute (`https://service/path`): its authority names the service.
    pub async fn send(
        &self,
        gateway: &str,
        cluster: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = self.sender(gateway, cluster).await?;
        sender
            .send_request(request)
            .await
            .map_err(|e| SendError::Reset(crate::outbound::error_chain(&e)))
    }

    async fn sender(&self, gateway: &str, cluster: &str) -> Result<Sender, SendError> {
        let cell = {
            let Ok(mut gateways) = self.gateways.lock() else {
                return Err(SendError::Connect("connection pool unavailable".into()));
            };
            gateways.entry(gateway.to_string()).or_default().clone()
        };
        let mut slot = cell.lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        *slot = None;
        // Boxed: a TLS handshake's state is kilobytes, and inline it would be part of (and
        // copied with) every request's future, though connections are rarely made.
        let connect = Box::pin(self.connect(gateway, cluster));
        let sender = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "connect to {gateway} timed out after {}ms",
                    self.connect_timeout.as_millis()
                ))
            })??;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, gateway: &str, cluster: &str) -> Result<Sender, SendError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            SendError::Connect(format!("{what} {gateway} (cluster {cluster}): {e}"))
        };
        let tcp = TcpStream::connect(gateway)
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(PROXY_SERVER_NAME)
            .map_err(|e| fail("bad server name for", &e))?
            .to_owned();
        let tls = TlsConnector::from(self.tls.client_config())
            .connect(name, tcp)
            .await
            .map_err(|e| fail("TLS handshake failed with", &e))?;
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(fail("no h2 (ALPN) from", &"the peer did not agree to h2"));
        }
        self.tls
            .check_peer(session.peer_certificates(), Some(cluster))
            .map_err(|e| fail("refused the identity of", &e))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail("h2 handshake failed with", &e))?;
        let gateway_text = gateway.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(gateway = %gateway_text, "east-west connection closed: {e}");
            }
        });
        Ok(sender)
    }
}
