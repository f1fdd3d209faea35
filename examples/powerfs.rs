//! powerfs: a FUSE pass-through file system that can lose power (an equivalent of LazyFS, for
//! the power-loss tests in `tests/power.rs`).
//!
//! usage: powerfs [--model posix|ext4|eager] BACKING MOUNTPOINT
//!
//! Everything done through MOUNTPOINT happens at once in BACKING (reads, writes, creates,
//! renames), and powerfs remembers what is not durable yet. It prints `powerfs: mounted …` on
//! stderr once the mount serves, then waits for a signal:
//!
//! - `SIGUSR1`: **power loss**. BACKING is put back to its durable state, the mount is
//!   detached (every request from then on fails with EIO) and powerfs exits 0 after printing
//!   `powerfs: power lost: …` (what it threw away). Kill every process using the mount first
//!   (`kill -9`), as a power loss would. To "reboot", start powerfs again on the same BACKING.
//! - `SIGINT`/`SIGTERM`: clean shutdown (as an operating system syncs before it halts):
//!   everything written stays, the mount is unmounted, exit 0.
//!
//! What is durable (the state at mount time counts as durable):
//!
//! - **File data and size** become durable at `fsync` or `fdatasync` of that file (or a write
//!   through `O_SYNC`/`O_DSYNC`, which the kernel turns into one). At a power loss a file goes
//!   back to its content and size at its last sync: unsynced appends vanish, unsynced
//!   overwrites are undone (kept as an undo copy of each 4 KiB page the first time it is
//!   written after a sync), a file created and never synced is empty. Like LazyFS, the loss is
//!   the worst case: nothing unsynced survives, not even what a real kernel had written back.
//! - **Directory entries** (create, mkdir, symlink, rename, unlink, rmdir) depend on `--model`:
//!   - `posix` (default): an entry change is durable once its directory is fsynced (POSIX and
//!     `fsync(2)`: "an explicit fsync() on a file descriptor for the directory is also
//!     needed"). At a power loss each directory goes back to its entries at its last fsync: an
//!     unsynced creation disappears, an unsynced rename reverts (the old name is back, with the
//!     content its inode last synced), an unsynced unlink is undone. The strictest model.
//!   - `ext4`: any `fsync`/`fdatasync` (of a file or a directory) also makes every entry change
//!     made so far durable, as a journaling file system's commit does (ext4 `data=ordered`,
//!     XFS). This is how real disks produce zero-length files: a new file's name is committed
//!     by someone else's fsync before its own data is synced.
//!   - `eager`: entry changes are durable at once, only data is lost (LazyFS's model: it
//!     caches file data, while metadata operations go straight to the underlying file system).
//!
//! Not modelled: hard links (`link` fails with EPERM), `fallocate` (EOPNOTSUPP), extended
//! attributes, owners and times (passed through, never reverted), partial or reordered
//! write-back before the loss (LazyFS's `torn-op`/`torn-seq` faults), and files changed in
//! BACKING behind powerfs's back while it runs. The mount is single-threaded.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

/// Where removed inodes are kept (hard-linked or moved) until the power loss or the exit, so
/// that an unsynced unlink or rename can be undone. Hidden from the mount.
const ATTIC: &str = ".powerfs-attic";
const PAGE: u64 = 4096;
const TTL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Model {
    Posix,
    Ext4,
    Eager,
}

#[path = "powerfs/state.rs"]
mod state;

use state::*;

struct PowerFs(Arc<Mutex<State>>);

impl PowerFs {
    /// The state, or `None` (and the request fails with EIO) after the power loss.
    fn state(&self) -> Option<MutexGuard<'_, State>> {
        let s = self.0.lock().expect("no panic while locked");
        (!s.crashed).then_some(s)
    }
}

macro_rules! state_or_eio {
    ($self:ident, $reply:ident) => {
        match $self.state() {
            Some(s) => s,
            None => return $reply.error(Errno::EIO),
        }
    };
}

macro_rules! try_or_reply {
    ($e:expr, $reply:ident) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(errno(e)),
        }
    };
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = state_or_eio!(self, reply);
        let rel = try_or_reply!(s.child(parent.0, name), reply);
        let attr = try_or_reply!(s.learn(rel), reply);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = state_or_eio!(self, reply);
        let m = match fh.and_then(|fh| s.handles.get(&fh.0)) {
            Some((_, f)) => f.metadata(),
            None => s.abs(ino.0).and_then(fs::symlink_metadata),
        };
        let m = try_or_reply!(m, reply);
        reply.attr(&TTL, &s.attr(&m));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = state_or_eio!(self, reply);
        let path = try_or_reply!(s.abs(ino.0), reply);
        if let Some(mode) = mode {
            try_or_reply!(
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)),
                reply
            );
        }
        if size.is_some() || atime.is_some() || mtime.is_some() {
            let f = match fh.and_then(|fh| s.handles.get(&fh.0)) {
                Some((_, f)) => Ok(Arc::clone(f)),
                None => OpenOptions::new().write(true).open(&path).map(Arc::new),
            };
            let f = try_or_reply!(f, reply);
            if let Some(len) = size {
                try_or_reply!(s.truncate(ino.0, &f, len), reply);
            }
            let when = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(when(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(when(t));
            }
            try_or_reply!(f.set_times(times), reply);
        }
        let m = try_or_reply!(fs::symlink_metadata(&path), reply);
        reply.attr(&TTL, &s.attr(&m));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let s = state_or_eio!(self, reply);
        let target = try_or_reply!(s.abs(ino.0).and_then(fs::read_link), reply);
        reply.data(target.as_os_str().as_encoded_bytes());
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = state_or_eio!(self, reply);
        let rel = try_or_reply!(s.child(parent.0, name), reply);
        try_or_reply!(s.entries_change(parent.0), reply);
        let abs = s.root.join(&rel);
        try_or_reply!(fs::create_dir(&abs), reply);
        let perm = fs::Permissions::from_mode(mode & !umask & 0o7777);
        try_or_reply!(fs::set_permissions(&abs, perm), reply);
        let attr = try_or_reply!(s.learn(rel), reply);
        if s.model != Model::Eager {
            // A new directory's durable content: nothing.
            s.dirs.insert(attr.ino.0, BTreeMap::new());
        }
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut s = state_or_eio!(self, reply);
        let rel = try_or_reply!(s.child(parent.0, link_name), reply);
        try_or_reply!(s.entries_change(parent.0), reply);
        try_or_reply!(std::os::unix::fs::symlink(target, s.root.join(&rel)), reply);
        let attr = try_or_reply!(s.learn(rel), reply);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = state_or_eio!(self, reply);
        let rel = try_or_reply!(s.child(parent.0, name), reply);
        let attr = try_or_reply!(s.learn(rel.clone()), reply);
        try_or_reply!(s.entries_change(parent.0), reply);
        try_or_reply!(s.keep(&rel, attr.ino.0, false), reply);
        try_or_reply!(fs::remove_file(s.root.join(&rel)), reply);
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = state_or_eio!(self, reply);
        let rel = try_or_reply!(s.child(parent.0, name), reply);
        let attr = try_or_reply!(s.learn(rel.clone()), reply);
        if attr.kind != FileType::Directory {
            return reply.error(Errno::ENOTDIR);
        }
        let mut list = try_or_reply!(fs::read_dir(s.root.join(&rel)), reply);
        if list.next().is_some() {
            return reply.error(Errno::ENOTEMPTY);
        }
        try_or_reply!(s.entries_change(parent.0), reply);
        try_or_reply!(s.keep(&rel, attr.ino.0, true), reply);
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = state_or_eio!(self, reply);
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let from = try_or_reply!(s.child(parent.0, name), reply);
        let to = try_or_reply!(s.child(newparent.0, newname), reply);
        let moved = try_or_reply!(s.learn(from.clone()), reply);
        let replaced = s.learn(to.clone()).ok();
        if replaced.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return reply.error(Errno::EEXIST);
        }
        try_or_reply!(s.entries_change(parent.0), reply);
        try_or_reply!(s.entries_change(newparent.0), reply);
        if let Some(r) = replaced {
            let is_dir = r.kind == FileType::Directory;
            if is_dir && fs::read_dir(s.root.join(&to)).is_ok_and(|mut d| d.next().is_some()) {
                return reply.error(Errno::ENOTEMPTY);
            }
            try_or_reply!(s.keep(&to, r.ino.0, is_dir), reply);
        }
        try_or_reply!(fs::rename(s.root.join(&from), s.root.join(&to)), reply);
        // The moved inode, and everything under it if it is a directory, has a new path.
        for p in s.paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(&from) {
                *p = to.join(rest);
            }
        }
        s.paths.insert(moved.ino.0, to);
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = state_or_eio!(self, reply);
        let path = try_or_reply!(s.abs(ino.0), reply);
        // Read and write whatever the open asked for: the kernel checks access, we are root.
        let f = try_or_reply!(OpenOptions::new().read(true).write(true).open(path), reply);
        s.next_fh += 1;
        let fh = s.next_fh;
        s.handles.insert(fh, (ino.0, Arc::new(f)));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = state_or_eio!(self, reply);
        let rel = try_or_reply!(s.child(parent.0, name), reply);
        let abs = s.root.join(&rel);
        let existed = fs::symlink_metadata(&abs).is_ok();
        if !existed {
            try_or_reply!(s.entries_change(parent.0), reply);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .create_new(flags & libc::O_EXCL != 0)
            .mode(mode & !umask & 0o7777)
            .open(&abs);
        let f = try_or_reply!(f, reply);
        let attr = try_or_reply!(s.learn(rel), reply);
        let ino = attr.ino.0;
        if !existed {
            s.files.insert(
                ino,
                Undo {
                    durable_len: 0,
                    pages: HashMap::new(),
                },
            );
        } else if flags & libc::O_TRUNC != 0 {
            try_or_reply!(s.truncate(ino, &f, 0), reply);
        }
        let attr = try_or_reply!(f.metadata().map(|m| s.attr(&m)), reply);
        s.next_fh += 1;
        let fh = s.next_fh;
        s.handles.insert(fh, (ino, Arc::new(f)));
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = state_or_eio!(self, reply);
        let Some((_, f)) = s.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = state_or_eio!(self, reply);
        let Some((ino, f)) = s.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let (ino, f) = (*ino, Arc::clone(f));
        let end = offset + data.len() as u64;
        try_or_reply!(s.before_change(ino, &f, offset, end), reply);
        try_or_reply!(f.write_all_at(data, offset), reply);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = state_or_eio!(self, reply);
        s.handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        let mut s = state_or_eio!(self, reply);
        s.synced_file(ino.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = state_or_eio!(self, reply);
        // The listing is taken once per open: offsets stay valid while entries come and go
        // (each entry not changed meanwhile is returned exactly once, as readdir(3) promises).
        let entries = try_or_reply!(s.entries(ino.0), reply);
        s.next_fh += 1;
        let fh = s.next_fh;
        s.listings.insert(fh, entries);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = state_or_eio!(self, reply);
        let Some(entries) = s.listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = state_or_eio!(self, reply);
        s.listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = state_or_eio!(self, reply);
        s.synced_dir(ino.0);
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }
}

/// `SIGUSR1`, `SIGINT` and `SIGTERM`, handled by `sigwait` in the main thread.
fn signal_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` initialises the set it is given; `sigaddset` then adds valid signal
    // numbers to that initialised set, so `assume_init` sees an initialised value.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGUSR1, libc::SIGINT, libc::SIGTERM] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut model = Model::Posix;
    if args.first().map(String::as_str) == Some("--model") && args.len() > 1 {
        model = match args[1].as_str() {
            "posix" => Model::Posix,
            "ext4" => Model::Ext4,
            "eager" => Model::Eager,
            m => die(&format!("unknown --model {m:?}: posix, ext4 or eager")),
        };
        args.drain(..2);
    }
    let [backing, mountpoint] = &args[..] else {
        die("usage: powerfs [--model posix|ext4|eager] BACKING MOUNTPOINT");
    };
    let root = fs::canonicalize(backing).unwrap_or_else(|e| die(&format!("{backing}: {e}")));
    let root_ino = fs::metadata(&root)
        .unwrap_or_else(|e| die(&format!("{backing}: {e}")))
        .ino();
    // Whatever a previous run left in its attic is not part of the durable state.
    let _ = fs::remove_dir_all(root.join(ATTIC));
    fs::create_dir(root.join(ATTIC)).unwrap_or_else(|e| die(&format!("{ATTIC}: {e}")));

    let set = signal_set();
    // SAFETY: `set` is an initialised sigset; a null old-set pointer is allowed. Blocked before
    // the session thread starts, so it inherits the mask and the signals reach `sigwait`.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "pthread_sigmask");

    let state = Arc::new(Mutex::new(State {
        model,
        root: root.clone(),
        root_ino,
        paths: HashMap::from([(1, PathBuf::new())]),
        files: HashMap::new(),
        dirs: HashMap::new(),
        handles: HashMap::new(),
        listings: HashMap::new(),
        next_fh: 0,
        crashed: false,
        syncs: 0,
    }));
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("powerfs".into())];
    let session = fuser::spawn_mount(PowerFs(state.clone()), mountpoint, &config)
        .unwrap_or_else(|e| die(&format!("cannot mount on {mountpoint}: {e}")));
    eprintln!(
        "powerfs: mounted {} on {mountpoint} (model {model:?}); SIGUSR1: power loss, SIGTERM: unmount",
        root.display()
    );

    let mut sig: libc::c_int = 0;
    // SAFETY: both pointers point at live, initialised values of the right types.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    assert_eq!(rc, 0, "sigwait");
    if sig == libc::SIGUSR1 {
        let report = state.lock().expect("no panic while locked").lose_power();
        eprintln!("powerfs: power lost: {report}");
        // Detach even if a process still has files open: they get EIO from now on.
        lazy_unmount(mountpoint);
        std::process::exit(0);
    }
    if let Err(e) = session.umount_and_join() {
        // Busy (a process still has files open): detach it; it is gone once they close.
        eprintln!("powerfs: unmount {mountpoint}: {e}; detaching it");
        lazy_unmount(mountpoint);
        std::process::exit(0);
    }
    eprintln!("powerfs: unmounted {mountpoint}");
}

fn lazy_unmount(mountpoint: &str) {
    let _ = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .status();
}

fn die(msg: &str) -> ! {
    eprintln!("powerfs: {msg}");
    std::process::exit(2);
}
