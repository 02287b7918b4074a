//! Tunnels: after a WebSocket upgrade, bytes carried both ways between two connections
//! (the client's and an endpoint's, or either and an h2 stream to another cluster's
//! proxy) until both directions are done or nothing moves for a while.

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// One end of a tunnel.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

/// Carries bytes both ways between `a` and `b`, each direction closing (a write shutdown)
/// when its sender is done, until both are or nothing has moved either way for `idle`.
pub async fn splice(a: impl TunnelIo, b: impl TunnelIo, idle: Duration) {
    // When bytes last moved, in milliseconds from `opened` (the two directions run in
    // one task; an atomic only because the task may move between threads).
    let opened = Instant::now();
    let last = AtomicU64::new(0);
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let forth = one_way(a_read, b_write, opened, &last);
    let back = one_way(b_read, a_write, opened, &last);
    let quiet = async {
        loop {
            let moved = Duration::from_millis(last.load(Ordering::Relaxed));
            let left = idle.saturating_sub(opened.elapsed().saturating_sub(moved));
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(forth, back) } => {}
        _ = quiet => {}
    }
}

/// Copies `from` to `to` until `from` ends, then shuts `to`'s writing down; notes in
/// `last` when bytes last moved (milliseconds from `opened`).
async fn one_way(
    from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    opened: Instant,
    last: &AtomicU64,
) {
    let mut from = Active {
        inner: from,
        opened,
        last,
    };
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

/// A reader that notes when bytes last came through it (milliseconds from `opened`).
struct Active<'a, R> {
    inner: R,
    opened: Instant,
    last: &'a AtomicU64,
}

impl<R: AsyncRead + Unpin> AsyncRead for Active<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.opened.elapsed().as_millis() as u64;
            self.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

/// An h2 stream as a byte stream: DATA frames read in order (their flow-control window
/// given back as they are read), writes sent as DATA as the peer's window allows, and a
/// write shutdown as the end of the stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What a DATA frame brought that the reader has not taken yet.
    unread: Bytes,
    ended: bool,
    /// Held for as long as the stream is (its place on its connection).
    kept: Option<Box<dyn Any + Send>>,
}

impl H2Stream {
    /// The stream whose halves are `send` and `recv`.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Stream {
        H2Stream {
            send,
            recv,
            unread: Bytes::new(),
            ended: false,
            kept: None,
        }
    }

    /// The same stream, holding `value` until it is dropped.
    pub fn keeping(mut self, value: impl Any + Send) -> H2Stream {
        self.kept = Some(Box::new(value));
        self
    }
}

fn broken(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.unread.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.unread = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                // The peer ended the stream: the end of what there is to read.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(room)) => {
                    let n = room.min(buf.len());
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    self.send.send_data(data, false).map_err(broken)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes what it was given as the connection's task runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(broken)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// A tunnel's end that holds something for as long as it lives (the service's
/// concurrent-request permit: a tunnel is a request while it is open).
pub struct Holding<T, G> {
    /// The end.
    pub io: T,
    /// What it holds.
    pub held: G,
}

impl<T: AsyncRead + Unpin, G: Unpin> AsyncRead for Holding<T, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Holding<T, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
