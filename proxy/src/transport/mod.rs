//! East-west transport: h2 over mTLS between the proxies of different clusters.
//!
//! The listener ([`serve_east_west`]) accepts only proxies of this mesh's trust domain
//! (their certificate chains to the mesh CA, is in date, and carries a
//! `spiffe://<td>/fulcrum/proxy/<cluster>` identity) and serves only this cluster's
//! endpoints: a request that crossed once is never forwarded again. The client side is
//! [`EastWestPool`].

pub mod pool;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub use pool::{EastWestPool, SendError};
pub use tls::{MeshTls, TlsError};

use crate::app::{MAX_HEADER_BYTES, accept_into};
use crate::outbound::{Outbound, Upstreams};
use crate::workers::{Listener, Workers};

/// Requests one east-west connection may carry at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// How long a peer has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Accepts east-west connections and hands each to one of `workers`, until `stopped`.
pub async fn serve_east_west(
    listener: TcpListener,
    workers: Arc<Workers>,
    stopped: watch::Receiver<bool>,
) {
    accept_into(listener, Listener::EastWest, workers, stopped).await;
}

/// Serves one east-west connection: the TLS handshake (the peer must be a proxy of this
/// mesh), then h2, each request to this cluster's endpoints over `upstreams`.
pub(crate) async fn serve_east_west_connection(
    stream: TcpStream,
    tls: Arc<MeshTls>,
    outbound: Arc<Outbound>,
    upstreams: Arc<Upstreams>,
) {
    let peer_address = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let acceptor = TlsAcceptor::from(tls.server_config());
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        // Closed before a word: the other proxies' reachability probes.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!(peer = %peer_address, "east-west connection closed before TLS");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(peer = %peer_address, "east-west TLS handshake refused: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(peer = %peer_address, "east-west TLS handshake timed out");
            return;
        }
    };
    let peer = match tls.check_peer(stream.get_ref().1.peer_certificates(), None) {
        Ok(cluster) => cluster,
        Err(e) => {
            tracing::warn!(peer = %peer_address, "east-west peer refused: {e}");
            return;
        }
    };
    let peer: Arc<str> = peer.into();
    let service = service_fn(move |request: Request<Incoming>| {
        let (outbound, upstreams, peer) = (outbound.clone(), upstreams.clone(), peer.clone());
        async move { Ok::<_, Infallible>(outbound.handle_east_west(request, &peer, &upstreams).await) }
    });
    let _ = http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
