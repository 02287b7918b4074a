//! A guard on the admin listener's connections (served by hyper) against ambiguous
//! HTTP/1 framing. The outbound listener's own HTTP/1 server ([`crate::downstream`])
//! refuses such requests itself, every one of them.
//!
//! hyper reads a request that has both `Content-Length` and `Transfer-Encoding` by
//! Transfer-Encoding alone and closes the connection after it (RFC 9112 §6.1), which is
//! safe, but drops `Content-Length` before the request is seen, so the proxy cannot tell.
//! Such a request is a classic smuggling probe, and Fulcrum refuses it with 400 as
//! Envoy does: [`HeadGuard`] reads the first request head of a connection before hyper
//! does, notes the conflict, and the listener answers 400 and closes. Later requests on
//! a keep-alive connection are left to hyper's rule above (they are not scanned: finding
//! their heads means parsing every body).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The connection preface of HTTP/2 (h2c with prior knowledge): not HTTP/1, not scanned.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

enum State {
    /// Collecting the first head.
    Scanning(Vec<u8>),
    /// Handing over what was collected, from the offset.
    Draining(Vec<u8>, usize),
    /// Plain pass-through.
    Passing,
}

/// Wraps a connection; [`HeadGuard::conflict`] is set once the first request head is
/// read, if it carries both framings.
pub struct HeadGuard<S> {
    inner: S,
    state: State,
    limit: usize,
    conflict: Arc<AtomicBool>,
}

impl<S> HeadGuard<S> {
    /// Guards `inner`, scanning at most `limit` bytes of the first head.
    pub fn new(inner: S, limit: usize) -> HeadGuard<S> {
        HeadGuard {
            inner,
            state: State::Scanning(Vec::new()),
            limit,
            conflict: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set when the first request head had both Content-Length and Transfer-Encoding.
    pub fn conflict(&self) -> Arc<AtomicBool> {
        self.conflict.clone()
    }
}

/// Whether a request head (up to its blank line) names both framings.
pub fn has_conflicting_framing(head: &[u8]) -> bool {
    let (mut length, mut encoding) = (false, false);
    for line in head.split(|&b| b == b'\n').skip(1) {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        length |= name.eq_ignore_ascii_case(b"content-length");
        encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    length && encoding
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Passing => return Pin::new(&mut this.inner).poll_read(cx, out),
                State::Draining(buf, offset) => {
                    let n = (buf.len() - *offset).min(out.remaining());
                    out.put_slice(&buf[*offset..*offset + n]);
                    *offset += n;
                    if *offset == buf.len() {
                        this.state = State::Passing;
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Scanning(buf) => {
                    let mut chunk = [0u8; 4096];
                    let mut read = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                    let filled = read.filled();
                    let eof = filled.is_empty();
                    buf.extend_from_slice(filled);
                    let is_h2 = buf.starts_with(H2_PREFACE);
                    let done = if let Some(end) = head_end(buf) {
                        if has_conflicting_framing(&buf[..end]) {
                            this.conflict.store(true, Ordering::Release);
                        }
                        true
                    } else {
                        eof || is_h2 || buf.len() > this.limit
                    };
                    if done {
                        let taken = std::mem::take(buf);
                        this.state = if taken.is_empty() {
                            State::Passing
                        } else {
                            State::Draining(taken, 0)
                        };
                        if eof && matches!(this.state, State::Passing) {
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn both_framings_in_one_head_conflict_in_any_order_and_case() {
        assert!(has_conflicting_framing(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(has_conflicting_framing(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n"
        ));
        assert!(!has_conflicting_framing(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nx-transfer-encoding: no\r\n\r\n"
        ));
        // The request line is not a header, whatever it says.
        assert!(!has_conflicting_framing(
            b"GET /content-length:transfer-encoding: HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
    }

    #[tokio::test]
    async fn the_guard_passes_every_byte_through_and_flags_the_first_head() {
        let request = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let mut guard = HeadGuard::new(&request[..], 1024);
        let flag = guard.conflict();
        let mut all = Vec::new();
        guard.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, request.to_vec());
        assert!(flag.load(Ordering::Acquire));
        let plain = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut guard = HeadGuard::new(&plain[..], 1024);
        let flag = guard.conflict();
        let mut all = Vec::new();
        guard.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, plain.to_vec());
        assert!(!flag.load(Ordering::Acquire));
    }
}
