//! `usaged export`: every stored usage in id order, read from the journal without a server
//! and without changing it. Each line is encoded as the API answers it
//! ([`crate::app::usages`]).

use std::io::{self, Write};
use std::path::Path;

use super::Store;
use super::ids;
use super::recover::{self, Options, Recovered};
use crate::app::usages;

/// What each usage is printed as (`usaged export --format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object a line, as `GET /api/usages/{id}` answers it.
    Ndjson,
    /// A header line, then `id,patientId,timestamp,medication` a line.
    Csv,
}

/// The journal in `dir`, recovered read-only: torn tails and corruption are skipped and
/// reported in `warnings` and `corrupt`, and nothing on disk changes.
pub fn read(dir: &Path) -> Result<Recovered, String> {
    let opt = Options {
        stripes: 1,
        repair: false,
        read_only: true,
    };
    recover::recover(dir, opt)
}

/// Every usage of `store` in id order to `out` in `format`, in writes of about 32 KiB.
pub fn write(store: &Store, format: ExportFormat, out: &mut impl Write) -> io::Result<()> {
    let mut line = Vec::with_capacity(1024);
    if format == ExportFormat::Csv {
        line.extend_from_slice(b"id,patientId,timestamp,medication\n");
    }
    let mut result = Ok(());
    in_id_order(store, |id, u| {
        match format {
            ExportFormat::Ndjson => {
                usages::write_json(&mut line, id, u);
                line.push(b'\n');
            }
            ExportFormat::Csv => usages::write_csv(&mut line, id, u),
        }
        if line.len() >= 1 << 15 {
            result = out.write_all(&line);
            line.clear();
        }
        result.is_ok()
    });
    result?;
    out.write_all(&line)
}

/// Call `f` with each stored usage in id order until it returns `false`. Ids interleave the
/// stripes of an epoch (slot by slot), and epochs follow one another.
fn in_id_order(store: &Store, mut f: impl FnMut(u64, &super::StoredUsage) -> bool) {
    for (e, (base, stripes)) in store.epochs().into_iter().enumerate() {
        let ranges: Vec<_> = (0..stripes).map(|s| store.stripe_slots(e, s)).collect();
        let first = ranges.iter().map(|r| r.start).min().unwrap_or(0);
        let end = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        for slot in first..end {
            for s in 0..stripes {
                if !ranges[s as usize].contains(&slot) {
                    continue;
                }
                let id = base + ids::id_of(s, slot, stripes);
                let Some(u) = store.get(id) else {
                    continue;
                };
                if !f(id, &u) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::scan::{Patient, Usage};
    use crate::store::recover::tests::{run, temp_dir};
    use crate::time::Timestamp;

    #[test]
    fn an_empty_store_exports_nothing_or_the_csv_header() {
        let store = Store::new(2);
        let mut out = Vec::new();
        write(&store, ExportFormat::Ndjson, &mut out).unwrap();
        assert!(out.is_empty());
        write(&store, ExportFormat::Csv, &mut out).unwrap();
        assert_eq!(out, b"id,patientId,timestamp,medication\n");
    }

    #[test]
    fn a_journal_of_none_then_one_usage() {
        let dir = temp_dir("export");
        let r = read(&dir).expect("an empty directory");
        assert!(!r.corrupt && r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.records, 0);
        let ids = run(&dir, 1, 1);
        let r = read(&dir).expect("a one-record journal");
        assert!(!r.corrupt && r.warnings.is_empty(), "{:?}", r.warnings);
        let mut out = Vec::new();
        write(&r.store, ExportFormat::Csv, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[1].starts_with(&format!("{},", ids[0])), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read(&dir).is_err(), "a missing directory is an error");
    }

    #[test]
    fn usages_come_out_in_id_order_across_stripes() {
        let store = std::sync::Arc::new(Store::new(2));
        let (mut w0, mut w1) = (store.writer(0), store.writer(1));
        let usage = |n| Usage {
            patient: Patient::Num(n),
            timestamp: Timestamp {
                ms: 0,
                offset_min: 0,
            },
            medication: b"m",
        };
        let a = w0.append(&usage(1)).unwrap();
        let b = w1.append(&usage(2)).unwrap();
        let c = w0.append(&usage(3)).unwrap();
        let mut out = Vec::new();
        write(&store, ExportFormat::Ndjson, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let ids: Vec<&str> = text.lines().collect();
        assert_eq!(ids.len(), 3, "{text}");
        let mut want = [a, b, c];
        want.sort();
        for (line, id) in ids.iter().zip(want) {
            assert!(line.starts_with(&format!("{{\"id\":{id},")), "{line}");
        }
    }
}
