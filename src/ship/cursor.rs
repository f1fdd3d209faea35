//! Reading a data directory's journal as the shipper does: one [`Cursor`] per stripe key, at a
//! position `(seq, byte_offset)` (the next byte to read), reading whole, checksummed records
//! with bounded `pread`s and never anything else.
//!
//! The segment a cursor is in may still grow (the server's open segment), so what ends its
//! records decides what the cursor does:
//! - a partial record at the end while the segment may still grow: a write in progress (or
//!   cut short); the cursor stays before it and reads it once it is whole;
//! - the segment is **final** (a later segment of its stripe exists, or its `.idx`, or a newer
//!   epoch: nothing writes to it again, see [`Listing::is_final`], looked at *before* the
//!   bytes are read): at its clean end, or at a torn tail ([`journal::scan`]'s verdict), the
//!   cursor goes on in the next segment of its stripe; a corrupt record is never skipped.
//!
//! So every whole record is read once, in order, and nothing is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::json::scan::Usage;
use crate::store::journal::{self, End, HEADER_LEN, Header, Record};

/// Bytes read at a time.
pub const CHUNK: usize = 8 << 20;
/// Most bytes read to tell a torn tail from corruption at the end of a final segment (larger
/// rests are taken as corrupt: segments are far smaller).
const MAX_REST: u64 = 1 << 30;

/// Where a stripe's next record is: segment `seq`, byte `offset` (0: before the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub seq: u32,
    pub offset: u64,
}

/// The segment files of a directory at one moment: each stripe key's sequence numbers, and
/// which have an index.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    pub segs: BTreeMap<Header, BTreeSet<u32>>,
    indexed: BTreeSet<(Header, u32)>,
}

impl Listing {
    /// The segments and indexes in `dir` now.
    pub fn read(dir: &Path) -> io::Result<Listing> {
        let mut l = Listing::default();
        for e in fs::read_dir(dir)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((h, seq)) = journal::parse_name(name) {
                l.segs.entry(h).or_default().insert(seq);
            } else if let Some((h, seq)) = journal::parse_name_as(name, ".idx") {
                l.indexed.insert((h, seq));
            }
        }
        Ok(l)
    }

    /// Whether segment `seq` of `key` gets no more records: a later segment of its stripe
    /// exists, or its index, or an epoch with a larger base (recovery starts one only when
    /// nothing writes the older ones any more).
    pub fn is_final(&self, key: &Header, seq: u32) -> bool {
        let later = self
            .segs
            .get(key)
            .is_some_and(|s| s.range(seq + 1..).next().is_some());
        later || self.indexed.contains(&(*key, seq)) || self.segs.keys().any(|k| k.base > key.base)
    }

    /// The first segment of `key` at or after `seq`.
    pub fn first_from(&self, key: &Header, seq: u32) -> Option<u32> {
        self.segs.get(key)?.range(seq..).next().copied()
    }
}

/// Why a read stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// It read as many usages as it was allowed.
    Full,
    /// Every whole record there is was read.
    CaughtUp,
    /// A bad record in a final segment, or a segment whose header is not its stripe's: the
    /// cursor stays before it.
    Corrupt(String),
}

/// One stripe's reader.
#[derive(Debug)]
pub struct Cursor {
    pub key: Header,
    pub pos: Pos,
    /// The open segment `pos.seq`, if opened.
    file: Option<File>,
}

impl Cursor {
    pub fn new(key: Header, pos: Pos) -> Cursor {
        Cursor {
            key,
            pos,
            file: None,
        }
    }

    /// Move to `pos` (the open file is dropped).
    pub fn seek(&mut self, pos: Pos) {
        if pos.seq != self.pos.seq {
            self.file = None;
        }
        self.pos = pos;
    }

    /// Read whole records from the position on, calling `each(id, usage)` for each usage (at
    /// most `max`; leases are passed over), with `listing` taken before this call. `buf` is
    /// scratch space. Returns the usages read and why it stopped; the position is past them.
    pub fn read(
        &mut self,
        dir: &Path,
        listing: &Listing,
        buf: &mut Vec<u8>,
        max: usize,
        mut each: impl FnMut(u64, &Usage<'_>),
    ) -> io::Result<(usize, Stop)> {
        let mut count = 0;
        loop {
            if count >= max {
                return Ok((count, Stop::Full));
            }
            let is_final = listing.is_final(&self.key, self.pos.seq);
            if !self.open(dir, listing)? {
                return Ok((count, Stop::CaughtUp));
            }
            let file = self.file.as_ref().expect("opened");
            if self.pos.offset == 0 {
                match read_header(file, &self.key)? {
                    Ok(true) => self.pos.offset = HEADER_LEN as u64,
                    Ok(false) => return Ok((count, Stop::CaughtUp)),
                    Err(why) => return Ok((count, Stop::Corrupt(self.at(&why)))),
                }
            }
            buf.resize(CHUNK, 0);
            let n = read_full_at(file, buf, self.pos.offset)?;
            let mut at = 0;
            while at < n && count < max {
                let Ok((rec, len)) = journal::decode(&buf[at..n]) else {
                    break;
                };
                if let Record::Usage { id, usage } = rec {
                    each(id, &usage);
                    count += 1;
                }
                at += len;
            }
            self.pos.offset += at as u64;
            if count >= max {
                return Ok((count, Stop::Full));
            }
            if n == CHUNK && at > 0 {
                continue; // a record cut by the chunk's end: read on from it
            }
            if !is_final {
                return Ok((count, Stop::CaughtUp));
            }
            if at < n || n == CHUNK {
                let end = self.classify_rest()?;
                if let End::Corrupt { at } = end {
                    let why = format!("bad record at offset {}", self.pos.offset + at as u64);
                    return Ok((count, Stop::Corrupt(self.at(&why))));
                }
            }
            // The end of a final segment (a torn tail left behind): on to the next one.
            match listing.first_from(&self.key, self.pos.seq + 1) {
                Some(next) => self.seek(Pos {
                    seq: next,
                    offset: 0,
                }),
                None => return Ok((count, Stop::CaughtUp)),
            }
        }
    }

    /// Open segment `pos.seq` if it is not open; one that is gone (retention, or a gap in the
    /// numbers) moves the cursor to the next one there is. `false`: no segment to read.
    fn open(&mut self, dir: &Path, listing: &Listing) -> io::Result<bool> {
        while self.file.is_none() {
            let path = dir.join(journal::segment_name(&self.key, self.pos.seq));
            match File::open(&path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match listing.first_from(&self.key, self.pos.seq + 1) {
                        Some(next) => {
                            if self.pos.offset > 0 {
                                gone_warning(&self.key, self.pos);
                            }
                            self.pos = Pos {
                                seq: next,
                                offset: 0,
                            };
                        }
                        None => return Ok(false),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// How the bytes from the position to the end of the (final) segment end, by
    /// [`journal::scan`]: a torn tail or corruption.
    fn classify_rest(&self) -> io::Result<End> {
        let file = self.file.as_ref().expect("opened");
        let len = file.metadata()?.len();
        let rest = len.saturating_sub(self.pos.offset);
        if rest > MAX_REST {
            return Ok(End::Corrupt { at: 0 });
        }
        // `scan` reads from HEADER_LEN: put the rest there.
        let mut bytes = vec![0; HEADER_LEN + rest as usize];
        let n = read_full_at(file, &mut bytes[HEADER_LEN..], self.pos.offset)?;
        bytes.truncate(HEADER_LEN + n);
        Ok(match journal::scan(&bytes, |_, _| {}) {
            End::Clean => End::Clean,
            End::Torn { at } => End::Torn {
                at: at - HEADER_LEN,
            },
            End::Corrupt { at } => End::Corrupt {
                at: at - HEADER_LEN,
            },
        })
    }

    fn at(&self, why: &str) -> String {
        format!("{}: {why}", journal::segment_name(&self.key, self.pos.seq))
    }
}

#[cold]
fn gone_warning(key: &Header, pos: Pos) {
    eprintln!(
        "usaged: ship: warning: {} was removed before it was shipped to its end (offset {})",
        journal::segment_name(key, pos.seq),
        pos.offset
    );
}

/// The segment's header, checked against its name's `key`: `Ok(false)` if it is not all
/// there yet, `Err` if it is not `key`'s.
fn read_header(file: &File, key: &Header) -> io::Result<Result<bool, String>> {
    let mut h = [0; HEADER_LEN];
    let n = read_full_at(file, &mut h, 0)?;
    if n < HEADER_LEN {
        return Ok(Ok(false));
    }
    Ok(match Header::decode(&h) {
        Ok(got) if got == *key => Ok(true),
        Ok(got) => Err(format!("header says {got:?}")),
        Err(e) => Err(e),
    })
}

/// Read into `buf` from `offset` until it is full or the file ends; the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
