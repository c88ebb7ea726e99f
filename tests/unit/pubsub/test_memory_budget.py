"""``--memory-budget`` bounds every pool of message data together (hot
records, cached encodings, dedup ids, queued writes), and the node shows it:
each pool and the process's RssAnon on ``/metrics``, budget vs. used on the
dashboard, and a warning (never a failure) on ``/readyz`` when the process
passes its baseline plus 1.3x the budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.inproc_http import Node
from harness.inproc_http import nodes as nodes
from sprawl.log.record import Record
from sprawl.pubsub.memory_report import MemoryCollector, memory_status, process_memory

MB = 1000**2


def _records(n: int, size: int, ids: str | None = None) -> list[Record]:
    """``n`` new messages of ``size`` bytes, with client ids ``{ids}-{i}`` when ``ids`` is given."""
    return [Record(-1, 0, 0, f"{ids}-{i}" if ids else None, None, None, b"x" * size, True) for i in range(n)]


def test_process_memory_reads_proc_status(tmp_path: Path) -> None:
    """RssAnon, RssFile and VmRSS come from /proc/PID/status in bytes; a missing file gives nothing."""
    status = tmp_path / "status"
    status.write_text("Name:\tx\nVmRSS:\t  3000 kB\nRssAnon:\t  2000 kB\nRssFile:\t 1000 kB\nThreads:\t3\n")
    assert process_memory(status) == {"rss": 3000 * 1024, "rss_anon": 2000 * 1024, "rss_file": 1000 * 1024}
    assert process_memory(tmp_path / "absent") == {}
    own = process_memory()
    assert own.get("rss_anon", 1) > 0


@pytest_twisted.ensureDeferred
async def test_pools_stay_within_the_budget(nodes: Callable[..., Node]) -> None:
    """Publishes past the budget (with client ids, and read so encodings are
    cached) leave every pool together under the budget after a tick; the
    hot-record pool is what a record takes, not its message bytes."""
    n = nodes(memory_budget=2 * MB)
    t, _ = await n.broker.put_topic("mem", {})
    for b in range(40):
        await n.broker.publish(t, _records(500, 100, ids=f"batch{b}"), "leader")
        for r in t.logs[0].read_hot(t.logs[0].hot_start, 10**6) or []:
            r.to_sse()
        n.broker.tick()
        pools = n.broker.memory_pools()
        assert sum(pools.values()) <= 2 * MB, (b, pools)
    # Writes still queued for LMDB count against the budget and cannot be
    # evicted, so a writer running behind (a loaded CI host) may leave no hot
    # record after a tick: once LMDB has every write, one more batch (read, so
    # encoded) does.
    await n.broker.store.write([])
    assert n.broker.store.pending_bytes == 0
    await n.broker.publish(t, _records(500, 100, ids="last"), "leader")
    for r in t.logs[0].read_hot(t.logs[0].hot_start, 10**6) or []:
        r.to_sse()
    n.broker.tick()
    pools = n.broker.memory_pools()
    assert sum(pools.values()) <= 2 * MB, pools
    lg = t.logs[0]
    assert pools["hot_records"] == lg.hot_records_memory > lg.hot_bytes
    assert pools["encodings"] == lg.account.encoded > 0
    assert pools["dedup"] == t.dedup.memory > 0
    assert lg.hot_start > 0, "the budget evicted"


@pytest_twisted.ensureDeferred
async def test_metrics_show_each_pool_and_the_process_rss(nodes: Callable[..., Node]) -> None:
    """/metrics (the collector the node registers) has each pool, their sum, RssAnon and the baseline."""
    n = nodes(memory_budget=8 * MB)
    t, _ = await n.broker.put_topic("m", {})
    await n.broker.publish(t, _records(100, 100), "leader")
    n.broker.tick()
    reg = CollectorRegistry()
    reg.register(MemoryCollector(n.broker))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    pools = {s.labels["pool"]: s.value for s in fams["sprawl_memory_pool_bytes"].samples}
    assert set(pools) == {"hot_records", "encodings", "dedup", "pending_writes"}
    assert pools["hot_records"] == t.logs[0].hot_records_memory > 0
    assert fams["sprawl_memory_used_bytes"].samples[0].value == sum(pools.values())
    assert fams["sprawl_process_rss_anon_bytes"].samples[0].value > 0
    assert fams["sprawl_process_memory_baseline_bytes"].samples[0].value > 0
    assert fams["sprawl_process_memory_budget_ratio"].samples[0].value >= 0


@pytest_twisted.ensureDeferred
async def test_readyz_warns_but_stays_ready_past_the_budget(nodes: Callable[..., Node]) -> None:
    """Past baseline + 1.3x budget /readyz still answers 200 (the node serves) with a warning."""
    n = nodes(memory_budget=1 * MB)
    n.broker.tick()
    assert n.broker.memory_baseline is not None
    n.broker.memory_baseline = 10**12  # far above what this process takes
    r = await n.http.get("/readyz")
    assert r.code == 200 and "warnings" not in r.json(), r
    n.broker.memory_baseline = 0  # this test process takes far more than 1.3 MB
    r = await n.http.get("/readyz")
    assert r.code == 200, r
    body = r.json()
    assert body["ready"] is True
    (warning,) = body["warnings"]
    assert "RssAnon" in warning and "--memory-budget" in warning
    st = memory_status(n.broker)
    assert st["warning"] == warning and st["budget"] == 1 * MB


@pytest_twisted.ensureDeferred
async def test_readyz_sums_no_memory_pool(nodes: Callable[..., Node]) -> None:
    """``/readyz`` (polled by orchestrators and benchmarks) reads the warning
    from the process's memory alone: summing the pools walks every
    partition's caches, 0.1 s of CPU per answer at 10,000 partitions
    (issue 23, idle23).  The warning is still the one memory_status gives."""
    n = nodes(memory_budget=1 * MB)
    n.broker.tick()
    n.broker.memory_baseline = 0
    warning = memory_status(n.broker)["warning"]
    assert warning is not None

    def walked() -> dict[str, int]:
        raise AssertionError("/readyz summed the memory pools")

    n.broker.memory_pools = walked  # type: ignore[method-assign]
    r = await n.http.get("/readyz")
    assert r.code == 200 and r.json()["warnings"] == [warning], r


@pytest_twisted.ensureDeferred
async def test_dashboard_snapshot_has_budget_and_used(nodes: Callable[..., Node]) -> None:
    """The dashboard snapshot carries the budget, what is used, the pools and RssAnon."""
    from sprawl.http.dashboard import snapshot

    n = nodes(memory_budget=4 * MB)
    snap = snapshot(n.api.status, n.metrics, n.clock)
    m = snap["memory"]
    assert m["budget"] == 4 * MB and m["used"] == sum(m["pools"].values())
    assert set(m) >= {"budget", "used", "pools", "rss_anon", "baseline", "warning"}


@pytest_twisted.ensureDeferred
async def test_free_allocator_pages_go_back_before_the_hot_tail_is_evicted(
    nodes: Callable[..., Node], monkeypatch: Any
) -> None:
    """A process beyond its pools by more than a sixteenth of the budget (memory
    the C allocator kept after frees) trims it (at most once a second) and
    measures again before evicting: what the trim gave back costs the hot
    tails nothing; what it could not give back still evicts them."""
    import sprawl.pubsub.memory as memory

    n = nodes(memory_budget=8 * MB)
    t, _ = await n.broker.put_topic("m", {})
    await n.broker.publish(t, _records(2000, 100), "leader")
    b = n.broker
    b.bound_process = True
    b.memory_baseline = 100 * MB
    used = b.memory_used()
    rss = [100 * MB + used + 8 * MB]  # 8 MB kept by the allocator: past the budget with the pools
    trims: list[float] = []

    def trim() -> bool:
        trims.append(n.clock.seconds())
        rss[0] -= 7 * MB  # the allocator gave 7 of them back
        return True

    monkeypatch.setattr(memory, "process_memory", lambda: {"rss_anon": rss[0]})
    monkeypatch.setattr(memory, "release_free_memory", trim)
    hot = t.logs[0].hot_start
    b.enforce_memory_budget()
    assert trims == [n.clock.seconds()]
    assert t.logs[0].hot_start == hot, "nothing evicted for memory the trim gave back"
    rss[0] += 7 * MB  # kept again, and this time the trim waits out its second
    b.enforce_memory_budget()
    assert len(trims) == 1
    assert t.logs[0].hot_start > hot, "what no trim gives back still evicts"
