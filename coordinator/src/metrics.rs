//! Prometheus metrics of one coordinator node, and the plain-HTTP listener that serves
//! them at `/metrics`.
//!
//! The metrics listener is the one port without mTLS (Prometheus scrapers rarely hold a
//! mesh identity); it serves nothing but these numbers and binds to loopback unless told
//! otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Every metric a node exports.
pub struct Metrics {
    registry: Registry,
    /// Current Raft term.
    pub term: Gauge,
    /// Times the known leader changed.
    pub leader_changes: Counter,
    /// 1 when this node leads.
    pub is_leader: Gauge,
    /// Highest log index known committed.
    pub commit_index: Gauge,
    /// Highest log index applied here.
    pub applied_index: Gauge,
    /// Committed minus applied.
    pub apply_lag: Gauge,
    /// Reports folded into each digest this node proposed.
    pub digest_batch_reports: Histogram,
    /// Reports accepted from proxies.
    pub reports_accepted: Counter,
    /// Reports merged into a pending one from the same proxy because the node was behind.
    pub reports_coalesced: Counter,
    /// Reports refused or dropped (bad content, wrong cluster, queue full).
    pub reports_dropped: Counter,
    /// Digest proposals that failed (no leader, leader unreachable).
    pub digest_failures: Counter,
    /// Proxies subscribed to this node.
    pub connected_proxies: Gauge,
    /// Seconds from a version's commit (leader time) to its send to a proxy.
    pub push_latency: Histogram,
    /// Snapshots sent to proxies.
    pub pushes: Counter,
    /// Raft calls refused because they were meant for another node.
    pub raft_calls_misaddressed: Counter,
    /// A leader's heartbeats and entries refused because this node cannot reach it.
    pub leader_refused: Counter,
    /// Proxies' subscriptions and reports refused or ended because this node was cut off
    /// from its group.
    pub cut_off_refusals: Counter,
    /// Pre-votes after which this node stood (a majority would vote for it).
    pub pre_votes_won: Counter,
    /// Pre-votes after which it did not.
    pub pre_votes_lost: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fulcrum_coordinator");
        let m = Metrics {
            term: Gauge::default(),
            leader_changes: Counter::default(),
            is_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            apply_lag: Gauge::default(),
            digest_batch_reports: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            reports_accepted: Counter::default(),
            reports_coalesced: Counter::default(),
            reports_dropped: Counter::default(),
            digest_failures: Counter::default(),
            connected_proxies: Gauge::default(),
            push_latency: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            pushes: Counter::default(),
            raft_calls_misaddressed: Counter::default(),
            leader_refused: Counter::default(),
            cut_off_refusals: Counter::default(),
            pre_votes_won: Counter::default(),
            pre_votes_lost: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register(
            "raft_leader_changes",
            "Times the known leader changed",
            m.leader_changes.clone(),
        );
        registry.register(
            "raft_is_leader",
            "1 when this node leads",
            m.is_leader.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Highest log index known committed",
            m.commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest log index applied here",
            m.applied_index.clone(),
        );
        registry.register(
            "raft_apply_lag",
            "Committed entries not yet applied here",
            m.apply_lag.clone(),
        );
        registry.register(
            "digest_batch_reports",
            "Proxy reports folded into each digest this node proposed",
            m.digest_batch_reports.clone(),
        );
        registry.register(
            "reports_accepted",
            "Proxy reports accepted",
            m.reports_accepted.clone(),
        );
        registry.register(
            "reports_coalesced",
            "Proxy reports merged into a pending report of the same proxy while the node was behind",
            m.reports_coalesced.clone(),
        );
        registry.register(
            "reports_dropped",
            "Proxy reports refused or dropped",
            m.reports_dropped.clone(),
        );
        registry.register(
            "digest_failures",
            "Digest proposals that failed",
            m.digest_failures.clone(),
        );
        registry.register(
            "connected_proxies",
            "Proxies subscribed to this node",
            m.connected_proxies.clone(),
        );
        registry.register(
            "push_latency_seconds",
            "From a version's commit to its send to a proxy",
            m.push_latency.clone(),
        );
        registry.register("pushes", "Snapshots sent to proxies", m.pushes.clone());
        registry.register(
            "raft_calls_misaddressed",
            "Raft calls refused because they were meant for another node (two node ids share an address)",
            m.raft_calls_misaddressed.clone(),
        );
        registry.register(
            "raft_leader_refused",
            "A leader's heartbeats and entries refused because this node could not reach it (its forwards and probes went unanswered)",
            m.leader_refused.clone(),
        );
        registry.register(
            "cut_off_refusals",
            "Proxies' subscriptions and report streams refused or ended because this node was out of touch with its Raft group",
            m.cut_off_refusals.clone(),
        );
        registry.register(
            "raft_pre_votes_won",
            "Times this node asked for pre-votes and a majority would vote for it, so it stood",
            m.pre_votes_won.clone(),
        );
        registry.register(
            "raft_pre_votes_lost",
            "Times this node asked for pre-votes and no majority would vote for it (a live leader elsewhere, or no majority reachable), so it did not stand",
            m.pre_votes_lost.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Follows Raft's own metrics into the gauges, until the sender goes away.
    pub async fn follow_raft(
        self: Arc<Self>,
        mut raft: watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
    ) {
        let mut leader = None;
        loop {
            {
                let m = raft.borrow_and_update();
                let committed = m.last_log_index.unwrap_or(0);
                let applied = m.last_applied.map_or(0, |l| l.index);
                self.term.set(m.current_term as i64);
                self.commit_index.set(committed as i64);
                self.applied_index.set(applied as i64);
                self.apply_lag.set(committed.saturating_sub(applied) as i64);
                self.is_leader
                    .set(i64::from(m.current_leader == Some(m.id)));
                if m.current_leader != leader {
                    if leader.is_some() {
                        self.leader_changes.inc();
                    }
                    leader = m.current_leader;
                }
            }
            if raft.changed().await.is_err() {
                return;
            }
        }
    }
}

/// How long a scrape's connection may wait for its request head to come whole, from
/// when it is opened or its last answer was sent (hyper's header read timeout).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `/metrics` on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        tokio::spawn(serve_connection(stream, metrics.clone(), HEAD_TIMEOUT));
    }
}

/// Serves one scrape connection, in HTTP/1.1 (what Prometheus speaks): closed when a
/// request head is not whole within `head_timeout` of when it was waited for, so that a
/// client sending nothing, or a byte now and then, cannot hold it.
async fn serve_connection(stream: TcpStream, metrics: Arc<Metrics>, head_timeout: Duration) {
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let metrics = metrics.clone();
        async move {
            if request.uri().path() == "/metrics" {
                Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(metrics.render())))
            } else {
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from_static(
                        b"only /metrics is served here\n",
                    )))
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Binds the metrics listener.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads until the server closes, writing a byte now and then meanwhile when
    /// `trickle`; what was read, or `None` if the connection was still open after 10 s.
    async fn until_closed(stream: &mut TcpStream, trickle: bool) -> Option<Vec<u8>> {
        let (mut read, started) = (Vec::new(), std::time::Instant::now());
        while started.elapsed() < Duration::from_secs(10) {
            let mut buf = [0u8; 4096];
            let wait = Duration::from_millis(50);
            match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Some(read),
                Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
                Err(_) if trickle => {
                    if stream.write_all(b"a").await.is_err() {
                        return Some(read);
                    }
                }
                Err(_) => {}
            }
        }
        None
    }

    /// A scrape is answered; a connection that sends nothing, or trickles its head in a
    /// byte at a time, is closed once the head timeout passes.
    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_trickles_is_closed() {
        let timeout = Duration::from_millis(300);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, metrics.clone(), timeout));
            }
        });

        let mut silent = TcpStream::connect(address).await.unwrap();
        assert_eq!(until_closed(&mut silent, false).await, Some(Vec::new()));

        let mut trickling = TcpStream::connect(address).await.unwrap();
        trickling
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: c\r\nx-pad: ")
            .await
            .unwrap();
        let read = until_closed(&mut trickling, true).await;
        assert!(read.is_some(), "a trickled head is not held for ever");

        let mut scrape = TcpStream::connect(address).await.unwrap();
        scrape
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: c\r\n\r\n")
            .await
            .unwrap();
        let read = until_closed(&mut scrape, false).await.unwrap_or_default();
        assert!(read.starts_with(b"HTTP/1.1 200 OK"), "{read:?}");
    }
}
