//! Connections to this cluster's endpoints: HTTP/1.1 with keep-alive, idle connections
//! kept per endpoint address.
//!
//! Each worker thread has its own pool ([`crate::outbound::Upstreams`]), so a request and
//! the connection it goes over are driven by the same thread, and the pool needs none of
//! a shared client's machinery (a key built and hashed per request, a checkout future,
//! waiters): an idle connection is taken, used for one exchange, and put back once its
//! answer has been read; the worker closes those idle for [`IDLE_TIMEOUT`] (or their
//! service's own idle timeout, [`PoolSettings`]).
//!
//! The exchange itself is written here rather than left to hyper's client: the outbound
//! path sends a request whose body it already holds (it may retry the request) and reads
//! the answer's head before passing it on, so the exchange can run inside the request's
//! own task. A small answer is read whole there too; a larger one, or one still arriving,
//! is read by a task of its own that passes it on piece by piece ([`crate::body`]) and
//! puts the connection back when the answer ends. hyper's client ran
//! each connection as a task of its own, fed through a channel, and built its answer
//! through a general state machine; that was a third of a plain request's instructions
//! (callgrind; docs/benchmarks.md). The answer's head is parsed by `httparse` (the parser
//! hyper uses), its header values share one buffer, and the body is framed as RFC 9112
//! §6.3 says: none for HEAD, 1xx, 204 and 304; chunked when the last transfer coding is
//! chunked; else Content-Length (every value must agree); else up to the close. The
//! answer's hop-by-hop fields (Connection, Keep-Alive, the fields Connection names, ...)
//! are left out as it is parsed: they describe this connection only. The answer's
//! end-to-end fields come back as they came ([`RawFields`]): the proxy's HTTP/1 server
//! copies them out so, and a header map is made from them only where one is needed.
//! Limits: a head of at most [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields; bodies are
//! held whole up to [`WHOLE_BODY_BYTES`] and streamed beyond. The reading itself is
//! shared with the proxy's HTTP/1 server ([`crate::wire`]).

use std::future::poll_fn;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

use crate::FastMap;
use crate::body::{PIECES_AHEAD, ProxyBody, SentPiece, WHOLE_BODY_BYTES};
use crate::discovery::InUse;
use crate::transport::origin::OriginTls;
use crate::upload::{Forwarding, Next};
use crate::wire::{
    BodyReader, COALESCED_BODY, Dechunker, FieldKind, FieldSpan, Fields, MAX_HEAD_BYTES,
    MAX_HEADERS, Piece, RawFields, Wire, chunked, closed, content_length, decimal, note_spans,
    scan,
};

/// Idle connections a worker keeps per endpoint; more are closed once their exchange
/// ends. Envoy keeps every one until its idle timeout: a cap of a few hundred had a
/// burst of 5,000 requests at once open a new connection for one request in four, and
/// wait seconds on the endpoint's accept queue (docs/benchmarks.md). This one only
/// bounds what a spike leaves open for the idle timeout.
pub const MAX_IDLE_PER_ENDPOINT: usize = 4096;
/// How long a connection may sit idle before [`Http1Pool::close_idle`] closes it (as
/// hyper's pooled client, and under the keep-alive timeouts servers commonly use).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// An endpoint's answer: its head, and its body whole or still arriving.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    /// Its end-to-end fields, as they came.
    pub fields: RawFields,
    pub body: ProxyBody,
}

/// Why an exchange with an endpoint got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, or over the connect timeout).
    Connect(String),
    /// The connection broke before the answer (or, for one read whole, before all of it)
    /// arrived, or the answer was malformed.
    Reset(String),
}

/// A connection kept for the next request, and since when. Boxed: a connection is moved
/// out of the pool and back on every request, and as a pointer it moves without a copy
/// call (callgrind).
type Idle = (Box<Connection>, Instant);

/// The settings ([`OriginTls::id`]) and server name of a connection in TLS; none in
/// plaintext. A connection is used again only for requests that would make the same
/// one. Boxed, to keep a plaintext request's future as small as it was.
type TlsKey = Option<Box<(u64, ServerName<'static>)>>;

/// One worker's connections to endpoints.
pub struct Http1Pool {
    /// Per endpoint, oldest first, with when each was put back. Kept by address alone
    /// (most endpoints are spoken to one way): a connection is taken for a request only
    /// when made as the request's would be ([`Connection::tls`]).
    idle: Mutex<FastMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    /// How many times a new configuration has been swept through ([`Http1Pool::close_unused`]),
    /// and what the last one has a use for: a connection that was out on a request
    /// meanwhile is put back only if that has a use for it.
    sweeps: AtomicU64,
    in_use: Mutex<Option<Arc<InUse>>>,
}

impl Http1Pool {
    /// An empty pool; new connections must be made within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Http1Pool {
        Http1Pool {
            idle: Mutex::default(),
            connect_timeout,
            sweeps: AtomicU64::new(0),
            in_use: Mutex::default(),
        }
    }

    /// Sends `request` to the endpoint at `address` and reads the answer: whole when it
    /// is small and complete, else its head, with the rest passed on as it arrives. An
    /// idle connection is used when there is one. When the endpoint turns out to have closed
    /// it (as servers do with keep-alive connections idle past their timeout), the
    /// request goes on another connection if none of it was sent, or if its method is
    /// idempotent and no answer had begun; otherwise the failure is the caller's to retry
    /// by its policy.
    pub async fn exchange(
        self: &Arc<Self>,
        address: SocketAddr,
        request: &Http1Request,
    ) -> Result<Answer, UpstreamError> {
        let (message, rest) = (&request.message[..], &request.rest[..]);
        let head_only = request.method == Method::HEAD;
        let replayable = is_idempotent(&request.method);
        let tls = request.tls_key()?;
        while let Some(mut connection) = self.take(address, &tls, &request.pool) {
            connection.carried += 1;
            match connection.exchange(message, rest, head_only).await {
                Ok((head, body)) => return Ok(self.answered(address, connection, head, body)),
                Err(Failure::Closed { sent }) if !sent || replayable => continue,
                Err(Failure::Closed { .. }) => {
                    return Err(UpstreamError::Reset(
                        "the endpoint closed a kept-alive connection before answering".into(),
                    ));
                }
                Err(Failure::Broken(e)) => return Err(UpstreamError::Reset(e)),
            }
        }
        // Boxed: a connection attempt's state would otherwise be part of (and be copied
        // with) every request's future, though most requests reuse a connection.
        let mut connection = Box::pin(self.connect(address, tls, &request.pool)).await?;
        connection.carried += 1;
        match connection.exchange(message, rest, head_only).await {
            Ok((head, body)) => Ok(self.answered(address, connection, head, body)),
            Err(Failure::Closed { .. }) => Err(UpstreamError::Reset(
                "the endpoint closed the connection before answering".into(),
            )),
            Err(Failure::Broken(e)) => Err(UpstreamError::Reset(e)),
        }
    }

    /// [`Http1Pool::exchange`] for a request whose body is still arriving: `request` is
    /// its head ([`Http1RequestWriter::finish_arriving`]), and the body is sent after it
    /// piece by piece as `body` gives it. The head goes on an idle connection when there
    /// is one, and on another if the endpoint closed that one (no piece of the body has
    /// been taken yet). If the endpoint answers before the whole body has gone (as one
    /// refusing an upload does), sending stops there and the answer is passed on; that
    /// connection is not used again.
    pub async fn exchange_arriving(
        self: &Arc<Self>,
        address: SocketAddr,
        request: &Http1Request,
        body: &mut Forwarding,
    ) -> Result<Answer, UpstreamError> {
        let failed = |failure| match failure {
            Failure::Closed { .. } => {
                UpstreamError::Reset("the endpoint closed the connection before answering".into())
            }
            Failure::Broken(e) => UpstreamError::Reset(e),
        };
        // A kept-alive connection the endpoint closed is replaced, while none of the
        // body has gone on it.
        let tls = request.tls_key()?;
        while let Some(connection) = self.take(address, &tls, &request.pool) {
            match self.exchange_on(address, connection, request, body).await {
                Err(Failure::Closed { .. }) if !body.begun() => continue,
                done => return done.map_err(failed),
            }
        }
        let connection = Box::pin(self.connect(address, tls, &request.pool)).await?;
        (self.exchange_on(address, connection, request, body).await).map_err(failed)
    }

    /// [`Http1Pool::exchange_arriving`] on one connection.
    async fn exchange_on(
        self: &Arc<Self>,
        address: SocketAddr,
        mut connection: Box<Connection>,
        request: &Http1Request,
        body: &mut Forwarding,
    ) -> Result<Answer, Failure> {
        let head_only = request.method == Method::HEAD;
        connection.carried += 1;
        connection.send(&request.message, &[]).await?;
        let all_sent = connection.send_arriving(body, request.chunked).await?;
        let (head, answer) = connection.answer(head_only).await?;
        // What is left of the body would be taken for the next request.
        let answer = if all_sent {
            answer
        } else {
            answer.not_reusable()
        };
        Ok(self.answered(address, connection, head, answer))
    }

    /// The answer whose `head` came on `connection`: with its body whole (the connection
    /// put back if it can carry another request), or with a task reading the rest.
    fn answered(
        self: &Arc<Self>,
        address: SocketAddr,
        connection: Box<Connection>,
        head: Head,
        body: AnswerBody,
    ) -> Answer {
        let body = match body {
            AnswerBody::Whole { body, reusable } => {
                if reusable {
                    self.put(address, connection);
                }
                ProxyBody::Whole(body)
            }
            AnswerBody::Rest(rest) => {
                let length = rest.length;
                let (sender, pieces) = mpsc::channel(PIECES_AHEAD);
                let pool = (Arc::downgrade(self), address);
                tokio::spawn(pass_on(connection, rest, sender, pool));
                ProxyBody::from_pieces(pieces, length)
            }
        };
        Answer {
            status: head.status,
            version: head.version,
            fields: head.fields.raw,
            body,
        }
    }

    /// The most recently used idle connection to `address` (the likeliest to be open)
    /// made as `tls` says and under `settings` ([`same_settings`]), that the endpoint has
    /// not closed.
    fn take(
        &self,
        address: SocketAddr,
        tls: &TlsKey,
        settings: &Option<Arc<PoolSettings>>,
    ) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().ok()?;
        let connections = idle.get_mut(&address)?;
        let fits = |c: &Connection| c.tls == *tls && same_settings(&c.made_under, settings);
        while let Some(at) = connections.iter().rposition(|(c, _)| fits(c)) {
            // Mostly the last one: taken off the end without moving the others.
            let (mut connection, since) = match at + 1 == connections.len() {
                true => connections.pop()?,
                false => connections.remove(at),
            };
            if connection.fresh(since, IDLE_TIMEOUT) {
                connection.swept = self.sweeps.load(Ordering::Acquire);
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `connection` for the next request to `address`, unless it has carried as
    /// many as its service allows or is past the age its service allows.
    fn put(&self, address: SocketAddr, mut connection: Box<Connection>) {
        if connection.spent() {
            return;
        }
        // Out on a request while a new configuration came: kept if that has a use for it.
        if connection.swept != self.sweeps.load(Ordering::Acquire)
            && let Ok(in_use) = self.in_use.lock()
            && let Some(in_use) = in_use.as_ref()
            && !in_use.fits(address, connection.settings())
        {
            return;
        }
        // An idle connection keeps no buffer: the next exchange takes one.
        connection.wire.release();
        if let Ok(mut idle) = self.idle.lock() {
            let connections = idle.entry(address).or_default();
            if connections.len() < MAX_IDLE_PER_ENDPOINT {
                connections.push((connection, Instant::now()));
            }
        }
    }

    /// Closes the connections idle for `timeout` or more, and those the endpoint closed;
    /// returns how many are left.
    pub fn close_idle(&self, timeout: Duration) -> usize {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        idle.retain(|_, connections| {
            connections.retain(|(connection, since)| connection.fresh(*since, timeout));
            !connections.is_empty()
        });
        idle.values().map(Vec::len).sum()
    }

    /// Closes the idle connections the configuration has no use for (`in_use`): to an
    /// endpoint it no longer has, or made under settings it no longer gives the
    /// endpoint (a changed rule's requests take new connections); returns how many are
    /// left.
    pub fn close_unused(&self, in_use: &Arc<InUse>) -> usize {
        // Noted first: a connection out on a request is checked against it when put back.
        if let Ok(mut last) = self.in_use.lock() {
            *last = Some(Arc::clone(in_use));
        }
        self.sweeps.fetch_add(1, Ordering::AcqRel);
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        idle.retain(|&address, connections| {
            connections.retain(|(connection, _)| in_use.fits(address, connection.settings()));
            !connections.is_empty()
        });
        idle.values().map(Vec::len).sum()
    }

    /// A new connection to `address` under its service's `settings`, in TLS when `tls`
    /// says: made (with its handshake) within their connect timeout if they have one,
    /// else the pool's.
    async fn connect(
        &self,
        address: SocketAddr,
        tls: TlsKey,
        made_under: &Option<Arc<PoolSettings>>,
    ) -> Result<Box<Connection>, UpstreamError> {
        let settings = made_under.as_deref().unwrap_or(&POOL_DEFAULTS);
        let within = settings.connect_timeout.unwrap_or(self.connect_timeout);
        let name = tls.as_ref().map(|tls| tls.1.clone());
        let stream = connect_endpoint(address, settings, name, false, within).await?;
        Ok(Box::new(Connection {
            wire: Wire::new(stream, "the endpoint"),
            tls,
            carried: 0,
            limits: ConnectionLimits::of(settings),
            made_under: made_under.clone(),
            swept: self.sweeps.load(Ordering::Acquire),
        }))
    }
}

/// A new connection to the endpoint at `address` under its service's `settings`, made
/// (with its TLS handshake to the server `name`, offering h2 when `h2`, when they
/// originate TLS) `within` this long.
pub(crate) async fn connect_endpoint(
    address: SocketAddr,
    settings: &PoolSettings,
    name: Option<ServerName<'static>>,
    h2: bool,
    within: Duration,
) -> Result<EndpointIo, UpstreamError> {
    let connect = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        settings.ready(&tcp);
        match (&settings.tls, name) {
            (Some(tls), Some(name)) => {
                let stream = tls.connect(tcp, name, h2).await;
                let stream = stream.map_err(UpstreamError::Connect)?;
                Ok(EndpointIo::Tls(Box::new(stream)))
            }
            _ => Ok(EndpointIo::Plain(tcp)),
        }
    };
    match tokio::time::timeout(within, connect).await {
        Ok(made) => made,
        Err(_) => Err(UpstreamError::Connect(format!(
            "no connection within {}ms",
            within.as_millis()
        ))),
    }
}

/// RFC 9110 §9.2.2: a request with one of these methods may be sent again when it is not
/// known whether the first one arrived.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request encoded in HTTP/1.1, ready to go to an endpoint (and again, on a retry).
pub struct Http1Request {
    method: Method,
    /// The head, followed by the body when that is small (one write).
    message: Vec<u8>,
    /// The body when it is not in `message`.
    rest: Bytes,
    /// The body is still to come, in chunks ([`Http1RequestWriter::finish_arriving`]).
    chunked: bool,
    /// Its service's connection settings, when it has any.
    pool: Option<Arc<PoolSettings>>,
    /// The host it is for (its authority's, without a port), kept when its service's
    /// endpoints are spoken to in TLS: the server name, unless the rule sets one.
    tls_host: Option<Box<str>>,
}

/// The settings of a service whose DestinationRule sets none: the pool's own.
pub static POOL_DEFAULTS: PoolSettings = PoolSettings {
    connect_timeout: None,
    max_requests_per_connection: None,
    idle_timeout: None,
    max_connection_duration: None,
    keepalive: None,
    max_concurrent_streams: None,
    tls: None,
};

/// A service's settings for its connections (a DestinationRule's `connectionPool`, and
/// its `tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// How long a new connection may take (`tcp.connectTimeout`); the pool's own when
    /// none.
    pub connect_timeout: Option<Duration>,
    /// How many requests a connection carries before it is closed
    /// (`http.maxRequestsPerConnection`); unlimited when none.
    pub max_requests_per_connection: Option<u32>,
    /// How long a connection may sit idle before it is closed (`http.idleTimeout`); the
    /// pool's own [`IDLE_TIMEOUT`] when none.
    pub idle_timeout: Option<Duration>,
    /// How long after it was made a connection may still be given a request
    /// (`tcp.maxConnectionDuration`); past it, it is closed once its exchange ends, as
    /// Envoy drains it. Unlimited when none.
    pub max_connection_duration: Option<Duration>,
    /// TCP keepalive probes on its connections (`tcp.tcpKeepalive`); off when none.
    pub keepalive: Option<Keepalive>,
    /// How many requests an h2 connection carries at once (`http.maxConcurrentStreams`),
    /// when fewer than the endpoint allows: past it, another connection is made.
    pub max_concurrent_streams: Option<u32>,
    /// TLS to the endpoints (`tls` in mode `SIMPLE` or `MUTUAL`); plaintext when none.
    pub tls: Option<Arc<OriginTls>>,
}

/// A DestinationRule's `tcp.tcpKeepalive`: the kernel probes a connection idle for
/// `time`, every `interval`, and drops it after `probes` go unanswered. What is not set
/// is left to the system (on Linux 2 hours, 75 s and 9 probes), as Envoy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

impl Keepalive {
    /// Turns keepalive on for `stream` with these settings. The kernel counts in whole
    /// seconds: as Istio does, a time or interval is cut to whole seconds, and one under
    /// a second is left to the system.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let seconds = |d: Duration| Some(Duration::from_secs(d.as_secs())).filter(|d| !d.is_zero());
        let mut keepalive = socket2::TcpKeepalive::new();
        if let Some(time) = self.time.and_then(seconds) {
            keepalive = keepalive.with_time(time);
        }
        if let Some(interval) = self.interval.and_then(seconds) {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(probes) = self.probes.filter(|n| *n > 0) {
            keepalive = keepalive.with_retries(probes);
        }
        socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
    }
}

/// [`POOL_DEFAULTS`].
impl Default for PoolSettings {
    fn default() -> PoolSettings {
        POOL_DEFAULTS.clone()
    }
}

impl PoolSettings {
    /// Readies a connection just made under these settings: no Nagle delay (a request
    /// or an answer goes out whole), and keepalive probes when asked for.
    pub fn ready(&self, stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
        if let Some(keepalive) = &self.keepalive
            && let Err(e) = keepalive.apply(stream)
        {
            tracing::warn!("cannot set TCP keepalive on a connection: {e}");
        }
    }
}

/// A request's body, as an [`Http1Request`] frames it.
pub enum Http1Body {
    Whole(Bytes),
    /// Sent after the head as it arrives ([`Http1Pool::exchange_arriving`]): of this
    /// length when one was declared, else chunked.
    Arriving(Option<u64>),
}

/// Writes an [`Http1Request`]: the request line, then the fields, then the body.
pub struct Http1RequestWriter {
    method: Method,
    out: Vec<u8>,
}

impl Http1Request {
    /// Starts a request for `target` (origin form: a path and a query). The target must be
    /// visible ASCII, nothing that could end the request line early.
    pub fn start(method: &Method, target: &str) -> Result<Http1RequestWriter, String> {
        if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("invalid request target {target:?}"));
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        Ok(Http1RequestWriter {
            method: method.clone(),
            out,
        })
    }

    /// Starts the request `parts` describe (origin-form URI, with its Host header,
    /// without framing fields), all its fields written: the body's framing is next.
    pub fn writer_for(parts: &http::request::Parts) -> Result<Http1RequestWriter, String> {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut writer = Http1Request::start(&parts.method, target)?;
        for (name, value) in &parts.headers {
            writer.field(name, value);
        }
        Ok(writer)
    }
}

impl Http1RequestWriter {
    /// Adds a field (names and values are valid by their types: no line breaks).
    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.field_bytes(name, value.as_bytes());
    }

    /// Adds a field whose value is text not yet checked: refused when it holds a control
    /// character (a line break would end the field, and the head, early).
    pub fn field_text(&mut self, name: &HeaderName, value: &str) -> Result<(), String> {
        let valid = |b: &u8| (b' '..=b'~').contains(b) || *b == b'\t' || *b >= 0x80;
        if !value.as_bytes().iter().all(valid) {
            return Err(format!("invalid {name} value {value:?}"));
        }
        self.field_bytes(name, value.as_bytes());
        Ok(())
    }

    fn field_bytes(&mut self, name: &HeaderName, value: &[u8]) {
        self.out.extend_from_slice(name.as_str().as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Ends the head with the body's framing (the request's own framing fields must not
    /// have been added), and adds the body when it is whole.
    pub fn finish_with(self, body: Http1Body) -> Http1Request {
        match body {
            Http1Body::Whole(bytes) => self.finish(bytes),
            Http1Body::Arriving(length) => self.finish_arriving(length),
        }
    }

    /// Ends the head of a request whose body is sent after it as it arrives: framed by
    /// its `length` when it has one, else chunked.
    pub fn finish_arriving(mut self, length: Option<u64>) -> Http1Request {
        let out = &mut self.out;
        match length {
            Some(length) => {
                out.extend_from_slice(b"content-length: ");
                decimal(out, length);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        Http1Request {
            method: self.method,
            message: self.out,
            rest: Bytes::new(),
            chunked: length.is_none(),
            pool: None,
            tls_host: None,
        }
    }

    /// Ends the head with the body's Content-Length (the request's own framing fields
    /// must not have been added), and adds the body.
    pub fn finish(mut self, body: Bytes) -> Http1Request {
        let (out, method) = (&mut self.out, &self.method);
        if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: ");
            decimal(out, body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let rest = if body.len() <= COALESCED_BODY {
            out.extend_from_slice(&body);
            Bytes::new()
        } else {
            body
        };
        Http1Request {
            method: self.method,
            message: self.out,
            rest,
            chunked: false,
            pool: None,
            tls_host: None,
        }
    }
}

impl Http1Request {
    /// Sent under its service's connection settings (none: the pool's own).
    pub fn with_pool(mut self, pool: Option<Arc<PoolSettings>>) -> Http1Request {
        self.pool = pool;
        self
    }

    /// For `host` (its authority's, without a port): the server name of a TLS
    /// connection, if its service's endpoints are spoken to in TLS.
    pub fn for_host(mut self, host: &str) -> Http1Request {
        if self.settings().tls.is_some() {
            self.tls_host = Some(host.into());
        }
        self
    }

    /// Its service's connection settings.
    fn settings(&self) -> &PoolSettings {
        self.pool.as_deref().unwrap_or(&POOL_DEFAULTS)
    }

    /// How its connection is made: in TLS, to its server name, when its service's
    /// endpoints are spoken to in TLS.
    fn tls_key(&self) -> Result<TlsKey, UpstreamError> {
        let Some(tls) = &self.settings().tls else {
            return Ok(None);
        };
        let host = self.tls_host.as_deref().unwrap_or("");
        let name = tls.server_name(host).map_err(UpstreamError::Connect)?;
        Ok(Some(Box::new((tls.id(), name))))
    }

    /// The bytes of the first write: the head, and the body when small.
    pub(crate) fn message(&self) -> &[u8] {
        &self.message
    }
}

impl TryFrom<Request<Bytes>> for Http1Request {
    type Error = String;

    /// The request as it is (origin-form URI, with its Host header, without framing
    /// fields).
    fn try_from(request: Request<Bytes>) -> Result<Http1Request, String> {
        let (parts, body) = request.into_parts();
        Ok(Http1Request::writer_for(&parts)?.finish(body))
    }
}

/// How an exchange on one connection failed.
enum Failure {
    /// The endpoint closed the connection (or reset it) before any answer came back;
    /// `sent` says whether any of the request had been handed to the kernel.
    Closed { sent: bool },
    /// Anything else: the connection broke mid-answer, or the answer was malformed.
    Broken(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure::Broken(why)
    }
}

/// A connection's bytes: as they are, or in TLS the proxy originates
/// ([`PoolSettings::tls`]).
pub(crate) enum EndpointIo {
    Plain(TcpStream),
    /// Boxed: a TLS session is kilobytes, and plaintext connections are moved often.
    Tls(Box<TlsStream<TcpStream>>),
}

impl EndpointIo {
    /// The TCP connection under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            EndpointIo::Plain(tcp) => tcp,
            EndpointIo::Tls(tls) => tls.get_ref().0,
        }
    }

    /// False when the endpoint closed the connection (or sent something unasked) while it
    /// sat idle. In plaintext no system call unless the reactor saw the socket turn
    /// readable; in TLS a look at the socket that leaves what is there (a TLS record
    /// must not be taken from under the session).
    fn still_open(&self) -> bool {
        match self {
            EndpointIo::Plain(tcp) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            EndpointIo::Tls(_) => {
                let mut probe = [MaybeUninit::<u8>::uninit(); 1];
                let socket = socket2::SockRef::from(self.tcp());
                matches!(socket.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl AsyncRead for EndpointIo {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EndpointIo::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            EndpointIo::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EndpointIo {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EndpointIo::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            EndpointIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EndpointIo::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            EndpointIo::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EndpointIo::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            EndpointIo::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open connection to an endpoint.
struct Connection {
    wire: Wire<EndpointIo>,
    /// How it was made: in TLS, under these settings and to this server name.
    tls: TlsKey,
    /// Requests sent on it.
    carried: u32,
    /// Its service's limits on it, when it has any.
    limits: Option<ConnectionLimits>,
    /// The settings it was made under (none: the pool's own).
    made_under: Option<Arc<PoolSettings>>,
    /// The pool's count of sweeps when it was made or last taken out
    /// ([`Http1Pool::close_unused`]).
    swept: u64,
}

/// Whether a connection made under `made_under` may carry a request sent under `now`
/// (a service's settings; none, the pool's own): only under the same settings. As Envoy
/// gives a cluster changed by new configuration new connections, a changed rule (its
/// limits, keepalive, connect timeout, TLS) holds for every request after the change,
/// not only on connections made after the old ones close; and two services sharing an
/// endpoint under different rules do not share connections.
fn same_settings(made_under: &Option<Arc<PoolSettings>>, now: &Option<Arc<PoolSettings>>) -> bool {
    match (made_under, now) {
        (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
        (None, None) => true,
        (a, b) => a.as_deref().unwrap_or(&POOL_DEFAULTS) == b.as_deref().unwrap_or(&POOL_DEFAULTS),
    }
}

/// A connection's limits, fixed by the service of the request that made it.
struct ConnectionLimits {
    /// The most requests it may carry.
    carries_at_most: Option<u32>,
    /// How long it may sit idle.
    idle_timeout: Option<Duration>,
    /// When it stops being given requests.
    retires_at: Option<Instant>,
}

impl ConnectionLimits {
    /// The limits `settings` set on a connection made now, if any.
    fn of(settings: &PoolSettings) -> Option<ConnectionLimits> {
        let limits = ConnectionLimits {
            carries_at_most: settings.max_requests_per_connection,
            idle_timeout: settings.idle_timeout,
            retires_at: (settings.max_connection_duration).map(|most| Instant::now() + most),
        };
        let any = limits.carries_at_most.is_some()
            || limits.idle_timeout.is_some()
            || limits.retires_at.is_some();
        any.then_some(limits)
    }
}

impl Connection {
    /// The settings it was made under: its service's, or the pool's own.
    fn settings(&self) -> &PoolSettings {
        self.made_under.as_deref().unwrap_or(&POOL_DEFAULTS)
    }

    /// Whether it may still be used after sitting idle since `since`: within its
    /// service's idle timeout (`timeout`, the pool's, when the service sets none) and
    /// age, and not closed by the endpoint.
    fn fresh(&self, since: Instant, timeout: Duration) -> bool {
        let limits = self.limits.as_ref();
        let timeout = limits.and_then(|l| l.idle_timeout).unwrap_or(timeout);
        since.elapsed() < timeout && !self.retired() && self.still_open()
    }

    /// Whether it has carried as many requests as its service allows, or is past the
    /// age it allows.
    fn spent(&self) -> bool {
        let Some(limits) = self.limits.as_ref() else {
            return false;
        };
        (limits.carries_at_most).is_some_and(|most| self.carried >= most) || self.retired()
    }

    /// Whether it is past the age its service allows.
    fn retired(&self) -> bool {
        let limits = self.limits.as_ref();
        limits
            .and_then(|l| l.retires_at)
            .is_some_and(|at| Instant::now() >= at)
    }
}

/// How an answer's body is delimited (RFC 9112 §6.3).
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// An answer's body as the exchange leaves it.
enum AnswerBody {
    /// Read whole; `reusable`: the connection can carry another request.
    Whole { body: Bytes, reusable: bool },
    /// Still to be read, from where the exchange left it.
    Rest(Rest),
}

impl AnswerBody {
    /// The same answer, its connection not to carry another request.
    fn not_reusable(self) -> AnswerBody {
        match self {
            AnswerBody::Whole { body, .. } => AnswerBody::Whole {
                body,
                reusable: false,
            },
            AnswerBody::Rest(rest) => AnswerBody::Rest(Rest {
                reusable: false,
                ..rest
            }),
        }
    }
}

/// What is left of an answer's body to read off its connection.
struct Rest {
    /// Bytes of it already taken off the connection.
    first: Bytes,
    reader: BodyReader,
    /// The Content-Length it declared.
    length: Option<u64>,
    /// Whether the connection can carry another request once the body is read.
    reusable: bool,
}

/// Reads the `rest` of an answer off `connection` and sends it on to the client's side,
/// as fast as that side takes it; puts the connection back in its pool once the answer
/// has ended, if it can carry another request. Stops, closing the connection, when the
/// client's side is gone.
async fn pass_on(
    mut connection: Box<Connection>,
    rest: Rest,
    sender: mpsc::Sender<SentPiece>,
    (pool, address): (Weak<Http1Pool>, SocketAddr),
) {
    let Rest {
        first,
        mut reader,
        reusable,
        ..
    } = rest;
    if !first.is_empty() && sender.send(Ok(Some(first))).await.is_err() {
        return;
    }
    let wire = &mut connection.wire;
    loop {
        let piece = match reader.step(&mut wire.read) {
            Ok(piece) => piece,
            Err(why) => {
                let _ = sender.send(Err(why)).await;
                return;
            }
        };
        match piece {
            Piece::Data(data) => {
                if sender.send(Ok(Some(data))).await.is_err() {
                    return;
                }
            }
            Piece::End => break,
            Piece::More => {
                let read = tokio::select! {
                    () = sender.closed() => return,
                    read = wire.fill(reader.wants()) => read,
                };
                let broke = match read {
                    Ok(0) if matches!(reader, BodyReader::UntilClose) => break,
                    Ok(0) => "the endpoint closed the connection before the end of its answer"
                        .to_string(),
                    Ok(_) => continue,
                    Err(e) => format!("the connection broke in the middle of the answer: {e}"),
                };
                let _ = sender.send(Err(broke)).await;
                return;
            }
        }
    }
    // Put back before the end is told, so that the client's next request can take it.
    // Bytes the endpoint sent past its answer: nothing asked for them.
    if reusable
        && connection.wire.read.is_empty()
        && let Some(pool) = pool.upgrade()
    {
        pool.put(address, connection);
    }
    let _ = sender.send(Ok(None)).await;
}

/// An answer's head.
struct Head {
    status: StatusCode,
    version: Version,
    fields: Fields,
}

impl Connection {
    /// False when the endpoint closed the connection (or sent something unasked) while it
    /// sat idle. No system call unless the reactor saw the socket turn readable.
    fn still_open(&self) -> bool {
        self.wire.stream.still_open()
    }

    /// Sends `message` then `rest`, and reads the answer's head and what of its body is
    /// to be read whole.
    async fn exchange(
        &mut self,
        message: &[u8],
        rest: &[u8],
        head_only: bool,
    ) -> Result<(Head, AnswerBody), Failure> {
        self.send(message, rest).await?;
        self.answer(head_only).await
    }

    async fn send(&mut self, message: &[u8], rest: &[u8]) -> Result<(), Failure> {
        let mut sent = false;
        for mut part in [message, rest] {
            while !part.is_empty() {
                match self.wire.stream.write(part).await {
                    Ok(0) => return Err(Failure::Closed { sent }),
                    Ok(n) => {
                        sent = true;
                        part = &part[n..];
                    }
                    Err(e) if closed(&e) => return Err(Failure::Closed { sent }),
                    Err(e) => return Err(Failure::Broken(format!("cannot send the request: {e}"))),
                }
            }
        }
        // TLS may hold the last of it; plaintext holds nothing.
        if let EndpointIo::Tls(tls) = &mut self.wire.stream
            && let Err(e) = tls.flush().await
        {
            return Err(if closed(&e) {
                Failure::Closed { sent }
            } else {
                Failure::Broken(format!("cannot send the request: {e}"))
            });
        }
        Ok(())
    }

    /// Sends a request's body as `body` gives it, each piece as it comes (a chunk of its
    /// own when `chunked`), while watching the connection: when the endpoint answers, or
    /// closes, before the body has all gone, sending stops and the answer (or the close)
    /// is read next. True when the whole body was sent.
    async fn send_arriving(
        &mut self,
        body: &mut Forwarding,
        chunked: bool,
    ) -> Result<bool, Failure> {
        let Wire { stream, read, .. } = &mut self.wire;
        let mut framed = Vec::new();
        // Held to the length the head declared: more or less would leave the endpoint
        // reading the next request into this one, or waiting.
        let (declared, mut sent) = (body.length().filter(|_| !chunked), 0u64);
        let wrong_length = |sent: u64, declared: u64| {
            Failure::Broken(format!(
                "the request's body was not its declared length: {sent} bytes of {declared}"
            ))
        };
        loop {
            let next = tokio::select! {
                next = body.next() => next,
                () = answer_begun(stream, read) => return Ok(false),
            };
            framed.clear();
            if let (Next::Data(data), Some(declared)) = (&next, declared) {
                sent += data.len() as u64;
                if sent > declared {
                    return Err(wrong_length(sent, declared));
                }
            }
            let data = match next {
                Next::Data(data) if data.is_empty() => continue,
                Next::Data(data) if chunked => {
                    let _ = write!(framed, "{:x}\r\n", data.len());
                    data
                }
                Next::Data(data) => data,
                Next::End(_) if chunked => {
                    // Trailer fields are dropped, as the proxy's HTTP/1 side carries none.
                    framed.extend_from_slice(b"0\r\n\r\n");
                    return write_watching(stream, read, &[&framed]).await;
                }
                Next::End(_) => match declared {
                    Some(declared) if sent != declared => return Err(wrong_length(sent, declared)),
                    _ => return Ok(true),
                },
                Next::Broken(why) => {
                    return Err(Failure::Broken(format!(
                        "the request's body broke off: {why}"
                    )));
                }
            };
            let end: &[u8] = if chunked { b"\r\n" } else { b"" };
            if !write_watching(stream, read, &[&framed, &data, end]).await? {
                return Ok(false);
            }
        }
    }

    async fn answer(&mut self, head_only: bool) -> Result<(Head, AnswerBody), Failure> {
        let wire = &mut self.wire;
        let mut begun = false;
        let head = loop {
            match parse_head(&mut wire.read, &mut wire.spans)? {
                Some(head) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(Failure::Broken(
                        "the endpoint switched protocols; upgrades are not proxied".into(),
                    ));
                }
                // An interim answer (100 Continue, 103 Early Hints): the final one follows.
                Some(head) if head.status.is_informational() => begun = true,
                Some(head) => break head,
                None if wire.read.len() >= MAX_HEAD_BYTES => {
                    return Err(Failure::Broken(format!(
                        "the endpoint's answer head is larger than {} KiB",
                        MAX_HEAD_BYTES / 1024
                    )));
                }
                None => match wire.fill(0).await {
                    Ok(0) if !begun && wire.read.is_empty() => {
                        return Err(Failure::Closed { sent: true });
                    }
                    Err(e) if closed(&e) && !begun && wire.read.is_empty() => {
                        return Err(Failure::Closed { sent: true });
                    }
                    Ok(0) => {
                        return Err(Failure::Broken(
                            "the endpoint closed the connection in the middle of its answer's head"
                                .into(),
                        ));
                    }
                    Ok(_) => begun = true,
                    Err(e) => {
                        return Err(Failure::Broken(format!(
                            "the connection broke before the answer: {e}"
                        )));
                    }
                },
            }
        };
        let (framing, reusable) = framing(&head, head_only)?;
        let rest = |first, reader, length| {
            AnswerBody::Rest(Rest {
                first,
                reader,
                length,
                reusable,
            })
        };
        let body = match framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(length) if length <= WHOLE_BODY_BYTES => {
                let whole = wire.read_length(length, WHOLE_BODY_BYTES as usize).await;
                whole.map_err(String::from)?
            }
            Framing::Length(length) => {
                return Ok((
                    head,
                    rest(Bytes::new(), BodyReader::Length(length), Some(length)),
                ));
            }
            // Whole when all of it came with the head, as a small answer's does.
            Framing::Chunked => {
                let mut dechunker = Dechunker::default();
                let mut first = BytesMut::new();
                loop {
                    match dechunker.step(&mut wire.read)? {
                        Piece::Data(data) => first.extend_from_slice(&data),
                        Piece::End => break first.freeze(),
                        Piece::More => {
                            let reader = BodyReader::Chunked(dechunker);
                            return Ok((head, rest(first.freeze(), reader, None)));
                        }
                    }
                }
            }
            Framing::UntilClose => {
                return Ok((head, rest(Bytes::new(), BodyReader::UntilClose, None)));
            }
        };
        // Bytes the endpoint sent past its answer: nothing asked for them.
        let reusable = reusable && wire.read.is_empty();
        Ok((head, AnswerBody::Whole { body, reusable }))
    }
}

/// Writes `parts` on `stream` in order, unless the endpoint answers (or closes) first:
/// then what it sent is in `read`, and the rest is not written. True when all was
/// written. A connection the endpoint closed or reset is not an error here: reading the
/// answer says what became of the request.
async fn write_watching<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    read: &mut BytesMut,
    parts: &[&[u8]],
) -> Result<bool, Failure> {
    let failed = |e: io::Error| Failure::Broken(format!("cannot send the request: {e}"));
    for part in parts {
        let mut part = *part;
        while !part.is_empty() {
            let written = poll_fn(|cx| {
                if poll_answer_begun(stream, read, cx).is_ready() {
                    return Poll::Ready(None);
                }
                Pin::new(&mut *stream).poll_write(cx, part).map(Some)
            })
            .await;
            match written {
                None => return Ok(false),
                Some(Ok(n)) => part = &part[n..],
                Some(Err(e)) if closed(&e) => return Ok(false),
                Some(Err(e)) => return Err(failed(e)),
            }
        }
    }
    // What TLS holds goes out now (plaintext holds nothing).
    let flushed = poll_fn(|cx| {
        if poll_answer_begun(stream, read, cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut *stream).poll_flush(cx).map(Some)
    })
    .await;
    match flushed {
        None => Ok(false),
        Some(Ok(())) => Ok(true),
        Some(Err(e)) if closed(&e) => Ok(false),
        Some(Err(e)) => Err(failed(e)),
    }
}

/// Waits until the endpoint has begun its final answer (into `read`) or closed the
/// connection. Interim answers (`100 Continue`, `103 Early Hints`) are taken out as they
/// come: they do not stop a body being sent.
async fn answer_begun<S: AsyncRead + Unpin>(stream: &mut S, read: &mut BytesMut) {
    poll_fn(|cx| poll_answer_begun(stream, read, cx)).await;
}

/// [`answer_begun`], polled.
fn poll_answer_begun<S: AsyncRead + Unpin>(
    stream: &mut S,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        match interim_head(read) {
            Some(Some(length)) => {
                read.advance(length);
                continue;
            }
            // Nothing yet, or the start of a head that may be an interim one.
            Some(None) => {}
            None => return Poll::Ready(()),
        }
        let mut chunk = [0u8; 1024];
        let mut buf = ReadBuf::new(&mut chunk);
        match ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf)) {
            Ok(()) if buf.filled().is_empty() => return Poll::Ready(()),
            Ok(()) => read.extend_from_slice(buf.filled()),
            Err(_) => return Poll::Ready(()),
        }
    }
}

/// What the front of `read` is: `Some(Some(length))`, a whole interim head (1xx but 101)
/// of that length; `Some(None)`, nothing yet or the start of a head that may be one;
/// `None`, the start of a final answer (or something malformed, for the answer's reader
/// to say).
fn interim_head(read: &[u8]) -> Option<Option<usize>> {
    // "HTTP/1.1 1": the status's first digit is the tenth byte.
    if read.len() < 10 {
        return Some(None);
    }
    if read[9] != b'1' {
        return None;
    }
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut head = httparse::Response::new(&mut fields);
    match head.parse(read) {
        Ok(httparse::Status::Complete(length)) if head.code != Some(101) => Some(Some(length)),
        Ok(httparse::Status::Partial) => Some(None),
        _ => None,
    }
}

/// Parses an answer's head from the front of `buffer`, taking it out: `None` while the
/// head is not all there yet.
fn parse_head(buffer: &mut BytesMut, spans: &mut Vec<FieldSpan>) -> Result<Option<Head>, String> {
    // The slots are left uninitialised: zeroing 100 of them cost more than the parse.
    let (length, code, version) = {
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut answer,
            buffer,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("malformed answer from the endpoint: {e}")),
        };
        note_spans(spans, buffer.as_ptr(), answer.headers);
        let version = match answer.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        (length, answer.code.unwrap_or(0), version)
    };
    let status = StatusCode::from_u16(code)
        .map_err(|_| format!("malformed answer from the endpoint: status {code}"))?;
    let head = buffer.split_to(length).freeze();
    let fields = scan(head, spans);
    Ok(Some(Head {
        status,
        version,
        fields,
    }))
}

/// How the answer's body is delimited, and whether the connection may be used again
/// afterwards as far as the head says.
fn framing(head: &Head, head_only: bool) -> Result<(Framing, bool), String> {
    let reusable = head.fields.reusable(head.version);
    let status = head.status.as_u16();
    if head_only || status == 204 || status == 304 {
        return Ok((Framing::Empty, reusable));
    }
    let fields = &head.fields.raw;
    match chunked(fields.values(FieldKind::TransferEncoding)) {
        // A Content-Length beside it is ignored, and the connection not trusted after.
        Some(true) => Ok((
            Framing::Chunked,
            reusable && !fields.contains(FieldKind::ContentLength),
        )),
        Some(false) => Ok((Framing::UntilClose, false)),
        None => Ok(
            match content_length(fields.values(FieldKind::ContentLength), "answer")? {
                Some(n) => (Framing::Length(n), reusable),
                None => (Framing::UntilClose, false),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Response;
    use http_body_util::{BodyExt, Full};
    use hyper::server::conn::http1 as server;

    use crate::upload::{RequestBody, ToSend};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// An endpoint (hyper's server) answering `n` (the request's number on its
    /// connection), or with `echo`, the request's method, `x-echo` header and body; it
    /// counts the connections it accepted. With `close_after_one`, each connection serves
    /// one request and then closes.
    async fn endpoint(close_after_one: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let echo = request.headers().contains_key("x-echo");
                            let method = request.method().clone();
                            let body = request.into_body().collect().await?.to_bytes();
                            let answer = if echo {
                                let mut text = format!("{method} {} ", body.len()).into_bytes();
                                text.extend_from_slice(&body);
                                Bytes::from(text)
                            } else {
                                Bytes::from(n.to_string())
                            };
                            Ok::<_, hyper::Error>(Response::new(Full::new(answer)))
                        }
                    });
                    let _ = server::Builder::new()
                        .keep_alive(!close_after_one)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, connections)
    }

    /// The body of an answer read whole.
    fn whole(answer: &Answer) -> Bytes {
        match &answer.body {
            ProxyBody::Whole(bytes) => bytes.clone(),
            streamed => panic!("expected a whole body, got {streamed:?}"),
        }
    }

    /// An endpoint that reads each request's head (and not its body) and writes the
    /// next of `answers` as given; after the last, or after each with
    /// `close_after_each`, it closes the connection. Counts its connections.
    async fn raw_endpoint(
        answers: Vec<&'static [u8]>,
        close_after_each: bool,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let answers = Arc::new(answers);
        let next = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let (answers, next) = (answers.clone(), next.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 4096];
                    loop {
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buffer[..n]),
                            }
                        }
                        seen.clear();
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(answer) = answers.get(i) else { return };
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        if close_after_each || i + 1 == answers.len() {
                            return;
                        }
                    }
                });
            }
        });
        (address, connections)
    }

    /// A GET the hyper endpoint answers with its number on the connection.
    fn plain(address: SocketAddr) -> Http1Request {
        let request = Request::builder()
            .uri("/")
            .header(http::header::HOST, address.to_string())
            .body(Bytes::new())
            .unwrap();
        Http1Request::try_from(request).unwrap()
    }

    fn get(address: SocketAddr) -> Http1Request {
        request(Method::GET, address, Bytes::new())
    }

    /// A request the hyper endpoint echoes.
    fn request(method: Method, address: SocketAddr, body: Bytes) -> Http1Request {
        let request = Request::builder()
            .method(method)
            .uri("/")
            .header(http::header::HOST, address.to_string())
            .header("x-echo", "1")
            .body(body)
            .unwrap();
        Http1Request::try_from(request).unwrap()
    }

    fn reset_reason(result: Result<Answer, UpstreamError>) -> String {
        match result {
            Err(UpstreamError::Reset(reason)) => reason,
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    /// A POST the hyper endpoint echoes, whose body is still to come: of `length` when
    /// declared, else chunked. Its pieces go in on the sender returned.
    fn arriving_post(
        address: SocketAddr,
        length: Option<u64>,
    ) -> (Http1Request, RequestBody, mpsc::Sender<SentPiece>) {
        let (parts, ()) = Request::post("/")
            .header(http::header::HOST, address.to_string())
            .header("x-echo", "1")
            .body(())
            .unwrap()
            .into_parts();
        let head = Http1Request::writer_for(&parts).unwrap();
        let (sender, pieces) = mpsc::channel(4);
        let body = ProxyBody::from_pieces(pieces, length);
        let body = RequestBody::arriving(body.map_err(Into::into).boxed_unsync(), 1024);
        (head.finish_arriving(length), body, sender)
    }

    /// Sends `pieces` of a body still arriving, then its end.
    async fn send_body(sender: mpsc::Sender<SentPiece>, pieces: &'static [&'static str]) {
        for piece in pieces {
            sender.send(Ok(Some(Bytes::from(*piece)))).await.unwrap();
        }
        sender.send(Ok(None)).await.unwrap();
    }

    fn forwarding(body: &RequestBody) -> Forwarding {
        match body.to_send() {
            ToSend::Arriving(forwarding) => forwarding,
            _ => panic!("a body still arriving"),
        }
    }

    #[tokio::test]
    async fn a_body_still_arriving_goes_out_framed_and_the_connection_is_reused() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        for length in [Some(6), None] {
            let (request, body, sender) = arriving_post(address, length);
            tokio::spawn(send_body(sender, &["abc", "def"]));
            let mut forwarding = forwarding(&body);
            let answer = pool
                .exchange_arriving(address, &request, &mut forwarding)
                .await
                .unwrap();
            assert_eq!(whole(&answer), "POST 6 abcdef", "length {length:?}");
            // Kept whole (within the limit): a retry could send it again.
            drop(forwarding);
            assert!(matches!(body.to_send(), ToSend::Whole(b) if b == "abcdef"));
        }
        let answer = pool.exchange(address, &plain(address)).await.unwrap();
        assert_eq!(
            whole(&answer),
            "3",
            "the third request on the one connection"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn interim_heads_are_told_from_the_start_of_a_final_answer() {
        let continue_ = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(interim_head(continue_), Some(Some(continue_.len())));
        let hints = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200";
        assert_eq!(interim_head(hints), Some(Some(hints.len() - 12)));
        // Not yet known: nothing, a status not yet there, an interim head not all there.
        for partial in [&b""[..], b"HTTP/1.1", b"HTTP/1.1 100 Cont"] {
            assert_eq!(interim_head(partial), Some(None), "{partial:?}");
        }
        // A final answer has begun (or something the answer's reader will refuse).
        for final_ in [
            &b"HTTP/1.1 200"[..],
            b"HTTP/1.1 413 Payload",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"garbage!!!!!",
        ] {
            assert_eq!(interim_head(final_), None, "{final_:?}");
        }
    }

    #[tokio::test]
    async fn an_interim_answer_does_not_stop_a_body_still_arriving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (continued, told) = tokio::sync::oneshot::channel();
        let mut continued = Some(continued);
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0u8; 4096];
            // The head, then the interim answer, then the chunked body to its end.
            for end in [&b"\r\n\r\n"[..], b"0\r\n\r\n"] {
                while !seen.ends_with(end) {
                    let n = stream.read(&mut buffer).await.unwrap();
                    assert!(n > 0, "closed early");
                    seen.extend_from_slice(&buffer[..n]);
                }
                if end == b"\r\n\r\n" {
                    stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = continued.take().map(|c| c.send(()));
                }
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
                .await
                .unwrap();
        });
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let (request, body, sender) = arriving_post(address, None);
        // The body comes only once the endpoint has sent its interim answer.
        tokio::spawn(async move {
            told.await.unwrap();
            send_body(sender, &["abc", "def"]).await;
        });
        let mut forwarding = forwarding(&body);
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            pool.exchange_arriving(address, &request, &mut forwarding),
        )
        .await
        .expect("answered: the body went on after the interim answer")
        .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(whole(&answer), "done");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_closed_before_any_of_the_body_went_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (second, on_second) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            // The first connection answers one request, then closes on the next head.
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut heads = 0;
            let mut seen = Vec::new();
            while heads < 2 {
                let n = stream.read(&mut buffer).await.unwrap();
                seen.extend_from_slice(&buffer[..n]);
                while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    seen.drain(..end + 4);
                    heads += 1;
                    if heads == 1 {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok1";
                        stream.write_all(ok).await.unwrap();
                    }
                }
            }
            drop(stream);
            // The second answers at once.
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = second.send(());
            let _ = stream.read(&mut buffer).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok2")
                .await
                .unwrap();
            let _ = stream.read(&mut buffer).await;
        });
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(whole(&answer), "ok1");
        // The body comes only once the request is on the second connection.
        let (request, body, sender) = arriving_post(address, None);
        tokio::spawn(async move {
            on_second.await.unwrap();
            send_body(sender, &["abc"]).await;
        });
        let mut forwarding = forwarding(&body);
        let answer = pool
            .exchange_arriving(address, &request, &mut forwarding)
            .await
            .unwrap();
        assert_eq!(whole(&answer), "ok2", "sent again on a new connection");
    }

    #[tokio::test]
    async fn a_body_that_is_not_its_declared_length_is_a_reset() {
        let (address, _) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        for (declared, pieces) in [(10, &["abc"][..]), (4, &["abc", "def"][..])] {
            let (request, body, sender) = arriving_post(address, Some(declared));
            send_body(sender, pieces).await;
            let mut forwarding = forwarding(&body);
            let sent = pool.exchange_arriving(address, &request, &mut forwarding);
            let reason = reset_reason(sent.await);
            assert!(reason.contains("not its declared length"), "{reason}");
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_body_has_gone_ends_the_sending_and_the_connection() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (address, connections) = raw_endpoint(vec![ok, ok], false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let (request, body, sender) = arriving_post(address, None);
        sender.send(Ok(Some(Bytes::from("abc")))).await.unwrap();
        // The body never ends; the endpoint answers without waiting for it.
        let mut forwarding = forwarding(&body);
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            pool.exchange_arriving(address, &request, &mut forwarding),
        )
        .await
        .expect("the answer, though the body has not ended")
        .unwrap();
        assert_eq!(whole(&answer), "ok");
        // A body cut short cannot be sent again; nor can its connection carry another
        // request (the endpoint would take the request for the rest of the body).
        drop(forwarding);
        assert!(!body.can_send_again());
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(whole(&answer), "ok");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        drop(sender);
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        for n in 1..=5 {
            let answer = pool.exchange(address, &plain(address)).await.unwrap();
            assert_eq!(&whole(&answer), &Bytes::from(n.to_string()));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    /// Every connection a burst of requests opened is kept for the next burst, rather
    /// than closed for another to be opened (and accepted) for the next request.
    #[tokio::test]
    async fn the_connections_of_a_burst_are_kept_for_the_next() {
        let burst = 300;
        // An endpoint answering once `burst` requests are in, each on its own connection;
        // its listen queue holds the burst's connections until they are accepted.
        let listener = crate::app::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let (counted, all_in) = (
            connections.clone(),
            Arc::new(tokio::sync::Barrier::new(burst)),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let all_in = all_in.clone();
                let service = service_fn(move |_: Request<hyper::body::Incoming>| {
                    let all_in = all_in.clone();
                    async move {
                        all_in.wait().await;
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                tokio::spawn(
                    server::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        for round in 1..=2 {
            let sent: Vec<_> = (0..burst)
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.exchange(address, &plain(address)).await })
                })
                .collect();
            for answer in sent {
                let answer = tokio::time::timeout(Duration::from_secs(10), answer)
                    .await
                    .unwrap_or_else(|_| panic!("burst {round}: no answer within 10 s"));
                let answer = answer.expect("task").expect("answer");
                assert_eq!(whole(&answer), Bytes::from("ok"));
            }
            assert_eq!(
                connections.load(Ordering::SeqCst),
                burst,
                "after burst {round}"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_carries_at_most_its_services_requests_per_connection() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let settings = PoolSettings {
            max_requests_per_connection: Some(2),
            ..PoolSettings::default()
        };
        let mut numbers = Vec::new();
        for _ in 0..5 {
            let request = plain(address).with_pool(Some(Arc::new(settings.clone())));
            let answer = pool.exchange(address, &request).await.unwrap();
            numbers.push(String::from_utf8_lossy(&whole(&answer)).into_owned());
        }
        assert_eq!(numbers, ["1", "2", "1", "2", "1"]);
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    /// A connection made under a rule is not given a request under another (a rule
    /// changed by new configuration): the new rule holds at once, on a new connection.
    /// The same rule read again is the same.
    #[tokio::test]
    async fn a_changed_rule_holds_for_the_next_request_on_a_connection_of_its_own() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let carrying = |most: u32| {
            Some(Arc::new(PoolSettings {
                max_requests_per_connection: Some(most),
                ..PoolSettings::default()
            }))
        };
        let (old, old_read_again, new) = (carrying(10), carrying(10), carrying(2));
        let mut numbers = Vec::new();
        for settings in [&old, &old_read_again, &new, &new, &new] {
            let request = plain(address).with_pool(settings.clone());
            let answer = pool.exchange(address, &request).await.unwrap();
            numbers.push(String::from_utf8_lossy(&whole(&answer)).into_owned());
        }
        assert_eq!(numbers, ["1", "2", "1", "2", "1"]);
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_idle_past_its_services_idle_timeout_is_not_used_again() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let idle = Duration::from_millis(100);
        let settings = PoolSettings {
            idle_timeout: Some(idle),
            ..PoolSettings::default()
        };
        let request = plain(address).with_pool(Some(Arc::new(settings)));
        for _ in 0..2 {
            pool.exchange(address, &request).await.unwrap();
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "reused while fresh");
        // The scenario: the connection sits idle past its timeout.
        tokio::time::sleep(idle * 2).await;
        pool.exchange(address, &request).await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 2, "a new one after");
        assert_eq!(
            pool.close_idle(Duration::from_secs(60)),
            1,
            "the new one kept"
        );
    }

    #[tokio::test]
    async fn a_services_idle_timeout_longer_than_the_pools_holds() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let settings = PoolSettings {
            idle_timeout: Some(Duration::from_secs(3600)),
            ..PoolSettings::default()
        };
        let request = plain(address).with_pool(Some(Arc::new(settings)));
        pool.exchange(address, &request).await.unwrap();
        // A sweep that would close every connection idle under the pool's own timeout.
        assert_eq!(pool.close_idle(Duration::ZERO), 1, "kept for its service");
        pool.exchange(address, &request).await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 1, "and used again");
    }

    #[tokio::test]
    async fn a_connection_past_its_services_max_duration_gets_no_more_requests() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let most = Duration::from_millis(200);
        let settings = PoolSettings {
            max_connection_duration: Some(most),
            ..PoolSettings::default()
        };
        let request = plain(address).with_pool(Some(Arc::new(settings)));
        let (first, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(10));
        // Requests back to back: all on the first connection until it is too old.
        let mut carried = 0u32;
        while connections.load(Ordering::SeqCst) == 1 || carried == 0 {
            let answer = pool.exchange(address, &request).await.unwrap();
            assert!(
                Instant::now() < deadline,
                "no new connection after {most:?}"
            );
            carried += 1;
            if connections.load(Ordering::SeqCst) == 1 {
                // Its answers count the requests it carried.
                assert_eq!(whole(&answer), Bytes::from(carried.to_string()));
            }
        }
        assert!(carried > 2, "the first connection carried {carried}");
        assert!(
            first.elapsed() >= most,
            "replaced after {:?}",
            first.elapsed()
        );
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_services_tcp_keepalive_is_set_on_its_connections() {
        let (address, _) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let keepalive = Keepalive {
            time: Some(Duration::from_secs(45)),
            // Cut to whole seconds, as Istio does: the kernel counts in seconds.
            interval: Some(Duration::from_millis(2500)),
            probes: Some(4),
        };
        let settings = PoolSettings {
            keepalive: Some(keepalive),
            ..PoolSettings::default()
        };
        let settings = Some(Arc::new(settings));
        pool.exchange(address, &plain(address).with_pool(settings.clone()))
            .await
            .unwrap();
        let connection = pool.take(address, &None, &settings);
        let connection = connection.expect("the connection, idle");
        let socket = socket2::SockRef::from(connection.wire.stream.tcp());
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(45)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
        // Without the setting, no probes.
        pool.exchange(address, &plain(address)).await.unwrap();
        let connection = pool.take(address, &None, &None);
        let connection = connection.expect("a new connection, idle");
        assert!(
            !socket2::SockRef::from(connection.wire.stream.tcp())
                .keepalive()
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_services_connect_timeout_is_the_one_that_holds() {
        // A listener with a backlog of one that never accepts: once the backlog is full,
        // the kernel drops new connection attempts, and a connect waits.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = socket.local_addr().unwrap();
        let _listener = socket.listen(1).unwrap();
        let mut fillers = Vec::new();
        loop {
            let within = Duration::from_millis(200);
            match std::net::TcpStream::connect_timeout(&address, within) {
                Ok(stream) => fillers.push(stream),
                Err(_) => break,
            }
            assert!(fillers.len() < 64, "the backlog never filled");
        }
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(30)));
        let settings = PoolSettings {
            connect_timeout: Some(Duration::from_millis(50)),
            ..PoolSettings::default()
        };
        let request = plain(address).with_pool(Some(Arc::new(settings)));
        let exchanged =
            tokio::time::timeout(Duration::from_secs(5), pool.exchange(address, &request))
                .await
                .expect("within the service's timeout, not the pool's 30 s");
        match exchanged {
            Err(UpstreamError::Connect(e)) => {
                assert!(e.contains("no connection within 50ms"), "{e}")
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bodies_go_out_whole_small_or_large() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let answer = pool
            .exchange(
                address,
                &request(Method::POST, address, Bytes::from("hello")),
            )
            .await
            .unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("POST 5 hello"));
        // Larger than what goes out with the head: a second write.
        let large = Bytes::from(vec![b'x'; 3 * COALESCED_BODY + 7]);
        let answer = pool
            .exchange(address, &request(Method::PUT, address, large.clone()))
            .await
            .unwrap();
        assert_eq!(whole(&answer).len(), "PUT 49159 ".len() + large.len());
        assert!(whole(&answer).starts_with(b"PUT 49159 xxx"));
        // An empty POST says so (Content-Length: 0) rather than leaving the server to wait.
        let answer = pool
            .exchange(address, &request(Method::POST, address, Bytes::new()))
            .await
            .unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("POST 0 "));
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_is_not_used_again() {
        let (address, connections) = endpoint(true).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        for _ in 0..3 {
            let answer = pool.exchange(address, &plain(address)).await.unwrap();
            assert_eq!(&whole(&answer), &Bytes::from("1"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_closed() {
        let (address, connections) = endpoint(false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        pool.exchange(address, &plain(address)).await.unwrap();
        assert_eq!(pool.close_idle(IDLE_TIMEOUT), 1, "a fresh one stays");
        assert_eq!(pool.close_idle(Duration::ZERO), 0, "an expired one goes");
        let answer = pool.exchange(address, &plain(address)).await.unwrap();
        assert_eq!(
            &whole(&answer),
            &Bytes::from("1"),
            "a new connection's first answer"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_request_target_that_could_end_the_request_line_is_refused() {
        for target in ["/a b", "/a\r\nx: 1", ""] {
            let e = Http1Request::start(&Method::GET, target).err().unwrap();
            assert!(e.contains("invalid request target"), "{e}");
        }
        assert!(Http1Request::start(&Method::GET, "/a?b=%20&c").is_ok());
    }

    #[test]
    fn a_field_value_that_could_end_the_field_is_refused() {
        let mut writer = Http1Request::start(&Method::GET, "/").unwrap();
        for value in ["shop.example\r\nx-injected: 1", "a\nb", "nul\0"] {
            let e = writer.field_text(&http::header::HOST, value).unwrap_err();
            assert!(e.contains("invalid host value"), "{e}");
        }
        writer
            .field_text(&http::header::HOST, "shop.example:80")
            .unwrap();
        let request = writer.finish(Bytes::new());
        assert_eq!(
            request.message(),
            b"GET / HTTP/1.1\r\nhost: shop.example:80\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let (_held, address) = crate::testing::refusing_address();
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        match pool.exchange(address, &get(address)).await {
            Err(UpstreamError::Connect(_)) => {}
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_chunked_answer_is_joined_and_its_trailers_dropped() {
        let (address, connections) = raw_endpoint(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunks\r\n\r\n\
                  5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Checksum: 1\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
            ],
            false,
        )
        .await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("hello world"));
        assert_eq!(answer.fields.to_map(0)["x-kind"], "chunks");
        assert!(!answer.fields.to_map(0).contains_key("x-checksum"));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("next"));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the connection was kept"
        );
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_head_answers_have_no_body() {
        let (address, connections) = raw_endpoint(
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
            false,
        )
        .await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(&whole(&answer), &Bytes::from("ok"));
        let head = request(Method::HEAD, address, Bytes::new());
        let answer = pool.exchange(address, &head).await.unwrap();
        assert_eq!(
            answer.fields.to_map(0)[http::header::CONTENT_LENGTH],
            "1234"
        );
        assert!(whole(&answer).is_empty());
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn hop_by_hop_fields_stay_on_their_connection() {
        let (address, connections) = raw_endpoint(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, X-Trace\r\nKeep-Alive: timeout=5\r\n\
                  X-Trace: 1\r\nUpgrade: h2c\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
            ],
            false,
        )
        .await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        let fields = answer.fields.to_map(0);
        let names: Vec<&str> = fields.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept", "content-length"]);
        // An HTTP/1.0 answer that asks to keep the connection keeps it.
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(answer.version, Version::HTTP_10);
        assert!(!answer.fields.to_map(0).contains_key("connection"));
        pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_without_length_runs_to_the_close_and_the_connection_goes() {
        let (address, connections) = raw_endpoint(
            vec![
                b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it",
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew",
            ],
            true,
        )
        .await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(answer.version, Version::HTTP_10);
        // Of no declared length: passed on as it comes, up to the close.
        assert_eq!(answer.body.length(), None);
        let body = answer.body.collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from("all of it"));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("bye"));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("new"));
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_the_endpoint_dropped_is_replaced_for_a_get() {
        // Keep-alive answered, then closed (as a server whose idle timeout ran out).
        let (address, connections) = raw_endpoint(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
            ],
            true,
        )
        .await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("first"));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("second"));
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_large_answer_is_passed_on_as_it_arrives_and_its_connection_kept() {
        let size = 2 * WHOLE_BODY_BYTES as usize;
        let mut large = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        large.resize(large.len() + size, b'x');
        let (address, connections) = raw_endpoint(
            vec![
                Vec::leak(large),
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
            ],
            false,
        )
        .await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert!(matches!(answer.body, ProxyBody::Streaming(_)));
        assert_eq!(answer.body.length(), Some(size as u64));
        let body = answer.body.collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), size);
        assert!(body.iter().all(|&b| b == b'x'));
        // Read to its end: the connection went back to the pool for the next request.
        let answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(&whole(&answer), &Bytes::from("next"));
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn each_piece_of_a_chunked_answer_is_passed_on_when_it_comes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (go_on, told) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
            stream.write_all(head).await.unwrap();
            // The rest only once the first piece has reached the client's side.
            told.await.unwrap();
            stream.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
        });
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let mut answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(answer.body.length(), None);
        let first = answer.body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from("hello"));
        go_on.send(()).unwrap();
        let rest = answer.body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, Bytes::from(" world"));
    }

    #[tokio::test]
    async fn an_answer_cut_off_mid_way_breaks_off_with_the_reason() {
        let (address, _) = raw_endpoint(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\nstart of it"],
            false,
        )
        .await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let mut answer = pool.exchange(address, &get(address)).await.unwrap();
        assert_eq!(answer.body.length(), Some(100_000_000_000));
        let first = answer.body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from("start of it"));
        let broken = answer.body.frame().await.unwrap().unwrap_err();
        assert!(
            broken
                .to_string()
                .contains("closed the connection before the end of its answer"),
            "{broken}"
        );
    }

    #[tokio::test]
    async fn malformed_answers_are_resets_that_say_why() {
        let cases: [(&'static [u8], &str); 6] = [
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "malformed answer"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                "differing Content-Lengths (3 and 4)",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length \"-1\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "before the whole body (5 of 10 bytes)",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "malformed chunk size",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                "upgrades are not proxied",
            ),
        ];
        for (answer, why) in cases {
            let (address, _) = raw_endpoint(vec![answer], true).await;
            let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
            let reason = reset_reason(pool.exchange(address, &get(address)).await);
            assert!(reason.contains(why), "{reason:?} should say {why:?}");
        }
    }

    #[tokio::test]
    async fn an_oversized_answer_head_is_refused() {
        let mut head = b"HTTP/1.1 200 OK\r\nX-Filler: ".to_vec();
        head.resize(MAX_HEAD_BYTES + 1, b'a');
        let head: &'static [u8] = Vec::leak(head);
        let (address, _) = raw_endpoint(vec![head], false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let reason = reset_reason(pool.exchange(address, &get(address)).await);
        assert!(reason.contains("larger than 64 KiB"), "{reason}");
    }

    #[tokio::test]
    async fn an_endpoint_closing_without_answering_a_fresh_connection_is_a_reset() {
        let (address, _) = raw_endpoint(vec![], true).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1)));
        let reason = reset_reason(pool.exchange(address, &get(address)).await);
        assert!(
            reason.contains("closed the connection before answering"),
            "{reason}"
        );
    }
}
