//! The open-file limit: raised from soft to hard at start, so connections, not a default of
//! 1024, decide how many clients a worker holds.

use std::io;

/// `(soft, hard)` limit on open files.
pub fn open_files() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a live, writable `rlimit` for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raise the soft open-file limit to the hard one; returns `(before, after)`.
pub fn raise_open_files() -> io::Result<(u64, u64)> {
    let (soft, hard) = open_files()?;
    if soft < hard {
        let r = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `r` is a live, initialised `rlimit`; the kernel only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((soft, open_files()?.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If the struct were passed wrong, the limits read back would not be the ones set.
    #[test]
    fn raising_reaches_the_hard_limit() {
        let (_, hard) = open_files().unwrap();
        let (before, after) = raise_open_files().unwrap();
        assert!(before <= after);
        assert_eq!(after, hard);
        assert_eq!(open_files().unwrap(), (hard, hard));
    }
}
