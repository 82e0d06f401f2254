//! Test support: the real `dsevents` binary serving on 127.0.0.1 port 0
//! with a temporary database, and a small HTTP client over raw sockets so
//! tests can send exact bytes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dsevents");

/// A running `dsevents serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub address: SocketAddr,
    pub db: PathBuf,
    /// Keeps the temporary directory alive as long as the server.
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts `serve` on a new temporary database with extra arguments.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("create temp dir");
        let db = dir.path().join("events.db");
        Server::start_on(dir, db, extra)
    }

    /// Starts `serve` on `db`, which may already exist.
    pub fn start_on(dir: tempfile::TempDir, db: PathBuf, extra: &[&str]) -> Server {
        let (child, address) = spawn_serve(&db, extra, &[]);
        Server { child, address, db, dir }
    }

    /// Starts `serve` on a new temporary database with extra environment
    /// variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Server {
        let dir = tempfile::tempdir().expect("create temp dir");
        let db = dir.path().join("events.db");
        let (child, address) = spawn_serve(&db, extra, env);
        Server { child, address, db, dir }
    }

    /// Kills the server with SIGKILL and starts it again on the same file.
    pub fn restart(&mut self, extra: &[&str]) {
        // It may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, address) = spawn_serve(&self.db, extra, &[]);
        self.child = child;
        self.address = address;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// Posts `body` to `path` with Content-Length framing.
    pub fn post(&self, path: &str, body: &[u8]) -> Reply {
        self.request("POST", path, &[("Content-Type", "application/json")], body)
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut bytes = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.address);
        for (name, value) in headers {
            bytes.push_str(&format!("{name}: {value}\r\n"));
        }
        bytes.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = bytes.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    /// Sends raw bytes on a new connection and reads the first response.
    pub fn send_raw(&self, bytes: &[u8]) -> Reply {
        let mut stream = self.connect();
        stream.write_all(bytes).expect("send request");
        read_reply(&mut stream).expect("read response")
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).expect("connect to serve");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("set timeout");
        stream
    }

    /// Opens the database the way a user's SQLite tool would.
    pub fn db(&self) -> rusqlite::Connection {
        let connection = rusqlite::Connection::open(&self.db).expect("open database");
        connection.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
        connection
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |row| row.get(0)).expect(sql)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to this server's process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Starts `serve` on `db` and port 0, and reads the address it prints.
fn spawn_serve(db: &Path, extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (Child, SocketAddr) {
    let mut command = Command::new(BIN);
    command.envs(env.iter().copied());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .args(extra)
        .env_remove("DSEVENTS_TOKEN")
        .env_remove("DSEVENTS_DB")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().expect("start dsevents serve");
    let address = read_listening_address(&mut child);
    (child, address)
}

/// Reads the address from the line `serve` prints on its piped stdout once
/// it listens.
pub fn read_listening_address(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
    line.trim()
        .rsplit("http://")
        .next()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("serve printed no address, got {line:?}"))
}

impl Drop for Server {
    fn drop(&mut self) {
        // The process may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("response is not JSON ({error}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// Reads one response (skipping 100 Continue) from `stream`.
pub fn read_reply(stream: &mut TcpStream) -> std::io::Result<Reply> {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break position + 4;
            }
            let mut chunk = [0u8; 4096];
            let count = stream.read(&mut chunk)?;
            if count == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("closed after {buffer:?}")));
            }
            buffer.extend_from_slice(&chunk[..count]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok()).expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
            .collect();
        buffer.drain(..head_end);
        if status == 100 {
            continue;
        }
        let length: usize = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map(|(_, value)| value.parse().expect("numeric content-length"))
            .unwrap_or(0);
        while buffer.len() < length {
            let mut chunk = [0u8; 4096];
            let count = stream.read(&mut chunk)?;
            if count == 0 {
                break;
            }
            buffer.extend_from_slice(&chunk[..count]);
        }
        let body = String::from_utf8_lossy(&buffer[..length.min(buffer.len())]).to_string();
        return Ok(Reply { status, headers, body });
    }
}

/// Runs the binary with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DSEVENTS_TOKEN")
        .env_remove("DSEVENTS_DB")
        .output()
        .expect("run dsevents")
}

/// Formats a command's output for an assertion message.
pub fn describe(args: &[&str], output: &Output) -> String {
    format!(
        "dsevents {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Returns the fixture body at `tests/fixtures/{relative}`.
pub fn fixture(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(relative);
    std::fs::read(&path).unwrap_or_else(|error| panic!("read fixture {}: {error}", path.display()))
}

/// Waits until `condition` holds, up to `limit`.
pub fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}
