//! `usaged haproxy-config`: the HAProxy configuration for a cluster of usaged nodes, rendered
//! from the node addresses and the cluster epochs. A pure function of its input.
//!
//! Routing: in a cluster epoch `(B, N)` the id `id > B` belongs to node `(id − B − 1) mod N`
//! ([`owner`]). The config evaluates that per request with HAProxy's converters, one rule per
//! epoch, oldest first, so that the newest epoch whose base lies below the id decides:
//!
//! ```text
//! http-request set-var(txn.node) path,field(4,/),sub(B+1),mod(N) if read_one { path,field(4,/) -m int gt B }
//! use_backend node%[var(txn.node)] if { var(txn.node) -m found }
//! ```
//!
//! Node `K` of the list is backend `nodeK` (one server) in every epoch: growing the cluster
//! adds nodes at the end and an epoch, and never renumbers a node. Everything that is not a
//! `GET`/`HEAD /api/usages/{digits}` goes to backend `all`, balanced over every node, but a `POST`
//! with an `Idempotency-Key` goes to backend `keyed`, which hashes the key to one node; a second,
//! `mode tcp` frontend (`--tcp-port`) spreads whole connections over the nodes for ingestion
//! at a lower cost per request than `mode http`.
#![forbid(unsafe_code)]

use std::fmt::Write;

/// The most nodes a cluster may have (as usaged's `--nodes`).
pub const MAX_NODES: usize = 64;

/// One cluster epoch: ids above `base` belong to node `(id − base − 1) mod nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub base: u64,
    pub nodes: usize,
}

/// What the config is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Haproxy {
    /// `HOST:PORT` of node 0, 1, …
    pub nodes: Vec<String>,
    /// Oldest first; empty means one epoch `(0, nodes.len())`.
    pub epochs: Vec<Epoch>,
    /// The address both frontends bind.
    pub bind: String,
    /// The `mode http` frontend's port.
    pub port: u16,
    /// The `mode tcp` frontend's port, if any.
    pub tcp_port: Option<u16>,
    /// A stats socket (`show stat`, reloads), if any.
    pub stats_socket: Option<String>,
    /// HAProxy's `nbthread`, if set (else HAProxy starts a thread per CPU it may run on).
    pub nbthread: Option<usize>,
}

/// The owner of `id` under `epochs` (oldest first): the newest epoch with `base < id` decides.
/// `None` when no epoch covers `id`.
pub fn owner(id: u64, epochs: &[Epoch]) -> Option<usize> {
    let e = epochs.iter().rev().find(|e| id > e.base)?;
    Some(((id - e.base - 1) % e.nodes as u64) as usize)
}

/// The epochs in force: the given ones, or one epoch `(0, nodes)`.
pub fn epochs_of(h: &Haproxy) -> Vec<Epoch> {
    if h.epochs.is_empty() {
        vec![Epoch {
            base: 0,
            nodes: h.nodes.len(),
        }]
    } else {
        h.epochs.clone()
    }
}

/// `Err` names what is wrong: no node or more than [`MAX_NODES`], an address that is not
/// `HOST:PORT`, epochs not in increasing base order, an epoch with no node or more nodes than
/// listed, or a newest epoch that does not span every node (those nodes' ids would be routed
/// elsewhere).
pub fn check(h: &Haproxy) -> Result<(), String> {
    if h.nodes.is_empty() || h.nodes.len() > MAX_NODES {
        return Err(format!(
            "expected 1 to {MAX_NODES} nodes (--node HOST:PORT), got {}",
            h.nodes.len()
        ));
    }
    for a in &h.nodes {
        check_addr(a, true)?;
    }
    check_addr(&h.bind, false)?;
    if let Some(s) = &h.stats_socket
        && (s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '#'))
    {
        return Err(format!("stats socket path {s:?}: no spaces or '#'"));
    }
    let epochs = epochs_of(h);
    for (i, e) in epochs.iter().enumerate() {
        if e.nodes == 0 || e.nodes > h.nodes.len() {
            return Err(format!(
                "epoch {}:{} has {} nodes, but {} are listed",
                e.base,
                e.nodes,
                e.nodes,
                h.nodes.len()
            ));
        }
        if i > 0 && e.base <= epochs[i - 1].base {
            return Err(format!(
                "epochs must be listed oldest first with increasing bases: {} after {}",
                e.base,
                epochs[i - 1].base
            ));
        }
        if e.base >= 1 << 53 {
            return Err(format!("epoch base {} is not below 2^53", e.base));
        }
    }
    let last = epochs[epochs.len() - 1];
    if last.nodes != h.nodes.len() {
        return Err(format!(
            "the newest epoch {}:{} must span all {} listed nodes",
            last.base,
            last.nodes,
            h.nodes.len()
        ));
    }
    Ok(())
}

/// `HOST:PORT` (or a bare address when `!with_port`) made of characters that cannot break a
/// config line.
fn check_addr(a: &str, with_port: bool) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || ".-_:[]".contains(c);
    if a.is_empty() || !a.chars().all(ok_char) {
        return Err(format!("address {a:?}: expected HOST:PORT"));
    }
    if with_port {
        let port = a.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
        if !matches!(port, Some((h, Ok(p))) if !h.is_empty() && p > 0) {
            return Err(format!("address {a:?}: expected HOST:PORT"));
        }
    }
    Ok(())
}

/// The whole config, after [`check`].
pub fn render(h: &Haproxy) -> Result<String, String> {
    check(h)?;
    let mut out = String::new();
    global_and_defaults(&mut out, h);
    http_frontend(&mut out, h);
    if let Some(p) = h.tcp_port {
        tcp_frontend(&mut out, h, p);
    }
    backends(&mut out, h);
    Ok(out)
}

/// The `usaged haproxy-config` command that renders `h`, in lines: the options, then
/// `--stats-socket`, each `--node`, each `--epoch` (the text's header names it, so a config says how to make it
/// again).
pub fn command_lines(h: &Haproxy) -> Vec<String> {
    let mut first = format!("usaged haproxy-config --bind {} --port {}", h.bind, h.port);
    if let Some(p) = h.tcp_port {
        let _ = write!(first, " --tcp-port {p}");
    }
    if let Some(n) = h.nbthread {
        let _ = write!(first, " --nbthread {n}");
    }
    let socket = h
        .stats_socket
        .iter()
        .map(|s| format!("  --stats-socket {s}"));
    let nodes = h.nodes.iter().map(|a| format!("  --node {a}"));
    let epochs = h
        .epochs
        .iter()
        .map(|e| format!("  --epoch {}:{}", e.base, e.nodes));
    std::iter::once(first)
        .chain(socket)
        .chain(nodes)
        .chain(epochs)
        .collect()
}

/// Health checks, shared by every server line that has `check`: `/health` every 100 ms, down
/// after 2 failures (a draining node's `503` takes it out within about 0.2 s, inside usaged's
/// `--drain-grace`, which must exceed `fall × inter + timeout check`), up after 2 successes.
const CHECK: &str = "inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2";

fn global_and_defaults(out: &mut String, h: &Haproxy) {
    let n = h.nodes.len();
    let e = epochs_of(h);
    let listed: Vec<String> = e
        .iter()
        .map(|e| format!("{}:{}", e.base, e.nodes))
        .collect();
    let _ = writeln!(
        out,
        "# Generated by `usaged haproxy-config`: {n} nodes, epochs (base:nodes) {}; \
         regenerate it with",
        listed.join(" ")
    );
    let lines = command_lines(h);
    for (i, line) in lines.iter().enumerate() {
        let more = if i + 1 < lines.len() { " \\" } else { "" };
        let _ = writeln!(out, "#   {line}{more}");
    }
    out.push_str(
        "global
    log stderr format short local0 notice
    # After a reload, the old process waits at most this long for its connections.
    hard-stop-after 60s
",
    );
    if let Some(n) = h.nbthread {
        let _ = writeln!(out, "    nbthread {n}");
    }
    if let Some(s) = &h.stats_socket {
        let _ = writeln!(
            out,
            "    stats socket {s} mode 600 level admin expose-fd listeners"
        );
    }
    out.push_str(
        "
defaults
    mode http
    log global
    option httplog
    # connect: a refused or unanswered connect is retried (1 s apart) on another node.
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    # How long a keep-alive client connection may wait for its next request (usaged's own
    # --idle-timeout is 60 s).
    timeout http-keep-alive 55s
    timeout queue 5s
    timeout check 1s
    retries 3
    # A retry goes to another server (every retry), when the backend has one.
    option redispatch 1
    # Only a request that is not the first of its client connection reuses an idle server
    # connection (the default, spelled out).
    http-reuse safe
",
    );
}

fn http_frontend(out: &mut String, h: &Haproxy) {
    let _ = write!(
        out,
        "
frontend usaged_http
    bind {}:{}
    # On a reload the old process answers each keep-alive connection's next request with
    # `Connection: close` instead of closing it while idle, where a request the client is
    # sending at that instant would meet a closed connection.
    option idle-close-on-response
    acl read_one method GET HEAD
    acl read_one_id path_reg ^/api/usages/[0-9]{{1,20}}$
    # The owner of an id, one rule per cluster epoch (base:nodes), oldest first: a later
    # rule overrides an earlier one for the ids above its base.
",
        h.bind, h.port
    );
    for e in epochs_of(h) {
        let _ = writeln!(
            out,
            "    http-request set-var(txn.node) path,field(4,/),sub({}),mod({}) \
             if read_one read_one_id {{ path,field(4,/) -m int gt {} }}",
            e.base + 1,
            e.nodes,
            e.base
        );
    }
    out.push_str(
        "    use_backend node%[var(txn.node)] if { var(txn.node) -m found }
    # One Idempotency-Key, one node: a retry finds the key where its first request left it.
    use_backend keyed if METH_POST { req.hdr(Idempotency-Key) -m found }
    default_backend all
    http-response set-header X-Usaged-Server %[be_name]/%[srv_name]
",
    );
}

fn tcp_frontend(out: &mut String, h: &Haproxy, port: u16) {
    let _ = write!(
        out,
        "
# Ingestion without HTTP parsing: whole connections spread over the nodes.
frontend usaged_tcp
    mode tcp
    option tcplog
    bind {}:{port}
    # above usaged's --idle-timeout (60 s): the node closes idle connections with a FIN.
    timeout client 65s
    default_backend all_tcp
",
        h.bind
    );
}

fn backends(out: &mut String, h: &Haproxy) {
    // POSTs come here: `retry-on conn-failure` retries only a request whose connection could
    // not be made, so no byte of it reached a node and it cannot have been stored; a POST that
    // was sent is never retried (an empty answer or a timeout may follow a stored usage).
    out.push_str(
        "
# Everything but GET/HEAD of one usage: POSTs, /health, /metrics.
backend all
    balance roundrobin
    retry-on conn-failure
",
    );
    checked_servers(out, h);
    // POSTs with an Idempotency-Key: the same key always to the same node (a consistent hash
    // over the nodes in rotation, so a node leaving moves only its own keys).
    out.push_str(
        "
backend keyed
    balance hdr(Idempotency-Key)
    hash-type consistent
    retry-on conn-failure
",
    );
    checked_servers(out, h);
    if h.tcp_port.is_some() {
        out.push_str(
            "
backend all_tcp
    mode tcp
    balance roundrobin
    timeout server 65s
",
        );
        checked_servers(out, h);
    }
    // A node's own backend gets only GET/HEAD of its ids, which are safe to send again: an
    // empty answer (a connection closed by a draining node) or usaged's `503` while it stops
    // is retried; no health check, so a restarting node's reads wait through the retries
    // (1 s apart) instead of failing at once.
    for (k, a) in h.nodes.iter().enumerate() {
        let _ = write!(
            out,
            "
backend node{k}
    retry-on conn-failure empty-response 503
    server node{k} {a}
"
        );
    }
}

#[cfg(test)]
mod tests;

/// Every node as a server of a balanced backend, each in rotation while its `/health` says
/// `200`.
fn checked_servers(out: &mut String, h: &Haproxy) {
    out.push_str(
        "    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host usaged
    http-check expect status 200
",
    );
    let _ = writeln!(out, "    default-server {CHECK}");
    for (k, a) in h.nodes.iter().enumerate() {
        let _ = writeln!(out, "    server node{k} {a} check");
    }
}
