//! The body of an answer on its way back to the client (and of an HTTP/1 client's
//! request on its way in): held whole, or passed on as it arrives.
//!
//! Most answers are small and come complete with their head. Those are held whole
//! ([`ProxyBody::Whole`]): the proxy's own answers, and endpoints' answers that declare a
//! length of at most [`WHOLE_BODY_BYTES`] or whose chunked body came with the head. Any
//! other answer — a larger one, or one of unknown length still arriving (server-sent
//! events, a gRPC stream, a download) — is passed on as it arrives
//! ([`ProxyBody::Streaming`]): the client sees each part when the endpoint sends it, and
//! the proxy holds at most a few reads of it, taking more only as the client takes what
//! it has. Retries and outlier detection read the answer's head, which both kinds have
//! whole.
//!
//! A stream keeps what it must outlive: the route's timeout, which covers the whole
//! answer as Envoy's does (when it passes mid-stream the stream fails, and the client's
//! connection or h2 stream is reset rather than the answer cut short silently), and the
//! request's place among its service's requests in flight. It can also say how it ended
//! ([`ProxyBody::on_end`]): a gRPC answer's status comes in its trailers, after its
//! messages.

use std::any::Any;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// The largest body read whole before it is passed on, an answer's or a request's; a
/// larger one, or one without a declared length, is passed on as it arrives.
pub const WHOLE_BODY_BYTES: u64 = 1024 * 1024;

/// What a task reading an answer off an HTTP/1 connection sends: a piece of the body,
/// `None` at its end, or why it broke off.
pub type SentPiece = Result<Option<Bytes>, String>;

/// How many pieces an HTTP/1 answer's reader may have sent ahead of the client.
pub const PIECES_AHEAD: usize = 2;

/// An answer's body.
pub enum ProxyBody {
    /// Held whole (taken out as it is read).
    Whole(Bytes),
    /// Still arriving.
    Streaming(Box<Streaming>),
}

impl Default for ProxyBody {
    fn default() -> ProxyBody {
        ProxyBody::Whole(Bytes::new())
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> ProxyBody {
        ProxyBody::Whole(bytes)
    }
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyBody::Whole(bytes) => write!(f, "Whole({} bytes)", bytes.len()),
            ProxyBody::Streaming(s) => write!(f, "Streaming(length {:?})", s.length),
        }
    }
}

impl ProxyBody {
    /// The rest of an HTTP/1 answer, as the task reading it sends it; `length` when the
    /// answer declared one.
    pub fn from_pieces(pieces: mpsc::Receiver<SentPiece>, length: Option<u64>) -> ProxyBody {
        ProxyBody::streaming(
            Source::Pieces {
                pieces,
                ended: false,
            },
            length,
        )
    }

    /// The rest of an h2 answer: its data, then its trailer fields.
    pub fn from_h2(stream: h2::RecvStream, length: Option<u64>) -> ProxyBody {
        ProxyBody::streaming(
            Source::H2 {
                stream,
                data_done: false,
            },
            length,
        )
    }

    fn streaming(source: Source, length: Option<u64>) -> ProxyBody {
        ProxyBody::Streaming(Box::new(Streaming {
            source,
            length,
            deadline: None,
            kept: Vec::new(),
            on_end: Vec::new(),
        }))
    }

    /// Has a stream tell `told` how it ended, once it has (or once it is dropped first),
    /// after any told before. A whole body has nothing more to tell: `told` is not kept.
    pub fn on_end(&mut self, told: impl FnOnce(End<'_>) + Send + 'static) {
        if let ProxyBody::Streaming(s) = self {
            s.on_end.push(Box::new(told));
        }
    }

    /// Whether the body is still arriving.
    pub fn is_streaming(&self) -> bool {
        matches!(self, ProxyBody::Streaming(_))
    }

    /// The length of the body when it is known before it is read: a whole body's, or
    /// the one a streamed answer declared.
    pub fn length(&self) -> Option<u64> {
        match self {
            ProxyBody::Whole(bytes) => Some(bytes.len() as u64),
            ProxyBody::Streaming(s) => s.length,
        }
    }

    /// A stream must end by `at` (the route's timeout, `after` from the request's start);
    /// a whole body has nothing left to wait for.
    pub fn end_by(&mut self, at: Instant, after: Duration) {
        if let ProxyBody::Streaming(s) = self {
            s.deadline = Some((Box::pin(tokio::time::sleep_until(at)), after));
        }
    }

    /// Keeps `value` until a stream ends (or is dropped): what must last as long as the
    /// answer does. Dropped at once for a whole body.
    pub fn keep(&mut self, value: impl Any + Send) {
        if let ProxyBody::Streaming(s) = self {
            s.kept.push(Box::new(value));
        }
    }
}

/// An answer's body still arriving, from where it comes.
pub struct Streaming {
    source: Source,
    length: Option<u64>,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    kept: Vec<Box<dyn Any + Send>>,
    /// Each told once, in the order given.
    on_end: Vec<Told>,
}

/// What a stream tells how it ended.
type Told = Box<dyn FnOnce(End<'_>) + Send>;

/// How a streamed answer ended.
#[derive(Debug, Clone, Copy)]
pub enum End<'a> {
    /// With these trailer fields.
    Trailers(&'a http::HeaderMap),
    /// After its data, without trailer fields.
    Data,
    /// It broke off (its source failed, or the route's timeout passed).
    Broken,
    /// Dropped before its end: the client went away, or the answer was not wanted.
    Dropped,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.tell(End::Dropped);
    }
}

enum Source {
    /// Sent by the task reading an HTTP/1 answer; `ended` once it said the body is whole.
    Pieces {
        pieces: mpsc::Receiver<SentPiece>,
        ended: bool,
    },
    /// An h2 stream's data, then its trailer fields.
    H2 {
        stream: h2::RecvStream,
        data_done: bool,
    },
}

/// Why a streamed answer broke off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenOff(pub String);

impl fmt::Display for BrokenOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the body broke off: {}", self.0)
    }
}

impl std::error::Error for BrokenOff {}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BrokenOff;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BrokenOff>>> {
        match self.get_mut() {
            ProxyBody::Whole(bytes) if bytes.is_empty() => Poll::Ready(None),
            ProxyBody::Whole(bytes) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes))))),
            ProxyBody::Streaming(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ProxyBody::Whole(bytes) if bytes.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match self.length() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Streaming {
    /// Tells each who asked how the stream ended (once: they are gone after).
    fn tell(&mut self, end: End<'_>) {
        for told in self.on_end.drain(..) {
            told(end);
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BrokenOff>>> {
        if let Some((sleep, after)) = &mut self.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            let why = format!(
                "route timeout {}ms passed while it was still arriving",
                after.as_millis()
            );
            self.tell(End::Broken);
            return Poll::Ready(Some(Err(BrokenOff(why))));
        }
        let frame = match &mut self.source {
            Source::Pieces { pieces, ended } => match ready!(pieces.poll_recv(cx)) {
                Some(Ok(Some(data))) => Some(Ok(Frame::data(data))),
                Some(Ok(None)) => {
                    *ended = true;
                    None
                }
                Some(Err(why)) => Some(Err(BrokenOff(why))),
                None if *ended => None,
                None => Some(Err(BrokenOff("its reader stopped".into()))),
            },
            Source::H2 { stream, data_done } => ready!(poll_h2_frame(stream, data_done, cx))
                .map(|frame| frame.map_err(|e| BrokenOff(crate::outbound::error_chain(&e)))),
        };
        let end = match &frame {
            None => Some(End::Data),
            Some(Err(_)) => Some(End::Broken),
            Some(Ok(frame)) => frame.trailers_ref().map(End::Trailers),
        };
        if let Some(end) = end {
            self.tell(end);
            // Ended: what was kept for the stream's life can go now.
            self.kept.clear();
            self.deadline = None;
        }
        Poll::Ready(frame)
    }
}

/// The next frame of an h2 message's body (an answer's, or a request's): data, its room
/// given back to the sender's flow-control window as it is taken, then the trailer fields
/// if any. `data_done` notes that the data has ended.
pub(crate) fn poll_h2_frame(
    stream: &mut h2::RecvStream,
    data_done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
    if !*data_done {
        match ready!(stream.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = stream.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => *data_done = true,
        }
    }
    Poll::Ready(
        ready!(stream.poll_trailers(cx))
            .transpose()
            .map(|t| t.map(Frame::trailers)),
    )
}

/// Sends `data` on `stream` as the peer's flow-control window makes room for it, so that
/// no more than a window's worth waits in h2's buffers.
pub(crate) async fn send_within_window(
    stream: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let room = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(room) => room?,
            // The stream has ended: the send below says why.
            None => data.len(),
        };
        let piece = data.split_to(room.min(data.len()));
        stream.send_data(piece, false)?;
    }
    Ok(())
}
