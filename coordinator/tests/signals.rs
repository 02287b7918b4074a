//! The coordinator process and its signals: SIGHUP (a closing terminal's) is taken and
//! the node serves on; SIGTERM stops it cleanly.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the node if a test ends without stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// Whether the metrics listener at `address` answers a scrape.
fn scraped(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = b"GET /metrics HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n";
    let mut answer = String::new();
    stream.write_all(request).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200 ")
}

fn signal(node: &Running, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(node.0.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}: {status}");
}

/// Waits up to `within` for `check`.
fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_is_taken_and_sigterm_stops_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_certs(dir.path(), 1);
    let (listen, metrics) = (free_address(), free_address());
    let child = Command::new(env!("CARGO_BIN_EXE_fulcrum-coordinator"))
        .args(["--node-id", "1", "--init"])
        .args(["--listen", &listen.to_string()])
        .args(["--metrics", &metrics.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("node-1"))
        .arg("--certs")
        .arg(support::certs_dir(dir.path()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the node starts");
    let mut node = Running(child);
    wait_for("the node serves", Duration::from_secs(20), || {
        scraped(metrics)
    });

    signal(&node, "HUP");
    assert!(scraped(metrics), "the node serves on after SIGHUP");
    // Left to its default, SIGHUP would have ended the node before the SIGTERM is taken.
    signal(&node, "TERM");
    let mut exited = None;
    wait_for("the node stops", Duration::from_secs(20), || {
        exited = node.0.try_wait().expect("the node's state");
        exited.is_some()
    });
    let status = exited.expect("exited");
    assert!(status.success(), "{status}");
}
