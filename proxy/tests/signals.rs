//! The proxy process on SIGTERM: it drains (a request in progress is answered, and its
//! connection closed after it) and then exits; a second signal ends the drain at once.
//! On SIGUSR1 it reopens its access log; SIGHUP is taken and ignored.

mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use process::{Running, service_file, status_line, two_free_addresses, wait_for};

/// A backend answering `/held` only once the test sends on the returned sender (saying
/// on the returned receiver that such a request came), anything else at once.
fn holding_backend() -> (SocketAddr, mpsc::Sender<()>, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let (release, released) = mpsc::channel::<()>();
    let (came, arrived) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let Ok(n) = stream.read(&mut buf) else {
                continue;
            };
            let held = String::from_utf8_lossy(&buf[..n]).starts_with("GET /held ");
            if held {
                let _ = came.send(());
                if released.recv().is_err() {
                    return;
                }
            }
            let body = if held { "held" } else { "quick" };
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (address, release, arrived)
}

/// The proxy binary, routing `slow.example` to `backend`, draining for `drain`.
fn start_proxy(backend: SocketAddr, drain: &str) -> (Running, SocketAddr, SocketAddr) {
    start_proxy_with(backend, &["--drain-duration", drain])
}

/// The proxy binary, routing `slow.example` to `backend`, with `flags` too.
fn start_proxy_with(backend: SocketAddr, flags: &[&str]) -> (Running, SocketAddr, SocketAddr) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = service_file(dir.path(), "slow", backend);
    let (proxy, admin) = two_free_addresses();
    let child = Command::new(env!("CARGO_BIN_EXE_fulcrum-proxy"))
        .args(["--cluster", "east", "--locality", "r1/z1", "--workers", "1"])
        .arg("--config")
        .arg(&config)
        .args(["--listen", &proxy.to_string()])
        .args(["--admin", &admin.to_string()])
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the proxy starts");
    let running = Running(child);
    wait_for("the proxy is ready", Duration::from_secs(10), || {
        status_line(admin, "admin", "/ready").is_ok_and(|s| s.contains(" 200 "))
    });
    // Read by now; the directory can go.
    drop(dir);
    (running, proxy, admin)
}

/// Waits until the proxy's `/ready` at `admin` says it drains.
fn until_draining(admin: SocketAddr) {
    wait_for("/ready says it drains", Duration::from_secs(10), || {
        status_line(admin, "admin", "/ready").is_ok_and(|s| s.contains(" 503 "))
    });
}

/// Sends `kill -SIGNAL` to the proxy.
fn signal(proxy: &Running, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(proxy.0.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}: {status}");
}

/// Waits until the proxy has exited, and says how.
fn exits(proxy: &mut Running, within: Duration) -> ExitStatus {
    let mut exited = None;
    wait_for("the proxy exits", within, || {
        exited = proxy.0.try_wait().expect("the proxy's state");
        exited.is_some()
    });
    exited.expect("exited")
}

/// A request held by its backend, on a connection kept alive, in progress when the
/// proxy is told to stop: returns that connection.
fn held_request(proxy: SocketAddr, arrived: &mpsc::Receiver<()>) -> TcpStream {
    let mut client = TcpStream::connect(proxy).expect("connect");
    client
        .write_all(b"GET /held HTTP/1.1\r\nhost: slow.example\r\n\r\n")
        .expect("write");
    arrived
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reaches the backend");
    client
}

#[test]
fn on_sigterm_a_request_in_progress_is_answered_then_the_proxy_exits() {
    let (backend, release, arrived) = holding_backend();
    let (mut proxy, address, admin) = start_proxy(backend, "30s");
    let mut client = held_request(address, &arrived);

    signal(&proxy, "TERM");
    until_draining(admin);
    assert!(
        proxy.0.try_wait().expect("state").is_none(),
        "still running while a request is in progress"
    );
    release.send(()).expect("the backend waits");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = String::new();
    client
        .read_to_string(&mut answer)
        .expect("the answer, then the close");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("held"), "{answer}");
    // No connection left: it exits well before its 30 s are up.
    let status = exits(&mut proxy, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn a_second_signal_ends_the_drain_at_once() {
    let (backend, _release, arrived) = holding_backend();
    let (mut proxy, address, admin) = start_proxy(backend, "1h");
    let mut client = held_request(address, &arrived);

    signal(&proxy, "TERM");
    until_draining(admin);
    signal(&proxy, "INT");
    let status = exits(&mut proxy, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    // The request still held is cut off: the connection ends without an answer.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

/// SIGHUP (a closing terminal's) does not end the proxy: it serves on, and drains and
/// exits cleanly on the SIGTERM after it. (Left to its default, SIGHUP would end the
/// process at once, before the SIGTERM is taken.)
#[test]
fn sighup_is_taken_and_the_proxy_serves_on() {
    let (backend, _release, _arrived) = holding_backend();
    let (mut proxy, address, _) = start_proxy(backend, "5s");
    signal(&proxy, "HUP");
    let served = status_line(address, "slow.example", "/after-hup");
    assert!(
        served.is_ok_and(|s| s.contains(" 200 ")),
        "served after SIGHUP"
    );
    signal(&proxy, "TERM");
    let status = exits(&mut proxy, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

/// A rotation that moves the access log away, then SIGUSR1: the proxy writes on in a new
/// file at the log's path, the lines before it in the moved one.
#[test]
fn on_sigusr1_the_access_log_is_opened_again_by_its_path() {
    let (backend, _release, _arrived) = holding_backend();
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, moved) = (
        dir.path().join("access.log"),
        dir.path().join("access.log.1"),
    );
    let log_flag = log.to_str().expect("a UTF-8 path");
    let (running, proxy, _) = start_proxy_with(backend, &["--access-log", log_flag]);
    let lines = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let logged = |path: &std::path::Path, request: &str| {
        wait_for(
            &format!("{request} logged in {}", path.display()),
            Duration::from_secs(10),
            || {
                lines(path)
                    .iter()
                    .any(|l| l.contains(&format!("\"path\":\"{request}\"")))
            },
        );
    };
    wait_for("the proxy serves", Duration::from_secs(10), || {
        status_line(proxy, "slow.example", "/before").is_ok_and(|s| s.contains(" 200 "))
    });
    logged(&log, "/before");
    std::fs::rename(&log, &moved).expect("the rotation moves the log");
    signal(&running, "USR1");
    // The signal is taken at the writer's next turn: until then a line may still go to
    // the moved file. Each request is logged once, in one of the two.
    wait_for(
        "a line in a new file at the log's path",
        Duration::from_secs(10),
        || {
            let _ = status_line(proxy, "slow.example", "/after");
            lines(&log)
                .iter()
                .any(|l| l.contains("\"path\":\"/after\""))
        },
    );
    assert!(
        lines(&moved)
            .iter()
            .any(|l| l.contains("\"path\":\"/before\""))
    );
    assert!(
        lines(&log).iter().all(|l| !l.contains("/before")),
        "{:?}",
        lines(&log)
    );
}
