//! Sockets and threads: the `SO_REUSEPORT` listeners ([`listener`]), one pinned event loop per
//! worker ([`worker`]), the connection state machine ([`conn`]), and signal handling
//! ([`signals`]). `server/` never looks inside a body.

pub mod conn;
pub mod listener;
pub mod outbox;
pub mod rlimit;
pub mod signals;
pub mod sys;
pub mod timer;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::app::{App, Node};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::committer;
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
) -> Result<Running, String> {
    let mut access: Vec<Option<crate::access_log::WorkerLog>> = match &config.access_log {
        None => (0..writers.len()).map(|_| None).collect(),
        Some(p) => {
            let target = if p.as_os_str() == "-" {
                crate::access_log::Target::Stdout
            } else {
                crate::access_log::Target::File(p.clone())
            };
            crate::access_log::start(target, writers.len())
                .map_err(|e| format!("cannot open --access-log {}: {e}", p.display()))?
                .into_iter()
                .map(Some)
                .collect()
        }
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let threads = writers.len();
    let want = SocketAddr::new(config.bind, config.port);
    let listen_err = |e: io::Error| format!("cannot listen on {want}: {e}");
    listener::ensure_free(want).map_err(listen_err)?;
    let listeners = listener::bind_all(want, threads).map_err(listen_err)?;
    let addr = listeners[0].local_addr().map_err(listen_err)?;
    // Past the limit, connections wait in the backlog instead of failing accept with EMFILE:
    // the open-file limit, less a reserve for the process, shared by the workers.
    let max_conns = config.max_conns.unwrap_or_else(|| {
        let (soft, _) = rlimit::open_files().unwrap_or((1024, 1024));
        (soft.saturating_sub(64) as usize / threads).max(1)
    });
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let limits = conn::Limits {
        max_header: config.max_header,
        max_body: config.max_body,
        timeouts: conn::Timeouts {
            header_ms: ms(config.header_timeout),
            body_ms: ms(config.body_timeout),
            idle_ms: ms(config.idle_timeout),
            write_ms: ms(config.write_timeout),
            linger_ms: 2000,
        },
    };
    let mut cpus = Vec::with_capacity(threads);
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
    });
    let mut journals: Vec<Option<committer::Setup>> = match journals {
        Some(j) => j.into_iter().map(Some).collect(),
        None => (0..threads).map(|_| None).collect(),
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(threads);
    for (index, (listener, writer)) in listeners.into_iter().zip(writers).enumerate() {
        let core = if config.pin && !cores.is_empty() {
            Some(cores[index % cores.len()])
        } else {
            None
        };
        cpus.push(core.map(|c| c.id));
        let setup = worker::Setup {
            index,
            listener,
            core,
            app: App::new(
                Arc::clone(&store),
                writer,
                Arc::clone(&metrics),
                Arc::clone(&node),
            ),
            journal: journals[index]
                .take()
                .map(|j| (j, Arc::clone(&statuses[index]))),
            access: access[index].take(),
            metrics: Arc::clone(&metrics),
            limits,
            max_conns,
            drain_grace: config.drain_grace,
            shutdown_timeout: config.shutdown_timeout,
            ready: ready_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("usaged-worker-{index}"))
            .spawn(move || worker::run(setup))
            .map_err(|e| format!("cannot start worker {index}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut wakers = Vec::with_capacity(threads);
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(w)) => wakers.push(w),
            Ok(Err(e)) => return Err(format!("a worker could not start: {e}")),
            Err(_) => return Err("a worker exited while starting".into()),
        }
    }
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
