//! The worker threads that serve the outbound and east-west listeners.
//!
//! One task per listener accepts connections and hands each to a worker: the one with the
//! fewest connections open, round robin among equals (an east-west listener carries a few
//! long-lived connections among the other proxies' short reachability probes, and round
//! robin alone could put two of them on one worker). A worker is a thread running its own single-threaded runtime with its own upstream pools
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

/// A connection handed to a worker, with the listener it came in on and its place in the
/// worker's count of open connections.
type Arrival = (std::net::TcpStream, Listener, Open);

/// One worker's way in, and how many connections it has open.
struct Lane {
    arrivals: mpsc::UnboundedSender<Arrival>,
    open: Arc<AtomicUsize>,
}

/// A connection counted open on its worker until this is dropped (when the connection's
/// task ends).
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The worker threads, each fed through its own lane.
pub struct Workers {
    lanes: Vec<Lane>,
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
            let (arrivals, waiting) = mpsc::unbounded_channel();
            let (outbound, stopped) = (outbound.clone(), stopped.clone());
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || runtime.block_on(work(waiting, outbound, stopped)))?;
            lanes.push(Lane {
                arrivals,
                open: Arc::default(),
            });
        }
        Ok(Workers {
            lanes,
            next: AtomicUsize::new(0),
            metrics,
        })
    }

    /// How many connections each worker has open, in worker order.
    pub fn open_connections(&self) -> Vec<usize> {
        self.lanes
            .iter()
            .map(|l| l.open.load(Ordering::Relaxed))
            .collect()
    }

    /// Counts a connection a listener failed to accept.
    pub fn accept_failed(&self) {
        self.metrics.accept_failures.inc();
    }

    /// Hands `stream`, accepted on `listener`, to the worker with the fewest connections
    /// open (the first of them from a point that moves on with every connection).
    pub fn hand(&self, stream: TcpStream, listener: Listener) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot hand a connection to a worker: {e}");
                return;
            }
        };
        let count = self.lanes.len();
        let from = self.next.fetch_add(1, Ordering::Relaxed);
        let index = (0..count)
            .map(|i| (from + i) % count)
            .min_by_key(|&i| self.lanes[i].open.load(Ordering::Relaxed))
            .unwrap_or(0);
        let lane = &self.lanes[index];
        lane.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(lane.open.clone());
        if lane.arrivals.send((stream, listener, open)).is_err() {
            tracing::warn!("worker {index} has stopped; connection dropped");
        }
    }
}

/// One worker: serves each connection it is handed, over its own upstream pools, until
/// stopped.
async fn work(
    mut arrivals: mpsc::UnboundedReceiver<Arrival>,
    outbound: Arc<Outbound>,
    mut stopped: watch::Receiver<bool>,
) {
    let upstreams = Arc::new(outbound.upstreams());
    tokio::spawn(close_idle(upstreams.clone(), outbound.clone()));
    let tls = outbound.mesh_tls();
    loop {
        let arrival = tokio::select! {
            a = arrivals.recv() => a,
            _ = stopped.changed() => None,
        };
        let Some((stream, listener, open)) = arrival else {
            return;
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot serve a handed connection: {e}");
                continue;
            }
        };
        let (outbound, upstreams) = (outbound.clone(), upstreams.clone());
        match (listener, &tls) {
            (Listener::Outbound, _) => {
                tokio::spawn(async move {
                    downstream::serve(stream, outbound, upstreams).await;
                    drop(open);
                });
            }
            (Listener::EastWest, Some(tls)) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    serve_east_west_connection(stream, tls, outbound, upstreams).await;
                    drop(open);
                });
            }
            (Listener::EastWest, None) => {
                tracing::warn!("an east-west connection, but no mTLS configured: closed");
            }
        }
    }
}

/// Closes the worker's endpoint connections that sat idle too long, now and then, and
/// at each new routing those it has no use for (to an endpoint since removed, or made
/// under a rule since changed), as Envoy drains a removed host's connections; for as
/// long as the worker's runtime runs.
async fn close_idle(upstreams: Arc<Upstreams>, outbound: Arc<Outbound>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 3);
    let mut updates = outbound.updates();
    loop {
        tokio::select! {
            _ = every.tick() => upstreams.close_idle(IDLE_TIMEOUT),
            // Never closed: its sender lives in `outbound`, which this task holds.
            _ = updates.changed() => outbound.close_unused(&upstreams),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::net::TcpListener;

    /// Waits until `workers` have `expected` connections open, for at most 5 s.
    async fn until_open(workers: &Workers, expected: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while workers.open_connections() != expected {
            assert!(
                Instant::now() < deadline,
                "open connections {:?}, expected {expected:?}",
                workers.open_connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_goes_to_the_worker_with_the_fewest_open() {
        let outbound = Arc::new(Outbound::new(
            None,
            Arc::new(ProxyMetrics::new()),
            "east".into(),
            "us-east/us-east-1a".parse().expect("locality"),
        ));
        let (_stop, stopped) = watch::channel(false);
        let workers = Workers::start(2, outbound, stopped).expect("workers");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let accept = async || {
            let client = TcpStream::connect(address).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            workers.hand(server, Listener::Outbound);
            client
        };
        // A connection that stays, one that closes at once (a probe), then another that
        // stays: round robin alone would put both that stay on the first worker.
        let _first = accept().await;
        until_open(&workers, &[1, 0]).await;
        drop(accept().await);
        until_open(&workers, &[1, 0]).await;
        let _second = accept().await;
        until_open(&workers, &[1, 1]).await;
    }
}
