#!/usr/bin/env python3
"""Bulk NDJSON throughput against a running usaged: usages/s and MB/s per body size, with and
without connection reuse, and the server's CPU time per usage (utime+stime from /proc).

usage: bench/bulk.py PORT PID [--sizes 1,10] [--runs N]   (sizes in MB)
"""
import argparse, os, socket, time

LINE = '{"patientId":"p%07d","timestamp":"2024-01-02T03:04:05Z","medication":"Albuterol"}\n'


def body_of(mb):
    n = mb * 1_000_000 // len(LINE % 0)
    return "".join(LINE % i for i in range(n)).encode(), n


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def read_answer(s, buf):
    while b"\r\n\r\n" not in buf:
        buf += s.recv(1 << 20)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(rest) < length:
        rest += s.recv(1 << 20)
    assert rest[:length].count(b'{"id":') == rest[:length].count(b"\n"), "an error line"
    return rest[length:]


def run(port, pid, req, n, runs, reuse):
    s = None
    c0, t0 = cpu_s(pid), time.perf_counter()
    for _ in range(runs):
        if s is None or not reuse:
            if s:
                s.close()
            s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        read_answer(s, b"")
    t, c = time.perf_counter() - t0, cpu_s(pid) - c0
    s.close()
    return n * runs / t, len(req) * runs / t / 1e6, c / (n * runs) * 1e9


def main():
    a = argparse.ArgumentParser()
    a.add_argument("port", type=int)
    a.add_argument("pid", type=int)
    a.add_argument("--sizes", default="1,10")
    a.add_argument("--runs", type=int, default=5)
    o = a.parse_args()
    print("| body | connection | usages/s | MB/s | server CPU ns/usage |")
    print("|---|---|---|---|---|")
    for mb in map(int, o.sizes.split(",")):
        body, n = body_of(mb)
        req = (b"POST /api/usages HTTP/1.1\r\nHost: b\r\nContent-Type: application/x-ndjson\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        for reuse in (True, False):
            ups, mbs, ns = run(o.port, o.pid, req, n, o.runs, reuse)
            print(f"| {mb} MB | {'reused' if reuse else 'new'} | {ups:,.0f} | {mbs:.1f} | {ns:.0f} |")


main()
