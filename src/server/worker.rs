//! One worker: a thread pinned to one CPU, its own `mio` poll and `SO_REUSEPORT` listener, its
//! own connections, output buffer, `Date` cache and stripe of the store. A loop turn is:
//! wait → clock → accept → drive ready connections → shutdown check.

use std::io;
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::conn::{Conn, Ctx, DEFAULT_BUF, Limits, Next};
use crate::app::App;
use crate::http::date::DateCache;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Read buffers kept for reuse when connections close.
const SPARE_BUFFERS: usize = 256;

/// Everything a worker thread starts with.
pub struct Setup {
    pub index: usize,
    pub listener: StdListener,
    pub core: Option<core_affinity::CoreId>,
    pub app: App,
    pub limits: Limits,
    pub shutdown: Arc<AtomicBool>,
    pub shutdown_timeout: Duration,
    /// Where the worker reports that it is accepting (with its waker) or why it cannot.
    pub ready: Sender<io::Result<Arc<Waker>>>,
}

/// A connection slot; `generation` goes into the token, so an event for a connection closed
/// earlier in the same batch (whose slot was reused) is recognised and dropped.
struct Slot {
    generation: u32,
    conn: Option<(TcpStream, Conn)>,
}

/// Token layout: generation in the high 32 bits, slot index in the low 32.
fn token(index: usize, generation: u32) -> Token {
    Token((generation as usize) << 32 | index)
}

pub fn run(setup: Setup) {
    let Setup {
        index,
        listener,
        core,
        mut app,
        limits,
        shutdown,
        shutdown_timeout,
        ready,
    } = setup;
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let started = (|| {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok((poll, waker, listener))
    })();
    let (mut poll, waker, listener) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(waker));
    let mut w = Worker {
        index,
        listener: Some(listener),
        slots: Vec::new(),
        free: Vec::new(),
        spare: Vec::new(),
        open: 0,
        out: Vec::with_capacity(128 * 1024),
        date: DateCache::default(),
        limits,
        draining: None,
    };
    let mut events = Events::with_capacity(1024);
    loop {
        let timeout = w.draining.map(|_| Duration::from_millis(50));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("worker {index}: epoll_wait failed: {e}");
        }
        w.date.update(SystemTime::now());
        for ev in events.iter() {
            match ev.token() {
                LISTENER => w.accept(&poll),
                WAKER => {}
                t => {
                    let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    w.drive(t, readable, &mut app);
                }
            }
        }
        if shutdown.load(Ordering::Acquire) && w.draining.is_none() {
            w.start_drain(&poll, Instant::now() + shutdown_timeout);
        }
        if let Some(deadline) = w.draining {
            if w.open == 0 || Instant::now() >= deadline {
                return;
            }
        }
    }
}

struct Worker {
    index: usize,
    listener: Option<TcpListener>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    spare: Vec<Box<[u8]>>,
    open: usize,
    out: Vec<u8>,
    date: DateCache,
    limits: Limits,
    /// When shutting down: the deadline for the last connections.
    draining: Option<Instant>,
}

impl Worker {
    fn accept(&mut self, poll: &Poll) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let index = self.free.pop().unwrap_or_else(|| {
                        self.slots.push(Slot {
                            generation: 0,
                            conn: None,
                        });
                        self.slots.len() - 1
                    });
                    let slot = &mut self.slots[index];
                    let t = token(index, slot.generation);
                    if poll
                        .registry()
                        .register(&mut stream, t, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        self.free.push(index);
                        continue;
                    }
                    let buf = self
                        .spare
                        .pop()
                        .unwrap_or_else(|| vec![0; DEFAULT_BUF].into_boxed_slice());
                    slot.conn = Some((stream, Conn::new(buf)));
                    self.open += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                // Out of descriptors or buffers: leave the rest in the backlog for now.
                Err(e) => return accept_failed(self.index, &e),
            }
        }
    }

    fn drive(&mut self, t: Token, readable: bool, app: &mut App) {
        let index = t.0 & 0xffff_ffff;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if token(index, slot.generation) != t {
            return;
        }
        let Some((stream, conn)) = slot.conn.as_mut() else {
            return;
        };
        let mut ctx = Ctx {
            app,
            out: &mut self.out,
            date: &self.date,
            limits: self.limits,
            draining: self.draining.is_some(),
        };
        match conn.on_ready(stream, &mut ctx, readable) {
            Next::Keep => {}
            Next::Linger => {
                if stream.shutdown(std::net::Shutdown::Write).is_err() {
                    self.close(index);
                }
            }
            Next::Close => self.close(index),
        }
    }

    fn close(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if let Some((stream, conn)) = slot.conn.take() {
            drop(stream);
            let buf = conn.into_buf();
            if self.spare.len() < SPARE_BUFFERS && buf.len() == DEFAULT_BUF {
                self.spare.push(buf);
            }
            slot.generation = slot.generation.wrapping_add(1) & 0x7fff_ffff;
            self.free.push(index);
            self.open -= 1;
        }
    }

    /// Stop accepting and close idle connections; the rest finish (closing after their
    /// answer) until the deadline.
    fn start_drain(&mut self, poll: &Poll, deadline: Instant) {
        self.draining = Some(deadline);
        if let Some(mut l) = self.listener.take() {
            let _ = poll.registry().deregister(&mut l);
        }
        for i in 0..self.slots.len() {
            if self.slots[i]
                .conn
                .as_ref()
                .is_some_and(|(_, c)| c.is_idle())
            {
                self.close(i);
            }
        }
    }
}

#[cold]
fn accept_failed(worker: usize, e: &io::Error) {
    eprintln!("worker {worker}: accept failed: {e}");
}
