use super::*;
use crate::store::cold::tests::{Built, Op, cleanup, ops, plain, table, write_stripe};
use crate::store::index::Builder;
use crate::store::journal;
use crate::store::recover::tests::{run, temp_dir};
use crate::store::segments::Sealed;
use proptest::prelude::*;
use std::fs;
use std::sync::Arc;

/// The export's bytes (random test strings need not be UTF-8; the API's are).
fn export_bytes(
    segs: &Segments,
    epochs: &[(u64, u32)],
    format: ExportFormat,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    write(segs, epochs, format, &mut out)?;
    Ok(out)
}

fn export(segs: &Segments, epochs: &[(u64, u32)], format: ExportFormat) -> io::Result<String> {
    export_bytes(segs, epochs, format).map(|b| String::from_utf8(b).expect("UTF-8 lines"))
}

/// What the export of the stripes `built` must be: every usage by id, as the API writes it.
fn expected(built: &[Built], format: ExportFormat) -> Vec<u8> {
    let mut all: Vec<(u64, StoredUsage)> = built
        .iter()
        .flat_map(|b| {
            (0..b.usages.len()).map(|i| (b.id(b.first_slot + i as u64), b.usages[i].stored()))
        })
        .collect();
    all.sort_by_key(|&(id, _)| id);
    let mut out = Vec::new();
    if format == ExportFormat::Csv {
        out.extend_from_slice(b"id,patientId,timestamp,medication\n");
    }
    for (id, u) in &all {
        match format {
            ExportFormat::Ndjson => {
                usages::write_json(&mut out, *id, u);
                out.push(b'\n');
            }
            ExportFormat::Csv => usages::write_csv(&mut out, *id, u),
        }
    }
    out
}

/// The segments of `dir` as sealed segments in a table, their entries in RAM: what a
/// read-only recovery's table holds (until recovery returns one; every segment must be whole).
fn table_of(dir: &Path) -> Segments {
    let segs = Segments::new(dir.to_path_buf());
    let mut names: Vec<(Header, u32)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| journal::parse_name(e.unwrap().file_name().to_str()?))
        .collect();
    names.sort();
    let mut next: Option<(Header, u64)> = None;
    for (key, seq) in names {
        let bytes = fs::read(dir.join(journal::segment_name(&key, seq))).unwrap();
        let mut first_id = None;
        journal::scan(&bytes, |_, r| {
            if let (Record::Usage { id, .. }, None) = (r, first_id) {
                first_id = Some(id);
            }
        });
        let first_slot = match next {
            Some((k, slot)) if k == key => slot,
            _ => first_id.map_or(0, |id| {
                ids::locate(id - key.base, key.stripes).expect("an id").1
            }),
        };
        let (b, end) = Builder::from_segment(&bytes);
        assert_eq!(end, journal::End::Clean);
        let s = b.seal(key, seq, first_slot, 0);
        next = Some((key, first_slot + s.meta.records));
        segs.insert(Sealed {
            meta: s.meta,
            entries: Some(s.entries.into()),
            idx_len: 0,
        })
        .unwrap();
    }
    segs
}

#[test]
fn an_empty_store_exports_nothing_or_the_csv_header() {
    let segs = table("export-empty");
    assert_eq!(export(&segs, &[(0, 2)], ExportFormat::Ndjson).unwrap(), "");
    assert_eq!(
        export(&segs, &[(0, 2)], ExportFormat::Csv).unwrap(),
        "id,patientId,timestamp,medication\n"
    );
    cleanup(&segs);
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
    let text = export(&table_of(&dir), &r.store.epochs(), ExportFormat::Csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].starts_with(&format!("{},", ids[0])), "{text}");
    fs::remove_dir_all(&dir).unwrap();
    assert!(read(&dir).is_err(), "a missing directory is an error");
}

#[test]
fn usages_come_out_in_id_order_across_stripes() {
    let segs = table("export-order");
    let key = |stripe| Header {
        stripes: 2,
        stripe,
        base: 0,
    };
    let u = |i| vec![Op::Usage(plain(i)), Op::Lease, Op::Usage(plain(i + 1))];
    let a = write_stripe(&segs, key(0), 0, &u(1), &[1], &[true]);
    let b = write_stripe(&segs, key(1), 0, &u(3)[..1], &[1], &[false]);
    let text = export(&segs, &[(0, 2)], ExportFormat::Ndjson).unwrap();
    let ids: Vec<&str> = text.lines().collect();
    assert_eq!(ids.len(), 3, "{text}");
    let want = [a.id(0), b.id(0), a.id(1)];
    assert!(want.is_sorted());
    for (line, id) in ids.iter().zip(want) {
        assert!(line.starts_with(&format!("{{\"id\":{id},")), "{line}");
    }
    assert_eq!(text.as_bytes(), expected(&[a, b], ExportFormat::Ndjson));
    cleanup(&segs);
}

/// One epoch's stripes: `(first slot, records, segment sizes)` each.
type Stripes = Vec<(u64, Vec<Op>, Vec<usize>)>;

fn stripes(n: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Stripes> {
    proptest::collection::vec(
        (
            0u64..3,
            ops(60),
            proptest::collection::vec(1usize..=50, 1..4),
        ),
        n,
    )
}

fn write_epoch(segs: &Arc<Segments>, base: u64, stripes: &Stripes, out: &mut Vec<Built>) {
    let n = stripes.len() as u32;
    for (s, (first, ops, sizes)) in stripes.iter().enumerate() {
        let key = Header {
            stripes: n,
            stripe: s as u32,
            base,
        };
        out.push(write_stripe(segs, key, *first, ops, sizes, &[true, false]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn every_usage_of_every_epoch_comes_out_once_in_id_order(
        base in 0u64..50,
        one in stripes(1..=4),
        gap in 0u64..20,
        two in stripes(1..=3),
    ) {
        let segs = table("export-prop");
        let mut built = Vec::new();
        write_epoch(&segs, base, &one, &mut built);
        // The next epoch starts past every id of the first (and its leases: slot + 1000).
        let top = built.iter().map(|b| b.id(b.end() + 1000)).max().unwrap_or(base);
        let next = top + gap;
        write_epoch(&segs, next, &two, &mut built);
        let epochs = [(base, one.len() as u32), (next, two.len() as u32)];
        for format in [ExportFormat::Ndjson, ExportFormat::Csv] {
            prop_assert_eq!(export_bytes(&segs, &epochs, format).unwrap(), expected(&built, format));
        }
        cleanup(&segs);
    }
}

#[test]
fn only_what_the_table_sealed_is_exported_and_a_changed_segment_is_an_error() {
    let segs = table("export-sealed");
    let key = Header {
        stripes: 1,
        stripe: 0,
        base: 10,
    };
    let ops: Vec<Op> = (0..120).map(|i| Op::Usage(plain(i))).collect();
    let b = write_stripe(&segs, key, 0, &ops, &[50], &[true]);
    let want = expected(std::slice::from_ref(&b), ExportFormat::Ndjson);
    // A torn tail after the sealed length (a read-only recovery left it out): not exported.
    let path = segs.dir().join(journal::segment_name(&key, 2));
    let mut tail = fs::read(&path).unwrap();
    journal::encode(&mut tail, b.id(b.end()), &plain(7).usage());
    tail.extend_from_slice(&[0xff; 9]);
    fs::write(&path, &tail).unwrap();
    assert_eq!(
        export_bytes(&segs, &[(10, 1)], ExportFormat::Ndjson).unwrap(),
        want
    );
    // A segment cut shorter than the table says: an error naming it, not a shorter export.
    let mid = segs.dir().join(journal::segment_name(&key, 1));
    let len = fs::metadata(&mid).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&mid)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let e = export(&segs, &[(10, 1)], ExportFormat::Ndjson).unwrap_err();
    assert!(e.to_string().contains("000001.seg"), "{e}");
    // A segment that is not the one the table names (its stripe's first): an error.
    fs::copy(segs.dir().join(journal::segment_name(&key, 0)), &mid).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&mid).unwrap();
    f.set_len(len).unwrap();
    let e = export(&segs, &[(10, 1)], ExportFormat::Ndjson).unwrap_err();
    assert!(e.to_string().contains("was expected"), "{e}");
    cleanup(&segs);
}

#[test]
fn the_recovered_table_exports_what_the_segment_files_hold() {
    let dir = temp_dir("export-runs");
    run(&dir, 2, 300);
    run(&dir, 3, 200);
    run(&dir, 3, 100);
    let r = read(&dir).unwrap();
    assert!(!r.corrupt && r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.records, 600);
    assert!(r.store.epochs().len() >= 2, "{:?}", r.store.epochs());
    let segs = table_of(&dir);
    for format in [ExportFormat::Ndjson, ExportFormat::Csv] {
        let want = export_bytes(&segs, &r.store.epochs(), format).unwrap();
        let got = export_bytes(&r.segments, &r.store.epochs(), format).unwrap();
        assert_eq!(
            got.iter().filter(|&&b| b == b'\n').count(),
            600 + (format == ExportFormat::Csv) as usize
        );
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}
