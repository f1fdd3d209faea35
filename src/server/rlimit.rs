//! Process limits and scheduling: the open-file limit, raised from soft to hard at start (so
//! connections, not a default of 1024, decide how many clients a worker holds), and the batch
//! scheduling class of the journal threads.

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

/// Put the calling thread in `SCHED_BATCH`: its wake-ups do not preempt the worker that woke
/// it, so a journal thread sharing a CPU with its worker runs when the worker waits for events,
/// and a batch gathers every request of the worker's turn instead of a few.
pub fn batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live, initialised `sched_param`; the kernel only reads it; pid 0 is
    // the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
