#!/usr/bin/env python3
"""Publish → SSE delivery latency at a steady rate, from one single-threaded client.

    python -m benchmarks.latency --url http://127.0.0.1:8080 --rate 1000 --seconds 20

One process, one ``epoll`` loop, keep-alive sockets: a publisher
sending one 100-byte message per request (``acks=leader``) at ``--rate`` and an
SSE subscriber from ``latest``.  Each payload carries its send time
(``time.time_ns``); latency is measured when the SSE frame arrives,
so both ends use the same clock and no thread or process scheduling sits
between them.  Prints p50/p99/p99.9/max of end-to-end and of publish
round-trip latency, and this client's own CPU time per message (it shares the
machine's cores with the node).  ``--trace PATH`` writes one line per message:
``offset sent answered delivered`` (``time.time_ns``; the node's ``SPRAWL_TIMELINE``
uses the same clock, so ``benchmarks.latency_profile --timeline`` merges them hop by hop).

The requests are built from a template (the bytes ``json.dumps`` gave before, the
send stamp written into them), not encoded per message: the load generator's CPU per
message is the node's competitor for the two cores, not part of the path measured.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import select
import socket
import time
import urllib.parse
import urllib.request

STAMP = re.compile(rb'"payload":"(\d{19})')
#: An SSE event's offset and send stamp (``id: P:O`` then its data).
EVENT = re.compile(rb'id: \d+:(\d+)\ndata: [^\n]*?"payload":"(\d{19})')
LENGTH = re.compile(rb"(?i)content-length: (\d+)")


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of a sorted list."""
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--connections", type=int, default=4, help="publisher connections, used round robin")
    ap.add_argument("--topic", default=f"latency-{int(time.time())}")
    ap.add_argument("--trace", default=None, help="write offset, sent, answered, delivered per message here")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    req = urllib.request.Request(f"{a.url}/v1/topics/{a.topic}", data=b"{}", method="PUT")
    req.add_header("content-type", "application/json")
    urllib.request.urlopen(req, timeout=10).read()

    sub = socket.create_connection((host, port))
    sub.sendall(f"GET /v1/topics/{a.topic}/stream?from=latest HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    first = b""
    while b": sprawl stream" not in first:  # positioned at latest
        chunk = sub.recv(65536)
        if not chunk:
            raise SystemExit("stream closed")
        first += chunk
    pubs = [socket.create_connection((host, port)) for _ in range(a.connections)]
    poller = select.epoll()
    #: fd -> (socket, -1 for the subscriber or the publisher's index)
    by_fd: dict[int, tuple[socket.socket, int]] = {}
    for i, s in enumerate([sub, *pubs]):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        poller.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = (s, i - 1)

    n = int(a.rate * a.seconds)
    interval = 1.0 / a.rate
    pad = "x" * max(0, a.size - 19)
    # The request, as json.dumps({"messages": [{"payload": f"{t}{pad}"}], "acks": "leader"})
    # wrote it, with the 19-digit stamp written in per message.
    body_len = len(json.dumps({"messages": [{"payload": f"{0:019d}{pad}"}], "acks": "leader"}))
    head = (
        b"POST /v1/topics/%s/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: %d\r\n\r\n{"messages": [{"payload": "' % (a.topic.encode(), body_len)
    )
    tail = b'%s"}], "acks": "leader"}' % pad.encode()
    answered_at: dict[int, int] = {}
    delivered: list[tuple[int, int, int]] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    e2e: list[float] = []
    rtt: list[float] = []
    sent_at: list[list[int]] = [[] for _ in pubs]
    answered = [0] * len(pubs)
    sub_buf = b""
    pub_buf = [b""] * len(pubs)
    sent = 0
    start = time.perf_counter()
    deadline = start + a.seconds + 10
    while (len(e2e) < n or len(rtt) < n) and time.perf_counter() < deadline:
        now = time.perf_counter()
        due = start + sent * interval
        if sent < n and now >= due:
            t = time.time_ns()
            pubs[sent % len(pubs)].sendall(b"%s%d%s" % (head, t, tail))
            sent_at[sent % len(pubs)].append(t)
            sent += 1
            continue
        timeout = max(0.0, due - now) if sent < n else 0.5
        for fd, _ in poller.poll(timeout):
            sock, which = by_fd[fd]
            data = sock.recv(1 << 20)
            if not data:
                raise SystemExit("connection closed")
            t_recv = time.time_ns()
            if which < 0:
                sub_buf += data
                cut = sub_buf.rfind(b"\n\n")
                if cut >= 0:
                    if a.trace:
                        for m in EVENT.finditer(sub_buf, 0, cut):
                            t_sent = int(m.group(2))
                            e2e.append((t_recv - t_sent) / 1e6)
                            delivered.append((int(m.group(1)), t_sent, t_recv))
                    else:
                        for m in STAMP.finditer(sub_buf, 0, cut):
                            e2e.append((t_recv - int(m.group(1))) / 1e6)
                    sub_buf = sub_buf[cut + 2 :]
            else:
                i = which
                buf = pub_buf[i] + data
                while True:
                    h = buf.find(b"\r\n\r\n")
                    if h < 0:
                        break
                    length = LENGTH.search(buf, 0, h)
                    ln = int(length.group(1)) if length else 0
                    if len(buf) < h + 4 + ln:
                        break
                    buf = buf[h + 4 + ln :]
                    t_sent = sent_at[i][answered[i]]
                    rtt.append((t_recv - t_sent) / 1e6)
                    if a.trace:
                        answered_at[t_sent] = t_recv
                    answered[i] += 1
                pub_buf[i] = buf
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    e2e.sort()
    rtt.sort()
    if a.trace:
        with open(a.trace, "w", encoding="ascii") as out:
            for off, t_sent, t_recv in delivered:
                out.write(f"{off} {t_sent} {answered_at.get(t_sent, 0)} {t_recv}\n")
    print(
        f"rate {a.rate:g} msg/s, {a.size} B payloads, acks=leader, batch 1, "
        f"{a.connections} publisher connections, {len(e2e)}/{n} delivered"
    )
    for name, xs in (("publish -> SSE delivery", e2e), ("publish round trip", rtt)):
        print(
            f"{name}: p50 {pct(xs, 0.5):.2f} ms  p99 {pct(xs, 0.99):.2f} ms  "
            f"p99.9 {pct(xs, 0.999):.2f} ms  max {xs[-1] if xs else float('nan'):.2f} ms"
        )
    user = (cpu1.ru_utime - cpu0.ru_utime) / max(1, sent) * 1e6
    system = (cpu1.ru_stime - cpu0.ru_stime) / max(1, sent) * 1e6
    print(f"client CPU {user + system:.0f} us/message (user {user:.0f}, system {system:.0f})")


if __name__ == "__main__":
    main()
