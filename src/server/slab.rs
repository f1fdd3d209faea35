//! Connection slots: token ↔ connection, with a generation so that an event, a timer entry or
//! an outbox part for a connection closed earlier (whose slot was reused) is recognised and
//! dropped (nginx's "instance" bit). Freed slots are reused, most recently freed first.
#![forbid(unsafe_code)]

use mio::Token;

/// Generations stay below 2^31, so a token (generation in the high 32 bits, index in the low
/// 32) never reaches the worker's reserved tokens at the top of the range.
const GENERATION_MASK: u32 = 0x7fff_ffff;

/// One slot; `generation` goes into the token and changes each time the slot is vacated.
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// Vacant slots, reused last-in first-out.
    free: Vec<usize>,
    /// Occupied slots.
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

/// Token layout: generation in the high 32 bits, slot index in the low 32.
pub fn token(index: usize, generation: u32) -> Token {
    Token((generation as usize) << 32 | index)
}

impl<T> Slab<T> {
    /// Occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the highest slot index (for a walk over every slot).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// A vacant slot for a new value, and the token its value will have. Fill it with
    /// [`Slab::fill`], or hand it back with [`Slab::unreserve`].
    pub fn reserve(&mut self) -> (usize, Token) {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 0,
                value: None,
            });
            self.slots.len() - 1
        });
        (index, token(index, self.slots[index].generation))
    }

    /// A reserved slot that will not be filled after all.
    pub fn unreserve(&mut self, index: usize) {
        self.free.push(index);
    }

    /// Put `value` into the slot [`Slab::reserve`] gave.
    pub fn fill(&mut self, index: usize, value: T) -> &mut T {
        self.len += 1;
        self.slots[index].value.insert(value)
    }

    /// Take the value out; the slot's generation moves on, so its old token, timer entries and
    /// outbox parts no longer reach whatever fills the slot next.
    pub fn remove(&mut self, index: usize) -> Option<T> {
        let slot = &mut self.slots[index];
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1) & GENERATION_MASK;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// The slot's current generation.
    pub fn generation(&self, index: usize) -> u32 {
        self.slots[index].generation
    }

    /// The value in slot `index` if it is still the one of `generation`.
    pub fn get_mut(&mut self, index: usize, generation: u32) -> Option<&mut T> {
        self.slots
            .get_mut(index)
            .filter(|s| s.generation == generation)?
            .value
            .as_mut()
    }

    /// The value `t` was handed out for, with its slot index; `None` if it was removed since.
    pub fn by_token(&mut self, t: Token) -> Option<(usize, &mut T)> {
        let index = t.0 & 0xffff_ffff;
        let generation = (t.0 >> 32) as u32;
        self.get_mut(index, generation).map(|v| (index, v))
    }

    /// The value in slot `index`, whatever its generation (a walk over every slot).
    pub fn at_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slots[index].value.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_does_not_answer_to_its_old_token() {
        let mut s = Slab::default();
        let (a, ta) = s.reserve();
        s.fill(a, "a");
        assert_eq!(s.by_token(ta), Some((a, &mut "a")));
        assert_eq!(s.remove(a), Some("a"));
        let (b, tb) = s.reserve();
        s.fill(b, "b");
        assert_eq!(b, a, "the freed slot is reused");
        assert_ne!(tb, ta);
        assert_eq!(s.by_token(ta), None, "a stale event is dropped");
        assert_eq!(s.get_mut(a, s.generation(a)), Some(&mut "b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn generations_wrap_below_the_reserved_tokens() {
        let mut s = Slab::default();
        let (i, _) = s.reserve();
        s.slots[i].generation = GENERATION_MASK;
        s.fill(i, ());
        s.remove(i);
        assert_eq!(s.generation(i), 0);
        let (j, t) = s.reserve();
        assert_eq!((j, t), (i, token(i, 0)));
        assert!(token(u32::MAX as usize, GENERATION_MASK).0 < usize::MAX - 2);
    }

    #[test]
    fn an_unfilled_reservation_is_reused() {
        let mut s: Slab<()> = Slab::default();
        let (i, t) = s.reserve();
        s.unreserve(i);
        assert_eq!(s.reserve(), (i, t));
        assert_eq!(s.len(), 0);
    }
}
