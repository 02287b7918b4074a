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
//! One source address can also be swallowed alone, whatever the state
//! ([`Relay::swallow_from`]): the far side of a two-way partition, where the node cut off
//! still calls the others (each coordinator calls from its own listen address).
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

/// What the relay does, and to which callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    state: LinkState,
    /// What comes from this address is swallowed, whatever `state` says.
    swallowed_from: Option<IpAddr>,
}

/// The rule as it stands for one connection, by where it comes from.
#[derive(Debug, Clone)]
struct View {
    rule: watch::Receiver<Rule>,
    from: IpAddr,
}

impl View {
    /// What the relay does to this connection now.
    fn now(&self) -> LinkState {
        let rule = *self.rule.borrow();
        match rule.swallowed_from {
            Some(ip) if ip == self.from => LinkState::Blackhole,
            _ => rule.state,
        }
    }

    /// Waits for the rule to change; an error once the relay is gone.
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.rule.changed().await
    }
}

/// A relay on one link.
#[derive(Debug)]
pub struct Relay {
    /// Which link, for reports.
    pub name: String,
    address: SocketAddr,
    rule: watch::Sender<Rule>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free port of `ip` and relays to `target`.
    pub async fn start(name: &str, ip: IpAddr, target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let address = listener.local_addr()?;
        let (rule, watch_rule) = watch::channel(Rule {
            state: LinkState::Pass,
            swallowed_from: None,
        });
        let task = tokio::spawn(accept(listener, target, watch_rule));
        Ok(Relay {
            name: name.to_string(),
            address,
            rule,
            task,
        })
    }

    /// Where the link's near end connects.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Changes what the relay does, for open connections too.
    pub fn set(&self, state: LinkState) {
        self.rule.send_modify(|rule| rule.state = state);
        if state == LinkState::Reset {
            // Every connection task has seen the reset once it is current; the next
            // connection passes.
            let sender = self.rule.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                sender.send_if_modified(|rule| {
                    let was_reset = rule.state == LinkState::Reset;
                    if was_reset {
                        rule.state = LinkState::Pass;
                    }
                    was_reset
                });
            });
        }
    }

    /// Swallows what comes from `ip` (connections open and new), whatever the link's
    /// state, as a blackhole does; `None`: no source apart.
    pub fn swallow_from(&self, ip: Option<IpAddr>) {
        self.rule.send_modify(|rule| rule.swallowed_from = ip);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, rule: watch::Receiver<Rule>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((near, from)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let view = View {
            rule: rule.clone(),
            from: from.ip(),
        };
        connections.spawn(async move {
            let now = view.now();
            match now {
                LinkState::Cut | LinkState::Reset => {
                    if now == LinkState::Reset {
                        let _ = near.set_zero_linger();
                    }
                    drop(near);
                }
                _ => relay(near, target, view).await,
            }
        });
    }
}

async fn relay(near: TcpStream, target: SocketAddr, view: View) {
    let _ = near.set_nodelay(true);
    if view.now() == LinkState::Blackhole {
        // Hold the connection: the near end sees an open, silent peer.
        swallow(near, view).await;
        return;
    }
    let far = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await {
        Ok(Ok(far)) => far,
        _ => return,
    };
    let _ = far.set_nodelay(true);
    let (near_read, near_write) = near.into_split();
    let (far_read, far_write) = far.into_split();
    let up = tokio::spawn(pump(near_read, far_write, view.clone()));
    let down = tokio::spawn(pump(far_read, near_write, view));
    let _ = tokio::join!(up, down);
}

/// Reads and drops everything until the link passes again or is cut.
async fn swallow(mut near: TcpStream, mut view: View) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = near.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = view.changed() => {
                if changed.is_err() || view.now() != LinkState::Blackhole {
                    // Whatever comes next, this connection lost bytes: close it.
                    return;
                }
            }
        }
    }
}

/// One direction of a connection, under the link's state.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut view: View) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            changed = view.changed() => {
                if changed.is_err() {
                    break;
                }
                match view.now() {
                    LinkState::Cut => break,
                    LinkState::Reset => {
                        let _ = to.as_ref().set_zero_linger();
                        return;
                    }
                    _ => continue,
                }
            }
        };
        match view.now() {
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

    /// A connection to the relay from `source` (a loopback address of its own).
    async fn connect_from(source: &str, relay: &Relay) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        let source: IpAddr = source.parse().expect("ip");
        socket.bind((source, 0).into()).expect("bind the source");
        socket.connect(relay.address()).await.expect("connect")
    }

    #[tokio::test]
    async fn one_source_is_swallowed_apart_from_the_others() {
        let relay = Relay::start("test", "127.0.0.1".parse().expect("ip"), echo().await)
            .await
            .expect("relay");
        let mut cut_off = connect_from("127.0.0.3", &relay).await;
        let mut other = connect_from("127.0.0.4", &relay).await;
        assert!(
            round_trip(&mut cut_off, Duration::from_secs(2))
                .await
                .is_ok()
        );

        relay.swallow_from(Some("127.0.0.3".parse().expect("ip")));
        // Open and new connections from it alike.
        assert_eq!(
            round_trip(&mut cut_off, Duration::from_millis(300)).await,
            Err("silence".into())
        );
        let mut fresh = connect_from("127.0.0.3", &relay).await;
        assert_eq!(
            round_trip(&mut fresh, Duration::from_millis(300)).await,
            Err("silence".into())
        );
        // The others pass.
        assert_eq!(
            round_trip(&mut other, Duration::from_secs(2)).await,
            Ok(b"ping".to_vec())
        );

        relay.swallow_from(None);
        let mut again = connect_from("127.0.0.3", &relay).await;
        assert_eq!(
            round_trip(&mut again, Duration::from_secs(2)).await,
            Ok(b"ping".to_vec())
        );
    }
}
