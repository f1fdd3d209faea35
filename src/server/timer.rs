//! Coarse deadlines for connections (header, body, idle, write and linger timeouts), costing
//! nothing per request: a connection's deadline is a plain number it overwrites as its state
//! changes, and this hashed wheel only holds *where to look*. When a bucket comes due, each
//! entry is checked against the connection's current deadline: expired ones are returned, later
//! ones go back into the bucket of their real deadline. So moving a deadline later never touches
//! the wheel (nginx's "don't re-arm a deadline that barely moved", taken all the way); moving it
//! earlier files a new entry and leaves the old one stale (its `filed_ms` no longer matches the
//! connection's, so it is dropped when its bucket comes).
#![forbid(unsafe_code)]

/// Bucket width in milliseconds.
pub const TICK_MS: u64 = 100;
/// Buckets; deadlines further than `BUCKETS * TICK_MS` ahead wrap around and are re-filed.
const BUCKETS: usize = 512;

/// An entry: which connection slot, the slot's generation, and the deadline it was filed
/// under (the connection remembers the same number for its one live entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub slot: u32,
    pub generation: u32,
    pub filed_ms: u64,
}

pub struct Wheel {
    buckets: Vec<Vec<Entry>>,
    /// The next tick to process: every bucket before it has been drained.
    next_tick: u64,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            next_tick: 0,
            len: 0,
        }
    }
}

impl Wheel {
    /// File `e` under `e.filed_ms` (a deadline in the past fires on the next advance).
    pub fn insert(&mut self, e: Entry) {
        let tick = (e.filed_ms / TICK_MS).max(self.next_tick);
        self.buckets[tick as usize % BUCKETS].push(e);
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Milliseconds from `now_ms` until the next bucket is due (for the poll timeout).
    pub fn next_due_in(&self, now_ms: u64) -> Option<u64> {
        (!self.is_empty()).then(|| (self.next_tick * TICK_MS).saturating_sub(now_ms))
    }

    /// Process every bucket up to `now_ms`. For each entry, `deadline(e)` gives the
    /// connection's current deadline (`None`: gone, or a stale entry: dropped). Entries whose
    /// deadline has passed are pushed to `expired`; others are re-filed under their deadline
    /// (the caller's closure records that as the connection's `filed_ms`).
    pub fn advance(
        &mut self,
        now_ms: u64,
        mut deadline: impl FnMut(Entry) -> Option<u64>,
        expired: &mut Vec<Entry>,
    ) {
        let now_tick = now_ms / TICK_MS;
        while self.next_tick <= now_tick {
            let b = self.next_tick as usize % BUCKETS;
            self.next_tick += 1;
            if self.buckets[b].is_empty() {
                continue;
            }
            let mut due = std::mem::take(&mut self.buckets[b]);
            self.len -= due.len();
            for e in due.drain(..) {
                match deadline(e) {
                    None => {}
                    Some(d) if d <= now_ms => expired.push(e),
                    Some(d) => self.insert(Entry { filed_ms: d, ..e }),
                }
            }
            // Give the (now empty) allocation back so the bucket keeps its capacity.
            if self.buckets[b].is_empty() {
                self.buckets[b] = due;
            } else {
                self.buckets[b].append(&mut due);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn fires_at_the_current_deadline_not_the_filed_one() {
        let mut w = Wheel::default();
        let mut deadlines: HashMap<u32, u64> = HashMap::new();
        for (slot, d) in [(1, 250), (2, 1_000), (3, 120_000)] {
            deadlines.insert(slot, d);
            w.insert(Entry {
                slot,
                generation: 0,
                filed_ms: d,
            });
        }
        // Slot 1 moves its deadline without touching the wheel; slot 2 goes away.
        deadlines.insert(1, 5_000);
        deadlines.remove(&2);
        let mut expired = Vec::new();
        for now in (0..=200_000).step_by(50) {
            w.advance(now, |x| deadlines.get(&x.slot).copied(), &mut expired);
            for x in expired.drain(..) {
                let d = deadlines.remove(&x.slot).unwrap();
                assert!(
                    d <= now && now < d + TICK_MS + 50,
                    "slot {} due {d} fired at {now}",
                    x.slot
                );
            }
        }
        assert!(deadlines.is_empty(), "everything fired: {deadlines:?}");
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_at_the_next_tick() {
        let mut w = Wheel::default();
        let mut expired = Vec::new();
        w.advance(10_000, |_| None, &mut expired);
        let e = Entry {
            slot: 7,
            generation: 1,
            filed_ms: 500,
        };
        w.insert(e);
        assert_eq!(w.next_due_in(10_000), Some(100));
        w.advance(10_050, |_| Some(500), &mut expired);
        assert!(expired.is_empty(), "not before its bucket is due");
        w.advance(10_100, |_| Some(500), &mut expired);
        assert_eq!(expired, vec![e]);
    }
}
