//! A bulk (`POST /api/usages` as `application/x-ndjson`) streamed through the connection:
//! while its body arrives, every complete line in the input is stored and answered into the
//! connection's answer buffer ([`app::bulk::Lines`]) and dropped from the input, which keeps
//! the request's head and at most one partial line. Once the body has ended, the `200` with
//! every result line goes to the outbox like any answer.
//!
//! Journaled before the answer: each drive that stores lines files a part (empty while the
//! body streams) waiting for the batch it stored into, and a connection's later parts never
//! wait for less (`settle` in `worker.rs`), so the answer waits for the batch holding the
//! bulk's last stored usage, and so for every earlier one.
#![forbid(unsafe_code)]

use super::{Conn, Ctx, Pending, refuse};
use crate::app::keyed::KeyedBulk;
use crate::app::{self, Route, bulk::Lines};
use crate::http::chunked::Progress;
use crate::http::request::Framing;
use crate::http::response::{self, Extra, Persist};
use crate::http::status::Reject;

/// The answer buffer's capacity kept for the connection's next bulk; a larger one (a long
/// answer) is freed once the answer is in the outbox.
const KEEP_OUT: usize = 64 << 10;

/// Body bytes one drive of a connection offers to its bulk before it yields: the rest waits
/// in the input and the socket, and the connection is driven again once the part it filed is
/// released (after the batch holding its lines is written), so the other connections of the
/// worker are served meanwhile and one bulk adds at most about this much (plus one read
/// buffer) to each journal batch.
pub(super) const BULK_DRIVE: usize = 1 << 20;

/// Where a bulk is between reads.
pub(super) struct Bulk {
    lines: Lines,
    /// Body bytes taken so far (a `Content-Length` body).
    taken: usize,
    /// Its `Idempotency-Key`'s state, if it has one.
    keyed: Option<Box<KeyedBulk>>,
}

impl Conn {
    /// Go on with the bulk `p`: take the complete lines buffered, and answer once its body
    /// has ended. `true`: answered (or refused); the connection goes on with what follows.
    pub(super) fn bulk(&mut self, mut p: Pending, ctx: &mut Ctx<'_>) -> bool {
        let cap = app::bulk::answer_cap(ctx.limits.max_bulk);
        let mut b = self.bulk.take().unwrap_or_else(|| {
            self.bulk_out.clear();
            let keyed = KeyedBulk::start(ctx.app, p.head.key, ctx.date.secs());
            let mut lines = Lines::new(cap);
            // Refused at the head: the body is read and dropped.
            lines.stopped = keyed.as_ref().is_some_and(|k| k.verdict.is_some());
            Bulk {
                lines,
                taken: 0,
                keyed,
            }
        });
        let batch = ctx.app.filling;
        let head_len = p.head.len;
        self.bulk_drive += self.input.len() - head_len;
        let w = &mut ctx.app.writer;
        let ended = match p.head.framing {
            Framing::Length(n) => {
                let region = &mut self.input.unread_mut()[head_len..];
                let avail = region.len().min(n - b.taken);
                let last = b.taken + avail == n;
                let kb = b.keyed.as_deref_mut().map(|k| (k, batch));
                let k = b
                    .lines
                    .take(&mut region[..avail], last, w, &mut self.bulk_out, kb);
                if last {
                    Some(head_len + avail)
                } else {
                    region.copy_within(k.., 0);
                    self.input.cut(k);
                    b.taken += k;
                    None
                }
            }
            Framing::Chunked => {
                let region = &mut self.input.unread_mut()[head_len..];
                match p.chunked.advance(region, ctx.limits.max_bulk) {
                    Ok(Progress::Done { decoded, consumed }) => {
                        let kb = b.keyed.as_deref_mut().map(|k| (k, batch));
                        b.lines
                            .take(&mut region[..decoded], true, w, &mut self.bulk_out, kb);
                        Some(head_len + consumed)
                    }
                    Ok(Progress::NeedMore) => {
                        let freed = p.chunked.compact(region);
                        self.input.cut(freed);
                        let region = &mut self.input.unread_mut()[head_len..];
                        let decoded = p.chunked.decoded();
                        let kb = b.keyed.as_deref_mut().map(|k| (k, batch));
                        let k =
                            b.lines
                                .take(&mut region[..decoded], false, w, &mut self.bulk_out, kb);
                        let k = p.chunked.drop_front(region, k);
                        self.input.cut(k);
                        None
                    }
                    Err(e) => {
                        let r = Reject::from(e);
                        refuse(r, Some(&p.head), Route::label(&p.route), ctx);
                        self.close_after();
                        self.bulk_reset();
                        return true;
                    }
                }
            }
            // The router answers `411` to a post without a body.
            Framing::None => Some(head_len),
        };
        match ended {
            None => {
                self.bulk = Some(b);
                self.await_body(p, ctx);
                false
            }
            Some(consumed) => {
                self.bulk_answer(&p, b, consumed, ctx);
                true
            }
        }
    }

    /// The bulk's body has ended (`consumed` bytes from its head on): `200` with its result
    /// lines (`503` if the store refused its first usage), and move past it.
    fn bulk_answer(&mut self, p: &Pending, b: Bulk, consumed: usize, ctx: &mut Ctx<'_>) {
        self.set_body(None);
        let out_before = ctx.out.len();
        let lines = b.lines;
        let keyed = b.keyed.map(|mut k| {
            let complete = !lines.stopped && !lines.refused;
            k.finish(complete, ctx.metrics)
        });
        let refused = match keyed {
            Some(Err(r)) => Some(r),
            _ if lines.refused => Some(Reject::Busy(app::bulk::REFUSED)),
            _ => None,
        };
        if let Some(r) = refused {
            self.bulk_reset();
            let close = app::reject(r, Some(&p.head), &mut super::answer(ctx));
            self.answered(p, consumed, (close, r.status()), out_before, ctx);
            return;
        }
        let extra = match keyed {
            Some(Ok(true)) => Extra::ReplayedBulk,
            _ => Extra::None,
        };
        let persist = app::persist(&p.head, ctx.draining);
        response::head(
            ctx.out,
            b"HTTP/1.1 200 OK\r\n",
            ctx.date.text(),
            response::NDJSON,
            self.bulk_out.len(),
            extra,
            persist,
        );
        ctx.out.extend_from_slice(&self.bulk_out);
        self.bulk_reset();
        if lines.last_id != 0 {
            ctx.app.last_created = lines.last_id;
        }
        self.answered(
            p,
            consumed,
            (persist == Persist::Close, 200),
            out_before,
            ctx,
        );
    }

    /// No bulk in progress: its answer buffer is emptied, and freed if it grew past
    /// [`KEEP_OUT`] (so a long answer is not kept for the connection's life).
    pub(super) fn bulk_reset(&mut self) {
        self.bulk = None;
        self.bulk_out.clear();
        if self.bulk_out.capacity() > KEEP_OUT {
            self.bulk_out = Vec::new();
        }
    }
}
