//! An endpoint that takes uploads as they arrive, and clients that send them through a
//! proxy in two steps, so that a test can tell an upload forwarded as it arrives from one
//! held back until it has all come.
//!
//! An upload's bytes follow a pattern ([`pattern`]) and the endpoint answers with their
//! count and a position-weighted sum ([`Sum`]): a piece lost, repeated or out of order
//! changes the sum.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::websocket::read_until;

/// What a client sends of an upload before it waits for the endpoint to have some.
pub const FIRST_PART: usize = 64 * 1024;

/// The upload's byte at `at`.
pub fn pattern(at: u64) -> u8 {
    (at.wrapping_mul(7) % 251) as u8
}

/// `size` bytes of the pattern, from `from`.
pub fn upload_bytes(from: u64, size: usize) -> Vec<u8> {
    (from..from + size as u64).map(pattern).collect()
}

/// A count and a position-weighted sum of bytes, taken piece by piece.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sum {
    pub bytes: u64,
    pub sum: u64,
}

impl Sum {
    pub fn add(&mut self, piece: &[u8]) {
        for &b in piece {
            self.bytes += 1;
            self.sum = self
                .sum
                .wrapping_add(u64::from(b).wrapping_mul(self.bytes % 65_521));
        }
    }

    /// The sum of `size` bytes of the pattern.
    pub fn of_pattern(size: usize) -> Sum {
        let mut sum = Sum::default();
        sum.add(&upload_bytes(0, size));
        sum
    }

    /// As the endpoint writes it in its answer.
    pub fn text(&self) -> String {
        format!("{} {} end", self.bytes, self.sum)
    }
}

/// An HTTP/1 endpoint that reads each request's body as it arrives. It says on the
/// receiver it returns when a body's first bytes have come, then answers, once the body
/// has ended, with `x-seen-framing` (the Content-Length it was sent with, or `chunked`)
/// and a body of [`Sum::text`]; to a request for `/hang`, only after a minute.
pub async fn upload_endpoint() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let (address, seen, _) = summing_upload_endpoint().await;
    (address, seen)
}

/// [`upload_endpoint`], also saying on a second receiver what each body came to as it
/// ends: its sum, or the sum of what came before it broke off as an error.
pub async fn summing_upload_endpoint() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<Result<Sum, Sum>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (first_bytes, seen) = mpsc::unbounded_channel();
    let (ended, sums) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (first_bytes, ended) = (first_bytes.clone(), ended.clone());
            tokio::spawn(async move {
                let service = service_fn(move |r: Request<Incoming>| {
                    let (first_bytes, ended) = (first_bytes.clone(), ended.clone());
                    async move {
                        let framing = match r.headers().get("content-length") {
                            Some(length) => length.to_str().unwrap_or("?").to_string(),
                            None if r.headers().contains_key("transfer-encoding") => {
                                "chunked".into()
                            }
                            None => "none".into(),
                        };
                        let hang = r.uri().path() == "/hang";
                        let mut body = r.into_body();
                        let mut sum = Sum::default();
                        let mut whole = true;
                        while let Some(frame) = body.frame().await {
                            let Ok(data) = frame.map(|f| f.into_data()) else {
                                whole = false;
                                break;
                            };
                            let Ok(data) = data else { continue };
                            if sum.bytes == 0 && !data.is_empty() {
                                let _ = first_bytes.send(());
                            }
                            sum.add(&data);
                        }
                        let _ = ended.send(if whole { Ok(sum) } else { Err(sum) });
                        if hang {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        let mut answer = Response::new(Full::new(Bytes::from(sum.text())));
                        answer
                            .headers_mut()
                            .insert("x-seen-framing", framing.parse().expect("a field value"));
                        Ok::<_, Infallible>(answer)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, seen, sums)
}

/// Waits until the endpoint says it has a body's first bytes.
pub async fn first_bytes_arrive(seen: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("the endpoint has the first bytes while the client still holds the rest")
        .expect("the endpoint runs");
}

/// Sends an upload of `size` pattern bytes to `host` through the proxy's HTTP/1
/// listener at `proxy`, framed by its Content-Length or `chunked`: the head and
/// [`FIRST_PART`] bytes, then, once the endpoint has some of them, the rest. Returns the
/// answer as far as the end of its body.
pub async fn upload_over_http1(
    proxy: SocketAddr,
    host: &str,
    size: usize,
    chunked: bool,
    seen: &mut mpsc::UnboundedReceiver<()>,
) -> String {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let framing = match chunked {
        true => "transfer-encoding: chunked".to_string(),
        false => format!("content-length: {size}"),
    };
    let head = format!("POST /upload HTTP/1.1\r\nhost: {host}\r\n{framing}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let send = |from: usize, to: usize| {
        let data = upload_bytes(from as u64, to - from);
        match chunked {
            true => [
                format!("{:x}\r\n", data.len()).into_bytes(),
                data,
                b"\r\n".to_vec(),
            ]
            .concat(),
            false => data,
        }
    };
    stream
        .write_all(&send(0, FIRST_PART))
        .await
        .expect("the first part");
    first_bytes_arrive(seen).await;
    // The rest in pieces of 1 MiB, as a client streaming a file sends it.
    let mut from = FIRST_PART;
    while from < size {
        let to = (from + 1024 * 1024).min(size);
        stream.write_all(&send(from, to)).await.expect("a piece");
        from = to;
    }
    if chunked {
        stream
            .write_all(b"0\r\n\r\n")
            .await
            .expect("the last chunk");
    }
    read_until(&mut stream, " end").await
}

/// [`upload_over_http1`] over h2c: the body declared by a Content-Length when `declared`,
/// else without one. Returns the answer's status, its `x-seen-framing` and its body.
pub async fn upload_over_h2c(
    proxy: SocketAddr,
    host: &str,
    size: usize,
    declared: bool,
    seen: &mut mpsc::UnboundedReceiver<()>,
) -> (u16, String, String) {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let mut request = Request::post(format!("http://{host}/upload"));
    if declared {
        request = request.header("content-length", size);
    }
    let request = request.body(()).expect("request");
    let (answer, mut body) = client.send_request(request, false).expect("sent");
    let mut send = |from: usize, to: usize| {
        let data = Bytes::from(upload_bytes(from as u64, to - from));
        body.reserve_capacity(data.len());
        body.send_data(data, to == size).expect("data");
    };
    send(0, FIRST_PART);
    first_bytes_arrive(seen).await;
    let mut from = FIRST_PART;
    while from < size {
        let to = (from + 1024 * 1024).min(size);
        send(from, to);
        from = to;
    }
    let answer = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("answered in time")
        .expect("an answer");
    let status = answer.status().as_u16();
    let framing = answer
        .headers()
        .get("x-seen-framing")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let mut body = answer.into_body();
    let mut text = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.expect("the answer's body");
        let _ = body.flow_control().release_capacity(data.len());
        text.extend_from_slice(&data);
    }
    (status, framing, String::from_utf8_lossy(&text).into_owned())
}

/// Sends an upload of `size` bytes to `host` through the proxy at `proxy` four ways, each
/// in two steps: over HTTP/1.1 with its length and chunked ([`upload_over_http1`]), over
/// h2c with a Content-Length and without one ([`upload_over_h2c`]). Checks that each
/// reached the endpoint whole, with its length when the client declared one, else
/// chunked. Returns the HTTP/1.1 answers, for more checks.
pub async fn check_uploads_through(
    proxy: SocketAddr,
    host: &str,
    size: usize,
    seen: &mut mpsc::UnboundedReceiver<()>,
) -> Vec<String> {
    let expected = Sum::of_pattern(size).text();
    let framing = |declared: bool| match declared {
        true => size.to_string(),
        false => "chunked".to_string(),
    };
    let mut answers = Vec::new();
    for declared in [true, false] {
        let text = upload_over_http1(proxy, host, size, !declared, seen).await;
        assert!(
            text.starts_with("HTTP/1.1 200 "),
            "declared {declared}: {text}"
        );
        let field = format!("x-seen-framing: {}\r\n", framing(declared));
        assert!(text.contains(&field), "declared {declared}: {text}");
        assert!(text.ends_with(&expected), "declared {declared}: {text}");
        answers.push(text);
    }
    for declared in [true, false] {
        let (status, seen_framing, body) = upload_over_h2c(proxy, host, size, declared, seen).await;
        assert_eq!(status, 200, "h2c, declared {declared}");
        assert_eq!(seen_framing, framing(declared), "h2c, declared {declared}");
        assert_eq!(body, expected, "h2c, declared {declared}");
    }
    answers
}
