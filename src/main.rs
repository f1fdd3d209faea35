//! `usaged`: flags → config, recover the journal, start the workers, wait for SIGINT/SIGTERM,
//! drain, exit 0. `usaged export` prints the stored usages without a server.
#![forbid(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use usaged::config::{self, Command, Config, ExportFormat};
use usaged::server::{self, signals};
use usaged::store::committer;
use usaged::store::journal::{self, Header};
use usaged::store::recover::{self, Options};
use usaged::store::{Store, StripeWriter};

fn main() -> ExitCode {
    let env_port = std::env::var("PORT").ok();
    let config = match config::parse(std::env::args().skip(1), env_port.as_deref()) {
        Ok(Command::Serve(c)) => c,
        Ok(Command::Export { data_dir, format }) => return export(&data_dir, format),
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("usaged: {e}");
            return ExitCode::from(2);
        }
    };
    // A worker that dies must take the process with it, not leave a core unserved.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    if let Err(e) = signals::block_shutdown_signals() {
        eprintln!("usaged: cannot block shutdown signals: {e}");
        return ExitCode::FAILURE;
    }
    let nofile = match server::rlimit::raise_open_files() {
        Ok((before, after)) if before < after => format!("{after} (raised from {before})"),
        Ok((_, after)) => after.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    // Before the journal is touched: two servers on one port would hand out the same ids.
    let addr = std::net::SocketAddr::new(config.bind, config.port);
    if let Err(e) = server::listener::ensure_free(addr) {
        eprintln!("usaged: cannot listen on {addr}: {e}");
        return ExitCode::FAILURE;
    }
    let (store, writers, journals) = match open_store(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("usaged: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stats_store = Arc::clone(&store);
    let running = match server::start(&config, store, writers, journals) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("usaged: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    if let Some(every) = config.stats {
        let (metrics, store) = (Arc::clone(&running.metrics), stats_store);
        std::thread::spawn(move || status_lines(&metrics, &store, every));
    }
    match signals::wait_for_shutdown() {
        Ok(sig) => eprintln!("usaged: signal {sig}, draining"),
        Err(e) => eprintln!("usaged: sigwait failed: {e}; shutting down"),
    }
    running.stop();
    eprintln!("usaged: stopped");
    ExitCode::SUCCESS
}

/// `--stats`: one line to stderr every `every`, about the interval just ended.
fn status_lines(m: &usaged::metrics::Metrics, store: &Store, every: std::time::Duration) {
    use usaged::metrics::Totals;
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

/// The store, one writer per worker and where each worker's journal continues: recovered
/// from the journal, or empty and without one with `--in-memory`.
type Opened = (Arc<Store>, Vec<StripeWriter>, Option<Vec<committer::Setup>>);

fn open_store(config: &Config) -> Result<Opened, String> {
    let stripes = server::worker_count(config) as u32;
    if config.in_memory {
        let store = Arc::new(Store::new(stripes));
        let writers = (0..stripes).map(|s| store.writer(s)).collect();
        return Ok((store, writers, None));
    }
    let dir = &config.data_dir;
    journal::ensure_dir(dir)
        .map_err(|e| format!("cannot create --data-dir {}: {e}", dir.display()))?;
    // One server per data directory: a second one would hand out the same ids.
    let lock = std::fs::File::create(dir.join("LOCK"))
        .map_err(|e| format!("{}: {e}", dir.join("LOCK").display()))?;
    if lock.try_lock().is_err() {
        return Err(format!(
            "another usaged is using --data-dir {}",
            dir.display()
        ));
    }
    // Held (and locked) until the process exits.
    std::mem::forget(lock);
    let r = recover::recover(
        dir,
        Options {
            stripes,
            repair: config.repair,
            read_only: false,
        },
    )?;
    for w in &r.warnings {
        eprintln!("usaged: warning: {w}");
    }
    let secs = r.elapsed.as_secs_f64();
    eprintln!(
        "usaged: recovered {} usages from {} in {:.3} s ({:.1}M records/s)",
        r.records,
        dir.display(),
        secs,
        r.records as f64 / secs.max(1e-9) / 1e6
    );
    let journals = r
        .journals
        .iter()
        .enumerate()
        .map(|(s, c)| committer::Setup {
            dir: dir.clone(),
            header: Header {
                stripes,
                stripe: s as u32,
                base: r.base,
            },
            seq: c.seq,
            sync: config.sync,
            segment_bytes: config.segment_bytes,
            lease: c.lease,
            last_id: c.last_id,
            worker: s,
        })
        .collect();
    Ok((r.store, r.writers, Some(journals)))
}

/// `usaged export`: every stored usage in id order, read-only; exit 1 if corruption was
/// skipped (what could be read is still printed).
fn export(dir: &Path, format: ExportFormat) -> ExitCode {
    let r = match recover::recover(
        dir,
        Options {
            stripes: 1,
            repair: false,
            read_only: true,
        },
    ) {
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
    let mut line = Vec::with_capacity(1024);
    if format == ExportFormat::Csv {
        line.extend_from_slice(b"id,patientId,timestamp,medication\n");
    }
    let store = &r.store;
    for (e, (base, stripes)) in store.epochs().into_iter().enumerate() {
        let ranges: Vec<_> = (0..stripes).map(|s| store.stripe_slots(e, s)).collect();
        let first = ranges.iter().map(|r| r.start).min().unwrap_or(0);
        let end = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        for slot in first..end {
            for s in 0..stripes {
                if !ranges[s as usize].contains(&slot) {
                    continue;
                }
                let id = base + usaged::store::ids::id_of(s, slot, stripes);
                let Some(u) = store.get(id) else {
                    continue;
                };
                match format {
                    ExportFormat::Ndjson => {
                        usaged::app::usages::write_json(&mut line, id, &u);
                        line.push(b'\n');
                    }
                    ExportFormat::Csv => usaged::app::usages::write_csv(&mut line, id, &u),
                }
                if line.len() >= 1 << 15 {
                    if out.write_all(&line).is_err() {
                        return ExitCode::FAILURE;
                    }
                    line.clear();
                }
            }
        }
    }
    if out.write_all(&line).and_then(|_| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    if r.corrupt {
        eprintln!("usaged export: the journal has corrupt records (see the warnings); exit 1");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
