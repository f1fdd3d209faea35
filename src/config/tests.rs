use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn serve(s: &str, env_port: Option<&str>) -> Config {
    match parse(args(s), env_port) {
        Ok(Command::Serve(c)) => *c,
        other => panic!("{s}: {other:?}"),
    }
}

#[test]
fn defaults_env_and_flags() {
    assert_eq!(parse(args(""), None), Ok(Command::Serve(Box::default())));
    let d = Config::default();
    assert_eq!(
        (
            d.bind,
            d.port,
            d.threads,
            d.pin,
            d.max_body,
            d.max_header,
            d.max_conns
        ),
        (
            IpAddr::from([0, 0, 0, 0]),
            3000,
            None,
            true,
            65536,
            8192,
            None
        )
    );
    assert_eq!(
        (
            d.header_timeout,
            d.body_timeout,
            d.idle_timeout,
            d.write_timeout
        ),
        (
            Duration::from_secs(10),
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(30)
        )
    );
    assert_eq!(
        (d.shutdown_timeout, d.drain_grace, d.segment_bytes),
        (
            Duration::from_secs(10),
            Duration::ZERO,
            crate::store::journal::SEGMENT_BYTES
        )
    );
    assert_eq!(
        (
            &d.data_dir,
            d.in_memory,
            d.sync,
            d.repair,
            d.stats,
            &d.access_log
        ),
        (
            &PathBuf::from("usaged-data"),
            false,
            SyncMode::Interval,
            false,
            None,
            &None
        )
    );
    assert_eq!(serve("", Some("8080")).port, 8080);
    let c = serve(
        "--port 0 --threads 4 --no-pin --bind 127.0.0.1 --max-body=10 --max-header 1024",
        Some("8080"),
    );
    assert_eq!(
        (c.port, c.threads, c.pin, c.max_body, c.max_header),
        (0, Some(4), false, 10, 1024)
    );
    assert_eq!(c.bind, IpAddr::from([127, 0, 0, 1]));
    let c = serve(
        "--header-timeout 0.5 --max-conns 7 --shutdown-timeout=2",
        None,
    );
    assert_eq!(
        (c.header_timeout, c.max_conns, c.shutdown_timeout),
        (Duration::from_millis(500), Some(7), Duration::from_secs(2))
    );
    let c = serve(
        "--sync always --segment-size 4096 --in-memory --repair --stats 1 --drain-grace 2 \
         --access-log - --data-dir /d --body-timeout 3 --idle-timeout 4 --write-timeout 5",
        None,
    );
    assert_eq!(
        (
            c.sync,
            c.segment_bytes,
            c.in_memory,
            c.repair,
            c.stats,
            c.drain_grace
        ),
        (
            SyncMode::Always,
            4096,
            true,
            true,
            Some(Duration::from_secs(1)),
            Duration::from_secs(2)
        )
    );
    assert_eq!(
        (c.access_log, c.data_dir),
        (Some(PathBuf::from("-")), PathBuf::from("/d"))
    );
    assert_eq!(
        (c.body_timeout, c.idle_timeout, c.write_timeout),
        (
            Duration::from_secs(3),
            Duration::from_secs(4),
            Duration::from_secs(5)
        )
    );
    // The last of a repeated flag wins (test harnesses append to their defaults).
    assert_eq!(serve("--threads 4 --threads 1", None).threads, Some(1));
    assert_eq!(serve("--sync never", None).sync, SyncMode::Never);
}

#[test]
fn export_help_and_version() {
    assert_eq!(
        parse(args("export"), None),
        Ok(Command::Export {
            data_dir: PathBuf::from("usaged-data"),
            format: ExportFormat::Ndjson
        })
    );
    assert_eq!(
        parse(args("export --data-dir=/x --format csv"), None),
        Ok(Command::Export {
            data_dir: PathBuf::from("/x"),
            format: ExportFormat::Csv
        })
    );
    for a in ["--help", "-h", "export --help"] {
        let Ok(Command::Help(text)) = parse(args(a), None) else {
            panic!("{a}")
        };
        assert!(text.contains("--data-dir <DIR>"), "{a}: {text}");
    }
    let Ok(Command::Help(v)) = parse(args("--version"), None) else {
        panic!()
    };
    assert_eq!(v.trim(), format!("usaged {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_each_flag_on_its_own_line() {
    let Ok(Command::Help(text)) = parse(args("--help"), None) else {
        panic!()
    };
    let flags: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().take(2).find(|w| w.starts_with("--")))
        .collect();
    for f in [
        "--bind",
        "--port",
        "--threads",
        "--no-pin",
        "--max-body",
        "--max-header",
        "--max-conns",
        "--header-timeout",
        "--body-timeout",
        "--idle-timeout",
        "--write-timeout",
        "--shutdown-timeout",
        "--drain-grace",
        "--data-dir",
        "--in-memory",
        "--sync",
        "--segment-size",
        "--cache",
        "--retain",
        "--retain-bytes",
        "--repair",
        "--stats",
        "--access-log",
        "--node",
        "--nodes",
        "--cluster-base",
        "--version",
    ] {
        assert_eq!(flags.iter().filter(|&&g| g == f).count(), 1, "{f}:\n{text}");
    }
    assert!(text.contains("export"), "{text}");
}

#[test]
fn errors_name_the_flag() {
    for (input, needle) in [
        ("--port 70000", "--port"),
        ("--port", "--port"),
        ("--port -1", "--port"),
        ("--threads 0", "--threads"),
        ("--bind nowhere", "--bind"),
        ("--max-body -1", "--max-body"),
        ("--frobnicate", "--frobnicate"),
        ("--header-timeout 0", "--header-timeout"),
        ("--idle-timeout soon", "--idle-timeout"),
        ("--max-conns 0", "--max-conns"),
        ("--max-header 255", "--max-header"),
        ("--segment-size 4095", "--segment-size"),
        ("--drain-grace 100000", "--drain-grace"),
        ("--cache 1KiB", "--cache"),
        ("--cache lots", "--cache"),
        ("--retain 0.5s", "--retain"),
        ("--retain 36501d", "--retain"),
        ("--retain-bytes 1KiB", "--retain-bytes"),
        ("--sync sometimes", "--sync"),
        ("--nodes 0", "--nodes"),
        ("--nodes 65", "--nodes"),
        ("--node -1", "--node"),
        ("--node 1", "--node"),
        ("--nodes 3 --node 3", "--node"),
        ("--cluster-base 4503599627370496", "--cluster-base"),
        ("--cluster-base -1", "--cluster-base"),
        ("export --format xml", "--format"),
        ("export --port 1", "--port"),
        ("--port 1 export", "export"),
    ] {
        let e = parse(args(input), None).unwrap_err();
        assert!(e.contains(needle), "{input}: {e}");
        assert_eq!(e.lines().count(), 1, "{input}: {e}");
    }
    assert!(parse(args(""), Some("http")).unwrap_err().contains("PORT"));
    assert!(
        parse(args("--write-timeot 1"), None)
            .unwrap_err()
            .contains("--write-timeout")
    );
}

#[test]
fn sizes_and_durations_take_suffixes() {
    let c = serve(
        "--max-body 1GiB --max-header=16KiB --segment-size 64MiB --header-timeout 500ms \
         --body-timeout 90s --idle-timeout 2m --write-timeout 1.5m --shutdown-timeout 1h \
         --drain-grace 0.1s --stats 1d",
        None,
    );
    assert_eq!(
        (c.max_body, c.max_header, c.segment_bytes),
        (1 << 30, 16 << 10, 64 << 20)
    );
    assert_eq!(
        (
            c.header_timeout,
            c.body_timeout,
            c.idle_timeout,
            c.write_timeout
        ),
        (
            Duration::from_millis(500),
            Duration::from_secs(90),
            Duration::from_secs(120),
            Duration::from_secs(90)
        )
    );
    assert_eq!(
        (c.shutdown_timeout, c.drain_grace, c.stats),
        (
            Duration::from_secs(3600),
            Duration::from_millis(100),
            Some(Duration::from_secs(86_400))
        )
    );
    let c = serve("--max-body 0B --max-header 1MiB --segment-size 1TiB", None);
    assert_eq!(
        (c.max_body, c.max_header, c.segment_bytes),
        (0, 1 << 20, 1 << 40)
    );
    let c = serve(
        "--max-header 256B --segment-size 4KiB --header-timeout 24h",
        None,
    );
    assert_eq!(
        (c.max_header, c.segment_bytes, c.header_timeout),
        (256, 4096, Duration::from_secs(86_400))
    );
    // Plain numbers as before: seconds checked before they are rounded to nanoseconds.
    let c = serve(
        "--max-body +5 --header-timeout 0.1234567891 --body-timeout 1e2",
        None,
    );
    assert_eq!(
        (c.max_body, c.header_timeout, c.body_timeout),
        (5, Duration::new(0, 123_456_789), Duration::from_secs(100))
    );
    for (input, needle) in [
        (
            "--header-timeout 30d",
            "expected seconds from 0.1 to 86400 (100ms to 1d)",
        ),
        (
            "--header-timeout 99ms",
            "expected seconds from 0.1 to 86400",
        ),
        (
            "--body-timeout 86401s",
            "expected seconds from 0.1 to 86400",
        ),
        ("--stats 0.0999999999", "expected seconds from 0.1 to 86400"),
        ("--drain-grace 0.0000000001s", "finer than a nanosecond"),
        (
            "--idle-timeout 5min",
            "expected seconds (0.5), or a number with ms",
        ),
        ("--write-timeout 99999999999999999999999d", "too large"),
        ("--max-body 1GiB1", "expected a whole number of bytes"),
        ("--max-body 1.5GiB", "expected a whole number of bytes"),
        ("--max-body 64kib", "expected a whole number of bytes"),
        (
            "--max-body 2GiB",
            "2147483648 bytes is not in 0..=1073741824 (0 to 1GiB)",
        ),
        (
            "--max-header 255B",
            "255 bytes is not in 256..=1048576 (256 to 1MiB)",
        ),
        ("--segment-size 4095B", "(4KiB to 1TiB)"),
        ("--segment-size 16777216TiB", "too large"),
        ("--segment-size 18446744073709551616", "too large"),
    ] {
        let e = parse(args(input), None).unwrap_err();
        let flag = input.split_whitespace().next().unwrap();
        assert!(e.contains(flag) && e.contains(needle), "{input}: {e}");
        assert_eq!(e.lines().count(), 1, "{input}: {e}");
    }
    let Ok(Command::Help(text)) = parse(args("--help"), None) else {
        panic!()
    };
    for needle in [
        "--max-body <SIZE>",
        "--stats <DURATION>",
        "KiB, MiB, GiB or TiB",
        "ms, s, m, h or d",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
}

#[test]
fn cache_and_retention_flags() {
    let d = serve("", None);
    assert_eq!(
        (d.cache_bytes, d.retain, d.retain_bytes),
        (512 << 20, None, None)
    );
    let c = serve("--cache 256MiB --retain 30d --retain-bytes 500GiB", None);
    assert_eq!(c.cache_bytes, 256 << 20);
    assert_eq!(c.retain, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(c.retain_bytes, Some(500 << 30));
    let c = serve("--retain 12h --retain-bytes 1MiB --cache 1MiB", None);
    assert_eq!(c.retain, Some(Duration::from_secs(12 * 3600)));
    assert_eq!((c.retain_bytes, c.cache_bytes), (Some(1 << 20), 1 << 20));
    let c = serve("--retain 1s", None);
    assert_eq!(c.retain, Some(Duration::from_secs(1)));
    assert_eq!(
        serve("--retain 36500d", None).retain,
        Some(Duration::from_secs(36_500 * 86_400))
    );
}

#[test]
fn cluster_flags() {
    let d = Config::default();
    assert_eq!((d.nodes, d.node, d.cluster_base), (1, 0, None));
    let c = serve("--nodes 64 --node 63 --cluster-base 4503599627370495", None);
    assert_eq!(
        (c.nodes, c.node, c.cluster_base),
        (64, 63, Some((1 << 52) - 1))
    );
    let c = serve("--node 1 --nodes 2", None);
    assert_eq!((c.nodes, c.node), (2, 1));
    let e = parse(args("--nodes 2 --node 2"), None).unwrap_err();
    assert!(
        e.contains("--node") && e.contains("below --nodes (2)"),
        "{e}"
    );
}

#[test]
fn haproxy_config_takes_repeated_nodes_and_epochs() {
    let c = parse(
        args(
            "haproxy-config --node 127.0.0.1:7001 --node 127.0.0.1:7002 --epoch 0:1 --epoch \
             500:2 --port 9000 --tcp-port 9001 --bind 127.0.0.1 --stats-socket /tmp/s \
             --nbthread 3",
        ),
        None,
    );
    let Ok(Command::HaproxyConfig(h)) = c else {
        panic!("{c:?}")
    };
    assert_eq!(h.nodes, ["127.0.0.1:7001", "127.0.0.1:7002"]);
    let e = |base, nodes| crate::cluster::Epoch { base, nodes };
    assert_eq!(h.epochs, [e(0, 1), e(500, 2)]);
    assert_eq!(
        (h.port, h.tcp_port, h.bind.as_str()),
        (9000, Some(9001), "127.0.0.1")
    );
    assert_eq!(h.stats_socket.as_deref(), Some("/tmp/s"));
    assert_eq!(h.nbthread, Some(3));
    for (a, want) in [
        ("haproxy-config", "--node"),
        ("haproxy-config --node 127.0.0.1:1 --epoch 5", "--epoch"),
        (
            "haproxy-config --node 127.0.0.1:1 --epoch 0:2",
            "has 2 nodes",
        ),
        ("haproxy-config --node nope", "expected HOST:PORT"),
        ("haproxy-config --node 127.0.0.1:1 --threads 2", "--threads"),
        (
            "haproxy-config --node 127.0.0.1:1 --nbthread 0",
            "--nbthread",
        ),
        (
            "haproxy-config --node 127.0.0.1:1 --nbthread 65",
            "--nbthread",
        ),
    ] {
        let e = parse(args(a), None).unwrap_err();
        assert!(e.contains(want), "{a}: {e}");
    }
}
