"""The memory soak: a node with ``--memory-budget`` under mixed traffic for a
long time, its anonymous resident memory (``RssAnon``) sampled all along and
drawn as a curve (a PNG for docs/benchmarks.md).

Traffic (all at once, over real HTTP on loopback):

* publishers: 100-byte and 1 KB messages, a third with client ids (the dedup
  windows), some with keys and headers, over 40 durable topics (4 partitions
  each) and 4 ephemeral ones, at ``--rate`` messages per second in all;
* 10 SSE subscribers from ``latest``;
* a consumer group pulling and acking on 4 topics;
* catch-up fetches from ``earliest`` (reads that go to LMDB);
* a topic created, filled and deleted every few seconds.

Topics keep 2 minutes (``retention_ms``) so the disk stays small.  The run
passes when RssAnon stays under the idle baseline plus 1.3x the budget and is
flat after the warm-up (the least-squares slope over the rest of the run
moves it by less than 5% of the budget); it exits 1 otherwise.

    PYTHONPATH=tests python -m benchmarks.soak_memory --minutes 30 --png docs/soak-rss.png

(``tox -e soak`` runs it with those arguments.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from harness.memory_load import RssSampler, Subscribers, rss_anon, wait_for
from harness.nodes import NodeProcess
from sprawl.client.aio import Endpoint, HttpClient

MB = 1000**2


async def _json(client: HttpClient, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    resp, decoded = await client.request(method, path, body)
    return resp.status, decoded


async def _publisher(
    ep: Endpoint, topics: list[str], rate: float, end: float, seed: int, stats: dict
) -> None:
    rng = random.Random(seed)
    client = HttpClient(ep, 60)
    batch = 50
    n = 0
    start = time.monotonic()
    try:
        while time.monotonic() < end:
            t = rng.choice(topics)
            size = 1000 if rng.random() < 0.2 else 100
            msgs: list[dict[str, Any]] = []
            for _ in range(batch):
                m: dict[str, Any] = {"payload": "x" * size}
                r = rng.random()
                if r < 0.33:
                    m["id"] = f"soak-{seed}-{n}"
                if r > 0.8:
                    m["key"] = f"k{rng.randrange(1000)}"
                    m["headers"] = {"trace": f"{n:x}", "source": "soak"}
                msgs.append(m)
                n += 1
            status, _ = await _json(
                client, "POST", f"/v1/topics/{t}/messages", {"messages": msgs, "acks": "leader"}
            )
            if status == 200:
                stats["published"] += batch
            elif status in (429, 503):
                stats["refused"] += 1
            else:
                raise AssertionError(f"publish answered {status}")
            # Pace to the rate: where this publisher should be by now.
            ahead = n / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        client.close()


async def _group_consumer(ep: Endpoint, topics: list[str], end: float, stats: dict) -> None:
    client = HttpClient(ep, 60)
    try:
        for t in topics:
            await _json(client, "PUT", f"/v1/topics/{t}/groups/soak", {"start": "latest"})
        while time.monotonic() < end:
            for t in topics:
                status, got = await _json(client, "POST", f"/v1/topics/{t}/groups/soak/pull", {"max": 500})
                if status != 200:
                    continue
                ids = [m["ack_id"] for m in got["messages"]]
                if ids:
                    await _json(client, "POST", f"/v1/topics/{t}/groups/soak/ack", {"ack_ids": ids})
                    stats["acked"] += len(ids)
            await asyncio.sleep(0.05)
    finally:
        client.close()


async def _catch_up(ep: Endpoint, topics: list[str], end: float, stats: dict) -> None:
    rng = random.Random(7)
    client = HttpClient(ep, 60)
    try:
        while time.monotonic() < end:
            t = rng.choice(topics)
            status, got = await _json(client, "GET", f"/v1/topics/{t}/messages?from=earliest&limit=2000")
            if status == 200:
                stats["fetched"] += len(got["messages"])
            await asyncio.sleep(0.2)
    finally:
        client.close()


async def _churn(ep: Endpoint, end: float, stats: dict) -> None:
    client = HttpClient(ep, 60)
    k = 0
    try:
        while time.monotonic() < end:
            name = f"churn{k}"
            await _json(client, "PUT", f"/v1/topics/{name}", {})
            await _json(
                client, "POST", f"/v1/topics/{name}/messages", {"messages": [{"payload": "y" * 200}] * 200}
            )
            await _json(client, "DELETE", f"/v1/topics/{name}")
            stats["churned"] += 1
            k += 1
            await asyncio.sleep(3)
    finally:
        client.close()


async def _traffic(url: str, durable: list[str], ephemeral: list[str], rate: float, seconds: float) -> dict:
    ep = Endpoint.parse(url)
    end = time.monotonic() + seconds
    stats = {"published": 0, "refused": 0, "acked": 0, "fetched": 0, "churned": 0}
    pubs = 4
    await asyncio.gather(
        *(_publisher(ep, durable + ephemeral, rate / pubs, end, k, stats) for k in range(pubs)),
        _group_consumer(ep, durable[:4], end, stats),
        _catch_up(ep, durable, end, stats),
        _churn(ep, end, stats),
    )
    return stats


#: glibc places a thread's malloc arena in heaps aligned to 64 MiB.
_ARENA_ALIGN = 64 * 1024**2


def anon_breakdown(smaps: str) -> dict[str, int]:
    """Anonymous resident bytes of a process by where they live, from the
    text of its ``/proc/PID/smaps``: ``main_arena`` (glibc's ``[heap]``: the
    main thread's ``malloc``), ``thread_arenas`` (anonymous mappings at 64
    MiB alignment: other threads' ``malloc`` -- LMDB's writer and readers),
    ``other_anon`` (every other anonymous mapping: pymalloc's 1 MiB arenas,
    merged by the kernel when adjacent, and large ``malloc`` blocks) and
    ``files`` (anonymous pages in file mappings: libraries' data)."""
    out = {"main_arena": 0, "thread_arenas": 0, "other_anon": 0, "files": 0}
    kind = "files"
    for line in smaps.splitlines():
        head = line.split(maxsplit=6)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start = int(head[0].split("-")[0], 16)
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]":
                kind = "main_arena"
            elif name:
                kind = "files"
            elif start % _ARENA_ALIGN == 0:
                kind = "thread_arenas"
            else:
                kind = "other_anon"
        elif line.startswith("Anonymous:"):
            out[kind] += int(line.split()[1]) * 1024
    return out


def _breakdown(pid: int) -> dict[str, float]:
    return {k: round(v / MB, 1) for k, v in anon_breakdown(Path(f"/proc/{pid}/smaps").read_text()).items()}


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def plot(
    samples: list[tuple[float, int]], idle: int, budget: int, warmup_s: float, png: Path, title: str
) -> None:
    """Draw RssAnon over time with the idle baseline, baseline + budget and the 1.3x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = samples[0][0]
    xs = [(t - t0) / 60 for t, _ in samples]
    ys = [v / MB for _, v in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    ax.plot(xs, ys, label="RssAnon", color="#1f77b4", linewidth=1)
    ax.axhline(idle / MB, color="#888", linestyle=":", label=f"idle baseline {idle / MB:.0f} MB")
    ax.axhline((idle + budget) / MB, color="#2ca02c", linestyle="--", label="baseline + budget")
    ax.axhline((idle + 1.3 * budget) / MB, color="#d62728", linestyle="--", label="baseline + 1.3x budget")
    ax.axvline(warmup_s / 60, color="#bbb", linewidth=0.8)
    ax.set_xlabel("minutes")
    ax.set_ylabel("MB (10^6 bytes)")
    ax.set_ylim(0, max(idle + 1.5 * budget, max(v for _, v in samples) * 1.05) / MB)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--budget-mb", type=int, default=64)
    ap.add_argument("--rate", type=float, default=4000, help="messages per second in all")
    ap.add_argument("--warmup-minutes", type=float, default=None, help="default: a sixth of the run")
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the samples and the summary here")
    a = ap.parse_args(argv)
    budget = a.budget_mb * MB
    seconds = a.minutes * 60
    warmup = (a.warmup_minutes * 60) if a.warmup_minutes is not None else seconds / 6
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess(Path(tmp) / "soak", "--memory-budget", f"{a.budget_mb}MB").start()
        try:
            assert node.proc is not None
            pid = node.proc.pid
            wait_for(
                lambda: "sprawl_process_memory_baseline_bytes" in _metrics(node.url), 30, "the first tick"
            )
            durable = [f"d{i:02d}" for i in range(40)]
            ephemeral = [f"e{i}" for i in range(4)]
            setup = HttpClient(Endpoint.parse(node.url), 60)

            async def create() -> None:
                for t in durable:
                    await _json(setup, "PUT", f"/v1/topics/{t}", {"partitions": 4, "retention_ms": 120_000})
                for t in ephemeral:
                    await _json(
                        setup, "PUT", f"/v1/topics/{t}", {"storage": "ephemeral", "retention_ms": 120_000}
                    )
                setup.close()

            asyncio.run(create())
            idle = rss_anon(pid)
            idle_parts = _breakdown(pid)
            subs = Subscribers(node.http_port, durable, 10).start()
            sampler = RssSampler(pid, interval=1.0).start()
            t0 = time.monotonic()
            try:
                stats = asyncio.run(_traffic(node.url, durable, ephemeral, a.rate, seconds))
            finally:
                sampler.stop()
                subs.stop()
            stats["sse_bytes"] = subs.received
            end_parts = _breakdown(pid)
            pools = [
                line
                for line in _metrics(node.url).splitlines()
                if line.startswith(("sprawl_memory_", "sprawl_process_", "sprawl_lmdb_pending"))
            ]
        finally:
            node.stop()
    samples = [(t, v) for t, _, v in sampler.samples]
    after = [(t - t0, v) for t, v in samples if t - t0 >= warmup]
    slope = _slope(after) if len(after) > 2 else 0.0
    drift = slope * (after[-1][0] - after[0][0]) if len(after) > 2 else 0.0
    peak = max(v for _, v in samples)
    limit = idle + 1.3 * budget
    ok = peak < limit and abs(drift) < 0.05 * budget
    summary = {
        "minutes": a.minutes,
        "budget_mb": a.budget_mb,
        "idle_mb": round(idle / MB, 1),
        "peak_mb": round(peak / MB, 1),
        "limit_mb": round(limit / MB, 1),
        "drift_after_warmup_mb": round(drift / MB, 2),
        "mean_after_warmup_mb": round(sum(v for _, v in after) / max(1, len(after)) / MB, 1),
        **stats,
        "anon_mb_idle": idle_parts,
        "anon_mb_end": end_parts,
        "ok": ok,
    }
    print(json.dumps(summary, indent=1))
    print("\n".join(pools))
    if a.png is not None:
        title = (
            f"RssAnon, {a.minutes:g} min mixed traffic, --memory-budget {a.budget_mb}MB "
            f"({stats['published'] / seconds:,.0f} msgs/s published)"
        )
        plot(samples, idle, budget, warmup, a.png, title)
    if a.json is not None:
        a.json.write_bytes(
            msgspec.json.encode({"summary": summary, "samples": [(round(t - t0, 1), v) for t, v in samples]})
        )
    return 0 if ok else 1


def _metrics(url: str) -> str:
    import urllib.request

    return urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()


if __name__ == "__main__":
    sys.exit(main())
