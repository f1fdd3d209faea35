//! The journal: every usage a worker stores is also appended to that worker's own segment
//! files, and a loop turn's records are written (one `write` per worker per turn) before that
//! turn's `201`s leave. Recovery ([`super::recover`]) rebuilds the arenas from them.
//!
//! # Format (version 1)
//!
//! A segment is a file `e{base}-s{stripes}-w{stripe}-{seq}.seg` in the data directory:
//!
//! - header, 32 bytes: magic `USAGEDJ1`, version `u32` (1), stripes `u32`, stripe `u32`,
//!   reserved `u32` (0), epoch base `u64` (ids of this layout are `base + stripe + 1 + k·stripes`);
//! - records, each: payload length `u16`, CRC32C of the payload `u32`, then the payload: id
//!   `u64`, instant in epoch milliseconds `i64`, UTC offset in minutes `i16`, patient kind `u8`
//!   (0 number, 1 string), patient length `u8`, medication length `u8`, the patient (a `u64`
//!   for a number, else its UTF-8 bytes), the medication's UTF-8 bytes.
//!
//! All integers little-endian. A segment rolls over at `SEGMENT_BYTES`; records of a stripe are
//! in slot order across its segments (by `seq`).
//!
//! # Durability
//!
//! `--sync always`: each turn's write is followed by `fdatasync` before its `201`s go (group
//! commit: one sync covers every usage of the turn; it blocks only this worker).
//! `--sync interval` (default): `fdatasync` at most once a second, so a power loss loses at
//! most about a second of acknowledged usages; a crash of the process alone loses nothing.
//! `--sync never`: the kernel writes back when it likes; a process crash loses nothing, a power
//! loss what the kernel had not written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::json::scan::{Patient, Usage};

pub const MAGIC: &[u8; 8] = b"USAGEDJ1";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 32;
/// Length prefix and CRC before each payload.
pub const FRAME_LEN: usize = 6;
/// Largest payload: fixed fields, a 64-byte patient and a 64-byte medication.
pub const MAX_PAYLOAD: usize = 8 + 8 + 2 + 3 + 64 + 64;
/// Segments roll over past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

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

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.stripes.to_le_bytes());
        h[16..20].copy_from_slice(&self.stripe.to_le_bytes());
        h[24..32].copy_from_slice(&self.base.to_le_bytes());
        h
    }

    pub fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER_LEN || &b[..8] != MAGIC {
            return Err("not a usaged journal segment (bad magic)".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if u32_at(8) != VERSION {
            return Err(format!(
                "journal format version {} (this build reads {VERSION})",
                u32_at(8)
            ));
        }
        let h = Header {
            stripes: u32_at(12),
            stripe: u32_at(16),
            base: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        };
        if h.stripes == 0 || h.stripe >= h.stripes {
            return Err(format!("bad stripe layout {} of {}", h.stripe, h.stripes));
        }
        Ok(h)
    }
}

/// The file name of segment `seq` of `h`.
pub fn segment_name(h: &Header, seq: u32) -> String {
    format!("e{}-s{}-w{}-{seq:06}.seg", h.base, h.stripes, h.stripe)
}

/// Append the framed record of usage `id` to `out`.
pub fn encode(out: &mut Vec<u8>, id: u64, u: &Usage<'_>) {
    let at = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&u.timestamp.ms.to_le_bytes());
    out.extend_from_slice(&u.timestamp.offset_min.to_le_bytes());
    match u.patient {
        Patient::Num(n) => {
            out.extend_from_slice(&[0, 8, u.medication.len() as u8]);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Patient::Str(p) => {
            out.extend_from_slice(&[1, p.len() as u8, u.medication.len() as u8]);
            out.extend_from_slice(p);
        }
    }
    out.extend_from_slice(u.medication);
    let payload_len = out.len() - at - FRAME_LEN;
    let crc = crc32c::crc32c(&out[at + FRAME_LEN..]);
    out[at..at + 2].copy_from_slice(&(payload_len as u16).to_le_bytes());
    out[at + 2..at + 6].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded record, borrowing its strings from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub id: u64,
    pub usage: Usage<'a>,
}

/// Why the bytes at some offset are not a whole, valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// The record runs past the end of the data: a write cut short (a torn tail).
    Truncated,
    /// Length, checksum or contents are wrong.
    Corrupt,
}

/// Decode the record at the start of `b`: the record and its framed length.
pub fn decode(b: &[u8]) -> Result<(Record<'_>, usize), Bad> {
    if b.len() < FRAME_LEN {
        return Err(Bad::Truncated);
    }
    let len = u16::from_le_bytes([b[0], b[1]]) as usize;
    if !(8 + 8 + 2 + 3..=MAX_PAYLOAD).contains(&len) {
        return Err(Bad::Corrupt);
    }
    let Some(payload) = b.get(FRAME_LEN..FRAME_LEN + len) else {
        return Err(Bad::Truncated);
    };
    if crc32c::crc32c(payload) != u32::from_le_bytes(b[2..6].try_into().expect("4 bytes")) {
        // A checksum that fails on the very last record is a write cut short.
        return Err(if FRAME_LEN + len == b.len() {
            Bad::Truncated
        } else {
            Bad::Corrupt
        });
    }
    let p = payload;
    let id = u64::from_le_bytes(p[0..8].try_into().expect("8 bytes"));
    let ms = i64::from_le_bytes(p[8..16].try_into().expect("8 bytes"));
    let offset_min = i16::from_le_bytes([p[16], p[17]]);
    let (kind, plen, mlen) = (p[18], p[19] as usize, p[20] as usize);
    if 21 + plen + mlen != len || mlen == 0 || mlen > 64 || plen > 64 {
        return Err(Bad::Corrupt);
    }
    let patient = match kind {
        0 if plen == 8 => Patient::Num(u64::from_le_bytes(p[21..29].try_into().expect("8 bytes"))),
        1 if plen > 0 => Patient::Str(&p[21..21 + plen]),
        _ => return Err(Bad::Corrupt),
    };
    let medication = &p[21 + plen..];
    let timestamp = crate::time::Timestamp { ms, offset_min };
    Ok((
        Record {
            id,
            usage: Usage {
                patient,
                timestamp,
                medication,
            },
        },
        FRAME_LEN + len,
    ))
}

/// One worker's journal: records are encoded into a buffer as usages are stored, and
/// [`Journal::flush`] writes the buffer once per loop turn.
pub struct Journal {
    dir: PathBuf,
    header: Header,
    seq: u32,
    file: File,
    file_len: u64,
    buf: Vec<u8>,
    sync: SyncMode,
    /// Written since the last `fdatasync`.
    unsynced: bool,
    last_sync: Instant,
    failed: bool,
    /// Bytes written and syncs done, for the operator.
    pub bytes_written: u64,
    pub syncs: u64,
    /// Time spent in `fdatasync`, nanoseconds.
    pub sync_ns: u64,
}

impl Journal {
    /// A journal that appends to a new segment after segment `last_seq` (or the first one).
    pub fn open(
        dir: &Path,
        header: Header,
        last_seq: Option<u32>,
        sync: SyncMode,
    ) -> io::Result<Journal> {
        let seq = last_seq.map_or(0, |s| s + 1);
        let (file, file_len) = create_segment(dir, &header, seq)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            header,
            seq,
            file,
            file_len,
            buf: Vec::with_capacity(256 * 1024),
            sync,
            unsynced: false,
            last_sync: Instant::now(),
            failed: false,
            bytes_written: 0,
            syncs: 0,
            sync_ns: 0,
        })
    }

    /// Encode usage `id` for the next flush.
    pub fn record(&mut self, id: u64, u: &Usage<'_>) {
        encode(&mut self.buf, id, u);
    }

    /// Whether a write or sync failed: the stripe takes no more usages.
    pub fn failed(&self) -> bool {
        self.failed
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Write what this turn recorded (one `write`, more only if the kernel takes less), and
    /// sync as the mode says. After an error the journal is failed for good.
    pub fn flush(&mut self, now: Instant) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("journal failed earlier"));
        }
        let result = self.try_flush(now);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn try_flush(&mut self, now: Instant) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.file_len += self.buf.len() as u64;
            self.bytes_written += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        let due = match self.sync {
            SyncMode::Always => true,
            SyncMode::Interval => now.duration_since(self.last_sync) >= SYNC_INTERVAL,
            SyncMode::Never => false,
        };
        if self.unsynced && due {
            let t = Instant::now();
            self.file.sync_data()?;
            self.sync_ns += t.elapsed().as_nanos() as u64;
            self.unsynced = false;
            self.last_sync = now;
            self.syncs += 1;
        }
        if self.file_len >= SEGMENT_BYTES {
            self.roll()?;
        }
        Ok(())
    }

    /// Make everything written so far durable now (at shutdown).
    pub fn sync_now(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
            self.syncs += 1;
        }
        Ok(())
    }

    /// When the next interval sync is due (for the loop's poll timeout), if one is.
    pub fn sync_due_in(&self, now: Instant) -> Option<Duration> {
        (self.unsynced && self.sync == SyncMode::Interval)
            .then(|| (self.last_sync + SYNC_INTERVAL).saturating_duration_since(now))
    }

    #[cold]
    fn roll(&mut self) -> io::Result<()> {
        if self.sync != SyncMode::Never {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        self.seq += 1;
        let (file, len) = create_segment(&self.dir, &self.header, self.seq)?;
        self.file = file;
        self.file_len = len;
        Ok(())
    }
}

fn create_segment(dir: &Path, header: &Header, seq: u32) -> io::Result<(File, u64)> {
    let path = dir.join(segment_name(header, seq));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)?;
    file.write_all(&header.encode())?;
    file.sync_data()?;
    // The new name must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok((file, HEADER_LEN as u64))
}

/// Create `dir` if it is missing.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    #[test]
    fn records_round_trip_and_every_flip_is_caught() {
        let long = "é".repeat(32);
        let usages = [
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
        ];
        for (i, u) in usages.iter().enumerate() {
            let mut b = Vec::new();
            encode(&mut b, i as u64 + 7, u);
            let (r, n) = decode(&b).unwrap();
            assert_eq!((r.id, r.usage, n), (i as u64 + 7, *u, b.len()));
            for at in 0..b.len() {
                for bit in 0..8 {
                    let mut c = b.clone();
                    c[at] ^= 1 << bit;
                    c.extend_from_slice(&b); // another record after it: never a torn tail
                    assert!(
                        decode(&c)
                            .map(|(r, _)| r.usage != *u || r.id != i as u64 + 7)
                            .unwrap_or(true),
                        "flip at {at} bit {bit} unnoticed"
                    );
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
    fn header_round_trip() {
        let h = Header {
            stripes: 4,
            stripe: 3,
            base: 1 << 40,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        assert!(Header::decode(b"not a header at all, not at all!").is_err());
    }
}
