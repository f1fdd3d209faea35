//! Cold reads: a `GET` for a usage no longer in RAM is read from its journal segment by the
//! worker's reader thread, so a slow disk never stalls the worker's loop. The connection waits
//! ("parked", nothing after the request is read or answered) while its other answers and every
//! other connection go on; the thread hands the result back through a list the worker takes
//! once per loop turn (one lock per turn with reads outstanding, none otherwise) and wakes the
//! loop through its waker.
#![forbid(unsafe_code)]

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::Waker;

use crate::app::ColdAsk;
use crate::store::cold::{ColdRead, Reader};
use crate::store::journal::Header;

/// Where a reader thread reads usages from: the journal's segments, or nothing (no journal).
pub trait ColdSource: Send {
    fn read(&mut self, key: &Header, slot: u64, id: u64) -> ColdRead;

    /// No read is waiting: a moment to let go of what is no longer needed.
    fn idle(&mut self) {}
}

impl ColdSource for Reader {
    fn read(&mut self, key: &Header, slot: u64, id: u64) -> ColdRead {
        Reader::read(self, key, slot, id)
    }

    /// Close the files of segments retention removed.
    fn idle(&mut self) {
        self.prune();
    }
}

/// Without a journal nothing is on disk: an id not in RAM is not stored.
pub struct NoDisk;

impl ColdSource for NoDisk {
    fn read(&mut self, _: &Header, _: u64, _: u64) -> ColdRead {
        ColdRead::Missing
    }
}

/// A read asked for by connection `(conn, generation)`, its `ticket`-th.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub conn: usize,
    pub generation: u32,
    pub ticket: u32,
    pub what: ColdAsk,
}

/// A read done: for whom, what it found, and how long from the ask (ns).
pub struct Done {
    pub conn: usize,
    pub generation: u32,
    pub ticket: u32,
    pub result: ColdRead,
    pub nanos: u64,
}

type DoneList = Arc<Mutex<Vec<Done>>>;

fn lock(l: &DoneList) -> MutexGuard<'_, Vec<Done>> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// A worker's end of its reader thread.
pub struct ColdReads {
    tx: Option<Sender<(Ask, Instant)>>,
    done: DoneList,
    thread: Option<JoinHandle<()>>,
    /// Says when the thread is done (so a stop can wait with a deadline).
    finished: Receiver<()>,
    /// Asked and not yet collected.
    pending: usize,
}

impl ColdReads {
    /// Start worker `worker`'s reader thread over `source`; it calls `wake` after results.
    pub fn start(
        source: Box<dyn ColdSource>,
        wake: Arc<Waker>,
        worker: usize,
    ) -> io::Result<ColdReads> {
        let (tx, rx) = mpsc::channel();
        let done: DoneList = Arc::default();
        let d = Arc::clone(&done);
        let (finished_tx, finished) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("usaged-reader-{worker}"))
            .spawn(move || {
                serve(source, &rx, &d, &wake, worker);
                let _ = finished_tx.send(());
            })?;
        Ok(ColdReads {
            tx: Some(tx),
            done,
            thread: Some(thread),
            finished,
            pending: 0,
        })
    }

    /// Reads asked and not collected yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn ask(&mut self, a: Ask) {
        if let Some(tx) = &self.tx
            && tx.send((a, Instant::now())).is_ok()
        {
            self.pending += 1;
        }
    }

    /// Move the reads done so far into `into` (no lock taken when none is outstanding).
    pub fn collect(&mut self, into: &mut Vec<Done>) {
        if self.pending == 0 {
            return;
        }
        let before = into.len();
        into.append(&mut lock(&self.done));
        self.pending -= into.len() - before;
    }

    /// Stop the thread once the reads asked are done, waiting until `deadline` at most: a
    /// read stuck on a dying disk is left behind (the process exits without it).
    pub fn stop(&mut self, deadline: Instant) -> bool {
        self.tx = None;
        let Some(t) = self.thread.take() else {
            return true;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if self.finished.recv_timeout(left).is_ok() {
            let _ = t.join();
            return true;
        }
        false
    }
}

impl Drop for ColdReads {
    fn drop(&mut self) {
        self.stop(Instant::now() + std::time::Duration::from_secs(1));
    }
}

/// The reader thread: read what is asked, in order; hand results over and wake the worker
/// once per burst of asks.
fn serve(
    mut source: Box<dyn ColdSource>,
    rx: &Receiver<(Ask, Instant)>,
    done: &DoneList,
    wake: &Waker,
    worker: usize,
) {
    let mut unreadable = 0u64;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some((a, t)) = next {
            let result = source.read(&a.what.key, a.what.slot, a.what.id);
            if let ColdRead::Unreadable(why) = &result {
                unreadable += 1;
                // One line per such read at first, then one per 1000: a client retrying in a
                // loop must not flood the log.
                if unreadable <= 10 || unreadable.is_multiple_of(1000) {
                    eprintln!(
                        "usaged: worker {worker}: usage {} could not be read back ({unreadable} so far): {why}",
                        a.what.id
                    );
                }
            }
            lock(done).push(Done {
                conn: a.conn,
                generation: a.generation,
                ticket: a.ticket,
                result,
                nanos: t.elapsed().as_nanos() as u64,
            });
            next = rx.try_recv().ok();
        }
        let _ = wake.wake();
        source.idle();
    }
}
