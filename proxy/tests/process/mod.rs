//! The proxy as a process, for tests that start the binary: its addresses, a guard that
//! kills it when the test ends, and a wait for a condition.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Two distinct free loopback addresses for the proxy to bind: the first is held while
/// the second is chosen, so they are not the same port.
pub fn two_free_addresses() -> (SocketAddr, SocketAddr) {
    let first = TcpListener::bind("127.0.0.1:0").expect("bind");
    let second = TcpListener::bind("127.0.0.1:0").expect("bind");
    (
        first.local_addr().expect("address"),
        second.local_addr().expect("address"),
    )
}

/// Kills the proxy when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checks `done` every 20 ms until it holds; fails the test after `within`.
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a configuration file in `dir` for the service `name` (host `NAME.example`,
/// port 80, HTTP) whose one endpoint is `backend`, in locality r1/z1; returns its path.
pub fn service_file(dir: &Path, name: &str, backend: SocketAddr) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: r1/z1}}
"#,
            backend.port()
        ),
    )
    .expect("config");
    path
}

/// The status line of one request to `address` on a new connection.
pub fn status_line(address: SocketAddr, host: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer.lines().next().unwrap_or("").to_string())
}
