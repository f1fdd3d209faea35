//! The disk model: which changes a sync made durable, and how to undo the rest at a power
//! loss.

use super::*;

/// A file's unsynced changes: how to put it back as it was at its last sync.
pub struct Undo {
    pub durable_len: u64,
    /// Page index → the page's durable bytes (up to `durable_len`), saved before its first
    /// overwrite or truncation since the last sync.
    pub pages: HashMap<u64, Vec<u8>>,
}

pub struct State {
    pub model: Model,
    pub root: PathBuf,
    pub root_ino: u64,
    /// FUSE inode → its path under `root` now (in the attic once removed).
    pub paths: HashMap<u64, PathBuf>,
    /// Files with unsynced data.
    pub files: HashMap<u64, Undo>,
    /// Directories with unsynced entry changes → their durable entries (name → inode).
    pub dirs: HashMap<u64, BTreeMap<OsString, u64>>,
    pub handles: HashMap<u64, (u64, Arc<File>)>,
    /// Open directories' listings, taken at `opendir`.
    pub listings: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    pub next_fh: u64,
    /// After a power loss every request fails.
    pub crashed: bool,
    /// `fsync`/`fdatasync` and directory `fsync` requests since the mount, for the report.
    pub syncs: u64,
}

pub fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

impl State {
    /// The FUSE inode of a backing inode: the root is 1 (and a backing inode 1, if any, takes
    /// the root's number).
    pub fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_ino {
            1
        } else if st_ino == 1 {
            self.root_ino
        } else {
            st_ino
        }
    }

    pub fn abs(&self, ino: u64) -> io::Result<PathBuf> {
        self.paths
            .get(&ino)
            .map(|p| self.root.join(p))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    pub fn child(&self, parent: u64, name: &OsStr) -> io::Result<PathBuf> {
        if parent == 1 && name == ATTIC {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(self
            .paths
            .get(&parent)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?
            .join(name))
    }

    pub fn attr(&self, m: &fs::Metadata) -> FileAttr {
        let t = |s: i64, ns: i64| UNIX_EPOCH + Duration::new(s.max(0) as u64, ns as u32);
        FileAttr {
            ino: INodeNo(self.fuse_ino(m.ino())),
            size: m.size(),
            blocks: m.blocks(),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    /// Look `rel` up in the backing directory and remember its inode's path.
    pub fn learn(&mut self, rel: PathBuf) -> io::Result<FileAttr> {
        let m = fs::symlink_metadata(self.root.join(&rel))?;
        let attr = self.attr(&m);
        self.paths.insert(attr.ino.0, rel);
        Ok(attr)
    }

    /// About to change the entries of `dir`: remember its durable entries first.
    pub fn entries_change(&mut self, dir: u64) -> io::Result<()> {
        if self.model == Model::Eager || self.dirs.contains_key(&dir) {
            return Ok(());
        }
        let listing = self.listing(dir)?;
        self.dirs.insert(dir, listing);
        Ok(())
    }

    pub fn listing(&self, dir: u64) -> io::Result<BTreeMap<OsString, u64>> {
        let mut out = BTreeMap::new();
        for e in fs::read_dir(self.abs(dir)?)? {
            let e = e?;
            if dir == 1 && e.file_name() == ATTIC {
                continue;
            }
            out.insert(e.file_name(), self.fuse_ino(e.ino()));
        }
        Ok(out)
    }

    /// `.`, `..` and the entries of directory `dir`, for `readdir`.
    pub fn entries(&self, dir: u64) -> io::Result<Vec<(u64, FileType, OsString)>> {
        let mut out = vec![
            (dir, FileType::Directory, OsString::from(".")),
            (dir, FileType::Directory, OsString::from("..")),
        ];
        for e in fs::read_dir(self.abs(dir)?)? {
            let e = e?;
            if dir == 1 && e.file_name() == ATTIC {
                continue;
            }
            let kind = e
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            out.push((self.fuse_ino(e.ino()), kind, e.file_name()));
        }
        Ok(out)
    }

    pub fn attic(&self, ino: u64) -> PathBuf {
        Path::new(ATTIC).join(ino.to_string())
    }

    /// `rel` (inode `ino`) is about to lose this name: keep the inode reachable in the attic.
    pub fn keep(&mut self, rel: &Path, ino: u64, is_dir: bool) -> io::Result<()> {
        let attic = self.attic(ino);
        if is_dir {
            fs::rename(self.root.join(rel), self.root.join(&attic))?;
        } else if fs::symlink_metadata(self.root.join(&attic)).is_err() {
            fs::hard_link(self.root.join(rel), self.root.join(&attic))?;
        }
        self.paths.insert(ino, attic);
        Ok(())
    }

    /// About to change bytes `[from, to)` of file `ino` (open as `f`): save what is durable there.
    pub fn before_change(&mut self, ino: u64, f: &File, from: u64, to: u64) -> io::Result<()> {
        let u = match self.files.entry(ino) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(Undo {
                durable_len: f.metadata()?.len(),
                pages: HashMap::new(),
            }),
        };
        let to = to.min(u.durable_len);
        if from >= to {
            return Ok(());
        }
        for p in from / PAGE..=(to - 1) / PAGE {
            if let Entry::Vacant(v) = u.pages.entry(p) {
                let len = PAGE.min(u.durable_len - p * PAGE);
                let mut b = vec![0; len as usize];
                f.read_exact_at(&mut b, p * PAGE)?;
                v.insert(b);
            }
        }
        Ok(())
    }

    pub fn truncate(&mut self, ino: u64, f: &File, len: u64) -> io::Result<()> {
        self.before_change(ino, f, len, u64::MAX)?;
        f.set_len(len)
    }

    pub fn synced_file(&mut self, ino: u64) {
        self.syncs += 1;
        self.files.remove(&ino);
        if self.model == Model::Ext4 {
            self.dirs.clear();
        }
    }

    pub fn synced_dir(&mut self, ino: u64) {
        self.syncs += 1;
        self.dirs.remove(&ino);
        if self.model == Model::Ext4 {
            self.dirs.clear();
        }
    }

    /// The power loss: make `root` hold only what is durable. Returns a report.
    pub fn lose_power(&mut self) -> String {
        self.crashed = true;
        self.handles.clear();
        self.listings.clear();
        let mut failures = Vec::new();
        // Data first, while every touched inode still has a path (removed ones in the attic).
        let (mut files, mut bytes) = (0, 0u64);
        for (ino, u) in std::mem::take(&mut self.files) {
            let r = self.abs(ino).and_then(|p| {
                let f = OpenOptions::new().write(true).open(p)?;
                bytes += f.metadata()?.len().saturating_sub(u.durable_len);
                f.set_len(u.durable_len)?;
                for (p, b) in &u.pages {
                    f.write_all_at(b, p * PAGE)?;
                }
                Ok(())
            });
            match r {
                Ok(()) => files += 1,
                Err(e) => failures.push(format!("inode {ino}: {e}")),
            }
        }
        // Then entries: deepest directories first, so a directory that goes away goes last.
        let mut dirs: Vec<(PathBuf, BTreeMap<OsString, u64>)> = std::mem::take(&mut self.dirs)
            .into_iter()
            .filter_map(|(ino, entries)| Some((self.paths.get(&ino)?.clone(), entries)))
            .collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        let mut entries = Vec::new();
        for (dir, durable) in &dirs {
            let Ok(list) = fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for e in list.flatten() {
                let name = e.file_name();
                if dir.as_os_str().is_empty() && name == ATTIC {
                    continue;
                }
                let ino = self.fuse_ino(e.ino());
                if durable.get(&name) == Some(&ino) {
                    continue;
                }
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                let rel = dir.join(&name);
                let r = self.keep(&rel, ino, is_dir).and_then(|()| {
                    if is_dir {
                        Ok(())
                    } else {
                        fs::remove_file(self.root.join(&rel))
                    }
                });
                match r {
                    Ok(()) => entries.push(format!("-{}", rel.display())),
                    Err(e) => failures.push(format!("{}: {e}", rel.display())),
                }
            }
        }
        for (dir, durable) in &dirs {
            for (name, &ino) in durable {
                let to = self.root.join(dir).join(name);
                if fs::symlink_metadata(&to).is_ok() {
                    continue;
                }
                let r = self.abs(ino).and_then(|from| {
                    if fs::symlink_metadata(&from)?.is_dir() {
                        fs::rename(&from, &to)
                    } else {
                        fs::hard_link(&from, &to)
                    }
                });
                match r {
                    Ok(()) => entries.push(format!("+{}", dir.join(name).display())),
                    Err(e) => failures.push(format!("{}: {e}", to.display())),
                }
            }
        }
        let _ = fs::remove_dir_all(self.root.join(ATTIC));
        let mut report = format!(
            "{} syncs since the mount; {files} files back to their last sync ({bytes} unsynced \
             bytes past it dropped), {} directory entries reverted [{}]",
            self.syncs,
            entries.len(),
            entries.join(" ")
        );
        if !failures.is_empty() {
            report += &format!("; FAILED to revert: {}", failures.join("; "));
        }
        report
    }
}
