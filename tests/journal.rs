//! Every acknowledged usage survives: restarts, `kill -9`, a different thread count; and
//! `usaged export` agrees with `GET`.

mod util;

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use util::{README_BODY, Server, get, post, read_response, temp_data_dir};

fn body(i: u64) -> String {
    format!(
        r#"{{"patientId":"p-{i}","timestamp":{},"medication":"M{}"}}"#,
        1_478_009_511_000 + i,
        i % 13
    )
}

/// Post `n` usages on one connection, pipelined in batches; `(id, i)` for each.
fn post_many(s: &Server, from: u64, n: u64) -> Vec<(u64, u64)> {
    let mut c = s.connect();
    let mut out = Vec::new();
    let mut i = from;
    while i < from + n {
        let batch: Vec<u64> = (i..(i + 200).min(from + n)).collect();
        c.send(batch.iter().map(|&k| post(&body(k))).collect::<String>());
        for &k in &batch {
            let r = c.read(false);
            assert_eq!(r.status, 201);
            out.push((r.json()["id"].as_u64().unwrap(), k));
        }
        i += batch.len() as u64;
    }
    out
}

/// Every `(id, i)` reads back as `body(i)`.
fn check_all(s: &Server, posted: &[(u64, u64)]) {
    let mut c = s.connect();
    for chunk in posted.chunks(500) {
        c.send(chunk.iter().map(|(id, _)| get(*id)).collect::<String>());
        for &(id, i) in chunk {
            let r = c.read(false);
            assert_eq!(r.status, 200, "id {id}");
            let g = r.json();
            assert_eq!(g["patientId"], format!("p-{i}"), "id {id}");
            assert_eq!(g["medication"], format!("M{}", i % 13), "id {id}");
        }
    }
}

#[test]
fn usages_survive_a_restart_and_ids_are_never_reused() {
    let dir = temp_data_dir();
    let mut s = Server::start_in(&dir, &[]);
    let first = post_many(&s, 0, 1000);
    assert!(s.stop().success());
    let mut s = Server::start_in(&dir, &[]);
    check_all(&s, &first);
    let second = post_many(&s, 1000, 500);
    let ids: HashSet<u64> = first.iter().chain(&second).map(|p| p.0).collect();
    assert_eq!(ids.len(), 1500, "no id handed out twice across the restart");
    assert!(s.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_usage() {
    let dir = temp_data_dir();
    let s = Server::start_in(&dir, &[]);
    let port = s.port;
    let stop = AtomicBool::new(false);
    // A pseudo-random moment between 150 and 650 ms into the load.
    let delay = Duration::from_millis(150 + (std::process::id() as u64 * 7919) % 500);
    let acked: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8u64)
            .map(|t| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut got = Vec::new();
                    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut w = c.try_clone().unwrap();
                    let mut r = BufReader::new(c);
                    let mut i = t * 10_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        let batch: String = (i..i + 20).map(|k| post(&body(k))).collect();
                        if std::io::Write::write_all(&mut w, batch.as_bytes()).is_err() {
                            break;
                        }
                        for k in i..i + 20 {
                            match read_response(&mut r) {
                                Some(resp) if resp.status == 201 => {
                                    got.push((resp.json()["id"].as_u64().unwrap(), k))
                                }
                                _ => return got,
                            }
                        }
                        i += 20;
                    }
                    got
                })
            })
            .collect();
        std::thread::sleep(delay);
        let mut child = s;
        child.keep_data = true;
        child.child.kill().unwrap(); // SIGKILL
        child.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    println!(
        "kill -9 after {delay:?}: {} usages acknowledged",
        acked.len()
    );
    assert!(!acked.is_empty());
    let s = Server::start_in(&dir, &[]);
    check_all(&s, &acked);
    let old: HashSet<u64> = acked.iter().map(|a| a.0).collect();
    for (id, _) in post_many(&s, 99_000_000, 200) {
        assert!(
            !old.contains(&id),
            "id {id} handed out again after the crash"
        );
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_different_thread_count_keeps_old_ids_readable() {
    let dir = temp_data_dir();
    let mut s = Server::start_in(&dir, &["--threads", "4"]);
    let a = post_many(&s, 0, 300);
    assert!(s.stop().success());
    let mut s = Server::start_in(&dir, &["--threads", "2"]);
    check_all(&s, &a);
    let b = post_many(&s, 300, 300);
    let max_a = a.iter().map(|p| p.0).max().unwrap();
    assert!(
        b.iter().all(|p| p.0 > max_a),
        "new ids come after every old one"
    );
    assert!(s.stop().success());
    let s = Server::start_in(&dir, &["--threads", "3"]);
    check_all(&s, &a);
    check_all(&s, &b);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_under_load_keeps_every_acknowledged_usage() {
    let dir = temp_data_dir();
    let mut s = Server::start_in(&dir, &[]);
    let port = s.port;
    let stop = AtomicBool::new(false);
    let acked: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..64u64)
            .map(|t| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut got = Vec::new();
                    let Ok(c) = TcpStream::connect(("127.0.0.1", port)) else {
                        return got;
                    };
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut w = c.try_clone().unwrap();
                    let mut r = BufReader::new(c);
                    let mut k = t * 10_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        if std::io::Write::write_all(&mut w, post(&body(k)).as_bytes()).is_err() {
                            break;
                        }
                        match read_response(&mut r) {
                            Some(resp) if resp.status == 201 => {
                                got.push((resp.json()["id"].as_u64().unwrap(), k))
                            }
                            _ => break,
                        }
                        k += 1;
                    }
                    got
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        let t = Instant::now();
        assert!(s.stop().success());
        assert!(t.elapsed() < Duration::from_secs(11));
        stop.store(true, Ordering::Relaxed);
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    println!("SIGTERM under load: {} usages acknowledged", acked.len());
    let s = Server::start_in(&dir, &[]);
    check_all(&s, &acked);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A million usages: `usaged export` lists them in id order, each line exactly what `GET`
/// answers (every one in release builds; a sample in debug builds, which are slow).
#[test]
fn export_of_a_million_usages_equals_get() {
    const N: u64 = 1_000_000;
    let dir = temp_data_dir();
    let mut s = Server::start_in(&dir, &[]);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let mut c = s.connect();
            std::thread::spawn(move || {
                let per = N / 4;
                let mut k = t * per;
                while k < (t + 1) * per {
                    let n = 1000.min((t + 1) * per - k);
                    c.send((k..k + n).map(|i| post(&body(i))).collect::<String>());
                    for _ in 0..n {
                        assert_eq!(c.read(false).status, 201);
                    }
                    k += n;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let text = util::export_text(&dir);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, N);
    let mut by_id = HashMap::with_capacity(lines.len());
    let mut last = 0;
    for line in &lines {
        let id = serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
            .as_u64()
            .unwrap();
        assert!(id > last, "id order");
        last = id;
        by_id.insert(id, *line);
    }
    let ids: Vec<u64> = by_id.keys().copied().collect();
    let step = if cfg!(debug_assertions) { 97 } else { 1 };
    let mut c = s.connect();
    for chunk in ids.iter().step_by(step).collect::<Vec<_>>().chunks(1000) {
        c.send(chunk.iter().map(|id| get(**id)).collect::<String>());
        for id in chunk {
            assert_eq!(c.read(false).text(), by_id[*id], "id {id}");
        }
    }
    let csv = std::process::Command::new(env!("CARGO_BIN_EXE_usaged"))
        .args(["export", "--format", "csv", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert_eq!(
        csv.lines().next(),
        Some("id,patientId,timestamp,medication")
    );
    assert_eq!(csv.lines().count() as u64, N + 1);
    assert!(s.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn startup_reports_recovery_and_a_corrupt_journal_stops_it() {
    let dir = temp_data_dir();
    let mut s = Server::start_in(&dir, &["--threads", "1"]);
    post_many(&s, 0, 50);
    assert!(s.stop().success());
    // Flip a byte in the middle of the segment's records.
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "seg") && std::fs::metadata(p).unwrap().len() > 1000
        });
    let seg = seg.expect("a segment with records");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[600] ^= 0x55;
    std::fs::write(&seg, &bytes).unwrap();
    // A sealed segment with its index is not read at start (see `recover`): without its
    // index it is scanned, and the flipped byte found.
    std::fs::remove_file(seg.with_extension("idx")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usaged"))
        .args(["--port", "0", "--threads", "1", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&seg.display().to_string()) && err.contains("offset"),
        "{err}"
    );
    let s = Server::start_in(&dir, &["--threads", "1", "--repair"]);
    let mut c = s.connect();
    assert_eq!(
        c.request(post(README_BODY)).status,
        201,
        "serves after the repair"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_servers_cannot_share_a_data_dir() {
    let dir = temp_data_dir();
    let s = Server::start_in(&dir, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usaged"))
        .args(["--port", "0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another usaged is using --data-dir"), "{err}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
