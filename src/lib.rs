//! usaged: a per-core event-loop HTTP server for the usages API (`../shared/API.md`).
//!
//! How a request flows, in order:
//! 1. **Read.** A worker thread ([`server::worker`], one per core) sleeps in its own `mio` poll
//!    on its `SO_REUSEPORT` listener and connections; its loop turn (`Worker::turn`) is a
//!    list of named phases. For a readable connection, [`server::conn::Conn::on_ready`]
//!    makes one `read` into the connection's input buffer (`server/conn/input.rs`).
//! 2. **Frame.** `Conn::process` (`server/conn/request.rs`) takes every complete request in
//!    the buffer: the head through [`http::request`] (`httparse`, no copy), the body by
//!    `Content-Length` or [`http::chunked`].
//! 3. **Route.** [`app::router::route`] maps method and path to a route (404, 405 + `Allow`).
//! 4. **Validate.** [`app::usages::create`] has [`json::scan`] check the posted object, and
//!    the scanner has [`time::parse()`] check its timestamp; a bad one gets its 4xx
//!    ([`http::status`]).
//! 5. **Store.** [`store::arena::StripeWriter::append`] puts the usage in this worker's stripe
//!    and hands out its id ([`store::ids`]), and encodes its journal record
//!    ([`store::journal`] is the format) into the worker's batch.
//! 6. **Journal.** The answer goes into the worker's [`server::outbox`], tagged with the batch
//!    it waits for. At the end of the turn the batch is handed to the worker's journal thread
//!    ([`store::committer`]), which writes (and, as `--sync` says, syncs) it and then tells
//!    the worker, waking it only if it sleeps.
//! 7. **Answer.** Only then does [`server::outbox::Outbox::take_ready`] release the answers
//!    that waited for that batch, and [`server::conn::Conn::complete`] writes each
//!    connection's answers with one `write`. Answers that wait for nothing (a `GET`) leave at
//!    the end of their own turn.
//!
//! A `GET /api/usages/{id}` takes steps 1–3, then [`app::usages::get`] reads the stripe that
//! owns the id (any worker's cache, wait-free) and answers at step 7; an id no longer in RAM is
//! read from its sealed journal segment ([`store::cold`]) by the worker's reader thread
//! ([`server::cold`]) while its connection waits, and answered when the read is back. When a
//! segment seals, the journal thread indexes it ([`store::index`]) and puts it in the
//! [`store::segments`] table, and the cache may recycle its slots; [`store::retention`]
//! removes old segments.
//!
//! A `POST` with an `Idempotency-Key` ([`app::keyed`]) is looked up in the node's key table
//! ([`idem`]) after step 4: a retry is answered as its first request was, storing nothing; a
//! new key is claimed with the id it is about to get, and its journal record carries the key
//! (step 5), so the key survives a crash exactly when the usage does. An NDJSON bulk
//! ([`app::bulk`]) takes steps 4 and 5 once per line as its body streams in.
//!
//! Many nodes: each is started as `--node K --nodes N` and hands out only ids whose
//! `(id − base − 1) mod N` is `K` ([`store::ids::Layout`], recorded in the data directory by
//! [`store::identity`]); [`cluster`] writes the HAProxy configuration that sends each read to
//! the node owning its id.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod access_log;
pub mod app;
pub mod cluster;
pub mod config;
pub mod http;
pub mod idem;
pub mod json;
pub mod metrics;
pub mod server;
pub mod ship;
pub mod store;
pub mod time;
