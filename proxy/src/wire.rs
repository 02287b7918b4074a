//! Reading HTTP/1.1 messages off a connection: what the proxy's HTTP/1 client
//! ([`crate::upstream`]) and its HTTP/1 server share.
//!
//! A [`Wire`] is a TCP connection with what has been read from it and not yet used. A
//! message's head is parsed by `httparse` (hyper's parser) into a header map whose values
//! share the head's buffer; its hop-by-hop fields (RFC 9110 §7.6.1) are left out as it is
//! parsed, keeping only the Connection options that decide whether the connection is
//! used again. Bodies are framed as RFC 9112 §6 says and read whole.

use std::io;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Version};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::outbound::is_hop_by_hop;

/// The most header fields a message may carry (hyper's limit).
pub const MAX_HEADERS: usize = 100;
/// The largest message head (start line and header fields) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A body up to this size goes out in the same write as its message's head (one system
/// call); a larger one is written after it rather than copied.
pub const COALESCED_BODY: usize = 16 * 1024;
/// What one read asks room for at least, and at most while a long body comes in.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// It is longer than the reader's limit.
    TooLarge,
    /// The connection broke, or the framing was malformed; says which.
    Broken(String),
}

impl From<BodyError> for String {
    fn from(e: BodyError) -> String {
        match e {
            BodyError::TooLarge => "the body is too large".into(),
            BodyError::Broken(why) => why,
        }
    }
}

/// Where one header field's name and value lie in the read buffer.
pub struct FieldSpan {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A head's end-to-end fields, and the Connection options it carried.
pub struct Fields {
    /// Without the hop-by-hop fields, which describe one connection only.
    pub headers: HeaderMap,
    /// The Connection field's `close` option.
    pub close: bool,
    /// Its `keep-alive` option.
    pub keep_alive: bool,
}

impl Fields {
    /// Whether the connection may carry another message after this one, as far as the
    /// head says (HTTP/1.1 unless `close`; HTTP/1.0 only with `keep-alive`).
    pub fn reusable(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// A connection and what has been read from it and not yet used.
pub struct Wire {
    pub stream: TcpStream,
    pub read: BytesMut,
    /// Scratch space for parsing heads, kept so that parsing allocates nothing once it has
    /// grown.
    pub spans: Vec<FieldSpan>,
    /// Who is at the other end, for messages ("the endpoint", "the client").
    peer: &'static str,
}

impl Wire {
    pub fn new(stream: TcpStream, peer: &'static str) -> Wire {
        Wire {
            stream,
            read: BytesMut::new(),
            spans: Vec::new(),
            peer,
        }
    }

    /// Reads more, asking for at least `want` bytes of room (within bounds); `Ok(0)` at
    /// the end of the stream.
    pub async fn fill(&mut self, want: usize) -> io::Result<usize> {
        self.read.reserve(want.clamp(READ_MIN, READ_MAX));
        self.stream.read_buf(&mut self.read).await
    }

    /// Like [`Wire::fill`], for a part of a message that must come: the end of the
    /// stream or an error says what was `missing` (only then described).
    pub async fn fill_within(
        &mut self,
        want: usize,
        missing: impl FnOnce() -> String,
    ) -> Result<(), String> {
        match self.fill(want).await {
            Ok(0) => Err(format!(
                "{} closed the connection before {}",
                self.peer,
                missing()
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("the connection broke before {}: {e}", missing())),
        }
    }

    /// A body of `length` bytes, refused when longer than `limit`.
    pub async fn read_length(&mut self, length: u64, limit: usize) -> Result<Bytes, BodyError> {
        let length = usize::try_from(length)
            .ok()
            .filter(|&l| l <= limit)
            .ok_or(BodyError::TooLarge)?;
        while self.read.len() < length {
            let have = self.read.len();
            self.fill_within(length - have, || {
                format!("the whole body ({have} of {length} bytes)")
            })
            .await
            .map_err(BodyError::Broken)?;
        }
        Ok(self.read.split_to(length).freeze())
    }

    /// A chunked body, joined, refused once longer than `limit`; the trailer fields are
    /// skipped (bodies are passed on whole, without trailers).
    pub async fn read_chunked(&mut self, limit: usize) -> Result<Bytes, BodyError> {
        let broken = |why: &str| BodyError::Broken(why.to_string());
        let mut body = BytesMut::new();
        loop {
            let (line, size) = match httparse::parse_chunk_size(&self.read) {
                Ok(httparse::Status::Complete(found)) => found,
                Ok(httparse::Status::Partial) if self.read.len() > MAX_HEAD_BYTES => {
                    return Err(broken("a chunk-size line is too long"));
                }
                Ok(httparse::Status::Partial) => {
                    self.fill_within(READ_MIN, || "the end of the chunked body".into())
                        .await
                        .map_err(BodyError::Broken)?;
                    continue;
                }
                Err(_) => return Err(broken("malformed chunk size")),
            };
            if size == 0 {
                self.read.advance(line);
                self.skip_trailers().await.map_err(BodyError::Broken)?;
                return Ok(body.freeze());
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|s| body.len().saturating_add(*s) <= limit)
                .ok_or(BodyError::TooLarge)?;
            let end = size
                .checked_add(line)
                .and_then(|e| e.checked_add(2))
                .ok_or(BodyError::TooLarge)?;
            while self.read.len() < end {
                self.fill_within(end - self.read.len(), || "the end of a chunk".into())
                    .await
                    .map_err(BodyError::Broken)?;
            }
            if &self.read[end - 2..end] != b"\r\n" {
                return Err(broken("a chunk does not end with CRLF"));
            }
            body.extend_from_slice(&self.read[line..end - 2]);
            self.read.advance(end);
        }
    }

    /// Skips the trailer fields after the last chunk, up to the empty line.
    async fn skip_trailers(&mut self) -> Result<(), String> {
        loop {
            match self.read.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.read.advance(2);
                    return Ok(());
                }
                Some(at) => self.read.advance(at + 2),
                None if self.read.len() > MAX_HEAD_BYTES => {
                    return Err("the trailer fields are too long".into());
                }
                None => {
                    self.fill_within(READ_MIN, || "the end of the trailer fields".into())
                        .await?;
                }
            }
        }
    }

    /// A body that runs to the end of the stream.
    pub async fn read_until_close(&mut self) -> Result<Bytes, String> {
        loop {
            match self.fill(READ_MAX).await {
                Ok(0) => return Ok(self.read.split().freeze()),
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "the connection broke before the end of the body: {e}"
                    ));
                }
            }
        }
    }
}

/// Notes where httparse found each field of a head in `buffer` (which starts at `base`),
/// so that the values can share the buffer once the head is taken out of it.
pub fn note_spans(spans: &mut Vec<FieldSpan>, base: *const u8, fields: &[httparse::Header]) {
    let base = base as usize;
    spans.clear();
    spans.extend(fields.iter().map(|field| {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        FieldSpan {
            name: name..name + field.name.len(),
            value: value..value + field.value.len(),
        }
    }));
}

/// The fields at `spans` in `head` (a head taken out of the buffer they were noted in):
/// end-to-end fields in a header map whose values share `head`, and the Connection
/// options. A Connection option other than `close` and `keep-alive` names a field that is
/// hop-by-hop too. `what` names the message in errors ("answer", "request").
pub fn fields(head: &Bytes, spans: &[FieldSpan], what: &str) -> Result<Fields, String> {
    let field = |range: &Range<usize>| &head[range.clone()];
    let (mut close, mut keep_alive, mut names_fields) = (false, false, false);
    let options = spans
        .iter()
        .filter(|s| field(&s.name).eq_ignore_ascii_case(b"connection"))
        .flat_map(|s| field(&s.value).split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    for option in options.clone() {
        if option.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if option.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        } else {
            names_fields |= !option.is_empty();
        }
    }
    // Room for the few fields the proxy adds (x-fulcrum-upstream, -cluster, -attempts):
    // growing the map afterwards rehashes it.
    let mut headers = HeaderMap::with_capacity(spans.len() + 4);
    for span in spans {
        let name = field(&span.name);
        if is_hop_by_hop(name)
            || (names_fields && options.clone().any(|o| o.eq_ignore_ascii_case(name)))
        {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| {
            format!(
                "malformed {what}: header name {:?}",
                String::from_utf8_lossy(name)
            )
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.clone()))
            .map_err(|_| format!("malformed {what}: value of {name}"))?;
        headers.append(name, value);
    }
    Ok(Fields {
        headers,
        close,
        keep_alive,
    })
}

/// The comma-separated tokens of every `name` field, trimmed.
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// The Content-Length of a message: `None` without one; an error when a value is not a
/// number or the values differ.
pub fn content_length(headers: &HeaderMap, what: &str) -> Result<Option<u64>, String> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let (Some(first), None) = (values.next(), values.next()) else {
        return content_lengths(headers, what);
    };
    // The common case: one field with one number.
    match digits(first.as_bytes()) {
        Some(n) => Ok(Some(n)),
        None => content_lengths(headers, what),
    }
}

/// [`content_length`] when there is none, or several, or a list.
fn content_lengths(headers: &HeaderMap, what: &str) -> Result<Option<u64>, String> {
    let mut length = None;
    for value in tokens(headers, &http::header::CONTENT_LENGTH) {
        match (digits(value), length) {
            (None, _) => {
                return Err(format!(
                    "invalid Content-Length {:?} in the {what}",
                    String::from_utf8_lossy(value)
                ));
            }
            (Some(n), Some(seen)) if n != seen => {
                return Err(format!(
                    "the {what} has differing Content-Lengths ({seen} and {n})"
                ));
            }
            (Some(n), _) => length = Some(n),
        }
    }
    Ok(length)
}

/// Whether the last transfer coding of a message is chunked (`None` without
/// Transfer-Encoding).
pub fn chunked(headers: &HeaderMap) -> Option<bool> {
    if !headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    let last = tokens(headers, &http::header::TRANSFER_ENCODING).last();
    Some(last.is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked")))
}

/// A decimal number of one or more digits, with nothing else (no sign, no space).
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Whether a failed read or write means the peer had closed the connection.
pub fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}
