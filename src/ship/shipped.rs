//! What has been shipped, per stripe: the committed positions as the shipper keeps them, the
//! `SHIPPED` file it writes into the data directory after each commit, and the retention
//! [`Hold`] that reads them.
//!
//! # `SHIPPED` format (version 1)
//!
//! Little-endian: magic `USAGEDS1`, version `u32` (1), node `u32`, entry count `u32`; per
//! entry epoch base `u64`, stripes `u32`, stripe `u32`, seq `u32`, byte offset `u64`, usages
//! shipped `u64`, last id `u64`; then CRC32C `u32` of everything before it. Written whole
//! ([`journal::store_file`]): a crash leaves the old file or the new one.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::cursor::Pos;
use crate::store::journal::{self, Header};
use crate::store::retention::Hold;

/// The file's name in the data directory.
pub const FILE: &str = "SHIPPED";
const MAGIC: &[u8; 8] = b"USAGEDS1";
const VERSION: u32 = 1;
const HEAD_LEN: usize = 20;
const ENTRY_LEN: usize = 44;
/// More entries than any directory has stripes: a count past it is corruption.
const MAX_ENTRIES: usize = 1 << 20;
/// The file's table, as [`journal::SideTable`] reads it.
const TABLE: journal::SideTable = journal::SideTable {
    name: FILE,
    magic: MAGIC,
    count_at: 16,
    head_len: HEAD_LEN,
    entry_len: ENTRY_LEN,
    max_entries: MAX_ENTRIES,
};

/// One stripe's committed state, as `usaged_shipped` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shipped {
    pub pos: Pos,
    /// Usages of the stripe shipped so far.
    pub shipped: u64,
    pub last_id: u64,
}

/// Every stripe's committed state.
pub type Positions = BTreeMap<Header, Shipped>;

/// `positions` of `node` as the `SHIPPED` file's bytes.
pub fn encode(node: u32, positions: &Positions) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEAD_LEN + positions.len() * ENTRY_LEN + 4);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&node.to_le_bytes());
    b.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    for (k, s) in positions {
        b.extend_from_slice(&k.base.to_le_bytes());
        b.extend_from_slice(&k.stripes.to_le_bytes());
        b.extend_from_slice(&k.stripe.to_le_bytes());
        b.extend_from_slice(&s.pos.seq.to_le_bytes());
        b.extend_from_slice(&s.pos.offset.to_le_bytes());
        b.extend_from_slice(&s.shipped.to_le_bytes());
        b.extend_from_slice(&s.last_id.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The node and positions in a `SHIPPED` file's bytes, every number bounded before use.
pub fn decode(b: &[u8]) -> Result<(u32, Positions), String> {
    let (u32_at, u64_at) = (|at| journal::u32_le(b, at), |at| journal::u64_le(b, at));
    let mut positions = Positions::new();
    for (at, key) in TABLE.entries(b)? {
        let s = Shipped {
            pos: Pos {
                seq: u32_at(at + 16),
                offset: u64_at(at + 20),
            },
            shipped: u64_at(at + 28),
            last_id: u64_at(at + 36),
        };
        positions.insert(key, s);
    }
    Ok((u32_at(12), positions))
}

/// Write `positions` into `dir`'s `SHIPPED` durably.
pub fn store(dir: &Path, node: u32, positions: &Positions) -> io::Result<()> {
    journal::store_file(dir, FILE, &encode(node, positions))
}

/// The positions in `dir`'s `SHIPPED`; `None` if it is missing or unreadable.
pub fn load(dir: &Path) -> Option<Positions> {
    let b = fs::read(dir.join(FILE)).ok()?;
    decode(&b).ok().map(|(_, p)| p)
}

/// The committed positions of the shipper in this process, shared with its hold: `None`
/// until they are read from PostgreSQL.
pub type Shared = Arc<Mutex<Option<Positions>>>;

/// Retention's hold while a shipper runs: a sealed segment may go only once its stripe's
/// shipped position is in a later segment. Unknown positions hold everything.
pub enum ShipHold {
    /// The shipper thread of this process (`--ship-to`).
    InProcess(Shared),
    /// A shipper beside the server (`--ship-hold`): its `SHIPPED` file in this directory.
    File(PathBuf),
}

impl Hold for ShipHold {
    fn may_remove(&self, key: &Header, seq: u32, _: Range<u64>) -> bool {
        let past = |p: &Positions| p.get(key).is_some_and(|s| s.pos.seq > seq);
        match self {
            ShipHold::InProcess(shared) => shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(past),
            ShipHold::File(dir) => load(dir).is_some_and(|p| past(&p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::recover::tests::temp_dir;

    fn key(stripe: u32) -> Header {
        Header {
            stripes: 4,
            stripe,
            base: 1000,
        }
    }

    fn positions() -> Positions {
        let mut p = Positions::new();
        let s = |seq, offset, shipped, last_id| Shipped {
            pos: Pos { seq, offset },
            shipped,
            last_id,
        };
        p.insert(key(0), s(2, 4096, 77, 1301));
        p.insert(key(3), s(0, 32, 0, 0));
        p
    }

    #[test]
    fn shipped_round_trips_and_every_flipped_byte_is_refused() {
        let b = encode(5, &positions());
        assert_eq!(decode(&b), Ok((5, positions())));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i} flipped");
        }
        assert!(decode(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn the_hold_keeps_a_segment_until_the_position_is_past_it() {
        let dir = temp_dir("shipped");
        let hold = ShipHold::File(dir.clone());
        assert!(!hold.may_remove(&key(0), 0, 0..10), "no SHIPPED: hold all");
        store(&dir, 0, &positions()).unwrap();
        assert!(hold.may_remove(&key(0), 1, 0..10));
        assert!(!hold.may_remove(&key(0), 2, 0..10), "position inside seq 2");
        assert!(!hold.may_remove(&key(3), 0, 0..10));
        assert!(!hold.may_remove(&key(1), 0, 0..10), "stripe never shipped");
        fs::write(dir.join(FILE), b"garbage").unwrap();
        assert!(!hold.may_remove(&key(0), 0, 0..10), "unreadable: hold all");
        let shared: Shared = Arc::default();
        let hold = ShipHold::InProcess(Arc::clone(&shared));
        assert!(!hold.may_remove(&key(0), 0, 0..10), "not loaded: hold all");
        *shared.lock().unwrap() = Some(positions());
        assert!(hold.may_remove(&key(0), 0, 0..10));
        let _ = fs::remove_dir_all(dir);
    }
}
