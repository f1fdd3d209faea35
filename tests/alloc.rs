//! The connection's hot path allocates nothing in steady state: a counting global allocator
//! watches the real connection state machine answer pipelined batches of posts and gets after a
//! warm-up.
//!
//! What runs: `Conn::run_once`, the worker's two steps for one connection back to back, against
//! an in-memory socket double: `on_ready` (read → frame → route → validate → store, each answer
//! appended to the output buffer) and then `complete` (one `write` of those answers).
//!
//! What does not: in the server, answers wait between those two steps in the worker's outbox
//! (`src/server/outbox.rs`) until the worker's journal thread (`src/store/committer.rs`) has
//! written the batch their usages were encoded into. Here the store has no journal (nothing
//! calls `enable_journal`, so no record is encoded), and there is no outbox, journal thread or
//! poll loop: their allocations are not counted by this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::sync::Arc;

use usaged::app::App;
use usaged::http::date::DateCache;
use usaged::server::conn::{Conn, Ctx, DEFAULT_BUF, Limits, Next, Timeouts};
use usaged::store::arena::Geometry;
use usaged::store::{EpochLayout, Store};

static WORKER_METRICS: std::sync::LazyLock<usaged::metrics::WorkerMetrics> =
    std::sync::LazyLock::new(Default::default);
const TIMEOUTS: Timeouts = Timeouts {
    header_ms: 10_000,
    body_ms: 10_000,
    idle_ms: 60_000,
    write_ms: 10_000,
    linger_ms: 2000,
};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations this thread made while counting (per thread: tests run in parallel).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only const-initialised thread-locals (which never allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: forwarded from our caller, who upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from our caller, who upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: forwarded from our caller, who upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Hands out the same batch on every readiness; swallows writes into a reused buffer.
struct Loopback {
    batch: Vec<u8>,
    pending: bool,
    written: usize,
}

impl Read for Loopback {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.pending {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.pending = false;
        buf[..self.batch.len()].copy_from_slice(&self.batch);
        Ok(self.batch.len())
    }
}

impl Write for Loopback {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.written += data.len();
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const POST: &str = "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 98\r\n\r\n{\"patientId\":\"100\",\"timestamp\":\"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)\",\"medication\":\"Albuterol\"}";

/// Runs `warm` batches, then `counted` batches while counting: the allocations counted.
fn allocations_after_warm_up(store: &Arc<Store>, warm: usize, counted: usize) -> usize {
    let mut app = App::new(
        Arc::clone(store),
        store.writer(0),
        Arc::new(usaged::metrics::Metrics::new(1)),
        Arc::new(Default::default()),
    );
    let mut out = Vec::with_capacity(64 * 1024);
    let date = DateCache::default();
    let mut conn = Conn::new(vec![0; DEFAULT_BUF].into_boxed_slice());
    // 16 posts and 16 gets (a long patient id, so the intern table is used too), pipelined.
    let long_post = POST
        .replace("\"100\"", "\"patient-with-a-long-identifier\"")
        .replace("98", "125");
    let mut batch = String::new();
    for i in 0..16 {
        batch.push_str(if i % 2 == 0 { POST } else { &long_post });
        batch.push_str(&format!(
            "GET /api/usages/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            i + 1
        ));
    }
    let mut sock = Loopback {
        batch: batch.into_bytes(),
        pending: false,
        written: 0,
    };
    let limits = Limits {
        max_header: 8192,
        max_body: 65536,
        max_bulk: 1 << 20,
        timeouts: TIMEOUTS,
    };
    let mut run = |sock: &mut Loopback, n: usize| {
        for _ in 0..n {
            sock.pending = true;
            let mut ctx = Ctx {
                app: &mut app,
                out: &mut out,
                out_start: 0,
                date: &date,
                limits,
                draining: false,
                now_ms: 0,
                turn_start: 0,
                metrics: &WORKER_METRICS,
                access: None,
                log_time: b"",
            };
            assert_eq!(conn.run_once(sock, &mut ctx, true), Next::Keep);
        }
    };
    run(&mut sock, warm);
    let before = sock.written;
    let start = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    run(&mut sock, counted);
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.with(Cell::get) - start;
    println!(
        "{allocations} allocations for {} requests ({} bytes answered)",
        counted * 32,
        sock.written - before
    );
    allocations
}

#[test]
fn steady_state_requests_allocate_nothing() {
    let store = Arc::new(Store::new(1));
    let allocations = allocations_after_warm_up(&store, 100, 900);
    // 16,000 usages stay inside the first chunk of the ring (16,384 records), so no frame is
    // allocated either.
    assert_eq!(store.len(), 1000 * 16);
    assert_eq!(store.cache_usages(), 1000 * 16);
    assert_eq!(allocations, 0, "allocations after warm-up");
}

/// A tiny ring (4 chunks of 64 records) wraps during the warm-up and some 200 times more while
/// counted: entering a chunk, evicting one and reusing its string blocks allocate nothing; the
/// gets of evicted ids answer `410`.
#[test]
fn a_wrapping_ring_allocates_nothing() {
    let geometry = Geometry {
        chunk_bits: 6,
        frames: 4,
        blocks: 8,
        block_bits: 6,
    };
    let layout = EpochLayout {
        base: 0,
        starts: vec![0],
        ends: None,
    };
    let store = Arc::new(Store::with_geometry(&[layout], geometry, false));
    let allocations = allocations_after_warm_up(&store, 100, 1000);
    assert_eq!(store.len(), 1100 * 16);
    assert!(store.cache_usages() <= geometry.records());
    assert!(store.cache_bytes() <= geometry.bytes());
    assert_eq!(allocations, 0, "allocations after warm-up");
}
