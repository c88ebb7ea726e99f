#!/usr/bin/env python3
"""Publish -> SSE latency at a steady rate on one fresh node, and where its CPU goes:

    PYTHONPATH=tests python -m benchmarks.latency_profile [--rate 1000] [--seconds 20]
        [--repeat 3] [--profile /tmp/node.raw]

Starts a fresh ``twistd sprawl`` node on loopback and runs ``benchmarks.latency`` (one
single-threaded client: one message per publish, ``acks=leader``, a durable topic, an SSE
subscriber from ``latest``) against it ``--repeat`` times, printing each run's p50/p99 and
their medians, and the node's CPU time per message (user + system, from ``/proc``).  With
``--profile`` the node runs under ``py-spy record`` (``--nonblocking``, ``--gil``: samples of
the thread holding the GIL, i.e. Python's own CPU work; raw format) for the first run only (so that run's latency is not a
figure), and a summary is printed: CPU samples per message and the share of the samples by
layer and by function (self time).  CPU profiles barely depend on the machine's load;
the latency figures do (the load average is printed with each run).  With ``--stalls``
the node runs under ``benchmarks/stall_probe.py`` (a reactor-stall probe: what held the
reactor for over 2 ms, and every garbage collection's length); its summary follows each run.
Every run also prints how many of its LMDB commits (submit to completion, thread hand-offs
included) and collections took over 1, 2.5, 5, 10 and 25 ms (the node's ``/metrics``): the
tails a p99 can be made of while the reactor itself is free.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness.nodes
from harness import NodeProcess

HERE = Path(__file__).resolve().parent
#: Seconds py-spy records beyond the run (the node's start-up); it then writes its file and
#: ends the node (a SIGTERM would end py-spy before it writes).
SPY_MARGIN = 10
LINE = re.compile(r"p50 ([\d.]+) ms  p99 ([\d.]+) ms")

#: Layers by the path of a frame's file, first match wins.
LAYERS = [
    ("sprawl/http/", "sprawl.http"),
    ("sprawl/delivery/", "sprawl.delivery"),
    ("sprawl/pubsub/", "sprawl.pubsub"),
    ("sprawl/log/", "sprawl.log"),
    ("sprawl/storage/", "sprawl.storage (incl. the writer thread's commit)"),
    ("sprawl/metrics", "sprawl.metrics"),
    ("sprawl/", "sprawl (other)"),
    ("prometheus_client", "prometheus_client"),
    ("klein", "klein"),
    ("werkzeug", "werkzeug"),
    ("twisted/web", "twisted.web"),
    ("twisted/internet/defer", "twisted Deferreds"),
    ("twisted/internet", "twisted reactor"),
    ("twisted/logger", "twisted.logger"),
    ("twisted/python/threadpool", "twisted threadpool"),
    ("lmdb", "lmdb"),
    ("threading.py", "threads (waits, wake-ups)"),
    ("msgspec", "msgspec"),
]


def layer(frame: str) -> str:
    for part, name in LAYERS:
        if part in frame:
            return name
    return "other"


def summarize(raw: Path, messages: int) -> str:
    """A summary of a py-spy raw profile: samples per message, by layer and by function."""
    by_layer: collections.Counter[str] = collections.Counter()
    by_self: collections.Counter[str] = collections.Counter()
    by_incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f]
        if not any("mainLoop" in f or "Thread._bootstrap" in f for f in frames):
            continue  # start-up (imports, recovery) before the reactor runs
        total += count
        deepest = frames[-1] if frames else "?"
        # The deepest frame of Sprawl's own code (else the deepest frame) names the layer.
        own = [f for f in frames if "sprawl/" in f]
        by_layer[layer(own[-1] if own else deepest)] += count
        by_self[re.sub(r":\d+\)", ")", deepest)] += count
        for f in {re.sub(r":\d+\)", ")", f) for f in frames}:
            by_incl[f] += count
    out = [
        f"{total} samples, {total / max(1, messages):.3f} per message",
        "",
        "| layer | share |",
        "|---|---|",
    ]
    out += [f"| {k} | {v / total:.1%} |" for k, v in by_layer.most_common()]
    out += ["", "self time, top 25:"]
    out += [f"  {v / total:6.1%}  {k}" for k, v in by_self.most_common(25)]
    out += ["", "inclusive, top 40:"]
    out += [f"  {v / total:6.1%}  {k}" for k, v in by_incl.most_common(40)]
    return "\n".join(out)


def stall_summary(report: Path, seconds: float) -> str:
    """The stall probe's report in a few lines (the whole of it stays in ``report``)."""
    import json

    r = json.loads(report.read_text())
    out = [
        f"stalls over {r['threshold_ms']:g} ms: {r['stalls']} ({r['stalls'] / seconds:.1f}/s of the run and "
        f"the start), over 5 ms: {r['stalls_over_5ms']}, the main thread on a CPU for 70 %+ of the "
        f"stall: {r['working_stalls']}; collections {r['collections']}, "
        f"over 1 ms: {r['collections_over_1ms'][:20]}",
        f"causes (work: on a CPU; cpu: waiting for one; gil: asleep while another thread ran): "
        f"{r.get('causes', {})}",
    ]
    for s in r["longest"][:12]:
        out.append(
            f"  {s['ms']:7.2f} ms {s.get('cause', '?'):5s} (on CPU {s['on_cpu']:.0%}, waiting for a CPU "
            f"{s.get('main_runqueue', 0):.0%}, switches {s.get('main_voluntary', '?')}/"
            f"{s.get('main_involuntary', '?')}, others on CPU {s.get('others_on_cpu', {})} waiting "
            f"{s.get('others_waiting', {})})  "
            f"{s['innermost_sprawl'][:2]}  {s['innermost'][:4]}"
        )
    return "\n".join(out)


#: The one-node path's hops, in order: (name, from event, to event).  ``sent`` / ``answered`` /
#: ``delivered`` are the client's (``benchmarks.latency --trace``), ``pub`` / ``stored`` / ``sse``
#: the node's timeline, ``submit`` ... ``back`` the LMDB group commit that held the offset.
HOPS = [
    ("client sent -> node took it (wire, wake-up, parse, publish path)", "sent", "pub"),
    ("client sent -> the node's channel read it (wire, the reactor's wake-up)", "sent", "read"),
    ("read -> took it (parse, the publish path)", "read", "pub"),
    ("took it -> commit handed to the writer (the turn's end, group commit)", "pub", "submit"),
    ("handed -> the writer thread began it (wake-up, GIL)", "submit", "began"),
    ("began -> ops done", "began", "body"),
    ("ops done -> committed (the fsyncs)", "body", "synced"),
    ("committed -> back on the reactor (hand-back: waker, GIL, the reactor's turn)", "synced", "back"),
    ("back -> stored (the commit's callbacks before it)", "back", "stored"),
    ("stored -> SSE event sent", "stored", "sse"),
    ("SSE event sent -> client read it", "sse", "delivered"),
    ("committed -> SSE event sent (fsync to the bytes leaving)", "synced", "sse"),
    ("client sent -> answer read (round trip)", "sent", "answered"),
    ("client sent -> SSE read (end to end)", "sent", "delivered"),
]


def hop_table(base: Path, trace: Path | None) -> str:
    """The per-hop table of one run: the client's trace merged with the node's timeline
    (``SPRAWL_TIMELINE``; files ``base.PID``) by offset, each sampled offset's commit found
    as the first one handed to the writer at or after the offset was taken."""
    import bisect

    events: dict[int, dict[str, float]] = collections.defaultdict(dict)
    commits: list[tuple[float, ...]] = []
    for f in base.parent.glob(base.name + ".*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "commit":
                commits.append(tuple(float(x) for x in parts[2:7]))
            elif len(parts) == 3:
                events[int(parts[0])].setdefault(parts[1], float(parts[2]))
    commits.sort()
    starts = [c[0] for c in commits]
    rows: dict[str, list[float]] = collections.defaultdict(list)
    # (a closed loop has no client trace: the node's own hops only)
    lines = trace.read_text().splitlines() if trace is not None else [f"{o} 0 0 0" for o in sorted(events)]
    for line in lines:
        off, sent, answered, delivered = (int(x) for x in line.split())
        ev = events.get(off)
        if ev is None or "pub" not in ev:
            continue
        ev = dict(ev)
        if sent:
            ev.update(sent=sent / 1e9, delivered=delivered / 1e9)
        if answered:
            ev["answered"] = answered / 1e9
        i = bisect.bisect_left(starts, ev["pub"])
        if i < len(commits):
            ev.update(zip(("submit", "began", "body", "synced", "back"), commits[i], strict=True))
        for name, a, b in HOPS:
            if a in ev and b in ev:
                rows[name].append((ev[b] - ev[a]) * 1000)
    out = [
        f"per hop, ms ({max(map(len, rows.values()), default=0)} sampled messages; commits {len(commits)}):",
        "| hop | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    for name, _, _ in HOPS:
        xs = sorted(rows.get(name, []))
        if xs:
            q = [xs[min(len(xs) - 1, int(f * len(xs)))] for f in (0.5, 0.9, 0.99)]
            out.append(f"| {name} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} | {xs[-1]:.3f} |")
    return "\n".join(out)


#: The histograms whose tails a run's p99 may be made of (from the node's ``/metrics``).
TAILS = ("sprawl_lmdb_commit_duration_seconds", "sprawl_gc_pause_seconds")


def histograms(url: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts (``le`` -> count) of :data:`TAILS` in the node's ``/metrics``."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    out: dict[str, dict[float, float]] = {name: {} for name in TAILS}
    for line in text.splitlines():
        for name in TAILS:
            if line.startswith(name + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                counts = out[name]
                counts[bound] = counts.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def commit_count(hist: dict[str, dict[float, float]]) -> float:
    """LMDB commits so far (the commit histogram's count)."""
    return hist.get(TAILS[0], {}).get(float("inf"), 0.0)


def tails(before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]) -> str:
    """How many of the run's LMDB commits (submit to completion on the reactor: the thread
    hand-offs included) and collections took longer than each bucket bound."""
    out = []
    for name in TAILS:
        b, a = before.get(name, {}), after.get(name, {})
        total = a.get(float("inf"), 0.0) - b.get(float("inf"), 0.0)
        over = []
        for bound in (0.001, 0.0025, 0.005, 0.01, 0.025):
            n = total - (a.get(bound, 0.0) - b.get(bound, 0.0))
            over.append(f"> {bound * 1000:g} ms {n:.0f}")
        out.append(f"{name}: {total:.0f} in the run; " + ", ".join(over))
    return "\n".join(out)


def wal_frames(data_dir: Path) -> int:
    """Write-ahead-log frames (one ``fdatasync`` each) the node has applied to LMDB so far:
    the seq LMDB holds (``node/wal_applied``; the node's LMDB read from this process, read
    only), once it holds still for 0.1 s (the last frames' applies follow their acks)."""
    import lmdb

    from sprawl.storage.lmdb import DBS, WAL_APPLIED_KEY

    env = lmdb.open(str(data_dir / "lmdb"), readonly=True, max_dbs=len(DBS) + 2, lock=True)
    try:
        meta = env.open_db(b"meta", create=False)
        last = -1
        for _ in range(50):
            with env.begin(db=meta) as txn:
                raw = txn.get(WAL_APPLIED_KEY)
            seq = int.from_bytes(raw, "big") if raw else 0
            if seq == last:
                return seq
            last = seq
            time.sleep(0.1)
        return last
    finally:
        env.close()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process ``pid`` so far, by TID."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def by_thread(pid: int, before: dict[int, float], after: dict[int, float], messages: float) -> str:
    """The node's CPU per message split by thread: the reactor (main) thread, the busiest
    other thread (the LMDB writer's commits), and the rest (readers, the probe)."""
    delta = {t: after[t] - before.get(t, 0.0) for t in after}
    main = delta.pop(pid, 0.0)
    others = sorted(delta.values(), reverse=True)
    busiest = others[0] if others else 0.0
    rest = sum(others[1:])
    us = 1e6 / max(1.0, messages)
    return (
        f"node CPU by thread: reactor {main * us:.0f} us/message, busiest other thread (normally the LMDB "
        f"writer) {busiest * us:.0f}, the other {len(others) - 1 if others else 0} threads {rest * us:.0f}"
    )


def run_latency(
    url: str,
    rate: float,
    seconds: float,
    connections: int,
    trace: Path | None = None,
    publish: str = "http",
) -> tuple[float, float, str]:
    """One run of benchmarks.latency (``publish``: its ``--publish`` wire): (p50 ms, p99 ms,
    its output)."""
    done = subprocess.run(
        [sys.executable, str(HERE / "latency.py"), "--url", url, "--rate", str(rate)]
        + ["--seconds", str(seconds), "--connections", str(connections), "--publish", publish]
        + (["--trace", str(trace)] if trace is not None else []),
        capture_output=True,
        text=True,
        timeout=seconds * 3 + 60,
    )
    out = done.stdout + done.stderr
    print(out.strip(), flush=True)
    m = LINE.search(out)
    if m is None:
        raise RuntimeError(f"no latency line in: {out}")
    return float(m.group(1)), float(m.group(2)), out


def closed_loop(url: str, n: int, size: int = 100, publish: str = "http") -> tuple[float, float, str]:
    """``n`` single-message publishes (``acks=leader``) one after the other on one keep-alive
    connection (``publish="ws"``: one msgpack publish frame each on a publish-only
    WebSocket), each sent when the last was answered, while an SSE subscriber (a thread of
    this process) reads the topic: no backlog can form however slow the machine, so the
    node's CPU per message is the publish path's own.  (p50, p99 of the round trip in ms,
    a summary line)."""
    import socket
    import threading
    import urllib.parse
    import urllib.request

    u = urllib.parse.urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    topic = f"closed-{time.time_ns()}"
    req = urllib.request.Request(f"{url}/v1/topics/{topic}", data=b"{}", method="PUT")
    req.add_header("content-type", "application/json")
    urllib.request.urlopen(req, timeout=30).read()
    sub = socket.create_connection((host, port), timeout=60)
    sub.sendall(f"GET /v1/topics/{topic}/stream?from=latest HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    seen = [0]
    head = b""
    while b": sprawl stream" not in head:
        chunk = sub.recv(65536)
        if not chunk:
            raise RuntimeError("stream closed")
        head += chunk

    def read() -> None:
        while seen[0] < n:
            data = sub.recv(1 << 20)
            if not data:
                return
            seen[0] += data.count(b"\nid: ") + data.startswith(b"id: ")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pad = "x" * size
    rtt: list[float] = []
    if publish == "ws":
        rtt = _closed_ws(host, port, topic, n, pad)
    else:
        rtt = _closed_http(host, port, topic, n, pad)
    reader.join(30)
    sub.close()
    rtt.sort()
    p50, p99 = rtt[len(rtt) // 2], rtt[min(len(rtt) - 1, int(0.99 * len(rtt)))]
    return (
        p50,
        p99,
        f"closed loop ({publish}): {n} publishes, {seen[0]} delivered, "
        f"round trip p50 {p50:.2f} ms p99 {p99:.2f} ms",
    )


def _closed_ws(host: str, port: int, topic: str, n: int, pad: str) -> list[float]:
    """The closed loop's publishes as WebSocket msgpack frames: round trips in ms."""
    import socket

    from benchmarks.latency import REF, ws_open, ws_template
    from sprawl.client.aiows import FrameReader, client_frame

    pub, rest = ws_open(host, port, topic)
    pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = FrameReader()
    reader.feed(rest)
    frame, at_stamp, at_ref = ws_template("leader", pad[19:])
    w0, w1, w2 = frame[:at_stamp], frame[at_stamp + 19 : at_ref], frame[at_ref + 10 :]
    key = os.urandom(4)
    rtt: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        pub.sendall(client_frame(b"%s%019d%s%010d%s" % (w0, time.time_ns(), w1, i, w2), 2, key))
        got = None
        while got is None:
            data = pub.recv(65536)
            if not data:
                raise RuntimeError("the publish socket closed")
            for op, payload in reader.feed(data):
                if op == 9:
                    pub.sendall(client_frame(payload, 10, key))
                elif op == 1:
                    got = payload
        rtt.append((time.perf_counter() - t0) * 1000)
        m = REF.search(got)
        if not got.startswith(b'{"published"') or m is None or int(m.group(1)) != i:
            raise RuntimeError(got[:200].decode(errors="replace"))
    pub.close()
    return rtt


def _closed_http(host: str, port: int, topic: str, n: int, pad: str) -> list[float]:
    """The closed loop's publishes as HTTP POSTs: round trips in ms."""
    import json
    import socket

    pub = socket.create_connection((host, port), timeout=60)
    pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtt: list[float] = []
    for _ in range(n):
        body = json.dumps({"messages": [{"payload": pad}], "acks": "leader"}).encode()
        t0 = time.perf_counter()
        pub.sendall(
            b"POST /v1/topics/%s/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (topic.encode(), len(body), body)
        )
        buf = b""
        while True:
            buf += pub.recv(65536)
            h = buf.find(b"\r\n\r\n")
            if h >= 0:
                m = re.search(rb"(?i)content-length: (\d+)", buf[:h])
                if m and len(buf) >= h + 4 + int(m.group(1)):
                    break
        rtt.append((time.perf_counter() - t0) * 1000)
        if not buf.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(buf[:200].decode(errors="replace"))
    pub.close()
    return rtt


#: The line probe (``--lines``): a ``sitecustomize`` a node loads when its directory is on its path.
LINE_PROBE = HERE.parent / "harness" / "line_probe"


def probe_start(pid: int, out: Path) -> None:
    """Start the node's line probe (SIGUSR1) and wait until it says it counts."""
    import signal

    for f in (out / f"lines-{pid}.json", out / f"lines-{pid}.started"):
        if f.exists():
            f.unlink()
    os.kill(pid, signal.SIGUSR1)
    started = out / f"lines-{pid}.started"
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not started.exists():
        raise SystemExit(f"node {pid} did not start counting lines within 30 s")


def probe_stop(pid: int, out: Path, messages: float) -> str:
    """Stop the node's line probe (SIGUSR2): the reactor thread's Python lines per message
    (all, and in ``sprawl/``) and the functions that ran the most of them."""
    import json
    import signal

    os.kill(pid, signal.SIGUSR2)
    f = out / f"lines-{pid}.json"
    deadline = time.monotonic() + 30
    while not f.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    got = json.loads(f.read_text())
    per = max(1.0, messages)
    top = sorted(got["funcs"].items(), key=lambda kv: -kv[1])[:20]
    calls = sum(got.get("calls", {}).values())
    lines = [
        f"reactor thread: {got['total'] / per:.0f} Python lines per message ({got['sprawl'] / per:.0f} in "
        f"sprawl/), {calls / per:.0f} calls; the top functions (lines per message):"
    ]
    for k, v in top:
        short = k.split("/sprawl/")[-1].split("/site-packages/")[-1]
        lines.append(f"  {v / per:7.1f}  {short}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument(
        "--closed", type=int, default=0, help="N publishes one after the other instead of a steady rate"
    )
    ap.add_argument(
        "--publish",
        default="http",
        help="the publish wire: http (one POST per message, the default), ws (one msgpack frame per "
        "message on a publish-only WebSocket), or both as http,ws (or ws,http): each repeat runs each "
        "wire in that order, each on a fresh node, and the medians are printed side by side",
    )
    ap.add_argument(
        "--lines",
        type=Path,
        default=None,
        help="count the Python lines the node's reactor thread runs over the measured phase "
        "(tests/harness/line_probe; its files in this directory) and print them per message",
    )
    ap.add_argument(
        "--cprofile",
        type=Path,
        default=None,
        help="run the node under cProfile (twistd --profiler cprofile), stats written here at its stop",
    )
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of the idle node's CPU measured first")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw output (first run)")
    ap.add_argument(
        "--stalls",
        type=Path,
        default=None,
        help="run the node under benchmarks/stall_probe.py (every run), its JSON report written here",
    )
    ap.add_argument("--node-arg", action="append", default=[], help="an extra argument of the node")
    ap.add_argument(
        "--timeline",
        type=int,
        default=0,
        help="every N-th offset's hops (the node's SPRAWL_TIMELINE and the client's trace), printed per run",
    )
    a = ap.parse_args()
    wires = [w.strip() for w in a.publish.split(",") if w.strip()]
    if not wires or any(w not in ("http", "ws") for w in wires):
        raise SystemExit("--publish takes http, ws, or both (http,ws)")
    plain = harness.nodes.twistd_command
    p50s: dict[str, list[float]] = {w: [] for w in wires}
    p99s: dict[str, list[float]] = {w: [] for w in wires}
    cpus: dict[str, list[float]] = {w: [] for w in wires}
    runs = [(i, w) for i in range(a.repeat) for w in wires]
    for i, wire in runs:
        profile = a.profile is not None and i == 0 and wire == wires[0]
        if a.stalls is not None:

            def with_probe(out: Path = a.stalls) -> list[str]:
                return [sys.executable, str(HERE / "stall_probe.py"), str(out), "--"]

            harness.nodes.twistd_command = with_probe
        elif a.cprofile is not None:

            def with_cprofile(out: Path = a.cprofile) -> list[str]:
                return [*plain(), "--profile", str(out), "--profiler", "cprofile", "--savestats"]

            harness.nodes.twistd_command = with_cprofile
        elif profile:
            spy = str(Path(sys.executable).parent / "py-spy")
            rec = [spy, "record", "--nonblocking", "--gil", "-r", "200", "-f", "raw", "-o", str(a.profile)]
            rec += ["-d", str(int(a.seconds + SPY_MARGIN))]

            def wrapped(rec: list[str] = rec) -> list[str]:
                return [*rec, "--", *plain()]

            harness.nodes.twistd_command = wrapped
        else:
            harness.nodes.twistd_command = plain
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            tl_base = Path(tmp) / "timeline"
            env = {"SPRAWL_TIMELINE": f"{tl_base}:{a.timeline}"} if a.timeline else {}
            if a.lines is not None:
                a.lines.mkdir(parents=True, exist_ok=True)
                env["PYTHONPATH"] = f"{LINE_PROBE}{os.pathsep}{harness.nodes.node_pythonpath()}"
                env["LINE_PROBE_OUT"] = str(a.lines)
            trace = Path(tmp) / "trace" if a.timeline and not a.closed else None
            tracing = bool(a.timeline)
            node: Any = NodeProcess(Path(tmp) / "n", *a.node_arg, env=env or None).start()
            try:
                i0 = sum(cpu_seconds(node.proc.pid))
                time.sleep(a.idle)
                idle = (sum(cpu_seconds(node.proc.pid)) - i0) / a.idle if a.idle else 0.0
                hist0 = histograms(node.url)
                frames0 = wal_frames(Path(tmp) / "n")
                if a.lines is not None:
                    probe_start(node.proc.pid, a.lines)
                u0, s0 = cpu_seconds(node.proc.pid)
                threads0 = thread_cpu(node.proc.pid)
                t0 = time.monotonic()
                if a.closed:
                    p50, p99, line = closed_loop(node.url, a.closed, publish=wire)
                    print(line, flush=True)
                else:
                    p50, p99, _ = run_latency(node.url, a.rate, a.seconds, a.connections, trace, wire)
                took = time.monotonic() - t0
                messages = a.closed or a.rate * a.seconds
                counted = probe_stop(node.proc.pid, a.lines, messages) if a.lines is not None else ""
                hist1 = histograms(node.url)
                print(tails(hist0, hist1), flush=True)

                u1, s1 = cpu_seconds(node.proc.pid)
                print(by_thread(node.proc.pid, threads0, thread_cpu(node.proc.pid), messages), flush=True)
                # (after the CPU figures: the count waits for LMDB's last applies)
                frames = wal_frames(Path(tmp) / "n") - frames0
                commits = commit_count(hist1) - commit_count(hist0)
                print(
                    f"write-ahead-log frames (fsyncs) {frames} in the run: {frames / messages:.2f} a message, "
                    f"{frames / took:.0f} a second; LMDB commits {commits:.0f}: {commits / messages:.2f} "
                    "a message",
                    flush=True,
                )
                if counted:
                    print(counted, flush=True)
                if profile:
                    node.proc.wait(SPY_MARGIN + 30)
                user, system = (
                    (u1 - u0) / messages * 1e6,
                    (s1 - s0) / messages * 1e6,
                )
                cpu = user + system
                net = cpu - idle * took / messages * 1e6
            finally:
                node.stop()
            if tracing:
                print(hop_table(tl_base, trace), flush=True)
        tag = " (under py-spy: not a figure)" if profile else ""
        tag += " (lines counted: not a figure)" if a.lines is not None else ""
        print(
            f"run {i + 1} ({wire}): p50 {p50:.2f} ms, p99 {p99:.2f} ms, load {load:.1f}, "
            f"node CPU {cpu:.0f} us/message (user {user:.0f}, system {system:.0f}; "
            f"{net:.0f} beyond the idle node's {idle * 100:.1f} %){tag}",
            flush=True,
        )
        if a.stalls is not None:
            print(stall_summary(a.stalls, took), flush=True)
        if profile:
            assert a.profile is not None
            print(summarize(a.profile, int(messages)), flush=True)
        else:
            p50s[wire].append(p50)
            p99s[wire].append(p99)
            cpus[wire].append(cpu)
    medians = [
        f"{w}: p50 {statistics.median(p50s[w]):.2f} ms, p99 {statistics.median(p99s[w]):.2f} ms, "
        f"node CPU {statistics.median(cpus[w]):.0f} us/message"
        for w in wires
        if p50s[w]
    ]
    if medians:
        print(f"median of {a.repeat}: " + "; ".join(medians))


if __name__ == "__main__":
    main()
