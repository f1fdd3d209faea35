//! HAProxy and nginx in front of two usaged processes, configured by the tests.

use super::*;

// ---------------------------------------------------------------------------------------------
// Through proxies.

/// `name` from `PATH`, `/usr/sbin` or `/usr/local/sbin`; `None` (the test returns) only when
/// `USAGED_SKIP_PROXIES=1`, else the test fails naming what to install.
pub fn proxy_binary(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("USAGED_SKIP_PROXIES").as_deref() == Ok("1") {
            println!("SKIPPED: {name} is not installed and USAGED_SKIP_PROXIES=1");
            return None;
        }
        panic!(
            "{name} is not installed: `apt-get install {package}` (.ci/run does), or set \
             USAGED_SKIP_PROXIES=1 to skip the proxy tests explicitly"
        );
    }
    found
}

/// A free loopback port: bound to port 0, then released for the proxy to take.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A proxy process and its directory (config, logs); stopped and removed on drop.
pub struct Proxy {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl Proxy {
    /// Start `bin args` (the config already in `dir`), wait (bounded) until `port` accepts.
    pub fn start(bin: &Path, args: &[&str], dir: PathBuf, port: u16, log: PathBuf) -> Proxy {
        let out = std::fs::File::create(dir.join("stdout")).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut p = Proxy {
            child,
            dir,
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = p.child.try_wait().unwrap() {
                panic!("{} exited with {st}:\n{}", bin.display(), p.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen:\n{}",
                bin.display(),
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.dir.join("stdout")), read(&self.log))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // nginx's master takes its workers down on SIGTERM; SIGKILL would orphan them.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
                .unwrap_or_default();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children.split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Kind {
    Haproxy,
    Nginx,
}

/// The proxy's config for backends on `ports`, listening on `port`, with its files in `dir`;
/// the path of its error log.
pub fn write_config(kind: Kind, dir: &Path, port: u16, ports: [u16; 2]) -> PathBuf {
    let [a, b] = ports;
    let d = dir.display();
    let (file, text) = match kind {
        // POSTs are retried only when they surely never reached a server:
        // - `retry-on conn-failure` (HAProxy's default, spelled out): a retry happens only when
        //   the connection could not be made, so no byte of the request was sent. Not
        //   `empty-response`, `response-timeout` or `junk-response`: those fire after the POST
        //   was sent, when the server may have stored it, and a retry would store it twice.
        // - `option redispatch 1`: that retry goes to the other server.
        // - health checks `GET /health` every 100 ms, `fall 1`: a draining node (503) is taken
        //   out of rotation within about 0.1 s, well inside its `--drain-grace 2`, so no request
        //   is sent to it once it starts closing idle connections; `rise 1` takes a restarted
        //   node back at its first 200.
        // - `http-reuse safe` (the default): an idle server connection carries only requests
        //   that are not the first of their client connection; no new request reaches a node
        //   that is DOWN, so the server's FIN never meets one.
        Kind::Haproxy => (
            "haproxy.cfg",
            format!(
                "global
    maxconn 4096
    log stderr format short local0 notice
defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    retry-on conn-failure
    option redispatch 1
    http-reuse safe
frontend fe
    bind 127.0.0.1:{port}
    default_backend usaged
backend usaged
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host usaged
    http-check expect status 200
    default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 1
    http-response set-header X-Usaged-Server %[srv_name]
    server a 127.0.0.1:{a} check
    server b 127.0.0.1:{b} check
"
            ),
        ),
        // nginx (open source) has no active health checks, so it cannot see a drain coming:
        // - no `keepalive` to the upstream: each request gets a fresh connection, so nginx never
        //   writes a POST onto an idle connection the server is closing at that instant (a
        //   POST sent and then cut is not retried, and must not be);
        // - `proxy_next_upstream error timeout` (the default, spelled out) without
        //   `non_idempotent`: a POST goes to the other server only when the connection failed
        //   before it was sent (refused once the listener is closed), never after;
        // - `max_fails=1 fail_timeout=1s` (nginx's shortest): a refused node is skipped for a
        //   second, then tried again, which takes a restarted node back.
        Kind::Nginx => (
            "nginx.conf",
            format!(
                "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream usaged {{
        server 127.0.0.1:{a} max_fails=1 fail_timeout=1s;
        server 127.0.0.1:{b} max_fails=1 fail_timeout=1s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://usaged;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            add_header X-Usaged-Backend $upstream_addr always;
        }}
    }}
}}
"
            ),
        ),
    };
    std::fs::write(dir.join(file), text).unwrap();
    match kind {
        Kind::Haproxy => dir.join("stdout"),
        Kind::Nginx => dir.join("error.log"),
    }
}
