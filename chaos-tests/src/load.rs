//! The drills' load generator: open loop at a constant rate (requests are sent on
//! schedule whether or not earlier ones have answered, so a slow mesh shows up as latency
//! and errors, not as a lower rate), spread in turn over the clusters' proxies. Each
//! request is recorded: when it was sent, its status, its latency, which cluster served
//! it (`x-fulcrum-cluster`) and how many tries the proxy made (`x-fulcrum-attempts`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::time::Instant;

/// The proxy's header naming the serving cluster.
pub const SERVED_BY: &str = "x-fulcrum-cluster";
/// The proxy's header counting its tries.
pub const ATTEMPTS: &str = "x-fulcrum-attempts";
/// Default rate.
pub const DEFAULT_RATE: u32 = 500;
/// A request gets no answer after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight at most; beyond, a send is recorded as failed at once.
const MAX_IN_FLIGHT: usize = 20_000;

/// One request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    /// Milliseconds from the start of the run.
    pub sent_ms: u64,
    /// The answer's status; 0 when there was none.
    pub status: u16,
    /// Microseconds to the answer (or to giving up).
    pub latency_us: u64,
    /// The cluster the request was sent to (its proxy), by index.
    pub source: u8,
    /// The cluster that answered, by index, when known.
    pub served: Option<u8>,
    /// Tries the proxy made (`x-fulcrum-attempts`; 0 when it did not say).
    pub attempts: u8,
}

impl Sample {
    /// A 2xx answer.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What a run recorded so far.
#[derive(Debug, Default)]
pub struct Recorder {
    samples: Mutex<Vec<Sample>>,
}

impl Recorder {
    /// Every sample, in the order answers came.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Samples sent at or after `from_ms`.
    pub fn since(&self, from_ms: u64) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| s.iter().filter(|x| x.sent_ms >= from_ms).copied().collect())
            .unwrap_or_default()
    }

    fn push(&self, sample: Sample) {
        if let Ok(mut s) = self.samples.lock() {
            s.push(sample);
        }
    }
}

/// Latency percentiles in microseconds of `samples`: (p50, p99, max).
pub fn latency(samples: &[Sample]) -> (u64, u64, u64) {
    let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2) else {
        return (0, 0, 0);
    };
    for s in samples {
        h.saturating_record(s.latency_us.max(1));
    }
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
}

/// Sends `rate` requests per second for `service` (its Host) to the `targets` (cluster
/// index, proxy outbound address) in turn, until `stop`; `clusters` names the clusters in
/// index order. Returns when every request sent has answered or timed out.
pub async fn run(
    targets: Vec<(u8, SocketAddr)>,
    service: String,
    clusters: Vec<String>,
    rate: u32,
    started: Instant,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    if targets.is_empty() || rate == 0 {
        return;
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let clusters = Arc::new(clusters);
    let service: Arc<str> = service.into();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        while in_flight.try_join_next().is_some() {}
        let (source, address) = targets[next % targets.len()];
        next += 1;
        let sent = Instant::now();
        let sent_ms = u64::try_from((sent - started).as_millis()).unwrap_or(u64::MAX);
        if in_flight.len() >= MAX_IN_FLIGHT {
            recorder.push(Sample {
                sent_ms,
                status: 0,
                latency_us: 0,
                source,
                served: None,
                attempts: 0,
            });
            continue;
        }
        let (client, recorder, clusters, service) = (
            client.clone(),
            recorder.clone(),
            clusters.clone(),
            service.clone(),
        );
        in_flight.spawn(async move {
            let request = Request::get(format!("http://{address}/"))
                .header(http::header::HOST, &*service)
                .body(Full::new(Bytes::new()));
            let answer = async {
                let response = client.request(request.ok()?).await.ok()?;
                let served = response
                    .headers()
                    .get(SERVED_BY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|c| clusters.iter().position(|n| n == c))
                    .and_then(|i| u8::try_from(i).ok());
                let attempts = response
                    .headers()
                    .get(ATTEMPTS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let status = response.status().as_u16();
                // Read the body: an answer is whole or it is not an answer.
                response.into_body().collect().await.ok()?;
                Some((status, served, attempts))
            };
            let (status, served, attempts) = tokio::time::timeout(REQUEST_TIMEOUT, answer)
                .await
                .ok()
                .flatten()
                .unwrap_or((0, None, 0));
            recorder.push(Sample {
                sent_ms,
                status,
                latency_us: u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX),
                source,
                served,
                attempts,
            });
        });
    }
    while in_flight.join_next().await.is_some() {}
}
