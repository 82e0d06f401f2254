//! dsevents receives DailyStory webhooks over HTTP, keeps every delivery in
//! SQLite and answers report questions from the command line.
//!
//! The path of a delivery:
//!
//! 1. `http` reads the request from the socket with bounded size and time,
//!    and rejects bad framing.
//! 2. `server` routes it, checks the token and body size, and builds a
//!    `store::Delivery`, which runs `normalize` on the body for the kind
//!    named in the URL (`catalog` lists every kind, its table and fields).
//! 3. `writer` commits waiting deliveries together in one transaction
//!    (group commit) through `store`, and only then lets each handler answer.
//!
//! `query` and `output` answer the report commands; `cli` defines the
//! command line; `time` reads and writes times.
//! `urls` prints the webhook URLs to register in DailyStory, and
//! `simulate` posts the embedded `samples` to a running server.

pub mod backup;
pub mod catalog;
pub mod cli;
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
