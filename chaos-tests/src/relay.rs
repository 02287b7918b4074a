//! The fault relay: a TCP relay placed on one link of the mesh (a coordinator's inbound
//! Raft and API traffic, a proxy's session with one coordinator, the way into a cluster's
//! east-west gateway). It passes bytes through until told otherwise:
//!
//! - `Cut`: connections are closed (FIN) and new ones closed as soon as accepted;
//! - `Blackhole`: connections stay open and everything sent is swallowed, nothing comes
//!   back (what a partition or a silently dropping firewall looks like);
//! - `Delay(d)`: each chunk is held `d` before it is passed on, in order;
//! - `Reset`: connections are reset (RST), then it passes again.
//!
//! It works on TCP, below TLS: the mTLS between components is untouched.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does to its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkState {
    /// Passes everything.
    Pass,
    /// Closes every connection and refuses new ones.
    Cut,
    /// Swallows everything, answers nothing.
    Blackhole,
    /// Holds every chunk this long.
    Delay(Duration),
    /// Resets every connection, then passes.
    Reset,
}

/// A relay on one link.
#[derive(Debug)]
pub struct Relay {
    /// Which link, for reports.
    pub name: String,
    address: SocketAddr,
    state: watch::Sender<LinkState>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free port of `ip` and relays to `target`.
    pub async fn start(name: &str, ip: IpAddr, target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let address = listener.local_addr()?;
        let (state, watch_state) = watch::channel(LinkState::Pass);
        let task = tokio::spawn(accept(listener, target, watch_state));
        Ok(Relay {
            name: name.to_string(),
            address,
            state,
            task,
        })
    }

    /// Where the link's near end connects.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Changes what the relay does, for open connections too.
    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
        if state == LinkState::Reset {
            // Every connection task has seen the reset once it is current; the next
            // connection passes.
            let sender = self.state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                sender.send_if_modified(|s| {
                    let was_reset = *s == LinkState::Reset;
                    if was_reset {
                        *s = LinkState::Pass;
                    }
                    was_reset
                });
            });
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, state: watch::Receiver<LinkState>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((near, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let state = state.clone();
        connections.spawn(async move {
            let now = *state.borrow();
            match now {
                LinkState::Cut | LinkState::Reset => {
                    if now == LinkState::Reset {
                        let _ = near.set_zero_linger();
                    }
                    drop(near);
                }
                _ => relay(near, target, state).await,
            }
        });
    }
}

async fn relay(near: TcpStream, target: SocketAddr, state: watch::Receiver<LinkState>) {
    let _ = near.set_nodelay(true);
    if *state.borrow() == LinkState::Blackhole {
        // Hold the connection: the near end sees an open, silent peer.
        swallow(near, state.clone()).await;
        return;
    }
    let far = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await {
        Ok(Ok(far)) => far,
        _ => return,
    };
    let _ = far.set_nodelay(true);
    let (near_read, near_write) = near.into_split();
    let (far_read, far_write) = far.into_split();
    let up = tokio::spawn(pump(near_read, far_write, state.clone()));
    let down = tokio::spawn(pump(far_read, near_write, state));
    let _ = tokio::join!(up, down);
}

/// Reads and drops everything until the link passes again or is cut.
async fn swallow(mut near: TcpStream, mut state: watch::Receiver<LinkState>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = near.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() != LinkState::Blackhole {
                    // Whatever comes next, this connection lost bytes: close it.
                    return;
                }
            }
        }
    }
}

/// One direction of a connection, under the link's state.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                match *state.borrow() {
                    LinkState::Cut => break,
                    LinkState::Reset => {
                        let _ = to.as_ref().set_zero_linger();
                        return;
                    }
                    _ => continue,
                }
            }
        };
        let now = *state.borrow();
        match now {
            LinkState::Pass => {}
            LinkState::Delay(d) => tokio::time::sleep(d).await,
            LinkState::Blackhole => continue,
            LinkState::Cut => break,
            LinkState::Reset => {
                let _ = to.as_ref().set_zero_linger();
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
        s.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Ok(buf.to_vec()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("silence".into()),
        }
    }

    #[tokio::test]
    async fn the_relay_passes_delays_swallows_and_cuts() {
        let relay = Relay::start("test", "127.0.0.1".parse().expect("ip"), echo().await)
            .await
            .expect("relay");
        let mut s = TcpStream::connect(relay.address()).await.expect("connect");
        assert_eq!(
            round_trip(&mut s, Duration::from_secs(2)).await,
            Ok(b"ping".to_vec())
        );

        relay.set(LinkState::Delay(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert_eq!(
            round_trip(&mut s, Duration::from_secs(2)).await,
            Ok(b"ping".to_vec())
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "both ways delayed"
        );

        relay.set(LinkState::Blackhole);
        assert_eq!(
            round_trip(&mut s, Duration::from_millis(300)).await,
            Err("silence".into())
        );
        let mut fresh = TcpStream::connect(relay.address()).await.expect("accepted");
        assert_eq!(
            round_trip(&mut fresh, Duration::from_millis(300)).await,
            Err("silence".into())
        );

        relay.set(LinkState::Cut);
        let mut cut = TcpStream::connect(relay.address()).await.expect("accepted");
        assert!(round_trip(&mut cut, Duration::from_secs(2)).await.is_err());

        relay.set(LinkState::Pass);
        let mut again = TcpStream::connect(relay.address()).await.expect("connect");
        assert_eq!(
            round_trip(&mut again, Duration::from_secs(2)).await,
            Ok(b"ping".to_vec())
        );
    }
}
