#!/usr/bin/env python3
"""NDJSON bulks against a running usaged for SECS seconds, one at a time (each answer read in
full before the next bulk is sent), on one connection (--reuse) or a new one per bulk (--new).
Every line is the usage bench/post.lua POSTs, so a bulk line and a single POST cost the server
the same parsing. Prints one line of KEY=VALUE: usages (stored, counted from the answers),
bulks, bytes (request bytes sent, head and body), secs, usages_s, mb_s, errors (error lines,
non-200 answers, broken connections) and client_cpu_s (this process's own CPU time, to show
whether the client was the limit).

With --streams N, N such clients run side by side (threads, each its own connection), so the
server has a next bulk to read while it answers one: what one core stores when never idle.

usage: bench/bulk.py PORT --mb N (--reuse | --new) [--secs S] [--streams N]
"""
import argparse
import socket
import threading
import time

LINE = b'{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}\n'


def request_of(mb):
    """A POST whose NDJSON body is at most MB megabytes (10^6 bytes) of whole lines."""
    n = mb * 1_000_000 // len(LINE)
    body = LINE * n
    head = (b"POST /api/usages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    return head + body, n


def read_answer(s, buf):
    """(status, body, what came after it) of one answer whose head may start in buf."""
    while b"\r\n\r\n" not in buf:
        more = s.recv(1 << 20)
        if not more:
            raise ConnectionError("closed before the answer's head")
        buf += more
    head, rest = bytes(buf).split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        more = s.recv(max(1 << 20, length - len(body)))
        if not more:
            raise ConnectionError("closed inside the answer's body")
        body += more
    return status, bytes(body[:length]), bytearray(body[length:])


def stream(o, req, n, end, out):
    """One client: bulks until END; adds its (usages, bulks, errors) to OUT."""
    usages = bulks = errors = 0
    s, buf = None, bytearray()
    while True:
        try:
            if s is None:
                s, buf = socket.create_connection(("127.0.0.1", o.port)), bytearray()
            s.sendall(req)
            status, body, buf = read_answer(s, buf)
        except OSError:
            errors += 1
            status, body = 0, b""
        bulks += 1
        if status == 200:
            ids = body.count(b'{"id":')
            usages += ids
            errors += n - ids
        elif status:
            errors += 1
        if status != 200 or o.new:
            if s:
                s.close()
            s = None
        if time.perf_counter() >= end:
            break
    if s:
        s.close()
    out.append((usages, bulks, errors))


def main():
    a = argparse.ArgumentParser()
    a.add_argument("port", type=int)
    a.add_argument("--mb", type=int, required=True)
    a.add_argument("--secs", type=float, default=5.0)
    a.add_argument("--streams", type=int, default=1)
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--reuse", action="store_true")
    g.add_argument("--new", action="store_true")
    o = a.parse_args()
    req, n = request_of(o.mb)
    c0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + o.secs
    out = []
    threads = [threading.Thread(target=stream, args=(o, req, n, end, out)) for _ in range(o.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    usages, bulks, errors = (sum(x) for x in zip(*out))
    sent = bulks * len(req)
    print(f"usages={usages} bulks={bulks} bytes={sent} secs={secs:.3f} usages_s={usages / secs:.0f} "
          f"mb_s={sent / secs / 1e6:.1f} errors={errors} client_cpu_s={time.process_time() - c0:.3f}")


main()
