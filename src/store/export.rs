//! `usaged export`: every stored usage in id order, read from the journal without a server
//! and without changing it. Each line is encoded as the API answers it
//! ([`crate::app::usages`]).
//!
//! The usages are streamed from the sealed segments of a read-only recovery (where every
//! record lies in one): per stripe a cursor walks its segments in slot order a window at a
//! time ([`Records`]), and the stripes of an epoch are merged by id (an epoch's ids go slot by
//! slot, stripe by stripe within a slot); epochs follow one another. Memory is one window per
//! stripe of one epoch, whatever the journal's size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::StoredUsage;
use super::cold::Records;
use super::ids;
use super::index::Meta;
use super::journal::{Header, Record};
use super::recover::{self, Options, Recovered};
use super::segments::Segments;
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
        cache_bytes: crate::store::arena::DEFAULT_CACHE,
        cluster: crate::store::recover::Cluster::SINGLE,
    };
    recover::recover(dir, opt)
}

/// Bytes of segment a stripe's cursor reads at a time: [`WINDOW_TOTAL`] shared by the
/// stripes of an epoch, each window within [`WINDOW_MIN`]..=[`WINDOW_MAX`].
pub const WINDOW_TOTAL: usize = 64 << 20;
pub const WINDOW_MIN: usize = 64 << 10;
pub const WINDOW_MAX: usize = 1 << 20;

/// Every usage in the segments of `segs` in id order to `out` in `format`, in writes of
/// about 32 KiB. `epochs` are the `(base, stripes)` to export, in id order (as
/// [`super::Store::epochs`] lists them); a segment's records are read up to its sealed length, so
/// what a read-only recovery left out of the table (a torn tail, what follows corruption) is
/// left out here. `Err` also if a segment does not hold what the table says (changed under
/// the export).
pub fn write(
    segs: &Segments,
    epochs: &[(u64, u32)],
    format: ExportFormat,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut lines = Lines::new(format, out);
    for &(base, stripes) in epochs {
        merge_epoch(segs, base, stripes, &mut lines)?;
    }
    lines.finish()
}

/// The stripes of epoch `(base, stripes)` merged by id into `lines`.
fn merge_epoch<W: Write>(
    segs: &Segments,
    base: u64,
    stripes: u32,
    lines: &mut Lines<'_, W>,
) -> io::Result<()> {
    let window = (WINDOW_TOTAL / stripes.max(1) as usize).clamp(WINDOW_MIN, WINDOW_MAX);
    let mut cursors = Vec::with_capacity(stripes as usize);
    let mut heads = Vec::with_capacity(stripes as usize);
    let mut next = BinaryHeap::with_capacity(stripes as usize);
    for stripe in 0..stripes {
        let key = Header {
            stripes,
            stripe,
            base,
        };
        let mut c = Cursor::new(segs, key, window);
        let head = c.next()?;
        if let Some((id, _)) = head {
            next.push(Reverse((id, cursors.len())));
        }
        heads.push(head.map(|(_, u)| u));
        cursors.push(c);
    }
    while let Some(Reverse((id, s))) = next.pop() {
        lines.push(
            id,
            heads[s].as_ref().expect("a head for each queued stripe"),
        )?;
        let head = cursors[s].next()?;
        if let Some((id, _)) = head {
            next.push(Reverse((id, s)));
        }
        heads[s] = head.map(|(_, u)| u);
    }
    Ok(())
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// One stripe's usages, segment after segment, each checked against the table: the id of its
/// slot, and as many as the segment's index says.
struct Cursor<'a> {
    segs: &'a Segments,
    key: Header,
    left: std::vec::IntoIter<super::segments::Sealed>,
    window: usize,
    /// The segment being read, and its usages read so far.
    open: Option<(Records, Meta, u64)>,
}

impl<'a> Cursor<'a> {
    fn new(segs: &'a Segments, key: Header, window: usize) -> Cursor<'a> {
        Cursor {
            segs,
            key,
            left: segs.list(&key).into_iter(),
            window,
            open: None,
        }
    }

    /// The next usage and its id; `None` after the last.
    fn next(&mut self) -> io::Result<Option<(u64, StoredUsage)>> {
        loop {
            let Some((records, meta, seen)) = &mut self.open else {
                let Some(s) = self.left.next() else {
                    return Ok(None);
                };
                let path = self.segs.segment_path(&s.meta);
                let file = File::open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                let records = Records::new(file, path, s.meta.data_len, self.window);
                self.open = Some((records, s.meta, 0));
                continue;
            };
            match records.next_record().map_err(invalid)? {
                Some((at, Record::Usage { id, usage })) => {
                    let slot = meta.first_slot + *seen;
                    let k = &self.key;
                    let want = k.base + ids::id_of(k.stripe, slot, k.stripes);
                    if id != want || *seen >= meta.records {
                        return Err(invalid(format!(
                            "{}: the record at offset {at} has id {id} where {want} was expected",
                            records.path().display()
                        )));
                    }
                    *seen += 1;
                    return Ok(Some((id, StoredUsage::from_usage(&usage))));
                }
                Some((_, Record::Lease(_))) => {}
                None if *seen != meta.records => {
                    return Err(invalid(format!(
                        "{}: {seen} usages where its index says {}",
                        records.path().display(),
                        meta.records
                    )));
                }
                None => self.open = None,
            }
        }
    }
}

/// Lines in `format`, written to `out` about 32 KiB at a time, checked to rise by id.
struct Lines<'a, W: Write> {
    buf: Vec<u8>,
    format: ExportFormat,
    out: &'a mut W,
    last: u64,
}

impl<'a, W: Write> Lines<'a, W> {
    fn new(format: ExportFormat, out: &'a mut W) -> Lines<'a, W> {
        let mut buf = Vec::with_capacity(1 << 16);
        if format == ExportFormat::Csv {
            buf.extend_from_slice(b"id,patientId,timestamp,medication\n");
        }
        Lines {
            buf,
            format,
            out,
            last: 0,
        }
    }

    fn push(&mut self, id: u64, u: &StoredUsage) -> io::Result<()> {
        if id <= self.last {
            return Err(invalid(format!("id {id} after id {}", self.last)));
        }
        self.last = id;
        match self.format {
            ExportFormat::Ndjson => {
                usages::write_json(&mut self.buf, id, u);
                self.buf.push(b'\n');
            }
            ExportFormat::Csv => usages::write_csv(&mut self.buf, id, u),
        }
        if self.buf.len() >= 1 << 15 {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        self.out.write_all(&self.buf)
    }
}

#[cfg(test)]
mod tests;
