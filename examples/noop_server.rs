//! The HTTP ceiling for `scripts/bench`: a tiny_http server that reads each
//! request body and responds 200 with a short JSON line, storing nothing.
//!
//! Usage: `noop_server [ADDR]` (default 127.0.0.1:0). It prints
//! `noop_server listening on http://ADDR` on stdout once bound, like
//! `dsevents serve`, and runs until killed.

use std::sync::Arc;
use std::thread;

/// Threads taking requests from tiny_http's queue. tiny_http reads requests
/// on one thread per connection and hands them to these. More than the
/// machine's cores only add context switches.
const WORKERS: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_string());
    let server = Arc::new(tiny_http::Server::http(address.as_str())?);
    let bound = server.server_addr().to_ip().ok_or("the server is not bound to an IP address")?;
    println!("noop_server listening on http://{bound}");

    let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
        .map_err(|()| "invalid Content-Type header")?;
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = Arc::clone(&server);
            let header = header.clone();
            thread::spawn(move || serve(&server, header))
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| "a worker thread panicked")?;
    }
    Ok(())
}

/// Responds to requests until the server's queue fails.
fn serve(server: &tiny_http::Server, header: tiny_http::Header) {
    let mut body = Vec::with_capacity(4096);
    loop {
        let mut request = match server.recv() {
            Ok(request) => request,
            Err(error) => {
                eprintln!("noop_server: receiving a request failed: {error}");
                return;
            }
        };
        // Read the body, as a real receiver must, so the cost of moving it
        // off the socket is part of the ceiling.
        body.clear();
        if let Err(error) = request.as_reader().read_to_end(&mut body) {
            eprintln!("noop_server: reading a body failed: {error}");
            continue;
        }
        let response = tiny_http::Response::from_string("{\"ok\":true}\n").with_header(header.clone());
        if let Err(error) = request.respond(response) {
            eprintln!("noop_server: writing a response failed: {error}");
        }
    }
}
