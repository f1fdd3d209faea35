//! The one libc seam: every foreign call the crate makes, each behind a small safe function
//! whose `SAFETY:` comment names what makes the call sound. Every other module says
//! `#![forbid(unsafe_code)]`; they pass owned or borrowed descriptors (`OwnedFd`, `BorrowedFd`)
//! and plain values here, and get `io::Result`s back.
//!
//! Calls that report failure as `-1` and `errno` go through [`cvt`]; the `pthread`-style calls
//! that return the error number go through `cvt_errno`. Each descriptor is owned (`OwnedFd`)
//! the moment it exists.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `-1` from a libc call becomes the thread's last OS error (`errno`); any other value is the
/// call's result.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A call that returns `0` or an error number (the `pthread` convention, no `errno`).
fn cvt_errno(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// `socket(domain, ty, protocol)`, owned at once.
pub fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `socket` takes no pointers; a failure (`-1`) is turned into an error by `cvt`.
    let fd = cvt(unsafe { libc::socket(domain, ty, protocol) })?;
    // SAFETY: `fd` was just returned by a successful `socket`, so it is an open descriptor,
    // and nothing else owns it: the `OwnedFd` made here is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt` with an `int` value (`SO_REUSEADDR`, `SO_REUSEPORT`, `TCP_NODELAY`, ...).
pub fn set_int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points at `value`, a live `c_int` for the whole call, and the
    // length passed is exactly the size of a `c_int`; `fd` is open for the borrow's lifetime.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Attach the classic BPF program `prog` to `fd` (`SO_ATTACH_FILTER`).
pub fn attach_filter(fd: BorrowedFd<'_>, prog: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads the program (it copies it in); the pointer is `*mut` by C's
        // declaration alone.
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, a live slice of exactly `len` instructions, and both
    // outlive the call, which copies the program and writes through neither; the length passed
    // is the size of `sock_fprog`; `fd` is open for the borrow's lifetime.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `bind(fd, addr)`.
pub fn bind(fd: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` is a live, initialised `sockaddr_storage` holding a sockaddr of
    // `addr`'s family, and `len` is that sockaddr's size, at most the storage's size (see
    // `sockaddr`); `fd` is open for the borrow's lifetime.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) })?;
    Ok(())
}

/// `listen(fd, backlog)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: `listen` takes no pointers; `fd` is open for the borrow's lifetime.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// `addr` as a C socket address and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: `sockaddr_storage` is plain old data (integers and byte arrays); all-zero bytes
    // are a valid value of it.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is by definition at least as large as, and aligned for,
            // every sockaddr type, so a `sockaddr_in` fits at its start.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above: `sockaddr_storage` is large and aligned enough for
            // `sockaddr_in6`.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// `(soft, hard)` limit of `resource` (`getrlimit`).
pub fn get_rlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a live, writable `rlimit` for the call to fill.
    cvt(unsafe { libc::getrlimit(resource, &mut r) })?;
    Ok((r.rlim_cur, r.rlim_max))
}

/// Set the `(soft, hard)` limit of `resource` (`setrlimit`).
pub fn set_rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `r` is a live, initialised `rlimit`; the kernel only reads it.
    cvt(unsafe { libc::setrlimit(resource, &r) })?;
    Ok(())
}

/// Put the calling thread in scheduling class `policy` at static priority 0 (`SCHED_BATCH`,
/// `SCHED_OTHER`, `SCHED_IDLE`).
pub fn set_thread_policy(policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live, initialised `sched_param`; the kernel only reads it; pid 0 is
    // the calling thread.
    cvt(unsafe { libc::sched_setscheduler(0, policy, &param) })?;
    Ok(())
}

/// The signal set holding exactly `signals`.
pub fn sigset(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` is live and writable; `sigemptyset` initialises every byte of it.
    cvt(unsafe { libc::sigemptyset(set.as_mut_ptr()) })?;
    for &sig in signals {
        // SAFETY: `set` was initialised by `sigemptyset` above; an invalid signal number is an
        // error (`EINVAL`) that `cvt` reports, not undefined behaviour.
        cvt(unsafe { libc::sigaddset(set.as_mut_ptr(), sig) })?;
    }
    // SAFETY: `sigemptyset` succeeded, so every byte of `set` is initialised.
    Ok(unsafe { set.assume_init() })
}

/// Add `set` to the calling thread's blocked signals; threads it spawns afterwards inherit
/// the mask.
pub fn block_signals(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is a live, initialised sigset (a `&` to one); a null old-set pointer is
    // allowed and means "don't report the old mask".
    cvt_errno(unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) })
}

/// Wait until a signal of `set` (which must be blocked) is pending; take it and return it.
pub fn sigwait(set: &libc::sigset_t) -> io::Result<libc::c_int> {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` points at a live, initialised sigset, and `sig` at a live, writable
    // `c_int` for the call to fill.
    cvt_errno(unsafe { libc::sigwait(set, &mut sig) })?;
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    fn errno_is(e: &io::Error, errno: libc::c_int) -> bool {
        e.raw_os_error() == Some(errno)
    }

    /// If `cvt` passed `-1` through or turned a valid result into an error, failures would go
    /// unnoticed or successes be refused.
    #[test]
    fn cvt_turns_minus_one_into_errno_and_keeps_results() {
        assert_eq!(cvt(0).unwrap(), 0);
        assert_eq!(cvt(7).unwrap(), 7);
        // A call that fails with a known errno: listening on a descriptor that is not a socket.
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = listen(f.as_fd(), 1).unwrap_err();
        assert!(errno_is(&e, libc::ENOTSOCK), "{e}");
        let e = cvt_errno(libc::EAGAIN).unwrap_err();
        assert!(errno_is(&e, libc::EAGAIN));
        assert!(cvt_errno(0).is_ok());
    }

    /// The type flags must reach the kernel: a wrong argument order would give a blocking or
    /// inheritable socket (seen in `/proc/self/fdinfo`) or fail.
    #[test]
    fn socket_is_owned_with_the_flags_asked_for() {
        let fd = socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
        .unwrap();
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| i32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        assert_ne!(flags & libc::O_NONBLOCK, 0, "non-blocking");
        assert_ne!(flags & libc::O_CLOEXEC, 0, "close-on-exec");
        assert!(
            socket(-1, libc::SOCK_STREAM, 0).is_err(),
            "a bad domain is an error"
        );
    }

    /// The value and its level must arrive as given: read back through std's `getsockopt`.
    #[test]
    fn an_int_option_reads_back() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        set_int_option(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        assert!(s.nodelay().unwrap());
        set_int_option(s.as_fd(), libc::IPPROTO_IP, libc::IP_TTL, 42).unwrap();
        assert_eq!(s.ttl().unwrap(), 42);
        set_int_option(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 0).unwrap();
        assert!(!s.nodelay().unwrap());
    }

    /// A sockaddr built wrong (byte order, family, length) binds another address or fails.
    #[test]
    fn bind_and_listen_take_the_address_given() {
        for want in ["127.0.0.1:0", "[::1]:0"] {
            let want: SocketAddr = want.parse().unwrap();
            let domain = if want.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let fd = socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
            if bind(fd.as_fd(), want).is_err() && want.is_ipv6() {
                continue; // no IPv6 on this machine
            }
            listen(fd.as_fd(), 8).unwrap();
            let l = TcpListener::from(fd);
            let got = l.local_addr().unwrap();
            assert_eq!(got.ip(), want.ip());
            assert_ne!(got.port(), 0);
            // Bound at the port it reports: the port's byte order is right.
            let port = got.port();
            let fd = socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
            let taken = bind(fd.as_fd(), SocketAddr::new(want.ip(), port)).unwrap_err();
            assert!(errno_is(&taken, libc::EADDRINUSE), "{taken}");
            TcpStream::connect(got).unwrap();
        }
    }

    /// An empty program is refused by the kernel; a one-instruction "accept all" is taken.
    #[test]
    fn a_filter_attaches_with_its_length() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let accept_all = libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        };
        attach_filter(l.as_fd(), &[accept_all]).unwrap();
        assert!(attach_filter(l.as_fd(), &[]).is_err());
        TcpStream::connect(l.local_addr().unwrap()).unwrap();
    }

    /// Limits set must be the limits read back (a swapped soft/hard would fail or differ).
    #[test]
    fn rlimits_read_back() {
        let (soft, hard) = get_rlimit(libc::RLIMIT_NOFILE).unwrap();
        assert!(soft <= hard);
        set_rlimit(libc::RLIMIT_NOFILE, soft, hard).unwrap();
        assert_eq!(get_rlimit(libc::RLIMIT_NOFILE).unwrap(), (soft, hard));
        // A soft limit above the hard one is refused, not silently clamped.
        if hard < u64::MAX {
            assert!(set_rlimit(libc::RLIMIT_NOFILE, hard + 1, hard).is_err());
        }
    }

    /// The policy must reach the calling thread (field 41 of `/proc/thread-self/stat`).
    #[test]
    fn a_thread_policy_is_the_callers() {
        std::thread::spawn(|| {
            set_thread_policy(libc::SCHED_BATCH).unwrap();
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // Fields after the parenthesised command name; `policy` is field 41 overall.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let policy: i32 = after.split(' ').nth(41 - 3).unwrap().parse().unwrap();
            assert_eq!(policy, libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
    }

    /// A set missing a signal, a mask not applied, or `sigwait` returning the wrong number
    /// would each fail here. Runs in its own thread, with a signal sent to that thread only.
    #[test]
    fn a_blocked_signal_is_taken_by_sigwait() {
        std::thread::spawn(|| {
            let set = sigset(&[libc::SIGUSR1, libc::SIGUSR2]).unwrap();
            block_signals(&set).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let blocked = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
                .unwrap();
            let bit = |s: libc::c_int| 1u64 << (s - 1);
            assert_eq!(
                blocked & (bit(libc::SIGUSR1) | bit(libc::SIGUSR2)),
                bit(libc::SIGUSR1) | bit(libc::SIGUSR2)
            );
            // SAFETY: `raise` sends to the calling thread only; SIGUSR2 is blocked in it just
            // above, so it stays pending instead of running its default action.
            assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
            assert_eq!(sigwait(&set).unwrap(), libc::SIGUSR2);
            assert!(
                sigset(&[0x7fff]).is_err(),
                "a bad signal number is an error"
            );
        })
        .join()
        .unwrap();
    }
}
