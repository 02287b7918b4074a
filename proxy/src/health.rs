//! Active health checks of this cluster's endpoints (optional, `--health-check-interval`).
//!
//! Every interval each endpoint is probed: a TCP connect, or with a path an HTTP `GET`
//! that must answer 2xx (HTTP/1.1, or h2 for an endpoint that speaks h2), within the
//! timeout; in TLS to an endpoint its service's rule has the proxy speak TLS to (the
//! handshake is then part of a TCP probe, as the cluster's transport is in Envoy's). An endpoint is marked down after
//! `unhealthy_threshold` failed probes in a row and up again after `healthy_threshold`
//! good ones (Envoy's thresholds). A down endpoint gets no requests and counts as not
//! ready in the reports, so the coordinators see a dead backend even when no traffic
//! goes to it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::upstream::{POOL_DEFAULTS, PoolSettings, UpstreamError, connect_endpoint};
use crate::{FastMap, FastSet};

/// How endpoints are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSettings {
    /// Time between probes of one endpoint.
    pub interval: Duration,
    /// How long a probe may take.
    pub timeout: Duration,
    /// With a path: an HTTP GET that must answer 2xx; without: a TCP connect.
    pub path: Option<String>,
    /// Failed probes in a row that mark an endpoint down.
    pub unhealthy_threshold: u32,
    /// Good probes in a row that mark it up again.
    pub healthy_threshold: u32,
}

impl HealthCheckSettings {
    /// TCP probes every `interval`, down after 2 failures, up after 2 successes.
    pub fn tcp(interval: Duration) -> HealthCheckSettings {
        HealthCheckSettings {
            interval,
            timeout: interval.min(Duration::from_secs(1)),
            path: None,
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }
}

/// An endpoint to probe.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where it listens.
    pub address: SocketAddr,
    /// Whether it speaks h2 (prior knowledge): an HTTP probe is made so.
    pub h2: bool,
    /// Its service's connection settings, when it has any: in TLS when they originate
    /// it, to this server name.
    pub settings: Option<Arc<PoolSettings>>,
    pub server_name: Option<ServerName<'static>>,
}

impl Target {
    /// The endpoint at `address`, spoken to in plaintext, in h2 when `h2`.
    pub fn plain(address: SocketAddr, h2: bool) -> Target {
        Target {
            address,
            h2,
            settings: None,
            server_name: None,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    failures: u32,
    successes: u32,
}

/// Which endpoints the probes found down.
#[derive(Debug, Default)]
pub struct Health {
    down: RwLock<FastSet<SocketAddr>>,
    streaks: RwLock<FastMap<SocketAddr, Streak>>,
    /// When each endpoint found down last came up again.
    recovered: RwLock<FastMap<SocketAddr, Instant>>,
}

impl Health {
    /// Whether `endpoint` may get requests (an endpoint never probed may).
    pub fn is_up(&self, endpoint: SocketAddr) -> bool {
        self.down.read().map_or(true, |d| !d.contains(&endpoint))
    }

    /// When `endpoint`, once found down, last came up again: a warmup starts again then,
    /// as Envoy's slow start does for a host that passes its health checks after failing
    /// them.
    pub fn recovered_at(&self, endpoint: SocketAddr) -> Option<Instant> {
        self.recovered.read().ok()?.get(&endpoint).copied()
    }

    /// Records a probe of `endpoint`; returns the new state when it changed.
    pub fn record(
        &self,
        endpoint: SocketAddr,
        ok: bool,
        settings: &HealthCheckSettings,
    ) -> Option<bool> {
        let mut streaks = self.streaks.write().ok()?;
        let streak = streaks.entry(endpoint).or_default();
        if ok {
            streak.successes += 1;
            streak.failures = 0;
        } else {
            streak.failures += 1;
            streak.successes = 0;
        }
        let mut down = self.down.write().ok()?;
        let is_down = down.contains(&endpoint);
        if !is_down && streak.failures >= settings.unhealthy_threshold.max(1) {
            down.insert(endpoint);
            return Some(false);
        }
        if is_down && streak.successes >= settings.healthy_threshold.max(1) {
            down.remove(&endpoint);
            if let Ok(mut recovered) = self.recovered.write() {
                recovered.insert(endpoint, Instant::now());
            }
            return Some(true);
        }
        None
    }

    /// Forgets endpoints no longer configured.
    pub fn retain(&self, endpoints: &HashSet<SocketAddr>) {
        if let Ok(mut d) = self.down.write() {
            d.retain(|e| endpoints.contains(e));
        }
        if let Ok(mut s) = self.streaks.write() {
            s.retain(|e, _| endpoints.contains(e));
        }
        if let Ok(mut r) = self.recovered.write() {
            r.retain(|e, _| endpoints.contains(e));
        }
    }
}

/// One probe of `target`.
pub async fn probe(target: &Target, settings: &HealthCheckSettings) -> Result<(), String> {
    let endpoint = target.address;
    let attempt = async {
        let pool = target.settings.as_deref().unwrap_or(&POOL_DEFAULTS);
        let name = target.server_name.clone();
        let mut stream = connect_endpoint(endpoint, pool, name, target.h2, settings.timeout)
            .await
            .map_err(|e| {
                let (UpstreamError::Connect(why) | UpstreamError::Reset(why)) = e;
                format!("connect: {why}")
            })?;
        let Some(path) = &settings.path else {
            return Ok(());
        };
        if target.h2 {
            return probe_h2(stream, endpoint, path).await;
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\nUser-Agent: fulcrum-health-check\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        // What TLS holds goes out now (plaintext holds nothing).
        stream.flush().await.map_err(|e| format!("write: {e}"))?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("read: {e}"))?;
        // "HTTP/1.1 200"
        match &head[9..12] {
            [b'2', _, _] => Ok(()),
            code => Err(format!("answered {}", String::from_utf8_lossy(code))),
        }
    };
    tokio::time::timeout(settings.timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}ms",
                settings.timeout.as_millis()
            ))
        })
}

/// The `GET` of a probe in h2, on `stream` to `endpoint`.
async fn probe_h2<S>(stream: S, endpoint: SocketAddr, path: &str) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |what: &str, e: h2::Error| format!("{what}: {e}");
    let (client, connection) = h2::client::handshake(stream)
        .await
        .map_err(|e| failed("h2 handshake", e))?;
    // Ends once the probe's handles are dropped (or the endpoint closes).
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{endpoint}{path}"))
        .header(http::header::USER_AGENT, "fulcrum-health-check")
        .body(())
        .map_err(|e| format!("request: {e}"))?;
    let mut client = client.ready().await.map_err(|e| failed("h2", e))?;
    let (answer, _) = client
        .send_request(request, true)
        .map_err(|e| failed("send", e))?;
    let status = answer.await.map_err(|e| failed("answer", e))?.status();
    match status.is_success() {
        true => Ok(()),
        false => Err(format!("answered {}", status.as_u16())),
    }
}

/// Probes the endpoints `endpoints` lists, every interval, until `stop`.
pub async fn run(
    health: Arc<Health>,
    endpoints: impl Fn() -> Vec<Target> + Send + Sync + 'static,
    settings: HealthCheckSettings,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let targets = endpoints();
        health.retain(&targets.iter().map(|t| t.address).collect());
        let mut probes = tokio::task::JoinSet::new();
        for target in targets {
            let settings = settings.clone();
            probes.spawn(async move { (target.address, probe(&target, &settings).await) });
        }
        for (endpoint, result) in probes.join_all().await {
            match health.record(endpoint, result.is_ok(), &settings) {
                Some(false) => tracing::warn!(
                    %endpoint,
                    "health check failed {} times in a row, endpoint down: {}",
                    settings.unhealthy_threshold,
                    result.err().unwrap_or_default()
                ),
                Some(true) => tracing::info!(%endpoint, "health check passing, endpoint up"),
                None => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_mark_an_endpoint_down_and_up_again() {
        let health = Health::default();
        let settings = HealthCheckSettings::tcp(Duration::from_secs(1));
        let e: SocketAddr = "127.0.0.1:9".parse().expect("address");
        assert!(health.is_up(e));
        assert_eq!(health.record(e, false, &settings), None);
        assert_eq!(health.record(e, false, &settings), Some(false));
        assert!(!health.is_up(e));
        assert_eq!(health.record(e, true, &settings), None);
        assert_eq!(
            health.record(e, false, &settings),
            None,
            "the streak restarts"
        );
        assert_eq!(health.record(e, true, &settings), None);
        assert_eq!(health.recovered_at(e), None, "never down and up again yet");
        let before = Instant::now();
        assert_eq!(health.record(e, true, &settings), Some(true));
        assert!(health.is_up(e));
        assert!(health.recovered_at(e).is_some_and(|at| at >= before));
    }

    #[tokio::test]
    async fn a_closed_port_fails_and_a_listening_one_passes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open = listener.local_addr().expect("address");
        let settings = HealthCheckSettings::tcp(Duration::from_millis(500));
        let open = Target::plain(open, false);
        assert_eq!(probe(&open, &settings).await, Ok(()));
        let (_held, closed) = crate::testing::refusing_address();
        let closed = Target::plain(closed, false);
        assert!(probe(&closed, &settings).await.is_err());
    }

    #[tokio::test]
    async fn an_h2_endpoints_http_probe_is_made_in_h2c() {
        // Answers 200 on /healthz and 503 elsewhere; h2 only, as a gRPC server.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(stream).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        let mut answer = http::Response::new(());
                        if request.uri().path() != "/healthz" {
                            *answer.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let _ = respond.send_response(answer, true);
                    }
                });
            }
        });
        let at = |path: &str| HealthCheckSettings {
            path: Some(path.into()),
            ..HealthCheckSettings::tcp(Duration::from_secs(1))
        };
        let h2 = Target::plain(address, true);
        assert_eq!(probe(&h2, &at("/healthz")).await, Ok(()));
        assert_eq!(probe(&h2, &at("/other")).await, Err("answered 503".into()));
        // The same endpoint probed in HTTP/1.1 does not answer as HTTP/1.1.
        let http1 = Target::plain(address, false);
        assert!(probe(&http1, &at("/healthz")).await.is_err());
    }
}
