//! A private PostgreSQL cluster for the database-sink tests (`tests/ship.rs`): `initdb` in a
//! temporary directory, `pg_ctl start` listening on a Unix socket in that directory only (no TCP),
//! password authentication, a `psql` to query it, stop/start and `pg_terminate_backend` for the
//! faults, and a `Drop` that stops the cluster and removes the directory.
//!
//! The binaries are found in `/usr/lib/postgresql/<version>/bin` (Debian's layout; `.ci/run`
//! installs the `postgresql` package), newest version first, or in `$USAGED_PG_BIN`. PostgreSQL
//! refuses to run as root: when the tests run as root, every PostgreSQL program is started
//! through `runuser -u postgres --` (or `nobody` where there is no `postgres` user) and the
//! directory is given to that user; otherwise they run as the current user.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// The database user the tests and the shipper connect as.
pub const USER: &str = "usaged";
/// The `application_name` of the harness's own connections (never terminated by the harness).
const APP: &str = "usaged-pgtest";
/// Longest wait for `pg_ctl start`/`stop` (its `-t`), and for a query.
const PG_WAIT_S: u32 = 60;

/// A running (or stopped) private cluster.
pub struct Pg {
    bin: PathBuf,
    /// Holds `data/` (the cluster), the socket, `log` and `pwfile`.
    dir: PathBuf,
    password: String,
    /// `runuser -u USER --` prefix when running as root.
    run_as: Option<String>,
}

/// Where PostgreSQL's programs are: `$USAGED_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` with an `initdb`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("USAGED_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// The PostgreSQL programs, or a panic that says how to get them (a test that needs them
/// fails where they are missing: CI installs them), unless `USAGED_SKIP_POSTGRES=1`.
pub fn have_postgres() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if std::env::var("USAGED_SKIP_POSTGRES").as_deref() == Ok("1") {
        println!("SKIPPED: PostgreSQL is not installed and USAGED_SKIP_POSTGRES=1");
        return false;
    }
    panic!(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no $USAGED_PG_BIN): \
         .ci/run installs it (apt-get install postgresql); set USAGED_SKIP_POSTGRES=1 to skip"
    );
}

/// Whether this process runs as root (then PostgreSQL must run as another user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The user PostgreSQL runs as when the tests run as root: `postgres` (Debian's package makes
/// it), else `nobody`.
fn unprivileged_user() -> String {
    let has = |u: &str| {
        Command::new("id")
            .arg(u)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has("postgres") {
        "postgres"
    } else {
        "nobody"
    }
    .to_string()
}

impl Pg {
    /// `initdb` a fresh cluster in a new temporary directory and start it.
    pub fn start() -> Pg {
        static N: AtomicUsize = AtomicUsize::new(0);
        let bin = bin_dir().expect("PostgreSQL binaries (see have_postgres)");
        let dir = std::env::temp_dir().join(format!(
            "usaged-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let password = format!("pw-{}-{}", std::process::id(), dir_tag(&dir));
        std::fs::write(dir.join("pwfile"), format!("{password}\n")).unwrap();
        let run_as = is_root().then(unprivileged_user);
        if let Some(user) = &run_as {
            let ok = Command::new("chown")
                .args(["-R", user])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {user} {}", dir.display());
        }
        let pg = Pg {
            bin,
            dir,
            password,
            run_as,
        };
        let out = pg.program("initdb", |c| {
            c.args(["-D"])
                .arg(pg.data())
                .args(["-U", USER, "-A", "scram-sha-256", "--no-sync", "-E", "UTF8"])
                .args(["--no-locale", "--pwfile"])
                .arg(pg.dir.join("pwfile"));
        });
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        pg.start_again();
        pg
    }

    /// `pg_ctl start`, returning once the server accepts connections (`pg_ctl -w`, bounded).
    pub fn start_again(&self) {
        // Unix socket in our directory only; durability off (the cluster is thrown away; a
        // clean `stop` still writes everything).
        let opts = format!(
            "-c listen_addresses='' -k {} -c fsync=off -c full_page_writes=off \
             -c synchronous_commit=off -c max_connections=50",
            self.dir.display()
        );
        let out = self.program("pg_ctl", |c| {
            c.args(["start", "-w", "-t", &PG_WAIT_S.to_string(), "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-o", &opts]);
        });
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            text(&out),
            self.log()
        );
        // pg_ctl -w waited for the server to accept connections; prove it with a query.
        assert_eq!(self.scalar("SELECT 1"), "1", "a first query");
    }

    /// `pg_ctl stop -m fast`: connections are cut, the server shuts down cleanly.
    pub fn stop(&self) {
        let out = self.program("pg_ctl", |c| {
            c.args([
                "stop",
                "-w",
                "-m",
                "fast",
                "-t",
                &PG_WAIT_S.to_string(),
                "-D",
            ])
            .arg(self.data());
        });
        assert!(out.status.success(), "pg_ctl stop failed: {}", text(&out));
    }

    /// The directory that holds everything (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The password of [`USER`]: tests check it never shows in what usaged prints.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A `postgres://` URL for the shipper: user, password, the socket directory
    /// (percent-encoded, as the host), database `postgres`.
    pub fn url(&self) -> String {
        let host: String = self
            .dir
            .display()
            .to_string()
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("postgres://{USER}:{}@{host}/postgres", self.password)
    }

    /// Run a PostgreSQL program (`runuser -u USER --` first when root), to its end.
    fn program(&self, name: &str, args: impl FnOnce(&mut Command)) -> Output {
        let mut c = self.command(name);
        args(&mut c);
        c.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"))
    }

    fn command(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        let mut c = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        // Keep the caller's locale and PG* variables out of it.
        // The directory is the one the unprivileged user may enter.
        c.current_dir(&self.dir)
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGDATABASE")
            .env_remove("PGUSER")
            .env("LC_ALL", "C");
        c
    }

    /// `psql` on the cluster (as [`USER`], quiet, unaligned, tuples only, no `.psqlrc`) with
    /// the harness's `application_name`.
    fn psql(&self) -> Command {
        self.psql_as(APP)
    }

    /// As [`Pg::psql`] with `application_name` `app` (another than the harness's is cut by
    /// [`Pg::terminate_backends`]).
    pub fn psql_as(&self, app: &str) -> Command {
        // psql needs no privilege: it runs as whoever runs the tests.
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-U", USER, "-d", "postgres"])
            .env("PGPASSWORD", &self.password)
            .env("PGAPPNAME", app)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("LC_ALL", "C");
        c
    }

    /// Run `sql` (one or more statements); panics with psql's error if it fails.
    pub fn exec(&self, sql: &str) -> String {
        match self.try_exec(sql) {
            Ok(out) => out,
            Err(e) => panic!("psql failed on {sql:?}: {e}"),
        }
    }

    /// Run `sql`: what psql printed, or its error.
    pub fn try_exec(&self, sql: &str) -> Result<String, String> {
        let mut child = self
            .psql()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .expect("write to psql");
        let out = child.wait_with_output().expect("psql output");
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).expect("psql prints UTF-8"))
        } else {
            Err(text(&out))
        }
    }

    /// One value of a one-row, one-column query, as psql prints it.
    pub fn scalar(&self, sql: &str) -> String {
        self.exec(sql).trim_end_matches('\n').to_string()
    }

    /// Each row of `query` (a `SELECT`) as a JSON object keyed by column name (`row_to_json`).
    pub fn rows(&self, query: &str) -> Vec<serde_json::Value> {
        self.exec(&format!("SELECT row_to_json(q) FROM ({query}) q"))
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("row {l:?} of {query:?}: {e}"))
            })
            .collect()
    }

    /// `pg_terminate_backend` every client connection but the harness's own: the shipper's
    /// database connections are cut. How many were.
    pub fn terminate_backends(&self) -> usize {
        self.terminate_where("true")
    }

    /// As [`Pg::terminate_backends`], only connections whose `pg_stat_activity` row satisfies
    /// `condition` (SQL).
    pub fn terminate_where(&self, condition: &str) -> usize {
        self.scalar(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND application_name NOT LIKE '{APP}%' AND ({condition})"
        ))
        .parse()
        .unwrap()
    }

    /// Client connections other than the harness's.
    pub fn clients(&self) -> usize {
        self.scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND application_name NOT LIKE '{APP}%'"
        ))
        .parse()
        .unwrap()
    }

    /// A psql session kept open (for a transaction that holds a lock while a test acts).
    pub fn session(&self) -> Session {
        let mut child = self
            .psql_as(&format!("{APP}-session"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run psql");
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Session {
            child,
            stdin: Some(stdin),
            lines: rx,
        }
    }
}

/// An open psql session: statements run in order; [`Session::run`] waits for them.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Session {
    /// Run `sql` and wait (at most 60 s) until it has run.
    pub fn run(&mut self, sql: &str) {
        let stdin = self.stdin.as_mut().expect("session open");
        write!(stdin, "{sql}\nSELECT 'usaged-pgtest-done';\n").expect("write to psql");
        stdin.flush().unwrap();
        loop {
            match self
                .lines
                .recv_timeout(Duration::from_secs(u64::from(PG_WAIT_S)))
            {
                Ok(l) if l == "usaged-pgtest-done" => return,
                Ok(_) => {}
                Err(e) => panic!("psql session: no answer to {sql:?} ({e})"),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // EOF ends psql (an open transaction is rolled back).
        drop(self.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.program("pg_ctl", |c| {
            c.args(["stop", "-w", "-m", "immediate", "-t", "30", "-D"])
                .arg(self.data());
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dir_tag(dir: &Path) -> String {
    dir.file_name()
        .unwrap()
        .to_string_lossy()
        .rsplit('-')
        .next()
        .unwrap()
        .to_string()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
