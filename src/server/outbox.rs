//! The outbox: the one place a worker's answers wait for the journal. Connections append their
//! answers to [`Outbox::buf`]; the worker files each connection's part with [`Outbox::hold`] and
//! the journal batch it depends on (0: none). [`Outbox::take_ready`] hands back only parts whose
//! batch the journal has reported written ([`Outbox::set_durable`]), in the order they were
//! filed. Nothing else in the worker sends answers, so no path (pipelined, re-driven, draining,
//! timing out) can send a `201` before its record is written.
//!
//! Order per connection: a connection's later parts never wait for an earlier batch than its
//! earlier parts (the worker files `max(batch it stored into, its previous wait)`), so a part
//! that is ready never overtakes one that is not.
#![forbid(unsafe_code)]

/// One connection's answers from one drive, and the batch they wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub slot: usize,
    pub generation: u32,
    pub wait: u64,
    start: usize,
    end: usize,
}

/// The capacity kept once the outbox is empty: above what a loop turn's answers take
/// (`TURN_OUT_MAX` and the parts left over), below a long bulk answer.
const KEEP: usize = 8 << 20;

#[derive(Debug, Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    /// Filed parts not yet taken, in filing order.
    waiting: Vec<Held>,
    /// The highest batch the journal has written.
    durable: u64,
    /// Bytes in `waiting` parts (the rest of `bytes` is taken or not yet filed).
    live: usize,
}

impl Outbox {
    pub fn with_capacity(n: usize) -> Self {
        Outbox {
            bytes: Vec::with_capacity(n),
            ..Outbox::default()
        }
    }

    /// Where connections append answers.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Drop what was appended since `start` (a connection that closes at once).
    pub fn discard(&mut self, start: usize) {
        self.bytes.truncate(start);
    }

    /// File the answers appended since `start` for connection `(slot, generation)`; they may
    /// leave once batch `wait` is written (0: at once).
    pub fn hold(&mut self, slot: usize, generation: u32, wait: u64, start: usize) {
        let end = self.bytes.len();
        self.live += end - start;
        self.waiting.push(Held {
            slot,
            generation,
            wait,
            start,
            end,
        });
    }

    /// The journal has written every batch up to `seq`.
    pub fn set_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
    }

    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Move the parts that may leave now into `ready` (in filing order). Their bytes stay
    /// readable through [`Outbox::bytes`] until [`Outbox::reclaim`].
    pub fn take_ready(&mut self, ready: &mut Vec<Held>) {
        let durable = self.durable;
        let live = &mut self.live;
        self.waiting.retain(|h| {
            if h.wait <= durable {
                *live -= h.end - h.start;
                ready.push(*h);
                false
            } else {
                true
            }
        });
    }

    pub fn bytes(&self, h: &Held) -> &[u8] {
        &self.bytes[h.start..h.end]
    }

    /// After the ready parts were sent: free their space (all of it when nothing waits; else
    /// move the waiting parts down once the holes outgrow them).
    pub fn reclaim(&mut self) {
        if self.waiting.is_empty() {
            self.bytes.clear();
            // A bulk's answer is one part of up to twice its body: not kept for good.
            self.bytes.shrink_to(KEEP);
            return;
        }
        if self.bytes.len() < 2 * self.live + (64 << 10) {
            return;
        }
        let mut to = 0;
        for h in &mut self.waiting {
            self.bytes.copy_within(h.start..h.end, to);
            h.end = to + (h.end - h.start);
            h.start = to;
            to = h.end;
        }
        self.bytes.truncate(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(o: &mut Outbox, slot: usize, wait: u64, text: &[u8]) {
        let start = o.len();
        o.buf().extend_from_slice(text);
        o.hold(slot, 0, wait, start);
    }

    fn ready(o: &mut Outbox) -> Vec<(usize, Vec<u8>)> {
        let mut r = Vec::new();
        o.take_ready(&mut r);
        let out = r.iter().map(|h| (h.slot, o.bytes(h).to_vec())).collect();
        o.reclaim();
        out
    }

    #[test]
    fn nothing_leaves_before_its_batch_is_written() {
        let mut o = Outbox::default();
        part(&mut o, 1, 1, b"201 a");
        part(&mut o, 2, 0, b"200 health");
        part(&mut o, 1, 2, b"201 b");
        assert_eq!(ready(&mut o), vec![(2, b"200 health".to_vec())]);
        assert_eq!(
            ready(&mut o),
            vec![],
            "nothing more until the journal says so"
        );
        o.set_durable(1);
        assert_eq!(ready(&mut o), vec![(1, b"201 a".to_vec())]);
        o.set_durable(2);
        assert_eq!(ready(&mut o), vec![(1, b"201 b".to_vec())]);
        assert!(o.is_empty());
        assert_eq!(o.len(), 0, "space reclaimed once nothing waits");
    }

    #[test]
    fn waiting_parts_survive_compaction() {
        let mut o = Outbox::default();
        part(&mut o, 7, 5, b"held");
        for i in 0..2000 {
            part(&mut o, i, 0, &[b'x'; 100]);
            assert_eq!(ready(&mut o).len(), 1);
        }
        assert!(o.len() < 70 << 10, "holes are reclaimed: {}", o.len());
        o.set_durable(5);
        assert_eq!(ready(&mut o), vec![(7, b"held".to_vec())]);
    }
}
