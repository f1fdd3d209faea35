use super::*;
use crate::json::scan::{Patient, Usage};
use crate::store::journal;
use crate::time::Timestamp;
use std::io::Write;

/// Write `n` usages as a 2-worker server would (ids `k·2 + stripe + 1`, segments rolling at
/// 64 MiB) into `dir`.
pub fn write_journal(dir: &Path, n: u64) {
    let stripes = 2;
    for stripe in 0..stripes {
        let key = Header {
            stripes,
            stripe,
            base: 0,
        };
        let (mut seq, mut buf) = (0, Vec::with_capacity(1 << 20));
        let (mut file, mut len) = journal::create_segment(dir, &key, seq, 0).unwrap();
        let mut k = 0;
        while k * u64::from(stripes) + u64::from(stripe) < n {
            let id = k * u64::from(stripes) + u64::from(stripe) + 1;
            let med = format!("Medication-{}", id % 13);
            let name = format!("patient-{}", id % 1000);
            let u = Usage {
                patient: if id % 2 == 0 {
                    Patient::Num(id % 1000)
                } else {
                    Patient::Str(name.as_bytes())
                },
                timestamp: Timestamp {
                    ms: 1_700_000_000_000 + id as i64,
                    offset_min: 120,
                },
                medication: med.as_bytes(),
            };
            journal::encode(&mut buf, id, &u);
            if buf.len() >= 1 << 20 {
                file.write_all(&buf).unwrap();
                len += buf.len() as u64;
                buf.clear();
                if len >= journal::SEGMENT_BYTES {
                    seq += 1;
                    (file, len) = journal::create_segment(dir, &key, seq, 0).unwrap();
                }
            }
            k += 1;
        }
        file.write_all(&buf).unwrap();
    }
}

/// `USAGED_BENCH_DIR=DIR USAGED_BENCH_N=1000000 cargo test --release --lib
/// make_bench_journal -- --ignored`: a journal to time `usaged ship` on.
#[test]
#[ignore]
fn make_bench_journal() {
    let dir = PathBuf::from(std::env::var("USAGED_BENCH_DIR").expect("USAGED_BENCH_DIR"));
    let n = std::env::var("USAGED_BENCH_N").map_or(1_000_000, |v| v.parse().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    write_journal(&dir, n);
}
