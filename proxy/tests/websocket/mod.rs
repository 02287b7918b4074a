//! A WebSocket endpoint for the proxy's tests, and reading a raw connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The key the tests' upgrade requests send (RFC 6455's example).
pub const UPGRADE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket upgrade request for `path` of `host`, as a browser sends one.
pub fn upgrade_request(host: &str, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive, Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: {UPGRADE_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads until `text` has come, and returns all that came.
pub async fn read_until(stream: &mut TcpStream, text: &str) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&all).contains(text) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {text:?}: {}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// An endpoint that takes a WebSocket upgrade (answering 101, then echoing what comes)
/// when the request asks for one as RFC 6455 says, and answers 400 otherwise. Sends each
/// head it read on `heads`.
pub async fn websocket_endpoint(heads: tokio::sync::mpsc::UnboundedSender<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let head = read_until(&mut stream, "\r\n\r\n").await;
                let lower = head.to_ascii_lowercase();
                let _ = heads.send(head);
                let asks = lower.contains("\r\nupgrade: websocket\r\n")
                    && lower.contains("\r\nconnection: upgrade\r\n")
                    && lower.contains("\r\nsec-websocket-key: ");
                if !asks {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                          connection: upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    )
                    .await;
                let (mut from, mut to) = stream.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    address
}
