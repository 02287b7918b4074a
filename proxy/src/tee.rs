//! Copies of a request body still arriving, for the request's mirrors.
//!
//! A mirrored request whose body is forwarded as it arrives (an upload, a gRPC stream)
//! gives each mirror a copy of the body that arrives as the request's own does, as
//! Envoy's streaming shadows do ([`tee`]). The request's body is read by its tries alone,
//! at their pace: each piece read is also queued for each copy, and a mirror never slows
//! its request down. A copy whose mirror falls more than its limit behind is let go (its
//! mirror's request is cut off, so its endpoint sees a reset rather than a shorter body),
//! and so is every copy of a body that breaks off, or that its request stops reading
//! before its end.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::upload::{ArrivingBody, BoxError};

/// `body` as the request reads it, and `copies` copies of it, each let go once more
/// than `limit` bytes of it are waiting for its mirror.
pub fn tee(body: ArrivingBody, copies: usize, limit: usize) -> (ArrivingBody, Vec<ArrivingBody>) {
    let length = body.size_hint().exact();
    let queues: Vec<Arc<Mutex<Queue>>> = (0..copies).map(|_| Arc::default()).collect();
    let copies = queues
        .iter()
        .map(|queue| {
            Copied {
                queue: Arc::clone(queue),
                length,
            }
            .boxed_unsync()
        })
        .collect();
    let original = Tee {
        body,
        queues,
        limit,
        done: false,
    };
    (original.boxed_unsync(), copies)
}

/// What is waiting for one copy's reader.
#[derive(Default)]
struct Queue {
    pieces: VecDeque<Bytes>,
    bytes: usize,
    trailers: Option<HeaderMap>,
    end: Option<End>,
    reader: Option<Waker>,
}

enum End {
    /// The body ended; the copy ends once its pieces are read.
    Whole,
    /// The copy was let go: why.
    LetGo(String),
}

impl Queue {
    fn push(&mut self, piece: &Bytes, limit: usize) {
        if self.end.is_some() {
            return;
        }
        if self.bytes + piece.len() > limit {
            self.let_go(format!("the mirror fell more than {limit} bytes behind"));
            return;
        }
        self.bytes += piece.len();
        self.pieces.push_back(piece.clone());
        self.wake();
    }

    fn end(&mut self, end: End) {
        if self.end.is_none() {
            self.end = Some(end);
            self.wake();
        }
    }

    fn let_go(&mut self, why: String) {
        self.pieces.clear();
        self.bytes = 0;
        self.end(End::LetGo(why));
    }

    fn wake(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }
}

fn locked(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The request's own body, queueing what it reads for the copies.
struct Tee {
    body: ArrivingBody,
    queues: Vec<Arc<Mutex<Queue>>>,
    limit: usize,
    /// Every copy has been told how the body ended.
    done: bool,
}

impl Tee {
    fn end_all(&mut self, end: impl Fn() -> End) {
        for queue in &self.queues {
            locked(queue).end(end());
        }
        self.done = true;
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(piece) = frame.data_ref() {
                    for queue in &this.queues {
                        locked(queue).push(piece, this.limit);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    for queue in &this.queues {
                        locked(queue).trailers = Some(trailers.clone());
                    }
                }
                // Its reader may stop here, without asking for the end.
                if this.body.is_end_stream() {
                    this.end_all(|| End::Whole);
                }
            }
            Some(Err(e)) => {
                let why = format!("the request's body broke off: {e}");
                this.end_all(|| End::LetGo(why.clone()));
            }
            None => this.end_all(|| End::Whole),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if !self.done {
            self.end_all(|| End::LetGo("the request stopped reading its body".into()));
        }
    }
}

/// One mirror's copy.
struct Copied {
    queue: Arc<Mutex<Queue>>,
    /// What is still to come, when the client declared a length.
    length: Option<u64>,
}

impl Body for Copied {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut queue = locked(&this.queue);
        if let Some(piece) = queue.pieces.pop_front() {
            queue.bytes -= piece.len();
            if let Some(length) = &mut this.length {
                *length = length.saturating_sub(piece.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match &queue.end {
            Some(End::Whole) => Poll::Ready(queue.trailers.take().map(|t| Ok(Frame::trailers(t)))),
            Some(End::LetGo(why)) => Poll::Ready(Some(Err(why.clone().into()))),
            None => {
                queue.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let queue = locked(&self.queue);
        queue.pieces.is_empty() && queue.trailers.is_none() && matches!(queue.end, Some(End::Whole))
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::new, SizeHint::with_exact)
    }
}

impl Drop for Copied {
    /// A mirror that no longer reads its copy (its request failed, or ended early) is
    /// queued nothing more.
    fn drop(&mut self) {
        locked(&self.queue).let_go("the mirror stopped reading".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{ProxyBody, SentPiece};
    use tokio::sync::mpsc;

    /// A body whose pieces come from the sender returned, and `copies` copies of it.
    fn teed(
        length: Option<u64>,
        copies: usize,
        limit: usize,
    ) -> (ArrivingBody, Vec<ArrivingBody>, mpsc::Sender<SentPiece>) {
        let (sender, pieces) = mpsc::channel(8);
        let body = ProxyBody::from_pieces(pieces, length);
        let (original, copies) = tee(body.map_err(Into::into).boxed_unsync(), copies, limit);
        (original, copies, sender)
    }

    async fn piece(sender: &mpsc::Sender<SentPiece>, text: &str) {
        sender
            .send(Ok(Some(Bytes::from(text.to_string()))))
            .await
            .expect("the body reads");
    }

    /// Reads `body` to its end; its data, or why it broke off.
    async fn read_all(body: &mut ArrivingBody) -> Result<String, String> {
        let mut data = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(piece) = frame.into_data() {
                data.push_str(std::str::from_utf8(&piece).expect("text"));
            }
        }
        Ok(data)
    }

    #[tokio::test]
    async fn each_copy_gets_what_the_request_read_as_it_reads_it() {
        let (mut original, mut copies, sender) = teed(Some(6), 2, 1024);
        assert_eq!(
            copies[0].size_hint().exact(),
            Some(6),
            "the declared length"
        );
        piece(&sender, "abc").await;
        let first = original.frame().await.expect("a piece").expect("data");
        assert_eq!(first.into_data().expect("data"), "abc");
        for copy in &mut copies {
            let copied = copy.frame().await.expect("a piece").expect("data");
            assert_eq!(copied.into_data().expect("data"), "abc", "before the end");
        }
        piece(&sender, "def").await;
        sender.send(Ok(None)).await.expect("the body reads");
        assert_eq!(read_all(&mut original).await.as_deref(), Ok("def"));
        drop(original);
        for copy in &mut copies {
            assert_eq!(read_all(copy).await.as_deref(), Ok("def"), "ends whole");
        }
    }

    #[tokio::test]
    async fn a_copy_too_far_behind_is_let_go_and_the_request_goes_on() {
        let (mut original, mut copies, sender) = teed(None, 2, 5);
        let mut slow = copies.pop().expect("a copy");
        let mut keeping_up = copies.pop().expect("a copy");
        for text in ["abc", "def"] {
            piece(&sender, text).await;
            original.frame().await.expect("a piece").expect("data");
            let copied = keeping_up.frame().await.expect("a piece").expect("data");
            assert_eq!(copied.into_data().expect("data"), text);
        }
        sender.send(Ok(None)).await.expect("the body reads");
        assert_eq!(read_all(&mut original).await.as_deref(), Ok(""));
        let why = read_all(&mut slow).await.expect_err("let go");
        assert!(why.contains("more than 5 bytes behind"), "{why}");
        assert_eq!(read_all(&mut keeping_up).await.as_deref(), Ok(""));
    }

    #[tokio::test]
    async fn copies_of_a_body_that_breaks_off_or_is_dropped_are_cut_off_not_ended() {
        let (mut original, mut copies, sender) = teed(None, 1, 1024);
        piece(&sender, "ab").await;
        original.frame().await.expect("a piece").expect("data");
        sender
            .send(Err("the client went away".into()))
            .await
            .expect("the body reads");
        assert!(original.frame().await.expect("a frame").is_err());
        let why = read_all(&mut copies[0]).await.expect_err("cut off");
        assert!(why.contains("the client went away"), "{why}");

        let (original, mut copies, _sender) = teed(None, 1, 1024);
        drop(original);
        let why = read_all(&mut copies[0]).await.expect_err("cut off");
        assert!(why.contains("stopped reading"), "{why}");
    }
}
