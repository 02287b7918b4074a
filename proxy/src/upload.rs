//! A request's body as the tries of the request send it: read whole before routing, or
//! forwarded as it arrives.
//!
//! A small body is read whole before the request is tried ([`RequestBody::Whole`]), so
//! that any try can send it again: one that declares a length of at most
//! [`WHOLE_BODY_BYTES`](crate::body::WHOLE_BODY_BYTES), or that came with its head. Any
//! other — an upload larger than that, one of unknown length (chunked, or h2 without a
//! Content-Length), a gRPC client stream or bidirectional stream — is forwarded as it
//! arrives ([`RequestBody::Arriving`]), as Envoy forwards bodies: the first try takes it
//! and sends each piece on when it comes, over h2 or HTTP/1, so that the proxy holds a
//! few pieces of it at a time, whatever its size, and a stream's messages reach the
//! endpoint while the stream is open. What passes is kept, up to the limit Envoy buffers a
//! request to for its retries (1 MiB by default): once the body has ended whole within the
//! limit, a later try can send it again (a unary gRPC call can still be retried, as its
//! message has come by the time its answer does); a body still arriving, or over the
//! limit, cannot be sent again, so the request is not retried. A mirror is sent a copy
//! of it as it is read ([`crate::tee`]).

use std::future::poll_fn;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Body;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::send_within_window;

/// The error of a body from the proxy's listeners, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body still arriving, of whichever listener it came on.
pub type ArrivingBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request's body, as the tries send it.
pub enum RequestBody {
    /// Read whole before routing.
    Whole(Bytes),
    /// Still arriving; forwarded by the first try.
    Arriving(Upload),
}

/// A body forwarded as it arrives, and what is known of it.
pub struct Upload {
    state: Arc<Shared>,
    /// The most kept for later tries.
    limit: usize,
    /// Its length, when the client declared one.
    length: Option<u64>,
}

/// What the tries of a request know of its body.
struct Shared {
    state: Mutex<State>,
    /// When the body ended whole (none yet: still arriving, or it never will).
    ended: watch::Sender<Option<Instant>>,
}

enum State {
    /// No try has taken it yet.
    Waiting(ArrivingBody),
    /// A try is forwarding it.
    Taken,
    /// It ended, and all of it is kept.
    Whole(Bytes),
    /// It was over the limit, or a try stopped forwarding it: no other try can send it.
    Gone,
    /// The client's side of it broke off: the status to answer the client, and why.
    BrokenOff(StatusCode, String),
}

/// What a try sends as the request's body.
pub enum ToSend {
    Whole(Bytes),
    /// The body as it arrives: the try sends the head, then each piece
    /// ([`Forwarding::next`]; over h2, [`Forwarding::run`] on the stream).
    Arriving(Forwarding),
    /// Another try forwarded it, and it is not whole: it cannot be sent again.
    Gone,
}

impl RequestBody {
    /// A body still arriving, kept up to `limit` bytes for later tries.
    pub fn arriving(body: ArrivingBody, limit: usize) -> RequestBody {
        let length = body.size_hint().exact();
        RequestBody::Arriving(Upload {
            state: Arc::new(Shared {
                state: Mutex::new(State::Waiting(body)),
                ended: watch::Sender::new(None),
            }),
            limit,
            length,
        })
    }

    /// Whether another try could send the body: it is whole, or no try has taken it.
    pub fn can_send_again(&self) -> bool {
        match self {
            RequestBody::Whole(_) => true,
            RequestBody::Arriving(upload) => upload
                .state
                .state
                .lock()
                .is_ok_and(|s| matches!(*s, State::Waiting(_) | State::Whole(_))),
        }
    }

    /// Waits until the body has ended whole (at once for a body read whole), and says
    /// when it did. Never, for a body that breaks off or that no try forwards to its end:
    /// Envoy's route and per-try timeouts start once the request has been sent whole,
    /// and so do the proxy's ([`RequestBody::is_whole`] tells when there is no wait).
    pub async fn ended(&self) -> Instant {
        let RequestBody::Arriving(upload) = self else {
            return Instant::now();
        };
        let mut ended = upload.state.ended.subscribe();
        let at = ended.wait_for(Option::is_some).await.map(|at| *at);
        match at {
            Ok(at) => at.unwrap_or_else(Instant::now),
            Err(_) => std::future::pending().await,
        }
    }

    /// When the body ended whole, if it has.
    pub fn ended_at(&self) -> Option<Instant> {
        match self {
            RequestBody::Whole(_) => None,
            RequestBody::Arriving(upload) => *upload.state.ended.borrow(),
        }
    }

    /// Whether the body was read whole before the request was tried.
    pub fn is_whole(&self) -> bool {
        matches!(self, RequestBody::Whole(_))
    }

    /// When the client's body broke off as a try forwarded it (the client reset its
    /// stream, or stalled): the answer the client is owed, a 408 for a stall, else a
    /// 400, with why. A try that failed then failed by the client's doing.
    pub fn broken_off(&self) -> Option<(StatusCode, String)> {
        let RequestBody::Arriving(upload) = self else {
            return None;
        };
        match &*upload.state.state.lock().ok()? {
            State::BrokenOff(status, why) => Some((*status, why.clone())),
            _ => None,
        }
    }

    /// The body for a try.
    pub fn to_send(&self) -> ToSend {
        let upload = match self {
            RequestBody::Whole(bytes) => return ToSend::Whole(bytes.clone()),
            RequestBody::Arriving(upload) => upload,
        };
        let Ok(mut state) = upload.state.state.lock() else {
            return ToSend::Gone;
        };
        match std::mem::replace(&mut *state, State::Taken) {
            State::Waiting(body) => ToSend::Arriving(Forwarding {
                body: Some(body),
                // Room for all of it at once when its length is known; nothing kept of
                // one longer than the limit, which could not be sent again anyway.
                kept: match upload.length.map(usize::try_from) {
                    None => Some(BytesMut::new()),
                    Some(Ok(n)) if n <= upload.limit => Some(BytesMut::with_capacity(n)),
                    Some(_) => None,
                },
                begun: false,
                state: Arc::clone(&upload.state),
                limit: upload.limit,
                length: upload.length,
            }),
            State::Whole(bytes) => {
                *state = State::Whole(bytes.clone());
                ToSend::Whole(bytes)
            }
            other => {
                *state = other;
                ToSend::Gone
            }
        }
    }
}

/// A body being forwarded by one try, piece by piece ([`Forwarding::next`]). Dropped
/// before its first piece was taken (the try failed before it could send anything), it
/// goes back for the next try; dropped after, before its end, no try can send it again.
pub struct Forwarding {
    body: Option<ArrivingBody>,
    /// What has passed so far, while it is within the limit.
    kept: Option<BytesMut>,
    begun: bool,
    state: Arc<Shared>,
    limit: usize,
    length: Option<u64>,
}

/// The next piece of a body being forwarded.
pub enum Next {
    Data(Bytes),
    /// The body has ended whole, with these trailer fields if it had any.
    End(Option<HeaderMap>),
    /// The body broke off (the client went away, or reset its stream); says why.
    Broken(String),
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if let Ok(mut state) = self.state.state.lock() {
            *state = match self.begun {
                false => State::Waiting(body),
                true => State::Gone,
            };
        }
    }
}

impl Forwarding {
    /// The body's length, when its client declared one.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether any of the body has been taken: before, the try may give it to another
    /// connection, or back for the next try.
    pub fn begun(&self) -> bool {
        self.begun
    }

    /// The next piece of the body, kept for later tries while within the limit. Once the
    /// body has ended (whole, or broken off), it is [`Next::Broken`] again.
    pub async fn next(&mut self) -> Next {
        let Some(body) = &mut self.body else {
            return Next::Broken("the body was already forwarded".into());
        };
        let frame = body.frame().await;
        self.begun = true;
        let frame = match frame {
            None => {
                self.ended(Ok(()));
                return Next::End(None);
            }
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let status = match crate::h2_server::is_stall(e.as_ref()) {
                    true => StatusCode::REQUEST_TIMEOUT,
                    false => StatusCode::BAD_REQUEST,
                };
                let why = format!("the request body broke off: {e}");
                self.ended(Err((status, why.clone())));
                return Next::Broken(why);
            }
        };
        match frame.into_data() {
            Ok(data) => {
                let limit = self.limit;
                self.kept = self.kept.take().filter(|k| k.len() + data.len() <= limit);
                if let Some(kept) = &mut self.kept {
                    kept.extend_from_slice(&data);
                }
                Next::Data(data)
            }
            Err(frame) => {
                self.ended(Ok(()));
                Next::End(frame.into_trailers().ok())
            }
        }
    }

    /// Sends the body on `stream` as it arrives (within the peer's flow-control window),
    /// then its trailer fields if it has any. When the body breaks off (the client reset
    /// its stream), the stream is reset too; when the peer resets the stream, forwarding
    /// stops.
    pub async fn run(mut self, mut stream: h2::SendStream<Bytes>) {
        loop {
            let next = tokio::select! {
                next = self.next() => next,
                _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
            };
            match next {
                Next::Data(data) => {
                    if send_within_window(&mut stream, data).await.is_err() {
                        return;
                    }
                }
                // The body was recorded whole before its end is sent: the peer answers
                // once the body has ended, and a retry of that answer must find it whole.
                Next::End(None) => {
                    let _ = stream.send_data(Bytes::new(), true);
                    return;
                }
                Next::End(Some(trailers)) => {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
                Next::Broken(why) => {
                    tracing::debug!("request body broke off: {why}");
                    stream.send_reset(h2::Reason::CANCEL);
                    return;
                }
            }
        }
    }

    /// The body has ended: whole (all of it kept, when within the limit), or broken off.
    fn ended(&mut self, end: Result<(), (StatusCode, String)>) {
        self.body = None;
        let kept = self.kept.take();
        if end.is_ok() {
            self.state.ended.send_replace(Some(Instant::now()));
        }
        if let Ok(mut state) = self.state.state.lock() {
            *state = match (end, kept) {
                (Ok(()), Some(bytes)) => State::Whole(bytes.freeze()),
                (Ok(()), None) => State::Gone,
                (Err((status, why)), _) => State::BrokenOff(status, why),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{ProxyBody, SentPiece};
    use tokio::sync::mpsc;

    /// A body of `length` (when declared) whose pieces come from the sender returned,
    /// kept up to `limit`.
    fn arriving(length: Option<u64>, limit: usize) -> (RequestBody, mpsc::Sender<SentPiece>) {
        let (sender, pieces) = mpsc::channel(8);
        let body = ProxyBody::from_pieces(pieces, length);
        let body = RequestBody::arriving(body.map_err(Into::into).boxed_unsync(), limit);
        (body, sender)
    }

    /// Sends `pieces` and the end, and forwards them all with one try.
    async fn forward_all(body: &RequestBody, sender: &mpsc::Sender<SentPiece>, pieces: &[&str]) {
        for piece in pieces {
            sender
                .send(Ok(Some(Bytes::from(piece.to_string()))))
                .await
                .unwrap();
        }
        sender.send(Ok(None)).await.unwrap();
        let ToSend::Arriving(mut forwarding) = body.to_send() else {
            panic!("a body still arriving");
        };
        let mut passed = String::new();
        loop {
            match forwarding.next().await {
                Next::Data(data) => passed.push_str(std::str::from_utf8(&data).unwrap()),
                Next::End(_) => break,
                Next::Broken(why) => panic!("broke off: {why}"),
            }
        }
        assert_eq!(passed, pieces.concat(), "every piece passes, in order");
    }

    fn sent_again(body: &RequestBody) -> Option<Bytes> {
        match body.to_send() {
            ToSend::Whole(bytes) => Some(bytes),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_body_that_ended_within_the_limit_can_be_sent_again_whole() {
        for length in [Some(6), None] {
            let (body, sender) = arriving(length, 6);
            assert!(body.ended_at().is_none());
            forward_all(&body, &sender, &["abc", "def"]).await;
            assert!(body.can_send_again(), "length {length:?}");
            assert_eq!(sent_again(&body).as_deref(), Some(&b"abcdef"[..]));
            assert!(body.ended_at().is_some(), "its end is known");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_passes_but_cannot_be_sent_again() {
        for length in [Some(6), None] {
            let (body, sender) = arriving(length, 5);
            forward_all(&body, &sender, &["abc", "def"]).await;
            assert!(!body.can_send_again(), "length {length:?}");
            assert!(matches!(body.to_send(), ToSend::Gone));
        }
    }

    #[tokio::test]
    async fn a_try_that_took_nothing_leaves_the_body_to_the_next() {
        let (body, sender) = arriving(None, 1024);
        let ToSend::Arriving(forwarding) = body.to_send() else {
            panic!("a body still arriving");
        };
        assert!(!body.can_send_again(), "taken");
        drop(forwarding);
        assert!(body.can_send_again(), "given back");
        forward_all(&body, &sender, &["xyz"]).await;
        assert_eq!(sent_again(&body).as_deref(), Some(&b"xyz"[..]));
    }

    #[tokio::test]
    async fn a_body_the_client_broke_off_is_the_clients_answer() {
        let (body, sender) = arriving(None, 1024);
        sender.send(Ok(Some(Bytes::from("ab")))).await.unwrap();
        sender
            .send(Err("the client went away".into()))
            .await
            .unwrap();
        let ToSend::Arriving(mut forwarding) = body.to_send() else {
            panic!("a body still arriving");
        };
        assert!(matches!(forwarding.next().await, Next::Data(_)));
        assert!(matches!(forwarding.next().await, Next::Broken(_)));
        let (status, why) = body.broken_off().expect("broken off");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why.contains("the client went away"), "{why}");
        assert!(!body.can_send_again());
        assert!(body.ended_at().is_none(), "it never ended");
    }
}
