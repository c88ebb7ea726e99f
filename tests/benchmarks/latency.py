#!/usr/bin/env python3
"""Publish → SSE delivery latency at a steady rate, from one single-threaded client.

    python -m benchmarks.latency --url http://127.0.0.1:8080 --rate 1000 --seconds 20
        [--publish http|ws] [--acks leader|quorum] [--pub-url URL ...]

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

``--publish ws`` publishes on the API's WebSocket instead (docs/api.md, ``GET
.../ws?feed=none``, "msgpack publish frames"): each publisher connection is a publish-only
socket, and each message is one binary msgpack publish frame
``{"publish": {"messages": [{"payload": ...}], "acks": ...}, "ref": "NNNNNNNNNN"}`` (masked,
from a template as above); its answer is the JSON text frame ``{"published": ..., "ref"}``,
matched by ``ref``.  The topic, the SSE subscriber and what is timed are the same: the
publish -> SSE delivery line is send -> SSE event read, and the publish round trip line is
send -> the publish's answer (its ack) read.  ``--pub-url`` spreads the publisher connections
over several nodes (round robin; the SSE subscriber stays on ``--url``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import select
import socket
import time
import urllib.parse
import urllib.request

from sprawl.client.aiows import FrameReader, accept_key, client_frame

STAMP = re.compile(rb'"payload":"(\d{19})')
#: An SSE event's offset and send stamp (``id: P:O`` then its data).
EVENT = re.compile(rb'id: \d+:(\d+)\ndata: [^\n]*?"payload":"(\d{19})')
LENGTH = re.compile(rb"(?i)content-length: (\d+)")
#: A WebSocket publish answer's ``ref`` (the publisher's sequence number, 10 digits).
REF = re.compile(rb'"ref":"(\d{10})"')
#: The placeholders of the WebSocket publish frame's template: the stamp, the ref.
STAMP_AT, REF_AT = b"S" * 19, b"R" * 10


def ws_template(acks: str, pad: str) -> tuple[bytes, int, int]:
    """The msgpack publish frame of one message (before WebSocket framing) with the places
    of its 19-digit send stamp and 10-digit ref: (frame, stamp at, ref at)."""
    import msgspec

    body = msgspec.msgpack.encode(
        {
            "publish": {"messages": [{"payload": STAMP_AT.decode() + pad}], "acks": acks},
            "ref": REF_AT.decode(),
        }
    )
    return body, body.index(STAMP_AT), body.index(REF_AT)


def ws_open(host: str, port: int, topic: str) -> tuple[socket.socket, bytes]:
    """A publish-only WebSocket (``?feed=none``) to the node, upgraded and checked (the node
    must name msgpack publish frames); (socket, bytes read past the upgrade answer)."""
    key = base64.b64encode(os.urandom(16))
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(
        b"GET /v1/topics/%s/ws?feed=none HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (topic.encode(), host.encode(), key)
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk or len(buf) > 65536:
            raise SystemExit(f"no WebSocket upgrade answer: {buf[:300]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    low = head.lower()
    if not head.startswith(b"HTTP/1.1 101") or accept_key(key).lower() not in low or b"msgpack" not in low:
        raise SystemExit(f"the node refused the publish socket: {head[:300]!r}")
    return s, rest


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
    ap.add_argument(
        "--publish",
        choices=["http", "ws"],
        default="http",
        help="http: one POST per message (the default); ws: one msgpack publish frame per message "
        "on a publish-only WebSocket per connection",
    )
    ap.add_argument("--acks", choices=["leader", "quorum"], default="leader")
    ap.add_argument(
        "--pub-url",
        action="append",
        default=[],
        help="publish to these nodes (round robin over the connections; default: --url)",
    )
    ap.add_argument("--no-create", action="store_true", help="the topic exists (made by the caller)")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    if not a.no_create:
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
    targets = [urllib.parse.urlparse(x) for x in (a.pub_url or [a.url])]
    ends = [(t.hostname or "127.0.0.1", t.port or 80) for t in targets]
    ws = a.publish == "ws"
    readers: list[FrameReader] = []
    pubs: list[socket.socket] = []
    early: list[bytes] = []
    for i in range(a.connections):
        h, p = ends[i % len(ends)]
        if ws:
            s, rest = ws_open(h, p, a.topic)
            readers.append(FrameReader())
            early.append(rest)
        else:
            s = socket.create_connection((h, p))
            early.append(b"")
        pubs.append(s)
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
    body_len = len(json.dumps({"messages": [{"payload": f"{0:019d}{pad}"}], "acks": a.acks}))
    head = (
        b"POST /v1/topics/%s/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: %d\r\n\r\n{"messages": [{"payload": "' % (a.topic.encode(), body_len)
    )
    tail = b'%s"}], "acks": "%s"}' % (pad.encode(), a.acks.encode())
    # The WebSocket publish frame: the msgpack body's three pieces around the stamp and the
    # ref, masked per connection with its own key (RFC 6455: every client frame is masked).
    frame, at_stamp, at_ref = ws_template(a.acks, pad)
    w0, w1, w2 = frame[:at_stamp], frame[at_stamp + 19 : at_ref], frame[at_ref + 10 :]
    keys = [os.urandom(4) for _ in pubs]
    answered_at: dict[int, int] = {}
    delivered: list[tuple[int, int, int]] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    e2e: list[float] = []
    rtt: list[float] = []
    sent_at: list[list[int]] = [[] for _ in pubs]
    #: ws: ref -> send stamp, of the frames not answered yet
    unanswered: dict[int, int] = {}
    answered = [0] * len(pubs)
    errors: list[bytes] = []
    sub_buf = b""
    pub_buf = list(early) if not ws else [b""] * len(pubs)
    sent = 0

    def on_publisher_data(i: int, data: bytes, t_recv: int) -> None:
        if ws:
            for op, payload in readers[i].feed(data):
                if op == 9:  # the node's ping: answered, or it drops the socket
                    pubs[i].sendall(client_frame(payload, 10, keys[i]))
                    continue
                if op == 8:
                    raise SystemExit(f"the node closed publish socket {i}: {payload[2:]!r}")
                m = REF.search(payload)
                if m is None or not payload.startswith(b'{"published"'):
                    errors.append(payload[:300])
                    if m is None:
                        continue
                t_sent = unanswered.pop(int(m.group(1)))
                rtt.append((t_recv - t_sent) / 1e6)
                if a.trace:
                    answered_at[t_sent] = t_recv
                answered[i] += 1
            return
        buf = pub_buf[i] + data
        while True:
            h = buf.find(b"\r\n\r\n")
            if h < 0:
                break
            length = LENGTH.search(buf, 0, h)
            ln = int(length.group(1)) if length else 0
            if len(buf) < h + 4 + ln:
                break
            if not buf.startswith(b"HTTP/1.1 200"):
                errors.append(buf[: min(h + 4 + ln, 300)])
            buf = buf[h + 4 + ln :]
            t_sent = sent_at[i][answered[i]]
            rtt.append((t_recv - t_sent) / 1e6)
            if a.trace:
                answered_at[t_sent] = t_recv
            answered[i] += 1
        pub_buf[i] = buf

    for i, rest in enumerate(early):
        if ws and rest:
            on_publisher_data(i, rest, time.time_ns())
    start = time.perf_counter()
    deadline = start + a.seconds + 10
    while (len(e2e) < n or len(rtt) < n) and time.perf_counter() < deadline:
        now = time.perf_counter()
        due = start + sent * interval
        if sent < n and now >= due:
            t = time.time_ns()
            c = sent % len(pubs)
            if ws:
                unanswered[sent] = t
                body = b"%s%d%s%010d%s" % (w0, t, w1, sent, w2)
                pubs[c].sendall(client_frame(body, 2, keys[c]))
            else:
                pubs[c].sendall(b"%s%d%s" % (head, t, tail))
                sent_at[c].append(t)
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
                on_publisher_data(which, data, t_recv)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    e2e.sort()
    rtt.sort()
    if a.trace:
        with open(a.trace, "w", encoding="ascii") as out:
            for off, t_sent, t_recv in delivered:
                out.write(f"{off} {t_sent} {answered_at.get(t_sent, 0)} {t_recv}\n")
    wire = (
        "publish wire ws (one msgpack frame per message)"
        if ws
        else "publish wire http (one POST per message)"
    )
    print(
        f"rate {a.rate:g} msg/s, {a.size} B payloads, acks={a.acks}, batch 1, {wire}, "
        f"{a.connections} publisher connections, {len(e2e)}/{n} delivered, {len(rtt)}/{n} answered"
    )
    for name, xs in (("publish -> SSE delivery", e2e), ("publish round trip", rtt)):
        print(
            f"{name}: p50 {pct(xs, 0.5):.2f} ms  p99 {pct(xs, 0.99):.2f} ms  "
            f"p99.9 {pct(xs, 0.999):.2f} ms  max {xs[-1] if xs else float('nan'):.2f} ms"
        )
    user = (cpu1.ru_utime - cpu0.ru_utime) / max(1, sent) * 1e6
    system = (cpu1.ru_stime - cpu0.ru_stime) / max(1, sent) * 1e6
    print(f"client CPU {user + system:.0f} us/message (user {user:.0f}, system {system:.0f})")
    if errors:
        print(f"!!! {len(errors)} publishes answered with an error; the first: {errors[0]!r}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
