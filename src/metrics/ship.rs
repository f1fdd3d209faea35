//! The shipper's section of `/metrics` ([`crate::ship::Stats`], written by its thread).

use std::sync::atomic::{AtomicU64, Ordering};

use super::Writer;
use crate::ship::Stats;

impl Writer<'_> {
    /// Rows and batches shipped, errors, batch time, lag, connection.
    pub(super) fn ship(&mut self, s: &Stats) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let families = [
            (
                "usaged_ship_rows_total",
                "counter",
                "Usages committed into PostgreSQL by the shipper.",
                load(&s.rows),
            ),
            (
                "usaged_ship_batches_total",
                "counter",
                "Batches (transactions) the shipper committed.",
                load(&s.batches),
            ),
            (
                "usaged_ship_errors_total",
                "counter",
                "Shipper failures (connection, statement, journal read, SHIPPED write).",
                load(&s.errors),
            ),
            (
                "usaged_ship_lag_usages",
                "gauge",
                "Whole usage records on disk past the shipped positions.",
                load(&s.lag_usages),
            ),
            (
                "usaged_ship_connected",
                "gauge",
                "1 while the shipper holds a working connection to PostgreSQL.",
                load(&s.connected),
            ),
        ];
        self.plain(&families);
        self.family(
            "usaged_ship_lag_seconds",
            "gauge",
            "How long the oldest unshipped usage has waited since the shipper first saw it (0 when caught up).",
        );
        self.seconds("usaged_ship_lag_seconds", s.lag_ms() * 1_000_000);
        self.family(
            "usaged_ship_batch_duration_seconds",
            "summary",
            "Time to read, copy and commit a batch.",
        );
        self.seconds("usaged_ship_batch_duration_seconds_sum", load(&s.batch_ns));
        self.sample(
            "usaged_ship_batch_duration_seconds_count",
            &[],
            load(&s.batches),
        );
    }
}
