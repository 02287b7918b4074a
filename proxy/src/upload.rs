//! A request's body as the tries of the request send it: read whole before routing, or
//! forwarded as it arrives.
//!
//! Most requests are read whole before they are routed ([`RequestBody::Whole`]), so that
//! any try can send them again. A gRPC request whose body is still arriving when its
//! head has come (a client stream, a bidirectional stream; a unary call's one message
//! too) is forwarded as it arrives instead ([`RequestBody::Arriving`]): the first try
//! over h2 takes it and sends each piece on when it comes, so that a stream's messages
//! reach the endpoint while the stream is open, as they do through Envoy. What passes is
//! kept, up to the body limit; once the body has ended whole, a later try can send it
//! again (a unary call can still be retried, as its message has come by the time its
//! answer does); a body still arriving, or over the limit, cannot be sent again, so the
//! request is not retried. A try that must have the body whole (to an endpoint that
//! speaks HTTP/1) reads it whole first.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::body::send_within_window;

/// The error of a body from the proxy's listeners, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body still arriving, of whichever listener it came on.
pub type ArrivingBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request's body, as the tries send it.
pub enum RequestBody {
    /// Read whole before routing.
    Whole(Bytes),
    /// Still arriving; forwarded by the first try over h2.
    Arriving(Upload),
}

/// A body forwarded as it arrives, and what is known of it.
pub struct Upload {
    state: Arc<Mutex<State>>,
    /// The most kept for later tries.
    limit: usize,
}

enum State {
    /// No try has taken it yet.
    Waiting(ArrivingBody),
    /// A try is forwarding it.
    Taken,
    /// It ended, and all of it is kept.
    Whole(Bytes),
    /// It broke off, or was over the limit: no other try can send it.
    Gone,
}

/// What a try over h2 sends as the request's body.
pub enum ToSend {
    Whole(Bytes),
    /// The body as it arrives: the try sends the head without ending the stream, then
    /// [`Forwarding::run`] on the stream.
    Arriving(Forwarding),
    /// Another try forwarded it, and it is not whole: it cannot be sent again.
    Gone,
}

impl RequestBody {
    /// A body still arriving, kept up to `limit` bytes for later tries.
    pub fn arriving(body: ArrivingBody, limit: usize) -> RequestBody {
        RequestBody::Arriving(Upload {
            state: Arc::new(Mutex::new(State::Waiting(body))),
            limit,
        })
    }

    /// Whether another try could send the body: it is whole, or no try has taken it.
    pub fn can_send_again(&self) -> bool {
        match self {
            RequestBody::Whole(_) => true,
            RequestBody::Arriving(upload) => upload
                .state
                .lock()
                .is_ok_and(|s| matches!(*s, State::Waiting(_) | State::Whole(_))),
        }
    }

    /// The body for a try over h2.
    pub fn to_send(&self) -> ToSend {
        let upload = match self {
            RequestBody::Whole(bytes) => return ToSend::Whole(bytes.clone()),
            RequestBody::Arriving(upload) => upload,
        };
        let Ok(mut state) = upload.state.lock() else {
            return ToSend::Gone;
        };
        match std::mem::replace(&mut *state, State::Taken) {
            State::Waiting(body) => ToSend::Arriving(Forwarding {
                body: Some(body),
                state: Arc::clone(&upload.state),
                limit: upload.limit,
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

/// A body being forwarded by one try. Dropped before [`Forwarding::run`] (the try failed
/// before it could send anything), it goes back for the next try.
pub struct Forwarding {
    body: Option<ArrivingBody>,
    state: Arc<Mutex<State>>,
    limit: usize,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        if let (Some(body), Ok(mut state)) = (self.body.take(), self.state.lock()) {
            *state = State::Waiting(body);
        }
    }
}

impl Forwarding {
    /// The body, for a try that must have it whole (to an endpoint that speaks HTTP/1):
    /// the try reads it, then says what it read with [`Forwarding::read`].
    pub fn take_body(&mut self) -> Option<ArrivingBody> {
        self.body.take()
    }

    /// The body, read whole by the try that took it (`None`: it could not be), is kept
    /// for later tries.
    pub fn read(&self, whole: Option<Bytes>) {
        self.ended(whole);
    }

    /// Sends the body on `stream` as it arrives (within the peer's flow-control window),
    /// then its trailer fields if it has any; keeps it for later tries while it is within
    /// the limit. When the body breaks off (the client reset its stream), the stream is
    /// reset too; when the peer resets the stream, forwarding stops.
    pub async fn run(mut self, mut stream: h2::SendStream<Bytes>) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        let mut kept = Some(BytesMut::new());
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                _ = poll_fn(|cx| stream.poll_reset(cx)) => break,
            };
            let frame = match frame {
                None => {
                    // Recorded first: the peer answers once the body has ended, and a
                    // retry of that answer must find the body whole.
                    self.ended(kept.take().map(BytesMut::freeze));
                    let _ = stream.send_data(Bytes::new(), true);
                    return;
                }
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    tracing::debug!("request body broke off: {e}");
                    stream.send_reset(h2::Reason::CANCEL);
                    break;
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    kept = kept.filter(|k| k.len() + data.len() <= self.limit);
                    if let Some(kept) = &mut kept {
                        kept.extend_from_slice(&data);
                    }
                    if send_within_window(&mut stream, data).await.is_err() {
                        break;
                    }
                }
                Err(frame) => {
                    self.ended(kept.take().map(BytesMut::freeze));
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                    }
                    return;
                }
            }
        }
        self.ended(None);
    }

    /// The body has ended: whole, as `kept`, or gone.
    fn ended(&self, kept: Option<Bytes>) {
        if let Ok(mut state) = self.state.lock() {
            *state = match kept {
                Some(bytes) => State::Whole(bytes),
                None => State::Gone,
            };
        }
    }
}
