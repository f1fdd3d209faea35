//! `CLUSTER`: which node of which cluster epoch a data directory belongs to.
//!
//! A node's ids depend on three numbers given at start (`--cluster-base`, `--nodes`,
//! `--node`); the segments alone cannot always tell them (a node of one worker looks the same
//! as a server alone, and a new epoch may not have a segment yet). So recovery keeps them here
//! and checks every start against them: a node restarted with another identity, or an old
//! `--cluster-base`, is refused before it hands out an id.
//!
//! The file is text, so an operator can read it:
//!
//! ```text
//! usaged cluster 1
//! base 4295048758
//! nodes 3
//! node 2
//! crc32c 1c291ca3
//! ```
//!
//! `crc32c` covers every byte before its line. Written durably (temporary file, synced,
//! renamed, directory synced) before the start that changed it hands out an id.

use std::fs;
use std::io;
use std::path::Path;

use super::ids::{MAX_ID, MAX_NODES};
use super::journal;

/// The file's name in the data directory.
pub const FILE: &str = "CLUSTER";
const MAGIC: &str = "usaged cluster 1\n";

/// A node's place: ids above `base` belong to node `(id − base − 1) mod nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub base: u64,
    pub nodes: u32,
    pub node: u32,
}

impl Identity {
    pub fn encode(&self) -> String {
        let body = format!(
            "{MAGIC}base {}\nnodes {}\nnode {}\n",
            self.base, self.nodes, self.node
        );
        let crc = crc32c::crc32c(body.as_bytes());
        format!("{body}crc32c {crc:08x}\n")
    }

    /// Parse and bound a file's bytes: base below the id space's end, `1 ≤ nodes ≤
    /// MAX_NODES`, `node < nodes`, checksum right.
    pub fn decode(b: &[u8]) -> Result<Identity, String> {
        let text = std::str::from_utf8(b).map_err(|_| "not text".to_string())?;
        let body_len = text
            .rfind("crc32c ")
            .ok_or_else(|| "no crc32c line".to_string())?;
        let (body, crc_line) = text.split_at(body_len);
        let crc = crc_line
            .strip_prefix("crc32c ")
            .and_then(|s| s.strip_suffix('\n'))
            .and_then(|s| u32::from_str_radix(s, 16).ok())
            .ok_or_else(|| "bad crc32c line".to_string())?;
        if crc32c::crc32c(body.as_bytes()) != crc {
            return Err("checksum mismatch".into());
        }
        let rest = body
            .strip_prefix(MAGIC)
            .ok_or_else(|| "not a usaged cluster file of version 1".to_string())?;
        let mut fields = [None; 3];
        for line in rest.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            let at = ["base", "nodes", "node"].iter().position(|&n| n == k);
            let (Some(at), Ok(v)) = (at, v.parse::<u64>()) else {
                return Err(format!("bad line {line:?}"));
            };
            fields[at] = Some(v);
        }
        let [Some(base), Some(nodes), Some(node)] = fields else {
            return Err("base, nodes or node missing".into());
        };
        if base >= MAX_ID || nodes == 0 || nodes > u64::from(MAX_NODES) || node >= nodes {
            return Err(format!(
                "out of bounds: base {base}, nodes {nodes}, node {node}"
            ));
        }
        Ok(Identity {
            base,
            nodes: nodes as u32,
            node: node as u32,
        })
    }

    /// The identity in `dir`: `None` if there is no file; a file that cannot be read or
    /// trusted is an error (the start is refused, naming the file).
    pub fn load(dir: &Path) -> Result<Option<Identity>, String> {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(b) => Identity::decode(&b)
                .map(Some)
                .map_err(|e| format!("{} is damaged ({e}): restore it or remove it and start with --node, --nodes and --cluster-base as this node ran", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Write the identity into `dir` durably: temporary file, synced, renamed, directory
    /// synced.
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        journal::store_file(dir, FILE, self.encode().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let id = Identity {
            base: 4_295_048_758,
            nodes: 3,
            node: 2,
        };
        let text = id.encode();
        assert_eq!(Identity::decode(text.as_bytes()), Ok(id));
        // Every single flipped byte is caught.
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] ^= 0x04;
            assert!(Identity::decode(&b).is_err(), "byte {i} flipped");
        }
        assert!(Identity::decode(&text.as_bytes()[..text.len() - 1]).is_err());
        assert!(Identity::decode(b"").is_err());
    }

    #[test]
    fn numbers_out_of_bounds_are_refused_even_with_a_good_checksum() {
        let with = |base: u64, nodes: u64, node: u64| {
            let body = format!("{MAGIC}base {base}\nnodes {nodes}\nnode {node}\n");
            let crc = crc32c::crc32c(body.as_bytes());
            Identity::decode(format!("{body}crc32c {crc:08x}\n").as_bytes())
        };
        assert!(with(7, 2, 1).is_ok());
        assert!(with(MAX_ID / 2, 2, 1).is_ok());
        assert!(with(MAX_ID, 2, 1).is_err());
        assert!(with(7, 0, 0).is_err());
        assert!(with(7, u64::from(MAX_NODES) + 1, 0).is_err());
        assert!(with(7, 2, 2).is_err());
        assert!(with(7, 1 << 33, 1).is_err());
    }

    #[test]
    fn stored_and_loaded() {
        let dir = std::env::temp_dir().join(format!("usaged-identity-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(Identity::load(&dir), Ok(None));
        let id = Identity {
            base: 0,
            nodes: 2,
            node: 1,
        };
        id.store(&dir).unwrap();
        assert_eq!(Identity::load(&dir), Ok(Some(id)));
        fs::write(dir.join(FILE), b"usaged cluster 1\nbase 0\n").unwrap();
        let e = Identity::load(&dir).unwrap_err();
        assert!(e.contains("CLUSTER is damaged"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
