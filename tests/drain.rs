//! SIGTERM under load loses nothing: directly, and through real proxies (HAProxy, nginx).
//!
//! Every request that reached the server gets a whole answer (its `201`, or `503` with
//! `Connection: close` once the drain began); a connection the server ends is ended with a FIN,
//! never a reset while a request is unread; a proxy in front answers no `502`/`504` and its
//! clients see no error; every `201` reads back after a restart and `usaged export` lists
//! exactly the acknowledged set.
//!
//! HAProxy and nginx come from `.ci/run` (apt-get). A missing one fails its test, unless
//! `USAGED_SKIP_PROXIES=1` is set. Tests run one at a time (they share two CPUs).

mod util;

#[path = "drain/check.rs"]
mod check;
#[path = "drain/client.rs"]
mod client;
#[path = "drain/process.rs"]
mod process;
#[path = "drain/proxy.rs"]
mod proxy;

use check::*;
use client::*;
use process::*;
use proxy::*;

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use util::{Response, get, post, read_response, temp_data_dir};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One usage whose `patientId` names the request (`pid` is unique in a test).
fn usage(pid: &str) -> String {
    format!(
        r#"{{"patientId":"{pid}","timestamp":"2016-11-01T09:11:51-05:00","medication":"Albuterol"}}"#
    )
}

// ---------------------------------------------------------------------------------------------
// Directly.

/// Keep-alive and pipelining clients post until SIGTERM closes the listener, three times over
/// one journal; nothing that was sent is reset or lost, no id is given twice, and the store
/// holds exactly what was acknowledged.
#[test]
fn sigterm_under_keep_alive_load_answers_every_request_and_resets_none() {
    let _g = serial();
    const ROUNDS: usize = 3;
    let dir = TempDir::new();
    let flags = ["--threads", "2", "--shutdown-timeout", "5"];
    let mut total = Tally::default();
    for round in 0..ROUNDS {
        let mut s = Usaged::start(&dir.0, 0, &flags);
        let stop = AtomicBool::new(false);
        let acked = [AtomicUsize::new(0)];
        let load = Load {
            port: s.port,
            depth: 1,
            stop: &stop,
            acked: &acked,
            backend_of: None,
            direct: true,
        };
        // Eight plain keep-alive clients, four that pipeline 8 or 4 requests per write.
        let tags: Vec<String> = (0..12).map(|i| format!("r{round}-k{i}")).collect();
        let clients: Vec<(&str, usize)> = tags
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), [1, 1, 1, 1, 1, 1, 1, 1, 8, 8, 4, 4][i]))
            .collect();
        let (t, took) = with_load(&clients, &load, || {
            wait_for(
                Duration::from_secs(30),
                "1500 usages are acknowledged",
                || acked[0].load(Ordering::Relaxed) >= 1500,
            );
            let t0 = Instant::now();
            s.sigterm();
            let st = s.wait_exit(Duration::from_secs(10));
            assert!(st.success(), "exit {st}:\n{}", s.log());
            format!("{:?}", t0.elapsed())
        });
        println!(
            "direct drain {round} (exit {took} after SIGTERM): {}",
            t.summary()
        );
        total = total.merge(t);
    }
    let t = total;
    let resets: Vec<_> = t
        .errors
        .iter()
        .filter(|e| e.to_lowercase().contains("reset"))
        .collect();
    assert!(
        resets.is_empty(),
        "connections were reset: {resets:?}\n{}",
        t.summary()
    );
    assert!(
        t.errors.is_empty() && t.unexpected.is_empty(),
        "{}",
        t.summary()
    );
    // A request written in the microseconds between our peek and the server's FIN reaching us
    // cannot be told apart from one the server dropped unread; one such race per SIGTERM is
    // tolerated (it must not have been stored: see the export below). A server that closes
    // connections with requests unread loses several per SIGTERM (issue 9, case 10).
    assert!(
        t.unanswered.len() <= ROUNDS,
        "requests sent and never answered: {:?}\n{}",
        first(&t.unanswered),
        t.summary()
    );
    let acked: Vec<(u64, String)> = t.acked.into_iter().map(|(_, id, p)| (id, p)).collect();
    let mut again = Usaged::start(&dir.0, 0, &flags);
    read_back(again.port, &acked);
    again.stop(Duration::from_secs(10));
    check_journal(&dir.0, &acked, "direct drain");
}

/// With `--drain-grace`, `/health` says `503 draining` at once while POSTs (on old and new
/// connections) still get `201` until the grace ends; then the idle connection gets a FIN.
#[test]
fn health_says_draining_at_once_while_posts_are_served_during_the_grace() {
    let _g = serial();
    let dir = TempDir::new();
    let grace = Duration::from_secs(2);
    let flags = [
        "--threads",
        "2",
        "--drain-grace",
        "2",
        "--shutdown-timeout",
        "5",
    ];
    let mut s = Usaged::start(&dir.0, 0, &flags);
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(c)
    };
    let ask = |c: &mut BufReader<TcpStream>, req: &str| {
        c.get_mut().write_all(req.as_bytes()).unwrap();
        match read_answer(c) {
            Answer::Got(r) => r,
            Answer::Eof => panic!("no answer to {req:?}"),
            Answer::Failed(e) => panic!("{req:?}: {e}"),
        }
    };
    let health = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut old = connect();
    let r = ask(&mut old, &post(&usage("before")));
    assert_eq!(r.status, 201);
    let mut acked = vec![(r.json()["id"].as_u64().unwrap(), "before".to_string())];
    assert_eq!(ask(&mut old, health).status, 200);

    let t0 = Instant::now();
    s.sigterm();
    // The signal is handled asynchronously: poll (bounded) until /health turns.
    let turned = loop {
        let r = ask(&mut connect(), health);
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "/health still 200 {:?} after SIGTERM",
            t0.elapsed()
        );
    };
    let j = turned.json();
    assert_eq!(j["status"], "unavailable", "{j}");
    assert_eq!(j["reason"], "draining", "{j}");
    println!("/health turned 503 {:?} after SIGTERM", t0.elapsed());

    // During the grace: a POST on the old connection, one on a new connection, a read.
    let r = ask(&mut old, &post(&usage("grace-old")));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        !closes(&r),
        "served normally during the grace: {:?}",
        r.headers
    );
    acked.push((r.json()["id"].as_u64().unwrap(), "grace-old".into()));
    let mut new = connect();
    let r = ask(&mut new, &post(&usage("grace-new")));
    assert_eq!(r.status, 201, "{}", r.text());
    acked.push((r.json()["id"].as_u64().unwrap(), "grace-new".into()));
    let r = ask(&mut new, &get(acked[0].0));
    assert_eq!(r.status, 200);
    let within = t0.elapsed();
    assert!(
        within < grace,
        "the machine was too slow: the grace ended before the checks ({within:?})"
    );
    drop(new);

    // When the grace ends the idle connection is closed with a FIN (EOF), not a reset.
    let mut rest = Vec::new();
    match old.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest)),
        Err(e) => panic!("idle keep-alive connection after the grace: {e}"),
    }
    let fin_after = t0.elapsed();
    drop(old);
    let st = s.wait_exit(Duration::from_secs(10));
    let exited = t0.elapsed();
    assert!(st.success(), "exit {st}:\n{}", s.log());
    assert!(
        fin_after >= grace && exited >= grace,
        "the grace is 2 s: FIN after {fin_after:?}, exit after {exited:?}"
    );
    println!("idle connection closed {fin_after:?}, exit {exited:?} after SIGTERM");

    let mut again = s.restart();
    read_back(again.port, &acked);
    again.stop(Duration::from_secs(10));
    check_journal(&dir.0, &acked, "drain grace");
}

/// A request written onto an idle keep-alive connection just after the server's FIN (the race
/// every HTTP/1.1 client can lose) is read and dropped, not answered by a reset, and not stored.
#[test]
fn a_request_racing_the_fin_of_an_idle_connection_gets_no_reset() {
    let _g = serial();
    let dir = TempDir::new();
    let mut s = Usaged::start(&dir.0, 0, &["--threads", "1", "--shutdown-timeout", "5"]);
    let c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(post(&usage("kept")).as_bytes()).unwrap();
    let Answer::Got(a) = read_answer(&mut r) else {
        panic!("no answer")
    };
    assert_eq!(a.status, 201);
    let acked = vec![(a.json()["id"].as_u64().unwrap(), "kept".to_string())];

    s.sigterm();
    match read_answer(&mut r) {
        Answer::Eof => {}
        Answer::Got(a) => panic!("an answer nobody asked for: {a:?}"),
        Answer::Failed(e) => panic!("the idle connection was not closed with a FIN: {e}"),
    }
    // The client had not seen the FIN yet: its next POST goes out.
    w.write_all(post(&usage("late")).as_bytes())
        .expect("write after the FIN");
    // A reset comes back asynchronously: watch the socket's error for a while (bounded), then
    // read and write once more; a server that reads until we close shows none of them.
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        if let Some(e) = w.take_error().unwrap() {
            panic!("the late request was answered by a reset: {e}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut rest = Vec::new();
    let read = r.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "the late request was answered by {read:?} (a reset loses what the client sent)"
    );
    let again = w.write_all(post(&usage("later")).as_bytes());
    assert!(again.is_ok(), "the server stopped reading: {again:?}");
    drop((r, w));
    let st = s.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st}:\n{}", s.log());
    check_journal(&dir.0, &acked, "late request");
}

/// Clients that open a fresh connection for each POST (as nginx does to its upstreams
/// without `keepalive`) while SIGTERM closes the listener, thirty times over one journal: a
/// connect may be refused or time out, but a connection that was made gets its answer (`201`,
/// or `503` once draining), never a reset: a listener closed with a handshake still under way
/// resets a client that already sent its request. The race is narrow (a SYN before the
/// listener stops taking handshakes, its ACK after): with the listener closed at once, 40
/// rounds saw 2 resets here, so 30 rounds catch that regression more often than not.
/// One client's `201`s (id, patientId), failures, and connects refused or timed out.
type ClientTally = (Vec<(u64, String)>, Vec<String>, usize);

#[test]
fn fresh_connections_racing_the_listener_close_are_answered_never_reset() {
    let _g = serial();
    const ROUNDS: usize = 30;
    const CLIENTS: usize = 8;
    let dir = TempDir::new();
    let mut s = Usaged::start(&dir.0, 0, &["--threads", "1", "--shutdown-timeout", "5"]);
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    let mut refused = 0;
    for round in 0..ROUNDS {
        let stop = AtomicBool::new(false);
        let answered = AtomicUsize::new(0);
        let out: Vec<ClientTally> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let (stop, answered, port) = (&stop, &answered, s.port);
                    sc.spawn(move || {
                        let (mut ok, mut bad, mut refused) = (Vec::new(), Vec::new(), 0);
                        for n in 0.. {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                            let Ok(c2) =
                                TcpStream::connect_timeout(&addr, Duration::from_millis(250))
                            else {
                                refused += 1;
                                // The server is gone; the test stops the clients soon.
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            };
                            c2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                            let pid = format!("r{round}c{c}n{n}");
                            let mut w = c2.try_clone().unwrap();
                            if let Err(e) = w.write_all(post(&usage(&pid)).as_bytes()) {
                                bad.push(format!("{pid}: write: {e}"));
                                continue;
                            }
                            match read_answer(&mut BufReader::new(c2)) {
                                Answer::Got(a) if a.status == 201 => {
                                    ok.push((a.json()["id"].as_u64().unwrap(), pid));
                                }
                                Answer::Got(a) if a.status == 503 && closes(&a) => {}
                                Answer::Got(a) => bad.push(format!("{pid}: {a:?}")),
                                Answer::Eof => bad.push(format!("{pid}: EOF, no answer")),
                                Answer::Failed(e) => bad.push(format!("{pid}: {e}")),
                            }
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        (ok, bad, refused)
                    })
                })
                .collect();
            wait_for(Duration::from_secs(30), "clients are served", || {
                answered.load(Ordering::Relaxed) >= 200
            });
            s.sigterm();
            let st = s.wait_exit(Duration::from_secs(15));
            assert!(st.success(), "round {round}: exit {st}:\n{}", s.log());
            stop.store(true, Ordering::Relaxed);
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (ok, bad, r) in out {
            acked.extend(ok);
            failures.extend(bad);
            refused += r;
        }
        if round + 1 < ROUNDS {
            s = s.restart();
        }
    }
    println!(
        "{} acknowledged, {refused} connects refused or timed out, {} failures",
        acked.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "connections made and then not answered (first 5): {:?}",
        &failures[..failures.len().min(5)]
    );
    check_journal(&dir.0, &acked, "fresh connections");
}

/// Two backends behind `kind`; keep-alive (and pipelining) clients post through it while the
/// backends are restarted one after the other (SIGTERM, exit, start again on the same port).
/// No client sees an error or a 502/504, and every 201 reads back from the backend that gave it.
fn drain_behind(kind: Kind) {
    let (name, package) = match kind {
        Kind::Haproxy => ("haproxy", "haproxy"),
        Kind::Nginx => ("nginx", "nginx-light"),
    };
    let Some(bin) = proxy_binary(name, package) else {
        return;
    };
    let dirs = [TempDir::new(), TempDir::new()];
    // HAProxy's health checks need the grace to see the node go down before it closes
    // connections; nginx has none, so a grace would only delay what it sees.
    let flags: &[&str] = match kind {
        Kind::Haproxy => &[
            "--threads",
            "1",
            "--drain-grace",
            "2",
            "--shutdown-timeout",
            "5",
        ],
        Kind::Nginx => &["--threads", "1", "--shutdown-timeout", "5"],
    };
    let a = Usaged::start(&dirs[0].0, 0, flags);
    let b = Usaged::start(&dirs[1].0, 0, flags);
    let ports = [a.port, b.port];
    let pdir = temp_data_dir();
    std::fs::create_dir_all(&pdir).unwrap();
    let port = free_port();
    let log = write_config(kind, &pdir, port, ports);
    let args: Vec<String> = match kind {
        Kind::Haproxy => vec![
            "-f".into(),
            pdir.join("haproxy.cfg").display().to_string(),
            "-db".into(),
        ],
        Kind::Nginx => vec![
            "-p".into(),
            pdir.display().to_string(),
            "-c".into(),
            pdir.join("nginx.conf").display().to_string(),
            "-g".into(),
            "daemon off;".into(),
        ],
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&bin, &args, pdir, port, log);

    let backend_of = move |r: &Response| -> Option<usize> {
        match kind {
            Kind::Haproxy => match r.header("x-usaged-server")? {
                "a" => Some(0),
                "b" => Some(1),
                _ => None,
            },
            // `$upstream_addr` lists every server tried; the last one answered.
            Kind::Nginx => {
                let last = r.header("x-usaged-backend")?.rsplit(", ").next()?;
                let p: u16 = last.rsplit(':').next()?.parse().ok()?;
                ports.iter().position(|&q| q == p)
            }
        }
    };
    let stop = AtomicBool::new(false);
    let acked = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let load = Load {
        port: proxy.port,
        depth: 1,
        stop: &stop,
        acked: &acked,
        backend_of: Some(&backend_of),
        direct: false,
    };
    let tags: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
    let clients: Vec<(&str, usize)> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), if i < 12 { 1 } else { 4 }))
        .collect();
    let n = |i: usize| acked[i].load(Ordering::Relaxed);
    let mut backends = [a, b];
    let (t, note) = with_load(&clients, &load, || {
        wait_for(Duration::from_secs(30), "both backends serve", || {
            n(0) >= 300 && n(1) >= 300
        });
        // A rolling restart: each backend in turn gets SIGTERM, exits, starts again on its
        // port, and is back in rotation before the next one goes.
        let mut note = String::new();
        for (v, name) in ["A", "B"].into_iter().enumerate() {
            let t0 = Instant::now();
            let before = n(v);
            backends[v].sigterm();
            let st = backends[v].wait_exit(Duration::from_secs(15));
            assert!(
                st.success(),
                "backend {name} exited {st}:\n{}",
                backends[v].log()
            );
            let exited = t0.elapsed();
            let during = n(v) - before;
            backends[v] = backends[v].restart();
            let back = n(v);
            wait_for(
                Duration::from_secs(15),
                "the proxy sends to the restarted backend",
                || n(v) >= back + 100,
            );
            note += &format!(
                "{name} exited {exited:?} after SIGTERM ({during} of its 201s after SIGTERM), \
                 back in rotation {:?} after its restart; ",
                t0.elapsed() - exited
            );
        }
        note
    });
    println!("{kind:?}: {note}{}", t.summary());
    let logs = proxy.logs();
    assert!(
        t.errors.is_empty() && t.unexpected.is_empty() && t.unanswered.is_empty(),
        "{kind:?}: clients saw failures: {}{}\nproxy log:\n{logs}",
        t.summary(),
        if logs.contains("Cannot assign requested address") {
            "\n(the proxy ran out of local ports: too many TIME_WAIT sockets on this machine?)"
        } else {
            ""
        },
    );
    // HAProxy's health checks take the node out during its grace, so it never answers 503;
    // nginx cannot know: a request on a connection the node accepted just before its drain
    // began gets usaged's own 503 (nothing stored, `Retry-After`), which nginx must pass on.
    assert!(
        kind == Kind::Nginx || t.unavailable.is_empty(),
        "{kind:?}: the draining node answered 503: {}",
        t.summary()
    );
    drop(proxy);
    for (i, (s, d)) in backends.iter_mut().zip(&dirs).enumerate() {
        let mine: Vec<(u64, String)> = t
            .acked
            .iter()
            .filter(|(b, _, _)| *b == i)
            .map(|(_, id, p)| (*id, p.clone()))
            .collect();
        read_back(s.port, &mine);
        s.stop(Duration::from_secs(15));
        check_journal(&d.0, &mine, &format!("{kind:?} backend {i}"));
    }
}

#[test]
fn sigterm_behind_haproxy_costs_no_request() {
    let _g = serial();
    drain_behind(Kind::Haproxy);
}

#[test]
fn sigterm_behind_nginx_costs_no_request() {
    let _g = serial();
    drain_behind(Kind::Nginx);
}
