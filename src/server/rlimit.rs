//! Process limits and scheduling: the open-file limit, raised from soft to hard at start (so
//! connections, not a default of 1024, decide how many clients a worker holds), and the batch
//! scheduling class of the journal threads.

#![forbid(unsafe_code)]

use std::io;

use super::sys;

/// `(soft, hard)` limit on open files.
pub fn open_files() -> io::Result<(u64, u64)> {
    sys::get_rlimit(libc::RLIMIT_NOFILE)
}

/// Raise the soft open-file limit to the hard one; returns `(before, after)`.
pub fn raise_open_files() -> io::Result<(u64, u64)> {
    let (soft, hard) = open_files()?;
    if soft < hard {
        sys::set_rlimit(libc::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, open_files()?.0))
}

/// Put the calling thread in `SCHED_BATCH`: its wake-ups do not preempt the worker that woke
/// it, so a journal thread sharing a CPU with its worker runs when the worker waits for events,
/// and a batch gathers every request of the worker's turn instead of a few.
pub fn batch_scheduling() -> io::Result<()> {
    sys::set_thread_policy(libc::SCHED_BATCH)
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
