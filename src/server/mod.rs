//! Sockets and threads: the `SO_REUSEPORT` listeners ([`listener`]), one pinned event loop per
//! worker ([`worker`]), the connection state machine ([`conn`]), and signal handling
//! ([`signals`]). `server/` never looks inside a body.

pub mod conn;
pub mod listener;
pub mod signals;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::app::App;
use crate::config::Config;
use crate::store::Store;

/// A started server: every worker is accepting.
pub struct Running {
    pub addr: SocketAddr,
    pub workers: usize,
    shutdown: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    handles: Vec<JoinHandle<()>>,
}

/// Bind every listener, start one worker per thread (pinned unless `--no-pin`), and return
/// once all of them accept. Errors (a port in use, an address we do not have) come before any
/// worker runs.
pub fn start(config: &Config) -> io::Result<Running> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let threads = config.threads.unwrap_or(cores.len().max(1));
    let listeners = listener::bind_all(SocketAddr::new(config.bind, config.port), threads)?;
    let addr = listeners[0].local_addr()?;
    let store = Arc::new(Store::new(threads as u32));
    let shutdown = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(threads);
    for (index, listener) in listeners.into_iter().enumerate() {
        let setup = worker::Setup {
            index,
            listener,
            core: if config.pin && !cores.is_empty() {
                Some(cores[index % cores.len()])
            } else {
                None
            },
            app: App::new(Arc::clone(&store), index as u32),
            limits: conn::Limits {
                max_header: config.max_header,
                max_body: config.max_body,
            },
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
        workers: threads,
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
