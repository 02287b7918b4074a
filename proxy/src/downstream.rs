//! The outbound listener's connections: applications' HTTP/1.1 requests, read and
//! answered here; h2c (with prior knowledge) handed to [`crate::h2_server`].
//!
//! Serving HTTP/1.1 is a loop: read a request's head, route it with its body (read
//! whole when small, else passed on as it arrives by a [`Pump`] while the request is
//! handled: [`crate::upload`]), write the answer (whole, or as it arrives:
//! [`crate::body`]), and again while the connection is kept alive. An answer that comes
//! before the body has all arrived (an endpoint refusing an upload) is passed on, and the
//! connection closed after it: the rest of the body is not read. hyper's
//! server did the same through a general dispatcher and codec, about a third of a plain
//! request's instructions once the client side was the proxy's own (docs/benchmarks.md).
//!
//! What is refused before routing, with `x-fulcrum-reason` and the connection closed: a
//! malformed head (400), one larger than [`MAX_HEAD_BYTES`] or with more than
//! [`MAX_HEADERS`] fields (431), ambiguous framing — both Content-Length and
//! Transfer-Encoding, differing or invalid Content-Lengths, a transfer coding other than
//! chunked last, Transfer-Encoding in HTTP/1.0 (400, as Envoy does: a classic request
//! smuggling probe), malformed chunks (400, also when they come after the request was
//! routed: it is dropped). `Expect: 100-continue` is answered before the body is read.
//! Requests on one connection are answered in order (pipelining). A connection waiting for
//! its next request is closed after [`ClientTimeouts::idle`]; a request whose head is not
//! whole within [`ClientTimeouts::stall`] of its first byte, or whose body then sends
//! nothing for as long, is answered 408. After a refusal, or an answer that came before
//! the body ended, the proxy reads and drops what the client still sends, for a moment,
//! so that the client reads the answer rather than a reset.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http::header::{CONNECTION, DATE, EXPECT, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::body::{PIECES_AHEAD, ProxyBody, SentPiece, WHOLE_BODY_BYTES};
use crate::drain::DrainWatch;
use crate::h2_server::{self, H2Settings};
use crate::outbound::{
    ClientAddress, Outbound, ProxyResponse, Upstreams, WebSocketUpgrade, answer,
};
use crate::tunnel::{TunnelIo, splice};
use crate::wire::{
    BodyError, BodyReader, COALESCED_BODY, Dechunker, FieldKind, MAX_HEAD_BYTES, MAX_HEADERS,
    Piece, RawFields, Wire, chunked, content_length, decimal, note_spans, scan,
};

/// How long applications' connections may wait, and stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// How long a connection may wait for its next request (or its first) before it is
    /// closed.
    pub idle: Duration,
    /// How long a request's head may take to come whole from its first byte, and its
    /// body go without a byte, before it is answered 408 and the connection closed: a
    /// client cannot hold a connection with a request it never finishes, nor with one
    /// it trickles in. (Over h2, a gRPC request's body may pause: it is a stream,
    /// forwarded as it arrives.)
    pub stall: Duration,
}

impl Default for ClientTimeouts {
    /// An hour idle (Envoy's default idle timeout for the same job); 30 s stalled
    /// (hyper's header read timeout).
    fn default() -> ClientTimeouts {
        ClientTimeouts {
            idle: Duration::from_secs(3600),
            stall: Duration::from_secs(30),
        }
    }
}
/// How late a connection's idle or stall timer may fire: it is moved only when its
/// deadline has moved further than this, so a busy connection does not register a timer
/// with the runtime for every request.
const TIMER_SLACK: Duration = Duration::from_secs(1);

/// The timer a connection's waits for requests run against: one per connection, never
/// firing before the wait asked for, and at most [`TIMER_SLACK`] after. It also keeps
/// by when the request head being read must be whole. (Small on purpose: every waiting
/// connection holds it, in a future of about 1 KB that tokio allocates in steps of 128
/// bytes.)
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    head_by: Option<tokio::time::Instant>,
}

impl Deadline {
    fn new() -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            head_by: None,
        }
    }

    /// How long the request head begun on the connection may still take: `stall` from
    /// when this was first asked for that head (its first byte had come), less the time
    /// since; `None` once that is up.
    fn head_wait(&mut self, stall: Duration) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let left = (self.head_by.get_or_insert(now + stall)).saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }

    /// Reads more into `wire`; `None` when nothing came within `wait`. With nothing kept
    /// from before (a connection waiting for its next request), it waits without a
    /// buffer and takes one when bytes come: a connection that waits holds its task
    /// alone, not a buffer too.
    async fn fill(&mut self, wire: &mut Wire, wait: Duration) -> Option<io::Result<usize>> {
        let at = tokio::time::Instant::now() + wait;
        // (The deadline read twice rather than kept in a local, which this future would
        // then hold across its wait.)
        if at > self.sleep.deadline() || at + TIMER_SLACK < self.sleep.deadline() {
            self.sleep.as_mut().reset(at + TIMER_SLACK);
        }
        let filling = async {
            if wire.read.is_empty() {
                wire.release();
                std::future::poll_fn(|cx| wire.stream.poll_read_ready(cx)).await?;
            }
            wire.fill(0).await
        };
        tokio::select! {
            biased;
            read = filling => Some(read),
            () = self.sleep.as_mut() => None,
        }
    }
}

/// After a refusal, how long the proxy reads (and drops) what the client still sends
/// before it closes, so that the client reads the refusal rather than a reset.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much is read and dropped while lingering.
const LINGER_BYTES: usize = 1024 * 1024;

/// Room made for an answer's head (and a small body with it) before it is written.
const ANSWER_HEAD: usize = 1024;

/// The connection preface of HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Once a drain has begun, how long a connection that has sent nothing yet has to send
/// its first byte before it is closed: one made just before (or during) the drain may
/// have its request on the way, but one that never sends must not hold the drain up.
pub const FIRST_BYTE_WHILE_DRAINING: Duration = Duration::from_secs(1);

/// Serves one application connection on the outbound listener until the client closes
/// it, a request asks to close it, or a request is refused.
pub async fn serve(stream: TcpStream, outbound: Arc<Outbound>, upstreams: Arc<Upstreams>) {
    let client = stream.peer_addr().ok().map(ClientAddress);
    let timeouts = outbound.client_timeouts();
    let mut wire = Wire::new(stream, "the client");
    wire.stall = Some(timeouts.stall);
    let mut deadline = Deadline::new();
    let mut draining = outbound.drain().watch();
    // Until when a connection that has sent nothing may still send, once a drain began.
    let mut grace: Option<tokio::time::Instant> = None;
    // Enough of the first bytes to tell HTTP/2's preface from an HTTP/1 request line.
    while wire.read.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&wire.read) {
        let wait = match (wire.read.is_empty(), grace) {
            (true, Some(until)) => {
                Some(until.saturating_duration_since(tokio::time::Instant::now()))
            }
            (true, None) => Some(timeouts.idle),
            (false, _) => deadline.head_wait(timeouts.stall),
        };
        let filled = match (wait, wire.read.is_empty() && grace.is_none()) {
            // A drain gives a connection that has sent nothing a moment to send its
            // request (which is then served, and the connection closed after it).
            (Some(wait), true) => tokio::select! {
                biased;
                filled = deadline.fill(&mut wire, wait) => filled,
                () = &mut draining => {
                    grace = Some(tokio::time::Instant::now() + FIRST_BYTE_WHILE_DRAINING);
                    continue;
                }
            },
            (Some(wait), false) => deadline.fill(&mut wire, wait).await,
            // The head's time is up (not a moment more for the timer's slack).
            (None, _) => None,
        };
        match filled {
            // A head begun and not finished in time: answered 408 below, as any other.
            None if !wire.read.is_empty() => break,
            Some(Ok(0) | Err(_)) | None => return,
            Some(Ok(_)) => {}
        }
    }
    if wire.read.starts_with(H2_PREFACE) {
        drop(draining);
        // Boxed, as are the other rare paths below: each connection's future is as large
        // as the largest thing it may await inline, and every waiting connection holds it.
        Box::pin(serve_h2(wire, client, outbound, upstreams)).await;
        return;
    }
    let mut date = Date::default();
    loop {
        let reading = read_request(&mut wire, &timeouts, &mut deadline, &mut draining);
        let incoming = match reading.await {
            Ok(Some(incoming)) => incoming,
            Ok(None) => return,
            Err(refusal) => {
                Box::pin(refuse(&mut wire, refusal, &outbound)).await;
                return;
            }
        };
        // Boxed: what a request holds while it is served (its routing, its tries, its
        // answer) is most of what serving takes, and a connection waiting for its next
        // request holds only what waiting takes: 1.7 KB where it held 16.6 with its read
        // buffer. Boxed where it is made: a future made first and boxed after keeps its
        // room in this one too (and is copied whole into its box).
        let exchange = crate::boxed(|| {
            exchange(
                &mut wire, incoming, &outbound, &upstreams, client, &mut date,
            )
        });
        match exchange.await {
            After::Next => {}
            After::Close => return,
            After::Tunnel(upstream, answered) => {
                Box::pin(tunnel(wire, upstream, answered, timeouts.idle)).await;
                return;
            }
        }
    }
}

/// What becomes of an application's connection after an exchange.
enum After {
    /// It waits for its next request.
    Next,
    /// It is closed.
    Close,
    /// It carries a WebSocket tunnel to this other end, which answered so far this.
    Tunnel(Box<dyn TunnelIo>, Bytes),
}

/// Serves a request whose head was read off `wire`: takes its body, answers it, and says
/// what becomes of the connection.
async fn exchange(
    wire: &mut Wire,
    incoming: Incoming,
    outbound: &Outbound,
    upstreams: &Upstreams,
    client: Option<ClientAddress>,
    date: &mut Date,
) -> After {
    let Incoming {
        mut request,
        keep_alive,
        framing,
        continue_first,
    } = incoming;
    let (head_only, version) = (request.method() == Method::HEAD, request.version());
    // Answered here: the endpoint gets the body with the request.
    if continue_first
        && (wire.stream)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return After::Close;
    }
    // Most requests have no body: nothing to wait for.
    let pump = match framing {
        Framing::Length(0) => None,
        framing => match with_body(wire, &mut request, framing).await {
            Ok(pump) => pump,
            Err(refusal) => {
                refuse(wire, refusal, outbound).await;
                return After::Close;
            }
        },
    };
    if request.extensions().get::<WebSocketUpgrade>().is_some() {
        // The connection is the tunnel's from here on, whatever the endpoint answers.
        // Boxed, as are the other rare paths: the box of every exchange is as large as
        // the largest thing it may await inline.
        return match Box::pin(outbound.open_tunnel(request, client, upstreams)).await {
            Ok((upstream, answered)) => After::Tunnel(upstream, answered),
            Err(response) => {
                let mut out = Vec::with_capacity(ANSWER_HEAD);
                let (following, _) = encode(&mut out, response, None, &Answer::CLOSING, date);
                send(wire, &mut out, following).await;
                After::Close
            }
        };
    }
    let (response, fields, body_read) = match pump {
        None => {
            let (response, fields) = outbound.handle_raw(request, client, upstreams).await;
            (response, fields, true)
        }
        // Boxed too: a body passed on as it arrives is the rarer case.
        Some(pump) => match Box::pin(handle_pumping(
            outbound, request, client, upstreams, pump, wire,
        ))
        .await
        {
            Ok(((response, fields), body_read)) => (response, fields, body_read),
            Err(refusal) => {
                refuse(wire, refusal, outbound).await;
                return After::Close;
            }
        },
    };
    // Made for each answer, not kept: a connection waiting for its next request holds no
    // buffer.
    let mut out = Vec::with_capacity(ANSWER_HEAD);
    let answer = Answer {
        head_only,
        // What is left of an unread body would be taken for the next request; a draining
        // proxy takes no next request.
        keep_alive: keep_alive && body_read && !outbound.drain().begun(),
        version,
    };
    let (following, keep_alive) = encode(&mut out, response, fields.as_ref(), &answer, date);
    if !send(wire, &mut out, following).await {
        return After::Close;
    }
    if !body_read {
        linger(wire).await;
        return After::Close;
    }
    match keep_alive {
        true => After::Next,
        false => After::Close,
    }
}

/// Handles a request while its body is read off `wire` by `pump` and passed on. Returns
/// the answer, and whether the body was read to its end (an answer may come first: an
/// endpoint refusing an upload does not wait for it; then the rest is not read, and the
/// connection is closed after the answer). A body that breaks off (malformed, stalled, or
/// the client gone) ends the request: it is refused, and the tries are dropped.
async fn handle_pumping(
    outbound: &Outbound,
    request: Request<ProxyBody>,
    client: Option<ClientAddress>,
    upstreams: &Upstreams,
    pump: Pump,
    wire: &mut Wire,
) -> Result<((ProxyResponse, Option<RawFields>), bool), Refusal> {
    let handling = outbound.handle_raw(request, client, upstreams);
    let pumping = pump.run(wire);
    tokio::pin!(handling, pumping);
    let mut body_read = None;
    loop {
        tokio::select! {
            biased;
            handled = &mut handling => {
                // The pump may have read the body's end and be telling it: let it finish.
                if body_read.is_none() {
                    body_read = pumping.as_mut().now_or_never().and_then(Result::ok);
                }
                return Ok((handled, body_read == Some(true)));
            }
            pumped = &mut pumping, if body_read.is_none() => body_read = Some(pumped?),
        }
    }
}

/// Carries bytes both ways between the client and the other end of a WebSocket upgrade
/// (an endpoint, or another cluster's proxy): first what each side sent past the heads
/// (`answered` is the answer so far), then everything, until both directions are done or
/// nothing has moved for `idle`.
async fn tunnel(mut wire: Wire, mut upstream: Box<dyn TunnelIo>, answered: Bytes, idle: Duration) {
    if upstream.write_all(&wire.read).await.is_err()
        || wire.stream.write_all(&answered).await.is_err()
    {
        return;
    }
    splice(wire.stream, upstream, idle).await;
}

/// Why a request is answered before routing, and the connection closed.
struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    fn bad(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
        }
    }
}

impl From<String> for Refusal {
    fn from(reason: String) -> Refusal {
        Refusal::bad(reason)
    }
}

/// A request's head read off the connection.
struct Incoming {
    request: Request<ProxyBody>,
    /// Whether the connection stays open after the answer.
    keep_alive: bool,
    /// How the body that follows is delimited.
    framing: Framing,
    /// The client waits for `100 Continue` before it sends the body.
    continue_first: bool,
}

/// How an answer is to be written.
#[derive(Clone, Copy)]
struct Answer {
    /// To a HEAD request: no body.
    head_only: bool,
    /// The connection stays open after it.
    keep_alive: bool,
    /// The request's version (an HTTP/1.0 client is told the connection stays open).
    version: Version,
}

impl Answer {
    /// A refusal, after which the connection is closed.
    const CLOSING: Answer = Answer {
        head_only: false,
        keep_alive: false,
        version: Version::HTTP_11,
    };
}

/// A request head read off the connection: the request without its body, how the body
/// is framed, and whether the connection stays open after the answer.
struct Head {
    request: Request<ProxyBody>,
    framing: Framing,
    keep_alive: bool,
}

/// How a request's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Reads the next request's head off `wire`: `None` when the client closes the
/// connection or leaves it idle, or when the proxy drains it while it is idle
/// (`draining`). The head must be whole within [`ClientTimeouts::stall`] of its first
/// byte ([`Deadline::head_wait`]), however it trickles in: a client sending a byte now
/// and then cannot hold the connection.
async fn read_request(
    wire: &mut Wire,
    timeouts: &ClientTimeouts,
    deadline: &mut Deadline,
    draining: &mut DrainWatch<'_>,
) -> Result<Option<Incoming>, Refusal> {
    let Head {
        mut request,
        framing,
        keep_alive,
    } = loop {
        if let Some(head) = parse_request(wire)? {
            // Whole: the next head is timed from its own first byte.
            deadline.head_by = None;
            break head;
        }
        if wire.read.len() >= MAX_HEAD_BYTES {
            return Err(Refusal {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: format!("request head larger than {} KiB", MAX_HEAD_BYTES / 1024),
            });
        }
        let begun = !wire.read.is_empty();
        let wait = match begun {
            true => deadline.head_wait(timeouts.stall),
            false => Some(timeouts.idle),
        };
        let filled = match (wait, begun) {
            (Some(wait), true) => deadline.fill(wire, wait).await,
            // Between requests a draining proxy closes the connection.
            (Some(wait), false) => tokio::select! {
                biased;
                filled = deadline.fill(wire, wait) => filled,
                () = &mut *draining => return Ok(None),
            },
            // The head's time is up (not a moment more for the timer's slack).
            (None, _) => None,
        };
        match filled {
            Some(Ok(0) | Err(_)) => return Ok(None),
            Some(Ok(_)) => {}
            // Idle: closed without a word; between requests nothing is owed.
            None if !begun => return Ok(None),
            None => {
                return Err(Refusal {
                    status: StatusCode::REQUEST_TIMEOUT,
                    reason: format!(
                        "request head not whole within {:?} of its first byte",
                        timeouts.stall
                    ),
                });
            }
        }
    };
    let continue_first = !matches!(framing, Framing::Length(0))
        && request.version() == Version::HTTP_11
        && request
            .headers()
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if continue_first {
        request.headers_mut().remove(EXPECT);
    }
    Ok(Some(Incoming {
        request,
        keep_alive,
        framing,
        continue_first,
    }))
}

/// Gives `request` its body: read whole when it is small (a declared length of at most
/// [`WHOLE_BODY_BYTES`], or a chunked body all of which is already in), else passed on
/// as it arrives, by the [`Pump`] returned ([`crate::upload`]).
async fn with_body(
    wire: &mut Wire,
    request: &mut Request<ProxyBody>,
    framing: Framing,
) -> Result<Option<Pump>, Refusal> {
    let (reader, first, length) = match framing {
        Framing::Length(n) if n <= WHOLE_BODY_BYTES => {
            let body = wire.read_length(n, WHOLE_BODY_BYTES as usize).await;
            *request.body_mut() = ProxyBody::Whole(body.map_err(body_refusal)?);
            return Ok(None);
        }
        Framing::Length(n) => (BodyReader::Length(n), Bytes::new(), Some(n)),
        Framing::Chunked => {
            let mut dechunker = Dechunker::default();
            let mut first = BytesMut::new();
            loop {
                match dechunker.step(&mut wire.read).map_err(bad_body)? {
                    Piece::Data(data) => first.extend_from_slice(&data),
                    Piece::End => {
                        *request.body_mut() = ProxyBody::Whole(first.freeze());
                        return Ok(None);
                    }
                    Piece::More => break (BodyReader::Chunked(dechunker), first.freeze(), None),
                }
            }
        }
    };
    let (sender, pieces) = mpsc::channel(PIECES_AHEAD);
    *request.body_mut() = ProxyBody::from_pieces(pieces, length);
    Ok(Some(Pump {
        reader,
        first,
        sender,
    }))
}

/// Reads a request's body off the client's connection and sends it on, piece by piece,
/// as fast as the request's tries take it.
struct Pump {
    reader: BodyReader,
    /// What was read of it with the head.
    first: Bytes,
    sender: mpsc::Sender<SentPiece>,
}

impl Pump {
    /// True once the body has been read to its end; false when the request stopped
    /// taking it first (the rest is still on the connection). A body that breaks off
    /// (malformed, stalled, or the connection gone) is an error, told to the request too.
    async fn run(self, wire: &mut Wire) -> Result<bool, Refusal> {
        let Pump {
            mut reader,
            first,
            sender,
        } = self;
        if !first.is_empty() && sender.send(Ok(Some(first))).await.is_err() {
            return Ok(false);
        }
        loop {
            let step = reader.step(&mut wire.read).map_err(bad_body);
            let refusal = match step {
                Ok(Piece::Data(data)) => {
                    if sender.send(Ok(Some(data))).await.is_err() {
                        return Ok(false);
                    }
                    continue;
                }
                Ok(Piece::End) => {
                    let _ = sender.send(Ok(None)).await;
                    return Ok(true);
                }
                Ok(Piece::More) => {
                    let filled = tokio::select! {
                        filled = wire.fill_within(reader.wants(), || "the end of the body".into()) => filled,
                        () = sender.closed() => return Ok(false),
                    };
                    match filled {
                        Ok(()) => continue,
                        Err(e) => body_refusal(e),
                    }
                }
                Err(refusal) => refusal,
            };
            let _ = sender.send(Err(refusal.reason.clone())).await;
            return Err(refusal);
        }
    }
}

fn body_refusal(e: BodyError) -> Refusal {
    match e {
        BodyError::TooLarge => Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "request body too large".into(),
        },
        BodyError::Stalled(after) => Refusal {
            status: StatusCode::REQUEST_TIMEOUT,
            reason: format!("no byte of the request body for {after:?}"),
        },
        BodyError::Broken(why) => bad_body(why),
    }
}

fn bad_body(why: String) -> Refusal {
    Refusal::bad(format!("request body could not be read: {why}"))
}

/// Answers `refusal`, saying the connection closes (the caller then closes it), and
/// counts it.
async fn refuse(wire: &mut Wire, refusal: Refusal, outbound: &Outbound) {
    outbound.count_refused(refusal.status, &refusal.reason);
    let mut response = answer(refusal.status, &refusal.reason);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    let mut out = Vec::new();
    let (following, _) = encode(
        &mut out,
        response,
        None,
        &Answer::CLOSING,
        &mut Date::default(),
    );
    if !send(wire, &mut out, following).await {
        return;
    }
    linger(wire).await;
}

/// Closes the connection while the client may still be sending (a body not read): says
/// no more is coming, then reads and drops what the client sends for a while. Closing
/// with unread bytes would reset the connection, and the client could lose the answer.
async fn linger(wire: &mut Wire) {
    if wire.stream.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        // Read into the connection's buffer: a buffer of its own here would be part of
        // every connection's future, lingering or not.
        wire.read.clear();
        match tokio::time::timeout_at(deadline, wire.fill(0)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => return,
        }
    }
}

/// Parses a request head from the front of the wire's buffer, taking it out: `None`
/// while it is not all there yet.
fn parse_request(wire: &mut Wire) -> Result<Option<Head>, Refusal> {
    // The slots are left uninitialised: zeroing 100 of them costs more than the parse.
    let (length, method, target, version) = {
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let length = match request.parse_with_uninit_headers(&wire.read, &mut slots) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Refusal {
                    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    reason: format!("more than {MAX_HEADERS} header fields"),
                });
            }
            Err(e) => return Err(Refusal::bad(format!("malformed request: {e}"))),
        };
        note_spans(&mut wire.spans, wire.read.as_ptr(), request.headers);
        let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
            .map_err(|_| Refusal::bad("malformed request: method"))?;
        let target = request.path.unwrap_or_default();
        let target = (
            target.as_ptr() as usize - wire.read.as_ptr() as usize,
            target.len(),
        );
        let version = match request.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        (length, method, target, version)
    };
    let head = wire.read.split_to(length).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1)).map_err(|_| {
        Refusal::bad(format!(
            "invalid request target {:?}",
            String::from_utf8_lossy(&head[target.0..target.0 + target.1])
        ))
    })?;
    let fields = scan(head, &wire.spans);
    let keep_alive = fields.reusable(version);
    let websocket = fields.websocket && version == Version::HTTP_11 && method == Method::GET;
    let raw = &fields.raw;
    let framing = match chunked(raw.values(FieldKind::TransferEncoding)) {
        Some(_) if raw.contains(FieldKind::ContentLength) => {
            return Err(Refusal::bad(
                "both Content-Length and Transfer-Encoding: ambiguous framing",
            ));
        }
        Some(_) if version == Version::HTTP_10 => {
            return Err(Refusal::bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        Some(false) => {
            return Err(Refusal::bad(
                "Transfer-Encoding whose last coding is not chunked",
            ));
        }
        Some(true) => Framing::Chunked,
        None => Framing::Length(
            content_length(raw.values(FieldKind::ContentLength), "request")?.unwrap_or(0),
        ),
    };
    // Room for the request id the proxy adds when the client sent none.
    let headers = raw.to_map(1);
    let mut request = Request::new(ProxyBody::default());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    request.headers_mut().remove(TRANSFER_ENCODING);
    if websocket && matches!(framing, Framing::Length(0)) {
        request.extensions_mut().insert(WebSocketUpgrade);
    }
    Ok(Some(Head {
        request,
        framing,
        keep_alive,
    }))
}

/// What follows an answer's head on the connection.
enum Following {
    /// Nothing, or a whole body too large to be copied after the head.
    Bytes(Bytes),
    /// A body still arriving, written as it does: chunked when `true`, else as it comes
    /// (its length declared, or up to the close).
    Stream(ProxyBody, bool),
}

/// Writes the answer's head into `out`, with the body when it is whole and small; returns
/// what is to be written after `out`, and whether the connection stays open after the
/// answer. A whole body is framed by Content-Length (none for 1xx, 204 and 304; for HEAD,
/// the one the answer carries); a streamed one by the length it declared, else chunked,
/// else (to an HTTP/1.0 client) by the close. The answer's own framing and Connection
/// fields are replaced. An endpoint's `fields` are copied as they came, but for the names
/// the proxy set in the header map, which come after them.
fn encode(
    out: &mut Vec<u8>,
    response: ProxyResponse,
    fields: Option<&RawFields>,
    answer: &Answer,
    date: &mut Date,
) -> (Following, bool) {
    let Answer {
        head_only,
        mut keep_alive,
        version,
    } = *answer;
    let (parts, body) = response.into_parts();
    let (body, stream) = match body {
        ProxyBody::Whole(bytes) => (bytes, None),
        streaming => (Bytes::new(), Some(streaming)),
    };
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = parts.headers.contains_key(DATE);
    let mut length_field: Option<&[u8]> = None;
    for (kind, name, value) in fields.iter().flat_map(|r| r.iter()) {
        let set_by_proxy =
            || (parts.headers.keys()).any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()));
        match kind {
            FieldKind::ContentLength => length_field = Some(value),
            FieldKind::TransferEncoding | FieldKind::HopByHop | FieldKind::Connection => {}
            _ if set_by_proxy() => {}
            FieldKind::Date => {
                has_date = true;
                field(out, name, value);
            }
            FieldKind::EndToEnd => field(out, name, value),
        }
    }
    for (name, value) in &parts.headers {
        match FieldKind::of(name.as_str().as_bytes()) {
            FieldKind::ContentLength => length_field = Some(value.as_bytes()),
            FieldKind::TransferEncoding | FieldKind::Connection => {}
            _ => field(out, name.as_str().as_bytes(), value.as_bytes()),
        }
    }
    if !has_date {
        field(out, b"date", date.now().as_bytes());
    }
    let code = status.as_u16();
    let bodiless = status.is_informational() || code == 204 || code == 304;
    let mut chunked = false;
    if !bodiless {
        let length = stream
            .as_ref()
            .map_or(Some(body.len() as u64), ProxyBody::length);
        match (length_field.filter(|_| head_only), length) {
            (Some(length), _) => field(out, b"content-length", length),
            (None, Some(length)) => {
                out.extend_from_slice(b"content-length: ");
                decimal(out, length);
                out.extend_from_slice(b"\r\n");
            }
            (None, None) if version == Version::HTTP_11 => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
            (None, None) => keep_alive = false,
        }
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless || head_only {
        return (Following::Bytes(Bytes::new()), keep_alive);
    }
    if let Some(stream) = stream {
        return (Following::Stream(stream, chunked), keep_alive);
    }
    if body.len() <= COALESCED_BODY {
        out.extend_from_slice(&body);
        return (Following::Bytes(Bytes::new()), keep_alive);
    }
    (Following::Bytes(body), keep_alive)
}

/// Writes an answer: its head (`out`, then used as scratch space), then what follows it.
/// False when the connection cannot carry another answer: it broke, or a streamed body
/// broke off (the client sees the answer end early: a short body, or a chunked one
/// without its last chunk).
async fn send(wire: &mut Wire, out: &mut Vec<u8>, following: Following) -> bool {
    if wire.stream.write_all(out).await.is_err() {
        return false;
    }
    match following {
        Following::Bytes(body) => body.is_empty() || wire.stream.write_all(&body).await.is_ok(),
        Following::Stream(body, chunked) => pass_on(wire, body, chunked, out).await.is_ok(),
    }
}

/// Writes a streamed body as it arrives, each piece as soon as it comes (a chunk of its
/// own, whole, when `chunked`); trailer fields are dropped, as an HTTP/1 answer carries
/// none here. While it waits for the next piece it watches the client's side: a client
/// that closes its connection ends the answer at once (rather than at the next piece,
/// which may be long in coming), and what a client sends meanwhile (its next requests)
/// is kept for after the answer, up to a head's worth.
async fn pass_on(
    wire: &mut Wire,
    mut body: ProxyBody,
    chunked: bool,
    scratch: &mut Vec<u8>,
) -> Result<(), ()> {
    loop {
        let frame = if wire.read.len() < MAX_HEAD_BYTES {
            tokio::select! {
                frame = body.frame() => frame,
                read = wire.fill(0) => match read {
                    Ok(0) | Err(_) => return Err(()),
                    Ok(_) => continue,
                },
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|e| tracing::debug!("answer not passed on whole: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let stream = &mut wire.stream;
        if !chunked {
            stream.write_all(&data).await.map_err(drop)?;
            continue;
        }
        scratch.clear();
        let _ = write!(scratch, "{:x}\r\n", data.len());
        // A small piece goes out with its framing in one write.
        if data.len() <= COALESCED_BODY {
            scratch.extend_from_slice(&data);
            scratch.extend_from_slice(b"\r\n");
            stream.write_all(scratch).await.map_err(drop)?;
            continue;
        }
        stream.write_all(scratch).await.map_err(drop)?;
        stream.write_all(&data).await.map_err(drop)?;
        stream.write_all(b"\r\n").await.map_err(drop)?;
    }
    if chunked {
        wire.stream.write_all(b"0\r\n\r\n").await.map_err(drop)?;
    }
    Ok(())
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The Date field's value, formatted once a second.
#[derive(Default)]
struct Date {
    second: u64,
    text: String,
}

impl Date {
    fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

/// h2c with prior knowledge ([`crate::h2_server`]), the bytes already read first.
async fn serve_h2(
    wire: Wire,
    client: Option<ClientAddress>,
    outbound: Arc<Outbound>,
    upstreams: Arc<Upstreams>,
) {
    let stream = Prefixed {
        prefix: wire.read.freeze(),
        stream: wire.stream,
    };
    let settings = H2Settings::for_clients(outbound.client_timeouts());
    let name = client.map_or_else(
        || "h2c client".to_string(),
        |c| format!("h2c client {}", c.0),
    );
    let handle = |request| {
        let (outbound, upstreams) = (outbound.clone(), upstreams.clone());
        async move { outbound.handle(request, client, &upstreams).await }
    };
    // No tunnels: an application's WebSocket over h2 (extended CONNECT) is not offered.
    let drain = outbound.drain().clone();
    h2_server::serve(stream, settings, &name, &drain, handle, None).await;
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
