//! The east-west listener's side of a connection: the TLS handshake, the peer's
//! identity, then h2, each request served to this cluster's endpoints.
//!
//! The `h2` crate is driven directly, as on the sending side ([`super::pool`]): the
//! connection and every request it carries run in one task, the requests as futures
//! polled alongside the connection. hyper's server spawned a task per request and piped
//! each answer through a second future: about a tenth of the receiving proxy's
//! instructions on a hop (docs/benchmarks.md).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::tls::MeshTls;
use super::{CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, MAX_CONCURRENT_STREAMS, STREAM_WINDOW};
use crate::app::MAX_HEADER_BYTES;
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
    let peer: Arc<str> = match tls.check_peer(stream.get_ref().1.peer_certificates(), None) {
        Ok(cluster) => cluster.into(),
        Err(e) => {
            tracing::warn!(peer = %peer_address, "east-west peer refused: {e}");
            return;
        }
    };
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(stream);
    let mut connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(peer = %peer, "east-west h2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(peer = %peer, "east-west h2 handshake timed out");
            return;
        }
    };
    let hop = outbound.hop_mark(&peer);
    // The requests being served. Polling the connection (`accept`) is what reads their
    // frames and writes their answers, so it goes on while any is pending.
    let mut requests = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => requests.push(Box::pin(serve_request(
                    request,
                    respond,
                    outbound.clone(),
                    upstreams.clone(),
                    hop.clone(),
                    peer.clone(),
                ))),
                Some(Err(e)) => {
                    tracing::debug!(peer = %peer, "east-west connection ended: {e}");
                    return;
                }
                // Closed by the peer, every stream done.
                None => return,
            },
            Some(()) = requests.next(), if !requests.is_empty() => {}
        }
    }
}

/// Serves one request of an east-west connection and sends the answer, unless the peer
/// gives the stream up first.
async fn serve_request(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    outbound: Arc<Outbound>,
    upstreams: Arc<Upstreams>,
    hop: Option<HeaderValue>,
    peer: Arc<str>,
) {
    let request = request.map(Received);
    let response = tokio::select! {
        response = outbound.handle_east_west(request, hop.as_ref(), &upstreams) => response,
        // Reset by the peer (its caller left, or its timeout passed): nobody to answer.
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let (mut head, body) = response.into_parts();
    strip_connection_fields(&mut head.headers);
    // The proxy's answers are whole already: this takes the one frame.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let sent = respond
        .send_response(Response::from_parts(head, ()), body.is_empty())
        .and_then(|mut stream| match body.is_empty() {
            true => Ok(()),
            // Buffered by h2 as the peer's window allows: the body is bounded already.
            false => stream.send_data(body, true),
        });
    if let Err(e) = sent {
        tracing::debug!(peer = %peer, "east-west answer not sent: {e}");
    }
}

/// Takes out the fields HTTP/2 forbids (RFC 9113 §8.2.2): they describe an HTTP/1
/// connection, and h2 refuses to send an answer that carries them.
fn strip_connection_fields(headers: &mut HeaderMap) {
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

/// A request body arriving on an h2 stream, as the proxy reads bodies: each chunk taken
/// is given back to the peer's flow-control window.
struct Received(RecvStream);

impl Body for Received {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match ready!(self.0.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = self.0.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => match ready!(self.0.poll_trailers(cx)) {
                Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(None) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(e))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_fields_are_taken_out_and_others_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("content-type", "text/plain"),
            ("x-request-id", "7"),
        ] {
            headers.append(name, value.parse().unwrap());
        }
        strip_connection_fields(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-request-id"]);

        let mut trailers = HeaderMap::new();
        trailers.insert(TE, "trailers".parse().unwrap());
        strip_connection_fields(&mut trailers);
        assert_eq!(trailers.get(TE).unwrap(), "trailers");
    }
}
