//! HTTP/1.1 over blocking sockets, with every limit a server facing the
//! open internet needs: header size, body size, read deadlines and strict
//! message framing.
//!
//! tiny_http 0.12 sets no read timeout, does not bound headers and accepts
//! ambiguous framing, and a user of it cannot change that from outside. So
//! this module reads requests itself with `httparse` (the parser hyper
//! uses) on one thread per connection:
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

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};

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
    /// Connections served at once. More get a 503 response and are closed.
    pub max_connections: usize,
}

/// Most headers accepted in one request.
const MAX_HEADERS: usize = 64;
/// How often a blocked read wakes up to check for shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);
/// Stack of each connection thread. Parsing a body recurses once per JSON
/// nesting level, up to serde_json's limit of 128. In a debug build on
/// x86-64 that needed between 256 and 320 KiB, so 1 MiB leaves room, and
/// only the pages a thread touches use memory.
const CONNECTION_STACK_BYTES: usize = 1024 * 1024;

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

    /// Answers a request whose body has been read in full.
    fn handle(&self, head: &Head, body: Vec<u8>) -> Response;

    /// Called for every request answered, for logging and metrics, with the
    /// body size and the time from the head's arrival to the answer.
    fn record(&self, head: Option<&Head>, status: u16, body_bytes: usize, elapsed: Duration);
}

/// Accepts connections until `shutdown` is set, then waits up to `drain`
/// for the connections in flight to finish their current request.
///
/// The accept call blocks, so the code that sets `shutdown` must wake it
/// with `wake_listener`.
pub fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    limits: Limits,
    shutdown: Arc<AtomicBool>,
    drain: Duration,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let limits = Arc::new(limits);
    // Out of file descriptors, accept fails in a tight loop: log it once a
    // minute with a count.
    let throttle = crate::logging::Throttle::default();

    for stream in listener.incoming() {
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // EMFILE and similar pass once connections close; keep serving.
                throttle.error(&format!("accept {:?}", error.kind()), &format!("accept failed: {error}"));
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };

        if active.load(Ordering::SeqCst) >= limits.max_connections {
            let response = Response::error(503, "server busy: too many open connections; retry later")
                .with_header("Retry-After", "1")
                .closing();
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            // Best effort: the client is refused either way.
            let _ = write_response(&stream, &response);
            handler.record(None, 503, 0, Duration::ZERO);
            continue;
        }

        active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(Arc::clone(&active));
        let handler = Arc::clone(&handler);
        let limits = Arc::clone(&limits);
        let shutdown = Arc::clone(&shutdown);
        let spawned = thread::Builder::new()
            .name("connection".to_string())
            .stack_size(CONNECTION_STACK_BYTES)
            .spawn(move || {
                let _guard = guard;
                if let Err(error) = serve_connection(stream, handler.as_ref(), &limits, &shutdown) {
                    debug!("connection ended: {error}");
                }
            });
        if let Err(error) = spawned {
            throttle.error("spawn", &format!("cannot start a connection thread, connection dropped: {error}"));
        }
    }

    // Closing the listener makes new connections fail at once instead of
    // waiting in the backlog until the drain ends.
    drop(listener);

    let deadline = Instant::now() + drain;
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left = active.load(Ordering::SeqCst);
    if left > 0 {
        warn!("{left} connections still open at shutdown");
    }
    Ok(())
}

/// Connects to the listener at `address` so that its blocked accept returns.
pub fn wake_listener(address: SocketAddr) {
    let mut target = address;
    if target.ip().is_unspecified() {
        target.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    // Failure means the listener is already gone, which is the goal.
    let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The reason reading a request stopped.
enum ReadError {
    /// The peer closed the connection or stayed idle; nothing to answer.
    Closed,
    /// The request is bad; answer and close.
    Reject(Response),
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(error: io::Error) -> ReadError {
        ReadError::Io(error)
    }
}

/// Bytes taken from the socket by one read.
const READ_CHUNK_BYTES: usize = 4 * 1024;

/// The bytes read from a connection and not yet consumed.
struct Connection<'a> {
    stream: &'a TcpStream,
    buffer: Vec<u8>,
    /// The target of each read, allocated once per connection: zeroing a
    /// fresh 16 KiB array for every read cost more than the parsing.
    chunk: Box<[u8]>,
    /// The socket's current read timeout, so that it is set only when it
    /// changes (one system call saved on most reads).
    read_timeout: Option<Duration>,
    shutdown: &'a AtomicBool,
}

impl<'a> Connection<'a> {
    fn new(stream: &'a TcpStream, shutdown: &'a AtomicBool) -> Connection<'a> {
        Connection {
            stream,
            buffer: Vec::with_capacity(4096),
            chunk: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
            read_timeout: None,
            shutdown,
        }
    }

    /// Reads more bytes before `deadline`. Returns Ok(0) at end of stream.
    fn fill(&mut self, deadline: Instant, stop_on_shutdown: bool) -> Result<usize, ReadError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::Io(io::ErrorKind::TimedOut.into()));
            }
            if stop_on_shutdown && self.shutdown.load(Ordering::SeqCst) {
                return Err(ReadError::Closed);
            }
            let timeout = Some((deadline - now).min(SHUTDOWN_POLL));
            if timeout != self.read_timeout {
                self.stream.set_read_timeout(timeout)?;
                self.read_timeout = timeout;
            }
            match (&*self.stream).read(&mut self.chunk) {
                Ok(count) => {
                    self.buffer.extend_from_slice(&self.chunk[..count]);
                    return Ok(count);
                }
                Err(error)
                    if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) =>
                {
                    continue
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

fn serve_connection(stream: TcpStream, handler: &dyn Handler, limits: &Limits, shutdown: &AtomicBool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(limits.write_timeout))?;
    let peer = stream.peer_addr()?;
    let mut connection = Connection::new(&stream, shutdown);

    loop {
        let started;
        let head = match read_head(&mut connection, limits, peer) {
            Ok((head, arrived)) => {
                started = arrived;
                head
            }
            Err(ReadError::Closed) => return Ok(()),
            Err(ReadError::Io(error)) if error.kind() == io::ErrorKind::TimedOut && connection.buffer.is_empty() => {
                return Ok(()); // idle keep-alive connection
            }
            Err(ReadError::Io(error)) if error.kind() == io::ErrorKind::TimedOut => {
                let response = Response::error(408, "request head not received in time").closing();
                handler.record(None, 408, 0, Duration::ZERO);
                return write_response(&stream, &response);
            }
            Err(ReadError::Io(error)) => return Err(error),
            Err(ReadError::Reject(response)) => {
                handler.record(None, response.status, 0, Duration::ZERO);
                return write_response(&stream, &response.closing());
            }
        };

        if let Err(response) = check_head(&head, handler, limits) {
            // The body, if any, was not read: its bytes must not be parsed
            // as the next request, so the connection closes.
            let close = response.close || head.has_body();
            let response = if close { response.closing() } else { response };
            handler.record(Some(&head), response.status, 0, started.elapsed());
            send_response(&stream, &response, head.method != "HEAD")?;
            if close {
                return Ok(());
            }
            continue;
        }

        if head.has_body() && head.header("expect").is_some() {
            (&stream).write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }

        let body = match read_body(&mut connection, &head, limits) {
            Ok(body) => body,
            Err(ReadError::Reject(response)) => {
                handler.record(Some(&head), response.status, 0, started.elapsed());
                return write_response(&stream, &response.closing());
            }
            Err(ReadError::Io(error)) if error.kind() == io::ErrorKind::TimedOut => {
                let response = Response::error(408, "request body not received in time").closing();
                handler.record(Some(&head), 408, 0, started.elapsed());
                return write_response(&stream, &response);
            }
            Err(ReadError::Io(error)) => return Err(error),
            Err(ReadError::Closed) => return Ok(()),
        };

        let body_bytes = body.len();
        let mut response = handler.handle(&head, body);
        if head.wants_close() || shutdown.load(Ordering::SeqCst) {
            response.close = true;
        }
        handler.record(Some(&head), response.status, body_bytes, started.elapsed());
        // A response to HEAD carries the headers of the GET response and no body.
        send_response(&stream, &response, head.method != "HEAD")?;
        if response.close {
            return Ok(());
        }
    }
}

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

/// Reads and parses a request head. Returns it with the time its first
/// byte arrived.
fn read_head(connection: &mut Connection, limits: &Limits, peer: SocketAddr) -> Result<(Head, Instant), ReadError> {
    // Wait for the first byte of the next request, leaving on shutdown.
    let idle_deadline = Instant::now() + limits.idle_timeout;
    skip_empty_lines(&mut connection.buffer);
    while connection.buffer.is_empty() {
        if connection.fill(idle_deadline, true)? == 0 {
            return Err(ReadError::Closed);
        }
        skip_empty_lines(&mut connection.buffer);
    }

    let arrived = Instant::now();
    let deadline = arrived + limits.header_timeout;
    let mut searched = 0;
    let head_end = loop {
        let end = find_head_end(&connection.buffer, searched);
        // httparse also accepts LF alone as a line ending, so it could end
        // the head before this search does. Rejecting such a request keeps
        // the two in agreement on where the body starts.
        if has_bare_line_feed(&connection.buffer[..end.unwrap_or(connection.buffer.len())], searched) {
            return Err(bad_request("a line of the request head ends with LF alone; end lines with CRLF"));
        }
        if let Some(position) = end {
            break position;
        }
        searched = connection.buffer.len().saturating_sub(3);
        if connection.buffer.len() > limits.max_header_bytes {
            return Err(too_large_head(limits));
        }
        if connection.fill(deadline, false)? == 0 {
            return Err(ReadError::Closed);
        }
    };
    if head_end > limits.max_header_bytes {
        return Err(too_large_head(limits));
    }

    let head = parse_head(&connection.buffer[..head_end], peer)?;
    connection.buffer.drain(..head_end);
    Ok((head, arrived))
}

fn too_large_head(limits: &Limits) -> ReadError {
    ReadError::Reject(Response::error(
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

fn bad_request(reason: &str) -> ReadError {
    ReadError::Reject(Response::error(400, reason))
}

fn parse_head(bytes: &[u8], peer: SocketAddr) -> Result<Head, ReadError> {
    let mut header_slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut header_slots);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad_request("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::Reject(Response::error(
                431,
                &format!("more than {MAX_HEADERS} request headers"),
            )))
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
    let headers: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|header| (header.name.to_ascii_lowercase(), header.value.to_vec()))
        .collect();

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
fn framing(headers: &[(String, Vec<u8>)]) -> Result<Framing, ReadError> {
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
                        ReadError::Reject(Response::error(413, &format!("Content-Length '{text}' is over the body size limit")))
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
                    return Err(bad_request(&format!("Transfer-Encoding '{text}' is not supported; send chunked or Content-Length")));
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

fn body_too_large(limits: &Limits) -> ReadError {
    ReadError::Reject(Response::error(413, &format!("body is over the limit of {} bytes", limits.max_body)))
}

fn read_body(connection: &mut Connection, head: &Head, limits: &Limits) -> Result<Vec<u8>, ReadError> {
    let deadline = Instant::now() + limits.body_timeout;
    match head.body {
        Framing::Length(length) => {
            let length = length as usize; // checked against max_body already
            while connection.buffer.len() < length {
                if connection.fill(deadline, false)? == 0 {
                    return Err(ReadError::Closed);
                }
            }
            let rest = connection.buffer.split_off(length);
            Ok(std::mem::replace(&mut connection.buffer, rest))
        }
        Framing::Chunked => read_chunked(connection, limits, deadline),
    }
}

/// Decodes a chunked body, stopping with 413 as soon as it passes the limit.
fn read_chunked(connection: &mut Connection, limits: &Limits, deadline: Instant) -> Result<Vec<u8>, ReadError> {
    // Chunk-size lines and trailers are short; this bounds each of them.
    const MAX_LINE: usize = 4096;
    let mut body = Vec::new();
    let mut position = 0;

    let read_line = |connection: &mut Connection, position: &mut usize| -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(end) = connection.buffer[*position..].windows(2).position(|w| w == b"\r\n") {
                let line = connection.buffer[*position..*position + end].to_vec();
                *position += end + 2;
                return Ok(line);
            }
            if connection.buffer.len() - *position > MAX_LINE {
                return Err(bad_request("chunk header line is too long"));
            }
            if connection.fill(deadline, false)? == 0 {
                return Err(ReadError::Closed);
            }
        }
    };

    loop {
        let line = read_line(connection, &mut position)?;
        let size_text = String::from_utf8_lossy(&line);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        if size_text.is_empty() || !size_text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(bad_request(&format!("invalid chunk size '{size_text}'")));
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|_| body_too_large(limits))?;
        if size == 0 {
            break;
        }
        if body.len() + size > limits.max_body {
            return Err(body_too_large(limits));
        }
        while connection.buffer.len() < position + size + 2 {
            if connection.fill(deadline, false)? == 0 {
                return Err(ReadError::Closed);
            }
        }
        body.extend_from_slice(&connection.buffer[position..position + size]);
        if &connection.buffer[position + size..position + size + 2] != b"\r\n" {
            return Err(bad_request("chunk data is not followed by CRLF"));
        }
        position += size + 2;
        // Drop consumed bytes so the buffer contains at most one chunk.
        connection.buffer.drain(..position);
        position = 0;
    }

    // Trailer fields, ignored, up to the blank line.
    let mut trailer_bytes = 0;
    loop {
        let line = read_line(connection, &mut position)?;
        if line.is_empty() {
            break;
        }
        trailer_bytes += line.len();
        if trailer_bytes > MAX_LINE {
            return Err(bad_request("chunked trailer is too long"));
        }
    }
    connection.buffer.drain(..position);
    Ok(body)
}

fn reason_phrase(status: u16) -> &'static str {
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

fn write_response(stream: &TcpStream, response: &Response) -> io::Result<()> {
    send_response(stream, response, true)
}

fn send_response(mut stream: &TcpStream, response: &Response, with_body: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason_phrase(response.status));
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    if response.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");

    let mut bytes = head.into_bytes();
    if with_body {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()?;
    if response.close {
        // Half-close, then let unread request bytes drain briefly so the
        // peer reads this answer instead of a connection reset.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(count) => drained += count,
            }
        }
    }
    Ok(())
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
}
