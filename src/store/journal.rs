//! The journal's on-disk format: segment headers, records, lease records, and how a segment
//! file comes into existence. The journal thread that writes them is [`super::committer`];
//! recovery ([`super::recover`]) reads them back.
//!
//! # Format (version 2; version 1 is still read)
//!
//! A segment is a file `e{base}-s{stripes}-w{stripe}-{seq:06}.seg` in the data directory:
//!
//! - header, 32 bytes: magic `USAGEDJ1`, version `u32` (2), stripes `u32`, stripe `u32`,
//!   CRC32C `u32` of bytes `0..20` and `24..32` (version 1: 0, unchecked), epoch base `u64`
//!   (ids of this layout are `base + stripe + 1 + k·stripes`). Every number is bounded before
//!   use and must agree with the file name.
//! - records, each: payload length `u16`, CRC32C of the payload `u32`, then the payload: id
//!   `u64`, instant in epoch milliseconds `i64`, UTC offset in minutes `i16`, patient kind `u8`
//!   (0 number, 1 string, 2 lease), patient length `u8`, medication length `u8`, the patient (a
//!   `u64` for a number, else its UTF-8 bytes), the medication's UTF-8 bytes.
//! - a **lease** record (kind 2, both lengths 0) says "this stripe may hand out ids up to `id`".
//!   The journal thread writes and syncs one before the first id past the previous lease is
//!   acknowledged, at the start of every segment, and a last one equal to the last id written
//!   at a clean stop. Recovery starts a new epoch past the lease when the last lease is ahead of
//!   the last record (ids may have been acknowledged whose records a power loss took).
//!
//! All integers little-endian. A segment rolls over past the segment size (`--segment-size`);
//! records of a stripe are in slot order across its segments (by `seq`). A segment is created
//! complete: header and first lease written and synced under `NAME.tmp`, renamed, directory
//! synced; so a crash never leaves a segment without a header.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::json::scan::{Patient, Usage};

pub const MAGIC: &[u8; 8] = b"USAGEDJ1";
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 32;
/// Length prefix and CRC before each payload.
pub const FRAME_LEN: usize = 6;
/// The fixed part of a payload: id, instant, offset, kind, two lengths.
pub const FIXED_PAYLOAD: usize = 8 + 8 + 2 + 3;
/// Longest string (patient id, medication), in bytes.
pub const MAX_STR: usize = 64;
/// Largest payload: fixed fields, a 64-byte patient and a 64-byte medication.
pub const MAX_PAYLOAD: usize = FIXED_PAYLOAD + MAX_STR + MAX_STR;
/// The shortest framed record (a lease).
pub const MIN_RECORD: usize = FRAME_LEN + FIXED_PAYLOAD;
/// Segments roll over past this size unless `--segment-size` says otherwise.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Most stripes (workers) a header may name; larger is corruption, never an allocation.
pub const MAX_STRIPES: u32 = 4096;

const KIND_NUM: u8 = 0;
const KIND_STR: u8 = 1;
const KIND_LEASE: u8 = 2;

/// When the journal is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Always,
    Interval,
    Never,
}

/// The header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub stripes: u32,
    pub stripe: u32,
    pub base: u64,
}

fn header_crc(h: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&h[..20]), &h[24..32])
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.stripes.to_le_bytes());
        h[16..20].copy_from_slice(&self.stripe.to_le_bytes());
        h[24..32].copy_from_slice(&self.base.to_le_bytes());
        let crc = header_crc(&h);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The header at the start of `b`, checked (magic, version, checksum, bounds).
    pub fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER_LEN {
            return Err(format!(
                "header cut short ({} of {HEADER_LEN} bytes)",
                b.len()
            ));
        }
        if &b[..8] != MAGIC {
            return Err("not a usaged journal segment (bad magic)".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        match u32_at(8) {
            1 if u32_at(20) == 0 => {}
            2 if u32_at(20) == header_crc(&b[..HEADER_LEN]) => {}
            2 => return Err("header checksum mismatch".into()),
            v => {
                return Err(format!(
                    "journal format version {v} (this build reads 1 and 2)"
                ));
            }
        }
        let h = Header {
            stripes: u32_at(12),
            stripe: u32_at(16),
            base: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        };
        if h.stripes == 0 || h.stripes > MAX_STRIPES || h.stripe >= h.stripes {
            return Err(format!("bad stripe layout {} of {}", h.stripe, h.stripes));
        }
        if h.base >= crate::store::ids::MAX_ID {
            return Err(format!("epoch base {} out of range", h.base));
        }
        Ok(h)
    }
}

/// The file name of segment `seq` of `h`.
pub fn segment_name(h: &Header, seq: u32) -> String {
    format!("e{}-s{}-w{}-{seq:06}.seg", h.base, h.stripes, h.stripe)
}

/// `(header, seq)` a segment file name promises; `None` if it is not one.
pub fn parse_name(name: &str) -> Option<(Header, u32)> {
    let rest = name.strip_suffix(".seg")?.strip_prefix('e')?;
    let mut parts = rest.split('-');
    let base = parts.next()?.parse().ok()?;
    let stripes = parts.next()?.strip_prefix('s')?.parse().ok()?;
    let stripe = parts.next()?.strip_prefix('w')?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        Header {
            stripes,
            stripe,
            base,
        },
        seq,
    ))
}

/// Append the framed record of usage `id` to `out`.
pub fn encode(out: &mut Vec<u8>, id: u64, u: &Usage<'_>) {
    // One capacity check for the whole record (on the hot path: once per stored usage).
    out.reserve(FRAME_LEN + MAX_PAYLOAD);
    let at = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&u.timestamp.ms.to_le_bytes());
    out.extend_from_slice(&u.timestamp.offset_min.to_le_bytes());
    match u.patient {
        Patient::Num(n) => {
            out.extend_from_slice(&[KIND_NUM, 8, u.medication.len() as u8]);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Patient::Str(p) => {
            out.extend_from_slice(&[KIND_STR, p.len() as u8, u.medication.len() as u8]);
            out.extend_from_slice(p);
        }
    }
    out.extend_from_slice(u.medication);
    frame(out, at);
}

/// Append a lease record: ids up to `lease` may have been handed out.
pub fn encode_lease(out: &mut Vec<u8>, lease: u64) {
    let at = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    out.extend_from_slice(&lease.to_le_bytes());
    out.extend_from_slice(&[0; 8 + 2]);
    out.extend_from_slice(&[KIND_LEASE, 0, 0]);
    frame(out, at);
}

/// Fill in the length and checksum of the record that starts at `at`.
fn frame(out: &mut [u8], at: usize) {
    let payload_len = out.len() - at - FRAME_LEN;
    let crc = crc32c::crc32c(&out[at + FRAME_LEN..]);
    out[at..at + 2].copy_from_slice(&(payload_len as u16).to_le_bytes());
    out[at + 2..at + 6].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded record, borrowing its strings from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    Usage {
        id: u64,
        usage: Usage<'a>,
    },
    /// The stripe may have handed out ids up to this one.
    Lease(u64),
}

/// Why the bytes at some offset are not a whole, valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// The record runs past the end of the data: a write cut short (a torn tail), if nothing
    /// intact follows it (see [`scan`]).
    Truncated,
    /// Length, checksum or contents are wrong.
    Corrupt,
}

/// Decode the record at the start of `b`: the record and its framed length. Every length is
/// bounded before it is used.
pub fn decode(b: &[u8]) -> Result<(Record<'_>, usize), Bad> {
    if b.len() < FRAME_LEN {
        return Err(Bad::Truncated);
    }
    let len = u16::from_le_bytes([b[0], b[1]]) as usize;
    if !(FIXED_PAYLOAD..=MAX_PAYLOAD).contains(&len) {
        return Err(Bad::Corrupt);
    }
    let Some(payload) = b.get(FRAME_LEN..FRAME_LEN + len) else {
        return Err(Bad::Truncated);
    };
    if crc32c::crc32c(payload) != u32::from_le_bytes(b[2..6].try_into().expect("4 bytes")) {
        return Err(Bad::Corrupt);
    }
    let p = payload;
    let id = u64::from_le_bytes(p[0..8].try_into().expect("8 bytes"));
    let ms = i64::from_le_bytes(p[8..16].try_into().expect("8 bytes"));
    let offset_min = i16::from_le_bytes([p[16], p[17]]);
    let (kind, plen, mlen) = (p[18], p[19] as usize, p[20] as usize);
    if id == 0 || id >= crate::store::ids::MAX_ID || FIXED_PAYLOAD + plen + mlen != len {
        return Err(Bad::Corrupt);
    }
    if kind == KIND_LEASE {
        return if plen == 0 && mlen == 0 {
            Ok((Record::Lease(id), FRAME_LEN + len))
        } else {
            Err(Bad::Corrupt)
        };
    }
    if mlen == 0 || mlen > MAX_STR || plen > MAX_STR {
        return Err(Bad::Corrupt);
    }
    let at = FIXED_PAYLOAD;
    let patient = match kind {
        KIND_NUM if plen == 8 => Patient::Num(u64::from_le_bytes(
            p[at..at + 8].try_into().expect("8 bytes"),
        )),
        KIND_STR if plen > 0 => Patient::Str(&p[at..at + plen]),
        _ => return Err(Bad::Corrupt),
    };
    let medication = &p[at + plen..];
    let timestamp = crate::time::Timestamp { ms, offset_min };
    let usage = Usage {
        patient,
        timestamp,
        medication,
    };
    Ok((Record::Usage { id, usage }, FRAME_LEN + len))
}

/// How a segment's records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every byte is part of a whole record.
    Clean,
    /// The last record was cut short, or the file ends in zeros (a crash or power loss during
    /// a write): the records before `at` are whole, nothing intact follows.
    Torn { at: usize },
    /// A bad record at `at` with something intact after it: not a crash's doing.
    Corrupt { at: usize },
}

/// Walk the records of `bytes` (a whole segment, header included) to the first bad one, calling
/// `each` for every whole record with its offset. Returns how the records end.
///
/// A bad record is a torn tail only when nothing intact follows it: its frame runs into the end
/// of the file, or everything from it to the end is zero. A bad record with any intact record
/// after it (say, a flipped length in the second-to-last record) is corruption, never cut.
pub fn scan<'a>(bytes: &'a [u8], mut each: impl FnMut(usize, Record<'a>)) -> End {
    let mut at = HEADER_LEN.min(bytes.len());
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Ok((r, n)) => {
                each(at, r);
                at += n;
            }
            Err(bad) => return classify(bytes, at, bad),
        }
    }
    End::Clean
}

fn classify(bytes: &[u8], at: usize, bad: Bad) -> End {
    let rest = &bytes[at..];
    if (at + 1..bytes.len()).any(|from| decode(&bytes[from..]).is_ok()) {
        return End::Corrupt { at };
    }
    let runs_past_end = bad == Bad::Truncated;
    // Zeros from inside the bad record to the end: its start reached the disk, its end did
    // not (a power loss after the file grew).
    let declared = match rest {
        [a, b, ..] => FRAME_LEN + u16::from_le_bytes([*a, *b]) as usize,
        _ => rest.len(),
    };
    let zeros_from = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let zero_tail = zeros_from < rest.len() && zeros_from < declared.max(FRAME_LEN);
    if runs_past_end || zero_tail || zeros_from == 0 {
        End::Torn { at }
    } else {
        End::Corrupt { at }
    }
}

/// Create segment `seq` of `h` complete: header and `lease` written and synced under a
/// temporary name, renamed, the directory synced. Returns the open file and its length.
pub fn create_segment(dir: &Path, h: &Header, seq: u32, lease: u64) -> io::Result<(File, u64)> {
    let path = dir.join(segment_name(h, seq));
    let tmp = tmp_path(&path);
    let _ = fs::remove_file(&tmp);
    let mut first = h.encode().to_vec();
    if lease > 0 {
        encode_lease(&mut first, lease);
    }
    // Readable too: a segment deleted under the server is copied out of it (see committer.rs).
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&tmp)?;
    let made = file
        .write_all(&first)
        .and_then(|_| file.sync_all())
        .and_then(|_| {
            if path.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ));
            }
            fs::rename(&tmp, &path)
        })
        .and_then(|_| sync_dir(dir));
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((file, first.len() as u64))
}

/// `path` with `.tmp` added: where a segment is made before it gets its name.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Make the directory's entries (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` if it is missing, and make its entry durable (a power loss right after the
/// first start must not take the whole directory).
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use proptest::prelude::*;

    fn usages(long: &str) -> [Usage<'_>; 2] {
        [
            Usage {
                patient: Patient::Num(42),
                timestamp: Timestamp {
                    ms: -5,
                    offset_min: -300,
                },
                medication: b"A",
            },
            Usage {
                patient: Patient::Str(long.as_bytes()),
                timestamp: Timestamp {
                    ms: 1,
                    offset_min: 0,
                },
                medication: &[b'm'; 64],
            },
        ]
    }

    #[test]
    fn records_round_trip_and_every_flip_is_caught() {
        let long = "é".repeat(32);
        for (i, u) in usages(&long).iter().enumerate() {
            let id = i as u64 + 7;
            let mut b = Vec::new();
            encode(&mut b, id, u);
            let (r, n) = decode(&b).unwrap();
            assert_eq!((r, n), (Record::Usage { id, usage: *u }, b.len()));
            for at in 0..b.len() {
                for bit in 0..8 {
                    let mut c = b.clone();
                    c[at] ^= 1 << bit;
                    c.extend_from_slice(&b); // another record after it: never a torn tail
                    assert!(
                        decode(&c)
                            .map(|(r, _)| r != Record::Usage { id, usage: *u })
                            .unwrap_or(true),
                        "flip at {at} bit {bit} unnoticed"
                    );
                    let mut seg = Header {
                        stripes: 1,
                        stripe: 0,
                        base: 0,
                    }
                    .encode()
                    .to_vec();
                    seg.extend_from_slice(&c);
                    if decode(&c).is_err() {
                        assert_eq!(
                            scan(&seg, |_, _| {}),
                            End::Corrupt { at: HEADER_LEN },
                            "flip at {at} bit {bit} before an intact record is corruption"
                        );
                    }
                }
            }
            for cut in 0..b.len() {
                assert_eq!(
                    decode(&b[..cut]).map(|_| ()),
                    Err(Bad::Truncated),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn torn_tails_and_corruption_are_told_apart() {
        let long = "x".repeat(40);
        let h = Header {
            stripes: 2,
            stripe: 1,
            base: 10,
        };
        let mut seg = h.encode().to_vec();
        encode_lease(&mut seg, 99);
        let mut ends = vec![seg.len()];
        for (i, u) in usages(&long).iter().cycle().take(5).enumerate() {
            encode(&mut seg, 12 + 2 * i as u64, u);
            ends.push(seg.len());
        }
        let mut seen = Vec::new();
        assert_eq!(scan(&seg, |at, r| seen.push((at, r))), End::Clean);
        assert_eq!(seen[0], (HEADER_LEN, Record::Lease(99)));
        assert_eq!(seen.len(), 6);
        // A cut anywhere inside the last record: torn at its start.
        let last = ends[ends.len() - 2];
        for cut in last + 1..seg.len() {
            assert_eq!(scan(&seg[..cut], |_, _| {}), End::Torn { at: last });
        }
        // Zeros after the last whole record (a power loss after the size grew): torn.
        let mut zeroed = seg.clone();
        zeroed.extend_from_slice(&[0; 300]);
        assert_eq!(scan(&zeroed, |_, _| {}), End::Torn { at: seg.len() });
        // A longer length in the second-to-last record: it would run to the end, but an
        // intact record follows it, so it is corruption and nothing is cut.
        let second_last = ends[ends.len() - 3];
        let mut bad = seg.clone();
        bad[second_last] = 140;
        assert_eq!(scan(&bad, |_, _| {}), End::Corrupt { at: second_last });
        // The last record complete in length but with a bad byte: corruption, not a tear.
        let mut flipped = seg.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        assert_eq!(scan(&flipped, |_, _| {}), End::Corrupt { at: last });
    }

    #[test]
    fn headers_are_checked_and_bounded() {
        let h = Header {
            stripes: 4,
            stripe: 3,
            base: 1 << 40,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b), Ok(h));
        assert!(Header::decode(b"not a header at all, not at all!").is_err());
        assert!(Header::decode(&b[..10]).is_err());
        for at in 0..HEADER_LEN {
            for bit in 0..8 {
                let mut c = b;
                c[at] ^= 1 << bit;
                assert!(Header::decode(&c).is_err(), "flip at {at} bit {bit}");
            }
        }
        // Version 1 (no checksum) is still read, within bounds.
        let mut v1 = b;
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[20..24].copy_from_slice(&[0; 4]);
        assert_eq!(Header::decode(&v1), Ok(h));
        v1[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            Header::decode(&v1).is_err(),
            "a huge stripe count is refused"
        );
    }

    #[test]
    fn names_round_trip() {
        let h = Header {
            stripes: 3,
            stripe: 2,
            base: 77,
        };
        assert_eq!(segment_name(&h, 5), "e77-s3-w2-000005.seg");
        assert_eq!(parse_name("e77-s3-w2-000005.seg"), Some((h, 5)));
        assert_eq!(parse_name("e77-s3-w2-000005.seg.tmp"), None);
        assert_eq!(parse_name("LOCK"), None);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&b);
            let _ = scan(&b, |_, _| {});
            let _ = Header::decode(&b);
        }
    }
}
