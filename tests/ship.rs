//! The database sink (issue 13) against a private PostgreSQL (`pg/mod.rs`): usages are posted
//! while the server is killed with -9 and restarted, while the shipper's connection is cut
//! (`pg_terminate_backend`), while PostgreSQL is stopped for seconds, and while the standalone
//! `usaged ship` is killed with -9; once the shipper has caught up (`usaged_ship_lag_usages`
//! 0), the `usages` table holds exactly the stored usages — every acknowledged one, plus those
//! stored without an answer — once each, with `GET`'s values (`ship/book.rs`). Some faults are
//! made to land inside a batch: a test holds `LOCK TABLE usages` until the shipper waits on it.

mod util;

#[path = "ship/book.rs"]
mod book;
#[allow(unused_imports)] // `segments` is not used here
#[path = "faults/harness.rs"]
mod harness;
mod pg;
#[path = "ship/standalone.rs"]
mod standalone;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use book::{Book, exported, get_all, metric, metrics, ship_metrics, wait_caught_up, wait_until};
use harness::{TempDir, Usaged, Wrap, run_to_end, serve_args};
use pg::{Pg, Session};
use standalone::Shipper;

const SECS_20: Duration = Duration::from_secs(20);
const SECS_60: Duration = Duration::from_secs(60);

/// A server on `dir` shipping to `pg`, plus `extra`.
fn serve(dir: &Path, pg: &Pg, extra: &[&str]) -> Usaged {
    let url = pg.url();
    let mut args = vec!["--ship-to", url.as_str()];
    args.extend_from_slice(extra);
    Usaged::start(dir, 2, &args)
}

/// Hold `LOCK TABLE usages` (once the shipper has made it) until the session is dropped.
fn lock_usages(pg: &Pg) -> Session {
    wait_until(SECS_20, "the shipper made the table", || {
        pg.scalar("SELECT to_regclass('usages') IS NOT NULL") == "t"
    });
    let mut s = pg.session();
    s.run("BEGIN; LOCK TABLE usages IN ACCESS EXCLUSIVE MODE;");
    s
}

/// Wait until a connection other than the harness's waits on a lock: a batch is under way.
fn wait_blocked(pg: &Pg) {
    wait_until(SECS_20, "the shipper waits on the locked table", || {
        pg.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND application_name NOT LIKE 'usaged-pgtest%'",
        ) != "0"
    });
}

/// The database password shows in none of `texts` (logs, metrics).
fn assert_secret_kept(pg: &Pg, texts: &[&str]) {
    for t in texts {
        assert!(
            !t.contains(pg.password()),
            "the database password is printed:\n{t}"
        );
    }
}

/// Post batches of 50 (each answered `201`), 100 ms apart, for `span`.
fn post_for(book: &mut Book, c: &mut harness::Conn, span: Duration) {
    let t = Instant::now();
    while t.elapsed() < span {
        book.post(c, 50);
        // Pacing the load over the outage, not waiting for anything.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn errors(m: &str) -> f64 {
    metric(m, "usaged_ship_errors_total").expect("usaged_ship_errors_total")
}

#[test]
fn pg_harness_runs_a_private_cluster() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    assert_eq!(pg.scalar("SHOW listen_addresses"), "", "Unix socket only");
    pg.exec("CREATE TABLE t (x int, s text); INSERT INTO t VALUES (1, 'a\tb'), (2, NULL);");
    let want = vec![
        serde_json::json!({"x": 1, "s": "a\tb"}),
        serde_json::json!({"x": 2, "s": null}),
    ];
    assert_eq!(pg.rows("SELECT x, s FROM t ORDER BY x"), want);
    // The password is needed.
    let no_pw = pg
        .psql_as("no-password")
        .args(["-w", "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(!no_pw.status.success(), "connected without the password");

    // A client's connection is cut; the harness's own are not.
    let mut victim = pg
        .psql_as("victim")
        .args(["-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(SECS_20, "the victim connected", || pg.clients() == 1);
    assert_eq!(pg.terminate_backends(), 1);
    wait_until(SECS_20, "the victim ended", || {
        victim.try_wait().unwrap().is_some()
    });
    assert!(!victim.wait().unwrap().success(), "psql survived the cut");
    assert_eq!(pg.clients(), 0);

    // Stopped, it answers nothing; started again, it has kept its data.
    pg.stop();
    assert!(
        pg.try_exec("SELECT 1").is_err(),
        "a stopped cluster answered"
    );
    pg.start_again();
    assert_eq!(pg.rows("SELECT x, s FROM t ORDER BY x"), want);
    let dir = pg.dir().to_path_buf();
    assert!(dir.join("data").is_dir());
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn print_schema_makes_the_table_the_shipper_uses() {
    if !pg::have_postgres() {
        return;
    }
    let (st, ddl, err) = run_to_end(&["ship".into(), "--print-schema".into()], SECS_20);
    assert!(st.success(), "usaged ship --print-schema: {st}\n{err}");
    let pg = Pg::start();
    pg.exec(&ddl);
    pg.exec(&ddl); // IF NOT EXISTS: runs again
    let cols: Vec<(String, String)> = pg
        .rows(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_name = 'usages' ORDER BY ordinal_position",
        )
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("column_name"), s("data_type"))
        })
        .collect();
    let want = [
        ("id", "bigint"),
        ("patient_id", "text"),
        ("patient_is_number", "boolean"),
        ("ts", "timestamp with time zone"),
        ("utc_offset_min", "smallint"),
        ("medication", "text"),
        ("node", "integer"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(cols, want, "columns of usages");
    let index = pg.scalar(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'usages' \
         AND indexdef LIKE '%(patient_id, ts)%'",
    );
    assert_eq!(index, "1", "an index for a patient's usages by time");

    // A server ships into the table made by hand: every kind of usage GET can show.
    let dir = TempDir::new();
    let mut s = serve(dir.path(), &pg, &[]);
    let mut book = Book::default();
    book.post(&mut s.conn(), 120);
    let m = wait_caught_up(&s, SECS_60);
    let value = |name: &str| metric(&m, name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(
        value("usaged_ship_rows_total"),
        120.0,
        "{}",
        ship_metrics(&m)
    );
    assert!(value("usaged_ship_batches_total") >= 1.0);
    assert_eq!(
        value("usaged_ship_batch_duration_seconds_count"),
        value("usaged_ship_batches_total")
    );
    assert_eq!(value("usaged_ship_lag_seconds"), 0.0, "caught up");
    assert_eq!(value("usaged_ship_errors_total"), 0.0);
    book.check_table_live(&pg, &s, 0);
    assert_secret_kept(&pg, &[&s.log(), &m]);
    s.stop_ok();
    book.check_table_export(&pg, dir.path(), 0);
}

#[test]
fn server_killed_9_while_shipping_then_restarted() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    let dir = TempDir::new();
    let mut book = Book::default();
    for round in 0..3 {
        let mut s = serve(dir.path(), &pg, &[]);
        let mut c = s.conn();
        for _ in 0..4 {
            book.post(&mut c, 100);
        }
        // Round 1: the kill lands inside a batch (its INSERT waits on our lock).
        let lock = (round == 1).then(|| {
            let l = lock_usages(&pg);
            book.post(&mut c, 50);
            wait_blocked(&pg);
            l
        });
        book.post_unread(&c, 300);
        // Killed at once, or as it stores them (answers sent but not read: stored unanswered).
        std::thread::sleep(Duration::from_millis([0, 1, 20][round]));
        s.kill9();
        drop(lock);
    }
    let mut s = serve(dir.path(), &pg, &[]);
    book.post(&mut s.conn(), 100);
    let m = wait_caught_up(&s, SECS_60);
    book.check_table_live(&pg, &s, 0);
    assert_secret_kept(&pg, &[&s.log(), &m]);
    s.stop_ok();
    book.check_table_export(&pg, dir.path(), 0);
    println!(
        "{} acknowledged, {} stored unanswered",
        book.acked.len(),
        book.unacked_stored.len()
    );
}

#[test]
fn shipper_connection_cut_by_pg_terminate_backend() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    let dir = TempDir::new();
    let mut book = Book::default();
    let mut s = serve(dir.path(), &pg, &[]);
    let mut c = s.conn();
    book.post(&mut c, 100);
    wait_caught_up(&s, SECS_60);
    for round in 0..4 {
        book.post(&mut c, 200);
        if round % 2 == 0 {
            // Cut inside a batch: its INSERT waits on our lock.
            let lock = lock_usages(&pg);
            book.post(&mut c, 100);
            wait_blocked(&pg);
            assert!(pg.terminate_backends() >= 1, "no connection to cut");
            drop(lock);
        } else {
            // Cut wherever the shipper is.
            pg.terminate_backends();
        }
        book.post(&mut c, 100);
    }
    let m = wait_caught_up(&s, SECS_60);
    assert!(
        errors(&m) >= 1.0,
        "cut connections, no error counted:\n{}",
        ship_metrics(&m)
    );
    book.check_table_live(&pg, &s, 0);
    assert_secret_kept(&pg, &[&s.log(), &m]);
    s.stop_ok();
    book.check_table_export(&pg, dir.path(), 0);
}

#[test]
fn postgres_stopped_for_seconds_while_posting() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    let dir = TempDir::new();
    let mut book = Book::default();
    let flags = ["--shutdown-timeout", "3"];
    let mut s = serve(dir.path(), &pg, &flags);
    let mut c = s.conn();
    book.post(&mut c, 200);
    wait_caught_up(&s, SECS_60);

    pg.stop();
    // The server keeps storing usages; the shipper says it is behind and disconnected.
    post_for(&mut book, &mut c, Duration::from_secs(2));
    wait_until(
        SECS_20,
        "/metrics shows the shipper down and behind",
        || {
            let m = metrics(&s);
            metric(&m, "usaged_ship_connected") == Some(0.0)
                && metric(&m, "usaged_ship_lag_usages").is_some_and(|l| l > 0.0)
        },
    );
    // A restart while PostgreSQL is down: the server starts and stores all the same.
    drop(c);
    s.stop_ok();
    let first_log = s.log();
    let mut s = serve(dir.path(), &pg, &flags);
    let mut c = s.conn();
    post_for(&mut book, &mut c, Duration::from_secs(2));
    pg.start_again();
    book.post(&mut c, 100);
    let m = wait_caught_up(&s, SECS_60);
    assert!(errors(&m) >= 1.0, "no error counted:\n{}", ship_metrics(&m));
    book.check_table_live(&pg, &s, 0);
    assert_secret_kept(&pg, &[&first_log, &s.log(), &m]);
    s.stop_ok();
    book.check_table_export(&pg, dir.path(), 0);
}

#[test]
fn standalone_shipper_killed_9_and_restarted() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    let url = pg.url();
    let dir = TempDir::new();
    let mut book = Book::default();
    // The shipper's URL in the server's environment too (one environment for both): with
    // --ship-hold the server must not start a second shipper from it.
    let env = Wrap::Env(vec![("USAGED_SHIP_TO".into(), url.clone())]);
    let mut s = Usaged::up(env, &serve_args(dir.path(), 2, &["--ship-hold"]));
    assert!(
        !metrics(&s).contains("usaged_ship_rows_total"),
        "a shipper runs in a --ship-hold server"
    );
    let mut c = s.conn();
    let mut sh = Shipper::start(dir.path(), Some(&url), &[]);
    let mut logs = Vec::new();
    for round in 0..3 {
        book.post(&mut c, 300);
        if round == 1 {
            // Killed inside a batch: its INSERT waits on our lock.
            let lock = lock_usages(&pg);
            book.post(&mut c, 50);
            wait_blocked(&pg);
            sh.kill9();
            drop(lock);
        } else {
            sh.kill9();
        }
        logs.push(sh.log());
        // The last one takes the URL from the environment (kept out of `ps`).
        sh = if round < 2 {
            Shipper::start(dir.path(), Some(&url), &[])
        } else {
            Shipper::start(dir.path(), None, &[("USAGED_SHIP_TO", &url)])
        };
    }
    book.post(&mut c, 100);
    drop(c);
    s.stop_ok();
    let stored = exported(dir.path()).len();
    wait_until(
        SECS_60,
        "usaged ship has shipped every stored usage",
        || {
            pg.try_exec("SELECT count(*) FROM usages")
                .is_ok_and(|n| n.trim() == stored.to_string())
        },
    );
    book.check_table_export(&pg, dir.path(), 0);
    assert!(sh.alive(), "usaged ship exited:\n{}", sh.log());
    let st = sh.stop();
    assert!(
        st.success(),
        "usaged ship after SIGTERM: {st}\n{}",
        sh.log()
    );
    logs.push(sh.log());
    let logs: Vec<&str> = logs.iter().map(String::as_str).collect();
    assert_secret_kept(&pg, &logs);
}

#[test]
fn lag_shows_the_shipper_behind_while_a_batch_is_blocked() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    let dir = TempDir::new();
    let mut book = Book::default();
    let mut s = serve(dir.path(), &pg, &[]);
    let mut c = s.conn();
    book.post(&mut c, 10);
    wait_caught_up(&s, SECS_60);
    // A batch waits on our lock (a migration, a long transaction): nothing is shipped, so
    // /metrics must say the shipper is behind (lag above 0: at least the blocked batch's
    // usages), and for longer and longer.
    let lock = lock_usages(&pg);
    book.post(&mut c, 20);
    wait_blocked(&pg);
    book.post(&mut c, 30);
    let mut seen = (None, None);
    let limit = Instant::now() + Duration::from_secs(5);
    while Instant::now() < limit {
        let m = metrics(&s);
        seen = (
            metric(&m, "usaged_ship_lag_usages"),
            metric(&m, "usaged_ship_lag_seconds"),
        );
        if seen.0.is_some_and(|l| l > 0.0) && seen.1.is_some_and(|l| l >= 1.0) {
            break;
        }
        // Polling a gauge, bounded above.
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = metrics(&s);
    drop(lock);
    assert!(
        seen.0.is_some_and(|l| l > 0.0),
        "usages wait behind a blocked batch, lag 0:\n{}",
        ship_metrics(&m)
    );
    assert!(
        seen.1.is_some_and(|l| l >= 1.0),
        "the oldest has waited for seconds:\n{}",
        ship_metrics(&m)
    );
    wait_caught_up(&s, SECS_60);
    book.check_table_live(&pg, &s, 0);
    s.stop_ok();
}

/// The stripes `SHIPPED` in `dir` holds positions for (its entry count, bytes 16..20).
fn shipped_entries(dir: &Path) -> u32 {
    let b = std::fs::read(dir.join("SHIPPED")).expect("a SHIPPED file");
    u32::from_le_bytes(b[16..20].try_into().unwrap())
}

#[test]
fn shipped_follows_the_database_when_it_is_behind() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    let url = pg.url();
    let dir = TempDir::new();
    let mut book = Book::default();
    let mut s = Usaged::start(dir.path(), 2, &["--ship-hold"]);
    let mut c = s.conn();
    book.post(&mut c, 100);
    let mut sh = Shipper::start(dir.path(), Some(&url), &[]);
    wait_until(SECS_20, "usaged ship shipped 100", || {
        pg.try_exec("SELECT count(*) FROM usages")
            .is_ok_and(|n| n.trim() == "100")
    });
    sh.kill9();
    assert_eq!(
        shipped_entries(dir.path()),
        2,
        "SHIPPED after the first run"
    );
    // The database loses what was shipped (restored from a backup, a new one): the shipper
    // starts over, and until it has shipped again retention must not trust the old SHIPPED.
    pg.exec("TRUNCATE usages; DELETE FROM usaged_shipped;");
    // SHARE: the batch's COPY waits, the connection's CREATE INDEX IF NOT EXISTS does not.
    let mut lock = pg.session();
    lock.run("BEGIN; LOCK TABLE usages IN SHARE MODE;");
    let mut sh = Shipper::start(dir.path(), Some(&url), &[]);
    wait_blocked(&pg);
    let entries = shipped_entries(dir.path());
    drop(lock);
    assert_eq!(
        entries,
        0,
        "SHIPPED still says shipped what the database does not hold:\n{}",
        sh.log()
    );
    wait_until(SECS_20, "usaged ship shipped 100 again", || {
        pg.try_exec("SELECT count(*) FROM usages")
            .is_ok_and(|n| n.trim() == "100")
    });
    assert!(sh.stop().success(), "{}", sh.log());
    drop(c);
    s.stop_ok();
}

/// Retention never removes what the shipper has not committed: with PostgreSQL down, segments
/// past `--retain` stay (`usaged_retention_held_bytes`), each of their usages still reads
/// `200`; once the shipper has caught up, the table holds every one of them, and only then does
/// retention remove them (`410`).
#[test]
fn retention_keeps_what_is_not_shipped() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    let dir = TempDir::new();
    let mut book = Book::default();
    let flags = [
        "--retain",
        "1s",
        "--segment-size",
        "4KiB",
        "--shutdown-timeout",
        "3",
    ];
    let s = serve(dir.path(), &pg, &flags);
    let mut c = s.conn();
    book.post(&mut c, 50);
    wait_caught_up(&s, SECS_60);
    pg.stop();
    let held: BTreeSet<u64> = book.post(&mut c, 400).into_iter().collect();
    wait_until(SECS_20, "retention holds unshipped segments", || {
        metric(&metrics(&s), "usaged_retention_held_bytes").is_some_and(|b| b > 0.0)
    });
    // Retention has looked and kept them: every one still reads back.
    let got = get_all(&s, &held);
    assert_eq!(got.len(), held.len());
    pg.start_again();
    wait_caught_up(&s, SECS_60);
    let rows = book::table(&pg);
    let missing: Vec<&u64> = held.iter().filter(|id| !rows.contains_key(id)).collect();
    assert!(missing.is_empty(), "unshipped ids lost: {missing:?}");
    for (id, v) in &got {
        book::assert_row(&rows[id], v, 0);
    }
    // Shipped now: retention goes on, the oldest of them answer 410.
    let first = *held.first().unwrap();
    wait_until(SECS_20, "retention removes what was shipped", || {
        let mut c = s.conn();
        c.ask(&util::get(first), Duration::from_secs(10)).status == 410
    });
}

/// A cluster ships into one table: two nodes (`--nodes 2`) with `--ship-to` the same database;
/// every acknowledged usage of each is there once, with its node, equal to its node's `GET`,
/// and each node's positions are its own rows of `usaged_shipped`.
#[test]
fn two_nodes_ship_into_one_table() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start();
    let dirs = [TempDir::new(), TempDir::new()];
    let nodes: Vec<Usaged> = dirs
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let k = k.to_string();
            serve(
                d.path(),
                &pg,
                &["--nodes", "2", "--node", &k, "--cluster-base", "0"],
            )
        })
        .collect();
    let mut acked: [BTreeSet<u64>; 2] = Default::default();
    for (k, s) in nodes.iter().enumerate() {
        let mut book = Book::default();
        let mut c = s.conn();
        acked[k].extend(book.post(&mut c, 300));
    }
    for s in &nodes {
        wait_caught_up(s, SECS_60);
    }
    let rows = book::table(&pg);
    assert_eq!(rows.len(), 600, "one row per acknowledged usage");
    for (k, s) in nodes.iter().enumerate() {
        let got = get_all(s, &acked[k]);
        for (id, v) in &got {
            book::assert_row(&rows[id], v, k as u64);
        }
        let shipped = pg.scalar(&format!(
            "SELECT sum(shipped) FROM usaged_shipped WHERE node = {k}"
        ));
        assert_eq!(shipped, "300", "node {k}'s positions");
    }
}
