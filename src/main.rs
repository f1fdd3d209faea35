//! `usaged`: flags → config, start the workers, wait for SIGINT/SIGTERM, drain, exit 0.

use std::process::ExitCode;

use usaged::config::{self, Command};
use usaged::server::{self, signals};

fn main() -> ExitCode {
    let env_port = std::env::var("PORT").ok();
    let config = match config::parse(std::env::args().skip(1), env_port.as_deref()) {
        Ok(Command::Serve(c)) => c,
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
    let running = match server::start(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "usaged: cannot listen on {}:{}: {e}",
                config.bind, config.port
            );
            return ExitCode::FAILURE;
        }
    };
    let cpus: Vec<String> = running
        .cpus
        .iter()
        .map(|c| c.map_or("-".into(), |c| c.to_string()))
        .collect();
    eprintln!(
        "usaged: {} workers on CPUs [{}]; open files {}; max {} connections per worker; \
         max body {} B, max header {} B; timeouts: header {:?}, body {:?}, idle {:?}, write {:?}, \
         shutdown {:?}",
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
    match signals::wait_for_shutdown() {
        Ok(sig) => eprintln!("usaged: signal {sig}, draining"),
        Err(e) => eprintln!("usaged: sigwait failed: {e}; shutting down"),
    }
    running.stop();
    eprintln!("usaged: stopped");
    ExitCode::SUCCESS
}
