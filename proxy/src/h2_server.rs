//! Serving HTTP/2 on the `h2` crate directly: the outbound listener's h2c connections
//! (applications' requests) and the east-west listener's h2-over-mTLS ones (other
//! clusters' proxies).
//!
//! A connection and every request it carries run in one task, the requests as futures
//! polled alongside the connection (polling the connection is what reads their frames and
//! writes their answers): the answers that are ready first, then the connection, so that
//! they leave in one write. hyper's server spawned a task per request, copying the
//! request's large future twice, and piped each answer through a second future; without
//! them the receiving proxy of a hop runs 55,800 -> 52,400 instructions per request
//! (docs/benchmarks.md).
//!
//! Limits: a connection with no request open for [`H2Settings::idle`] is closed
//! gracefully (GOAWAY, then the requests in flight are finished); one whose client leaves
//! a header block unfinished for [`H2Settings::stall`] is closed; a request whose body
//! sends nothing for [`H2Settings::stall`] is answered 408 (not a gRPC request's: a
//! client stream may pause as long as it likes); a request the client resets
//! stops being served; at most [`H2Settings::max_concurrent_streams`] requests at once
//! and [`H2Settings::max_header_list_size`] bytes of fields each (h2 refuses more).

use std::error::Error;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::future::Either;
use futures::stream::{FuturesUnordered, StreamExt as _};
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::body::{ProxyBody, poll_h2_frame, send_within_window};
use crate::downstream::ClientTimeouts;
use crate::drain::Drain;
use crate::grpc::is_grpc;
use crate::outbound::ProxyResponse;
use crate::transport::Trailers;
use crate::wire::{MAX_HEAD_BYTES, content_length};

/// Requests one connection may carry at once, on either listener.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// How long a client has to send its connection preface and settings.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// The flow-control windows offered to the client: a stream's, and an application's
/// connection's.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// The connection's window on a connection that carries many clients' streams: one to
/// or from another cluster's proxy, or to an endpoint. Data a stream's reader has not
/// taken holds the connection's window as well as the stream's, so a window of a few
/// streams' would let a few slow readers stop every other stream on it; this one leaves
/// each stream's own window to bound what it holds, as Envoy's 256 MiB windows do.
pub const SHARED_CONNECTION_WINDOW: u32 = 1 << 30;

/// The limits of one listener's HTTP/2 connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// Requests one connection may carry at once.
    pub max_concurrent_streams: u32,
    /// The most bytes of fields a request may carry (as HPACK counts them).
    pub max_header_list_size: u32,
    /// How long a connection may go without an open request before it is closed.
    pub idle: Duration,
    /// How long a request's body may go without a byte before it is answered 408.
    pub stall: Duration,
    /// The connection's flow-control window.
    pub connection_window: u32,
}

impl H2Settings {
    /// The settings of the outbound listener: [`MAX_CONCURRENT_STREAMS`], heads as large
    /// as HTTP/1's ([`MAX_HEAD_BYTES`]), and the timeouts applications' connections have.
    pub fn for_clients(timeouts: ClientTimeouts) -> H2Settings {
        H2Settings {
            max_concurrent_streams: MAX_CONCURRENT_STREAMS,
            max_header_list_size: MAX_HEAD_BYTES as u32,
            idle: timeouts.idle,
            stall: timeouts.stall,
            connection_window: CONNECTION_WINDOW,
        }
    }

    /// The settings of the east-west listener: the same, but for the window of a
    /// connection every client of another cluster's proxy shares
    /// ([`SHARED_CONNECTION_WINDOW`]).
    pub fn for_peers(timeouts: ClientTimeouts) -> H2Settings {
        H2Settings {
            connection_window: SHARED_CONNECTION_WINDOW,
            ..H2Settings::for_clients(timeouts)
        }
    }
}

/// Serves a tunnel: an extended CONNECT stream (RFC 8441), answered on its own.
pub type Tunnels<'a> = &'a mut (
            dyn FnMut(
    Request<RecvStream>,
    SendResponse<Bytes>,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>
                + Send
        );

/// Serves HTTP/2 on `io` until the client closes it, it fails, or it sits idle: each
/// request is given to `handle` and its answer sent back. With `tunnels`, the connection
/// offers extended CONNECT (RFC 8441), and each such stream goes to it instead. `client`
/// names the other end in logs. Once `drain` begins, the connection is closed as when
/// idle: GOAWAY, and the requests in flight finished.
pub async fn serve<T, H, F>(
    io: T,
    settings: H2Settings,
    client: &str,
    drain: &Drain,
    mut handle: H,
    mut tunnels: Option<Tunnels<'_>>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<Received>) -> F,
    F: Future<Output = ProxyResponse>,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(settings.connection_window);
    if tunnels.is_some() {
        builder.enable_connect_protocol();
    }
    let (io, heads) = HeadWatch::new(io);
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut connection = match tokio::time::timeout(PREFACE_TIMEOUT, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(client, "h2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(client, "h2 handshake timed out");
            return;
        }
    };
    let mut requests = FuturesUnordered::new();
    let mut idle = Quiet::new(settings.idle);
    // The header block the client has left unfinished, and since when.
    let (mut unfinished, mut stalled) = (None, Quiet::new(settings.stall));
    let mut closing = false;
    let mut draining = drain.watch();
    let ended = poll_fn(|cx| {
        loop {
            let mut progressed = false;
            // Answers first: the connection then writes every ready one in one go.
            while let Poll::Ready(Some(())) = requests.poll_next_unpin(cx) {
                progressed = true;
                if requests.is_empty() {
                    idle.touch();
                }
            }
            match connection.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let tunnel = request.method() == Method::CONNECT
                        && request.extensions().get::<h2::ext::Protocol>().is_some();
                    match tunnels.as_mut() {
                        Some(open) if tunnel => {
                            requests.push(Either::Right(open(request, respond)))
                        }
                        _ => {
                            let head_only = request.method() == Method::HEAD;
                            // A gRPC request's body may be a stream, with pauses.
                            let stall = (!is_grpc(request.headers())).then_some(settings.stall);
                            // h2 holds the body to the length its client declared.
                            let length = content_length(
                                request
                                    .headers()
                                    .get_all(CONTENT_LENGTH)
                                    .iter()
                                    .map(|v| v.as_bytes()),
                                "request",
                            );
                            let length = length.ok().flatten();
                            let request = request.map(|body| Received::new(body, stall, length));
                            // The request's work boxed where it is made: the answering
                            // around it (and the set of requests that takes that) then
                            // holds a pointer, not the work's state (kilobytes).
                            let handling = crate::boxed(|| handle(request));
                            requests.push(Either::Left(respond_to(handling, respond, head_only)));
                        }
                    }
                    progressed = true;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(e)),
                // Closed, every request done.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            // A header block left unfinished (a HEADERS frame whose CONTINUATION does not
            // come): h2 holds it, and no request appears to be timed. Its connection is
            // closed after the stall timeout, as an HTTP/1 head that stops is answered 408.
            match heads.unfinished() {
                Some(block) => {
                    if unfinished != Some(block) {
                        unfinished = Some(block);
                        stalled.touch();
                    }
                    if stalled.poll_expired(cx) {
                        tracing::debug!(
                            client,
                            "h2 header block unfinished for {:?}: closing",
                            settings.stall
                        );
                        return Poll::Ready(None);
                    }
                }
                None => unfinished = None,
            }
            if requests.is_empty() && !closing && idle.poll_expired(cx) {
                tracing::debug!(
                    client,
                    "h2 connection idle for {:?}: closing",
                    settings.idle
                );
                connection.graceful_shutdown();
                closing = true;
                progressed = true;
            }
            if !closing && Pin::new(&mut draining).poll(cx).is_ready() {
                tracing::debug!(client, "draining: closing the h2 connection");
                connection.graceful_shutdown();
                closing = true;
                progressed = true;
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    if let Some(e) = ended {
        tracing::debug!(client, "h2 connection ended: {e}");
    }
}

/// Waits for `handling` and sends its answer on `respond`, unless the client gives the
/// request up first. `head_only`: the request was a HEAD, whose answer has no body.
///
/// `handling` comes boxed: an `async fn` keeps a future passed to it twice in its own (as
/// its argument, and where it is awaited), and a request's work is kilobytes.
async fn respond_to<F>(handling: Pin<Box<F>>, mut respond: SendResponse<Bytes>, head_only: bool)
where
    F: Future<Output = ProxyResponse>,
{
    let response = tokio::select! {
        response = handling => response,
        // Reset by the client (it left, or its timeout passed): nobody to answer.
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let (mut head, body) = response.into_parts();
    strip_connection_fields(&mut head.headers);
    let body = match body {
        ProxyBody::Whole(bytes) => bytes,
        ProxyBody::Streaming(_) if head_only => Bytes::new(),
        // Boxed: rare, and its state would otherwise be most of every request's here.
        streaming => return Box::pin(send_streamed(respond, head, streaming)).await,
    };
    if !head_only && !body.is_empty() && !head.headers.contains_key(CONTENT_LENGTH) {
        head.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    // Trailer fields (a gRPC answer's status) follow the body.
    let trailers = match head.extensions.remove::<Trailers>() {
        Some(Trailers(mut fields)) if !head_only => {
            strip_connection_fields(&mut fields);
            Some(fields)
        }
        _ => None,
    };
    let ends = (head_only || body.is_empty()) && trailers.is_none();
    let sent = respond
        .send_response(Response::from_parts(head, ()), ends)
        .and_then(|mut stream| {
            if ends {
                return Ok(());
            }
            // Buffered by h2 as the client's window allows: the body is bounded already.
            if !body.is_empty() {
                stream.send_data(body, trailers.is_none())?;
            }
            match trailers {
                Some(fields) => stream.send_trailers(fields),
                None => Ok(()),
            }
        });
    if let Err(e) = sent {
        tracing::debug!("h2 answer not sent: {e}");
    }
}

/// Sends an answer whose body is still arriving: its head, then its data as it comes, as
/// the client's flow-control window lets it, then its trailer fields. When the body
/// breaks off, the stream is reset, so the client does not take what came for the whole.
async fn send_streamed(
    mut respond: SendResponse<Bytes>,
    mut head: http::response::Parts,
    mut body: ProxyBody,
) {
    if let Some(length) = body.length() {
        head.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    let mut stream = match respond.send_response(Response::from_parts(head, ()), false) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!("h2 answer not sent: {e}");
            return;
        }
    };
    let ended = loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // Reset by the client: the rest is not wanted.
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let data = match frame.map(|f| f.map(Frame::into_data)) {
            None => break stream.send_data(Bytes::new(), true),
            Some(Ok(Ok(data))) => data,
            Some(Ok(Err(frame))) => {
                let mut fields = frame.into_trailers().unwrap_or_default();
                strip_connection_fields(&mut fields);
                break stream.send_trailers(fields);
            }
            Some(Err(e)) => {
                tracing::debug!("{e}");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
        };
        if let Err(e) = send_within_window(&mut stream, data).await {
            break Err(e);
        }
    };
    if let Err(e) = ended {
        tracing::debug!("h2 answer not sent whole: {e}");
    }
}

/// Takes out the fields HTTP/2 forbids (RFC 9113 §8.2.2): they describe an HTTP/1
/// connection, and h2 refuses to send an answer that carries them.
fn strip_connection_fields(headers: &mut HeaderMap) {
    // A look at each name first: answers seldom carry any of these, and a removal is a
    // hashed lookup per name.
    let connection_field = |name: &http::HeaderName| {
        matches!(
            name.as_str(),
            "connection"
                | "transfer-encoding"
                | "upgrade"
                | "keep-alive"
                | "proxy-connection"
                | "te"
        )
    };
    if !headers.keys().any(connection_field) {
        return;
    }
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

/// A timeout counted from the last sign of life: one sleep, moved only when it fires
/// early, so that activity costs a clock read rather than a timer registration.
struct Quiet {
    sleep: Pin<Box<Sleep>>,
    after: Duration,
    since: Instant,
}

impl Quiet {
    fn new(after: Duration) -> Quiet {
        let since = Instant::now();
        Quiet {
            sleep: Box::pin(tokio::time::sleep_until(since + after)),
            after,
            since,
        }
    }

    /// A sign of life: the quiet starts again from now.
    fn touch(&mut self) {
        self.since = Instant::now();
    }

    /// Whether it has been quiet for the whole time; if not, registers for a wake-up
    /// when it will have been.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.since + self.after;
            if Instant::now() >= due {
                return true;
            }
            self.sleep.as_mut().reset(due);
        }
    }
}

/// A connection's reading side, watched for one thing: a header block the client has
/// begun and not finished (a HEADERS frame without END_HEADERS, until the CONTINUATION
/// with it). Only the frames' 9-byte heads are read; everything else passes as it is.
struct HeadWatch<T> {
    io: T,
    /// Bytes to pass over before the next frame's head: the client's connection preface,
    /// then each frame's payload.
    skip: usize,
    /// The frame head being read, and how much of it has come.
    head: [u8; 9],
    have: usize,
    /// The header blocks begun (shifted left one), and whether the last is unfinished (the
    /// low bit); shared with the connection's loop.
    blocks: Arc<AtomicU64>,
}

/// The header blocks a [`HeadWatch`] has seen, as its connection's loop reads them.
struct HeadBlocks(Arc<AtomicU64>);

impl HeadBlocks {
    /// The number of the header block the client has left unfinished, if one is.
    fn unfinished(&self) -> Option<u64> {
        let blocks = self.0.load(Ordering::Relaxed);
        (blocks & 1 == 1).then_some(blocks >> 1)
    }
}

/// HTTP/2's frame types and the flag that ends a header block (RFC 9113 §6.2, §6.10).
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
/// The client's connection preface (RFC 9113 §3.4), before its first frame.
const PREFACE_BYTES: usize = 24;

impl<T> HeadWatch<T> {
    fn new(io: T) -> (HeadWatch<T>, HeadBlocks) {
        let blocks = Arc::new(AtomicU64::new(0));
        let watch = HeadWatch {
            io,
            skip: PREFACE_BYTES,
            head: [0; 9],
            have: 0,
            blocks: blocks.clone(),
        };
        (watch, HeadBlocks(blocks))
    }

    /// Reads what arrived: frame heads are noted, the rest passed over.
    fn scan(&mut self, mut bytes: &[u8]) {
        loop {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
            // A whole head is read where it lies; only one split across reads is gathered.
            let head = match bytes.first_chunk::<9>() {
                Some(head) if self.have == 0 => {
                    bytes = &bytes[9..];
                    *head
                }
                _ if bytes.is_empty() => return,
                _ => {
                    let n = (self.head.len() - self.have).min(bytes.len());
                    self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have < self.head.len() {
                        return;
                    }
                    self.have = 0;
                    self.head
                }
            };
            self.note(head);
        }
    }

    /// A frame's head: its payload is passed over, and a header block's start and end
    /// noted.
    fn note(&mut self, head: [u8; 9]) {
        let [l0, l1, l2, kind, flags, ..] = head;
        self.skip = u32::from_be_bytes([0, l0, l1, l2]) as usize;
        let ends = flags & END_HEADERS != 0;
        match kind {
            HEADERS if !ends => {
                let begun = (self.blocks.load(Ordering::Relaxed) >> 1) + 1;
                self.blocks.store((begun << 1) | 1, Ordering::Relaxed);
            }
            CONTINUATION if ends => {
                self.blocks.fetch_and(!1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let (_, arrived) = buf.filled().split_at(before);
        this.scan(arrived);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Why a request's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the request's stream failed: {0}")]
    Stream(#[from] h2::Error),
    #[error("no byte of the request body for {0:?}")]
    Stalled(Duration),
}

/// A request's body arriving on an h2 stream, as the proxy reads bodies: each chunk taken
/// is given back to the client's flow-control window, and a body that sends nothing for
/// the stall time, when it has one, fails with [`ReceiveError::Stalled`].
pub struct Received {
    stream: RecvStream,
    /// The data has ended: trailers, if any, are next.
    data_done: bool,
    stall: Option<Duration>,
    /// Made when the body first has to be waited for (most requests have none).
    quiet: Option<Quiet>,
    /// The length its client declared.
    length: Option<u64>,
}

impl Received {
    fn new(stream: RecvStream, stall: Option<Duration>, length: Option<u64>) -> Received {
        Received {
            stream,
            data_done: false,
            stall,
            quiet: None,
            length,
        }
    }

    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReceiveError>>> {
        let polled = ready!(poll_h2_frame(&mut self.stream, &mut self.data_done, cx));
        if let (Some(Ok(_)), Some(quiet)) = (&polled, &mut self.quiet) {
            quiet.touch();
        }
        Poll::Ready(polled.map(|frame| frame.map_err(ReceiveError::from)))
    }

    /// Whether the body has stalled, having been waited for; registers for a wake-up
    /// when it will have, if not.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let stall = self.stall?;
        let quiet = self.quiet.get_or_insert_with(|| Quiet::new(stall));
        quiet.poll_expired(cx).then_some(stall)
    }
}

impl Body for Received {
    type Data = Bytes;
    type Error = ReceiveError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReceiveError>>> {
        let this = &mut *self;
        match this.poll_stream(cx) {
            Poll::Pending => match this.stalled(cx) {
                Some(after) => Poll::Ready(Some(Err(ReceiveError::Stalled(after)))),
                None => Poll::Pending,
            },
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

/// Whether `error`, from reading a request body, is a stalled [`Received`] body.
pub fn is_stall(error: &(dyn Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<ReceiveError>(),
        Some(ReceiveError::Stalled(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's head and payload.
    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags, 0, 0, 0, 1]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn a_header_block_is_unfinished_from_its_headers_to_the_continuation_that_ends_it() {
        let (mut watch, blocks) = HeadWatch::new(());
        let mut read = |bytes: &[u8], one_at_a_time: bool| match one_at_a_time {
            true => bytes
                .iter()
                .for_each(|b| watch.scan(std::slice::from_ref(b))),
            false => watch.scan(bytes),
        };
        // The preface, whose bytes are no frame, and SETTINGS.
        read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true);
        read(&frame(0x4, 0, &[0; 6]), false);
        assert_eq!(blocks.unfinished(), None);
        // Begun, continued, ended; read a byte at a time and in one piece.
        for one_at_a_time in [true, false] {
            read(&frame(HEADERS, 0, b"abc"), one_at_a_time);
            let begun = blocks.unfinished().expect("begun");
            read(&frame(CONTINUATION, 0, b"d"), one_at_a_time);
            assert_eq!(blocks.unfinished(), Some(begun), "the same block");
            read(&frame(CONTINUATION, END_HEADERS, b"e"), one_at_a_time);
            assert_eq!(blocks.unfinished(), None);
        }
        // Whole in one frame; and a payload that holds what looks like a frame's head.
        read(&frame(HEADERS, END_HEADERS, b"abc"), false);
        read(&frame(0x0, 0, &frame(HEADERS, 0, b"")), true);
        assert_eq!(blocks.unfinished(), None);
        // The next block is another.
        read(&frame(HEADERS, 0, b"f"), false);
        assert_eq!(blocks.unfinished(), Some(3));
    }

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

        // Each found alone too.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("x-request-id", "7".parse().unwrap());
            headers.insert(name, "gzip".parse().unwrap());
            strip_connection_fields(&mut headers);
            assert_eq!(headers.len(), 1, "{name} left in");
        }

        let mut trailers = HeaderMap::new();
        trailers.insert(TE, "trailers".parse().unwrap());
        strip_connection_fields(&mut trailers);
        assert_eq!(trailers.get(TE).unwrap(), "trailers");
    }
}
