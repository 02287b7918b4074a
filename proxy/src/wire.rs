//! Reading HTTP/1.1 messages off a connection: what the proxy's HTTP/1 client
//! ([`crate::upstream`]) and its HTTP/1 server share.
//!
//! A [`Wire`] is a TCP connection with what has been read from it and not yet used. A
//! message's head is parsed by `httparse` (hyper's parser) into [`RawFields`], spans of
//! the head's buffer, made into a header map only where one is needed; its hop-by-hop
//! fields (RFC 9110 §7.6.1) are left out as it is parsed, keeping only the Connection
//! options that decide whether the connection is used again. Bodies are framed as
//! RFC 9112 §6 says, and read whole or, chunked, taken apart as they arrive
//! ([`Dechunker`]).

use std::io;
use std::ops::Range;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Version};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

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
/// The most one read asks room for while a body is passed on as it arrives. Each piece
/// keeps the buffer it was read into until it has been sent on, and a few are on their
/// way at once: reads of up to [`READ_MAX`] held 5 MB a body (16 uploads at once took a
/// proxy from 12 to 88 MB); as much a read asks for, it gets no faster past this.
pub const STREAM_READ: usize = 64 * 1024;

/// Read buffers given up by connections that wait, kept on each thread for the next
/// read: mimalloc serves a buffer of this size through its slower general path, and a
/// connection that waits between every two requests would take one each time.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::READ_MIN;

    /// The most kept on a thread; past it they go back to the allocator.
    pub(super) const KEPT: usize = 64;

    thread_local! {
        static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// A kept buffer, or an empty one (the read that follows makes room).
    pub fn take() -> BytesMut {
        BUFFERS
            .try_with(|b| b.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Keeps `buffer` (empty) when it is of the usual size and there is room: a larger
    /// one, grown for a body, goes back to the allocator. A buffer that still shares its
    /// memory with bytes read into it (a body on its way) is kept too: it makes room
    /// again, in place or anew, when next taken.
    pub fn give(buffer: BytesMut) {
        if buffer.capacity() > 2 * READ_MIN {
            return;
        }
        let _ = BUFFERS.try_with(|b| {
            let mut kept = b.borrow_mut();
            if kept.len() < KEPT {
                kept.push(buffer);
            }
        });
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// It is longer than the reader's limit.
    TooLarge,
    /// No byte of it came for the wire's stall timeout.
    Stalled(Duration),
    /// The connection broke, or the framing was malformed; says which.
    Broken(String),
}

impl From<BodyError> for String {
    fn from(e: BodyError) -> String {
        match e {
            BodyError::TooLarge => "the body is too large".into(),
            BodyError::Stalled(after) => format!("no byte of the body for {after:?}"),
            BodyError::Broken(why) => why,
        }
    }
}

/// What a header field is to the proxy, told by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldKind {
    /// Passed on.
    #[default]
    EndToEnd,
    /// Describes one connection only (RFC 9110 §7.6.1): never passed on.
    HopByHop,
    /// Connection: hop-by-hop, with options that name more hop-by-hop fields.
    Connection,
    /// Content-Length: the message's framing, written by whoever frames it next.
    ContentLength,
    /// Transfer-Encoding: the same.
    TransferEncoding,
    /// Date: passed on, and an answer without one is given one.
    Date,
}

impl FieldKind {
    /// The kind of the field named `name`, in any case. A name is told by its length
    /// first: this runs for every field of every request and answer.
    pub fn of(name: &[u8]) -> FieldKind {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            2 if is(b"te") => FieldKind::HopByHop,
            4 if is(b"date") => FieldKind::Date,
            7 if is(b"trailer") || is(b"upgrade") => FieldKind::HopByHop,
            10 if is(b"connection") => FieldKind::Connection,
            10 if is(b"keep-alive") => FieldKind::HopByHop,
            14 if is(b"content-length") => FieldKind::ContentLength,
            16 if is(b"proxy-connection") => FieldKind::HopByHop,
            17 if is(b"transfer-encoding") => FieldKind::TransferEncoding,
            18 if is(b"proxy-authenticate") => FieldKind::HopByHop,
            19 if is(b"proxy-authorization") => FieldKind::HopByHop,
            _ => FieldKind::EndToEnd,
        }
    }
}

/// Whether a field (named in any case) describes one hop's connection, and is never
/// forwarded (RFC 9110 §7.6.1). The fields a Connection header names are hop-by-hop too.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        FieldKind::of(name),
        FieldKind::HopByHop | FieldKind::Connection
    )
}

/// Where one header field's name and value lie in the read buffer, and its kind.
#[derive(Debug, Clone)]
pub struct FieldSpan {
    pub name: Range<usize>,
    pub value: Range<usize>,
    pub kind: FieldKind,
}

/// A message's end-to-end fields as they came, in order, sharing the buffer of its head.
///
/// An endpoint's answer to an HTTP/1 client is copied out of this field by field; a
/// header map (hashing every name, a value per field) is made only where one is needed
/// ([`RawFields::to_map`], [`merge_raw_fields`]). httparse took only tokens as names and
/// only tab, visible ASCII, space and bytes over 0x7f in values: what the `http` crate's
/// header names and values accept.
#[derive(Debug, Clone, Default)]
pub struct RawFields {
    head: Bytes,
    spans: Vec<FieldSpan>,
}

impl RawFields {
    /// Each field's kind, name (as sent, in any case) and value.
    pub fn iter(&self) -> impl Iterator<Item = (FieldKind, &[u8], &[u8])> {
        self.spans.iter().map(|s| {
            let (name, value) = (&self.head[s.name.clone()], &self.head[s.value.clone()]);
            (s.kind, name, value)
        })
    }

    /// The values of the fields of `kind`, in order.
    pub fn values(&self, kind: FieldKind) -> impl Iterator<Item = &[u8]> {
        (self.spans.iter())
            .filter(move |s| s.kind == kind)
            .map(|s| &self.head[s.value.clone()])
    }

    /// Whether a field is of `kind`.
    pub fn contains(&self, kind: FieldKind) -> bool {
        self.spans.iter().any(|s| s.kind == kind)
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The fields in a header map whose values share the head's buffer, with `room` for
    /// more (growing the map later rehashes it).
    pub fn to_map(&self, room: usize) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.spans.len() + room);
        for span in &self.spans {
            // Neither fails on what httparse took.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&self.head[span.name.clone()]),
                HeaderValue::from_maybe_shared(self.head.slice(span.value.clone())),
            ) {
                headers.append(name, value);
            }
        }
        headers
    }
}

/// Puts `raw`, an endpoint's fields, into `headers`, which holds the fields the proxy set:
/// their names replace the endpoint's fields of those names.
pub fn merge_raw_fields(headers: &mut HeaderMap, raw: RawFields) {
    // The proxy's names, before any of the endpoint's go in (a few, and cheap to copy:
    // the proxy's own are static).
    let set: Vec<HeaderName> = headers.keys().cloned().collect();
    headers.reserve(raw.len());
    for span in &raw.spans {
        let name = &raw.head[span.name.clone()];
        if set
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
        {
            continue;
        }
        // Neither fails on what httparse took.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(raw.head.slice(span.value.clone())),
        ) {
            headers.append(name, value);
        }
    }
}

/// A head's end-to-end fields, and the Connection options it carried.
pub struct Fields {
    /// Without the hop-by-hop fields, which describe one connection only.
    pub raw: RawFields,
    /// The Connection field's `close` option.
    pub close: bool,
    /// Its `keep-alive` option.
    pub keep_alive: bool,
    /// An upgrade to WebSocket asked for: an `upgrade` option, and `websocket` among the
    /// Upgrade field's protocols.
    pub websocket: bool,
}

impl Fields {
    /// Whether the connection may carry another message after this one, as far as the
    /// head says (HTTP/1.1 unless `close`; HTTP/1.0 only with `keep-alive`).
    pub fn reusable(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// A connection and what has been read from it and not yet used.
pub struct Wire<S = TcpStream> {
    pub stream: S,
    pub read: BytesMut,
    /// Scratch space for parsing heads, kept so that parsing allocates nothing once it has
    /// grown.
    pub spans: Vec<FieldSpan>,
    /// Who is at the other end, for messages ("the endpoint", "the client").
    peer: &'static str,
    /// How long a message's body may go without a byte (none: as long as it takes; the
    /// caller bounds the whole exchange).
    pub stall: Option<Duration>,
    /// A read asked for more room than usual (a body's) since the buffer was taken: the
    /// memory under it may be much larger than what is left of it, and is not kept.
    grown: bool,
}

impl<S: AsyncRead + Unpin> Wire<S> {
    pub fn new(stream: S, peer: &'static str) -> Wire<S> {
        Wire {
            stream,
            read: BytesMut::new(),
            spans: Vec::new(),
            peer,
            stall: None,
            grown: false,
        }
    }

    /// Reads more, asking for at least `want` bytes of room (within bounds); `Ok(0)` at
    /// the end of the stream.
    pub async fn fill(&mut self, want: usize) -> io::Result<usize> {
        if self.read.capacity() == 0 {
            self.read = spare::take();
        }
        self.grown |= want > READ_MIN;
        self.read.reserve(want.clamp(READ_MIN, READ_MAX));
        self.stream.read_buf(&mut self.read).await
    }

    /// Gives the read buffer up while nothing is kept in it: a connection that waits (for
    /// its next request, or in a pool for its next exchange) holds no buffer, and the
    /// next read takes one. A buffer that grew for a body goes back to the allocator: a
    /// little of it left over could hold a megabyte in the thread's spares.
    pub fn release(&mut self) {
        if !self.read.is_empty() || self.read.capacity() == 0 {
            return;
        }
        let buffer = std::mem::take(&mut self.read);
        if !std::mem::take(&mut self.grown) {
            spare::give(buffer);
        }
    }

    /// Like [`Wire::fill`], for a part of a message that must come: the end of the
    /// stream or an error says what was `missing` (only then described).
    pub async fn fill_within(
        &mut self,
        want: usize,
        missing: impl FnOnce() -> String,
    ) -> Result<(), BodyError> {
        let read = match self.stall {
            None => self.fill(want).await,
            Some(stall) => match tokio::time::timeout(stall, self.fill(want)).await {
                Ok(read) => read,
                Err(_) => return Err(BodyError::Stalled(stall)),
            },
        };
        match read {
            Ok(0) => Err(BodyError::Broken(format!(
                "{} closed the connection before {}",
                self.peer,
                missing()
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(BodyError::Broken(format!(
                "the connection broke before {}: {e}",
                missing()
            ))),
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
            .await?;
        }
        Ok(self.read.split_to(length).freeze())
    }
}

/// What a body reader took from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes of the body.
    Data(Bytes),
    /// The body is complete.
    End,
    /// Nothing more can be taken until more bytes arrive.
    More,
}

/// Takes a chunked body (RFC 9112 §7.1) apart as its bytes arrive: each step takes what
/// it can from the front of the buffer, so a body can be read whole or passed on piece
/// by piece. Chunk extensions are ignored; the trailer fields are skipped.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    /// At a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk, with this many of its bytes still to come.
    Data(u64),
    /// After a chunk's bytes, at the CRLF that ends it.
    DataEnd,
    /// After the last chunk, among the trailer fields.
    Trailers,
    Done,
}

impl Dechunker {
    /// The next piece from the front of `read`, taking it out.
    pub fn step(&mut self, read: &mut BytesMut) -> Result<Piece, String> {
        loop {
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(read) {
                    Ok(httparse::Status::Complete((line, size))) => {
                        read.advance(line);
                        self.state = match size {
                            0 => ChunkState::Trailers,
                            n => ChunkState::Data(n),
                        };
                    }
                    Ok(httparse::Status::Partial) if read.len() > MAX_HEAD_BYTES => {
                        return Err("a chunk-size line is too long".into());
                    }
                    Ok(httparse::Status::Partial) => return Ok(Piece::More),
                    Err(_) => return Err("malformed chunk size".into()),
                },
                ChunkState::Data(left) => {
                    if read.is_empty() {
                        return Ok(Piece::More);
                    }
                    let taken = usize::try_from(left).map_or(read.len(), |l| l.min(read.len()));
                    let rest = left - taken as u64;
                    self.state = match rest {
                        0 => ChunkState::DataEnd,
                        n => ChunkState::Data(n),
                    };
                    return Ok(Piece::Data(read.split_to(taken).freeze()));
                }
                ChunkState::DataEnd => {
                    if read.len() < 2 {
                        return Ok(Piece::More);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err("a chunk does not end with CRLF".into());
                    }
                    read.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => match read.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        read.advance(2);
                        self.state = ChunkState::Done;
                    }
                    Some(at) => read.advance(at + 2),
                    None if read.len() > MAX_HEAD_BYTES => {
                        return Err("the trailer fields are too long".into());
                    }
                    None => return Ok(Piece::More),
                },
                ChunkState::Done => return Ok(Piece::End),
            }
        }
    }

    /// How many bytes the body needs next, at least (what to make room for).
    pub fn wants(&self) -> usize {
        match self.state {
            ChunkState::Data(left) => usize::try_from(left.saturating_add(2)).unwrap_or(usize::MAX),
            _ => READ_MIN,
        }
    }
}

/// Reads what is left of a body, piece by piece.
pub enum BodyReader {
    /// This many bytes.
    Length(u64),
    Chunked(Dechunker),
    /// Everything up to the close.
    UntilClose,
}

impl BodyReader {
    /// The next piece from the front of `read`.
    pub fn step(&mut self, read: &mut BytesMut) -> Result<Piece, String> {
        match self {
            BodyReader::Length(0) => Ok(Piece::End),
            BodyReader::Chunked(dechunker) => dechunker.step(read),
            _ if read.is_empty() => Ok(Piece::More),
            BodyReader::Length(left) => {
                let taken = usize::try_from(*left).map_or(read.len(), |l| l.min(read.len()));
                *left -= taken as u64;
                Ok(Piece::Data(read.split_to(taken).freeze()))
            }
            BodyReader::UntilClose => Ok(Piece::Data(read.split().freeze())),
        }
    }

    /// How many bytes to make room for next: what the body still needs, up to
    /// [`STREAM_READ`].
    pub fn wants(&self) -> usize {
        let left = match self {
            BodyReader::Length(left) => usize::try_from(*left).unwrap_or(usize::MAX),
            BodyReader::Chunked(dechunker) => dechunker.wants(),
            BodyReader::UntilClose => usize::MAX,
        };
        left.min(STREAM_READ)
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
            kind: FieldKind::of(field.name.as_bytes()),
        }
    }));
}

/// The fields at `spans` in `head` (a head taken out of the buffer they were noted in):
/// the end-to-end ones, and the Connection options. A Connection option other than
/// `close` and `keep-alive` names a field that is hop-by-hop too, but for the framing
/// fields: naming Transfer-Encoding must not make a chunked body look like none (a
/// request smuggling trick), so they stay, and the message is framed by them.
pub fn scan(head: Bytes, spans: &[FieldSpan]) -> Fields {
    let (mut close, mut keep_alive, mut names_fields, mut upgrade) = (false, false, false, false);
    let options = spans
        .iter()
        .filter(|s| s.kind == FieldKind::Connection)
        .flat_map(|s| head[s.value.clone()].split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    for option in options.clone() {
        if option.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if option.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        } else if option.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
            names_fields = true;
        } else {
            names_fields |= !option.is_empty();
        }
    }
    let named = |span: &FieldSpan| {
        let name = &head[span.name.clone()];
        options.clone().any(|o| o.eq_ignore_ascii_case(name))
    };
    let kept = spans
        .iter()
        .filter(|s| !matches!(s.kind, FieldKind::HopByHop | FieldKind::Connection))
        .filter(|s| {
            let framing = matches!(
                s.kind,
                FieldKind::ContentLength | FieldKind::TransferEncoding
            );
            !names_fields || framing || !named(s)
        })
        .cloned()
        .collect();
    let websocket = upgrade
        && spans
            .iter()
            .filter(|s| head[s.name.clone()].eq_ignore_ascii_case(b"upgrade"))
            .flat_map(|s| head[s.value.clone()].split(|&b| b == b','))
            .any(|protocol| {
                let name = protocol.trim_ascii().split(|&b| b == b'/').next();
                name.is_some_and(|n| n.eq_ignore_ascii_case(b"websocket"))
            });
    Fields {
        raw: RawFields { head, spans: kept },
        close,
        keep_alive,
        websocket,
    }
}

/// The Content-Length of a message, from the `values` of its Content-Length fields:
/// `None` without one; an error when a value is not a number or the values differ (a
/// value may be a list, `5, 5`).
pub fn content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    what: &str,
) -> Result<Option<u64>, String> {
    let mut length = None;
    let mut agree = |n: u64| match length {
        Some(seen) if seen != n => Err(format!(
            "the {what} has differing Content-Lengths ({seen} and {n})"
        )),
        _ => {
            length = Some(n);
            Ok(())
        }
    };
    for value in values {
        // The common case: the value is one number.
        if let Some(n) = digits(value) {
            agree(n)?;
            continue;
        }
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            let n = digits(token).ok_or_else(|| {
                format!(
                    "invalid Content-Length {:?} in the {what}",
                    String::from_utf8_lossy(token)
                )
            })?;
            agree(n)?;
        }
    }
    Ok(length)
}

/// Whether the last transfer coding of a message is chunked, from the `values` of its
/// Transfer-Encoding fields (`None` without any).
pub fn chunked<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<bool> {
    let mut last = None;
    for value in values {
        last = Some(
            value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default()
                .trim_ascii(),
        );
    }
    last.map(|coding| coding.eq_ignore_ascii_case(b"chunked"))
}

/// Writes `n` in decimal.
pub fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `message` to a dechunker `split` bytes at a time; returns the body and the
    /// bytes left after it, or the error.
    fn dechunk(message: &[u8], split: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut dechunker = Dechunker::default();
        let (mut read, mut body, mut fed) = (BytesMut::new(), Vec::new(), 0);
        loop {
            match dechunker.step(&mut read)? {
                Piece::Data(data) => body.extend_from_slice(&data),
                Piece::End => return Ok((body, read.to_vec())),
                Piece::More if fed == message.len() => return Err("incomplete".into()),
                Piece::More => {
                    let end = (fed + split).min(message.len());
                    read.extend_from_slice(&message[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn a_chunked_body_comes_apart_the_same_however_its_bytes_arrive() {
        let message = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        for split in [1, 2, 3, 7, 16, message.len()] {
            let (body, left) = dechunk(message, split).unwrap();
            assert_eq!(body, b"hello, world", "split {split}");
            // What follows the body belongs to the next message; a byte at a time leaves
            // none of it read.
            assert!(b"NEXT".starts_with(&left), "split {split}: {left:?}");
        }
    }

    #[test]
    fn a_large_chunk_is_passed_on_as_its_bytes_arrive() {
        let mut dechunker = Dechunker::default();
        let mut read = BytesMut::from(&b"100000\r\nabc"[..]);
        assert_eq!(
            dechunker.step(&mut read),
            Ok(Piece::Data(Bytes::from("abc")))
        );
        assert_eq!(dechunker.step(&mut read), Ok(Piece::More));
        assert_eq!(dechunker.wants(), 0x100000 - 3 + 2);
    }

    #[tokio::test]
    async fn a_waiting_wire_holds_no_buffer_and_what_was_read_stays_whole() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut wire = Wire::new(server, "the client");
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        wire.fill(0).await.unwrap();
        // The head is taken out and kept (as a request's fields share its buffer)...
        let first = wire.read.split_to(wire.read.len()).freeze();
        // ... and the wire, with nothing left in it, gives its buffer up.
        wire.release();
        assert_eq!(wire.read.capacity(), 0);
        for path in [b"/b", b"/c"] {
            client.write_all(b"GET ").await.unwrap();
            client.write_all(path).await.unwrap();
            client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
            wire.fill(0).await.unwrap();
            assert!(wire.read.starts_with(b"GET "));
            assert_eq!(&wire.read[4..6], path);
            wire.read.clear();
            wire.release();
            assert_eq!(wire.read.capacity(), 0);
        }
        // What was read before is untouched by the reads into the buffer given back.
        assert_eq!(&first[..], b"GET /a HTTP/1.1\r\n\r\n");
        // A wire with bytes not yet used keeps them.
        client.write_all(b"GET /d").await.unwrap();
        wire.fill(0).await.unwrap();
        wire.release();
        assert_eq!(&wire.read[..], b"GET /d");
    }

    #[tokio::test]
    async fn a_buffer_grown_for_a_body_is_not_kept() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(512 * 1024);
        let mut wire = Wire::new(server, "the client");
        // A body read into room made for 300 KiB, 10 KiB of it left over.
        let (room, length) = (300 * 1024, 290 * 1024);
        client.write_all(&vec![b'x'; length]).await.unwrap();
        while wire.read.len() < length {
            wire.fill(room - wire.read.len()).await.unwrap();
        }
        let body = wire.read.split_to(length).freeze();
        assert!((1..=2 * READ_MIN).contains(&wire.read.capacity()));
        drop(body);
        // What is left of the buffer is little, but the memory under it is the body's.
        wire.release();
        assert_eq!(wire.read.capacity(), 0);
        assert_eq!(spare::take().capacity(), 0, "kept in the thread's spares");
    }

    #[test]
    fn only_so_many_buffers_of_the_usual_size_are_kept() {
        // One grown for a body goes back to the allocator.
        spare::give(BytesMut::with_capacity(READ_MAX));
        assert_eq!(spare::take().capacity(), 0);
        spare::give(BytesMut::with_capacity(READ_MIN));
        assert!(spare::take().capacity() >= READ_MIN);
        for _ in 0..spare::KEPT + 10 {
            spare::give(BytesMut::with_capacity(READ_MIN));
        }
        let kept = std::iter::from_fn(|| Some(spare::take()).filter(|b| b.capacity() > 0));
        assert_eq!(kept.count(), spare::KEPT);
    }

    #[test]
    fn malformed_chunks_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 3] = [
            (b"zz\r\nhello\r\n0\r\n\r\n", "malformed chunk size"),
            (b"5\r\nhelloXX0\r\n\r\n", "a chunk does not end with CRLF"),
            (b"5\r\nhello\r\n0\r\n", "incomplete"),
        ];
        for (message, reason) in cases {
            assert_eq!(dechunk(message, 4), Err(reason.to_string()));
        }
        let mut long = b"5;".to_vec();
        long.resize(MAX_HEAD_BYTES + 2, b'a');
        assert_eq!(
            dechunk(&long, long.len()),
            Err("a chunk-size line is too long".to_string())
        );
    }
}
