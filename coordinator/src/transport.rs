//! Dialing other coordinator nodes: lazily connected gRPC channels, over mTLS unless the
//! node runs with `--insecure-dev`.

use std::net::IpAddr;
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long a connection attempt may take before the peer counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes channels to coordinator addresses (`host:port`).
#[derive(Debug, Clone)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
    /// The local address connections leave from; the kernel's choice when `None`.
    from: Option<IpAddr>,
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
            from: None,
        }
    }

    /// Connections leave from `ip`, a node's own listen address, when it names one (not
    /// `0.0.0.0` or `::`): the other nodes, and any firewall between them, then see each
    /// node at one address, the one it is reached on, however the host routes. A
    /// loopback address is left from only to loopback peers (a node listening on one
    /// behind a forwarder still reaches peers elsewhere).
    pub fn leaving_from(mut self, ip: IpAddr) -> Self {
        self.from = Some(ip).filter(|ip| !ip.is_unspecified());
        self
    }

    /// The address a connection to `address` (`host:port`) leaves from, if not the
    /// kernel's choice.
    fn source_for(&self, address: &str) -> Option<IpAddr> {
        let from = self.from?;
        let to_loopback =
            (address.parse::<std::net::SocketAddr>()).is_ok_and(|a| a.ip().is_loopback());
        (!from.is_loopback() || to_loopback).then_some(from)
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
            .keep_alive_timeout(Duration::from_secs(5))
            .local_address(self.source_for(address));
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

#[cfg(test)]
mod tests {
    use fulcrum_proto::raft::v1::ProposeRequest;
    use fulcrum_proto::raft::v1::raft_client::RaftClient;

    use super::*;

    /// The address the first connection to a fresh listener came from, after `dialer`
    /// was asked to call it.
    async fn caller_of(dialer: Dialer) -> IpAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let channel = dialer.channel(&address).expect("a channel");
        // The call never gets an answer: only where its connection comes from counts.
        let call = tokio::spawn(async move {
            let _ = RaftClient::new(channel)
                .propose(ProposeRequest { command: vec![] })
                .await;
        });
        let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        call.abort();
        let (_, from) = accepted.expect("a connection within 5 s").expect("accept");
        from.ip()
    }

    #[tokio::test]
    async fn calls_leave_from_the_nodes_own_address_when_it_names_one() {
        let own: IpAddr = "127.0.0.7".parse().expect("ip");
        let dialer = Dialer::new(None).leaving_from(own);
        assert_eq!(caller_of(dialer).await, own);
        // A node listening on every address leaves the choice to the kernel.
        let any = Dialer::new(None).leaving_from("0.0.0.0".parse().expect("ip"));
        assert_eq!(any.from, None);
        assert_eq!(caller_of(any).await, IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn a_loopback_address_is_left_from_only_to_loopback_peers() {
        let looped = Dialer::new(None).leaving_from("127.0.0.7".parse().expect("ip"));
        let own: IpAddr = "127.0.0.7".parse().expect("ip");
        assert_eq!(looped.source_for("127.0.0.2:7001"), Some(own));
        assert_eq!(looped.source_for("10.0.0.2:7001"), None);
        assert_eq!(looped.source_for("node-2.example:7001"), None, "a name");
        let lan = Dialer::new(None).leaving_from("10.0.0.1".parse().expect("ip"));
        let own: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(lan.source_for("10.0.0.2:7001"), Some(own));
        assert_eq!(lan.source_for("node-2.example:7001"), Some(own));
    }
}
