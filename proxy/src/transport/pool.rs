//! h2 connections: to other clusters' east-west listeners (over mTLS), and to this
//! cluster's endpoints that speak h2 in plaintext (gRPC servers, ports declared `HTTP2`).
//! One connection per peer address, shared by every request to it (h2 multiplexes), made
//! again when it closes; another one when every connection to the peer carries as many
//! streams as the peer allows at once (its SETTINGS_MAX_CONCURRENT_STREAMS; until those
//! arrive, 100 for an endpoint and 1,024 for another cluster's proxy), as Envoy does,
//! rather than leave a request waiting for a long-lived stream (a WebSocket, a gRPC
//! watch) to end. Only one connection attempt per peer runs at a time; requests arriving
//! meanwhile wait for it rather than open their own.
//!
//! The `h2` crate is driven directly: a request is sent and its answer's head read in
//! the request's own task (with its body too, when that is small: [`crate::body`]), and
//! only the connection runs as a task of its own (with a
//! ping every [`KEEPALIVE_INTERVAL`], dropped when no pong comes within
//! [`KEEPALIVE_TIMEOUT`]). hyper's client, over the same crate, spawned a task per
//! request and handed each answer through channels: a sixth of the sending proxy's
//! instructions on a hop (docs/benchmarks.md).
//!
//! The trailer fields of an answer read whole (gRPC's status is in them) come with it
//! as [`Trailers`] in the response's extensions; a streamed answer ends with them.
//!
//! A connection to an endpoint keeps the DestinationRule settings ([`PoolSettings`]) of
//! the service whose request made it: its connect timeout, keepalive probes, how many
//! streams it carries at once, and how many requests, how long idle and how long after
//! it was made it may be given a request. Past those, the next request makes a new
//! connection and the old one closes once its streams end, as Envoy drains it. A
//! connection to another cluster's east-west listener is shared by every service to
//! that cluster, and keeps the pool's own settings ([`crate::upstream::POOL_DEFAULTS`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Request, Response};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{ALPN_H2, MeshTls, PROXY_SERVER_NAME};
use crate::body::{ProxyBody, WHOLE_BODY_BYTES};
use crate::discovery::InUse;
use crate::h2_server::{MAX_CONCURRENT_STREAMS, SHARED_CONNECTION_WINDOW, STREAM_WINDOW};
use crate::tunnel::H2Stream;
use crate::upload::Forwarding;
use crate::upstream::{POOL_DEFAULTS, PoolSettings};
use crate::wire::content_length;

/// How often an east-west connection is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The trailer fields of an answer whose body is held whole, in its response's
/// extensions: they travel beside the body rather than after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailers(pub HeaderMap);

/// Why a request over h2 got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No connection: TCP, TLS or the peer's identity failed.
    Connect(String),
    /// The connection or stream broke before an answer (or, for one read whole, before
    /// all of it).
    Reset(String),
}

/// A connection's request handle, and whether the connection has ended.
#[derive(Clone)]
struct Sender {
    requests: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// A stream's place on its connection: counted from before its request is sent until
/// its answer has ended (kept by the answer's body, or by the tunnel), so that a
/// connection is given no more streams than its peer takes at once.
struct Place(Arc<AtomicUsize>);

impl Place {
    fn take(open: &Arc<AtomicUsize>) -> Place {
        open.fetch_add(1, Ordering::Relaxed);
        Place(open.clone())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a pool reaches its peers.
enum Dial {
    /// Other clusters' east-west listeners: TLS with this proxy's certificate, the
    /// peer's identity checked against the cluster it should be.
    Mesh(Arc<MeshTls>),
    /// Endpoints of this cluster, in h2 with prior knowledge: in plaintext (h2c), or in TLS
    /// when their service's rule originates it ([`PoolSettings::tls`]).
    Plaintext,
}

/// Where a request over h2 goes.
#[derive(Clone, Copy)]
pub struct Peer<'a> {
    /// `host:port`.
    pub address: &'a str,
    /// The cluster it is in (a mesh pool checks the peer's identity against it).
    pub cluster: &'a str,
    /// The connection settings of the request's service.
    pub settings: &'a PoolSettings,
    /// The request's host (its authority's, without a port): the server name of a TLS
    /// connection to an endpoint, unless its rule sets one.
    pub host: &'a str,
}

impl<'a> Peer<'a> {
    /// The east-west listener at `gateway` of `cluster`: shared by every service to the
    /// cluster, under the pool's own settings.
    pub fn east_west(gateway: &'a str, cluster: &'a str) -> Peer<'a> {
        Peer {
            address: gateway,
            cluster,
            settings: &POOL_DEFAULTS,
            host: "",
        }
    }
}

/// A peer's connection once made.
struct Held {
    sender: Sender,
    /// Its streams in progress ([`Place`]).
    open: Arc<AtomicUsize>,
    /// When it was made, and when a request last took it.
    opened: Instant,
    used: Instant,
    /// Requests it has been given.
    carried: u32,
    /// The settings of the service whose request made it.
    settings: PoolSettings,
}

impl Held {
    /// Whether it may be given another request.
    fn takes(&self) -> bool {
        let settings = &self.settings;
        let idle_ok = settings
            .idle_timeout
            .is_none_or(|t| self.used.elapsed() < t);
        let young = (settings.max_connection_duration).is_none_or(|t| self.opened.elapsed() < t);
        let room = (settings.max_requests_per_connection).is_none_or(|n| self.carried < n);
        !self.sender.closed.load(Ordering::Acquire) && idle_ok && young && room
    }

    /// Whether the peer takes another stream on it now, and its service allows one.
    fn has_room(&self) -> bool {
        let peer = self.sender.requests.current_max_send_streams();
        let most = (self.settings.max_concurrent_streams).map_or(peer, |n| peer.min(n as usize));
        self.open.load(Ordering::Relaxed) < most
    }

    /// Whether it is carrying a stream.
    fn busy(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }
}

/// A peer's connections, oldest first.
type Slot = Arc<tokio::sync::Mutex<Vec<Held>>>;

/// A pool of h2 connections, by peer address.
pub struct H2Pool {
    dial: Dial,
    connect_timeout: Duration,
    peers: Mutex<HashMap<String, Slot>>,
}

impl H2Pool {
    /// A pool of connections to other clusters' east-west listeners, presenting `tls`'s
    /// certificate.
    pub fn mesh(tls: Arc<MeshTls>, connect_timeout: Duration) -> H2Pool {
        H2Pool::new(Dial::Mesh(tls), connect_timeout)
    }

    /// A pool of plaintext connections to endpoints that speak h2.
    pub fn plaintext(connect_timeout: Duration) -> H2Pool {
        H2Pool::new(Dial::Plaintext, connect_timeout)
    }

    fn new(dial: Dial, connect_timeout: Duration) -> H2Pool {
        H2Pool {
            dial,
            connect_timeout,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `request` to the peer at `address` (`host:port`; for a mesh pool, the
    /// east-west listener of `cluster`) and reads the answer: whole, with its trailers,
    /// when it declares a length of at most [`WHOLE_BODY_BYTES`]; else its head, the
    /// rest passed on as it arrives. The request's URI must be absolute
    /// (`https://service/path`): its authority names the service.
    pub async fn send(
        &self,
        peer: Peer<'_>,
        request: Request<Bytes>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let (head, body) = request.into_parts();
        let (answer, mut stream, place) = self
            .send_head(peer, Request::from_parts(head, ()), body.is_empty())
            .await?;
        if !body.is_empty() {
            // Buffered by h2 as the peer's window allows: the body is bounded already.
            stream.send_data(body, true).map_err(reset)?;
        }
        read_answer(answer, place).await
    }

    /// [`H2Pool::send`] for a request whose body is still arriving: the body is sent on
    /// by a task of its own as it arrives ([`Forwarding::run`]).
    pub async fn send_arriving(
        &self,
        peer: Peer<'_>,
        request: Request<()>,
        body: Forwarding,
    ) -> Result<Response<ProxyBody>, SendError> {
        let (answer, stream, place) = self.send_head(peer, request, false).await?;
        tokio::spawn(body.run(stream));
        read_answer(answer, place).await
    }

    /// Sends a request's head on a connection to `peer`; `ends` when it has no body.
    async fn send_head(
        &self,
        peer: Peer<'_>,
        request: Request<()>,
        ends: bool,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>, Place), SendError> {
        let (sender, place) = self.sender(peer).await?;
        let mut requests = sender.requests.ready().await.map_err(reset)?;
        let (answer, stream) = requests.send_request(request, ends).map_err(reset)?;
        Ok((answer, stream, place))
    }

    /// Opens a stream to `cluster`'s listener at `gateway` with `request` (an extended
    /// CONNECT, whose stream is a tunnel), and waits for the answer's head: the answer,
    /// and the stream to carry bytes both ways on once it is a 200.
    pub async fn open(
        &self,
        peer: Peer<'_>,
        request: Request<()>,
    ) -> Result<(http::response::Parts, H2Stream), SendError> {
        let (sender, place) = self.sender(peer).await?;
        let mut requests = sender.requests.ready().await.map_err(reset)?;
        let (answer, send) = requests.send_request(request, false).map_err(reset)?;
        let (head, recv) = answer.await.map_err(reset)?.into_parts();
        Ok((head, H2Stream::new(send, recv).keeping(place)))
    }

    /// Closes the connections no request took for `timeout` (or their service's own idle
    /// timeout) and that carry no stream, and forgets peers whose connections ended or
    /// could not be made, unless a request is taking one right now; returns how many
    /// peers are left. For endpoints, which come and go with the configuration.
    pub fn close_idle(&self, timeout: Duration) -> usize {
        let Ok(mut peers) = self.peers.lock() else {
            return 0;
        };
        peers.retain(|_, cell| {
            let Ok(mut slot) = cell.try_lock() else {
                return true;
            };
            // A connection let go: h2 closes it once its last handle and streams are gone.
            slot.retain(|held| {
                let timeout = held.settings.idle_timeout.unwrap_or(timeout);
                let recent = held.used.elapsed() < timeout;
                !held.sender.closed.load(Ordering::Acquire) && (recent || held.busy())
            });
            !slot.is_empty()
        });
        peers.len()
    }

    /// Lets go of the connections to endpoints the configuration has no use for
    /// (`in_use`): to an endpoint it no longer has, or made under settings it no longer
    /// gives the endpoint. Each closes once the streams still on it end; returns how
    /// many peers are left.
    pub fn close_unused(&self, in_use: &InUse) -> usize {
        let Ok(mut peers) = self.peers.lock() else {
            return 0;
        };
        peers.retain(|key, cell| {
            // The key starts with the endpoint's address (then its TLS, if any).
            let address = key.split_once(' ').map_or(key.as_str(), |(a, _)| a);
            let Ok(address) = address.parse::<SocketAddr>() else {
                return true;
            };
            let Ok(mut slot) = cell.try_lock() else {
                return true;
            };
            slot.retain(|held| in_use.fits(address, &held.settings));
            !slot.is_empty()
        });
        peers.len()
    }

    /// A place on a connection to `peer`: on the oldest that may take another request
    /// and has room for its stream, else on a new one.
    async fn sender(&self, peer: Peer<'_>) -> Result<(Sender, Place), SendError> {
        let (address, settings) = (peer.address, peer.settings);
        // Connections in TLS to an endpoint are apart from others to it, by their
        // settings and server name.
        let name = match (&self.dial, &settings.tls) {
            (Dial::Plaintext, Some(tls)) => {
                Some(tls.server_name(peer.host).map_err(SendError::Connect)?)
            }
            _ => None,
        };
        let key = match (&name, &settings.tls) {
            (Some(name), Some(tls)) => {
                Cow::Owned(format!("{address} tls {} {}", tls.id(), name.to_str()))
            }
            _ => Cow::Borrowed(address),
        };
        let cell = {
            let Ok(mut peers) = self.peers.lock() else {
                return Err(SendError::Connect("connection pool unavailable".into()));
            };
            match peers.get(key.as_ref()) {
                Some(cell) => cell.clone(),
                None => peers.entry(key.into_owned()).or_default().clone(),
            }
        };
        let mut slot = cell.lock().await;
        // Those let go close once the streams still on them end.
        slot.retain(Held::takes);
        // Only a connection made under the request's settings: a changed rule holds for
        // every request after the change, as Envoy gives a changed cluster new
        // connections (those made under the old one end once idle).
        let fits = |held: &&mut Held| held.settings == *settings && held.has_room();
        if let Some(held) = slot.iter_mut().find(fits) {
            held.used = Instant::now();
            held.carried += 1;
            return Ok((held.sender.clone(), Place::take(&held.open)));
        }
        // Boxed: a TLS handshake's state is kilobytes, and inline it would be part of (and
        // copied with) every request's future, though connections are rarely made.
        let connect = Box::pin(self.connect(peer, name));
        let within = settings.connect_timeout.unwrap_or(self.connect_timeout);
        let sender = tokio::time::timeout(within, connect).await.map_err(|_| {
            SendError::Connect(format!(
                "connect to {address} timed out after {}ms",
                within.as_millis()
            ))
        })??;
        let now = Instant::now();
        let open = Arc::new(AtomicUsize::new(0));
        let place = Place::take(&open);
        slot.push(Held {
            sender: sender.clone(),
            open,
            opened: now,
            used: now,
            carried: 1,
            settings: settings.clone(),
        });
        Ok((sender, place))
    }

    /// A new connection to `peer`; in TLS to the server `name`, when its service's
    /// endpoints are spoken to in TLS.
    async fn connect(
        &self,
        peer: Peer<'_>,
        name: Option<ServerName<'static>>,
    ) -> Result<Sender, SendError> {
        let (address, cluster) = (peer.address, peer.cluster);
        let fail = |what: &str, e: &dyn std::fmt::Display| match &self.dial {
            Dial::Mesh(_) => {
                SendError::Connect(format!("{what} {address} (cluster {cluster}): {e}"))
            }
            Dial::Plaintext => SendError::Connect(format!("{what} {address}: {e}")),
        };
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        peer.settings.ready(&tcp);
        let tls = match &self.dial {
            Dial::Plaintext => {
                let started = match (&peer.settings.tls, name) {
                    (Some(tls), Some(name)) => {
                        let stream = (tls.connect(tcp, name, true).await)
                            .map_err(|e| fail("cannot reach", &e))?;
                        start(stream, address, ENDPOINT_STREAMS_BEFORE_SETTINGS).await
                    }
                    _ => start(tcp, address, ENDPOINT_STREAMS_BEFORE_SETTINGS).await,
                };
                return started.map_err(|e| fail("h2 handshake failed with", &e));
            }
            Dial::Mesh(tls) => tls,
        };
        let name = ServerName::try_from(PROXY_SERVER_NAME)
            .map_err(|e| fail("bad server name for", &e))?
            .to_owned();
        let stream = TlsConnector::from(tls.client_config())
            .connect(name, tcp)
            .await
            .map_err(|e| fail("TLS handshake failed with", &e))?;
        let session = stream.get_ref().1;
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(fail("no h2 (ALPN) from", &"the peer did not agree to h2"));
        }
        tls.check_peer(session.peer_certificates(), Some(cluster))
            .map_err(|e| fail("refused the identity of", &e))?;
        start(stream, address, MAX_CONCURRENT_STREAMS as usize)
            .await
            .map_err(|e| fail("h2 handshake failed with", &e))
    }
}

/// The streams an endpoint is taken to allow at once until its SETTINGS say: the fewest
/// RFC 9113 (§6.5.2) recommends a server allow.
const ENDPOINT_STREAMS_BEFORE_SETTINGS: usize = 100;

/// Starts h2 on `io`, a connection to `address`, and runs the connection as a task of its
/// own, pinged to keep it alive. Until the peer's SETTINGS arrive, it is taken to allow
/// `streams` at once: h2 would otherwise send any number, and a burst of requests on a
/// new connection would have those past the peer's limit refused (another cluster's
/// proxy allows [`MAX_CONCURRENT_STREAMS`]).
async fn start<T>(io: T, address: &str, streams: usize) -> Result<Sender, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (requests, mut connection) = h2::client::Builder::new()
        .initial_max_send_streams(streams)
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(SHARED_CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let pings = connection.ping_pong();
    let (address, ended) = (address.to_string(), closed.clone());
    tokio::spawn(async move {
        let keepalive = async move {
            let Some(mut pings) = pings else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(KEEPALIVE_INTERVAL).await;
                let pong = tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque()));
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
        tracing::debug!(%address, "h2 connection ended: {why}");
    });
    Ok(Sender { requests, closed })
}

/// The answer to a request sent: read whole, with its trailers, when it declares a length
/// of at most [`WHOLE_BODY_BYTES`]; else its head, the rest passed on as it arrives.
/// The stream's `place` is given back once the answer has ended.
async fn read_answer(
    answer: h2::client::ResponseFuture,
    place: Place,
) -> Result<Response<ProxyBody>, SendError> {
    let (mut head, mut received) = answer.await.map_err(reset)?.into_parts();
    if received.is_end_stream() {
        return Ok(Response::from_parts(head, ProxyBody::default()));
    }
    let declared = content_length(
        head.headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.as_bytes()),
        "answer",
    )
    .map_err(SendError::Reset)?;
    if declared.is_none_or(|n| n > WHOLE_BODY_BYTES) {
        let mut body = ProxyBody::from_h2(received, declared);
        body.keep(place);
        return Ok(Response::from_parts(head, body));
    }
    // Mostly one DATA frame: kept as it came; joined when there are more.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(chunk) = received.data().await {
        let chunk = chunk.map_err(reset)?;
        let _ = received.flow_control().release_capacity(chunk.len());
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(earlier) => {
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&chunk);
            }
        }
    }
    // Ends at once when the stream ended with its data, as most answers do.
    if let Some(trailers) = received.trailers().await.map_err(reset)? {
        head.extensions.insert(Trailers(trailers));
    }
    let body = first.unwrap_or_else(|| joined.freeze());
    Ok(Response::from_parts(head, ProxyBody::Whole(body)))
}

/// An h2 failure, as a reset.
fn reset(e: h2::Error) -> SendError {
    SendError::Reset(crate::outbound::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::POOL_DEFAULTS;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    /// An endpoint of this cluster at `address`, its service with no settings.
    fn here(address: &str) -> Peer<'_> {
        Peer {
            address,
            cluster: "here",
            settings: &POOL_DEFAULTS,
            host: "here",
        }
    }

    /// An h2c server answering every request 200 with a body and `grpc-status: 0` in its
    /// trailers, declaring the body's length when the path is `/declared`; says on
    /// `ended` when a connection ends, and counts the connections it accepted.
    async fn h2c_server(
        ended: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(stream).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        let mut answer = Response::new(());
                        if request.uri().path() == "/declared" {
                            answer
                                .headers_mut()
                                .insert("content-length", "2".parse().expect("value"));
                        }
                        let mut stream = respond.send_response(answer, false).expect("answer");
                        stream.send_data(Bytes::from("ok"), false).expect("data");
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().expect("value"));
                        stream.send_trailers(trailers).expect("trailers");
                    }
                    let _ = ended.send(());
                });
            }
        });
        (address, accepted)
    }

    /// A GET for `address`.
    fn get(address: &str) -> Request<Bytes> {
        Request::get(format!("http://{address}/declared"))
            .body(Bytes::new())
            .expect("request")
    }

    /// An h2c server taking at most `most` streams at once on a connection, holding each
    /// answer until `release` turns true; counts the connections it accepted and the
    /// requests that reached it.
    async fn holding_h2c_server(
        most: u32,
    ) -> (
        String,
        [Arc<AtomicUsize>; 2],
        tokio::sync::watch::Sender<bool>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let (release, released) = tokio::sync::watch::channel(false);
        let [accepted, arrived] = counts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (arrived, released) = (arrived.clone(), released.clone());
                tokio::spawn(async move {
                    let handshake = h2::server::Builder::new()
                        .max_concurrent_streams(most)
                        .handshake(stream);
                    let Ok(mut connection) = handshake.await else {
                        return;
                    };
                    while let Some(Ok((_, mut respond))) = connection.accept().await {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        let mut released = released.clone();
                        tokio::spawn(async move {
                            let _ = released.wait_for(|r| *r).await;
                            let mut stream = respond.send_response(Response::new(()), false)?;
                            stream.send_data(Bytes::from("ok"), true)
                        });
                    }
                });
            }
        });
        (address, counts, release)
    }

    #[tokio::test]
    async fn a_peer_at_its_stream_limit_gets_the_next_request_on_another_connection() {
        two_streams_a_connection(2, PoolSettings::default()).await;
    }

    #[tokio::test]
    async fn a_service_at_its_stream_limit_gets_the_next_request_on_another_connection() {
        let settings = PoolSettings {
            max_concurrent_streams: Some(2),
            ..PoolSettings::default()
        };
        two_streams_a_connection(100, settings).await;
    }

    /// Checks that two streams held open on a connection (the peer taking at most
    /// `peer_most` at once, the service `settings`) leave a third request to another.
    async fn two_streams_a_connection(peer_most: u32, settings: PoolSettings) {
        let (address, [accepted, arrived], release) = holding_h2c_server(peer_most).await;
        let pool = Arc::new(H2Pool::plaintext(Duration::from_secs(1)));
        let settings = Arc::new(settings);
        let send = move |pool: Arc<H2Pool>, address: String| {
            let settings = settings.clone();
            async move {
                let peer = Peer {
                    settings: &settings,
                    ..here(&address)
                };
                pool.send(peer, get(&address)).await.map(|a| a.status())
            }
        };
        // Two streams held open: as many as a connection takes.
        let held: Vec<_> = (0..2)
            .map(|_| tokio::spawn(send(pool.clone(), address.clone())))
            .collect();
        let reached = |n: usize| {
            let arrived = arrived.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                while arrived.load(Ordering::SeqCst) < n {
                    assert!(
                        Instant::now() < deadline,
                        "{n} requests never reached the peer"
                    );
                    tokio::task::yield_now().await;
                }
            }
        };
        reached(2).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // A third reaches the peer at once, on a second connection, rather than wait for
        // one of the two to end.
        let third = tokio::spawn(send(pool.clone(), address.clone()));
        reached(3).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        release.send_replace(true);
        for answer in held.into_iter().chain([third]) {
            assert_eq!(answer.await.expect("task").expect("answer"), 200);
        }
        // Their places given back, the oldest connection takes the next request.
        send(pool.clone(), address.clone()).await.expect("answer");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.close_idle(Duration::from_secs(60)), 1, "one peer");
    }

    /// A burst of requests on new connections, before the peer's SETTINGS arrive, puts
    /// no more on each than a peer is taken to allow: none is refused.
    #[tokio::test]
    async fn a_burst_before_the_peers_settings_keeps_within_what_a_peer_allows() {
        let most = ENDPOINT_STREAMS_BEFORE_SETTINGS;
        // An h2c server that starts h2 on its connections (its SETTINGS first) only once
        // told to, and answers at once.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (open, opened) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut opened = opened.clone();
                tokio::spawn(async move {
                    let _ = opened.wait_for(|o| *o).await;
                    let handshake = h2::server::Builder::new()
                        .max_concurrent_streams(most as u32)
                        .handshake::<_, Bytes>(stream);
                    let Ok(mut connection) = handshake.await else {
                        return;
                    };
                    while let Some(Ok((_, mut respond))) = connection.accept().await {
                        let _ = respond.send_response(Response::new(()), true);
                    }
                });
            }
        });
        let pool = Arc::new(H2Pool::plaintext(Duration::from_secs(1)));
        let burst = 2 * most + 10;
        let answers: Vec<_> = (0..burst)
            .map(|_| {
                let (pool, address) = (pool.clone(), address.clone());
                tokio::spawn(async move {
                    let answer = pool.send(here(&address), get(&address)).await;
                    answer.map(|a| a.status()).map_err(|e| format!("{e:?}"))
                })
            })
            .collect();
        // Every request on a connection, sent or queued by h2, before any SETTINGS.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let slot = pool.peers.lock().expect("peers").get(&address).cloned();
            let placed = match slot {
                Some(slot) => (slot.lock().await.iter())
                    .map(|held| held.open.load(Ordering::SeqCst))
                    .sum(),
                None => 0,
            };
            if placed == burst {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{placed} of {burst} requests placed"
            );
            tokio::task::yield_now().await;
        }
        open.send_replace(true);
        for answer in answers {
            assert_eq!(answer.await.expect("task"), Ok(http::StatusCode::OK));
        }
        let connections = pool.peers.lock().expect("peers")[&address].clone();
        assert_eq!(
            connections.lock().await.len(),
            3,
            "{most} streams a connection"
        );
    }

    /// A connection made under a service's rule is not given a request under a changed
    /// rule, which gets a connection of its own; the same rule read again is the same.
    #[tokio::test]
    async fn a_changed_rule_holds_for_the_next_request_on_a_connection_of_its_own() {
        let (ended, _ends) = tokio::sync::mpsc::unbounded_channel();
        let (address, accepted) = h2c_server(ended).await;
        let pool = H2Pool::plaintext(Duration::from_secs(1));
        let carrying = |most: u32| PoolSettings {
            max_requests_per_connection: Some(most),
            ..PoolSettings::default()
        };
        let (old, old_read_again, new) = (carrying(10), carrying(10), carrying(2));
        for (settings, connections) in [(&old, 1), (&old_read_again, 1), (&new, 2), (&new, 2)] {
            let peer = Peer {
                settings,
                ..here(&address)
            };
            pool.send(peer, get(&address)).await.expect("answer");
            assert_eq!(accepted.load(Ordering::SeqCst), connections);
        }
    }

    #[tokio::test]
    async fn a_connection_carries_at_most_its_services_requests_then_closes() {
        let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel();
        let (address, accepted) = h2c_server(ended).await;
        let pool = H2Pool::plaintext(Duration::from_secs(1));
        let settings = PoolSettings {
            max_requests_per_connection: Some(2),
            ..PoolSettings::default()
        };
        let peer = Peer {
            settings: &settings,
            ..here(&address)
        };
        for _ in 0..5 {
            pool.send(peer, get(&address)).await.expect("answer");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // The two it carried all it could on end, their streams done.
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), ends.recv())
                .await
                .expect("a full connection ends")
                .expect("the server says so");
        }
        assert!(ends.try_recv().is_err(), "the third is still open");
    }

    #[tokio::test]
    async fn a_connection_past_its_services_max_duration_is_replaced() {
        let (ended, _ends) = tokio::sync::mpsc::unbounded_channel();
        let (address, accepted) = h2c_server(ended).await;
        let pool = H2Pool::plaintext(Duration::from_secs(1));
        let most = Duration::from_millis(200);
        let settings = PoolSettings {
            max_connection_duration: Some(most),
            ..PoolSettings::default()
        };
        let peer = Peer {
            settings: &settings,
            ..here(&address)
        };
        let (first, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(10));
        let mut sent = 0;
        while accepted.load(Ordering::SeqCst) < 2 {
            pool.send(peer, get(&address)).await.expect("answer");
            assert!(
                Instant::now() < deadline,
                "no new connection after {most:?}"
            );
            sent += 1;
        }
        assert!(sent > 2, "the first connection carried {}", sent - 1);
        assert!(
            first.elapsed() >= most,
            "replaced after {:?}",
            first.elapsed()
        );
    }

    #[tokio::test]
    async fn a_services_idle_timeout_holds_over_the_pools() {
        let (ended, _ends) = tokio::sync::mpsc::unbounded_channel();
        let (address, accepted) = h2c_server(ended).await;
        let pool = H2Pool::plaintext(Duration::from_secs(1));
        let settings = PoolSettings {
            idle_timeout: Some(Duration::from_secs(3600)),
            ..PoolSettings::default()
        };
        let peer = Peer {
            settings: &settings,
            ..here(&address)
        };
        pool.send(peer, get(&address)).await.expect("answer");
        // A sweep that would close every connection idle under the pool's own timeout.
        assert_eq!(pool.close_idle(Duration::ZERO), 1, "kept for its service");
        pool.send(peer, get(&address)).await.expect("answer");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "and used again");
    }

    #[tokio::test]
    async fn answers_come_with_their_trailers_and_idle_connections_are_closed() {
        let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel();
        let (address, _) = h2c_server(ended).await;
        let pool = H2Pool::plaintext(Duration::from_secs(1));
        let request = || {
            Request::get(format!("http://{address}/declared"))
                .body(Bytes::new())
                .expect("request")
        };
        // Small and of a declared length: whole, the trailers beside it.
        let answer = pool.send(here(&address), request()).await.expect("answer");
        assert!(matches!(answer.body(), ProxyBody::Whole(b) if b.as_ref() == b"ok"));
        let trailers = answer.extensions().get::<Trailers>().expect("trailers");
        assert_eq!(trailers.0["grpc-status"], "0");
        // Of no declared length: passed on as it comes, the trailers after the data.
        let undeclared = Request::get(format!("http://{address}/undeclared"))
            .body(Bytes::new())
            .expect("request");
        let answer = pool.send(here(&address), undeclared).await.expect("answer");
        assert!(matches!(answer.body(), ProxyBody::Streaming(_)));
        let collected = answer
            .into_body()
            .collect()
            .await
            .expect("the whole answer");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes().as_ref(), b"ok");
        // Used just now: kept, and the next request takes the same connection.
        assert_eq!(pool.close_idle(Duration::from_secs(60)), 1);
        pool.send(here(&address), request()).await.expect("answer");
        assert!(ends.try_recv().is_err());
        // Idle past the timeout: closed, and the peer sees the connection end.
        assert_eq!(pool.close_idle(Duration::ZERO), 0);
        tokio::time::timeout(Duration::from_secs(5), ends.recv())
            .await
            .expect("the connection ends")
            .expect("the server says so");
        // A request after that makes a new one.
        pool.send(here(&address), request()).await.expect("answer");
        assert_eq!(pool.close_idle(Duration::from_secs(60)), 1);
    }

    #[tokio::test]
    async fn a_peer_that_cannot_be_reached_is_forgotten() {
        let pool = H2Pool::plaintext(Duration::from_secs(1));
        let (_held, address) = crate::testing::refusing_address();
        let address = address.to_string();
        let request = Request::get(format!("http://{address}/"))
            .body(Bytes::new())
            .expect("request");
        let failed = pool.send(here(&address), request).await;
        assert!(matches!(failed, Err(SendError::Connect(_))), "{failed:?}");
        assert_eq!(pool.close_idle(Duration::from_secs(60)), 0);
    }
}
