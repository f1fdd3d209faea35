//! The journal's on-disk format: segment headers, records, lease records, and how a segment
//! file comes into existence. The journal thread that writes them is [`super::committer`];
//! recovery ([`super::recover`]) reads them back.
//!
//! # Format (version 3; versions 1 and 2 are still read)
//!
//! A segment is a file `e{base}-s{stripes}-w{stripe}-{seq:06}.seg` in the data directory:
//!
//! - header, 32 bytes: magic `USAGEDJ1`, version `u32` (2), stripes `u32`, stripe `u32`,
//!   CRC32C `u32` of bytes `0..20` and `24..32` (version 1: 0, unchecked), epoch base `u64`
//!   (ids of this layout are `base + stripe + 1 + k·stripes`). Every number is bounded before
//!   use and must agree with the file name. In a cluster (`--nodes N`, `--node K`, `S`
//!   workers) `stripes` and `stripe` are global: `N·S` and `s·N + K` for worker `s`, so an id
//!   is `base + 1 + K + N·(s + S·k)` and names its node as `(id − base − 1) mod N`; a node's
//!   directory holds only its own stripes (the README's Scale-out; the node's identity is in
//!   `CLUSTER`, `identity.rs`).
//! - records, each: payload length `u16`, CRC32C of the payload `u32`, then the payload: id
//!   `u64`, instant in epoch milliseconds `i64`, UTC offset in minutes `i16`, patient kind `u8`
//!   (0 number, 1 string, 2 lease), patient length `u8`, medication length `u8`, the patient (a
//!   `u64` for a number, else its UTF-8 bytes), the medication's UTF-8 bytes.
//! - a **keyed** usage (kind 0 or 1 plus [`KEYED`], version 3) carries [`TRAILER`] more bytes
//!   after the medication: its `Idempotency-Key` in one record with the usage, so the two
//!   reach the disk together or not at all ([`KeyMark`]: key fingerprint `u128`, created
//!   `u64` (unix seconds), body bytes covered `u64`, their fingerprint `u64`, bulk line `u32`).
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
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::json::scan::{Patient, Usage};

pub const MAGIC: &[u8; 8] = b"USAGEDJ1";
pub const VERSION: u32 = 3;

/// Where each field of a segment header lies (see the format above).
mod header_at {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const STRIPES: Range<usize> = 12..16;
    pub const STRIPE: Range<usize> = 16..20;
    /// The checksum, of every other byte of the header.
    pub const CRC: Range<usize> = 20..24;
    pub const BASE: Range<usize> = 24..32;
}
pub const HEADER_LEN: usize = header_at::BASE.end;

/// Where each field of a record's frame lies: the payload follows it.
mod frame_at {
    use std::ops::Range;
    /// Payload length, `u16`.
    pub const LEN: Range<usize> = 0..2;
    /// CRC32C of the payload, `u32`.
    pub const CRC: Range<usize> = 2..6;
}
/// Length prefix and CRC before each payload.
pub const FRAME_LEN: usize = frame_at::CRC.end;

/// Where each fixed field of a payload lies: the strings (patient, medication) follow them.
mod payload_at {
    use std::ops::Range;
    pub const ID: Range<usize> = 0..8;
    pub const MS: Range<usize> = 8..16;
    pub const OFFSET: Range<usize> = 16..18;
    pub const KIND: usize = 18;
    pub const PATIENT_LEN: usize = 19;
    pub const MED_LEN: usize = 20;
}
/// The fixed part of a payload: id, instant, offset, kind, two lengths.
pub const FIXED_PAYLOAD: usize = payload_at::MED_LEN + 1;
/// Longest string (patient id, medication), in bytes: the API's limit, from the one constant
/// that the request scanner enforces.
pub const MAX_STR: usize = crate::json::scan::MAX_STR;
/// The idempotency trailer of a keyed usage's payload ([`KeyMark`]).
pub const TRAILER: usize = 16 + 8 + 8 + 8 + 4;
/// Largest payload: fixed fields, a patient and a medication of `MAX_STR` bytes each, and a
/// key trailer.
pub const MAX_PAYLOAD: usize = FIXED_PAYLOAD + MAX_STR + MAX_STR + TRAILER;
// String lengths are one byte each, payload lengths two.
const _: () = assert!(MAX_STR <= u8::MAX as usize && MAX_PAYLOAD <= u16::MAX as usize);
/// The shortest framed record (a lease).
pub const MIN_RECORD: usize = FRAME_LEN + FIXED_PAYLOAD;
/// Segments roll over past this size unless `--segment-size` says otherwise.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Most stripes (workers) a header may name; larger is corruption, never an allocation.
pub const MAX_STRIPES: u32 = 4096;

const KIND_NUM: u8 = 0;
const KIND_STR: u8 = 1;
const KIND_LEASE: u8 = 2;
/// Or'ed into a usage's kind: its payload ends with a key trailer ([`KeyMark`]).
pub const KEYED: u8 = 0x80;

/// The `Idempotency-Key` a usage was stored under, journaled in its record (see the format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMark {
    /// The key's fingerprint (`crate::idem::key_fingerprint`).
    pub key: u128,
    /// When the key was first used (unix seconds): it is remembered for the window from then.
    pub created_s: u64,
    /// Body bytes this record's request had covered once it was stored: the whole body of a
    /// single post, or the body of a bulk through this usage's line (its newline included).
    pub end: u64,
    /// The fingerprint of those `end` bytes.
    pub body: u64,
    /// `0` for a single post; else the usage's line in its bulk (1-based).
    pub line: u32,
}

impl KeyMark {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key.to_le_bytes());
        out.extend_from_slice(&self.created_s.to_le_bytes());
        out.extend_from_slice(&self.end.to_le_bytes());
        out.extend_from_slice(&self.body.to_le_bytes());
        out.extend_from_slice(&self.line.to_le_bytes());
    }

    fn decode(t: &[u8; TRAILER]) -> KeyMark {
        KeyMark {
            key: u128::from_le_bytes(t[0..16].try_into().expect("16 bytes")),
            created_s: u64_at(t, 16..24),
            end: u64_at(t, 24..32),
            body: u64_at(t, 32..40),
            line: u32_at(t, 40..44),
        }
    }
}

/// When the journal is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Always,
    Interval,
    Never,
}

/// The header of a segment; also the key of a stripe of an epoch everywhere segments are
/// grouped (the segment table, recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Header {
    pub stripes: u32,
    pub stripe: u32,
    pub base: u64,
}

/// The checksum of header `h`: every byte but the checksum's own.
fn header_crc(h: &[u8]) -> u32 {
    let before = &h[..header_at::CRC.start];
    crc32c::crc32c_append(crc32c::crc32c(before), &h[header_at::CRC.end..HEADER_LEN])
}

/// The little-endian `u32` at `at` of `b` (a range of 4 bytes inside it).
pub(super) fn u32_at(b: &[u8], at: Range<usize>) -> u32 {
    u32::from_le_bytes(b[at].try_into().expect("4 bytes"))
}

/// The little-endian `u64` at `at` of `b` (a range of 8 bytes inside it).
pub(super) fn u64_at(b: &[u8], at: Range<usize>) -> u64 {
    u64::from_le_bytes(b[at].try_into().expect("8 bytes"))
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        h[header_at::MAGIC].copy_from_slice(MAGIC);
        h[header_at::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        h[header_at::STRIPES].copy_from_slice(&self.stripes.to_le_bytes());
        h[header_at::STRIPE].copy_from_slice(&self.stripe.to_le_bytes());
        h[header_at::BASE].copy_from_slice(&self.base.to_le_bytes());
        let crc = header_crc(&h);
        h[header_at::CRC].copy_from_slice(&crc.to_le_bytes());
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
        if &b[header_at::MAGIC] != MAGIC {
            return Err("not a usaged journal segment (bad magic)".into());
        }
        let crc = u32_at(b, header_at::CRC);
        match u32_at(b, header_at::VERSION) {
            1 if crc == 0 => {}
            2 | 3 if crc == header_crc(&b[..HEADER_LEN]) => {}
            2 | 3 => return Err("header checksum mismatch".into()),
            v => {
                return Err(format!(
                    "journal format version {v} (this build reads 1 to 3)"
                ));
            }
        }
        let h = Header {
            stripes: u32_at(b, header_at::STRIPES),
            stripe: u32_at(b, header_at::STRIPE),
            base: u64_at(b, header_at::BASE),
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
    name_as(h, seq, ".seg")
}

/// The file name `e{base}-s{stripes}-w{stripe}-{seq:06}{ext}` of segment `seq` of `h` (`ext`
/// `.seg`), or of its index (`.idx`, see [`super::index`]).
pub fn name_as(h: &Header, seq: u32, ext: &str) -> String {
    format!("e{}-s{}-w{}-{seq:06}{ext}", h.base, h.stripes, h.stripe)
}

/// `(header, seq)` a segment file name promises; `None` if it is not one.
pub fn parse_name(name: &str) -> Option<(Header, u32)> {
    parse_name_as(name, ".seg")
}

/// `(header, seq)` a file name `e{base}-s{stripes}-w{stripe}-{seq}{ext}` promises: `ext` is
/// `.seg` for a segment, `.idx` for its index ([`super::index`]); `None` if it is not one.
pub fn parse_name_as(name: &str, ext: &str) -> Option<(Header, u32)> {
    let rest = name.strip_suffix(ext)?.strip_prefix('e')?;
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

/// The fixed fields of a payload, as [`payload_at`] lays them out; the strings follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fixed {
    id: u64,
    ms: i64,
    offset_min: i16,
    kind: u8,
    patient_len: u8,
    med_len: u8,
}

impl Fixed {
    #[inline]
    fn encode(&self) -> [u8; FIXED_PAYLOAD] {
        let mut p = [0; FIXED_PAYLOAD];
        p[payload_at::ID].copy_from_slice(&self.id.to_le_bytes());
        p[payload_at::MS].copy_from_slice(&self.ms.to_le_bytes());
        p[payload_at::OFFSET].copy_from_slice(&self.offset_min.to_le_bytes());
        p[payload_at::KIND] = self.kind;
        p[payload_at::PATIENT_LEN] = self.patient_len;
        p[payload_at::MED_LEN] = self.med_len;
        p
    }

    /// The fields of `p`, the first [`FIXED_PAYLOAD`] bytes of a payload (none is checked).
    fn decode(p: &[u8; FIXED_PAYLOAD]) -> Fixed {
        Fixed {
            id: u64_at(p, payload_at::ID),
            ms: i64::from_le_bytes(p[payload_at::MS].try_into().expect("8 bytes")),
            offset_min: i16::from_le_bytes(p[payload_at::OFFSET].try_into().expect("2 bytes")),
            kind: p[payload_at::KIND],
            patient_len: p[payload_at::PATIENT_LEN],
            med_len: p[payload_at::MED_LEN],
        }
    }

    /// The payload's length these fields declare.
    fn payload_len(&self) -> usize {
        FIXED_PAYLOAD + usize::from(self.patient_len) + usize::from(self.med_len)
    }
}

/// Append the framed record of usage `id` to `out`. Its strings are at most [`MAX_STR`] bytes
/// (the scanner's limit).
pub fn encode(out: &mut Vec<u8>, id: u64, u: &Usage<'_>) {
    encode_keyed(out, id, u, None);
}

/// [`encode`], with the key trailer `mark` when the usage was posted with an
/// `Idempotency-Key`.
pub fn encode_keyed(out: &mut Vec<u8>, id: u64, u: &Usage<'_>, mark: Option<&KeyMark>) {
    debug_assert!(u.medication.len() <= MAX_STR, "medication within MAX_STR");
    // One capacity check for the whole record (on the hot path: once per stored usage).
    out.reserve(FRAME_LEN + MAX_PAYLOAD);
    let at = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    let (kind, patient): (u8, &[u8]) = match &u.patient {
        Patient::Num(n) => (KIND_NUM, &n.to_le_bytes()),
        Patient::Str(p) => (KIND_STR, p),
    };
    debug_assert!(patient.len() <= MAX_STR, "patient within MAX_STR");
    let fixed = Fixed {
        id,
        ms: u.timestamp.ms,
        offset_min: u.timestamp.offset_min,
        kind: if mark.is_some() { kind | KEYED } else { kind },
        patient_len: patient.len() as u8,
        med_len: u.medication.len() as u8,
    };
    out.extend_from_slice(&fixed.encode());
    out.extend_from_slice(patient);
    out.extend_from_slice(u.medication);
    if let Some(m) = mark {
        m.encode(out);
    }
    frame(out, at);
}

/// What the start of a framed record says, read without checking anything (no checksum, no
/// bounds): its framed length (at least [`MIN_RECORD`]), its id and whether it is a lease.
/// For walking records this process just encoded (see [`super::index::Builder`]); anything
/// read back from disk goes through [`decode`].
#[inline]
pub fn peek(head: &[u8; MIN_RECORD]) -> (usize, u64, bool) {
    let len = usize::from(u16::from_le_bytes(
        head[frame_at::LEN].try_into().expect("2 bytes"),
    ));
    let p = &head[FRAME_LEN..];
    let lease = p[payload_at::KIND] == KIND_LEASE;
    (
        (FRAME_LEN + len).max(MIN_RECORD),
        u64_at(p, payload_at::ID),
        lease,
    )
}

/// Whether the whole record at the start of `b` (as [`decode`] or [`peek`] found it) is a
/// keyed usage's (its kind has [`KEYED`]).
#[inline]
pub fn is_keyed(b: &[u8]) -> bool {
    b.get(FRAME_LEN + payload_at::KIND)
        .is_some_and(|k| k & KEYED != 0)
}

/// Append a lease record: ids up to `lease` may have been handed out.
pub fn encode_lease(out: &mut Vec<u8>, lease: u64) {
    let at = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    let fixed = Fixed {
        id: lease,
        ms: 0,
        offset_min: 0,
        kind: KIND_LEASE,
        patient_len: 0,
        med_len: 0,
    };
    out.extend_from_slice(&fixed.encode());
    frame(out, at);
}

/// Fill in the length and checksum of the record that starts at `at`.
fn frame(out: &mut [u8], at: usize) {
    let payload_len = out.len() - at - FRAME_LEN;
    let crc = crc32c::crc32c(&out[at + FRAME_LEN..]);
    let f = &mut out[at..at + FRAME_LEN];
    f[frame_at::LEN].copy_from_slice(&(payload_len as u16).to_le_bytes());
    f[frame_at::CRC].copy_from_slice(&crc.to_le_bytes());
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
    let Some(frame) = b.get(..FRAME_LEN) else {
        return Err(Bad::Truncated);
    };
    let len = usize::from(u16::from_le_bytes(
        frame[frame_at::LEN].try_into().expect("2 bytes"),
    ));
    if !(FIXED_PAYLOAD..=MAX_PAYLOAD).contains(&len) {
        return Err(Bad::Corrupt);
    }
    let Some(p) = b.get(FRAME_LEN..FRAME_LEN + len) else {
        return Err(Bad::Truncated);
    };
    if crc32c::crc32c(p) != u32_at(frame, frame_at::CRC) {
        return Err(Bad::Corrupt);
    }
    let (fixed, strings) = p
        .split_first_chunk::<FIXED_PAYLOAD>()
        .expect("len >= FIXED_PAYLOAD");
    let mut f = Fixed::decode(fixed);
    let (plen, mlen) = (usize::from(f.patient_len), usize::from(f.med_len));
    let trailer = if f.kind & KEYED != 0 { TRAILER } else { 0 };
    f.kind &= !KEYED;
    if f.id == 0 || f.id >= crate::store::ids::MAX_ID || f.payload_len() + trailer != len {
        return Err(Bad::Corrupt);
    }
    if f.kind == KIND_LEASE {
        return if plen == 0 && mlen == 0 && trailer == 0 {
            Ok((Record::Lease(f.id), FRAME_LEN + len))
        } else {
            Err(Bad::Corrupt)
        };
    }
    if mlen == 0 || mlen > MAX_STR || plen > MAX_STR {
        return Err(Bad::Corrupt);
    }
    let (patient, medication) = strings[..plen + mlen].split_at(plen);
    let patient = match f.kind {
        KIND_NUM if plen == 8 => {
            Patient::Num(u64::from_le_bytes(patient.try_into().expect("8 bytes")))
        }
        KIND_STR if plen > 0 => Patient::Str(patient),
        _ => return Err(Bad::Corrupt),
    };
    let timestamp = crate::time::Timestamp {
        ms: f.ms,
        offset_min: f.offset_min,
    };
    let usage = Usage {
        patient,
        timestamp,
        medication,
    };
    Ok((Record::Usage { id: f.id, usage }, FRAME_LEN + len))
}

/// The key trailer of the record at the start of `b` (a whole record, as [`decode`] found
/// it), if it is a keyed usage's. Its fields are bounded by whoever uses them
/// (`crate::idem`).
pub fn key_mark(b: &[u8]) -> Option<KeyMark> {
    let (_, n) = decode(b).ok()?;
    let p = &b[FRAME_LEN..n];
    if p[payload_at::KIND] & KEYED == 0 {
        return None;
    }
    let t = p[p.len() - TRAILER..].try_into().expect("TRAILER bytes");
    Some(KeyMark::decode(t))
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
    let declared = match rest.get(frame_at::LEN) {
        Some(&[a, b]) => FRAME_LEN + usize::from(u16::from_le_bytes([a, b])),
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

/// Write `bytes` as the file `name` in `dir` durably, all or nothing: a temporary file,
/// synced, renamed over `name`, the directory synced (a failure removes the temporary file).
pub fn store_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let path = dir.join(name);
    let tmp = tmp_path(&path);
    let _ = fs::remove_file(&tmp);
    let made = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_data()))
        .and_then(|_| fs::rename(&tmp, &path))
        .and_then(|_| sync_dir(dir));
    if made.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    made
}

/// The layout of a side file's table (`RETAINED`, `SHIPPED`): `magic`, version `u32` (1) at
/// 8, an entry count `u32` at `count_at`, a head of `head_len` bytes, then `count` entries of
/// `entry_len` bytes, each starting with a stripe key (base `u64`, stripes `u32`, stripe
/// `u32`), then a CRC32C `u32` of every byte before it.
pub struct SideTable {
    pub name: &'static str,
    pub magic: &'static [u8; 8],
    pub count_at: usize,
    pub head_len: usize,
    pub entry_len: usize,
    /// More entries than any directory can have: a count past it is corruption.
    pub max_entries: usize,
}

impl SideTable {
    /// Check `b` as this table (magic, version, length, checksum, every key bounded) and give
    /// each entry's offset with its key.
    pub fn entries(&self, b: &[u8]) -> Result<Vec<(usize, Header)>, String> {
        let name = self.name;
        if b.len() < self.head_len + 4 || &b[..8] != self.magic {
            return Err(format!("not a {name} file"));
        }
        let version = u32_le(b, 8);
        if version != 1 {
            return Err(format!("{name} version {version} is not 1"));
        }
        let n = u32_le(b, self.count_at) as usize;
        if n > self.max_entries || b.len() != self.head_len + n * self.entry_len + 4 {
            return Err(format!("{name} of {} bytes, {n} entries", b.len()));
        }
        let body = b.len() - 4;
        if crc32c::crc32c(&b[..body]) != u32_le(b, body) {
            return Err(format!("{name} checksum mismatch"));
        }
        (0..n)
            .map(|i| {
                let at = self.head_len + i * self.entry_len;
                let key = Header {
                    base: u64_le(b, at),
                    stripes: u32_le(b, at + 8),
                    stripe: u32_le(b, at + 12),
                };
                if key.stripes == 0 || key.stripes > MAX_STRIPES || key.stripe >= key.stripes {
                    return Err(format!("{name} entry {i}: bad stripe {key:?}"));
                }
                Ok((at, key))
            })
            .collect()
    }
}

/// The little-endian `u32` at `at` of `b` (in bounds: the caller checked the length).
pub fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The little-endian `u64` at `at` of `b` (in bounds: the caller checked the length).
pub fn u64_le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
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
mod tests;
