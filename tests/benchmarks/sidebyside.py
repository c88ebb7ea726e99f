#!/usr/bin/env python3
"""Sprawl side by side with Redis and NATS: the same Python client shapes, in one run.

    PYTHONPATH=tests python -m benchmarks.sidebyside [--repeat 3] [--wire json,lean,ndjson,ws] [--quick]
        [--rows fan|one|durable]

Starts ``redis-server`` and ``nats-server`` (JetStream on) and one ``twistd sprawl`` node on
127.0.0.1 with ports from the OS and fresh data directories, runs every workload against each
(one publisher process, each subscriber its own process, 100-byte payloads), prints the table of
docs/benchmarks.md with the medians of ``--repeat`` runs and Sprawl's ratio to the best peer, and
stops everything.  The peers come from Debian::

    apt-get install redis-server nats-server      # the Python clients: pip install -e .[bench]

A peer whose server is not installed is skipped (its columns say so).  The clients:

* Redis: redis-py, PUBLISH pipelined 100 at a time, the subscriber ``PubSub.get_message``;
  durable: XADD pipelined 100 at a time with ``appendonly yes``, ``appendfsync everysec``;
* NATS: nats-py, ``publish`` (flushed every 100), an async subscription callback; durable:
  JetStream publishes 100 in flight (the server keeps the stream in a file store);
* Sprawl: the asyncio HTTP/1.1 client of :mod:`sprawl.client.aio`, batches of 100 per POST,
  :data:`IN_FLIGHT` requests in flight on as many keep-alive connections (the pipelining of the
  others), ``acks=leader`` on a ``durable`` topic (every ack after an fsynced commit); the subscriber
  reads ``GET .../stream``.  ``--wire json`` is today's format (a JSON batch body; one SSE event
  per message, decoded one by one); ``--wire lean`` is :mod:`sprawl.client.wire`'s (a msgpack
  body; one SSE event per batch, ``?format=batch``); ``--wire ndjson`` a msgpack body and an
  NDJSON stream (one line per batch, ``?format=ndjson``); ``--wire ws`` publishes msgpack
  WebSocket publish frames of 100 on one socket, :data:`WS_WINDOW` in flight
  (:mod:`sprawl.client.aiows`: the publisher never waits for one batch's fsync before sending
  the next), the subscriber as ``ndjson``.  ``--rows fan`` runs the 1 -> 1 and 1 -> 10 rows
  only, ``--rows one`` the 1 -> 1 row, ``--rows durable`` the durable rows (issue 16's
  durable-ingest goal; with ``--wire ws`` the 16-connection row is 16 sockets of
  :data:`WS_WINDOW` frames each).

The workloads: 1 -> 1 and 1 -> 10 (msgs/s delivered, summed over subscribers, from the
publisher's start to the last subscriber's last message); publish -> receive latency at a steady
1,000 msg/s (one message per publish, send time in the payload, p50/p99 over the run after the
first second); durable publish from one client pipelining (Sprawl: one connection, and 16).
A second table gives the fan and durable rows' CPU microseconds per delivered (durable: stored)
message of each process:
the publisher's and the subscribers' own (``time.process_time`` over their run), the server's
from ``/proc/PID/stat`` (user + system, every thread) -- unlike a rate, CPU per message
hardly moves with other jobs' load, and it says which process bounds the rate.
(``SBS_BATCH`` and ``SBS_WINDOW`` in the environment change the batch and the ``ws`` window,
for experiments.)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.ab import process_cpu
from harness import NodeProcess
from harness.nodes import free_port

SIZE = 100
#: Sprawl publish requests one publisher keeps in flight (keep-alive connections), unless a
#: row names its own: an HTTP/1.1 connection carries one request at a time, and every durable
#: ack waits for an fsync, so one connection alone measures the disk, not the wire.
IN_FLIGHT = 4
BATCH = int(os.environ.get("SBS_BATCH", "100"))
#: Publish frames the ``ws`` wire's publisher keeps in flight on its socket.
WS_WINDOW = int(os.environ.get("SBS_WINDOW", "16"))
PAD = b"x" * (SIZE - 19)


def payload() -> bytes:
    """A 100-byte payload starting with its send time (``time.time_ns()``, 19 digits)."""
    return b"%019d" % time.time_ns() + PAD


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of a sorted list (nan when empty)."""
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# -- the servers --------------------------------------------------------------------------


def wait_port(port: int, deadline: float) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections (bounded)."""
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Peer:
    """A peer broker's server process on loopback (or None where it is not installed)."""

    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name = name
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, time.monotonic() + 20)

    def stop(self) -> None:
        """Terminate and reap."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start_redis(tmp: Path) -> Peer | None:
    """redis-server, AOF on (``everysec``: the XADD row) and no pub/sub output limit."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    port = free_port()
    d = tmp / "redis"
    d.mkdir()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
    argv += ["--client-output-buffer-limit", "pubsub 0 0 0"]
    return Peer("redis", argv, port)


def start_nats(tmp: Path) -> Peer | None:
    """nats-server with JetStream (file store in ``tmp``)."""
    exe = shutil.which("nats-server")
    if exe is None:
        return None
    port = free_port()
    d = tmp / "nats"
    d.mkdir()
    return Peer("nats", [exe, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(d)], port)


# -- client processes -----------------------------------------------------------------------
# Each runs in its own process (spawn) and puts one result dict on ``out``.


def _redis_sub(port: int, n: int, channel: str, ready: Any, out: Any, latency: bool) -> None:
    import redis

    r = redis.Redis(port=port)
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(channel)
    while ps.get_message(timeout=1.0) is None and not ps.subscribed:
        pass
    ready.set()
    cpu0 = time.process_time()
    got, lat, first, last = 0, [], 0.0, 0.0
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        m = ps.get_message(timeout=1.0)
        if m is None:
            continue
        now = time.time_ns()
        got += 1
        if latency:
            lat.append((now - int(m["data"][:19])) / 1000)
        last = now / 1e9
        if got == 1:
            first = last
    out.put({"got": got, "first": first, "last": last, "lat": lat, "cpu": time.process_time() - cpu0})


def _redis_pub(port: int, n: int, channel: str, rate: float, out: Any) -> None:
    import redis

    r = redis.Redis(port=port)
    start, cpu0 = time.time(), time.process_time()
    if rate:
        for i in range(n):
            _pace(start, i, rate)
            r.publish(channel, payload())
    else:
        for i in range(0, n, BATCH):
            p = r.pipeline(transaction=False)
            for _ in range(min(BATCH, n - i)):
                p.publish(channel, payload())
            p.execute()
    out.put({"start": start, "end": time.time(), "cpu": time.process_time() - cpu0})


def _redis_durable(port: int, n: int, out: Any) -> None:
    import redis

    r = redis.Redis(port=port)
    key = f"bench-{time.time_ns()}"
    start, cpu0 = time.time(), time.process_time()
    for i in range(0, n, BATCH):
        p = r.pipeline(transaction=False)
        for _ in range(min(BATCH, n - i)):
            p.xadd(key, {"p": payload()})
        p.execute()
    out.put({"start": start, "end": time.time(), "n": n, "cpu": time.process_time() - cpu0})


def _nats_sub(port: int, n: int, subject: str, ready: Any, out: Any, latency: bool) -> None:
    async def main() -> dict[str, Any]:
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        done = asyncio.get_running_loop().create_future()
        st: dict[str, Any] = {"got": 0, "first": 0.0, "last": 0.0, "lat": []}

        async def cb(msg: Any) -> None:
            now = time.time_ns()
            st["got"] += 1
            if latency:
                st["lat"].append((now - int(msg.data[:19])) / 1000)
            st["last"] = now / 1e9
            if st["got"] == 1:
                st["first"] = st["last"]
            if st["got"] >= n and not done.done():
                done.set_result(None)

        await nc.subscribe(subject, cb=cb, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
        await nc.flush()
        ready.set()
        cpu0 = time.process_time()
        try:
            await asyncio.wait_for(done, 120)
        except TimeoutError:
            pass
        st["cpu"] = time.process_time() - cpu0
        await nc.close()
        return st

    out.put(asyncio.run(main()))


def _nats_pub(port: int, n: int, subject: str, rate: float, out: Any) -> None:
    async def main() -> dict[str, Any]:
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        start, cpu0 = time.time(), time.process_time()
        for i in range(n):
            if rate:
                await _apace(start, i, rate)
                await nc.publish(subject, payload())
                await nc.flush()
            else:
                await nc.publish(subject, payload())
                if i % BATCH == BATCH - 1:
                    await nc.flush()
        await nc.flush()
        end = time.time()
        cpu = time.process_time() - cpu0
        await nc.close()
        return {"start": start, "end": end, "cpu": cpu}

    out.put(asyncio.run(main()))


def _nats_durable(port: int, n: int, out: Any) -> None:
    async def main() -> dict[str, Any]:
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        name = f"bench{time.time_ns()}"
        await js.add_stream(name=name, subjects=[name])
        start, cpu0 = time.time(), time.process_time()
        for i in range(0, n, BATCH):
            await asyncio.gather(*(js.publish(name, payload()) for _ in range(min(BATCH, n - i))))
        end = time.time()
        cpu = time.process_time() - cpu0
        await nc.close()
        return {"start": start, "end": end, "n": n, "cpu": cpu}

    out.put(asyncio.run(main()))


def _pace(start: float, i: int, rate: float) -> None:
    delay = start + i / rate - time.time()
    if delay > 0:
        time.sleep(delay)


async def _apace(start: float, i: int, rate: float) -> None:
    delay = start + i / rate - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


# Sprawl --------------------------------------------------------------------------------------


def _sprawl_body(n: int, wire: str) -> tuple[bytes, bytes]:
    """A publish body of ``n`` fresh payloads and its content type."""
    if wire in ("lean", "ndjson", "ws"):
        from sprawl.client import wire as w

        # Text payloads (a str is a text message, as in the JSON body): the same messages both ways.
        msgs = [{"payload": payload().decode()} for _ in range(n)]
        return w.encode_publish(msgs, acks="leader"), w.MSGPACK.encode()
    items = b",".join(b'{"payload":"%s"}' % payload() for _ in range(n))
    return b'{"acks":"leader","messages":[' + items + b"]}", b"application/json"


def _sprawl_sub(url: str, n: int, topic: str, ready: Any, out: Any, latency: bool, wire: str) -> None:
    import msgspec

    from sprawl.client.aio import Dechunker, Endpoint
    from sprawl.client.sse import SseParser

    async def main() -> dict[str, Any]:
        ep = Endpoint.parse(url)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(ep.host, ep.port)
        q = {"lean": "&format=batch", "ndjson": "&format=ndjson", "ws": "&format=ndjson"}.get(wire, "")
        writer.write(
            b"GET /v1/topics/%s/stream?from=latest%s HTTP/1.1\r\nHost: x\r\n\r\n"
            % (topic.encode(), q.encode())
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"stream refused: {head!r}")
        dechunk = Dechunker()
        st: dict[str, Any] = {"got": 0, "first": 0.0, "last": 0.0, "lat": []}
        lat = st["lat"]
        decode = msgspec.json.decode
        if wire in ("lean", "ndjson", "ws"):
            from sprawl.client import wire as w

            dec: Any = w.BatchStreamDecoder() if wire == "lean" else w.NdjsonStreamDecoder()
        else:
            parser = SseParser()
        opened = False
        deadline = loop.time() + 120
        while st["got"] < n and loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(262144), 1.0)
            except TimeoutError:
                continue
            if not chunk:
                break
            body = dechunk.feed(chunk)
            if not opened and (b": sprawl stream" in body or b'{"stream":' in body):
                opened = True
                ready.set()
                st["cpu0"] = time.process_time()
            now = time.time_ns()
            if wire in ("lean", "ndjson", "ws"):
                msgs = [m for batch in dec.feed(body) for m in batch.messages]
            else:
                msgs = [decode(e.data) for e in parser.feed(body) if e.event == "message"]
            if not msgs:
                continue
            if latency:
                lat.extend((now - int(m["payload"][:19])) / 1000 for m in msgs)
            st["got"] += len(msgs)
            st["last"] = now / 1e9
            if not st["first"]:
                st["first"] = st["last"]
        st["cpu"] = time.process_time() - st.pop("cpu0", 0.0)
        writer.close()
        return st

    out.put(asyncio.run(main()))


def _sprawl_pub(url: str, n: int, topic: str, rate: float, out: Any, wire: str, conns: int = 0) -> None:
    from sprawl.client.aio import Endpoint, HttpClient

    if wire == "ws":
        out.put(asyncio.run(_sprawl_ws_pub(url, n, topic, rate, conns)))
        return

    async def main() -> dict[str, Any]:
        ep = Endpoint.parse(url)
        path = f"/v1/topics/{topic}/messages"
        # The publisher keeps IN_FLIGHT requests in flight (one per connection), as redis-py's
        # pipeline and nats-py keep many messages in flight; the durable rows name their own.
        conns_ = conns or IN_FLIGHT
        clients = [HttpClient(ep, 30.0) for _ in range(conns_)]
        left = [n]
        start, cpu0 = time.time(), time.process_time()

        async def one(c: HttpClient, k: int) -> None:
            i = k
            while True:
                if rate:
                    # One message per request, spread round robin over the connections.
                    if i >= n:
                        return
                    await _apace(start, i, rate)
                    body, ctype = _sprawl_body(1, wire)
                    i += conns_
                else:
                    m = min(BATCH, left[0])
                    if m <= 0:
                        return
                    left[0] -= m
                    body, ctype = _sprawl_body(m, wire)
                r = await c.send(c.build("POST", path, body, ctype))
                if r.status != 200:
                    raise SystemExit(f"publish answered {r.status}: {r.body[:200]!r}")

        await asyncio.gather(*(one(c, k) for k, c in enumerate(clients)))
        end = time.time()
        cpu = time.process_time() - cpu0
        for c in clients:
            c.close()
        return {"start": start, "end": end, "n": n, "cpu": cpu}

    out.put(asyncio.run(main()))


async def _sprawl_ws_pub(url: str, n: int, topic: str, rate: float, conns: int) -> dict[str, Any]:
    """The ``ws`` wire's publisher: msgpack publish frames of :data:`BATCH` messages on
    ``conns`` (default 1) WebSockets, :data:`WS_WINDOW` frames in flight on each (at ``rate``:
    one message per frame)."""
    from sprawl.client.aiows import open_publisher

    pubs = [await open_publisher(url, topic, window=WS_WINDOW) for _ in range(conns or 1)]
    left = [n]
    start, cpu0 = time.time(), time.process_time()

    async def one(k: int) -> None:
        pub, sent, futs = pubs[k], 0, []
        while True:
            if rate:
                i = k + sent * len(pubs)
                if i >= n:
                    break
                await _apace(start, i, rate)
                m = 1
            else:
                m = min(BATCH, left[0])
                if m <= 0:
                    break
                left[0] -= m
            sent += 1
            futs.append(await pub.publish([{"payload": payload().decode()} for _ in range(m)], "leader"))
        for f in futs:
            await f  # raises on an error answer

    await asyncio.gather(*(one(k) for k in range(len(pubs))))
    end = time.time()
    cpu = time.process_time() - cpu0
    for p in pubs:
        p.close()
    return {"start": start, "end": end, "n": n, "cpu": cpu}


# -- one workload -----------------------------------------------------------------------------


def fan(
    ctx: Any,
    sub: Callable[..., None],
    sub_args: tuple[Any, ...],
    pub: Callable[..., None],
    pub_args: tuple[Any, ...],
    subs: int,
    n: int,
    latency: bool,
    sub_tail: tuple[Any, ...] = (),
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Start ``subs`` subscriber processes, wait until each is subscribed, run the publisher
    process; answer delivered msgs/s (summed) or the latency percentiles, and ``cpu``: the
    CPU microseconds per message delivered of the publisher, the server (``server_pid``,
    from ``/proc``; its start-up and the subscribers' connecting not counted) and the
    subscribers (summed)."""
    out = ctx.Queue()
    procs = []
    for _ in range(subs):
        ready = ctx.Event()
        p = ctx.Process(target=sub, args=(*sub_args, n, *sub_tail[:1], ready, out, latency, *sub_tail[1:]))
        p.start()
        procs.append((p, ready))
    try:
        for _p, ready in procs:
            if not ready.wait(30):
                raise RuntimeError("a subscriber did not subscribe within 30 s")
        s0 = process_cpu(server_pid) if server_pid else 0.0
        pp = ctx.Process(
            target=pub, args=(*pub_args, n, *sub_tail[:1], 1000.0 if latency else 0.0, out, *sub_tail[1:])
        )
        pp.start()
        results = [out.get(timeout=180) for _ in range(subs + 1)]
        s1 = process_cpu(server_pid) if server_pid else 0.0
        pp.join(30)
        for p, _ in procs:
            p.join(30)
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.kill()
    pubr = next(r for r in results if "start" in r)
    subr = [r for r in results if "got" in r]
    got = sum(r["got"] for r in subr)
    if latency:
        lat = sorted(x for r in subr for x in r["lat"][len(r["lat"]) // 10 :])
        return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "lost": subs * n - got}
    last = max(r["last"] for r in subr)
    per = 1e6 / max(1, got)
    cpu = {
        "pub": pubr.get("cpu", 0.0) * per,
        "server": (s1 - s0) * per,
        "sub": sum(r.get("cpu", 0.0) for r in subr) * per,
    }
    return {"rate": got / (last - pubr["start"]), "lost": subs * n - got, "cpu": cpu}


def durable(
    ctx: Any, fn: Callable[..., None], args: tuple[Any, ...], server_pid: int | None = None
) -> dict[str, Any]:
    """Run a durable-publish client process; answers its msgs/s (``rate``) and ``cpu``: the
    CPU microseconds per message of the publisher and of the server (``server_pid``, from
    ``/proc``, over the client process's whole life: its start-up is idle time for the server)."""
    out = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, out))
    s0 = process_cpu(server_pid) if server_pid else 0.0
    p.start()
    r = out.get(timeout=300)
    s1 = process_cpu(server_pid) if server_pid else 0.0
    p.join(30)
    per = 1e6 / max(1, r["n"])
    cpu = {"pub": r.get("cpu", 0.0) * per, "server": (s1 - s0) * per, "sub": 0.0}
    return {"rate": float(r["n"] / (r["end"] - r["start"])), "cpu": cpu}


def create_topic(url: str) -> str:
    """A fresh one-partition durable topic."""
    from harness.nodes import http_json

    name = f"sbs-{time.time_ns()}"
    status, body = http_json(f"{url}/v1/topics/{name}", "PUT", {"partitions": 1, "storage": "durable"})
    if status not in (200, 201):
        raise RuntimeError(f"topic create answered {status}: {body}")
    return name


# -- the table --------------------------------------------------------------------------------


def run_once(
    ctx: Any,
    redis_port: int | None,
    nats_port: int | None,
    url: str,
    n: int,
    wires: list[str],
    fan_only: bool = False,
    pids: dict[str, int] | None = None,
    one_only: bool = False,
    durable_only: bool = False,
) -> dict[tuple[str, str], Any]:
    """Every workload once against every broker (``fan_only``: the 1 -> 1 and 1 -> 10 rows;
    ``one_only``: the 1 -> 1 row; ``durable_only``: the durable rows); answers
    {(row, column): value}, with the fan and durable rows' CPU per message under
    (row + "cpu", column) where ``pids`` names the servers' processes."""
    res: dict[tuple[str, str], Any] = {}
    pids = pids or {}
    lat_n = int(n / 20)
    for subs in () if durable_only else (1,) if one_only else (1, 10):
        row = f"fan{subs}"
        if redis_port:
            r = fan(
                ctx,
                _redis_sub,
                (redis_port,),
                _redis_pub,
                (redis_port,),
                subs,
                n,
                False,
                (f"c{time.time_ns()}",),
                pids.get("redis"),
            )
            res[(row, "redis")] = r["rate"]
            res[(row + "cpu", "redis")] = r["cpu"]
        if nats_port:
            r = fan(
                ctx,
                _nats_sub,
                (nats_port,),
                _nats_pub,
                (nats_port,),
                subs,
                n,
                False,
                (f"s{time.time_ns()}",),
                pids.get("nats"),
            )
            res[(row, "nats")] = r["rate"]
            res[(row + "cpu", "nats")] = r["cpu"]
        for wire in wires:
            t = create_topic(url)
            r = fan(
                ctx, _sprawl_sub, (url,), _sprawl_pub, (url,), subs, n, False, (t, wire), pids.get("sprawl")
            )
            res[(row, f"sprawl-{wire}")] = r["rate"]
            res[(row + "cpu", f"sprawl-{wire}")] = r["cpu"]
    if fan_only or one_only:
        return res
    if durable_only:
        pass
    elif redis_port:
        res[("lat", "redis")] = fan(
            ctx, _redis_sub, (redis_port,), _redis_pub, (redis_port,), 1, lat_n, True, (f"l{time.time_ns()}",)
        )
    if nats_port and not durable_only:
        res[("lat", "nats")] = fan(
            ctx, _nats_sub, (nats_port,), _nats_pub, (nats_port,), 1, lat_n, True, (f"l{time.time_ns()}",)
        )
    for wire in () if durable_only else wires:
        t = create_topic(url)
        res[("lat", f"sprawl-{wire}")] = fan(
            ctx, _sprawl_sub, (url,), _sprawl_pub, (url,), 1, lat_n, True, (t, wire)
        )
    runs: list[tuple[str, str, Callable[..., None], tuple[Any, ...], int | None]] = []
    if redis_port:
        runs.append(("durable", "redis", _redis_durable, (redis_port, n), pids.get("redis")))
    if nats_port:
        runs.append(("durable", "nats", _nats_durable, (nats_port, n // 4), pids.get("nats")))
    for wire in wires:
        sp = pids.get("sprawl")
        runs.append(("durable", f"sprawl-{wire}", _sprawl_pub1, (url, n, create_topic(url), wire), sp))
        runs.append(("durable16", f"sprawl-{wire}", _sprawl_pub16, (url, n, create_topic(url), wire), sp))
    for row, col, fn, args, pid in runs:
        r = durable(ctx, fn, args, pid)
        res[(row, col)] = r["rate"]
        res[(row + "cpu", col)] = r["cpu"]
    return res


def _sprawl_pub1(url: str, n: int, topic: str, wire: str, out: Any) -> None:
    _sprawl_pub(url, n, topic, 0.0, out, wire, 1)


def _sprawl_pub16(url: str, n: int, topic: str, wire: str, out: Any) -> None:
    _sprawl_pub(url, n, topic, 0.0, out, wire, 16)


def median_of(
    runs: list[dict[tuple[str, str], Any]], key: tuple[str, str], field: str | None = None
) -> float | None:
    """The median over runs (None when the broker was skipped)."""
    xs = [r[key] if field is None else r[key][field] for r in runs if key in r]
    return statistics.median(xs) if xs else None


def table(runs: list[dict[tuple[str, str], Any]], wires: list[str]) -> str:
    """The Markdown table: a column per broker (and Sprawl wire), Sprawl / best peer."""

    def k(x: float | None) -> str:
        return "skipped" if x is None else f"{x / 1000:.1f}k"

    lines = [
        "| workload | Redis (redis-py) | NATS (nats-py) | "
        + " | ".join(f"Sprawl {w}" for w in wires)
        + " | Sprawl / best peer |"
    ]
    lines.append("|---" * (4 + len(wires)) + "|")
    for row, name in (
        ("fan1", "1 publisher -> 1 subscriber, msgs/s"),
        ("fan10", "1 publisher -> 10 subscribers, msgs/s delivered"),
    ):
        peers = [median_of(runs, (row, b)) for b in ("redis", "nats")]
        mine = [median_of(runs, (row, f"sprawl-{w}")) for w in wires]
        if not any(peers) and not any(mine):
            continue  # a row not run (``--rows one``)
        best = max((x for x in peers if x), default=None)
        ratio = " / ".join(f"{m / best:.2f}x" for m in mine if m) if best else "-"
        lines.append(
            f"| {name} | {k(peers[0])} | {k(peers[1])} | " + " | ".join(k(m) for m in mine) + f" | {ratio} |"
        )

    if not any(("durable", b) in r for r in runs for b in ("redis", "nats", *(f"sprawl-{w}" for w in wires))):
        return "\n".join(lines)  # ``--rows fan``/``one``: the fan rows only

    columns = ("redis", "nats", *(f"sprawl-{w}" for w in wires))
    if any(("lat", b) in r for r in runs for b in columns):  # (not with ``--rows durable``)

        def lat(b: str) -> str:
            p50, p99 = median_of(runs, ("lat", b), "p50"), median_of(runs, ("lat", b), "p99")
            return "skipped" if p50 is None or p99 is None else f"{p50:,.0f} / {p99:,.0f} us"

        peers_l = [median_of(runs, ("lat", b), "p50") for b in ("redis", "nats")]
        best_l = min((x for x in peers_l if x), default=None)
        mine_l = [median_of(runs, ("lat", f"sprawl-{w}"), "p50") for w in wires]
        ratio_l = " / ".join(f"{m / best_l:.1f}x" for m in mine_l if m) if best_l else "-"
        lines.append(
            "| publish -> receive at 1,000 msg/s, p50 / p99 | "
            + " | ".join(lat(b) for b in ("redis", "nats"))
            + " | "
            + " | ".join(lat(f"sprawl-{w}") for w in wires)
            + f" | p50 {ratio_l} |"
        )
    rd, nd = median_of(runs, ("durable", "redis")), median_of(runs, ("durable", "nats"))
    mine_d = [
        (median_of(runs, ("durable", f"sprawl-{w}")), median_of(runs, ("durable16", f"sprawl-{w}")))
        for w in wires
    ]
    ratio_d = " / ".join(f"{b / rd:.2f}x" for _, b in mine_d if b) if rd else "-"
    lines.append(
        f"| durable publish (XADD AOF everysec / JetStream / Sprawl acks=leader 1 conn. / 16 conns.) | {k(rd)} | {k(nd)} | "
        + " | ".join(f"{k(a)} / {k(b)}" for a, b in mine_d)
        + f" | 16 conns.: {ratio_d} Redis |"
    )
    return "\n".join(lines)


def cpu_table(runs: list[dict[tuple[str, str], Any]], wires: list[str]) -> str:
    """CPU microseconds per delivered (durable rows: stored) message of each process of the
    fan and durable rows (medians)."""
    lines = [
        "| row | broker | publisher us/msg | server us/msg | subscriber(s) us/msg | total |",
        "|---" * 6 + "|",
    ]
    for row in ("fan1", "fan10", "durable", "durable16"):
        for b in ("redis", "nats", *(f"sprawl-{w}" for w in wires)):
            xs = [r[(row + "cpu", b)] for r in runs if (row + "cpu", b) in r]
            if not xs:
                continue
            med = {k: statistics.median(x[k] for x in xs) for k in ("pub", "server", "sub")}
            lines.append(
                f"| {row} | {b} | {med['pub']:.2f} | {med['server']:.2f} | {med['sub']:.2f} | {sum(med.values()):.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--messages", type=int, default=200_000, help="per throughput run")
    ap.add_argument("--quick", action="store_true", help="a tenth of the messages (a smoke run)")
    ap.add_argument("--wire", default="json,lean", help="Sprawl's wire formats to run: json, lean, ndjson")
    ap.add_argument(
        "--rows",
        choices=["all", "fan", "one", "durable"],
        default="all",
        help="fan: the 1 -> 1 and 1 -> 10 rows only; one: the 1 -> 1 row only; durable: the durable rows only",
    )
    ap.add_argument(
        "--node-arg", action="append", default=[], help="an extra argument of the Sprawl node (e.g. --wal)"
    )
    a = ap.parse_args()
    n = a.messages // 10 if a.quick else a.messages
    wires = [w for w in a.wire.split(",") if w]
    ctx = multiprocessing.get_context("spawn")
    # A SIGTERM stops the servers too (the finally clauses below run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        redis, nats = start_redis(tmp), start_nats(tmp)
        for name, peer in (("redis-server", redis), ("nats-server", nats)):
            if peer is None:
                print(
                    f"{name} not installed: skipped (apt-get install redis-server nats-server)",
                    file=sys.stderr,
                )
        node = NodeProcess(tmp / "sprawl", *a.node_arg).start()
        assert node.proc is not None
        pids = {"sprawl": node.proc.pid}
        for name, peer in (("redis", redis), ("nats", nats)):
            if peer is not None:
                pids[name] = peer.proc.pid
        runs: list[dict[tuple[str, str], Any]] = []
        try:
            for i in range(a.repeat):
                load = os.getloadavg()[0]
                runs.append(
                    run_once(
                        ctx,
                        redis.port if redis else None,
                        nats.port if nats else None,
                        node.url,
                        n,
                        wires,
                        a.rows == "fan",
                        pids,
                        a.rows == "one",
                        a.rows == "durable",
                    )
                )
                print(
                    f"run {i + 1}/{a.repeat} done (load average {load:.1f} -> {os.getloadavg()[0]:.1f}): {runs[-1]}",
                    file=sys.stderr,
                )
        finally:
            node.stop()
            for peer in (redis, nats):
                if peer is not None:
                    peer.stop()
    print(table(runs, wires))
    print()
    print(cpu_table(runs, wires))


if __name__ == "__main__":
    main()
