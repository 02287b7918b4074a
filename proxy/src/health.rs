//! Active health checks of this cluster's endpoints (optional, `--health-check-interval`).
//!
//! Every interval each endpoint is probed: a TCP connect, or with a path an HTTP/1.1
//! `GET` that must answer 2xx, within the timeout. An endpoint is marked down after
//! `unhealthy_threshold` failed probes in a row and up again after `healthy_threshold`
//! good ones (Envoy's thresholds). A down endpoint gets no requests and counts as not
//! ready in the reports, so the coordinators see a dead backend even when no traffic
//! goes to it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::{FastMap, FastSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

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
}

impl Health {
    /// Whether `endpoint` may get requests (an endpoint never probed may).
    pub fn is_up(&self, endpoint: SocketAddr) -> bool {
        self.down.read().map_or(true, |d| !d.contains(&endpoint))
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
    }
}

/// One probe of `endpoint`.
pub async fn probe(endpoint: SocketAddr, settings: &HealthCheckSettings) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(endpoint)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let Some(path) = &settings.path else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\nUser-Agent: fulcrum-health-check\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
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

/// Probes the endpoints `endpoints` lists, every interval, until `stop`.
pub async fn run(
    health: Arc<Health>,
    endpoints: impl Fn() -> Vec<SocketAddr> + Send + Sync + 'static,
    settings: HealthCheckSettings,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let current: HashSet<SocketAddr> = endpoints().into_iter().collect();
        health.retain(&current);
        let mut probes = tokio::task::JoinSet::new();
        for endpoint in current {
            let settings = settings.clone();
            probes.spawn(async move { (endpoint, probe(endpoint, &settings).await) });
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
        assert_eq!(health.record(e, true, &settings), Some(true));
        assert!(health.is_up(e));
    }

    #[tokio::test]
    async fn a_closed_port_fails_and_a_listening_one_passes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open = listener.local_addr().expect("address");
        let settings = HealthCheckSettings::tcp(Duration::from_millis(500));
        assert_eq!(probe(open, &settings).await, Ok(()));
        drop(listener);
        assert!(probe(open, &settings).await.is_err());
    }
}
