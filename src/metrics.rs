//! Operator metrics at no cost to the hot path: each worker counts in its own cache-line-aligned
//! cells with plain relaxed stores (a load and a store, no read-modify-write, no lock); a scrape
//! of `GET /metrics` sums the workers and renders the Prometheus text format (0.0.4).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::Store;
use crate::store::cold::ColdRead;
use crate::store::retention;
use crate::store::segments::Segments;

mod ship;

/// Route labels of `usaged_requests_total`.
pub const ROUTES: [&str; 5] = ["create_usage", "get_usage", "health", "metrics", "other"];
pub const ROUTE_CREATE: usize = 0;
pub const ROUTE_GET: usize = 1;
pub const ROUTE_HEALTH: usize = 2;
pub const ROUTE_METRICS: usize = 3;
pub const ROUTE_OTHER: usize = 4;
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency histogram's buckets, in nanoseconds (then +Inf).
pub const BUCKETS_NS: [u64; 14] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];
const BUCKET_LABELS: [&str; 15] = [
    "5e-06", "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
    "0.005", "0.01", "0.025", "0.05", "0.1", "+Inf",
];
/// Timeout kinds of `usaged_timeouts_total`.
pub const TIMEOUTS: [&str; 6] = ["idle", "header", "body", "write", "linger", "cold"];

/// Histogram buckets: one per bound in [`BUCKETS_NS`], then `+Inf`.
const BUCKET_COUNT: usize = BUCKET_LABELS.len();
const _: () = assert!(BUCKET_COUNT == BUCKETS_NS.len() + 1);
/// Indices into [`CLASSES`] of the error classes.
const CLASS_4XX: usize = 3;
const CLASS_5XX: usize = 4;

// Cell layout: each block starts where the one before it ends.
/// `ROUTES.len() × CLASSES.len()` request counts, route-major (see [`request_cell`]).
const REQUESTS: usize = 0;
const REQUEST_CELLS: usize = ROUTES.len() * CLASSES.len();
/// `BUCKET_COUNT` latency buckets, not cumulative.
const HIST: usize = REQUESTS + REQUEST_CELLS;
const HIST_SUM_NS: usize = HIST + BUCKET_COUNT;
pub const BYTES_IN: usize = HIST_SUM_NS + 1;
pub const BYTES_OUT: usize = BYTES_IN + 1;
pub const CONNS_ACCEPTED: usize = BYTES_OUT + 1;
pub const CONNS_CLOSED: usize = CONNS_ACCEPTED + 1;
pub const ACCEPT_ERRORS: usize = CONNS_CLOSED + 1;
pub const ACCEPT_BACKOFFS: usize = ACCEPT_ERRORS + 1;
/// The first of `TIMEOUTS.len()` cells, one per timeout kind in the order of [`TIMEOUTS`].
pub const TIMEOUT: usize = ACCEPT_BACKOFFS + 1;
pub const JOURNAL_BYTES: usize = TIMEOUT + TIMEOUTS.len();
pub const JOURNAL_FSYNCS: usize = JOURNAL_BYTES + 1;
pub const JOURNAL_FSYNC_NS: usize = JOURNAL_FSYNCS + 1;
/// Failed journal writes and syncs (each retry counts).
pub const JOURNAL_ERRORS: usize = JOURNAL_FSYNC_NS + 1;
/// 1 while this worker's journal cannot write (failing or stalled), else 0.
pub const JOURNAL_UNAVAILABLE: usize = JOURNAL_ERRORS + 1;
pub const ACCESS_LOG_DROPPED: usize = JOURNAL_UNAVAILABLE + 1;
/// Cold reads by result, in the order of [`COLD_RESULTS`].
const COLD_READS: usize = ACCESS_LOG_DROPPED + 1;
/// `BUCKET_COUNT` cold-read latency buckets (asked → read), not cumulative, and their sum.
const COLD_HIST: usize = COLD_READS + COLD_RESULTS.len();
const COLD_SUM_NS: usize = COLD_HIST + BUCKET_COUNT;
/// The highest id the worker's stripe may have handed out (its durable lease); the only cell
/// whose total is the workers' maximum, not their sum.
pub const ID_LEASE_END: usize = COLD_SUM_NS + 1;
/// Keyed requests answered again (`Idempotent-Replayed`), refused as in flight (`409`) or as
/// reused with another body (`422`); keys forgotten before their window ended (table full).
pub const KEYS_REPLAYED: usize = ID_LEASE_END + 1;
pub const KEYS_IN_FLIGHT: usize = KEYS_REPLAYED + 1;
pub const KEYS_REUSED: usize = KEYS_IN_FLIGHT + 1;
pub const KEYS_FORGOTTEN: usize = KEYS_REUSED + 1;
const CELLS: usize = KEYS_FORGOTTEN + 1;
/// Results of `usaged_cold_reads_total` (a read that timed out counts in
/// `usaged_timeouts_total{kind="cold"}`).
pub const COLD_RESULTS: [&str; 3] = ["ok", "missing", "unreadable"];

/// The cell counting answers of route `route` (an index into [`ROUTES`]) in status class
/// `class` (an index into [`CLASSES`]).
const fn request_cell(route: usize, class: usize) -> usize {
    REQUESTS + route * CLASSES.len() + class
}

/// The plain counters, rendered one family each: name, help, cell.
const COUNTERS: [(&str, &str, usize); 14] = [
    (
        "usaged_idempotency_replays_total",
        "Requests with an Idempotency-Key answered again as their first (Idempotent-Replayed).",
        KEYS_REPLAYED,
    ),
    (
        "usaged_idempotency_in_flight_total",
        "Requests with an Idempotency-Key whose first request was still being stored (409).",
        KEYS_IN_FLIGHT,
    ),
    (
        "usaged_idempotency_reused_total",
        "Requests with an Idempotency-Key seen with another body (422).",
        KEYS_REUSED,
    ),
    (
        "usaged_idempotency_forgotten_total",
        "Idempotency-Keys forgotten before their window ended, to make room (table full).",
        KEYS_FORGOTTEN,
    ),
    (
        "usaged_access_log_dropped_lines_total",
        "Access-log lines dropped because the writer fell behind.",
        ACCESS_LOG_DROPPED,
    ),
    (
        "usaged_received_bytes_total",
        "Bytes read from clients.",
        BYTES_IN,
    ),
    (
        "usaged_sent_bytes_total",
        "Bytes written to clients.",
        BYTES_OUT,
    ),
    (
        "usaged_connections_accepted_total",
        "Connections accepted.",
        CONNS_ACCEPTED,
    ),
    (
        "usaged_connections_closed_total",
        "Connections closed.",
        CONNS_CLOSED,
    ),
    (
        "usaged_accept_errors_total",
        "accept() failures other than EAGAIN.",
        ACCEPT_ERRORS,
    ),
    (
        "usaged_accept_backoffs_total",
        "Pauses in accepting after running out of descriptors or memory.",
        ACCEPT_BACKOFFS,
    ),
    (
        "usaged_journal_written_bytes_total",
        "Bytes appended to the journal.",
        JOURNAL_BYTES,
    ),
    (
        "usaged_journal_fsyncs_total",
        "fdatasync calls on journal segments.",
        JOURNAL_FSYNCS,
    ),
    (
        "usaged_journal_errors_total",
        "Journal writes and syncs that failed (each retry counts).",
        JOURNAL_ERRORS,
    ),
];

/// One worker's counters. Only that worker writes them.
#[repr(align(64))]
pub struct WorkerMetrics {
    cells: [AtomicU64; CELLS],
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            cells: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl WorkerMetrics {
    /// Add `v` to cell `i`. Single writer: a relaxed load and store, never a locked RMW.
    #[inline]
    pub fn add(&self, i: usize, v: u64) {
        let c = &self.cells[i];
        c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
    }

    /// Set cell `i` (for totals the worker keeps elsewhere, like the journal's).
    pub fn set(&self, i: usize, v: u64) {
        self.cells[i].store(v, Ordering::Relaxed);
    }

    /// One answered request of `route` with `status`.
    #[inline]
    pub fn request(&self, route: usize, status: u16) {
        let class = (status as usize / 100).clamp(1, CLASSES.len()) - 1;
        self.add(request_cell(route, class), 1);
    }

    /// `n` requests that each took `ns` nanoseconds of server time.
    #[inline]
    pub fn latency(&self, ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.add(HIST + bucket(ns), n);
        self.add(HIST_SUM_NS, ns * n);
    }

    /// A cold read came back with `r` after `ns` nanoseconds.
    pub fn cold_read(&self, r: &ColdRead, ns: u64) {
        let k = match r {
            ColdRead::Found(_) => 0,
            ColdRead::Missing => 1,
            ColdRead::Unreadable(_) => 2,
        };
        self.add(COLD_READS + k, 1);
        self.add(COLD_HIST + bucket(ns), 1);
        self.add(COLD_SUM_NS, ns);
    }

    fn get(&self, i: usize) -> u64 {
        self.cells[i].load(Ordering::Relaxed)
    }
}

/// The histogram bucket of `ns` nanoseconds.
fn bucket(ns: u64) -> usize {
    BUCKETS_NS
        .iter()
        .position(|&le| ns <= le)
        .unwrap_or(BUCKETS_NS.len())
}

/// Every worker's counters.
pub struct Metrics {
    workers: Box<[WorkerMetrics]>,
    /// The journal on disk, once the store is open with one (`set_disk`).
    disk: std::sync::OnceLock<Disk>,
    /// The shipper's counters, with `--ship-to` (`set_ship`).
    ship: std::sync::OnceLock<std::sync::Arc<crate::ship::Stats>>,
}

/// What `/metrics` shows of the journal on disk.
pub struct Disk {
    pub segments: std::sync::Arc<Segments>,
    /// Retention's counters, when `--retain` or `--retain-bytes` is on.
    pub retention: Option<std::sync::Arc<retention::Stats>>,
}

/// Sums over all workers, as a scrape or the status line sees them.
pub struct Totals {
    cells: [u64; CELLS],
}

impl Totals {
    pub fn requests(&self) -> u64 {
        self.cells[REQUESTS..REQUESTS + REQUEST_CELLS].iter().sum()
    }

    /// Answers with status 4xx or 5xx.
    pub fn errors(&self) -> u64 {
        (0..ROUTES.len())
            .map(|r| {
                self.cells[request_cell(r, CLASS_4XX)] + self.cells[request_cell(r, CLASS_5XX)]
            })
            .sum()
    }

    pub fn open_connections(&self) -> u64 {
        self.cells[CONNS_ACCEPTED].saturating_sub(self.cells[CONNS_CLOSED])
    }

    /// The latency histogram's bucket counts (not cumulative).
    pub fn buckets(&self) -> [u64; BUCKET_COUNT] {
        std::array::from_fn(|i| self.cells[HIST + i])
    }

    /// The upper bound (seconds) of the bucket holding quantile `q` of `buckets`.
    pub fn quantile(buckets: &[u64; BUCKET_COUNT], q: f64) -> Option<f64> {
        let total: u64 = buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &b) in buckets.iter().enumerate() {
            seen += b;
            if seen >= rank {
                return Some(
                    BUCKETS_NS
                        .get(i)
                        .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9),
                );
            }
        }
        None
    }
}

impl Metrics {
    pub fn new(workers: usize) -> Self {
        Metrics {
            workers: (0..workers).map(|_| WorkerMetrics::default()).collect(),
            disk: std::sync::OnceLock::new(),
            ship: std::sync::OnceLock::new(),
        }
    }

    /// Show the journal on disk from now on (once; later calls change nothing).
    pub fn set_disk(&self, d: Disk) {
        let _ = self.disk.set(d);
    }

    /// Show the shipper's counters from now on (once; later calls change nothing).
    pub fn set_ship(&self, s: std::sync::Arc<crate::ship::Stats>) {
        let _ = self.ship.set(s);
    }

    pub fn worker(&self, i: usize) -> &WorkerMetrics {
        &self.workers[i]
    }

    pub fn totals(&self) -> Totals {
        let mut cells: [u64; CELLS] =
            std::array::from_fn(|i| self.workers.iter().map(|w| w.get(i)).sum());
        let lease_ends = self.workers.iter().map(|w| w.get(ID_LEASE_END));
        cells[ID_LEASE_END] = lease_ends.max().unwrap_or(0);
        Totals { cells }
    }

    /// The Prometheus text exposition of everything, appended to `out`.
    pub fn render(&self, store: &Store, out: &mut Vec<u8>) {
        let t = self.totals();
        let mut w = Writer { out };
        w.requests(&t);
        w.latency(&t);
        w.cold_reads(&t);
        w.counters(&t);
        w.journal_gauges(&t);
        w.connections(&t);
        w.store(store);
        if let Some(d) = self.disk.get() {
            w.disk(d);
        }
        if let Some(s) = self.ship.get() {
            w.ship(s);
        }
    }
}

/// A histogram's family name and its `_bucket`, `_sum` and `_count` sample names.
macro_rules! histogram_names {
    ($name:literal) => {
        [
            $name,
            concat!($name, "_bucket"),
            concat!($name, "_sum"),
            concat!($name, "_count"),
        ]
    };
}

/// The families of a scrape, in the order they are rendered.
impl Writer<'_> {
    /// `usaged_requests_total` by route and status class.
    fn requests(&mut self, t: &Totals) {
        self.family(
            "usaged_requests_total",
            "counter",
            "Requests answered, by route and status class.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                self.sample(
                    "usaged_requests_total",
                    &[("route", route), ("code", class)],
                    t.cells[request_cell(r, c)],
                );
            }
        }
    }

    /// The latency histogram: cumulative buckets, sum and count.
    fn latency(&mut self, t: &Totals) {
        self.histogram(
            histogram_names!("usaged_request_duration_seconds"),
            "Server time per request, from the read that brought its first byte to its answer being queued.",
            &t.cells[HIST..HIST + BUCKET_COUNT],
            t.cells[HIST_SUM_NS],
        );
    }

    /// Cold reads by result, and how long each took (asked → read, on the reader thread).
    fn cold_reads(&mut self, t: &Totals) {
        self.family(
            "usaged_cold_reads_total",
            "counter",
            "GETs of usages no longer in RAM, read from the journal, by result.",
        );
        for (k, result) in COLD_RESULTS.iter().enumerate() {
            self.sample(
                "usaged_cold_reads_total",
                &[("result", result)],
                t.cells[COLD_READS + k],
            );
        }
        self.histogram(
            histogram_names!("usaged_cold_read_duration_seconds"),
            "Time from a cold read being asked of the reader thread to its result.",
            &t.cells[COLD_HIST..COLD_HIST + BUCKET_COUNT],
            t.cells[COLD_SUM_NS],
        );
    }

    /// A histogram family of `buckets` (not cumulative) and their sum in ns; `names` as
    /// [`histogram_names!`] makes them (no name is built per scrape).
    fn histogram(&mut self, names: [&str; 4], help: &str, buckets: &[u64], sum_ns: u64) {
        let [name, bucket, sum, count] = names;
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (b, le) in buckets.iter().zip(BUCKET_LABELS) {
            cumulative += b;
            self.sample(bucket, &[("le", le)], cumulative);
        }
        self.seconds(sum, sum_ns);
        self.sample(count, &[], cumulative);
    }

    /// Every family of [`COUNTERS`]: one sample each.
    fn counters(&mut self, t: &Totals) {
        for (name, help, i) in COUNTERS {
            self.family(name, "counter", help);
            self.sample(name, &[], t.cells[i]);
        }
    }

    /// The journal's availability gauge, its time spent syncing, and how far ids went.
    fn journal_gauges(&mut self, t: &Totals) {
        self.family(
            "usaged_id_lease_end",
            "gauge",
            "The highest id this node may have handed out (its stripes' durable id leases): a \
             new cluster epoch's --cluster-base must lie past every node's.",
        );
        self.sample("usaged_id_lease_end", &[], t.cells[ID_LEASE_END]);
        self.family(
            "usaged_journal_unavailable",
            "gauge",
            "Workers whose journal cannot write now (failing or stalled): their POSTs get 503.",
        );
        self.sample(
            "usaged_journal_unavailable",
            &[],
            t.cells[JOURNAL_UNAVAILABLE],
        );
        self.family(
            "usaged_journal_fsync_seconds_total",
            "counter",
            "Time spent in fdatasync on journal segments.",
        );
        self.seconds(
            "usaged_journal_fsync_seconds_total",
            t.cells[JOURNAL_FSYNC_NS],
        );
    }

    /// Timeouts by kind, and the connections open now.
    fn connections(&mut self, t: &Totals) {
        self.family(
            "usaged_timeouts_total",
            "counter",
            "Connections timed out, by kind.",
        );
        for (k, kind) in TIMEOUTS.iter().enumerate() {
            self.sample(
                "usaged_timeouts_total",
                &[("kind", kind)],
                t.cells[TIMEOUT + k],
            );
        }
        self.family("usaged_open_connections", "gauge", "Connections open now.");
        self.sample("usaged_open_connections", &[], t.open_connections());
    }

    /// What the store holds.
    fn store(&mut self, store: &Store) {
        self.family(
            "usaged_usages_stored_total",
            "counter",
            "Usages stored since this process started.",
        );
        self.sample("usaged_usages_stored_total", &[], store.len());
        self.family(
            "usaged_arena_bytes",
            "gauge",
            "Bytes allocated for the cache (record frames and string blocks).",
        );
        self.sample("usaged_arena_bytes", &[], store.cache_bytes());
        self.family(
            "usaged_cache_budget_bytes",
            "gauge",
            "Bytes the cache may take (--cache).",
        );
        self.sample("usaged_cache_budget_bytes", &[], store.cache_budget());
        self.family(
            "usaged_cache_usages",
            "gauge",
            "Usages held in the cache (answered from RAM).",
        );
        self.sample("usaged_cache_usages", &[], store.cache_usages());
        let l = store.layout();
        let (node, nodes) = (l.node.to_string(), l.nodes.to_string());
        self.family(
            "usaged_node_info",
            "gauge",
            "This node's place in the cluster (--node of --nodes); always 1.",
        );
        self.sample("usaged_node_info", &[("node", &node), ("nodes", &nodes)], 1);
    }

    /// Sealed segments on disk, and what retention removed.
    fn disk(&mut self, d: &Disk) {
        let gauges = [
            (
                "usaged_journal_sealed_segments",
                "Sealed journal segments on disk (each with its index).",
                d.segments.count(),
            ),
            (
                "usaged_journal_sealed_bytes",
                "Bytes of sealed journal segments and their indexes on disk.",
                d.segments.disk_bytes(),
            ),
        ];
        for (name, help, v) in gauges {
            self.family(name, "gauge", help);
            self.sample(name, &[], v);
        }
        let Some(r) = &d.retention else {
            return;
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let families = [
            (
                "usaged_retention_removed_segments_total",
                "counter",
                "Segments removed by retention.",
                load(&r.removed_segments),
            ),
            (
                "usaged_retention_removed_bytes_total",
                "counter",
                "Bytes of segments and indexes removed by retention.",
                load(&r.removed_bytes),
            ),
            (
                "usaged_retention_held_bytes",
                "gauge",
                "Bytes retention would remove but a hold (an unshipped segment) keeps.",
                load(&r.held_bytes),
            ),
            (
                "usaged_retention_errors_total",
                "counter",
                "Retention passes that failed (RETAINED could not be written).",
                load(&r.errors),
            ),
        ];
        self.plain(&families);
    }

    /// Families of one unlabelled sample each: name, type, help, value.
    pub(super) fn plain(&mut self, families: &[(&str, &str, &str, u64)]) {
        for &(name, kind, help, v) in families {
            self.family(name, kind, help);
            self.sample(name, &[], v);
        }
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        for part in [
            &b"# HELP "[..],
            name.as_bytes(),
            b" ",
            help.as_bytes(),
            b"\n# TYPE ",
            name.as_bytes(),
            b" ",
            kind.as_bytes(),
            b"\n",
        ] {
            self.out.extend_from_slice(part);
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.out.extend_from_slice(name.as_bytes());
        for (i, (k, val)) in labels.iter().enumerate() {
            self.out.extend_from_slice(if i == 0 { b"{" } else { b"," });
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"=\"");
            self.out.extend_from_slice(val.as_bytes());
            self.out.push(b'"');
        }
        if !labels.is_empty() {
            self.out.push(b'}');
        }
        self.out.push(b' ');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self.out.push(b'\n');
    }

    /// A nanosecond total written as seconds with nine decimals.
    fn seconds(&mut self, name: &str, ns: u64) {
        let mut num = itoa::Buffer::new();
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        self.out
            .extend_from_slice(num.format(ns / 1_000_000_000).as_bytes());
        self.out.push(b'.');
        let frac = num.format(ns % 1_000_000_000).as_bytes();
        self.out.extend(std::iter::repeat_n(b'0', 9 - frac.len()));
        self.out.extend_from_slice(frac);
        self.out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_renders_the_text_format() {
        let m = Metrics::new(2);
        m.worker(0).request(ROUTE_CREATE, 201);
        m.worker(1).request(ROUTE_CREATE, 201);
        m.worker(1).request(ROUTE_OTHER, 404);
        m.worker(0).latency(30_000, 2);
        m.worker(1).latency(2_000_000_000, 1);
        let store = Store::new(1);
        let mut out = Vec::new();
        m.render(&store, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("usaged_requests_total{route=\"create_usage\",code=\"2xx\"} 2\n"));
        assert!(text.contains("usaged_requests_total{route=\"other\",code=\"4xx\"} 1\n"));
        assert!(text.contains("usaged_request_duration_seconds_bucket{le=\"5e-05\"} 2\n"));
        assert!(text.contains("usaged_request_duration_seconds_bucket{le=\"0.1\"} 2\n"));
        assert!(text.contains("usaged_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("usaged_request_duration_seconds_sum 2.000060000\n"));
        assert!(text.contains("usaged_request_duration_seconds_count 3\n"));
        assert!(text.contains("usaged_arena_bytes 0\n"));
        assert!(text.contains("usaged_cache_budget_bytes 536870912\n"));
        assert!(text.contains("usaged_cache_usages 0\n"));
        assert!(text.contains("usaged_node_info{node=\"0\",nodes=\"1\"} 1\n"));
        assert_eq!(m.totals().errors(), 1);
        let b = m.totals().buckets();
        assert_eq!(Totals::quantile(&b, 0.5), Some(50e-6));
        assert_eq!(Totals::quantile(&b, 0.99), Some(f64::INFINITY));
    }
}
