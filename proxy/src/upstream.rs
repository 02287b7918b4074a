//! Connections to this cluster's endpoints: HTTP/1.1 with keep-alive, idle connections
//! kept per endpoint address.
//!
//! Each worker thread has its own pool ([`crate::outbound::Upstreams`]), so a request and
//! the connection it goes over are driven by the same thread, and the pool needs none of
//! a shared client's machinery (a key built and hashed per request, a checkout future,
//! waiters): an idle connection is taken, used for one exchange, and put back once its
//! answer has been read whole; the worker closes those idle for [`IDLE_TIMEOUT`]. Replacing hyper-util's pooled client with it
//! took a plain request from 54,000 to 44,000 instructions (callgrind; docs/benchmarks.md).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::FastMap;
use crate::outbound::error_chain;

/// Idle connections kept per endpoint; more are closed once their exchange ends.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// How long a connection may sit idle before [`Http1Pool::close_idle`] closes it (as
/// hyper's pooled client, and under the keep-alive timeouts servers commonly use).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Sender = http1::SendRequest<Full<Bytes>>;

/// Why an exchange with an endpoint got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, or over the connect timeout).
    Connect(String),
    /// The connection broke before the whole answer arrived.
    Reset(String),
}

/// One worker's connections to endpoints.
pub struct Http1Pool {
    /// Per endpoint, oldest first, with when each was put back.
    idle: Mutex<FastMap<SocketAddr, Vec<(Sender, Instant)>>>,
    connect_timeout: Duration,
}

impl Http1Pool {
    /// An empty pool; new connections must be made within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Http1Pool {
        Http1Pool {
            idle: Mutex::default(),
            connect_timeout,
        }
    }

    /// Sends `request` (origin-form URI, with its Host header) to the endpoint at
    /// `address` and reads the answer whole. An idle connection is used when there is
    /// one; a request an idle connection could not take (the endpoint closed it
    /// meanwhile) goes on another, or on a new one.
    pub async fn exchange(
        &self,
        address: SocketAddr,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, UpstreamError> {
        while let Some(mut sender) = self.take(address) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return self.read(address, sender, response).await,
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Reset(error_chain(e.error()))),
                },
            }
        }
        // Boxed: a connection attempt's state would otherwise be part of (and be copied
        // with) every request's future, though most requests reuse a connection.
        let mut sender = Box::pin(self.connect(address)).await?;
        match sender.send_request(request).await {
            Ok(response) => self.read(address, sender, response).await,
            Err(e) => Err(UpstreamError::Reset(error_chain(&e))),
        }
    }

    /// Reads the body of `response`, then gives the connection back.
    async fn read(
        &self,
        address: SocketAddr,
        sender: Sender,
        response: Response<hyper::body::Incoming>,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let (head, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| UpstreamError::Reset(error_chain(&e)))?
            .to_bytes();
        self.put(address, sender);
        Ok(Response::from_parts(head, body))
    }

    /// The most recently used idle connection to `address` (the likeliest to be open).
    fn take(&self, address: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let senders = idle.get_mut(&address)?;
        while let Some((sender, _)) = senders.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, address: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let senders = idle.entry(address).or_default();
            if senders.len() < MAX_IDLE_PER_ENDPOINT {
                senders.push((sender, Instant::now()));
            }
        }
    }

    /// Closes the connections idle for `timeout` or more, and forgets those the endpoint
    /// closed; returns how many are left.
    pub fn close_idle(&self, timeout: Duration) -> usize {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        idle.retain(|_, senders| {
            senders.retain(|(sender, since)| !sender.is_closed() && since.elapsed() < timeout);
            !senders.is_empty()
        });
        idle.values().map(Vec::len).sum()
    }

    async fn connect(&self, address: SocketAddr) -> Result<Sender, UpstreamError> {
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Err(UpstreamError::Connect(e.to_string())),
                Err(_) => {
                    return Err(UpstreamError::Connect(format!(
                        "no connection within {}ms",
                        self.connect_timeout.as_millis()
                    )));
                }
            };
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%address, "endpoint connection closed: {e}");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    /// An endpoint answering `n` (the request's number on its connection) and counting
    /// the connections it accepted; with `close_after_one`, each connection serves one
    /// request and then closes.
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
                    let service = service_fn(move |_request| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(n.to_string()),
                            )))
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

    fn get(address: SocketAddr) -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, address.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let (address, connections) = endpoint(false).await;
        let pool = Http1Pool::new(Duration::from_secs(1));
        for n in 1..=5 {
            let answer = pool.exchange(address, get(address)).await.unwrap();
            assert_eq!(answer.body(), &Bytes::from(n.to_string()));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_is_not_used_again() {
        let (address, connections) = endpoint(true).await;
        let pool = Http1Pool::new(Duration::from_secs(1));
        for _ in 0..3 {
            let answer = pool.exchange(address, get(address)).await.unwrap();
            assert_eq!(answer.body(), &Bytes::from("1"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_closed() {
        let (address, connections) = endpoint(false).await;
        let pool = Http1Pool::new(Duration::from_secs(1));
        pool.exchange(address, get(address)).await.unwrap();
        assert_eq!(pool.close_idle(IDLE_TIMEOUT), 1, "a fresh one stays");
        assert_eq!(pool.close_idle(Duration::ZERO), 0, "an expired one goes");
        let answer = pool.exchange(address, get(address)).await.unwrap();
        assert_eq!(
            answer.body(),
            &Bytes::from("1"),
            "a new connection's first answer"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let pool = Http1Pool::new(Duration::from_secs(1));
        match pool.exchange(address, get(address)).await {
            Err(UpstreamError::Connect(_)) => {}
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
