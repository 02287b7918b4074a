//! The proxy as a process at the edge of its resources: out of file descriptors, it
//! keeps serving what it has, does not spin or flood its log, and accepts again once
//! descriptors are free.

mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use process::{Running, service_file, status_line, two_free_addresses, wait_for};

/// A backend answering every request on a connection with `200 ok`.
fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    address
}

#[test]
fn out_of_file_descriptors_the_proxy_pauses_accepting_then_recovers() {
    let backend = backend();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = service_file(dir.path(), "limits", backend);
    let log = dir.path().join("proxy.log");
    let (proxy, admin) = two_free_addresses();
    // About 17 descriptors are open once it serves; 24 leaves room for a few connections.
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 24 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_fulcrum-proxy"))
        .args(["--cluster", "east", "--locality", "r1/z1", "--workers", "1"])
        .arg("--config")
        .arg(&config)
        .args(["--listen", &proxy.to_string()])
        .args(["--admin", &admin.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("the proxy starts");
    let _running = Running(child);
    wait_for("the proxy serves", Duration::from_secs(10), || {
        status_line(proxy, "limits.example", "/").is_ok_and(|s| s.contains("200"))
    });

    // Connections beyond its descriptors wait in the listen queue.
    let exhausted = Instant::now();
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(proxy).expect("the kernel queues the connection"))
        .collect();
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("a failed accept is logged", Duration::from_secs(10), || {
        logged().contains("accept failed")
    });

    // Closing them frees descriptors: it accepts and serves again.
    drop(held);
    wait_for("the proxy serves again", Duration::from_secs(10), || {
        status_line(proxy, "limits.example", "/").is_ok_and(|s| s.contains("200"))
    });
    let text = logged();
    assert_eq!(
        text.matches("accept failed:").count(),
        1,
        "one warning while out of descriptors:\n{text}"
    );
    // One try per pause: an accept loop that spins fails thousands of times meanwhile.
    let metrics = {
        let mut stream = TcpStream::connect(admin).expect("the admin port");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        text
    };
    let failures: u64 = metrics
        .lines()
        .find(|l| l.starts_with("fulcrum_proxy_accept_failures_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the failed accepts counted");
    let pauses = exhausted.elapsed().as_millis() as u64 / 100;
    assert!(
        (1..=pauses + 2).contains(&failures),
        "{failures} failed accepts in {pauses} pauses"
    );
}
