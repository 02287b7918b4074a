//! The worker threads that serve the outbound and east-west listeners.
//!
//! One task per listener accepts connections and hands each to a worker, round robin. A
//! worker is a thread running its own single-threaded runtime with its own upstream pools
//! ([`Upstreams`]): the client connection, the request's routing, the upstream connection
//! and the tasks driving both all stay on that thread. With one shared multi-threaded
//! runtime, each request woke tasks on other threads (the client side on one, the pooled
//! upstream connection on another), and those wake-ups cost more than the routing itself
//! (see docs/benchmarks.md). Routing state, balancing, outlier detection and counters are
//! shared by every worker through [`Outbound`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::downstream;
use crate::metrics::ProxyMetrics;
use crate::outbound::{Outbound, Upstreams};
use crate::transport::serve_east_west_connection;
use crate::upstream::IDLE_TIMEOUT;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Applications' requests (HTTP/1.1 and h2c).
    Outbound,
    /// Other clusters' proxies (h2 over mTLS).
    EastWest,
}

/// The worker threads, each fed through its own lane.
pub struct Workers {
    lanes: Vec<mpsc::UnboundedSender<(std::net::TcpStream, Listener)>>,
    next: AtomicUsize,
    metrics: Arc<ProxyMetrics>,
}

impl Workers {
    /// Starts `count` workers (at least one) serving with `outbound`. They stop when
    /// `stopped` turns true or when this handle is dropped, closing their connections.
    pub fn start(
        count: usize,
        outbound: Arc<Outbound>,
        stopped: watch::Receiver<bool>,
    ) -> io::Result<Workers> {
        let metrics = outbound.metrics();
        let mut lanes = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (lane, arrivals) = mpsc::unbounded_channel();
            let (outbound, stopped) = (outbound.clone(), stopped.clone());
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || runtime.block_on(work(arrivals, outbound, stopped)))?;
            lanes.push(lane);
        }
        Ok(Workers {
            lanes,
            next: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Counts a connection a listener failed to accept.
    pub fn accept_failed(&self) {
        self.metrics.accept_failures.inc();
    }

    /// Hands `stream`, accepted on `listener`, to the next worker.
    pub fn hand(&self, stream: TcpStream, listener: Listener) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot hand a connection to a worker: {e}");
                return;
            }
        };
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        if self.lanes[lane].send((stream, listener)).is_err() {
            tracing::warn!("worker {lane} has stopped; connection dropped");
        }
    }
}

/// One worker: serves each connection it is handed, over its own upstream pools, until
/// stopped.
async fn work(
    mut arrivals: mpsc::UnboundedReceiver<(std::net::TcpStream, Listener)>,
    outbound: Arc<Outbound>,
    mut stopped: watch::Receiver<bool>,
) {
    let upstreams = Arc::new(outbound.upstreams());
    tokio::spawn(close_idle(upstreams.clone()));
    let tls = outbound.mesh_tls();
    loop {
        let arrival = tokio::select! {
            a = arrivals.recv() => a,
            _ = stopped.changed() => None,
        };
        let Some((stream, listener)) = arrival else {
            return;
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot serve a handed connection: {e}");
                continue;
            }
        };
        match (listener, &tls) {
            (Listener::Outbound, _) => {
                tokio::spawn(downstream::serve(
                    stream,
                    outbound.clone(),
                    upstreams.clone(),
                ));
            }
            (Listener::EastWest, Some(tls)) => {
                tokio::spawn(serve_east_west_connection(
                    stream,
                    tls.clone(),
                    outbound.clone(),
                    upstreams.clone(),
                ));
            }
            (Listener::EastWest, None) => {
                tracing::warn!("an east-west connection, but no mTLS configured: closed");
            }
        }
    }
}

/// Closes the worker's endpoint connections that sat idle too long, now and then (for as
/// long as the worker's runtime runs).
async fn close_idle(upstreams: Arc<Upstreams>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 3);
    loop {
        every.tick().await;
        upstreams.close_idle(IDLE_TIMEOUT);
    }
}
