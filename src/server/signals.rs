//! `SIGINT`/`SIGTERM` without handlers: the main thread blocks them before any worker starts
//! (threads inherit the mask), then waits for one with `sigwait`.
#![forbid(unsafe_code)]

use std::io;

use super::sys;

fn shutdown_set() -> io::Result<libc::sigset_t> {
    sys::sigset(&[libc::SIGINT, libc::SIGTERM])
}

/// Block `SIGINT` and `SIGTERM` in this thread and every thread it spawns afterwards.
pub fn block_shutdown_signals() -> io::Result<()> {
    sys::block_signals(&shutdown_set()?)
}

/// Wait until `SIGINT` or `SIGTERM` arrives (they must be blocked); returns the signal.
pub fn wait_for_shutdown() -> io::Result<libc::c_int> {
    sys::sigwait(&shutdown_set()?)
}
