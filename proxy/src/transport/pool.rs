//! Connections to other clusters' east-west listeners: one h2 connection over mTLS per
//! gateway address, shared by every request to it (h2 multiplexes), made again when it
//! closes. Only one connection attempt per gateway runs at a time; requests arriving
//! meanwhile wait for it rather than open their own.
//!
//! The `h2` crate is driven directly: a request is sent and its answer read whole in
//! the request's own task, and only the connection runs as a task of its own (with a
//! ping every [`KEEPALIVE_INTERVAL`], dropped when no pong comes within
//! [`KEEPALIVE_TIMEOUT`]). hyper's client, over the same crate, spawned a task per
//! request and handed each answer through channels: a sixth of the sending proxy's
//! instructions on a hop (docs/benchmarks.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{Request, Response};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{ALPN_H2, MeshTls, PROXY_SERVER_NAME};
use crate::h2_server::{CONNECTION_WINDOW, STREAM_WINDOW};
use crate::tunnel::H2Stream;
use crate::upstream::MAX_ANSWER_BYTES;

/// How often an east-west connection is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request to another cluster got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No connection: TCP, TLS or the peer's identity failed.
    Connect(String),
    /// The connection or stream broke before an answer.
    Reset(String),
    /// The answer's body is over [`MAX_ANSWER_BYTES`].
    TooLarge,
}

/// A connection's request handle, and whether the connection has ended.
#[derive(Clone)]
struct Sender {
    requests: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

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

    /// Sends `request` to `cluster`'s listener at `gateway` (`host:port`) and reads the
    /// answer whole. The request's URI must be absolute (`https://service/path`): its
    /// authority names the service.
    pub async fn send(
        &self,
        gateway: &str,
        cluster: &str,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, SendError> {
        let reset = |e: h2::Error| SendError::Reset(crate::outbound::error_chain(&e));
        let sender = self.sender(gateway, cluster).await?;
        // Waits while the peer's limit of concurrent streams is reached.
        let mut requests = sender.requests.ready().await.map_err(reset)?;
        let (head, body) = request.into_parts();
        let (answer, mut stream) = requests
            .send_request(Request::from_parts(head, ()), body.is_empty())
            .map_err(reset)?;
        if !body.is_empty() {
            // Buffered by h2 as the peer's window allows: the body is bounded already.
            stream.send_data(body, true).map_err(reset)?;
        }
        let (head, mut received) = answer.await.map_err(reset)?.into_parts();
        // Mostly one DATA frame: kept as it came; joined when there are more.
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        let mut length = 0;
        while let Some(chunk) = received.data().await {
            let chunk = chunk.map_err(reset)?;
            let _ = received.flow_control().release_capacity(chunk.len());
            length += chunk.len();
            if length > MAX_ANSWER_BYTES {
                return Err(SendError::TooLarge);
            }
            match first.take() {
                None if joined.is_empty() => first = Some(chunk),
                None => joined.extend_from_slice(&chunk),
                Some(earlier) => {
                    joined.extend_from_slice(&earlier);
                    joined.extend_from_slice(&chunk);
                }
            }
        }
        let body = first.unwrap_or_else(|| joined.freeze());
        Ok(Response::from_parts(head, body))
    }

    /// Opens a stream to `cluster`'s listener at `gateway` with `request` (an extended
    /// CONNECT, whose stream is a tunnel), and waits for the answer's head: the answer,
    /// and the stream to carry bytes both ways on once it is a 200.
    pub async fn open(
        &self,
        gateway: &str,
        cluster: &str,
        request: Request<()>,
    ) -> Result<(http::response::Parts, H2Stream), SendError> {
        let reset = |e: h2::Error| SendError::Reset(crate::outbound::error_chain(&e));
        let sender = self.sender(gateway, cluster).await?;
        let mut requests = sender.requests.ready().await.map_err(reset)?;
        let (answer, send) = requests.send_request(request, false).map_err(reset)?;
        let (head, recv) = answer.await.map_err(reset)?.into_parts();
        Ok((head, H2Stream::new(send, recv)))
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
            && !sender.closed.load(Ordering::Acquire)
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
        let (requests, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| fail("h2 handshake failed with", &e))?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = connection.ping_pong();
        let (gateway_text, ended) = (gateway.to_string(), closed.clone());
        tokio::spawn(async move {
            let keepalive = async move {
                let Some(mut pings) = pings else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(KEEPALIVE_INTERVAL).await;
                    let pong =
                        tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque()));
                    match pong.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("ping failed: {e}"),
                        Err(_) => return "no pong within the keepalive timeout".to_string(),
                    }
                }
            };
            let why = tokio::select! {
                ended = &mut connection => match ended {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e.to_string(),
                },
                why = keepalive => why,
            };
            ended.store(true, Ordering::Release);
            tracing::debug!(gateway = %gateway_text, "east-west connection ended: {why}");
        });
        Ok(Sender { requests, closed })
    }
}
