//! `SIGINT`/`SIGTERM` without handlers: the main thread blocks them before any worker starts
//! (threads inherit the mask), then waits for one with `sigwait`.

use std::io;
use std::mem::MaybeUninit;

fn shutdown_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` initialises the set it is given; `sigaddset` then adds valid
    // signal numbers to that initialised set, so `assume_init` sees an initialised value.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        set.assume_init()
    }
}

/// Block `SIGINT` and `SIGTERM` in this thread and every thread it spawns afterwards.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_set();
    // SAFETY: `set` is an initialised sigset; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Wait until `SIGINT` or `SIGTERM` arrives (they must be blocked); returns the signal.
pub fn wait_for_shutdown() -> io::Result<libc::c_int> {
    let set = shutdown_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: both pointers point at live, initialised values of the right types.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc == 0 {
        Ok(sig)
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}
