//! Striped ids: with `S` stripes, stripe `s` hands out `s+1, s+1+S, s+1+2S, …`, so an id names
//! its stripe and its slot in that stripe's arena. Pure functions; no shared state.

/// Ids stay below 2^53, exact in a JavaScript number.
pub const MAX_ID: u64 = 1 << 53;

/// The id stored at `slot` of `stripe` when there are `stripes` stripes.
pub const fn id_of(stripe: u32, slot: u64, stripes: u32) -> u64 {
    slot * stripes as u64 + stripe as u64 + 1
}

/// `(stripe, slot)` of `id`; `None` for 0, which is never an id.
pub const fn locate(id: u64, stripes: u32) -> Option<(u32, u64)> {
    if id == 0 || stripes == 0 {
        return None;
    }
    let i = id - 1;
    Some(((i % stripes as u64) as u32, i / stripes as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn api_example() {
        // Four stripes: stripe 1 hands out 2, 6, 10, …
        assert_eq!([0, 1, 2].map(|slot| id_of(1, slot, 4)), [2, 6, 10]);
        assert_eq!(locate(10, 4), Some((1, 2)));
        assert_eq!(locate(0, 4), None);
    }

    proptest! {
        #[test]
        fn round_trip(stripes in 1u32..1024, stripe in 0u32..1024, slot in 0u64..1 << 40) {
            let stripe = stripe % stripes;
            let id = id_of(stripe, slot, stripes);
            prop_assert!(id >= 1);
            prop_assert_eq!(locate(id, stripes), Some((stripe, slot)));
        }

        #[test]
        fn stripes_never_collide(stripes in 1u32..64, a in 0u32..64, b in 0u32..64, sa in 0u64..1000, sb in 0u64..1000) {
            let (a, b) = (a % stripes, b % stripes);
            if (a, sa) != (b, sb) {
                prop_assert_ne!(id_of(a, sa, stripes), id_of(b, sb, stripes));
            }
        }
    }
}
