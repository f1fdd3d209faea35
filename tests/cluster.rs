//! Two real servers as the nodes of one cluster (`--nodes 2 --node 0/1`): their ids are
//! disjoint and follow the owner rule, each answers its own ids and `404` for the other's,
//! `/metrics` names the node, and a restart with another `--threads` keeps all of it.

mod util;

use std::collections::HashSet;

use util::{Client, README_BODY, Server, get, post};

fn post_n(c: &mut Client, n: usize) -> Vec<u64> {
    c.send(post(README_BODY).repeat(n));
    (0..n)
        .map(|_| {
            let r = c.read(false);
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["id"].as_u64().unwrap()
        })
        .collect()
}

fn status(c: &mut Client, id: u64) -> u16 {
    c.request(get(id)).status
}

/// Both nodes' ids: disjoint, each its node's by `(id - 1) mod 2`, 200 on its node and 404 on
/// the other.
fn check(nodes: &mut [Server; 2], ids: &[Vec<u64>; 2]) {
    let a: HashSet<u64> = ids[0].iter().copied().collect();
    let b: HashSet<u64> = ids[1].iter().copied().collect();
    assert_eq!(
        a.len() + b.len(),
        ids[0].len() + ids[1].len(),
        "an id twice"
    );
    assert!(a.is_disjoint(&b));
    let mut c = [nodes[0].connect(), nodes[1].connect()];
    for (k, mine) in ids.iter().enumerate() {
        for &id in mine {
            assert_eq!((id - 1) % 2, k as u64, "id {id} of node {k}");
            assert_eq!(status(&mut c[k], id), 200, "id {id} on its node {k}");
            assert_eq!(status(&mut c[1 - k], id), 404, "id {id} on node {}", 1 - k);
        }
    }
}

#[test]
fn two_nodes_hand_out_disjoint_ids_and_answer_only_their_own() {
    let flags = |k: &'static str, threads: &'static str| {
        ["--nodes", "2", "--node", k, "--threads", threads]
    };
    // A new node of a cluster must be told the cluster epoch's base.
    let fresh = util::temp_data_dir();
    let out = usaged_run(&fresh, &flags("0", "2"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("needs --cluster-base"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&fresh);
    let first = |k, t| {
        let mut f = flags(k, t).to_vec();
        f.extend(["--cluster-base", "0"]);
        Server::start(&f)
    };
    let mut nodes = [first("0", "2"), first("1", "3")];
    let mut ids: [Vec<u64>; 2] = Default::default();
    for (k, s) in nodes.iter().enumerate() {
        let mut c = s.connect();
        ids[k].extend(post_n(&mut c, 200));
        let m = c.request("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").text();
        let info = format!("usaged_node_info{{node=\"{k}\",nodes=\"2\"}} 1\n");
        assert!(m.contains(&info), "{m}");
        // The lease end bounds every id the node handed out (a growth's base goes past it).
        let lease_end: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("usaged_id_lease_end "))
            .and_then(|v| v.parse().ok())
            .expect("usaged_id_lease_end");
        assert!(lease_end >= *ids[k].iter().max().unwrap(), "{lease_end}");
    }
    check(&mut nodes, &ids);
    // Restarts with other thread counts go on in each node's residue.
    let dirs = nodes.each_mut().map(|s| {
        s.keep_data = true;
        assert!(s.stop().success());
        s.data_dir.clone()
    });
    drop(nodes);
    // Their data dirs say which node each is (CLUSTER): swapped flags are refused.
    let out = usaged_run(&dirs[0], &flags("1", "3"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("is node 0 (of 2"),
        "{said}"
    );
    // Later starts go on without --cluster-base.
    let mut nodes = [
        Server::start_in(&dirs[0], &flags("0", "3")),
        Server::start_in(&dirs[1], &flags("1", "1")),
    ];
    for (k, s) in nodes.iter().enumerate() {
        ids[k].extend(post_n(&mut s.connect(), 100));
    }
    check(&mut nodes, &ids);
    // `export` reads a node's directory: its own usages, all of them.
    for (k, s) in nodes.iter_mut().enumerate() {
        assert!(s.stop().success());
        let lines = util::export_text(&s.data_dir).lines().count();
        assert_eq!(lines, ids[k].len(), "node {k}");
        s.keep_data = false;
    }
}

/// Run the binary on `dir` with `extra` until it exits (a start that is refused).
fn usaged_run(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_usaged"))
        .args([
            "--port",
            "0",
            "--no-pin",
            "--bind",
            "127.0.0.1",
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run usaged")
}

/// The node's `usaged_id_lease_end`, read with one scrape on a new connection.
fn lease_end(s: &Server) -> u64 {
    let m = s
        .connect()
        .request("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .text();
    m.lines()
        .find_map(|l| l.strip_prefix("usaged_id_lease_end "))
        .and_then(|v| v.parse().ok())
        .expect("usaged_id_lease_end")
}

/// `usaged_id_lease_end` bounds every id the node handed out from the moment it listens: after
/// a crash (the new epoch's stripes have no lease yet: their base is the bound) and after a
/// clean restart (workers that have not turned yet still count), not only after a batch.
#[test]
fn id_lease_end_bounds_every_id_from_the_start() {
    let flags = ["--nodes", "2", "--node", "1", "--cluster-base", "0"];
    let mut s = Server::start(&flags);
    s.keep_data = true;
    let dir = s.data_dir.clone();
    // One connection: one worker's stripe holds every id, the others none.
    let mut max = *post_n(&mut s.connect(), 300).iter().max().unwrap();
    for round in 0..3 {
        assert!(s.stop().success());
        s = Server::start_in(&dir, &flags);
        let end = lease_end(&s);
        assert!(
            end >= max,
            "clean restart {round}: lease end {end} < id {max}"
        );
        max = max.max(*post_n(&mut s.connect(), 50).iter().max().unwrap());
    }
    // A crash: the lease was ahead, the next start begins a new epoch past it.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    s = Server::start_in(&dir, &flags);
    let end = lease_end(&s);
    assert!(end >= max, "after a crash: lease end {end} < id {max}");
    assert!(s.stop().success());
    s.keep_data = false;
}
