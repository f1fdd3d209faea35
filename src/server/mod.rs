//! Sockets and threads: the `SO_REUSEPORT` listeners ([`listener`]), one pinned event loop per
//! worker ([`worker`]), the connection state machine ([`conn`]), and signal handling
//! ([`signals`]). `server/` never looks inside a body.

pub mod conn;
pub mod listener;
pub mod rlimit;
pub mod signals;
pub mod timer;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::app::App;
use crate::config::Config;
use crate::metrics::Metrics;
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
    shutdown: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    handles: Vec<JoinHandle<()>>,
}

/// Bind every listener, start one worker per thread (pinned unless `--no-pin`), and return
/// once all of them accept. Errors (a port in use, an address we do not have) come before any
/// worker runs.
pub fn start(
    config: &Config,
    store: Arc<Store>,
    writers: Vec<StripeWriter>,
) -> io::Result<Running> {
    let mut access: Vec<Option<crate::access_log::WorkerLog>> = match &config.access_log {
        None => (0..writers.len()).map(|_| None).collect(),
        Some(p) => {
            let target = if p.as_os_str() == "-" {
                crate::access_log::Target::Stdout
            } else {
                crate::access_log::Target::File(p.clone())
            };
            crate::access_log::start(target, writers.len())?
                .into_iter()
                .map(Some)
                .collect()
        }
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let threads = writers.len();
    let listeners = listener::bind_all(SocketAddr::new(config.bind, config.port), threads)?;
    let addr = listeners[0].local_addr()?;
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
    let shutdown = Arc::new(AtomicBool::new(false));
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
            app: App::new(Arc::clone(&store), writer, Arc::clone(&metrics)),
            access: access[index].take(),
            metrics: Arc::clone(&metrics),
            limits,
            max_conns,
            shutdown: Arc::clone(&shutdown),
            shutdown_timeout: config.shutdown_timeout,
            ready: ready_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("usaged-worker-{index}"))
            .spawn(move || worker::run(setup))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut wakers = Vec::with_capacity(threads);
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(w)) => wakers.push(w),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a worker exited while starting")),
        }
    }
    Ok(Running {
        addr,
        metrics,
        workers: threads,
        cpus,
        max_conns,
        shutdown,
        wakers,
        handles,
    })
}

impl Running {
    /// Stop accepting, let open requests finish (up to the shutdown timeout), join the workers.
    pub fn stop(self) {
        self.shutdown.store(true, Ordering::Release);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for h in self.handles {
            let _ = h.join();
        }
    }
}
