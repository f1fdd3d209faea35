//! What the database-sink tests post and what they check: usages of every kind `GET` can show
//! (a patient id as a number or a string, timestamps in each accepted form and offset,
//! medications that need escaping in `COPY`), the ids each `201` handed out, and the check that
//! the `usages` table holds exactly the stored usages with the values `GET` (or `usaged
//! export`) shows — the ideas of `tests/faults/ledger.rs`, for a table.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Conn, Got, Usaged, export};
use crate::pg::Pg;
use crate::util::{get, post};

pub const METRICS: &str = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";

/// The `i`-th usage a test posts; its medication starts with `m{i} ` (see [`usage_of`]).
pub fn body(i: u64) -> String {
    let patient = if i.is_multiple_of(3) {
        (1000 + i).to_string()
    } else {
        format!(r#""p-{i} é""#)
    };
    let s = i % 60;
    let ts = match i % 6 {
        0 => format!(r#""2016-11-01T09:11:{s:02}-05:00""#),
        1 => format!(r#""2016-11-01T09:11:{s:02}.250+05:30""#),
        2 => format!(r#""2016-11-01T14:11:{s:02}Z""#),
        3 => (1_478_009_511_000 + i).to_string(),
        4 => format!(r#""Tue Nov 01 2016 09:11:{s:02} GMT-0500 (CDT)""#),
        _ => format!(r#""Tue, 01 Nov 2016 14:11:{s:02} GMT""#),
    };
    // A tab, a backslash, quotes, non-ASCII, and every fifth a newline: COPY's text format
    // must escape them.
    let nl = if i.is_multiple_of(5) { r"\n" } else { "" };
    format!(
        r#"{{"patientId":{patient},"timestamp":{ts},"medication":"m{i} Alb\tut \\ \"x\" ☃{nl}\u00e9"}}"#
    )
}

/// Which usage a stored one is, by its medication (`m{i} …`).
pub fn usage_of(v: &Value) -> Option<u64> {
    v["medication"]
        .as_str()?
        .strip_prefix('m')?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The value of an unlabelled metric.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `/metrics` of a server.
pub fn metrics(s: &Usaged) -> String {
    let r = s.conn().ask(METRICS, Duration::from_secs(10));
    assert_eq!(r.status, 200);
    r.text()
}

/// Poll `/metrics` (bounded by `limit`) until the shipper is connected and has nothing left
/// to ship: `usaged_ship_lag_usages` 0 and `usaged_ship_connected` 1 in two reads 300 ms
/// apart (a gauge the shipper updates between scans). The last `/metrics` text.
pub fn wait_caught_up(s: &Usaged, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut zero_since: Option<Instant> = None;
    loop {
        let m = metrics(s);
        let lag = metric(&m, "usaged_ship_lag_usages");
        let connected = metric(&m, "usaged_ship_connected");
        if lag == Some(0.0) && connected == Some(1.0) {
            match zero_since {
                Some(t) if t.elapsed() >= Duration::from_millis(300) => return m,
                Some(_) => {}
                None => zero_since = Some(Instant::now()),
            }
        } else {
            zero_since = None;
        }
        assert!(
            Instant::now() < deadline,
            "the shipper did not catch up within {limit:?}: lag {lag:?}, connected \
             {connected:?}\n{}\n{}",
            ship_metrics(&m),
            s.log()
        );
        // Polling a gauge, bounded above.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `usaged_ship_*` lines of a `/metrics` text.
pub fn ship_metrics(m: &str) -> String {
    m.lines()
        .filter(|l| l.starts_with("usaged_ship_"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every usage a test sent and what became of it, over every run of the server.
#[derive(Default)]
pub struct Book {
    /// id → usage, for every `201`.
    pub acked: BTreeMap<u64, u64>,
    /// id → usage found stored though its POST got no answer.
    pub unacked_stored: BTreeMap<u64, u64>,
    /// Usages whose POST got no answer: each may be stored or not.
    pub unanswered: BTreeSet<u64>,
    next: u64,
}

impl Book {
    /// Post `n` usages pipelined on `c` and read their answers (each within 10 s); every one
    /// must be a `201`. Their ids.
    pub fn post(&mut self, c: &mut Conn, n: usize) -> Vec<u64> {
        let first = self.next + 1;
        self.next += n as u64;
        let bytes: String = (first..=self.next).map(|i| post(&body(i))).collect();
        assert!(c.send(bytes), "send {n} POSTs");
        (first..=self.next)
            .map(|i| match c.next(Duration::from_secs(10)) {
                Got::Answer(r) if r.status == 201 => {
                    let id = r.json()["id"].as_u64().expect("an id in a 201");
                    self.ack(id, i);
                    id
                }
                Got::Answer(r) => panic!("POST of usage {i}: {} {}", r.status, r.text()),
                other => panic!("POST of usage {i}: {other:?}"),
            })
            .collect()
    }

    /// Post `n` usages on `c` from another thread and read no answer: the server is killed
    /// meanwhile; each is booked unanswered (stored or not).
    pub fn post_unread(&mut self, c: &Conn, n: usize) {
        let first = self.next + 1;
        self.next += n as u64;
        let bytes: String = (first..=self.next).map(|i| post(&body(i))).collect();
        self.unanswered.extend(first..=self.next);
        let mut w = c.w.try_clone().expect("clone the connection");
        std::thread::spawn(move || std::io::Write::write_all(&mut w, bytes.as_bytes()));
    }

    fn ack(&mut self, id: u64, i: u64) {
        assert!(
            !self.acked.contains_key(&id) && !self.unacked_stored.contains_key(&id),
            "id {id} handed out twice"
        );
        self.acked.insert(id, i);
    }

    /// The table, with the server running: every acknowledged id is there, every row is a
    /// stored usage (acknowledged, or posted without an answer), each with `GET`'s values, and
    /// the shipper's count per node matches.
    pub fn check_table_live(&mut self, pg: &Pg, s: &Usaged, node: u64) {
        let rows = table(pg);
        let ids: BTreeSet<u64> = rows.keys().chain(self.acked.keys()).copied().collect();
        let truth = get_all(s, &ids);
        self.check_rows(&rows, &truth, node);
        let missing: Vec<u64> = self
            .acked
            .keys()
            .filter(|id| !rows.contains_key(id))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "the table misses {} acknowledged ids, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        check_shipped_count(pg, node, rows.len());
    }

    /// The table against `usaged export` of the stopped server's `dir`: the same ids (no
    /// more, no less), each with the exported values.
    pub fn check_table_export(&mut self, pg: &Pg, dir: &std::path::Path, node: u64) {
        let truth = exported(dir);
        let rows = table(pg);
        let extra: Vec<&u64> = rows.keys().filter(|id| !truth.contains_key(id)).collect();
        let missing: Vec<&u64> = truth.keys().filter(|id| !rows.contains_key(id)).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "table vs export: {} ids not stored, e.g. {:?}; {} stored ids missing, e.g. {:?}",
            extra.len(),
            &extra[..extra.len().min(10)],
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        self.check_rows(&rows, &truth, node);
        for id in self.acked.keys() {
            assert!(truth.contains_key(id), "export misses acknowledged id {id}");
        }
        check_shipped_count(pg, node, rows.len());
    }

    /// Each row equals its truth (`GET`'s object); a row not acknowledged must be a usage
    /// posted without an answer (booked stored); an acknowledged one the usage it was for.
    fn check_rows(&mut self, rows: &BTreeMap<u64, Value>, truth: &BTreeMap<u64, Value>, node: u64) {
        for (id, row) in rows {
            let t = truth
                .get(id)
                .unwrap_or_else(|| panic!("the table has id {id}, not stored: {row}"));
            assert_row(row, t, node);
            let i = usage_of(t).unwrap_or_else(|| panic!("a stranger: {t}"));
            if let Some(&want) = self.acked.get(id).or(self.unacked_stored.get(id)) {
                assert_eq!(
                    i, want,
                    "id {id} is usage {i}, acknowledged for usage {want}"
                );
            } else {
                assert!(
                    self.unanswered.remove(&i),
                    "id {id} (usage {i}) in the table: neither acknowledged nor unanswered"
                );
                self.unacked_stored.insert(*id, i);
            }
        }
    }
}

/// The `usages` table, id → row.
pub fn table(pg: &Pg) -> BTreeMap<u64, Value> {
    pg.rows(
        "SELECT id, patient_id, patient_is_number, \
         (extract(epoch FROM ts) * 1000000)::bigint AS micros, utc_offset_min, medication, node \
         FROM usages ORDER BY id",
    )
    .into_iter()
    .map(|r| (r["id"].as_u64().expect("id"), r))
    .collect()
}

/// `usaged_shipped` counts as many usages for `node` as the table holds.
fn check_shipped_count(pg: &Pg, node: u64, rows: usize) {
    let shipped = pg.scalar(&format!(
        "SELECT coalesce(sum(shipped), 0) FROM usaged_shipped WHERE node = {node}"
    ));
    assert_eq!(
        shipped,
        rows.to_string(),
        "usaged_shipped.shipped (summed) vs rows in the table"
    );
}

/// One table row holds what `GET` shows: the patient id in its type, the instant and the
/// offset of the timestamp, the medication, and the node.
pub fn assert_row(row: &Value, got: &Value, node: u64) {
    let id = &got["id"];
    assert_eq!(&row["id"], id, "{row} vs {got}");
    let (patient, is_number) = match &got["patientId"] {
        Value::Number(n) => (n.to_string(), true),
        Value::String(s) => (s.clone(), false),
        other => panic!("GET {id}: patientId {other}"),
    };
    assert_eq!(
        row["patient_id"], patient,
        "patient_id of {id}: {row} vs {got}"
    );
    assert_eq!(
        row["patient_is_number"], is_number,
        "type of patient of {id}: {row} vs {got}"
    );
    let ts = got["timestamp"].as_str().expect("timestamp");
    let t = chrono::DateTime::parse_from_rfc3339(ts)
        .unwrap_or_else(|e| panic!("GET {id}: timestamp {ts}: {e}"));
    assert_eq!(
        row["micros"],
        t.timestamp_micros(),
        "instant of {id}: {row} vs {ts}"
    );
    assert_eq!(
        row["utc_offset_min"],
        t.offset().local_minus_utc() / 60,
        "offset of {id}: {row} vs {ts}"
    );
    assert_eq!(row["medication"], got["medication"], "medication of {id}");
    assert_eq!(row["node"], node, "node of {id}");
}

/// `GET` each of `ids` (pipelined), each must be a `200`: id → the usage object.
pub fn get_all(s: &Usaged, ids: &BTreeSet<u64>) -> BTreeMap<u64, Value> {
    let mut c = s.conn();
    let ids: Vec<u64> = ids.iter().copied().collect();
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(200) {
        assert!(c.send(chunk.iter().map(|&id| get(id)).collect::<String>()));
        for &id in chunk {
            match c.next(Duration::from_secs(10)) {
                Got::Answer(r) if r.status == 200 => {
                    out.insert(id, r.json());
                }
                Got::Answer(r) => panic!("GET {id}: {} {}", r.status, r.text()),
                other => panic!("GET {id}: {other:?}"),
            }
        }
    }
    out
}

/// `usaged export` of a stopped server's directory: id → usage object.
pub fn exported(dir: &std::path::Path) -> BTreeMap<u64, Value> {
    let (status, out, err) = export(dir);
    assert!(status.success(), "usaged export: {status}\n{err}");
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            (v["id"].as_u64().expect("id"), v)
        })
        .collect()
}

/// Wait (bounded) until `f` holds, polling every 50 ms; panics naming `what`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out ({limit:?}) waiting until {what}"
        );
        // Polling, bounded above.
        std::thread::sleep(Duration::from_millis(50));
    }
}
