//! Answering the requests in a connection's input, in order: [`Conn::process`] and its steps
//! (admit → head → body → respond).
#![forbid(unsafe_code)]

use std::io::Write;

use super::{Conn, Ctx, OUT_HIGH, Parked, Pending, Stop, TURN_OUT_MAX, answer, refuse};
use crate::access_log::Line;
use crate::app::{self, Answer, Responded, Route, router};
use crate::http::chunked::{Chunked, Progress};
use crate::http::request::{Framing, Head, Parsed, parse_head_bulk};
use crate::http::response;
use crate::http::status::Reject;
use crate::metrics;
use crate::store::cold::ColdRead;

/// The body of the request at `start`: `len` decoded bytes after its head, having taken
/// `consumed` bytes of input.
struct Body {
    len: usize,
    consumed: usize,
}

impl Conn {
    /// Answer every complete request in the buffer, in order.
    pub(super) fn process(&mut self, ctx: &mut Ctx<'_>) -> Stop {
        loop {
            if let Some(pk) = self.parked {
                let Some(r) = self.cold_result.take() else {
                    return Stop::Parked;
                };
                self.respond_cold(pk, &r, ctx);
                continue;
            }
            if self.is_closing() {
                return Stop::Idle;
            }
            if self.input.is_empty() {
                self.input.reset();
                return Stop::Idle;
            }
            if output_full(ctx, self.held_bytes) {
                return Stop::OutputFull;
            }
            let p = match self.body() {
                Some(p) => p,
                None => match self.next_head(ctx) {
                    Some(p) => p,
                    None => return Stop::Idle,
                },
            };
            if p.route == Ok(Route::CreateBulk) {
                if self.bulk_drive >= super::bulk::BULK_DRIVE {
                    return Stop::Yield;
                }
                if self.bulk(p, ctx) {
                    continue;
                }
                return Stop::Idle;
            }
            let Some(body) = self.framed_body(p, ctx) else {
                return Stop::Idle;
            };
            self.respond(p, body, ctx);
        }
    }

    /// The head of the next request, parsed and routed; `None` when it is not all here yet,
    /// or the connection is refused (after a drain began, or a malformed head).
    fn next_head(&mut self, ctx: &mut Ctx<'_>) -> Option<Pending> {
        if self.input.past_admitted() {
            let r = Reject::Unavailable("server is shutting down");
            refuse(r, None, metrics::ROUTE_OTHER, ctx);
            self.close_after();
            return None;
        }
        let req = self.input.unread();
        let l = &ctx.limits;
        match parse_head_bulk(req, l.max_header, l.max_body, l.max_bulk) {
            Parsed::Partial => None,
            Parsed::Reject(r) => {
                refuse(r, None, metrics::ROUTE_OTHER, ctx);
                self.close_after();
                None
            }
            Parsed::Head(head) => Some(Pending {
                route: router::route(&head, &req[head.path.0..head.path.1]),
                head,
                chunked: Chunked::default(),
                continue_sent: false,
                since_ms: ctx.now_ms,
            }),
        }
    }

    /// The request's body if all of it is here (decoded in place when chunked); else the
    /// request waits for it, or was refused.
    fn framed_body(&mut self, mut p: Pending, ctx: &mut Ctx<'_>) -> Option<Body> {
        let in_body = self.input.len() - p.head.len;
        match p.head.framing {
            Framing::None => Some(Body {
                len: 0,
                consumed: 0,
            }),
            Framing::Length(n) if in_body >= n => Some(Body {
                len: n,
                consumed: n,
            }),
            Framing::Length(n) => {
                self.input.reserve(p.head.len + n);
                self.await_body(p, ctx);
                None
            }
            Framing::Chunked => {
                let body = &mut self.input.unread_mut()[p.head.len..];
                match p.chunked.advance(body, ctx.limits.max_body) {
                    Ok(Progress::Done { decoded, consumed }) => Some(Body {
                        len: decoded,
                        consumed,
                    }),
                    Ok(Progress::NeedMore) => {
                        let freed = p.chunked.compact(body);
                        self.input.cut(freed);
                        self.await_body(p, ctx);
                        None
                    }
                    Err(e) => {
                        let r = Reject::from(e);
                        refuse(r, Some(&p.head), Route::label(&p.route), ctx);
                        self.close_after();
                        None
                    }
                }
            }
        }
    }

    /// Answer the request at `start`, whose body is all here, and move past it; or park it
    /// when its usage must be read from disk.
    fn respond(&mut self, p: Pending, body: Body, ctx: &mut Ctx<'_>) {
        self.set_body(None);
        let head_len = p.head.len;
        let req = self.input.unread_mut();
        let body_bytes = &mut req[head_len..head_len + body.len];
        let mut a = Answer {
            out: ctx.out,
            date: ctx.date,
            force_close: ctx.draining,
        };
        let out_before = a.out.len();
        let consumed = head_len + body.consumed;
        match ctx.app.respond(p.route, &p.head, body_bytes, &mut a) {
            Responded::Done { close, status } => {
                self.answered(&p, consumed, (close, status), out_before, ctx);
            }
            Responded::Cold(ask) => {
                self.tickets = self.tickets.wrapping_add(1);
                self.parked = Some(Parked {
                    p,
                    consumed,
                    ask,
                    ticket: self.tickets,
                    since_ms: ctx.now_ms,
                    asked: false,
                });
            }
        }
    }

    /// Answer the parked request with its cold read, and move past it.
    fn respond_cold(&mut self, pk: Parked, r: &ColdRead, ctx: &mut Ctx<'_>) {
        self.parked = None;
        let mut a = Answer {
            out: ctx.out,
            date: ctx.date,
            force_close: ctx.draining,
        };
        let out_before = a.out.len();
        let done = ctx.app.respond_cold(r, pk.ask.id, &pk.p.head, &mut a);
        self.answered(&pk.p, pk.consumed, done, out_before, ctx);
    }

    /// The parked request's read did not come back in time: `503` with `Retry-After`, and
    /// the connection goes on with what follows it (driven again by the worker).
    pub(super) fn cold_timed_out(&mut self, ctx: &mut Ctx<'_>) {
        let Some(pk) = self.parked.take() else {
            return;
        };
        self.cold_result = None;
        let r = Reject::Busy("reading the usage from disk timed out; retry later");
        let mut a = answer(ctx);
        let out_before = a.out.len();
        let close = app::reject(r, Some(&pk.p.head), &mut a);
        self.answered(&pk.p, pk.consumed, (close, r.status()), out_before, ctx);
        self.more = true;
    }

    /// The request at `start` (`consumed` bytes) was answered `(close, status)` from
    /// `out_before` on: count and log it, and move past it.
    pub(super) fn answered(
        &mut self,
        p: &Pending,
        consumed: usize,
        (close, status): (bool, u16),
        out_before: usize,
        ctx: &mut Ctx<'_>,
    ) {
        ctx.metrics.request(Route::label(&p.route), status);
        if ctx.access.is_some() {
            self.log(ctx, &p.head, status, out_before);
        }
        if close {
            self.close_after();
        }
        self.input.consume(consumed);
        // Server time: from the read that brought the request's first byte to now (taken
        // once per readiness, in `drive`).
        self.clock.answered(!self.input.is_empty());
        self.head_since_ms = None;
        self.active_ms = ctx.now_ms;
    }

    /// The access-log line of the request at `start` (only with `--access-log`).
    #[cold]
    fn log(&self, ctx: &mut Ctx<'_>, head: &Head, status: u16, out_before: usize) {
        let req = self.input.request_onwards();
        let method = &req[..req.iter().position(|&b| b == b' ').unwrap_or(0)];
        let mut client = [0u8; 48];
        let client_len = {
            let mut w = &mut client[..];
            let _ = match self.peer {
                Some(a) => write!(w, "{a}"),
                None => write!(w, "-"),
            };
            48 - w.len()
        };
        let line = Line {
            time: ctx.log_time,
            client: &client[..client_len],
            method,
            path: &req[head.path.0..head.path.1],
            status,
            bytes: ctx.out.len() - out_before,
            micros: self.clock.request_micros(),
            id: (status == 201).then_some(ctx.app.last_created),
        };
        if let Some(log) = ctx.access.as_deref_mut() {
            log.log(&line);
        }
    }

    /// The head is in, the body is not: remember where we are, and answer `Expect:
    /// 100-continue` (with `100`, or with the final error at once, closing since the body
    /// will not be read).
    pub(super) fn await_body(&mut self, mut p: Pending, ctx: &mut Ctx<'_>) {
        if p.head.expect_continue && !p.continue_sent {
            p.continue_sent = true;
            match p.route {
                Ok(_) => ctx.out.extend_from_slice(response::CONTINUE),
                Err(r) => {
                    let mut head = p.head;
                    head.keep_alive = false;
                    refuse(r, Some(&head), Route::label(&p.route), ctx);
                    self.close_after();
                }
            }
        }
        self.set_body(Some(p));
    }
}

/// Enough answers are queued, for this connection (in this drive, or held for the journal)
/// or for the whole loop turn: write them before answering more.
fn output_full(ctx: &Ctx<'_>, held_bytes: usize) -> bool {
    ctx.out.len() - ctx.out_start >= OUT_HIGH
        || ctx.out.len().saturating_sub(ctx.turn_start) >= TURN_OUT_MAX
        || held_bytes >= OUT_HIGH
}
