//! `--access-log PATH` (or `-` for stdout): one JSON line per request,
//! `{"time":…,"client":…,"method":…,"path":…,"status":…,"bytes":…,"us":…,"id":…}` (`id` only
//! when a usage was created). Each worker appends lines to its own buffer; once per loop turn a
//! full enough buffer is handed to one writer thread through a bounded channel, and an empty one
//! comes back from a pool. Nothing on the request path waits: when the writer falls behind and
//! a worker's buffer is full, lines are dropped and counted.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use crate::json::emit;

/// A worker's buffer is handed over once it holds this much, or at the latest every 100 ms.
const BATCH: usize = 32 * 1024;
/// Past this, a worker drops lines instead of growing its buffer.
const CAP: usize = 1 << 20;
const SEND_EVERY_MS: u64 = 100;

/// Where the writer thread writes.
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// Start the writer thread; returns what each worker needs to log into it.
pub fn start(target: Target, workers: usize) -> std::io::Result<Vec<WorkerLog>> {
    let mut out: Box<dyn Write + Send> = match target {
        Target::Stdout => Box::new(std::io::stdout()),
        Target::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
    };
    let (tx, rx) = sync_channel::<(usize, Vec<u8>)>(4 * workers);
    // Each worker gets its emptied buffers back on its own channel: no lock between workers.
    let (pool_tx, pool_rx): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| sync_channel::<Vec<u8>>(4)).unzip();
    std::thread::Builder::new()
        .name("usaged-access-log".into())
        .spawn(move || {
            for (worker, mut buf) in rx {
                if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                    eprintln!("usaged: access log write failed; lines are lost");
                }
                buf.clear();
                let _ = pool_tx[worker].try_send(buf);
            }
        })?;
    Ok(pool_rx
        .into_iter()
        .enumerate()
        .map(|(worker, pool)| WorkerLog {
            worker,
            buf: Vec::with_capacity(CAP),
            tx: tx.clone(),
            pool,
            last_send_ms: 0,
            dropped: 0,
        })
        .collect())
}

/// One worker's side of the access log.
pub struct WorkerLog {
    worker: usize,
    buf: Vec<u8>,
    tx: SyncSender<(usize, Vec<u8>)>,
    /// This worker's emptied buffers, back from the writer.
    pool: Receiver<Vec<u8>>,
    last_send_ms: u64,
    /// Lines dropped because the buffer was full.
    pub dropped: u64,
}

/// One request, as the line shows it.
pub struct Line<'a> {
    pub time: &'a [u8],
    pub client: &'a [u8],
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub status: u16,
    pub bytes: usize,
    pub micros: u64,
    pub id: Option<u64>,
}

impl WorkerLog {
    /// Append a line, or count it dropped when the buffer is full.
    pub fn log(&mut self, l: &Line<'_>) {
        if self.buf.len() + 256 + l.path.len() * 6 > CAP {
            self.dropped += 1;
            return;
        }
        let b = &mut self.buf;
        let mut num = itoa::Buffer::new();
        b.extend_from_slice(b"{\"time\":\"");
        b.extend_from_slice(l.time);
        b.extend_from_slice(b"\",\"client\":\"");
        b.extend_from_slice(l.client);
        b.extend_from_slice(b"\",\"method\":\"");
        emit::escaped(b, l.method);
        b.extend_from_slice(b"\",\"path\":\"");
        emit::escaped(b, l.path);
        b.extend_from_slice(b"\",\"status\":");
        b.extend_from_slice(num.format(l.status).as_bytes());
        b.extend_from_slice(b",\"bytes\":");
        b.extend_from_slice(num.format(l.bytes).as_bytes());
        b.extend_from_slice(b",\"us\":");
        b.extend_from_slice(num.format(l.micros).as_bytes());
        if let Some(id) = l.id {
            b.extend_from_slice(b",\"id\":");
            b.extend_from_slice(num.format(id).as_bytes());
        }
        b.extend_from_slice(b"}\n");
    }

    /// Lines wait to be handed over (the loop must wake to do it).
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Once per loop turn: hand a full enough buffer to the writer, if it can take it.
    pub fn turn(&mut self, now_ms: u64) {
        if self.buf.is_empty()
            || (self.buf.len() < BATCH && now_ms < self.last_send_ms + SEND_EVERY_MS)
        {
            return;
        }
        let spare = self.pool.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.buf, spare);
        match self.tx.try_send((self.worker, full)) {
            Ok(()) => self.last_send_ms = now_ms,
            Err(TrySendError::Full((_, full)) | TrySendError::Disconnected((_, full))) => {
                // The writer is behind: keep filling this one (and drop past the cap).
                let spare = std::mem::replace(&mut self.buf, full);
                drop(spare);
            }
        }
        if self.buf.capacity() < CAP {
            self.buf.reserve(CAP - self.buf.len());
        }
    }
}
