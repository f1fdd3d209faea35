//! The command line of the real binary: exit codes, `--help` and `--version`, and start-up
//! errors that name what failed.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_usaged");

/// A directory that does not exist yet, removed again by the caller.
fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("usaged-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Run `usaged ARGS` to its end; a run still going after 30 s is killed and fails the test
/// (it started when it should not have).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "usaged {args:?} still runs after 30 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_access_log_that_cannot_be_opened_is_named() {
    let dir = fresh_dir("access-log");
    let dir_arg = dir.display().to_string();
    let out = run(&[
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--threads",
        "1",
        "--no-pin",
        "--data-dir",
        &dir_arg,
        "--access-log",
        "/nonexistent-dir/x.log",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{:?}\n{err}", out.status);
    assert!(
        err.contains("--access-log /nonexistent-dir/x.log"),
        "stderr names neither the access log nor its path:\n{err}"
    );
    assert!(!err.contains("cannot listen"), "{err}");
}

#[test]
fn a_bad_flag_exits_2_before_the_data_directory_is_made() {
    let dir = fresh_dir("bad-flag");
    let dir_arg = dir.display().to_string();
    for bad in [
        &["--port", "0", "--data-dir", &dir_arg, "--segment-size", "1"][..],
        &[
            "--port",
            "0",
            "--data-dir",
            &dir_arg,
            "--drain-grace",
            "later",
        ],
        &["--data-dir", &dir_arg, "--port", "0", "--nope"],
        &[
            "--data-dir",
            &dir_arg,
            "--port",
            "0",
            "--threads",
            "4",
            "--cache",
            "8MiB",
        ],
        &[
            "--data-dir",
            &dir_arg,
            "--port",
            "0",
            "--nodes",
            "2",
            "--node",
            "2",
        ],
    ] {
        let out = run(bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{bad:?}: {err}");
        assert!(!dir.exists(), "{bad:?} made the data directory");
    }
}

#[test]
fn help_and_version_go_to_stdout_and_exit_0() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Each flag begins its own line (the hand-written help ran two together once).
    for line in help.lines() {
        assert!(line.matches(" --").count() <= 1, "{line:?} in\n{help}");
    }
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("--access-log <PATH>"))
    );
    let out = run(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        version.trim(),
        format!("usaged {}", env!("CARGO_PKG_VERSION"))
    );
}
