//! `usaged`: flags → config, recover the journal, start the workers, wait for SIGINT/SIGTERM,
//! drain, exit 0. `usaged export` prints the stored usages without a server; `usaged
//! haproxy-config` prints the HAProxy configuration for a cluster of nodes; `usaged ship`
//! ships a journal into PostgreSQL.
#![forbid(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use usaged::config::{self, Command, Config, ExportFormat, Url};
use usaged::metrics::{Disk, Metrics, Totals};
use usaged::server::{self, Running, signals};
use usaged::ship::pg::Target;
use usaged::ship::shipped::{Shared, ShipHold};
use usaged::ship::{self, Shipper};
use usaged::store::Store;
use usaged::store::arena::MIN_CACHE_PER_WORKER;
use usaged::store::export;
use usaged::store::open::{self, Opened};
use usaged::store::recover::Cluster;
use usaged::store::retention::{Hold, NoHold};

fn main() -> ExitCode {
    let env_port = std::env::var("PORT").ok();
    match config::parse(std::env::args().skip(1), env_port.as_deref()) {
        Ok(Command::Serve(mut config)) => match check_cache(&config).and_then(|()| {
            // With --ship-hold a `usaged ship` runs beside: $USAGED_SHIP_TO (set for it, maybe
            // in the same environment) must not start a second shipper here.
            if !config.ship_hold {
                config.ship_to = config.ship_to.take().or_else(env_ship_to);
            }
            ship_target(&config)
        }) {
            Ok(target) => done(serve(&config, target)),
            Err(e) => {
                eprintln!("usaged: {e}");
                ExitCode::from(2)
            }
        },
        Ok(Command::Export { data_dir, format }) => run_export(&data_dir, format),
        Ok(Command::HaproxyConfig(h)) => match usaged::cluster::render(&h) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("usaged haproxy-config: {e}");
                ExitCode::from(2)
            }
        },
        Ok(Command::Ship { data_dir, to, node }) => run_ship(&data_dir, to, node),
        Ok(Command::PrintSchema) => {
            print!("{}", ship::schema::DDL);
            ExitCode::SUCCESS
        }
        Ok(Command::Help(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        // Before anything is bound or opened.
        Err(e) => {
            eprintln!("usaged: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--cache` must give each worker at least [`MIN_CACHE_PER_WORKER`] (a usage error: exit 2,
/// before anything is bound or opened).
fn check_cache(config: &Config) -> Result<(), String> {
    let workers = server::worker_count(config) as u64;
    let least = MIN_CACHE_PER_WORKER * workers;
    if config.cache_bytes < least {
        return Err(format!(
            "--cache {} is too small for {workers} workers (at least {})",
            config::units::format_size(config.cache_bytes),
            config::units::format_size(least)
        ));
    }
    Ok(())
}

/// Exit 0, or name what failed and exit 1.
fn done(served: Result<(), String>) -> ExitCode {
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usaged: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `$USAGED_SHIP_TO`, if set and not empty.
fn env_ship_to() -> Option<Url> {
    std::env::var("USAGED_SHIP_TO")
        .ok()
        .filter(|u| !u.is_empty())
        .map(Url)
}

/// The database of `--ship-to` (or `$USAGED_SHIP_TO`), parsed (a usage error if it is bad,
/// or if there is no journal to ship).
fn ship_target(config: &Config) -> Result<Option<Target>, String> {
    let Some(url) = &config.ship_to else {
        return Ok(None);
    };
    if config.in_memory {
        return Err("--ship-to needs a journal: it cannot go with --in-memory".into());
    }
    Target::parse(&url.0)
        .map(Some)
        .map_err(|e| format!("--ship-to: {e}"))
}

/// What retention must keep for a shipper: the one in this process (`--ship-to`), one beside
/// it (`--ship-hold`: its `SHIPPED` file), or nothing.
fn hold(config: &Config, shared: &Shared) -> Arc<dyn Hold> {
    if config.ship_to.is_some() {
        Arc::new(ShipHold::InProcess(Arc::clone(shared)))
    } else if config.ship_hold {
        Arc::new(ShipHold::File(config.data_dir.clone()))
    } else {
        Arc::new(NoHold)
    }
}

/// Start, serve until SIGINT/SIGTERM, drain. Each error names what failed.
fn serve(config: &Config, target: Option<Target>) -> Result<(), String> {
    abort_on_panic();
    signals::block_shutdown_signals().map_err(|e| format!("cannot block shutdown signals: {e}"))?;
    let nofile = raise_open_files();
    // Before the journal is touched: two servers on one port would hand out the same ids.
    let addr = SocketAddr::new(config.bind, config.port);
    server::listener::ensure_free(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let opened = open_store(config)?;
    let shared = Shared::default();
    // Stopped (and joined) when dropped, after the workers.
    let retainer = open::retention(&opened, &journal(config), hold(config, &shared))?;
    let Opened {
        store,
        writers,
        journals,
        segments,
        marks: _,
        lock: _lock,
    } = opened;
    let disk = segments.as_ref().map(|s| Disk {
        segments: Arc::clone(s),
        retention: retainer.as_ref().map(|r| Arc::clone(&r.stats)),
    });
    let stats_store = Arc::clone(&store);
    let running = server::start(config, store, writers, journals, segments)?;
    if let Some(d) = disk {
        running.metrics.set_disk(d);
    }
    let mut shipper = match target {
        Some(target) => {
            let opt = ship::Options {
                dir: config.data_dir.clone(),
                target,
                node: config.node,
                status_every: None,
            };
            let s = Shipper::start(opt, shared)
                .map_err(|e| format!("cannot start the shipper thread: {e}"))?;
            running.metrics.set_ship(Arc::clone(&s.stats));
            Some(s)
        }
        None => None,
    };
    print_node(&stats_store);
    print_started(config, &running, &nofile);
    if let Some(every) = config.stats {
        let metrics = Arc::clone(&running.metrics);
        std::thread::spawn(move || status_lines(&metrics, &stats_store, every));
    }
    match signals::wait_for_shutdown() {
        Ok(sig) => eprintln!("usaged: signal {sig}, draining"),
        Err(e) => eprintln!("usaged: sigwait failed: {e}; shutting down"),
    }
    // The whole stop, the shipper's last batch included, keeps within grace + timeout.
    let stop_by = Instant::now() + config.drain_grace + config.shutdown_timeout;
    // Retention first: it must not remove what the stop's last seals leave, nor outlive the
    // directory's lock.
    if let Some(mut r) = retainer {
        r.stop();
    }
    running.stop();
    // After the journal threads: the last records are in the files.
    if let Some(s) = &mut shipper
        && !s.stop(stop_by.max(Instant::now() + Duration::from_millis(100)))
    {
        eprintln!("usaged: ship: stopped before the last batch was committed");
    }
    eprintln!("usaged: stopped");
    Ok(())
}

/// A worker that dies must take the process with it, not leave a core unserved.
fn abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
}

/// Raise the open-file limit to its hard limit; what it is now, for the start line.
fn raise_open_files() -> String {
    match server::rlimit::raise_open_files() {
        Ok((before, after)) if before < after => format!("{after} (raised from {before})"),
        Ok((_, after)) => after.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The store, with one stripe per worker: recovered from `--data-dir`, or empty with
/// `--in-memory`.
fn open_store(config: &Config) -> Result<Opened, String> {
    let stripes = server::worker_count(config) as u32;
    if config.in_memory {
        let c = cluster(config);
        return Ok(open::in_memory_node(c, stripes, config.cache_bytes));
    }
    open::journaled(stripes, &journal(config))
}

/// What the journal is opened with.
fn journal(config: &Config) -> open::Journal<'_> {
    open::Journal {
        dir: &config.data_dir,
        repair: config.repair,
        sync: config.sync,
        segment_bytes: config.segment_bytes,
        cache_bytes: config.cache_bytes,
        retain: config.retain,
        retain_bytes: config.retain_bytes,
        cluster: cluster(config),
    }
}

/// `--nodes`, `--node`, `--cluster-base`.
fn cluster(config: &Config) -> Cluster {
    Cluster {
        nodes: config.nodes,
        node: config.node,
        base: config.cluster_base,
    }
}

/// The start lines on stderr: the settings in force, then `listening on ADDR` (which test
/// harnesses wait for).
fn print_started(config: &Config, running: &Running, nofile: &str) {
    let cpus: Vec<String> = running
        .cpus
        .iter()
        .map(|c| c.map_or("-".into(), |c| c.to_string()))
        .collect();
    let data = if config.in_memory {
        "in memory (no journal)".to_string()
    } else {
        format!(
            "journal in {} (sync {:?})",
            config.data_dir.display(),
            config.sync
        )
    };
    eprintln!(
        "usaged: {} workers on CPUs [{}]; open files {}; max {} connections per worker; \
         max body {} B, max header {} B; timeouts: header {:?}, body {:?}, idle {:?}, write {:?}, \
         shutdown {:?}; {data}",
        running.workers,
        cpus.join(","),
        nofile,
        running.max_conns,
        config.max_body,
        config.max_header,
        config.header_timeout,
        config.body_timeout,
        config.idle_timeout,
        config.write_timeout,
        config.shutdown_timeout,
    );
    eprintln!(
        "listening on {} ({} workers)",
        running.addr, running.workers
    );
}

/// In a cluster: the node, the owner rule of its epoch and the ids it has left (stderr).
fn print_node(store: &Store) {
    let l = store.layout();
    let Some(&(base, _)) = store.epochs().last() else {
        return;
    };
    if l.nodes > 1 {
        let left = usaged::store::ids::MAX_ID.saturating_sub(base) / u64::from(l.nodes);
        eprintln!(
            "usaged: node {} of {}: ids with (id - {} - 1) mod {} = {}; {left} ids left to 2^53",
            l.node, l.nodes, base, l.nodes, l.node
        );
    }
}

/// `--stats`: one line to stderr every `every`, about the interval just ended.
fn status_lines(m: &Metrics, store: &Store, every: Duration) {
    let mut last = m.totals();
    loop {
        std::thread::sleep(every);
        let now = m.totals();
        let (b0, b1) = (last.buckets(), now.buckets());
        let delta: [u64; 15] = std::array::from_fn(|i| b1[i] - b0[i]);
        let ms = |q| {
            Totals::quantile(&delta, q)
                .map_or("-".to_string(), |s: f64| format!("{:.3} ms", s * 1e3))
        };
        eprintln!(
            "usaged: {:.0} req/s, p50 \u{2264} {}, p99 \u{2264} {}, {} connections, {} errors, {} usages stored",
            (now.requests() - last.requests()) as f64 / every.as_secs_f64(),
            ms(0.5),
            ms(0.99),
            now.open_connections(),
            now.errors() - last.errors(),
            store.len()
        );
        last = now;
    }
}

/// `usaged export`: every stored usage in id order, read-only; exit 1 if corruption was
/// skipped (what could be read is still printed).
fn run_export(dir: &Path, format: ExportFormat) -> ExitCode {
    let r = match export::read(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("usaged export: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &r.warnings {
        eprintln!("usaged export: warning: {w}");
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let written =
        export::write(&r.segments, &r.store.epochs(), format, &mut out).and_then(|_| out.flush());
    if let Err(e) = written {
        // A closed pipe (`| head`) is not worth a line; anything else is.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("usaged export: {e}");
        }
        return ExitCode::FAILURE;
    }
    if r.corrupt {
        eprintln!("usaged export: the journal has corrupt records (see the warnings); exit 1");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `usaged ship`: ship `dir`'s journal into PostgreSQL until SIGINT/SIGTERM (then the last
/// batch, for up to 10 s); a status line every 10 s.
fn run_ship(dir: &Path, to: Option<Url>, node: Option<u32>) -> ExitCode {
    let shipped = (|| {
        let url = to
            .or_else(env_ship_to)
            .ok_or("no database: give --to URL or set USAGED_SHIP_TO")?;
        let target = Target::parse(&url.0)?;
        let node = match node {
            Some(n) => n,
            None => ship::node_of(dir)?,
        };
        if !dir.is_dir() {
            return Err(format!("no data directory {}", dir.display()));
        }
        signals::block_shutdown_signals()
            .map_err(|e| format!("cannot block shutdown signals: {e}"))?;
        eprintln!(
            "usaged ship: {} as node {node} into {}",
            dir.display(),
            target.label
        );
        let opt = ship::Options {
            dir: dir.to_path_buf(),
            target,
            node,
            status_every: Some(Duration::from_secs(10)),
        };
        let mut s = Shipper::start(opt, Shared::default())
            .map_err(|e| format!("cannot start the shipper thread: {e}"))?;
        let sig = signals::wait_for_shutdown().map_err(|e| format!("sigwait failed: {e}"))?;
        eprintln!("usaged ship: signal {sig}, stopping");
        s.stop(Instant::now() + Duration::from_secs(10));
        Ok::<(), String>(())
    })();
    match shipped {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usaged ship: {e}");
            ExitCode::FAILURE
        }
    }
}
