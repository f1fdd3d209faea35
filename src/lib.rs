//! usaged: a per-core event-loop HTTP server for the usages API (`../shared/API.md`).
//!
//! How a request flows: a worker thread ([`server::worker`]) waits on its own `mio` poll and
//! `SO_REUSEPORT` listener. When a connection is readable, [`server::conn`] makes one `read` into
//! the connection's buffer, then [`http::request`] frames every complete request in it (head via
//! `httparse`, body by `Content-Length` or [`http::chunked`]) without copying, [`app::router`]
//! picks the route, [`json::scan`] and [`time::parse()`] validate a posted usage, and
//! [`store::arena`] appends it to this worker's stripe, hands out its id and encodes its journal
//! record into the worker's batch ([`store::journal`] is the format). Each answer is appended to
//! the worker's [`server::outbox`], tagged with the journal batch it depends on. At the end of
//! the loop turn the batch goes to the worker's journal thread ([`store::committer`]), which
//! writes (and syncs) it and wakes the worker; only then do the answers that waited for it leave,
//! one `write` per connection. Answers that depend on nothing (a `GET`) leave at the end of
//! their turn.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod access_log;
pub mod app;
pub mod config;
pub mod http;
pub mod json;
pub mod metrics;
pub mod server;
pub mod store;
pub mod time;
