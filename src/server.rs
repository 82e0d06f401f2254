//! The `serve` command: routes, authentication and responses, on top of the
//! connection handling in `http` and the group-commit `writer`.
//!
//! Responses: 200 stored, 202 kept but not normalized, 401 bad token, 403
//! source address not allowed, 404 unknown route, 405 wrong method, 503 store
//! unavailable. The `http` layer adds 400, 408, 411, 413, 417 and 431 for
//! requests it cannot read. Nothing is stored for a 4xx response.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ipnet::IpNet;
use log::{debug, info, warn};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::catalog;
use crate::cli::{DbArg, UsageError};
use crate::http::{self, Handler, Head, Later, Limits, Response};
use crate::metrics::Metrics;
use crate::store::{self, Delivery, Parsed};
use crate::writer::{Writer, WriterConfig, WriterHandle};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. Use 0.0.0.0:8080 to accept other
    /// hosts, which requires --token.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub db: DbArg,

    /// Shared secret that senders must give as ?token=SECRET in the URL or
    /// as "Authorization: Bearer SECRET".
    #[arg(long, env = "DSEVENTS_TOKEN", hide_env_values = true, value_name = "SECRET")]
    pub token: Option<String>,

    /// Accept deliveries without a token on a non-loopback address.
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// Accept requests only from this network (such as 203.0.113.0/24 or
    /// 2001:db8::/32; a bare address means that one host); repeatable.
    /// Others get 403.
    #[arg(long = "allow-from", value_name = "CIDR", value_parser = parse_network)]
    pub allow_from: Vec<IpNet>,

    /// Largest accepted body, in bytes. K, KB and KiB mean 1024 bytes, and
    /// M, MB and MiB 1024 KiB. Larger bodies get 413 and are not stored.
    #[arg(long, default_value = "1MiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_body: usize,

    /// A body identical to one received this long ago or less, for the same
    /// kind, is stored and marked as its duplicate (s, m, h, d or w; 0 disables).
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = parse_window)]
    pub duplicate_window: chrono::Duration,

    /// Connections served at once. When all are taken, a new one closes
    /// the connection idle longest (at least 1 s), or gets 503. serve
    /// raises its open files limit to fit them, or serves fewer with a
    /// warning.
    #[arg(long, default_value_t = 1024, value_name = "COUNT", value_parser = parse_count)]
    pub max_connections: usize,

    /// Seconds a client may take to send a request's headers, and again
    /// its body, before it gets 408.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = parse_timeout)]
    pub read_timeout: u64,

    /// Seconds a kept-alive connection may stay idle between requests.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = parse_timeout)]
    pub idle_timeout: u64,

    /// Most deliveries committed in one transaction.
    #[arg(long, default_value_t = 256, value_name = "COUNT", value_parser = parse_count)]
    pub max_batch: usize,
}

fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(count) if count >= 1 => Ok(count),
        _ => Err(format!("'{text}' is not a count; give a whole number of 1 or more")),
    }
}

/// Reads an IP address and port. Host names are not resolved.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse::<SocketAddr>().map_err(|_| {
        format!(
            "'{text}' is not an IP address and port; give IP:PORT such as 127.0.0.1:8080 or 0.0.0.0:8080 \
             (a host name such as localhost is not accepted)"
        )
    })
}

/// Reads a timeout of 1 to 3600 whole seconds.
fn parse_timeout(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(seconds) if (1..=3600).contains(&seconds) => Ok(seconds),
        _ => Err(format!("'{text}' is not a timeout; give a whole number of seconds from 1 to 3600")),
    }
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(network) = text.parse::<IpNet>() {
        return Ok(network);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{text}' is not a network; expected CIDR such as 203.0.113.0/24 or an address"))
}

/// Reads a byte size such as `1048576`, `512K`, `512KiB`, `1M` or `1MiB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size; expected bytes such as 1048576, 512KiB or 1MiB"))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("'{text}' has an unknown unit; use K, KiB, M or MiB")),
    };
    number
        .checked_mul(multiplier)
        .filter(|size| *size > 0)
        .ok_or_else(|| format!("'{text}' is not a usable size; give a positive number of bytes"))
}

fn parse_window(text: &str) -> Result<chrono::Duration, String> {
    if text.trim() == "0" {
        return Ok(chrono::Duration::zero());
    }
    crate::time::parse_duration(text)
}

/// Caps glibc's malloc at two arenas. By default it gives busy threads
/// arenas of their own, up to eight per core, and each keeps the memory its
/// threads freed. When serve ran a thread per connection, that was about
/// 2 MB of its resident memory under load, for no measurable speed.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // From glibc's malloc.h.
        const M_ARENA_MAX: std::ffi::c_int = -8;
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // SAFETY: mallopt only changes a malloc setting, and runs here
        // before serve starts any thread.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}

/// Open files `serve` needs besides its connections: the standard streams,
/// the listener, epoll and its waker, and a database, WAL and shared-memory
/// file for each SQLite connection.
/// NOTE: an estimate with room to spare; serve had 15 open at start.
const RESERVED_OPEN_FILES: libc::rlim_t = 64;

/// Raises the soft limit of open files toward the hard limit so that
/// `max_connections` connections fit. Returns how many connections fit
/// under the limit reached: `max_connections`, or fewer with a warning.
/// A client past that number then gets 503 instead of waiting unaccepted
/// in the listen backlog.
fn fit_open_files_limit(max_connections: usize) -> usize {
    let needed = max_connections as libc::rlim_t + RESERVED_OPEN_FILES;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(
            "failed to read the open files limit ({}); --max-connections {max_connections} may not be reached",
            std::io::Error::last_os_error()
        );
        return max_connections;
    }
    let soft = limit.rlim_cur;
    if soft >= needed {
        return max_connections;
    }

    let raised = needed.min(limit.rlim_max);
    if raised > soft {
        let new_limit = libc::rlimit {
            rlim_cur: raised,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new_limit) } == 0 {
            debug!("raised the open files limit from {soft} to {raised}");
            limit.rlim_cur = raised;
        } else {
            warn!(
                "failed to raise the open files limit from {soft} to {raised}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if limit.rlim_cur >= needed {
        return max_connections;
    }

    let fitting = limit.rlim_cur.saturating_sub(RESERVED_OPEN_FILES).max(1) as usize;
    warn!(
        "the open files limit is {} (hard limit {}), too low for --max-connections \
         {max_connections}; serving at most {fitting} connections, and more get 503. \
         Raise it with ulimit -n or LimitNOFILE= in the systemd unit",
        limit.rlim_cur, limit.rlim_max
    );
    fitting
}

/// Runs `serve` until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.token.is_none() && !args.listen.ip().is_loopback() && !args.allow_unauthenticated {
        return Err(UsageError(format!(
            "refusing to listen on {} without a token; set --token (or DSEVENTS_TOKEN), \
             or pass --allow-unauthenticated to accept anyone's deliveries",
            args.listen
        ))
        .into());
    }
    if args.token.as_deref() == Some("") {
        return Err(UsageError(
            "the token (--token or DSEVENTS_TOKEN) is empty; give a secret, or leave out both the option and the variable".to_string(),
        )
        .into());
    }

    limit_malloc_arenas();
    let max_connections = fit_open_files_limit(args.max_connections);
    // Before the database, so that a port in use leaves no new file behind.
    let listener = TcpListener::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let path = args.db.db.clone();
    // Held until serve returns. Taken before SQLite opens an existing
    // file, which may upgrade its schema under a running serve.
    let early_lock = if path.exists() { Some(lock_for_serve(&path)?) } else { None };
    let connection = store::open_or_create(&path)?;
    let _only_server = match early_lock {
        Some(lock) => lock,
        None => lock_for_serve(&path)?,
    };
    let health = store::open_existing(&path)?;

    let metrics = Arc::new(Metrics::new(&path));
    seed_metrics(&health, &metrics)?;
    // Seeding read the whole index of deliveries; /healthz reads one row.
    health.execute_batch("PRAGMA cache_size = -256; PRAGMA shrink_memory;")?;
    let batch_metrics = Arc::clone(&metrics);
    let writer = Writer::start(
        connection,
        WriterConfig { max_batch: args.max_batch, duplicate_window_ms: args.duplicate_window.num_milliseconds() },
        Box::new(move |batch_size| batch_metrics.batch(batch_size)),
    )?;

    let app = Arc::new(App {
        token: args.token.as_deref().map(token_digest),
        allow_from: args.allow_from.clone(),
        writer: writer.handle(),
        health: Mutex::new(health),
        metrics,
        rejections: Mutex::new(Rejections::default()),
    });
    let limits = Limits {
        max_body: args.max_body,
        max_header_bytes: 16 * 1024,
        header_timeout: Duration::from_secs(args.read_timeout),
        body_timeout: Duration::from_secs(args.read_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        write_timeout: Duration::from_secs(args.read_timeout),
        answer_timeout: Duration::from_secs(30),
        max_connections,
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&shutdown), address)?;

    info!(
        "serve started: address=http://{address} database={} kinds={} auth={}",
        path.display(),
        catalog::KINDS.len(),
        if args.token.is_some() { "token" } else { "none" },
    );
    // The one line on stdout, so scripts and tests can learn the port. When
    // the write fails, serve goes on and logs the address instead.
    if let Err(error) = crate::output::print_line(format_args!("dsevents listening on http://{address}")) {
        warn!("{error:#}; serving on http://{address} anyway");
    }

    http::serve(listener, app, limits, shutdown, Duration::from_secs(20))?;
    writer.stop();
    info!("serve stopped");
    Ok(())
}

/// Takes an exclusive flock(2) on the database file, so that a second
/// `serve` on the same file fails at start instead of competing with the
/// first for the write lock. SQLite locks with fcntl(2), which on Linux
/// is separate from flock, so readers and other programs are unaffected.
fn lock_for_serve(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;

    let file = std::fs::File::open(path).with_context(|| format!("cannot open database {}", path.display()))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::WouldBlock {
            anyhow::bail!(
                "another dsevents serve is already writing {}; stop it first (systemctl stop dsevents), \
                 or give this one another --db",
                path.display()
            );
        }
        return Err(error).with_context(|| format!("cannot lock database {}", path.display()));
    }
    Ok(file)
}

/// Starts the last-delivery gauges from the database, so that a restart
/// does not look like a kind that went silent.
fn seed_metrics(connection: &rusqlite::Connection, metrics: &Metrics) -> anyhow::Result<()> {
    let mut statement = connection.prepare("SELECT kind, max(received_at) FROM deliveries GROUP BY kind")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let kind: String = row.get(0)?;
        let last: String = row.get(1)?;
        if let Ok(time) = chrono::DateTime::parse_from_rfc3339(&last) {
            metrics.seed_last_delivery(&kind, time.timestamp_millis());
        }
    }
    Ok(())
}

/// Sets `shutdown` on the first SIGTERM or SIGINT and wakes the listener;
/// exits at once on the second.
fn watch_signals(shutdown: Arc<AtomicBool>, address: SocketAddr) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    std::thread::Builder::new().name("signals".to_string()).spawn(move || {
        for signal in signals.forever() {
            if shutdown.swap(true, Ordering::SeqCst) {
                log::warn!("second signal {signal}: exiting without waiting");
                std::process::exit(130);
            }
            info!("signal {signal}: finishing requests in flight, then stopping");
            http::wake_listener(address);
        }
    })?;
    Ok(())
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

struct App {
    /// SHA-256 of the token; comparing digests in constant time hides both
    /// the content and the length of the secret.
    token: Option<[u8; 32]>,
    allow_from: Vec<IpNet>,
    writer: WriterHandle,
    /// A reader connection for /healthz.
    health: Mutex<rusqlite::Connection>,
    metrics: Arc<Metrics>,
    rejections: Mutex<Rejections>,
}

/// Shortest time between two log lines about requests rejected with the
/// same status.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs requests that got an error status, so that a wrong token or
/// too small a --max-body shows in the log before DailyStory pauses the
/// subscription. One line per status and `REJECTION_LOG_INTERVAL` at
/// most; the next line counts the requests left out meanwhile.
#[derive(Default)]
struct Rejections {
    /// Per status: when its last line was logged, and the requests since.
    by_status: HashMap<u16, (Instant, u64)>,
}

impl Rejections {
    fn record(&mut self, status: u16, method: &str, path: &str, peer: Option<SocketAddr>) {
        let now = Instant::now();
        let since_last_line = match self.by_status.get_mut(&status) {
            Some((logged_at, left_out)) if now.duration_since(*logged_at) < REJECTION_LOG_INTERVAL => {
                *left_out += 1;
                return;
            }
            Some((_, left_out)) => *left_out,
            None => 0,
        };
        self.by_status.insert(status, (now, 0));
        let peer = peer.map_or_else(|| "-".to_string(), |peer| peer.to_string());
        let earlier = if since_last_line > 0 {
            format!(" ({since_last_line} more with this status since the previous line)")
        } else {
            String::new()
        };
        warn!(
            "rejected request: status={status} ({}) method={method} path={path} peer={peer}{earlier}",
            http::reason_phrase(status)
        );
    }
}

enum Route {
    /// A delivery for the kind slug, lowercased.
    Hook(String),
    Health,
    Metrics,
}

fn route(path: &str) -> Option<Route> {
    match path {
        "/healthz" => return Some(Route::Health),
        "/metrics" => return Some(Route::Metrics),
        _ => {}
    }
    let slug = path.strip_prefix("/hooks/")?;
    let slug = slug.strip_suffix('/').unwrap_or(slug);
    let valid = !slug.is_empty()
        && slug.len() <= 64
        && slug.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    // Slugs are lowercase; a URL typed as /hooks/Email-Bounced means the same.
    valid.then(|| Route::Hook(slug.to_ascii_lowercase()))
}

impl App {
    fn authorized(&self, head: &Head) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let from_query = head
            .query
            .as_deref()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .filter_map(|pair| pair.split_once('='))
            .filter(|(name, _)| *name == "token")
            .map(|(_, value)| percent_decode(value));
        let from_header = head
            .header("authorization")
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(|token| token.trim().as_bytes().to_vec());

        let mut matched = subtle::Choice::from(0);
        for candidate in from_query.chain(from_header) {
            let digest: [u8; 32] = Sha256::digest(&candidate).into();
            matched |= digest.ct_eq(expected);
        }
        matched.into()
    }

    fn health(&self) -> Response {
        let connection = match self.health.lock() {
            Ok(connection) => connection,
            Err(poisoned) => poisoned.into_inner(),
        };
        match connection.query_row("SELECT count(*) FROM deliveries WHERE id = (SELECT max(id) FROM deliveries)", [], |row| {
            row.get::<_, i64>(0)
        }) {
            Ok(_) => match self.writer.failure() {
                None => Response::json(200, &json!({ "status": "ok" })),
                Some(reason) => Response::json(503, &json!({ "status": "failing", "error": reason })),
            },
            Err(cause) => Response::error(503, &format!("database unreachable: {cause}")),
        }
    }
}

impl Handler for App {
    fn check(&self, head: &Head) -> Result<(), Response> {
        if !self.allow_from.is_empty() && !self.allow_from.iter().any(|network| network.contains(&head.peer.ip())) {
            return Err(Response::error(403, &format!("source address {} is not allowed", head.peer.ip())));
        }
        match route(&head.path) {
            None => Err(Response::error(404, "not found; deliveries go to POST /hooks/{kind}")),
            Some(Route::Health | Route::Metrics) => match head.method.as_str() {
                "GET" | "HEAD" => Ok(()),
                _ => Err(Response::error(405, &format!("use GET for {}", head.path)).with_header("Allow", "GET, HEAD")),
            },
            Some(Route::Hook(_)) if head.method != "POST" => {
                Err(Response::error(405, "use POST to deliver a webhook").with_header("Allow", "POST"))
            }
            Some(Route::Hook(_)) if !self.authorized(head) => Err(Response::error(
                401,
                "missing or invalid token; add ?token=SECRET to the webhook URL or send Authorization: Bearer SECRET",
            )),
            Some(Route::Hook(_)) => Ok(()),
        }
    }

    fn handle(&self, head: &Head, body: Vec<u8>, later: Later) -> Option<Response> {
        let slug = match route(&head.path) {
            Some(Route::Health) => return Some(self.health()),
            Some(Route::Metrics) => {
                return Some(Response {
                    status: 200,
                    headers: vec![("Content-Type", "text/plain; version=0.0.4".to_string())],
                    body: self.metrics.render().into_bytes(),
                    close: false,
                })
            }
            Some(Route::Hook(slug)) => slug,
            None => return Some(Response::error(404, "not found")),
        };

        let content_type = head.header("content-type").map(str::to_string);
        let mut delivery = Delivery::new(&slug, body, content_type, crate::time::now_text());
        // An encoded body cannot be read as JSON. The reason names the
        // encoding instead of reporting invalid JSON.
        if let Some(encoding) = head.header("content-encoding").map(str::trim) {
            if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
                delivery.parsed = Parsed::Quarantined(format!(
                    "Content-Encoding '{encoding}' is not supported; the body is kept as received"
                ));
            }
        }
        let stored = matches!(delivery.parsed, Parsed::Stored(..));
        let reason = delivery.reason();
        let outcome = delivery.outcome();

        let metrics = Arc::clone(&self.metrics);
        let unavailable_slug = slug.clone();
        // Runs on the writer's side once the delivery is on disk or failed.
        let reply = Box::new(move |result: Result<store::Receipt, String>| {
            let counted_as = if result.is_ok() { outcome } else { "unavailable" };
            metrics.delivery(&slug, counted_as, chrono::Utc::now().timestamp_millis());
            later.answer(delivery_response(result, &slug, outcome, reason, stored));
        });
        match self.writer.submit(delivery, reply) {
            Ok(()) => None,
            Err(reason) => {
                self.metrics.delivery(&unavailable_slug, "unavailable", chrono::Utc::now().timestamp_millis());
                Some(Response::error(503, &reason).with_header("Retry-After", "5"))
            }
        }
    }

    fn record(&self, head: Option<&Head>, status: u16, body_bytes: usize, elapsed: Duration) {
        self.metrics.request(status, elapsed);
        let (method, full_path) = head.map_or(("-", "-"), |head| (head.method.as_str(), head.path.as_str()));
        let kind = match route(full_path) {
            Some(Route::Hook(slug)) => slug,
            _ => "-".to_string(),
        };
        let path = loggable_path(full_path);
        debug!(
            "request method={method} path={path} status={status} kind={kind} bytes={body_bytes} ms={:.3}",
            elapsed.as_secs_f64() * 1000.0
        );
        if status >= 400 {
            let mut rejections = match self.rejections.lock() {
                Ok(rejections) => rejections,
                Err(poisoned) => poisoned.into_inner(),
            };
            rejections.record(status, method, &path, head.map(|head| head.peer));
        }
    }
}

/// Returns the part of a request path that may be logged. The query string
/// is already cut off, but a sender may put the token in the path too, as
/// in `/hooks/x%3Ftoken=SECRET` or `/hooks/x&token=SECRET`. Valid paths
/// contain none of `%&;=`, so everything from the first of them is left out.
fn loggable_path(path: &str) -> Cow<'_, str> {
    match path.find(['%', '&', ';', '=']) {
        Some(end) => Cow::Owned(format!("{}[rest not logged]", &path[..end])),
        None => Cow::Borrowed(path),
    }
}

/// Builds the response to a delivery from the writer's result.
fn delivery_response(
    result: Result<store::Receipt, String>,
    slug: &str,
    outcome: &str,
    reason: Option<String>,
    stored: bool,
) -> Response {
    match result {
        Ok(receipt) => {
            let mut answer = json!({ "id": receipt.id, "kind": slug, "outcome": outcome });
            if let Some(original) = receipt.duplicate_of {
                answer["duplicate_of"] = json!(original);
            }
            if let Some(reason) = reason {
                info!("delivery {} kind={slug} kept as {outcome}: {reason}", receipt.id);
                answer["reason"] = json!(reason);
            }
            Response::json(if stored { 200 } else { 202 }, &answer)
        }
        Err(reason) => Response::error(503, &reason).with_header("Retry-After", "5"),
    }
}

/// Decodes %XX escapes and `+` in a query value.
fn percent_decode(text: &str) -> Vec<u8> {
    fn hex_value(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|digit| digit as u8)
    }

    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = match (bytes[index], bytes.get(index + 1), bytes.get(index + 2)) {
            (b'%', Some(high), Some(low)) => hex_value(*high).zip(hex_value(*low)),
            _ => None,
        };
        match (escaped, bytes[index]) {
            (Some((high, low)), _) => {
                decoded.push(high * 16 + low);
                index += 3;
            }
            (None, b'+') => {
                decoded.push(b' ');
                index += 1;
            }
            (None, byte) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1GB").unwrap_err().contains("'1GB'"));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Bb+c%zz"), b"a+b c%zz".to_vec());
        assert_eq!(percent_decode("abc%4"), b"abc%4".to_vec());
    }

    #[test]
    fn logged_paths_leave_out_tokens() {
        assert_eq!(loggable_path("/hooks/email-bounced"), "/hooks/email-bounced");
        assert_eq!(loggable_path("/hooks/x%3Ftoken=SECRET"), "/hooks/x[rest not logged]");
        assert_eq!(loggable_path("/hooks/x&token=SECRET"), "/hooks/x[rest not logged]");
        assert_eq!(loggable_path("/hooks/x;token=SECRET"), "/hooks/x[rest not logged]");
        assert_eq!(loggable_path("/token=SECRET"), "/token[rest not logged]");
    }

    #[test]
    fn routes() {
        assert!(matches!(route("/hooks/email-bounced"), Some(Route::Hook(slug)) if slug == "email-bounced"));
        assert!(matches!(route("/hooks/email-bounced/"), Some(Route::Hook(slug)) if slug == "email-bounced"));
        assert!(matches!(route("/hooks/EMAIL-Bounced"), Some(Route::Hook(slug)) if slug == "email-bounced"));
        assert!(route("/hooks/").is_none());
        assert!(route("/hooks/a/b").is_none());
        assert!(route("/other").is_none());
    }
}
