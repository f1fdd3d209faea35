//! usaged nodes behind HAProxy (issue 12; `tests/cluster.rs` tests the nodes themselves): the
//! generated config routes each read to the node that owns its id (HAProxy's own evaluation),
//! and a cluster started by `scripts/cluster.sh` takes a rolling restart and a growth 2 → 3
//! under load with no failed request.
//!
//! HAProxy: `.ci/run` installs it, and `scripts/cluster.sh` tries apt-get when it is missing;
//! without it these tests fail, unless `USAGED_SKIP_PROXIES=1` is set. Tests run one at a
//! time (they share two CPUs).

mod util;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use usaged::cluster::{Epoch, owner};
use util::{Response, Server, get, post, read_response, temp_data_dir};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// HAProxy from `PATH` or the sbin directories; `None` (said) with `USAGED_SKIP_PROXIES=1`.
fn haproxy_binary() -> Option<PathBuf> {
    if std::env::var_os("USAGED_SKIP_PROXIES").is_some_and(|v| v == "1") {
        println!("SKIPPED: USAGED_SKIP_PROXIES=1");
        return None;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join("haproxy"))
        .find(|p| p.is_file());
    Some(found.expect("haproxy is not installed (apt-get install haproxy; .ci/run does)"))
}

/// A free loopback port: bound to port 0, then released for HAProxy to take.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to HAProxy");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

// ---------------------------------------------------------------------------------------------
// Routing, as HAProxy evaluates the generated config.

/// HAProxy started with `usaged haproxy-config`'s output; killed on drop.
struct Haproxy {
    child: Child,
    dir: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three single-node usaged servers behind the config for `epochs`; every `GET` of an id
/// (edges of each epoch, ids far inside, leading zeros) is answered by the backend and server
/// that [`owner`] names, and ids below every epoch, like POSTs, go to backend `all`.
#[test]
fn haproxy_sends_each_read_to_the_owner_of_its_id() {
    let _g = serial();
    let Some(bin) = haproxy_binary() else { return };
    let servers: Vec<Server> = (0..3)
        .map(|_| Server::start(&["--in-memory", "--threads", "1"]))
        .collect();
    let epochs = [
        (100, 1),
        (1000, 2),
        (5_000_000, 3),
        (1 << 40, 2),
        ((1 << 52) - 7, 3),
    ]
    .map(|(base, nodes)| Epoch { base, nodes });
    let dir = temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut args = vec![
        "haproxy-config".to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
    ];
    args.extend(["--port".into(), port.to_string()]);
    for s in &servers {
        args.extend(["--node".into(), format!("127.0.0.1:{}", s.port)]);
    }
    for e in &epochs {
        args.extend(["--epoch".into(), format!("{}:{}", e.base, e.nodes)]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_usaged"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("haproxy.cfg"), &out.stdout).unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let child = Command::new(&bin)
        .args(["-db", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let proxy = Haproxy { child, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "HAProxy did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut ids: Vec<u64> = vec![0, 1, 99, 100, 101];
    for e in &epochs {
        for d in [0, 1, 2, 3, 4, 5, 6, 7] {
            ids.extend([e.base.saturating_sub(d), e.base + d]);
        }
    }
    // A fixed pseudo-random walk over the whole id space (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids.push(x % (1 << 53));
        ids.push(100 + x % 10_000_000);
    }
    let (mut w, mut r) = connect(port);
    for chunk in ids.chunks(50) {
        let reqs: String = chunk.iter().map(|&id| get(id)).collect();
        w.write_all(reqs.as_bytes()).unwrap();
        for &id in chunk {
            let a = read_response(&mut r).unwrap_or_else(|| panic!("no answer to GET {id}"));
            let served = a.header("x-usaged-server").unwrap_or("none").to_string();
            match owner(id, &epochs) {
                Some(k) => assert_eq!(served, format!("node{k}/node{k}"), "GET {id}"),
                None => assert!(served.starts_with("all/node"), "GET {id}: {served}"),
            }
        }
    }
    // Leading zeros name the same id (as usaged reads it); a POST is balanced.
    let leading = "GET /api/usages/0001001 HTTP/1.1\r\nHost: t\r\n\r\n";
    w.write_all(leading.as_bytes()).unwrap();
    let a = read_response(&mut r).unwrap();
    assert_eq!(a.header("x-usaged-server"), Some("node0/node0"));
    w.write_all(post(&usage("p")).as_bytes()).unwrap();
    let a = read_response(&mut r).unwrap();
    assert_eq!(a.status, 201, "{}", a.text());
    assert!(a.header("x-usaged-server").unwrap().starts_with("all/node"));
    // A POST with an Idempotency-Key goes to the node its key hashes to, every time: the retry
    // finds the key there and replays the first answer.
    let mut nodes = HashSet::new();
    for k in 0..30 {
        let body = usage(&format!("keyed-{k}"));
        let keyed = post(&body).replacen(
            "Host: t\r\n",
            &format!("Host: t\r\nIdempotency-Key: key-{k}\r\n"),
            1,
        );
        w.write_all(keyed.as_bytes()).unwrap();
        let first = read_response(&mut r).unwrap();
        assert_eq!(first.status, 201, "{}", first.text());
        let served = first.header("x-usaged-server").unwrap().to_string();
        assert!(served.starts_with("keyed/node"), "key-{k}: {served}");
        w.write_all(keyed.as_bytes()).unwrap();
        let again = read_response(&mut r).unwrap();
        assert_eq!(again.status, 201, "{}", again.text());
        assert_eq!(again.header("idempotent-replayed"), Some("true"), "key-{k}");
        assert_eq!(again.body, first.body, "key-{k}");
        assert_eq!(again.header("x-usaged-server"), Some(served.as_str()));
        nodes.insert(served);
    }
    assert!(nodes.len() > 1, "30 keys all hashed to one node: {nodes:?}");
    drop(proxy);
}

// ---------------------------------------------------------------------------------------------
// A cluster from scripts/cluster.sh.

fn usage(pid: &str) -> String {
    format!(
        r#"{{"patientId":"{pid}","timestamp":"2016-11-01T09:11:51-05:00","medication":"Albuterol"}}"#
    )
}

/// `scripts/cluster.sh ARGS` with this build's usaged; its output, checked to succeed.
fn script(args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
    Command::new("bash")
        .arg(path)
        .args(args)
        .env("USAGED", env!("CARGO_BIN_EXE_usaged"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A cluster in its own directory; stopped and removed on drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    /// `cluster.sh start DIR NODES PORT` (which installs HAProxy when it is missing).
    fn start(nodes: usize) -> Cluster {
        let dir = temp_data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let d = dir.display().to_string();
        let c = Cluster { dir, port };
        let out = script(&["start", &d, &nodes.to_string(), &port.to_string()]);
        let said = text(&out);
        assert!(out.status.success(), "cluster.sh start: {said}");
        let want = format!("cluster listening on 127.0.0.1:{port} ({nodes} nodes)");
        assert!(said.contains(&want), "{said}");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        let d = self.dir.display().to_string();
        all.insert(1, &d);
        let out = script(&all);
        let said = text(&out);
        assert!(out.status.success(), "cluster.sh {args:?}: {said}");
        said
    }

    /// The cluster epochs, as `cluster.sh` recorded them.
    fn epochs(&self) -> Vec<Epoch> {
        std::fs::read_to_string(self.dir.join("epochs"))
            .unwrap()
            .lines()
            .map(|l| {
                let (b, n) = l.split_once(' ').unwrap();
                Epoch {
                    base: b.parse().unwrap(),
                    nodes: n.parse().unwrap(),
                }
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        let out = script(&["stop", &d]);
        if out.status.success() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster.sh stop: {} (kept {d})", text(&out));
        }
    }
}

/// What the clients saw: every 201's id and patient, and every failure.
#[derive(Default)]
struct Tally {
    acked: Vec<(u64, String)>,
    /// A connection that ended or failed without an answer.
    errors: Vec<String>,
    /// An answer other than 201.
    other: Vec<String>,
    /// Answers with `Connection: close` (the client connected again).
    closes: usize,
}

/// `clients` keep-alive connections through HAProxy post until `done()` says so (checked
/// after each answer); patients are `{tag}-{client}-{n}`.
fn post_while(
    port: u16,
    clients: usize,
    tag: &str,
    done: &(dyn Fn(usize) -> bool + Sync),
) -> Tally {
    let count = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let parts: Vec<Tally> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                let (count, stop) = (&count, &stop);
                s.spawn(move || {
                    let mut t = Tally::default();
                    let (mut w, mut r) = connect(port);
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let pid = format!("{tag}-{c}-{n}");
                        let sent = w.write_all(post(&usage(&pid)).as_bytes());
                        match sent.ok().and_then(|_| read_response(&mut r)) {
                            Some(a) if a.status == 201 => {
                                t.acked.push((a.json()["id"].as_u64().unwrap(), pid));
                                count.fetch_add(1, Ordering::Relaxed);
                                // As any HTTP client: HAProxy closes after this answer (its
                                // old process does, on a reload).
                                if a.header("connection") == Some("close") {
                                    t.closes += 1;
                                    (w, r) = connect(port);
                                }
                            }
                            Some(a) => t.other.push(format!("{}: {}", a.status, a.text())),
                            None => {
                                t.errors.push(format!("{pid}: connection ended"));
                                (w, r) = connect(port);
                            }
                        }
                    }
                    t
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !done(count.load(Ordering::Relaxed)) {
            assert!(Instant::now() < deadline, "load did not finish in 300 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = Tally::default();
    for p in parts {
        all.acked.extend(p.acked);
        all.errors.extend(p.errors);
        all.other.extend(p.other);
        all.closes += p.closes;
    }
    all
}

/// `action` runs while 8 clients post; they go on until it is done and `total` usages were
/// acknowledged. No client sees an error or an answer other than 201.
fn under_load(c: &Cluster, tag: &str, total: usize, action: impl FnOnce() -> String) -> Tally {
    let finished = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    let t = std::thread::scope(|s| {
        let load = s.spawn(|| {
            post_while(c.port, 8, tag, &|n| {
                started.store(n, Ordering::Relaxed);
                finished.load(Ordering::Relaxed) && n >= total
            })
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while started.load(Ordering::Relaxed) < 500 {
            assert!(Instant::now() < deadline, "no load through HAProxy");
            std::thread::sleep(Duration::from_millis(10));
        }
        let said = action();
        println!("{tag}: {}", said.trim());
        finished.store(true, Ordering::Relaxed);
        load.join().unwrap()
    });
    assert!(
        t.errors.is_empty() && t.other.is_empty(),
        "{tag}: {} errors {:?}…, {} non-201 {:?}…",
        t.errors.len(),
        t.errors.iter().take(5).collect::<Vec<_>>(),
        t.other.len(),
        t.other.iter().take(5).collect::<Vec<_>>(),
    );
    println!(
        "{tag}: {} POSTs, all 201 ({} with Connection: close)",
        t.acked.len(),
        t.closes
    );
    t
}

/// Every id distinct; each reads back through HAProxy with its patient, from the node the
/// owner rule names.
fn read_back(c: &Cluster, acked: &[(u64, String)]) {
    let distinct: HashSet<u64> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct.len(), acked.len(), "an id was handed out twice");
    let epochs = c.epochs();
    let mut per_node = BTreeMap::new();
    let (mut w, mut r) = connect(c.port);
    for chunk in acked.chunks(100) {
        let reqs: String = chunk.iter().map(|(id, _)| get(*id)).collect();
        w.write_all(reqs.as_bytes()).unwrap();
        for (id, pid) in chunk {
            let a: Response = read_response(&mut r).unwrap_or_else(|| panic!("GET {id}"));
            assert_eq!(a.status, 200, "GET {id}: {}", a.text());
            let j = a.json();
            assert_eq!(
                (j["id"].as_u64(), j["patientId"].as_str()),
                (Some(*id), Some(pid.as_str()))
            );
            assert_eq!(j["medication"], "Albuterol", "GET {id}: {j}");
            let k = owner(*id, &epochs).unwrap_or_else(|| panic!("no epoch owns {id}"));
            assert_eq!(
                a.header("x-usaged-server"),
                Some(format!("node{k}/node{k}").as_str())
            );
            *per_node.entry(k).or_insert(0) += 1;
        }
    }
    println!(
        "read back {} ids through HAProxy, per node {per_node:?}",
        acked.len()
    );
}

/// GETs of `acked` (round and round, keep-alive) until `stop`: how many, and the failures.
fn get_while(port: u16, acked: &[(u64, String)], stop: &AtomicBool) -> (usize, Vec<String>) {
    let (mut n, mut failed) = (0, Vec::new());
    let (mut w, mut r) = connect(port);
    for (id, pid) in acked.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        n += 1;
        let a = w
            .write_all(get(*id).as_bytes())
            .ok()
            .and_then(|_| read_response(&mut r));
        match a {
            Some(a) if a.status == 200 && a.json()["patientId"] == pid.as_str() => {
                if a.header("connection") == Some("close") {
                    (w, r) = connect(port);
                }
            }
            Some(a) => failed.push(format!("GET {id}: {} {}", a.status, a.text())),
            None => {
                failed.push(format!("GET {id}: connection ended"));
                (w, r) = connect(port);
            }
        }
    }
    (n, failed)
}

/// `cluster.sh start DIR 2 PORT`; 20,000 POSTs over 8 keep-alive connections through HAProxy
/// while `cluster.sh restart` rolls both nodes: no error, no answer but 201; every id is
/// distinct and reads back through HAProxy from its owner; then
/// `cluster.sh grow DIR 3` under load, a rolling restart of the three with GETs as well as
/// POSTs, and the same checks over the whole set.
#[test]
fn a_rolling_restart_and_a_growth_under_load_fail_no_request() {
    let _g = serial();
    if haproxy_binary().is_none() {
        return;
    }
    let c = Cluster::start(2);
    let mut acked = under_load(&c, "restart", 20_000, || c.run(&["restart"])).acked;
    read_back(&c, &acked);
    acked.extend(under_load(&c, "grow", 5_000, || c.run(&["grow", "3"])).acked);
    // Reads too: a restarting node's GETs wait in HAProxy's retries, none fails.
    let mut reads = (0, Vec::new());
    let more = under_load(&c, "restart3", 5_000, || {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| get_while(c.port, &acked, &stop));
            let said = c.run(&["restart"]);
            stop.store(true, Ordering::Relaxed);
            reads = reader.join().unwrap();
            said
        })
    });
    let (n, failed) = reads;
    assert!(
        failed.is_empty(),
        "{} of {n} GETs failed: {:?}…",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    println!("restart3: {n} GETs during the restart, all 200");
    acked.extend(more.acked);
    read_back(&c, &acked);
    let epochs = c.epochs();
    assert_eq!(epochs.len(), 2, "{epochs:?}");
    assert!(
        acked.iter().any(|(id, _)| owner(*id, &epochs) == Some(2)),
        "the new node got no POST"
    );
}
