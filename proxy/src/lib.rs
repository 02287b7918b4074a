//! `fulcrum-proxy`: the per-cluster data plane.
//!
//! What is here today:
//!
//! - [`routing`]: VirtualService HTTP semantics as a pure decision, from a request's
//!   method, scheme, authority, path, headers and port to what to do with it (forward to a
//!   weighted destination with rewrites, header changes, timeout, retries, faults and
//!   mirrors; redirect; answer directly; or no route);
//! - [`balance`]: the choice of a destination locality from a pushed weight row, smooth
//!   (a 1% weight gets every hundredth request, not bursts), and of an endpoint inside it
//!   by the DestinationRule's load balancer.
//!
//! Neither does I/O. Around them: [`discovery`] (this cluster's endpoints, from
//! ServiceEntry configuration behind a trait), [`outbound`] (forwarding to this cluster's
//! endpoints or another cluster's, with timeouts, retries, faults, header changes and
//! mirrors; [`upload`] and [`tee`] for request bodies sent as they arrive), [`body`] (answers held whole when small and complete, else passed on as they
//! arrive), [`downstream`] (applications' connections: HTTP/1.1 served by the proxy's own
//! loop), [`h2_server`] (h2c and the east-west listener's HTTP/2), [`transport`] (h2
//! over mTLS between clusters' proxies, SPIFFE identities checked, certificates
//! reloaded), [`workers`] (the threads that serve the listeners'
//! connections, each with its own runtime and upstream pools) and [`app`] (the
//! listeners). [`control`] is the coordinator session: snapshots checked, ACKed or
//! NACKed, kept as the last-known-good file; and the reports of what this proxy saw.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod app;
pub mod balance;
pub mod body;
pub mod control;
pub mod discovery;
pub mod dns;
pub mod downstream;
pub mod drain;
pub mod framing;
pub mod grpc;
pub mod h2_server;
pub mod health;
pub mod metrics;
pub mod outbound;
pub mod routing;
pub mod tee;
pub mod transport;
pub mod tunnel;
pub mod upload;
pub mod upstream;
pub mod wire;
pub mod workers;

/// A map the request path reads on every request (keyed by service names and endpoint
/// addresses): seeded foldhash instead of SipHash, which took a tenth of a request's
/// instructions.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// `host` in lower case, the case the proxy's tables keep hosts in; copied only when it
/// has an upper-case letter (requests mostly name hosts in lower case already).
pub fn lower_case(host: &str) -> std::borrow::Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// A set read on every request; see [`FastMap`].
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// Boxes the future `make` makes, made in its box. `Box::pin(future)` makes the future
/// first and then copies it into the box, all of it: a future is as large as the largest
/// state it may reach (kilobytes for a request's work), though at first it holds only
/// its arguments. Allocated first, the box gets only those written: 312 bytes where the
/// HTTP/1 loop's request work copied 4,520 (docs/benchmarks.md).
#[inline(always)]
pub(crate) fn boxed<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// What the crate's own tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;

    /// A loopback address where connections are refused, held so for as long as the
    /// socket returned lives: bound, not listening. (A port bound and let go could be
    /// taken by another test meanwhile, and answer.)
    pub fn refusing_address() -> (tokio::net::TcpSocket, SocketAddr) {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let address = socket.local_addr().expect("address");
        (socket, address)
    }
}
