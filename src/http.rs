//! HTTP/1.1 with every limit a server facing the open internet needs:
//! header size, body size, read deadlines and strict message framing.
//!
//! tiny_http 0.12 sets no read timeout, does not bound headers and accepts
//! ambiguous framing, and a user of it cannot change that from outside. So
//! this module reads requests itself with `httparse` (the parser hyper
//! uses), on non-blocking sockets that one thread serves in an event loop
//! (`event_loop`). A request that waits for its commit ties up no thread:
//! the writer answers it through a `Later`.
//!
//! * The request head must arrive within `Limits::header_timeout` of its
//!   first byte and fit in `Limits::max_header_bytes`; a connection idle
//!   for `Limits::idle_timeout` between requests is closed.
//! * Ambiguous framing gets 400 and closes the connection, so no bytes can
//!   be read as a second request. Ambiguous means both Transfer-Encoding
//!   and Content-Length, a Content-Length that is not a number, two
//!   different Content-Lengths, or a head line that ends in LF without CR.
//! * A declared body over `Limits::max_body` gets 413 before it is read;
//!   a chunked body is cut off at the limit with 413.
//! * `Expect: 100-continue` gets the interim 100 response once the head is
//!   accepted; other expectations get 417.
//! * A request rejected before its body was read closes the connection.
//! * A connection whose bytes end before a request does (no complete head,
//!   or a body shorter than announced) is closed without a response,
//!   because there is no complete request to respond to.

use std::net::SocketAddr;
use std::time::Duration;

mod event_loop;

pub use event_loop::{serve, wake_listener, Later};

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted body, in bytes.
    pub max_body: usize,
    /// Largest request line plus headers, in bytes.
    pub max_header_bytes: usize,
    /// Time allowed for a whole request head once its first byte arrived.
    pub header_timeout: Duration,
    /// Time allowed for a whole body once the head was read.
    pub body_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time allowed for writing a response.
    pub write_timeout: Duration,
    /// Time a request may wait for a `Later` answer before it gets 503.
    pub answer_timeout: Duration,
    /// Connections served at once. More get a 503 response and are closed.
    pub max_connections: usize,
}

/// Most headers accepted in one request.
const MAX_HEADERS: usize = 64;

/// The request line and headers of a request.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string, without the `?`.
    pub query: Option<String>,
    /// Header names lowercased, values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    pub peer: SocketAddr,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    body: Framing,
}

impl Head {
    /// Returns the first header named `name` (lowercase) as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// Returns the declared body length, if the body is not chunked.
    pub fn content_length(&self) -> Option<u64> {
        match self.body {
            Framing::Length(length) => Some(length),
            Framing::Chunked => None,
        }
    }

    fn has_body(&self) -> bool {
        self.body != Framing::Length(0)
    }

    fn wants_close(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let tokens: Vec<&str> = connection.split(',').map(str::trim).collect();
        if self.minor_version == 0 {
            !tokens.contains(&"keep-alive")
        } else {
            tokens.contains(&"close")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    /// Builds a response with a JSON body.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        let mut text = body.to_string();
        text.push('\n');
        Response {
            status,
            headers: vec![("Content-Type", "application/json".to_string())],
            body: text.into_bytes(),
            close: false,
        }
    }

    /// Builds a response with a one-line JSON error body `{"error": reason}`.
    pub fn error(status: u16, reason: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": reason }))
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }
}

/// The application behind the HTTP layer: routing, checks and responses.
pub trait Handler: Send + Sync + 'static {
    /// Decides from the head alone whether to read the body. An `Err`
    /// answers at once without reading the body.
    fn check(&self, head: &Head) -> Result<(), Response>;

    /// Answers a request whose body has been read in full: at once, by
    /// returning the response, or from any thread through `later`, by
    /// returning None.
    fn handle(&self, head: &Head, body: Vec<u8>, later: Later) -> Option<Response>;

    /// Called for every request answered, for logging and metrics, with the
    /// body size and the time from the head's arrival to the answer.
    fn record(&self, head: Option<&Head>, status: u16, body_bytes: usize, elapsed: Duration);
}

/// A request that is bad, with the response that explains why. The
/// connection closes after it.
struct Rejection(Response);

/// Runs the handler's check, then the checks that need the limits.
fn check_head(head: &Head, handler: &dyn Handler, limits: &Limits) -> Result<(), Response> {
    if let Some(expect) = head.header("expect") {
        if !expect.trim().eq_ignore_ascii_case("100-continue") {
            return Err(Response::error(417, "only 'Expect: 100-continue' is supported").closing());
        }
    }
    handler.check(head)?;
    // Without a length or chunked framing a POST body cannot be delimited
    // (HTTP/1.0 clients may mean "until the connection closes").
    if head.method == "POST" && head.header("content-length").is_none() && head.header("transfer-encoding").is_none() {
        return Err(Response::error(411, "send the body with a Content-Length header or chunked encoding").closing());
    }
    if let Some(length) = head.content_length() {
        if length > limits.max_body as u64 {
            return Err(Response::error(
                413,
                &format!("body of {length} bytes is over the limit of {} bytes", limits.max_body),
            )
            .closing());
        }
    }
    Ok(())
}

fn too_large_head(limits: &Limits) -> Rejection {
    Rejection(Response::error(
        431,
        &format!("request line and headers are over the limit of {} bytes", limits.max_header_bytes),
    ))
}

fn skip_empty_lines(buffer: &mut Vec<u8>) {
    let blank = buffer.iter().take_while(|byte| **byte == b'\r' || **byte == b'\n').count();
    buffer.drain(..blank);
}

/// Returns the index just past the blank line that ends the head.
fn find_head_end(buffer: &[u8], from: usize) -> Option<usize> {
    buffer[from..]
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|position| from + position + 4)
}

/// Returns true if `bytes` has an LF not preceded by CR at or after `from`.
fn has_bare_line_feed(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len()).any(|index| bytes[index] == b'\n' && (index == 0 || bytes[index - 1] != b'\r'))
}

fn bad_request(reason: &str) -> Rejection {
    Rejection(Response::error(400, reason))
}

fn parse_head(bytes: &[u8], peer: SocketAddr) -> Result<Head, Rejection> {
    let mut header_slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut header_slots);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad_request("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection(Response::error(431, &format!("more than {MAX_HEADERS} request headers"))))
        }
        Err(error) => return Err(bad_request(&format!("malformed request: {error}"))),
    }

    let method = request.method.unwrap_or_default().to_string();
    let target = request.path.unwrap_or_default();
    // An absolute-form target (http://host/path?query) names the path after
    // the authority; an origin-form target starts with '/'. The query is
    // split off first, so a URL inside it cannot be taken for the path.
    let (target, query) = match target.split_once('?') {
        Some((target, query)) => (target, Some(query.to_string())),
        None => (target, None),
    };
    let target = match (target.starts_with('/'), target.find("://")) {
        (false, Some(scheme_end)) => {
            let after = &target[scheme_end + 3..];
            after.find('/').map_or("/", |slash| &after[slash..])
        }
        _ => target,
    };
    let path = normalize_path(target);
    let headers: Vec<(String, Vec<u8>)> =
        request.headers.iter().map(|header| (header.name.to_ascii_lowercase(), header.value.to_vec())).collect();

    let body = framing(&headers)?;
    Ok(Head { method, path, query, headers, peer, minor_version: request.version.unwrap_or(1), body })
}

/// Decodes percent-escaped unreserved characters (RFC 3986 section 6.2.2.2
/// makes `%2D` and `-` equivalent) and merges repeated slashes. Other
/// escapes stay as sent.
fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut normalized = String::with_capacity(path.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' && index + 2 < bytes.len() {
            let decoded = std::str::from_utf8(&bytes[index + 1..index + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .filter(|decoded| decoded.is_ascii_alphanumeric() || b"-._~".contains(decoded));
            if let Some(decoded) = decoded {
                normalized.push(decoded as char);
                index += 3;
                continue;
            }
        }
        if byte == b'/' && normalized.ends_with('/') {
            index += 1;
            continue;
        }
        // Copy one whole UTF-8 character.
        let width = path[index..].chars().next().map_or(1, char::len_utf8);
        normalized.push_str(&path[index..index + width]);
        index += width;
    }
    normalized
}

/// Decides how the body is delimited, rejecting ambiguous framing that
/// could let a proxy and this server disagree on where a request ends.
fn framing(headers: &[(String, Vec<u8>)]) -> Result<Framing, Rejection> {
    let mut length: Option<u64> = None;
    let mut has_transfer_encoding = false;

    for (name, value) in headers {
        match name.as_str() {
            "content-length" => {
                let text = std::str::from_utf8(value).map_err(|_| bad_request("Content-Length is not a number"))?;
                // A repeated header may also come as one comma-separated list.
                for part in text.split(',') {
                    let part = part.trim();
                    if part.is_empty() || !part.bytes().all(|byte| byte.is_ascii_digit()) {
                        return Err(bad_request(&format!("Content-Length '{text}' is not a number")));
                    }
                    // Only digits remain, so a parse failure means the
                    // number does not fit in 64 bits, which is over any limit.
                    let parsed: u64 = part.parse().map_err(|_| {
                        Rejection(Response::error(413, &format!("Content-Length '{text}' is over the body size limit")))
                    })?;
                    if length.is_some_and(|seen| seen != parsed) {
                        return Err(bad_request("conflicting Content-Length headers"));
                    }
                    length = Some(parsed);
                }
            }
            "transfer-encoding" => {
                has_transfer_encoding = true;
                let text = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
                if text != "chunked" {
                    return Err(bad_request(&format!(
                        "Transfer-Encoding '{text}' is not supported; send chunked or Content-Length"
                    )));
                }
            }
            _ => {}
        }
    }

    match (has_transfer_encoding, length) {
        (true, Some(_)) => Err(bad_request("both Transfer-Encoding and Content-Length are set")),
        (true, None) => Ok(Framing::Chunked),
        (false, length) => Ok(Framing::Length(length.unwrap_or(0))),
    }
}

fn body_too_large(limits: &Limits) -> Rejection {
    Rejection(Response::error(413, &format!("body is over the limit of {} bytes", limits.max_body)))
}

/// Decodes a chunked body as its bytes arrive, stopping with 413 as soon
/// as it passes the limit.
#[derive(Debug, Default)]
struct ChunkedBody {
    body: Vec<u8>,
    phase: ChunkPhase,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkPhase {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes of it still to come.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Expecting trailer fields up to the blank line.
    Trailer,
}

/// Chunk-size lines and trailers are short; this bounds each of them.
const MAX_CHUNK_LINE: usize = 4096;

impl ChunkedBody {
    /// Consumes what it can of `input`. Returns the body once its last
    /// chunk and trailer are complete, or None while more bytes are needed.
    fn advance(&mut self, input: &mut Vec<u8>, limits: &Limits) -> Result<Option<Vec<u8>>, Rejection> {
        // The consumed bytes are removed once, at the end: removing them
        // chunk by chunk moved the rest of the buffer each time, which cost
        // about a second of CPU for a 1 MiB body in 1-byte chunks.
        let mut position = 0;
        let result = self.advance_from(input, &mut position, limits);
        input.drain(..position);
        result
    }

    fn advance_from(
        &mut self,
        input: &[u8],
        position: &mut usize,
        limits: &Limits,
    ) -> Result<Option<Vec<u8>>, Rejection> {
        loop {
            let rest = &input[*position..];
            match self.phase {
                ChunkPhase::Size => {
                    let Some(line) = next_line(rest)? else {
                        return Ok(None);
                    };
                    *position += line.len() + 2;
                    let size_text = String::from_utf8_lossy(line);
                    let size_text = size_text.split(';').next().unwrap_or("").trim();
                    if size_text.is_empty() || !size_text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                        return Err(bad_request(&format!("invalid chunk size '{size_text}'")));
                    }
                    let size = usize::from_str_radix(size_text, 16).map_err(|_| body_too_large(limits))?;
                    if size == 0 {
                        self.phase = ChunkPhase::Trailer;
                    } else if self.body.len().checked_add(size).is_none_or(|total| total > limits.max_body) {
                        return Err(body_too_large(limits));
                    } else {
                        self.phase = ChunkPhase::Data(size);
                    }
                }
                ChunkPhase::Data(remaining) => {
                    let taken = remaining.min(rest.len());
                    self.body.extend_from_slice(&rest[..taken]);
                    *position += taken;
                    if taken < remaining {
                        self.phase = ChunkPhase::Data(remaining - taken);
                        return Ok(None);
                    }
                    self.phase = ChunkPhase::DataEnd;
                }
                ChunkPhase::DataEnd => {
                    // Checked byte by byte, so that a bare LF is rejected at
                    // once instead of waiting for a second byte.
                    let expected = &b"\r\n"[..rest.len().min(2)];
                    if &rest[..expected.len()] != expected {
                        return Err(bad_request("chunk data is not followed by CRLF"));
                    }
                    if rest.len() < 2 {
                        return Ok(None);
                    }
                    *position += 2;
                    self.phase = ChunkPhase::Size;
                }
                ChunkPhase::Trailer => {
                    // Trailer fields are read and ignored.
                    let Some(line) = next_line(rest)? else {
                        return Ok(None);
                    };
                    *position += line.len() + 2;
                    if line.is_empty() {
                        return Ok(Some(std::mem::take(&mut self.body)));
                    }
                    self.trailer_bytes += line.len();
                    if self.trailer_bytes > MAX_CHUNK_LINE {
                        return Err(bad_request("chunked trailer is too long"));
                    }
                }
            }
        }
    }
}

/// Returns the CRLF-terminated line at the start of `bytes`, without the
/// CRLF, or None while the line is incomplete. A line that ends in a bare
/// LF is rejected, as in the head, rather than waited on until the read
/// timeout.
fn next_line(bytes: &[u8]) -> Result<Option<&[u8]>, Rejection> {
    let searched = &bytes[..bytes.len().min(MAX_CHUNK_LINE + 2)];
    match searched.iter().position(|byte| *byte == b'\n') {
        Some(end) if end > 0 && bytes[end - 1] == b'\r' => Ok(Some(&bytes[..end - 1])),
        Some(_) => Err(bad_request("a line of the chunked body ends in LF without CR; end each line with CRLF")),
        None if bytes.len() > MAX_CHUNK_LINE => Err(bad_request("chunk header line is too long")),
        None => Ok(None),
    }
}

/// Returns the standard reason phrase of an HTTP status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends `response` to `out` as HTTP/1.1 bytes, leaving out the body for
/// a response to HEAD.
fn encode_response(response: &Response, with_body: bool, out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", response.status, reason_phrase(response.status));
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    if response.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if with_body {
        out.extend_from_slice(&response.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())).collect()
    }

    #[test]
    fn path_normalization() {
        assert_eq!(normalize_path("/hooks/email%2Dbounced"), "/hooks/email-bounced");
        assert_eq!(normalize_path("/hooks/%65mail-bounced"), "/hooks/email-bounced");
        assert_eq!(normalize_path("//hooks///x"), "/hooks/x");
        assert_eq!(normalize_path("/hooks/a%2Fb"), "/hooks/a%2Fb");
        assert_eq!(normalize_path("/hooks/%"), "/hooks/%");
        assert_eq!(normalize_path("/hooks/é%4"), "/hooks/é%4");
    }

    #[test]
    fn framing_rules() {
        assert!(matches!(framing(&headers(&[("content-length", "12")])), Ok(Framing::Length(12))));
        assert!(matches!(framing(&headers(&[("content-length", "5, 5")])), Ok(Framing::Length(5))));
        assert!(matches!(framing(&headers(&[("transfer-encoding", "chunked")])), Ok(Framing::Chunked)));
        assert!(framing(&headers(&[("content-length", "5"), ("content-length", "6")])).is_err());
        assert!(framing(&headers(&[("content-length", "abc")])).is_err());
        assert!(framing(&headers(&[("content-length", "-1")])).is_err());
        assert!(framing(&headers(&[("content-length", "+5")])).is_err());
        assert!(framing(&headers(&[("transfer-encoding", "chunked"), ("content-length", "5")])).is_err());
        assert!(framing(&headers(&[("transfer-encoding", "gzip, chunked")])).is_err());
    }

    fn limits(max_body: usize) -> Limits {
        let second = Duration::from_secs(1);
        Limits {
            max_body,
            max_header_bytes: 1024,
            header_timeout: second,
            body_timeout: second,
            idle_timeout: second,
            write_timeout: second,
            answer_timeout: second,
            max_connections: 1,
        }
    }

    /// Feeds `wire` to a decoder in pieces of `piece` bytes, as reads
    /// would deliver it. Returns the result and the bytes left unread.
    fn decode(wire: &[u8], piece: usize, max_body: usize) -> (Result<Vec<u8>, u16>, Vec<u8>) {
        let mut decoder = ChunkedBody::default();
        let mut input = Vec::new();
        for part in wire.chunks(piece) {
            input.extend_from_slice(part);
            match decoder.advance(&mut input, &limits(max_body)) {
                Ok(Some(body)) => return (Ok(body), input),
                Ok(None) => {}
                Err(Rejection(response)) => return (Err(response.status), input),
            }
        }
        panic!("the decoder wanted more than {} bytes", wire.len());
    }

    #[test]
    fn chunked_body_split_anywhere() {
        let wire = b"4;name=value\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\nGET";
        for piece in 1..=wire.len() {
            let (body, rest) = decode(wire, piece, 1024);
            assert_eq!(body, Ok(b"Wikipedia in \r\n\r\nchunks.".to_vec()), "pieces of {piece}");
            // The next request's bytes that arrived with the body stay for
            // the next request.
            assert!(b"GET".starts_with(&rest), "pieces of {piece}: {rest:?}");
        }
    }

    #[test]
    fn many_one_byte_chunks() {
        let mut wire = Vec::new();
        for index in 0..100_000u32 {
            wire.extend_from_slice(format!("1\r\n{}\r\n", index % 10).as_bytes());
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let (body, rest) = decode(&wire, 16 * 1024, 1024 * 1024);
        let body = body.unwrap();
        assert_eq!(body.len(), 100_000);
        assert_eq!(&body[..12], b"012345678901");
        assert!(rest.is_empty());
    }

    #[test]
    fn chunked_body_limits() {
        // Over the body limit across chunks, and a size that overflows.
        assert_eq!(decode(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 64, 5).0, Err(413));
        assert_eq!(decode(b"1\r\na\r\nffffffffffffffff\r\n", 64, 5).0, Err(413));
        assert_eq!(decode(b"zz\r\n", 64, 5).0, Err(400));
        assert_eq!(decode(b"1\r\naXY", 64, 5).0, Err(400));
        // Lines ending in a bare LF: a size line, and a trailer line.
        assert_eq!(decode(b"d\n{\"id\":\"ck07\"}\n0\n\n", 64, 1024).0, Err(400));
        assert_eq!(decode(b"0\r\nExpires: never\n\r\n", 64, 1024).0, Err(400));
        // A bare LF after chunk data, with nothing after it yet.
        assert_eq!(decode(b"2\r\n{}\n", 64, 1024).0, Err(400));
        let long_line = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_LINE + 10));
        assert_eq!(decode(long_line.as_bytes(), 64, 5).0, Err(400));
    }
}
