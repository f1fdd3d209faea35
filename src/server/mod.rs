//! Sockets and threads: the `SO_REUSEPORT` listeners ([`listener`]), one pinned event loop per
//! worker ([`worker`]) with its connection slots ([`slab`]), timer wheel ([`timer`]) and
//! outbox of answers waiting for the journal ([`outbox`]), the connection state machine
//! ([`conn`]), and signal handling ([`signals`]). [`start`] sets them up in named steps.
//! `server/` never looks inside a body.

pub mod cold;
pub mod conn;
pub mod listener;
pub mod outbox;
pub mod rlimit;
pub mod signals;
pub mod slab;
pub mod sys;
pub mod timer;
pub mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::access_log::{self, WorkerLog};
use crate::app::{App, Node};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::cold::Reader;
use crate::store::committer;
use crate::store::segments::Segments;
use crate::store::{Store, StripeWriter};

/// Workers this configuration runs: `--threads`, else one per CPU of the affinity mask.
pub fn worker_count(config: &Config) -> usize {
    config
        .threads
        .unwrap_or_else(|| core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)))
}
/// A started server: every worker is accepting.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub workers: usize,
    /// The CPU each worker is pinned to (`None`: not pinned).
    pub cpus: Vec<Option<usize>>,
    pub max_conns: usize,
    node: Arc<Node>,
    wakers: Vec<Arc<mio::Waker>>,
    handles: Vec<JoinHandle<()>>,
}

/// Bind every listener, start one worker (and its journal thread, given `journals`) per
/// thread (pinned unless `--no-pin`), and return once all of them accept. Errors (a port
/// another process serves, an address we do not have, a journal that cannot be created) come
/// before any worker answers; each names what failed.
pub fn start(
    config: &Config,
    store: Arc<Store>,
    writers: Vec<StripeWriter>,
    journals: Option<Vec<committer::Setup>>,
    segments: Option<Arc<Segments>>,
) -> Result<Running, String> {
    let threads = writers.len();
    let access = open_access_logs(config, threads)?;
    let (listeners, addr) = bind(config, threads)?;
    let max_conns = max_conns(config, threads);
    let limits = conn_limits(config);
    let metrics = Arc::new(Metrics::new(threads));
    let statuses: Vec<Arc<committer::Status>> = (0..threads)
        .map(|_| Arc::new(committer::Status::default()))
        .collect();
    let node = Arc::new(Node {
        draining: Default::default(),
        journals: if journals.is_some() {
            statuses.clone()
        } else {
            Vec::new()
        },
        keys: keys(config, threads, journals.is_some())?,
    });
    let journals: Vec<Option<(committer::Setup, Arc<committer::Status>)>> = match journals {
        Some(j) => j.into_iter().zip(statuses).map(Some).collect(),
        None => (0..threads).map(|_| None).collect(),
    };
    assert_eq!(journals.len(), threads, "one journal per stripe");
    let cores = pinning(config, threads);
    let cpus = cores.iter().map(|c| c.map(|c| c.id)).collect();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(threads);
    let parts = listeners.into_iter().zip(writers).zip(journals).zip(access);
    for (index, (((listener, writer), journal), access)) in parts.enumerate() {
        let mut app = App::new(
            Arc::clone(&store),
            writer,
            Arc::clone(&metrics),
            Arc::clone(&node),
        );
        app.worker = index;
        let setup = worker::Setup {
            index,
            listener,
            core: cores[index],
            app,
            journal,
            cold: match &segments {
                Some(s) => Box::new(Reader::new(Arc::clone(s))),
                None => Box::new(cold::NoDisk),
            },
            access,
            metrics: Arc::clone(&metrics),
            limits,
            max_conns,
            drain_grace: config.drain_grace,
            shutdown_timeout: config.shutdown_timeout,
            ready: ready_tx.clone(),
        };
        handles.push(spawn_worker(setup)?);
    }
    drop(ready_tx);
    let wakers = wait_ready(&ready_rx, threads)?;
    Ok(Running {
        addr,
        metrics,
        workers: threads,
        cpus,
        max_conns,
        node,
        wakers,
        handles,
    })
}

/// The node's `Idempotency-Key` table, with the keys of the journal's window (`journaled`).
fn keys(config: &Config, threads: usize, journaled: bool) -> Result<crate::idem::Keys, String> {
    // Whole seconds, rounded up: a key is kept at least the window.
    let window_s = config.idempotency_window.as_millis().div_ceil(1000).max(1) as u64;
    let keys = crate::idem::Keys::new(config.idempotency_memory, window_s, threads);
    if journaled {
        let t = std::time::Instant::now();
        let found =
            crate::idem::recover::rebuild(&config.data_dir, &keys, window_s).map_err(|e| {
                format!(
                    "reading Idempotency-Keys from {}: {e}",
                    config.data_dir.display()
                )
            })?;
        if found.keys > 0 {
            eprintln!(
                "usaged: {} Idempotency-Key records from {} segments of the last {window_s} s \
                 ({} more without keys skipped by their index) in {} ms",
                found.keys,
                found.segments,
                found.unkeyed,
                t.elapsed().as_millis()
            );
        }
    }
    Ok(keys)
}

/// One access-log buffer per worker with `--access-log` (`-`: standard output).
fn open_access_logs(config: &Config, threads: usize) -> Result<Vec<Option<WorkerLog>>, String> {
    let Some(p) = &config.access_log else {
        return Ok((0..threads).map(|_| None).collect());
    };
    let target = if p.as_os_str() == "-" {
        access_log::Target::Stdout
    } else {
        access_log::Target::File(p.clone())
    };
    Ok(access_log::start(target, threads)
        .map_err(|e| format!("cannot open --access-log {}: {e}", p.display()))?
        .into_iter()
        .map(Some)
        .collect())
}

/// One `SO_REUSEPORT` listener per worker, and the address they share (port 0 resolved).
fn bind(config: &Config, threads: usize) -> Result<(Vec<StdListener>, SocketAddr), String> {
    let want = SocketAddr::new(config.bind, config.port);
    let listen_err = |e: io::Error| format!("cannot listen on {want}: {e}");
    listener::ensure_free(want).map_err(listen_err)?;
    let listeners = listener::bind_all(want, threads).map_err(listen_err)?;
    let addr = listeners[0].local_addr().map_err(listen_err)?;
    Ok((listeners, addr))
}

/// Connections per worker: `--max-conns`, else the open-file limit, less a reserve for the
/// process, shared by the workers. Past it, connections wait in the backlog instead of
/// failing accept with EMFILE.
fn max_conns(config: &Config, threads: usize) -> usize {
    config.max_conns.unwrap_or_else(|| {
        let (soft, _) = rlimit::open_files().unwrap_or((1024, 1024));
        (soft.saturating_sub(64) as usize / threads).max(1)
    })
}

/// The request limits and timeouts every connection runs under.
fn conn_limits(config: &Config) -> conn::Limits {
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    conn::Limits {
        max_header: config.max_header,
        max_body: config.max_body,
        max_bulk: config.max_bulk_body,
        timeouts: conn::Timeouts {
            header_ms: ms(config.header_timeout),
            body_ms: ms(config.body_timeout),
            idle_ms: ms(config.idle_timeout),
            write_ms: ms(config.write_timeout),
            linger_ms: 2000,
        },
    }
}

/// The core each worker is pinned to, round-robin over the affinity mask (`None`: not
/// pinned, with `--no-pin` or no mask to read).
fn pinning(config: &Config, threads: usize) -> Vec<Option<core_affinity::CoreId>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    (0..threads)
        .map(|index| (config.pin && !cores.is_empty()).then(|| cores[index % cores.len()]))
        .collect()
}

fn spawn_worker(setup: worker::Setup) -> Result<JoinHandle<()>, String> {
    let index = setup.index;
    std::thread::Builder::new()
        .name(format!("usaged-worker-{index}"))
        .spawn(move || worker::run(setup))
        .map_err(|e| format!("cannot start worker {index}: {e}"))
}

/// Wait until every worker accepts (its waker comes back), or one reports why it cannot.
fn wait_ready(
    ready: &mpsc::Receiver<io::Result<Arc<mio::Waker>>>,
    threads: usize,
) -> Result<Vec<Arc<mio::Waker>>, String> {
    let mut wakers = Vec::with_capacity(threads);
    for _ in 0..threads {
        match ready.recv() {
            Ok(Ok(w)) => wakers.push(w),
            Ok(Err(e)) => return Err(format!("a worker could not start: {e}")),
            Err(_) => return Err("a worker exited while starting".into()),
        }
    }
    Ok(wakers)
}

impl Running {
    /// `/health` turns 503; after `--drain-grace` stop accepting, let open requests finish (up
    /// to the shutdown timeout), write the last journal records, join the workers.
    pub fn stop(self) {
        self.node.draining.store(true, Ordering::Release);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for h in self.handles {
            let _ = h.join();
        }
    }
}
