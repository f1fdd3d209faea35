//! Striped ids: with `S` stripes, stripe `s` hands out `s+1, s+1+S, s+1+2S, …`, so an id names
//! its stripe and its slot in that stripe's arena. Pure functions; no shared state.
//!
//! In a cluster of `N` nodes ([`Layout`]), node `K` with `W` workers writes the global stripes
//! `g = w·N + K` of an epoch of `N·W` stripes: every id it hands out in an epoch of base `B` is
//! `≡ B + 1 + K (mod N)`, whatever `W` each node has, so [`owner`] needs only `(B, N)`.

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

/// Most nodes in a cluster (`--nodes`).
pub const MAX_NODES: u32 = 64;

/// Which stripes of an epoch this process writes: node `node` of `nodes`, one stripe per
/// worker. `nodes = 1, node = 0` is a single server: stripe index = worker index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub nodes: u32,
    pub node: u32,
    pub workers: u32,
}

impl Layout {
    /// One server alone with `workers` stripes.
    pub const fn single(workers: u32) -> Layout {
        Layout {
            nodes: 1,
            node: 0,
            workers,
        }
    }

    /// Stripes of an epoch of this layout: `nodes · workers`.
    pub const fn stripes(&self) -> u32 {
        self.nodes * self.workers
    }

    /// The global stripe worker `w` writes.
    pub const fn global_stripe(&self, w: u32) -> u32 {
        w * self.nodes + self.node
    }

    /// Whether global stripe `g` is this node's.
    pub const fn owns(&self, g: u32) -> bool {
        g % self.nodes == self.node
    }
}

/// The node that handed out `id` in a cluster epoch of base `base` and `nodes` nodes (HAProxy:
/// `path,field(4,/),sub(base+1),mod(nodes)`); `None` for an id not past `base`.
pub const fn owner(id: u64, base: u64, nodes: u32) -> Option<u32> {
    if id <= base || nodes == 0 {
        return None;
    }
    Some(((id - base - 1) % nodes as u64) as u32)
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

    #[test]
    fn layout_example() {
        // Node 1 of 3 with 2 workers: global stripes 1 and 4 of 6.
        let l = Layout {
            nodes: 3,
            node: 1,
            workers: 2,
        };
        assert_eq!(l.stripes(), 6);
        assert_eq!([0, 1].map(|w| l.global_stripe(w)), [1, 4]);
        assert_eq!((0..6).filter(|&g| l.owns(g)).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(owner(100 + id_of(4, 7, 6), 100, 3), Some(1));
        assert_eq!(owner(100, 100, 3), None);
        assert_eq!(Layout::single(4).global_stripe(3), 3);
    }

    proptest! {
        /// Nodes with different worker counts, in one cluster epoch: ids never collide and
        /// each names its node.
        #[test]
        fn nodes_never_collide(
            nodes in 1u32..=MAX_NODES,
            workers in proptest::collection::vec(1u32..16, 2),
            picks in proptest::collection::vec((0u32..64, 0u32..16, 0u64..1000), 2),
            base in 0u64..1 << 40,
        ) {
            let ids: Vec<(u64, (u32, u32, u64))> = picks
                .iter()
                .zip(&workers)
                .map(|(&(k, w, slot), &ws)| {
                    let l = Layout { nodes, node: k % nodes, workers: ws };
                    let g = l.global_stripe(w % ws);
                    prop_assert!(l.owns(g) && g < l.stripes());
                    let id = base + id_of(g, slot, l.stripes());
                    prop_assert_eq!(owner(id, base, nodes), Some(l.node));
                    Ok((id, (l.node, w % ws, slot)))
                })
                .collect::<Result<_, TestCaseError>>()?;
            let (a, b) = (ids[0], ids[1]);
            if a.1 != b.1 && (a.1.0 != b.1.0 || workers[0] == workers[1]) {
                prop_assert_ne!(a.0, b.0);
            }
        }

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
