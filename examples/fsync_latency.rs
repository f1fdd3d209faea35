//! How long an `fdatasync` takes where the journal lives: append a small record to a file in
//! `--dir`, `fdatasync` it, and time the pair, `--count` times (the first 10 are a warm-up and
//! are not counted). This is what `--sync always` waits for once per batch, so a closed-loop
//! client with C connections cannot get more than C ÷ this latency requests per second.
//!
//! usage: fsync_latency [--dir DIR] [--count N] [--bytes B]
//! prints: syncs=… bytes=… median_us=… p90_us=… p99_us=… max_us=…

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

const WARM_UP: usize = 10;

fn main() {
    let mut dir = PathBuf::from(".");
    let mut count = 1000usize;
    let mut bytes = 128usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("fsync_latency: {flag} needs a value");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--dir" => dir = PathBuf::from(value()),
            "--count" => count = number(&flag, &value()),
            "--bytes" => bytes = number(&flag, &value()),
            _ => {
                eprintln!("usage: fsync_latency [--dir DIR] [--count N] [--bytes B]");
                std::process::exit(2)
            }
        }
    }
    let path = dir.join(format!("fsync-latency.{}.tmp", std::process::id()));
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| {
            eprintln!("fsync_latency: cannot create {}: {e}", path.display());
            std::process::exit(1)
        });
    let record = vec![0x5a; bytes];
    let mut took = Vec::with_capacity(count);
    for i in 0..count + WARM_UP {
        let t = Instant::now();
        let done = f.write_all(&record).and_then(|_| f.sync_data());
        let us = t.elapsed().as_secs_f64() * 1e6;
        if let Err(e) = done {
            let _ = std::fs::remove_file(&path);
            eprintln!("fsync_latency: write or fdatasync failed: {e}");
            std::process::exit(1);
        }
        if i >= WARM_UP {
            took.push(us);
        }
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    println!(
        "syncs={count} bytes={bytes} median_us={:.1} p90_us={:.1} p99_us={:.1} max_us={:.1}",
        at(0.5),
        at(0.9),
        at(0.99),
        took[took.len() - 1]
    );
}

fn number(flag: &str, v: &str) -> usize {
    match v.parse() {
        Ok(n) if n > 0 => n,
        _ => {
            eprintln!("fsync_latency: {flag} wants a positive number, not {v:?}");
            std::process::exit(2)
        }
    }
}
