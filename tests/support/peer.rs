//! A minimal HTTP/1.1 server on 127.0.0.1 that records each request and
//! responds with a status and body the test chooses. It is the receiving
//! end for the commands that send deliveries, not a stand-in for any part
//! of dsevents.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, such as `/hooks/lead-created?token=abc`.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Returns the first header named `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

type Responder = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// A running peer. Dropping it stops the accept loop.
pub struct Peer {
    pub address: SocketAddr,
    requests: Receiver<Request>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    /// Starts a peer on 127.0.0.1 at a free port. `respond` returns the
    /// status and body for each request.
    pub fn start(respond: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("listener has an address");
        let (sender, requests) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let respond: Arc<Responder> = Arc::new(respond);

        let thread = {
            let stopping = Arc::clone(&stopping);
            thread::spawn(move || accept_loop(listener, sender, respond, stopping))
        };
        Peer {
            address,
            requests,
            stopping,
            thread: Some(thread),
        }
    }

    /// Returns `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Returns the requests received so far. Each request is recorded
    /// before its response is sent, so after the sending command has exited
    /// the list contains every request it sent.
    pub fn received(&self) -> Vec<Request> {
        self.requests.try_iter().collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop reads the flag.
        let _ = TcpStream::connect(self.address); // the peer may already be gone
        if let Some(thread) = self.thread.take() {
            let _ = thread.join(); // a panic in the peer already failed the test's asserts
        }
    }
}

fn accept_loop(listener: TcpListener, sender: Sender<Request>, respond: Arc<Responder>, stopping: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        let Some(request) = read_request(&mut stream) else {
            continue;
        };

        let (status, body) = respond(&request);
        // Record before responding, so the sender cannot exit first.
        if sender.send(request).is_err() {
            return;
        }
        let response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            reason_phrase(status),
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()); // the client may have hung up
    }
}

/// Reads one request with a Content-Length body, or returns `None` when the
/// connection closes or sends something else.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);

        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(head_len) = parsed.parse(&buffer).ok()? else {
            continue;
        };
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|header| {
                (
                    header.name.to_string(),
                    String::from_utf8_lossy(header.value).into_owned(),
                )
            })
            .collect();
        let content_length: usize = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map_or(Some(0), |(_, value)| value.trim().parse().ok())?;
        let method = parsed.method?.to_string();
        let target = parsed.path?.to_string();

        while buffer.len() < head_len + content_length {
            let read = stream.read(&mut chunk).ok()?;
            if read == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
        let body = buffer[head_len..head_len + content_length].to_vec();
        return Some(Request {
            method,
            target,
            headers,
            body,
        });
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
