//! dsevents receives DailyStory webhooks over HTTP, keeps every delivery in
//! SQLite and answers report questions from the command line.
//!
//! The path of a delivery:
//!
//! 1. `http` reads requests from every socket on one event-loop thread,
//!    with bounded size and time, and rejects bad framing.
//! 2. `server` routes it, checks the token and body size, and builds a
//!    `store::Delivery`, which runs `normalize` on the body for the kind
//!    named in the URL (`catalog` lists every kind, its table and fields).
//! 3. `writer` commits waiting deliveries together in one transaction
//!    (group commit) through `store`, syncs the WAL on a second thread,
//!    and only then answers each request through its `http::Later`.
//!
//! Beside that path, `metrics` counts deliveries and requests for
//! `GET /metrics`, and `logging` sets up the log and throttles repeated
//! errors.
//!
//! The other commands work on the database file, also while `serve` runs:
//!
//! - `query` runs the reports (`consent` finds each contact's current
//!   consent for `opt-outs --current`), and `output` writes their rows as a table,
//!   CSV, JSON or NDJSON. `export` streams every row of one kind.
//! - `status` shows counts per kind and warns about silent kinds.
//! - `import` backfills deliveries from files through `store`, and
//!   `replay` rebuilds normalized rows from the raw bodies.
//! - `backup` writes a checked copy, `prune` removes old raw bodies, and
//!   `forget` erases one person everywhere.
//! - `urls` prints the webhook URLs to register in DailyStory, and
//!   `simulate` posts the embedded `samples` to a running server.
//!
//! `cli` defines the command line, `time` reads and writes times, and
//! `progress` draws progress bars for the long commands.

pub mod backup;
pub mod catalog;
pub mod cli;
pub mod consent;
pub mod export;
pub mod forget;
pub mod http;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod normalize;
pub mod output;
pub mod progress;
pub mod prune;
pub mod query;
pub mod replay;
pub mod samples;
pub mod server;
pub mod simulate;
pub mod status;
pub mod store;
pub mod time;
pub mod urls;
pub mod writer;
