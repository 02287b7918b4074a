//! Dialing other coordinator nodes: lazily connected gRPC channels, over mTLS unless the
//! node runs with `--insecure-dev`.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long a connection attempt may take before the peer counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes channels to coordinator addresses (`host:port`).
#[derive(Debug, Clone)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
}

/// An address that cannot be dialed.
#[derive(Debug, thiserror::Error)]
#[error("cannot dial {address:?}: {reason}")]
pub struct DialError {
    /// The address.
    pub address: String,
    /// Why.
    pub reason: String,
}

impl Dialer {
    /// Dials with mTLS (`Some`) or in plaintext (`None`, `--insecure-dev` only).
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Dialer {
            tls,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// A channel to `address`, connected on first use and reconnected as needed.
    pub fn channel(&self, address: &str) -> Result<Channel, DialError> {
        let fail = |reason: String| DialError {
            address: address.to_string(),
            reason,
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| fail(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(endpoint.connect_lazy())
    }
}
