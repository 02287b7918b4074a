//! The east-west listener's side of a connection: the TLS handshake, the peer's
//! identity, then HTTP/2 ([`crate::h2_server`]), each request served to this cluster's
//! endpoints.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::HANDSHAKE_TIMEOUT;
use super::tls::MeshTls;
use crate::h2_server::{self, H2Settings};
use crate::outbound::{Outbound, Upstreams};

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
    let hop = outbound.hop_mark(&peer);
    let settings = H2Settings::for_peers(outbound.client_timeouts());
    let client = format!("east-west peer {peer} at {peer_address}");
    let handle = |request| {
        let (outbound, upstreams, hop) = (outbound.clone(), upstreams.clone(), hop.clone());
        async move {
            outbound
                .handle_east_west(request, hop.as_ref(), &upstreams)
                .await
        }
    };
    // WebSocket upgrades another cluster's proxy carries here as extended CONNECTs.
    let mut tunnels = |request, respond| {
        let (outbound, hop) = (outbound.clone(), hop.clone());
        let tunnel = async move {
            outbound
                .tunnel_for_peer(request, respond, hop.as_ref())
                .await
        };
        Box::pin(tunnel) as Pin<Box<dyn Future<Output = ()> + Send>>
    };
    let drain = outbound.drain().clone();
    h2_server::serve(
        stream,
        settings,
        &client,
        &drain,
        handle,
        Some(&mut tunnels),
    )
    .await;
}
