//! `SO_REUSEPORT` listeners: the socket calls go through [`super::sys`] (the crate's one
//! libc seam), and each fd is owned (`OwnedFd`) the moment it exists.
#![forbid(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};

use super::sys;

/// Pending connections the kernel queues per listener (capped by `net.core.somaxconn`).
const BACKLOG: libc::c_int = 4096;

/// Fail with `AddrInUse` ("already in use") when another process serves `addr`: a plain
/// socket (no `SO_REUSEPORT`) cannot bind a port someone listens on, even one shared with
/// `SO_REUSEPORT`, which our listeners would otherwise silently join. Port 0 is always free.
pub fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    match bind_probe(addr) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use by another process (two servers on one port would hand out the same ids)",
        )),
        Err(e) => Err(e),
    }
}

/// Bind (and release) a socket with `SO_REUSEADDR` only.
fn bind_probe(addr: SocketAddr) -> io::Result<()> {
    let fd = socket(addr)?;
    set_flag(&fd, libc::SO_REUSEADDR)?;
    sys::bind(fd.as_fd(), addr)
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
fn socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    sys::socket(
        domain,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0,
    )
}

fn set_flag(fd: &OwnedFd, opt: libc::c_int) -> io::Result<()> {
    sys::set_int_option(fd.as_fd(), libc::SOL_SOCKET, opt, 1)
}

/// Let no new handshake start on `l`: a socket filter drops every SYN that is not also an
/// ACK, so clients retry their SYN a second later and by then find the port closed (or a
/// restarted server). Every other packet passes, so a handshake already under way (SYN in,
/// SYN-ACK out) still completes into the backlog and must be accepted: dropping its ACK too
/// would leave the client thinking it is connected, writing its request, and then reset when
/// the listener closes. Connections accepted later inherit the filter, which never drops
/// one of their packets (a SYN without ACK is not part of an established connection).
pub fn refuse_new(l: &impl AsFd) -> io::Result<()> {
    sys::attach_filter(l.as_fd(), &syn_filter())
}

/// Classic BPF run on TCP segments (offset 0 is the TCP header; byte 13 holds the flags):
/// drop a segment whose SYN bit is set and ACK bit is clear, keep everything else.
fn syn_filter() -> [libc::sock_filter; 5] {
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        // A = tcp flags
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13),
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, SYN | ACK),
        // A == SYN (no ACK): a new handshake; drop it. Else keep.
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, SYN),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ]
}

/// `count` listeners on `addr`, all on the same port: with port 0, the first one picks a free
/// port and the others bind the port it got.
pub fn bind_all(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let l = bind_reuseport(addr)?;
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// A non-blocking, close-on-exec listener with `SO_REUSEADDR` and `SO_REUSEPORT`.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = socket(addr)?;
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        set_flag(&fd, opt)?;
    }
    sys::bind(fd.as_fd(), addr)?;
    sys::listen(fd.as_fd(), BACKLOG)?;
    Ok(TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// If the sockaddr were built wrong (byte order, length), the listeners would not share
    /// the requested address, or a client could not reach them.
    #[test]
    fn port_zero_resolves_once_and_all_listeners_share_it() {
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(
                l.local_addr().unwrap(),
                SocketAddr::from(([127, 0, 0, 1], port))
            );
        }
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"x").unwrap();
        // The kernel put the connection on one of the listeners.
        let accepted = loop {
            if let Some(s) = ls.iter().find_map(|l| l.accept().ok()) {
                break s;
            }
            std::thread::yield_now();
        };
        let mut s = accepted.0;
        s.set_nonblocking(false).unwrap();
        let mut b = [0];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn a_port_another_socket_listens_on_is_not_free() {
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = ls[0].local_addr().unwrap();
        let e = ensure_free(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("already in use"));
        drop(ls);
        assert!(ensure_free(addr).is_ok(), "free again once closed");
    }

    /// If the filter were malformed, attaching it would fail; if it did not drop, the second
    /// connection would be accepted.
    #[test]
    fn a_refusing_listener_completes_no_new_handshake() {
        let l = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let before = TcpStream::connect(addr).unwrap();
        refuse_new(&l).unwrap();
        let after = std::thread::spawn(move || {
            TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300))
        });
        // The connection queued before is still there to accept.
        let accepted = loop {
            match l.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(accepted.1, before.local_addr().unwrap());
        assert!(after.join().unwrap().is_err(), "no handshake completes");
    }

    /// The filter must drop only handshake starts: a connection's data (and a handshake's
    /// final ACK) passes. If it dropped everything (or read the flags at the wrong offset),
    /// the bytes sent on a filtered, established connection would never arrive.
    #[test]
    fn the_refusing_filter_lets_established_traffic_through() {
        let l = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        refuse_new(&s).unwrap();
        c.write_all(b"after the filter").unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0; 16];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"after the filter");
    }

    #[test]
    fn ipv6_loopback_and_errors() {
        if let Ok(l) = bind_reuseport("[::1]:0".parse().unwrap()) {
            assert!(l.local_addr().unwrap().is_ipv6());
        }
        // An address this machine does not have is an error, not a crash.
        assert!(bind_reuseport("192.0.2.1:0".parse().unwrap()).is_err());
    }
}
