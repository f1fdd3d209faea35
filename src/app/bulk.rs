//! The lines of an NDJSON bulk (`POST /api/usages`, `Content-Type: application/x-ndjson`):
//! each complete line is validated ([`scan::scan_usage`]) and stored
//! ([`StripeWriter::append`]) as it arrives, and its result line, `{"id":N}` or
//! `{"error":"<reason>","line":K}`, is appended to the connection's answer buffer. The framing
//! (how the body arrives, across reads) is the connection's (`server/conn/bulk.rs`); this part
//! only sees bytes. Lines are numbered over all input lines from 1, empty ones included; an
//! empty (or all-whitespace) line gets no result line.

use crate::json::scan;
use crate::store::{StoreFull, StripeWriter};

use super::usages::json_reason;

/// Longest line accepted (a usage is under 300 bytes): a longer one gets an error line and the
/// rest of it is dropped unread, so the connection never buffers more than this of a line.
pub const MAX_LINE: usize = 4096;

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
}

impl Lines {
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
    ) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                break;
            };
            self.line_ends(&mut data[pos..pos + nl], w, out);
            pos += nl + 1;
        }
        let rest = data.len() - pos;
        if last && rest > 0 {
            self.line_ends(&mut data[pos..], w, out);
            return data.len();
        }
        if !self.skipping && rest > MAX_LINE {
            // Too long already: answer it now and drop what is here and what follows of it.
            self.line += 1;
            self.skipping = true;
            self.error(out, "line too long");
            return data.len();
        }
        if self.skipping {
            return data.len();
        }
        pos
    }

    /// A line ended (by its newline, or by the end of the body): answer it unless it is empty
    /// or is the tail of a line already answered as too long.
    fn line_ends(&mut self, line: &mut [u8], w: &mut StripeWriter, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.skipping) {
            return;
        }
        self.line += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if line.len() > MAX_LINE {
            return self.error(out, "line too long");
        }
        let usage = match scan::scan_usage(line) {
            Ok(u) => u,
            Err(e) => return self.error(out, json_reason(e)),
        };
        match w.append(&usage) {
            Ok(id) => {
                self.stored += 1;
                self.last_id = id;
                let mut num = itoa::Buffer::new();
                out.extend_from_slice(b"{\"id\":");
                out.extend_from_slice(num.format(id).as_bytes());
                out.extend_from_slice(b"}\n");
            }
            Err(StoreFull) => self.error(out, "cannot store usages now; retry later"),
        }
    }

    /// The error line for the line in progress. `reason` is one of this crate's fixed
    /// messages, which need no escaping.
    fn error(&mut self, out: &mut Vec<u8>, reason: &str) {
        self.failed += 1;
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"error\":\"");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\",\"line\":");
        out.extend_from_slice(num.format(self.line).as_bytes());
        out.extend_from_slice(b"}\n");
    }
}
