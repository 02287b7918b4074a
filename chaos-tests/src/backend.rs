//! The drills' test backend: an HTTP server (HTTP/1.1 and h2c) that answers every request
//! with its cluster and name in headers, and whose behaviour is set over HTTP while it
//! runs: `POST /_drill/knobs?error_rate=0.3&latency_ms=50&refuse=false&hang=false`.
//!
//! - `error_rate` (0..1): that share of answers are 503, spread evenly (every n-th), not
//!   at random, so a drill's 30% is 30%;
//! - `latency_ms`: added before every answer;
//! - `refuse`: stop accepting connections (the listener is closed; connections already
//!   open are closed after their request), until set back to false;
//! - `hang`: accept, read the request, never answer.
//!
//! `GET /_drill/knobs` shows the current knobs. The knobs are also served on a control
//! port that no knob affects, so a drill can always undo a fault (even `refuse`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The header naming the backend's cluster.
pub const CLUSTER_HEADER: &str = "x-backend-cluster";
/// The header naming the backend.
pub const NAME_HEADER: &str = "x-backend-name";
/// Where the knobs are.
pub const KNOBS_PATH: &str = "/_drill/knobs";

/// How the backend behaves.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Knobs {
    /// Share of answers that are 503, 0 to 1.
    pub error_rate: f64,
    /// Added before each answer.
    pub latency_ms: u64,
    /// Refuse connections.
    pub refuse: bool,
    /// Never answer.
    pub hang: bool,
}

impl Knobs {
    /// Parses a knobs query (`error_rate=0.3&latency_ms=50`), starting from `self`.
    pub fn with_query(mut self, query: &str) -> Result<Knobs, String> {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |e: &dyn std::fmt::Display| format!("{name}={value}: {e}");
            match name {
                "error_rate" => {
                    let rate: f64 = value.parse().map_err(|e| bad(&e))?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(bad(&"must be between 0 and 1"));
                    }
                    self.error_rate = rate;
                }
                "latency_ms" => self.latency_ms = value.parse().map_err(|e| bad(&e))?,
                "refuse" => self.refuse = value.parse().map_err(|e| bad(&e))?,
                "hang" => self.hang = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("{name}: unknown knob")),
            }
        }
        Ok(self)
    }

    /// The query that sets these knobs.
    pub fn query(&self) -> String {
        format!(
            "error_rate={}&latency_ms={}&refuse={}&hang={}",
            self.error_rate, self.latency_ms, self.refuse, self.hang
        )
    }
}

/// A backend's identity and state.
struct State {
    cluster: String,
    name: String,
    knobs: std::sync::Mutex<Knobs>,
    served: AtomicU64,
    refusing: AtomicBool,
    /// Wakes the accept loop when `refuse` changes.
    changed: tokio::sync::Notify,
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn answer(state: Arc<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() == KNOBS_PATH {
        let current = state.knobs.lock().map(|k| *k).unwrap_or_default();
        if request.method() == http::Method::POST {
            return match current.with_query(request.uri().query().unwrap_or("")) {
                Ok(knobs) => {
                    if let Ok(mut k) = state.knobs.lock() {
                        *k = knobs;
                    }
                    state.refusing.store(knobs.refuse, Ordering::Release);
                    state.changed.notify_waiters();
                    text(
                        StatusCode::OK,
                        serde_json::to_string(&knobs).unwrap_or_default(),
                    )
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
        }
        return text(
            StatusCode::OK,
            serde_json::to_string(&current).unwrap_or_default(),
        );
    }
    let knobs = state.knobs.lock().map(|k| *k).unwrap_or_default();
    if knobs.hang {
        std::future::pending::<()>().await;
    }
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    let n = state.served.fetch_add(1, Ordering::Relaxed);
    // Every request whose running error count goes up by one fails: exact shares.
    let fails = ((n + 1) as f64 * knobs.error_rate).floor() > (n as f64 * knobs.error_rate).floor();
    let mut r = if fails {
        text(StatusCode::SERVICE_UNAVAILABLE, "injected failure\n".into())
    } else {
        text(
            StatusCode::OK,
            format!("{} {}\n", state.cluster, state.name),
        )
    };
    let headers = r.headers_mut();
    if let Ok(v) = state.cluster.parse() {
        headers.insert(CLUSTER_HEADER, v);
    }
    if let Ok(v) = state.name.parse() {
        headers.insert(NAME_HEADER, v);
    }
    r
}

/// Accepts until the backend refuses connections (when `refusable`), then hands the
/// listener back.
async fn accept_loop(listener: TcpListener, state: Arc<State>, refusable: bool) -> TcpListener {
    {
        loop {
            if refusable && state.refusing.load(Ordering::Acquire) {
                return listener;
            }
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = state.changed.notified() => continue,
            };
            let Ok((stream, _)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |r| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(state, r).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// Serves requests on `address` and the knobs on `control` until the process ends.
pub async fn serve(
    address: SocketAddr,
    control: SocketAddr,
    cluster: String,
    name: String,
) -> std::io::Result<()> {
    let state = Arc::new(State {
        cluster,
        name,
        knobs: std::sync::Mutex::new(Knobs::default()),
        served: AtomicU64::new(0),
        refusing: AtomicBool::new(false),
        changed: tokio::sync::Notify::new(),
    });
    let control = TcpListener::bind(control).await?;
    tokio::spawn(accept_loop(control, state.clone(), false));
    loop {
        let listener = TcpListener::bind(address).await?;
        drop(accept_loop(listener, state.clone(), true).await);
        while state.refusing.load(Ordering::Acquire) {
            let notified = state.changed.notified();
            if !state.refusing.load(Ordering::Acquire) {
                break;
            }
            notified.await;
        }
    }
}
