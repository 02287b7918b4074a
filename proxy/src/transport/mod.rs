//! East-west transport: h2 over mTLS between the proxies of different clusters.
//!
//! The listener ([`serve_east_west`]) accepts only proxies of this mesh's trust domain
//! (their certificate chains to the mesh CA, is in date, and carries a
//! `spiffe://<td>/fulcrum/proxy/<cluster>` identity) and serves only this cluster's
//! endpoints: a request that crossed once is never forwarded again. The client side is
//! an [`H2Pool`] made with [`H2Pool::mesh`].

pub mod origin;
pub mod pool;
mod server;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use pool::{H2Pool, Peer, SendError, Trailers};
pub(crate) use server::serve_east_west_connection;
pub use tls::{MeshTls, TlsError};

use crate::app::accept_into;
use crate::workers::{Listener, Workers};

/// How long a peer has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts east-west connections and hands each to one of `workers`, until `stopped`.
pub async fn serve_east_west(
    listener: TcpListener,
    workers: Arc<Workers>,
    stopped: watch::Receiver<bool>,
) {
    accept_into(listener, Listener::EastWest, workers, stopped).await;
}
