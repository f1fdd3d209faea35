use super::*;
use proptest::prelude::*;

fn config(nodes: usize, epochs: &[(u64, usize)]) -> Haproxy {
    Haproxy {
        nodes: (0..nodes)
            .map(|k| format!("127.0.0.1:{}", 4000 + k))
            .collect(),
        epochs: epochs
            .iter()
            .map(|&(base, nodes)| Epoch { base, nodes })
            .collect(),
        bind: "127.0.0.1".into(),
        port: 8080,
        tcp_port: Some(8081),
        stats_socket: Some("/tmp/x/haproxy.sock".into()),
        nbthread: Some(2),
    }
}

/// HAProxy's evaluation of the rendered text, rule by rule, for a `GET` of `id`: each
/// `set-var(txn.node) path,field(4,/),sub(X),mod(Y) if … -m int gt Z` line in order (64-bit
/// signed arithmetic, as HAProxy's converters), then `use_backend node%[var(txn.node)]`.
fn backend_of(text: &str, id: u64) -> String {
    let v = id as i64;
    let mut node = None;
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("http-request set-var(txn.node) path,field(4,/),sub(")
        else {
            continue;
        };
        let num = |s: &str, from: &str, to: char| -> i64 {
            let at = s.find(from).unwrap() + from.len();
            s[at..].split(to).next().unwrap().parse().unwrap()
        };
        let (x, y) = (num(rest, "", ')'), num(rest, "mod(", ')'));
        let z = num(rest, "-m int gt ", ' ');
        assert!(rest.contains("if read_one read_one_id {"), "{line}");
        if v > z {
            node = Some((v - x) % y);
        }
    }
    node.map_or("all".to_string(), |k| format!("node{k}"))
}

#[test]
fn the_text_has_each_rule() {
    let text = render(&config(3, &[(0, 2), (1000, 3)])).unwrap();
    for want in [
        "http-request set-var(txn.node) path,field(4,/),sub(1),mod(2) if read_one read_one_id \
         { path,field(4,/) -m int gt 0 }",
        "http-request set-var(txn.node) path,field(4,/),sub(1001),mod(3) if read_one \
         read_one_id { path,field(4,/) -m int gt 1000 }",
        "use_backend node%[var(txn.node)] if { var(txn.node) -m found }",
        "acl read_one method GET HEAD",
        "acl read_one_id path_reg ^/api/usages/[0-9]{1,20}$",
        "default_backend all\n",
        "bind 127.0.0.1:8080\n",
        "bind 127.0.0.1:8081\n",
        "mode tcp",
        "default_backend all_tcp",
        "option httpchk\n",
        "http-check send meth GET uri /health ver HTTP/1.1 hdr Host usaged",
        "http-check expect status 200",
        "default-server inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2",
        "option redispatch 1",
        "option idle-close-on-response",
        "hard-stop-after 60s",
        "\n    nbthread 2\n",
        "stats socket /tmp/x/haproxy.sock mode 600 level admin",
        "server node0 127.0.0.1:4000 check\n",
        "server node2 127.0.0.1:4002 check\n",
        "backend node2\n    retry-on conn-failure empty-response 503\n    server node2 127.0.0.1:4002\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // POSTs land in `all` and `all_tcp`: only a connection failure is retried there.
    for be in ["backend all\n", "backend all_tcp\n"] {
        let section = text
            .split(be)
            .nth(1)
            .unwrap()
            .split("\nbackend")
            .next()
            .unwrap();
        let retry: Vec<&str> = section.lines().filter(|l| l.contains("retry-on")).collect();
        assert!(
            retry.is_empty() || retry == ["    retry-on conn-failure"],
            "{be}: {retry:?}"
        );
    }
    assert_eq!(text.matches("set-var(txn.node)").count(), 2);
    // Oldest first.
    assert!(text.find("sub(1),").unwrap() < text.find("sub(1001),").unwrap());
}

#[test]
fn without_epochs_one_epoch_spans_the_nodes_and_no_tcp_frontend() {
    let mut h = config(2, &[]);
    h.tcp_port = None;
    h.stats_socket = None;
    h.nbthread = None;
    let text = render(&h).unwrap();
    assert!(text.contains("sub(1),mod(2) if"), "{text}");
    assert!(
        !text.contains("mode tcp") && !text.contains("stats socket") && !text.contains("nbthread"),
        "{text}"
    );
    assert_eq!(backend_of(&text, 1), "node0");
    assert_eq!(backend_of(&text, 2), "node1");
    assert_eq!(backend_of(&text, 0), "all");
}

#[test]
fn bad_input_is_named() {
    let cases: [(Haproxy, &str); 7] = [
        (config(0, &[]), "expected 1 to 64 nodes"),
        (config(65, &[]), "expected 1 to 64 nodes"),
        (config(2, &[(0, 3)]), "has 3 nodes, but 2 are listed"),
        (config(2, &[(10, 1), (10, 2)]), "increasing bases"),
        (config(3, &[(0, 3), (10, 2)]), "must span all 3"),
        (config(2, &[(1 << 53, 2)]), "not below 2^53"),
        (
            Haproxy {
                nodes: vec!["127.0.0.1:80 check\n".into()],
                ..config(1, &[])
            },
            "expected HOST:PORT",
        ),
    ];
    for (h, want) in cases {
        let e = render(&h).unwrap_err();
        assert!(e.contains(want), "{e} lacks {want}");
    }
    for a in ["127.0.0.1", ":80", "h:0", "h:70000"] {
        let h = Haproxy {
            nodes: vec![a.into()],
            ..config(1, &[])
        };
        assert!(render(&h).is_err(), "{a}");
    }
}

/// Epochs oldest first with increasing bases below 2^52, the newest spanning `nodes`.
fn epochs() -> impl Strategy<Value = (usize, Vec<(u64, usize)>)> {
    (
        1usize..=8,
        prop::collection::vec((1u64..1 << 40, 1usize..=8), 0..4),
    )
        .prop_map(|(nodes, rest)| {
            let mut base = 0;
            let mut out = Vec::new();
            for (step, n) in rest {
                out.push((base, n.min(nodes)));
                base += step;
            }
            out.push((base, nodes));
            (nodes, out)
        })
}

proptest! {
    /// HAProxy's rules, evaluated as HAProxy does, pick the node the owner formula names, for
    /// ids anywhere (at the bases, just above, far above) and for ids a node hands out.
    #[test]
    fn the_rules_route_each_id_to_its_owner(
        (nodes, e) in epochs(),
        picks in prop::collection::vec((0usize..4, 0u64..1 << 41, 0usize..8), 1..40),
    ) {
        let h = config(nodes, &e);
        let text = render(&h).unwrap();
        let ep = epochs_of(&h);
        for (i, off, k) in picks {
            let epoch = ep[i % ep.len()];
            // An id node k of this epoch hands out: B + 1 + k + N·j.
            let k = k % epoch.nodes;
            let issued = epoch.base + 1 + k as u64 + epoch.nodes as u64 * off;
            let newer = ep.iter().find(|x| x.base > epoch.base).map_or(u64::MAX, |x| x.base);
            if issued <= newer {
                prop_assert_eq!(owner(issued, &ep), Some(k));
            }
            for id in [issued, epoch.base, epoch.base + 1, epoch.base.saturating_add(off)] {
                let want = owner(id, &ep).map_or("all".to_string(), |k| format!("node{k}"));
                prop_assert_eq!(backend_of(&text, id), want, "id {}", id);
            }
        }
    }
}

/// The `usaged haproxy-config` arguments a rendered text's header names (without `usaged`).
fn header_args(text: &str) -> Vec<String> {
    let words: Vec<String> = text
        .lines()
        .skip(1)
        .map_while(|l| l.strip_prefix("#   "))
        .flat_map(str::split_whitespace)
        .filter(|w| *w != "\\")
        .map(String::from)
        .collect();
    assert_eq!(words[..2], ["usaged", "haproxy-config"], "{text}");
    words[1..].to_vec()
}

/// The header's command, given to the argument parser, renders the same text again.
fn renders_itself(text: &str) -> Haproxy {
    let c = crate::config::parse(header_args(text), None);
    let Ok(crate::config::Command::HaproxyConfig(h)) = c else {
        panic!("{c:?}")
    };
    assert_eq!(render(&h).unwrap(), text);
    *h
}

#[test]
fn the_header_names_the_command_that_renders_the_text() {
    let mut bare = config(1, &[]);
    (bare.tcp_port, bare.stats_socket, bare.nbthread) = (None, None, None);
    for h in [config(3, &[(0, 2), (1000, 3)]), config(2, &[]), bare] {
        let text = render(&h).unwrap();
        assert!(
            text.starts_with("# Generated by `usaged haproxy-config`"),
            "{text}"
        );
        assert_eq!(renders_itself(&text), h);
    }
}

/// `deploy/haproxy.cfg` is exactly what the command in its header prints: it cannot go stale.
#[test]
fn the_deploy_example_is_the_generators_output() {
    let text = include_str!("../../deploy/haproxy.cfg");
    let h = renders_itself(text);
    assert_eq!(h.nodes, ["10.0.0.1:3000", "10.0.0.2:3000"]);
    assert_eq!((h.port, h.tcp_port), (8080, Some(8081)));
    assert_eq!(h.stats_socket.as_deref(), Some("/run/haproxy/usaged.sock"));
}
