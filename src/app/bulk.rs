//! The lines of an NDJSON bulk (`POST /api/usages`, `Content-Type: application/x-ndjson`):
//! each complete line is validated ([`scan::scan_usage`]) and stored
//! ([`StripeWriter::append`]) as it arrives, and its result line, `{"id":N}` or
//! `{"error":"<reason>","line":K}`, is appended to the connection's answer buffer. The framing
//! (how the body arrives, across reads) is the connection's (`server/conn/bulk.rs`); this part
//! only sees bytes. Lines are numbered over all input lines from 1, empty ones included; an
//! empty (or all-whitespace) line gets no result line.

use crate::json::scan;
use crate::store::{StoreFull, StripeWriter};

use super::keyed::{KeyedBulk, LineAct};
use super::usages::json_reason;

/// A keyed bulk's state and the journal batch its lines go into now (`None`: no key).
pub type Keyed<'a> = Option<(&'a mut KeyedBulk, u64)>;

/// Longest line accepted (a usage is under 300 bytes): a longer one gets an error line and the
/// rest of it is dropped unread, so the connection never buffers more than this of a line.
pub const MAX_LINE: usize = 4096;

/// Longest result line: an error line with the longest reason and a 20-digit line number.
pub const MAX_RESULT: usize = 128;

/// The reason on the result line where a bulk's answer reached its cap: no line from there on
/// was stored or answered.
pub const STOPPED: &str = "answer too long: this line and the rest were not stored";

/// Why the store refused a usage (the `503`'s reason, or a line's once some were stored).
pub const REFUSED: &str = "cannot store usages now; retry later";

/// The most answer bytes a bulk of at most `max_bulk` bytes may produce (its cap, see
/// [`Lines::new`]). A valid line is at least 47 bytes and its `{"id":N}` at most 24, so a
/// bulk of valid lines never comes near it; only error lines for tiny lines (2 bytes in,
/// ~50 out) could go past it, and the answer stops there instead of growing 25-fold.
pub fn answer_cap(max_bulk: usize) -> usize {
    max_bulk.saturating_mul(2).saturating_add(64 << 10)
}

/// Where a bulk is between reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lines {
    /// Input lines begun so far: the number of the line in progress, once it has a byte.
    pub line: u64,
    /// Within a line longer than [`MAX_LINE`], already answered: its bytes up to the newline
    /// are dropped.
    pub skipping: bool,
    /// Lines stored and lines refused so far.
    pub stored: u64,
    pub failed: u64,
    /// The id of the last usage stored (0: none).
    pub last_id: u64,
    /// The answer may not grow past this many bytes ([`answer_cap`]).
    cap: usize,
    /// The answer reached its cap: the rest of the body is dropped unread.
    pub stopped: bool,
    /// The store refused the first usage, before any was stored: the bulk is answered `503`
    /// like a JSON post, and the rest of its body is dropped unread.
    pub refused: bool,
}

impl Lines {
    /// A bulk whose answer stays within `cap` bytes: the line that would take it nearer than
    /// two result lines gets the [`STOPPED`] error line, and no later line is stored or
    /// answered.
    pub fn new(cap: usize) -> Self {
        Lines {
            cap,
            ..Lines::default()
        }
    }

    /// Take the complete lines of `data` (and, when `last`, the unterminated rest as the final
    /// line): store each valid one, and append each result to `out`. Returns how many bytes
    /// of `data` were taken; the rest (a partial line of at most [`MAX_LINE`] bytes) is to be
    /// offered again with more bytes after it.
    pub fn take(
        &mut self,
        data: &mut [u8],
        last: bool,
        w: &mut StripeWriter,
        out: &mut Vec<u8>,
        mut k: Keyed<'_>,
    ) -> usize {
        if self.stopped {
            return data.len();
        }
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                break;
            };
            if let Some((kb, _)) = k.as_mut() {
                kb.bytes(&data[pos..pos + nl + 1]);
            }
            self.line_ends(&mut data[pos..pos + nl], w, out, &mut k);
            pos += nl + 1;
        }
        let rest = data.len() - pos;
        if last && rest > 0 {
            if let Some((kb, _)) = k.as_mut() {
                kb.bytes(&data[pos..]);
            }
            self.line_ends(&mut data[pos..], w, out, &mut k);
            return data.len();
        }
        if self.stopped {
            // Stopped by a line of this read: the rest is dropped unread, never answered.
            return data.len();
        }
        if !self.skipping && rest > MAX_LINE {
            // Too long already: answer it now and drop what is here and what follows of it.
            self.line += 1;
            self.skipping = true;
            if self.room(out) {
                self.error(out, "line too long");
            }
        }
        if self.skipping {
            if let Some((kb, _)) = k.as_mut() {
                kb.bytes(&data[pos..]);
            }
            return data.len();
        }
        pos
    }

    /// A line ended (by its newline, or by the end of the body): answer it unless it is empty
    /// or is the tail of a line already answered as too long.
    fn line_ends(
        &mut self,
        line: &mut [u8],
        w: &mut StripeWriter,
        out: &mut Vec<u8>,
        k: &mut Keyed<'_>,
    ) {
        if std::mem::take(&mut self.skipping) || self.stopped {
            return;
        }
        self.line += 1;
        if line.iter().all(u8::is_ascii_whitespace) || !self.room(out) {
            return;
        }
        if line.len() > MAX_LINE {
            return self.error(out, "line too long");
        }
        let usage = match scan::scan_usage(line) {
            Ok(u) => u,
            Err(e) => return self.error(out, json_reason(e)),
        };
        let stored = match k {
            None => w.append(&usage),
            Some((kb, batch)) => match kb.act(self.line) {
                LineAct::Replay(id) => return self.id(out, id),
                LineAct::Halted => return self.error(out, REFUSED),
                LineAct::Mismatch => {
                    self.stopped = true;
                    return;
                }
                LineAct::Store(mark) => {
                    let r = w.append_keyed(&usage, Some(&mark));
                    kb.stored(r.ok(), &mark, *batch);
                    r
                }
            },
        };
        match stored {
            Ok(id) => {
                self.stored += 1;
                self.last_id = id;
                self.id(out, id);
            }
            Err(StoreFull) if self.stored == 0 => {
                self.refused = true;
                self.stopped = true;
            }
            Err(StoreFull) => self.error(out, REFUSED),
        }
    }

    /// The result line of a line stored as `id`.
    fn id(&mut self, out: &mut Vec<u8>, id: u64) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(num.format(id).as_bytes());
        out.extend_from_slice(b"}\n");
    }

    /// Whether the answer has room for the line in progress (and, after it, for the
    /// [`STOPPED`] line); else that line is answered with it, and the bulk stops.
    fn room(&mut self, out: &mut Vec<u8>) -> bool {
        if out.len() + 2 * MAX_RESULT <= self.cap {
            return true;
        }
        self.stopped = true;
        self.error(out, STOPPED);
        false
    }

    /// The error line for the line in progress. `reason` is one of this crate's fixed
    /// messages, which need no escaping.
    fn error(&mut self, out: &mut Vec<u8>, reason: &str) {
        self.failed += 1;
        debug_assert!(reason.len() + 41 <= MAX_RESULT);
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"error\":\"");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\",\"line\":");
        out.extend_from_slice(num.format(self.line).as_bytes());
        out.extend_from_slice(b"}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::conn::testing::Fixture;

    #[test]
    fn a_long_partial_line_after_the_cap_adds_no_second_stopped_line() {
        let mut f = Fixture::new();
        let mut lines = Lines::new(4096);
        // Tiny bad lines reach the cap; then a line too long, not yet ended, in the same read.
        let mut data = b"x\n".repeat(200);
        data.extend_from_slice(&[b'y'; MAX_LINE + 10]);
        let mut out = Vec::new();
        let took = lines.take(&mut data, false, &mut f.app.writer, &mut out, None);
        assert_eq!(took, data.len());
        assert!(lines.stopped);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches(STOPPED).count(), 1, "{text}");
        assert!(!text.contains("line too long"), "{text}");
    }
}
