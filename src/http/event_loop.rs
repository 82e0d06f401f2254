//! The connections of `serve`: one thread waits on every socket with
//! epoll (through mio) and moves each connection's request along as its
//! bytes arrive.
//!
//! A thread per connection cost two sleeps and wake-ups per request, one
//! for the request's bytes and one for its commit, and about 70 threads
//! took turns on two cores. Here a request that waits for its commit holds
//! only its `Connection`. The writer answers it through a `Later`, which
//! queues the response and wakes the loop once for all answers queued
//! before it runs again.
//!
//! Every connection is in one `State`, and each state has a deadline:
//! `Limits::idle_timeout` between requests (`header_timeout` before the
//! first, if shorter), `header_timeout` from a head's first byte, `body_timeout` from the end of the head, `answer_timeout`
//! for an answer and `write_timeout` for a response the socket does not
//! take at once. The loop checks them every `TICK`.
//!
//! When every connection slot is taken, a new connection closes the one
//! that has waited longest between requests, at least `EVICTABLE_AFTER`,
//! so that clients which connect and send nothing cannot keep deliveries
//! out. Busy keep-alive clients are not closed under one another: the new
//! connection gets 503 then.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener as PollListener, TcpStream as PollStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::{
    bad_request, check_head, encode_response, find_head_end, has_bare_line_feed, parse_head, skip_empty_lines,
    too_large_head, ChunkedBody, Framing, Handler, Head, Limits, Rejection, Response,
};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// Maximum wait for events: deadlines and the shutdown flag are checked
/// at least this often.
const TICK: Duration = Duration::from_millis(100);
/// Bytes taken from a socket by one read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Time a connection must have waited between requests before a new
/// connection may close it for its slot. Keep-alive clients that send
/// their next request within it keep their connection.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);
/// Reads one connection makes in a row before the others get their turn.
const READS_PER_TURN: usize = 16;
/// Steps through requests already read (a few per request) one connection
/// takes in a row before the others get their turn.
const STEPS_PER_TURN: usize = 64;
/// After a closing response, unread request bytes are read and dropped
/// for this long, and up to `DRAIN_BYTES`, so that the peer reads the
/// response instead of a connection reset.
const DRAIN_TIME: Duration = Duration::from_millis(100);
const DRAIN_BYTES: usize = 64 * 1024;
/// Wait before accepting again after accept failed, for example because
/// the process is out of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Answers made on other threads, waiting for the loop to send them.
struct Answers {
    queue: Mutex<Vec<(Token, u64, Response)>>,
    waker: Waker,
    /// Set by the first answer queued after the loop last took the queue,
    /// so that a batch of answers wakes the loop once.
    woken: AtomicBool,
}

impl Answers {
    fn push(&self, token: Token, request: u64, response: Response) {
        lock(&self.queue).push((token, request, response));
        if !self.woken.swap(true, Ordering::SeqCst) {
            if let Err(error) = self.waker.wake() {
                warn!("cannot wake the connection loop: {error}");
            }
        }
    }

    fn take(&self) -> Vec<(Token, u64, Response)> {
        // Cleared first: an answer queued after this wakes the loop again.
        self.woken.store(false, Ordering::SeqCst);
        std::mem::take(&mut *lock(&self.queue))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The way to answer a request later, from any thread. Dropped without an
/// answer, it answers 503, so that no request waits out its deadline for
/// an answer that cannot come.
pub struct Later {
    answers: Option<Arc<Answers>>,
    token: Token,
    request: u64,
}

impl Later {
    pub fn answer(mut self, response: Response) {
        if let Some(answers) = self.answers.take() {
            answers.push(self.token, self.request, response);
        }
    }
}

impl Drop for Later {
    fn drop(&mut self) {
        // A handler that answered at once drops its Later too. The loop
        // ignores this answer then, as the request no longer waits.
        if let Some(answers) = self.answers.take() {
            let response = Response::error(503, "store unavailable: the request was dropped without an answer")
                .with_header("Retry-After", "5");
            answers.push(self.token, self.request, response);
        }
    }
}

/// The stage of a connection's current request.
enum State {
    /// Between requests, before the first byte of the next one.
    Idle,
    /// Reading a head whose first byte came at `arrived`. The first
    /// `searched` bytes hold no end of head.
    Head { arrived: Instant, searched: usize },
    /// Reading the body of `head`.
    Body { head: Head, arrived: Instant, chunked: Option<ChunkedBody> },
    /// The handler answers through a `Later`; `request` tells that answer
    /// from a stale one.
    Waiting { head: Head, arrived: Instant, body_bytes: usize, request: u64 },
    /// The write side is shut after a closing response. Bytes still
    /// arriving are read and dropped until the peer closes.
    Draining { drained: usize },
    /// Being taken apart; only seen while a state is moved out.
    Gone,
}

struct Connection {
    stream: PollStream,
    peer: SocketAddr,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Bytes of `output` already written.
    written: usize,
    /// Set while the socket does not take `output` at once.
    write_deadline: Option<Instant>,
    /// Registered for WRITABLE as well as READABLE.
    wants_writable: bool,
    /// False once a read found the socket empty, until the next readable
    /// event: epoll reports each new arrival, so there is no need to try.
    readable: bool,
    /// The peer shut its side or the socket failed: reads go on until
    /// they tell which, whatever their size.
    hung_up: bool,
    /// Shut the write side once `output` is written.
    close_after_output: bool,
    state: State,
    /// When the current state times out.
    deadline: Instant,
    /// When the connection last became idle: accepted, or its last response
    /// queued.
    idle_since: Instant,
}

/// The next thing a connection's request needs.
enum Step {
    /// More bytes from the socket.
    Bytes,
    /// Something changed; look again.
    Continue,
    /// An answer through a `Later`.
    Answer,
    /// Nothing more: close the connection.
    Close,
}

struct EventLoop<'a> {
    poll: Poll,
    handler: &'a dyn Handler,
    limits: &'a Limits,
    answers: Arc<Answers>,
    connections: Vec<Option<Connection>>,
    /// Free slots of `connections`.
    free: Vec<usize>,
    open: usize,
    next_request: u64,
    shutting_down: bool,
    scratch: Box<[u8]>,
    /// Connections that used up their turn with bytes left to read.
    again: Vec<usize>,
    throttle: crate::logging::Throttle,
}

/// Serves connections until `shutdown` is set, then waits up to `drain`
/// for the requests in flight to be answered.
pub fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    limits: Limits,
    shutdown: Arc<AtomicBool>,
    drain: Duration,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = Some(PollListener::from_std(listener));
    let poll = Poll::new()?;
    if let Some(listener) = listener.as_mut() {
        poll.registry().register(listener, LISTENER, Interest::READABLE)?;
    }
    let waker = Waker::new(poll.registry(), WAKER)?;
    let mut events = Events::with_capacity(1024);
    let mut state = EventLoop {
        poll,
        handler: handler.as_ref(),
        limits: &limits,
        answers: Arc::new(Answers { queue: Mutex::new(Vec::new()), waker, woken: AtomicBool::new(false) }),
        connections: Vec::new(),
        free: Vec::new(),
        open: 0,
        next_request: 0,
        shutting_down: false,
        scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
        again: Vec::new(),
        throttle: crate::logging::Throttle::default(),
    };

    let mut next_check = Instant::now() + TICK;
    let mut accept_at: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if drain_deadline.is_none() && shutdown.load(Ordering::SeqCst) {
            // Closing the listener makes new connections fail at once
            // instead of waiting in the backlog until the drain ends.
            listener = None;
            drain_deadline = Some(now + drain);
            state.begin_shutdown();
        }
        if drain_deadline.is_some_and(|deadline| state.open == 0 || now >= deadline) {
            break;
        }

        let mut timeout = next_check.saturating_duration_since(now);
        if !state.again.is_empty() {
            timeout = Duration::ZERO;
        } else if let Some(at) = accept_at {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Err(error) = state.poll.poll(&mut events, Some(timeout)) {
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }

        // Answers first: their requests have waited longest, and each one
        // sent lets a client send its next request. This took the time from
        // an answer to its sending from 456 to about 300 µs on average.
        state.send_answers();
        for event in events.iter() {
            match event.token() {
                LISTENER => {
                    if let Some(listener) = &listener {
                        accept_at = state.accept(listener);
                    }
                }
                WAKER => {} // the answers are taken below in any case
                Token(index) => {
                    if let Some(Some(connection)) = state.connections.get_mut(index) {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            connection.readable = true;
                        }
                        if event.is_read_closed() || event.is_error() {
                            connection.hung_up = true;
                        }
                    }
                    state.drive(index);
                }
            }
        }
        if let (Some(at), Some(listener)) = (accept_at, &listener) {
            if Instant::now() >= at {
                accept_at = state.accept(listener);
            }
        }
        state.send_answers();
        for index in std::mem::take(&mut state.again) {
            state.drive(index);
        }
        let now = Instant::now();
        if now >= next_check {
            state.expire(now);
            next_check = now + TICK;
        }
    }

    if state.open > 0 {
        warn!("{} connections still open at shutdown", state.open);
    }
    Ok(())
}

/// Connects to the listener at `address` to wake the event loop, so that
/// it reads the shutdown flag at once rather than at its next tick.
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

/// Returns true if the connection has no request in progress and no
/// response left to write.
fn is_between_requests(connection: &Connection) -> bool {
    matches!(connection.state, State::Idle) && connection.input.is_empty() && connection.output.is_empty()
}

impl EventLoop<'_> {
    /// Accepts every pending connection. Returns when to try again if
    /// accept failed for a reason that passes, such as too many open files.
    fn accept(&mut self, listener: &PollListener) -> Option<Instant> {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of file descriptors, accept fails until
                    // connections close: log it once a minute with a count.
                    self.throttle.error(&format!("accept {:?}", error.kind()), &format!("accept failed: {error}"));
                    return Some(Instant::now() + ACCEPT_RETRY);
                }
            }
        }
    }

    fn admit(&mut self, mut stream: PollStream, peer: SocketAddr) {
        if self.open >= self.limits.max_connections && !self.shutting_down {
            self.close_longest_idle();
        }
        if self.open >= self.limits.max_connections || self.shutting_down {
            let response = Response::error(503, "server busy: too many open connections; retry later")
                .with_header("Retry-After", "1")
                .closing();
            let mut bytes = Vec::new();
            encode_response(&response, true, &mut bytes);
            // Best effort: the client is refused either way, and a new
            // socket takes a short response whole.
            let _ = stream.write(&bytes);
            self.handler.record(None, 503, 0, Duration::ZERO);
            return;
        }
        if let Err(error) = stream.set_nodelay(true) {
            debug!("connection from {peer} dropped: {error}");
            return;
        }
        let index = self.free.pop().unwrap_or_else(|| {
            self.connections.push(None);
            self.connections.len() - 1
        });
        if let Err(error) = self.poll.registry().register(&mut stream, Token(index), Interest::READABLE) {
            self.throttle.error("register", &format!("cannot watch a new connection, dropped: {error}"));
            self.free.push(index);
            return;
        }
        let now = Instant::now();
        self.connections[index] = Some(Connection {
            stream,
            peer,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            write_deadline: None,
            wants_writable: false,
            readable: true,
            hung_up: false,
            close_after_output: false,
            state: State::Idle,
            deadline: now + self.limits.idle_timeout.min(self.limits.header_timeout),
            idle_since: now,
        });
        self.open += 1;
    }

    /// Closes the connection that has waited longest between requests, at
    /// least `EVICTABLE_AFTER`, to make room for a new connection. A
    /// connection whose next request has arrived but is not read yet stays:
    /// closing it would drop that request.
    fn close_longest_idle(&mut self) {
        let now = Instant::now();
        let mut candidates: Vec<(Instant, usize)> = self
            .connections
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| match slot {
                Some(connection)
                    if is_between_requests(connection)
                        && now.saturating_duration_since(connection.idle_since) >= EVICTABLE_AFTER =>
                {
                    Some((connection.idle_since, index))
                }
                _ => None,
            })
            .collect();
        candidates.sort_unstable();
        for (_, index) in candidates {
            if self.keep_if_request_waits(index) {
                continue;
            }
            if let Some(connection) = self.connections[index].take() {
                debug!("connection from {} closed to make room for a new one", connection.peer);
                self.close(index, connection);
            }
            return;
        }
    }

    /// Moves the connection in slot `index` as far as its bytes allow, and
    /// closes it if it is done.
    fn drive(&mut self, index: usize) {
        let Some(mut connection) = self.connections.get_mut(index).and_then(Option::take) else {
            return;
        };
        if self.drive_connection(&mut connection, index) {
            self.connections[index] = Some(connection);
        } else {
            self.close(index, connection);
        }
    }

    fn close(&mut self, index: usize, mut connection: Connection) {
        // Closing the socket would remove it from epoll as well; this keeps
        // mio's bookkeeping exact.
        let _ = self.poll.registry().deregister(&mut connection.stream);
        drop(connection);
        self.free.push(index);
        self.open -= 1;
    }

    /// Returns false when the connection should close.
    fn drive_connection(&mut self, connection: &mut Connection, index: usize) -> bool {
        let mut reads = 0;
        let mut steps = 0;
        loop {
            if connection.written < connection.output.len() {
                match self.flush(connection, index) {
                    Ok(true) => {}
                    Ok(false) => return true,
                    Err(error) => {
                        debug!("connection from {} ended: {error}", connection.peer);
                        return false;
                    }
                }
            }
            if connection.close_after_output {
                connection.close_after_output = false;
                // Half-close: the peer reads the response, then its end of
                // the stream.
                let _ = connection.stream.shutdown(Shutdown::Write);
                connection.state = State::Draining { drained: 0 };
                connection.deadline = Instant::now() + DRAIN_TIME;
            }

            match self.advance(connection, index) {
                Step::Continue => {
                    // Pipelined requests already read could keep one
                    // connection going for thousands of requests.
                    steps += 1;
                    if steps == STEPS_PER_TURN {
                        self.again.push(index);
                        return true;
                    }
                    continue;
                }
                Step::Answer => return true,
                Step::Close => return false,
                Step::Bytes => {}
            }
            if !connection.readable {
                return true;
            }
            if reads == READS_PER_TURN {
                self.again.push(index);
                return true;
            }
            reads += 1;
            match connection.stream.read(&mut self.scratch) {
                // The peer closed its side: a request cut short has no
                // complete request to respond to.
                Ok(0) => return false,
                Ok(count) => {
                    // A short read emptied the socket, but does not rule out an
                    // end of stream that arrived with the bytes.
                    connection.readable = count == self.scratch.len() || connection.hung_up;
                    if let State::Draining { drained } = &mut connection.state {
                        *drained += count;
                        if *drained >= DRAIN_BYTES {
                            return false;
                        }
                    } else {
                        connection.input.extend_from_slice(&self.scratch[..count]);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    connection.readable = false;
                    return true;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    debug!("connection from {} ended: {error}", connection.peer);
                    return false;
                }
            }
        }
    }

    /// Writes pending output. Returns Ok(false) when the socket is full; the
    /// loop then watches it for room.
    fn flush(&mut self, connection: &mut Connection, index: usize) -> io::Result<bool> {
        while connection.written < connection.output.len() {
            match connection.stream.write(&connection.output[connection.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => connection.written += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if !connection.wants_writable {
                        self.poll.registry().reregister(
                            &mut connection.stream,
                            Token(index),
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                        connection.wants_writable = true;
                    }
                    if connection.write_deadline.is_none() {
                        connection.write_deadline = Some(Instant::now() + self.limits.write_timeout);
                    }
                    return Ok(false);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        connection.output.clear();
        connection.written = 0;
        connection.write_deadline = None;
        // The wait between requests starts once the response is taken.
        connection.idle_since = Instant::now();
        if connection.wants_writable {
            self.poll.registry().reregister(&mut connection.stream, Token(index), Interest::READABLE)?;
            connection.wants_writable = false;
        }
        Ok(true)
    }

    /// Moves the current request along with the bytes read so far.
    fn advance(&mut self, connection: &mut Connection, index: usize) -> Step {
        match std::mem::replace(&mut connection.state, State::Gone) {
            State::Gone => Step::Close,
            State::Draining { drained } => {
                connection.state = State::Draining { drained };
                Step::Bytes
            }
            waiting @ State::Waiting { .. } => {
                connection.state = waiting;
                Step::Answer
            }
            State::Idle => {
                skip_empty_lines(&mut connection.input);
                if connection.input.is_empty() {
                    connection.state = State::Idle;
                    // A connection between requests is done once serve stops.
                    return if self.shutting_down { Step::Close } else { Step::Bytes };
                }
                let now = Instant::now();
                connection.state = State::Head { arrived: now, searched: 0 };
                connection.deadline = now + self.limits.header_timeout;
                Step::Continue
            }
            State::Head { arrived, searched } => self.read_head(connection, arrived, searched),
            State::Body { head, arrived, mut chunked } => {
                let body = match chunked.as_mut() {
                    Some(decoder) => match decoder.advance(&mut connection.input, self.limits) {
                        Ok(Some(body)) => body,
                        Ok(None) => {
                            connection.state = State::Body { head, arrived, chunked };
                            return Step::Bytes;
                        }
                        Err(Rejection(response)) => {
                            self.respond(connection, Some(&head), response.closing(), 0, arrived);
                            return Step::Continue;
                        }
                    },
                    None => {
                        // Checked against max_body with the head.
                        let length = head.content_length().unwrap_or(0) as usize;
                        if connection.input.len() < length {
                            connection.state = State::Body { head, arrived, chunked };
                            return Step::Bytes;
                        }
                        let rest = connection.input.split_off(length);
                        std::mem::replace(&mut connection.input, rest)
                    }
                };
                self.dispatch(connection, index, head, arrived, body)
            }
        }
    }

    fn read_head(&mut self, connection: &mut Connection, arrived: Instant, searched: usize) -> Step {
        let input = &connection.input;
        let end = find_head_end(input, searched);
        // httparse also accepts LF alone as a line ending, so it could end
        // the head before this search does. Rejecting such a request keeps
        // the two in agreement on where the body starts.
        if has_bare_line_feed(&input[..end.unwrap_or(input.len())], searched) {
            let Rejection(response) = bad_request("a line of the request head ends with LF alone; end lines with CRLF");
            self.respond(connection, None, response.closing(), 0, arrived);
            return Step::Continue;
        }
        let Some(end) = end.filter(|end| *end <= self.limits.max_header_bytes) else {
            if input.len() > self.limits.max_header_bytes {
                let Rejection(response) = too_large_head(self.limits);
                self.respond(connection, None, response.closing(), 0, arrived);
                return Step::Continue;
            }
            connection.state = State::Head { arrived, searched: input.len().saturating_sub(3) };
            return Step::Bytes;
        };
        let head = match parse_head(&input[..end], connection.peer) {
            Ok(head) => head,
            Err(Rejection(response)) => {
                self.respond(connection, None, response.closing(), 0, arrived);
                return Step::Continue;
            }
        };
        connection.input.drain(..end);

        if let Err(response) = check_head(&head, self.handler, self.limits) {
            // The body, if any, was not read: its bytes must not be parsed
            // as the next request, so the connection closes.
            let close = response.close || head.has_body();
            let response = if close { response.closing() } else { response };
            self.respond(connection, Some(&head), response, 0, arrived);
            return Step::Continue;
        }
        if head.has_body() && head.header("expect").is_some() {
            connection.output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let chunked = (head.body == Framing::Chunked).then(ChunkedBody::default);
        connection.state = State::Body { head, arrived, chunked };
        connection.deadline = Instant::now() + self.limits.body_timeout;
        Step::Continue
    }

    fn dispatch(
        &mut self,
        connection: &mut Connection,
        index: usize,
        head: Head,
        arrived: Instant,
        body: Vec<u8>,
    ) -> Step {
        let body_bytes = body.len();
        let request = self.next_request;
        self.next_request += 1;
        let later = Later { answers: Some(Arc::clone(&self.answers)), token: Token(index), request };
        match self.handler.handle(&head, body, later) {
            Some(response) => {
                self.respond(connection, Some(&head), response, body_bytes, arrived);
                Step::Continue
            }
            None => {
                connection.state = State::Waiting { head, arrived, body_bytes, request };
                connection.deadline = Instant::now() + self.limits.answer_timeout;
                Step::Answer
            }
        }
    }

    /// Queues `response` and leaves the connection between requests, or
    /// closing if the response closes it.
    fn respond(
        &self,
        connection: &mut Connection,
        head: Option<&Head>,
        mut response: Response,
        body_bytes: usize,
        arrived: Instant,
    ) {
        if head.is_some_and(Head::wants_close) || self.shutting_down {
            response.close = true;
        }
        // An HTTP/1.0 client expects the connection to close after the
        // response unless the response confirms keep-alive.
        if !response.close && head.is_some_and(|head| head.minor_version == 0) {
            response = response.with_header("Connection", "keep-alive");
        }
        self.handler.record(head, response.status, body_bytes, arrived.elapsed());
        // A response to HEAD carries the headers of the GET response and no body.
        let with_body = head.is_none_or(|head| head.method != "HEAD");
        encode_response(&response, with_body, &mut connection.output);
        connection.close_after_output = response.close;
        connection.state = State::Idle;
        let now = Instant::now();
        connection.deadline = now + self.limits.idle_timeout;
        connection.idle_since = now;
    }

    /// Sends the answers that other threads queued.
    fn send_answers(&mut self) {
        for (Token(index), request, response) in self.answers.take() {
            let Some(mut connection) = self.connections.get_mut(index).and_then(Option::take) else {
                continue;
            };
            match std::mem::replace(&mut connection.state, State::Gone) {
                State::Waiting { head, arrived, body_bytes, request: waiting } if waiting == request => {
                    self.respond(&mut connection, Some(&head), response, body_bytes, arrived);
                    self.connections[index] = Some(connection);
                    self.drive(index);
                }
                // The request timed out or its connection closed, and the
                // slot may hold another connection now: the answer is stale.
                state => {
                    connection.state = state;
                    self.connections[index] = Some(connection);
                }
            }
        }
    }

    /// Times out every connection whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        for index in 0..self.connections.len() {
            let Some(connection) = &self.connections[index] else {
                continue;
            };
            let write_late = connection.write_deadline.is_some_and(|deadline| now >= deadline);
            if !write_late && now < connection.deadline {
                continue;
            }
            let Some(mut connection) = self.connections[index].take() else {
                continue;
            };
            if write_late {
                debug!("connection from {} closed: the response was not taken in time", connection.peer);
                self.close(index, connection);
                continue;
            }
            match std::mem::replace(&mut connection.state, State::Gone) {
                // An idle keep-alive connection, or a closing one whose
                // peer did not close: nothing to answer.
                State::Idle | State::Draining { .. } | State::Gone => {
                    self.close(index, connection);
                    continue;
                }
                State::Head { arrived, .. } => {
                    let response = Response::error(408, "request head not received in time").closing();
                    self.respond(&mut connection, None, response, 0, arrived);
                }
                State::Body { head, arrived, .. } => {
                    let response = Response::error(408, "request body not received in time").closing();
                    self.respond(&mut connection, Some(&head), response, 0, arrived);
                }
                State::Waiting { head, arrived, body_bytes, .. } => {
                    let reason = format!(
                        "store unavailable: the write was not committed within {} s",
                        self.limits.answer_timeout.as_secs()
                    );
                    let response = Response::error(503, &reason).with_header("Retry-After", "5");
                    self.respond(&mut connection, Some(&head), response, body_bytes, arrived);
                }
            }
            self.connections[index] = Some(connection);
            self.drive(index);
        }
    }

    /// Returns true if the connection in slot `index` has unread bytes of a
    /// next request, and queues it to be read on this turn rather than at
    /// its event. Closing such a connection would drop that request.
    fn keep_if_request_waits(&mut self, index: usize) -> bool {
        let Some(connection) = self.connections[index].as_mut() else {
            return false;
        };
        let mut byte = [0u8; 1];
        if matches!(connection.stream.peek(&mut byte), Ok(count) if count > 0) {
            connection.readable = true;
            self.again.push(index);
            return true;
        }
        false
    }

    /// Closes connections between requests. The others close once the
    /// response to their current request is sent, as do those whose next
    /// request has arrived unread.
    ///
    /// NOTE: a request that arrives between the peek and the close still
    /// gets a reset. No test reproduces the race reliably, so the peek here
    /// has none either.
    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for index in 0..self.connections.len() {
            let idle = matches!(&self.connections[index], Some(connection) if is_between_requests(connection));
            if idle && !self.keep_if_request_waits(index) {
                if let Some(connection) = self.connections[index].take() {
                    self.close(index, connection);
                }
            }
        }
    }
}
