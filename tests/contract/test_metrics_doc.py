"""The metrics docs/operations.md lists exist in a real node's /metrics.

A real ``twistd sprawl`` process publishes, serves a consumer group, a fetch
and a stream; its exposition is parsed with prometheus_client's parser and
every metric name of the operations guide's table must be there, named by
Prometheus conventions (counters end in ``_total``, units in names).
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness import NodeProcess, http_json, metrics_text
from harness.paths import DOCS
from harness.waits import poll_until

DOC = DOCS / "operations.md"
_NAME = re.compile(r"`((?:sprawl|process|python)_[a-z0-9_]+)(?:\{[^}]*\})?`")
_UNITS = ("_seconds", "_bytes", "_messages", "_total", "_offset", "_fds", "_info")


def documented_metrics() -> dict[str, str]:
    """Metric name → documented type, from the rows of the "Metrics" table."""
    text = DOC.read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    out: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3:
            continue
        for name in _NAME.findall(cells[0]):
            out[name] = cells[1]
    return out


def _request(url: str, body: Any = None, method: str | None = None) -> Any:
    status, answer = http_json(url, method or ("POST" if body is not None else "GET"), body, timeout=30)
    assert 200 <= status < 300, (url, status, answer)
    return answer


def _read_one_stream_event(port: int) -> None:
    """Open an SSE stream from the earliest offset and read until the first event."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/v1/topics/orders/stream?from=earliest")
        resp = conn.getresponse()
        assert resp.status == 200
        for _ in range(100):  # bounded: the first event comes within a few lines
            if resp.readline().startswith(b"data:"):
                return
        raise AssertionError("no SSE event")
    finally:
        conn.close()


def test_documented_metrics_exist(sprawl_node: NodeProcess) -> None:
    """Every metric of the docs table is in /metrics, with the documented type and conventional name."""
    url = sprawl_node.url
    _request(
        f"{url}/v1/topics/orders/messages", {"messages": [{"payload": "a"}, {"payload": "b", "id": "m1"}]}
    )
    _request(f"{url}/v1/topics/orders/messages", {"messages": [{"payload": "b", "id": "m1"}]})
    _request(f"{url}/v1/topics/orders/groups/billing", {"start": "earliest"}, method="PUT")
    pulled = _request(f"{url}/v1/topics/orders/groups/billing/pull", {"max": 1})
    assert pulled["messages"]
    _request(f"{url}/v1/topics/orders/messages?from=earliest")
    _read_one_stream_event(sprawl_node.http_port)
    # The process's memory baseline (and the ratio over it) exist once the node's first
    # memory tick measured it: under load that can come after the requests above.
    texts = [""]

    def measured() -> bool:
        texts[0] = metrics_text(url, timeout=30)
        return "sprawl_process_memory_baseline_bytes" in texts[0]

    assert poll_until(measured, 10.0) is not None, "the node never measured its memory baseline"
    text = texts[0]

    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The parser strips _total from counter family names; map exposition names back.
    # The 0.0.4 text format shows a counter's or histogram's ``_created``
    # timestamp as a gauge family of its own: not a metric to document.
    exposed: dict[str, str] = {}
    for f in families.values():
        if f.name.endswith("_created") and f.name[: -len("_created")] in families:
            continue
        exposed[f.name + "_total" if f.type == "counter" else f.name] = f.type

    documented = documented_metrics()
    assert len(documented) >= 30, documented
    missing = sorted(n for n in documented if n not in exposed)
    assert not missing, f"documented in docs/operations.md but not in /metrics: {missing}"
    for name, doc_type in documented.items():
        if doc_type in ("counter", "gauge", "histogram"):
            assert exposed[name] == doc_type, f"{name}: docs say {doc_type}, /metrics says {exposed[name]}"
        if exposed[name] == "counter":
            assert name.endswith("_total"), name

    for name, kind in exposed.items():
        if not name.startswith("sprawl_"):
            continue
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), f"{name} is a {kind} but named like a counter"
    # Every sprawl_ metric is documented, so the table stays complete.
    undocumented = sorted(n for n in exposed if n.startswith("sprawl_") and n not in documented)
    assert not undocumented, f"in /metrics but not in docs/operations.md: {undocumented}"
    # Figures an operator needs that come from the process collector.
    for name in ("process_open_fds", "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert name in exposed and name in documented, name


def test_replication_lag_is_zero_once_stored(sprawl_node: NodeProcess) -> None:
    """On one node a durable publish is acked after its commit, so log end - HW is 0 by then."""
    url = sprawl_node.url
    _request(f"{url}/v1/topics/lagged/messages", {"messages": [{"payload": "x"}] * 3})
    text = metrics_text(url, timeout=30)
    samples = {
        (s.name, s.labels.get("topic")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if f.name.startswith("sprawl_partition_")
    }
    assert samples[("sprawl_partition_log_end_offset", "lagged")] == 3
    assert samples[("sprawl_partition_high_watermark", "lagged")] == 3
    assert samples[("sprawl_partition_replication_lag_messages", "lagged")] == 0


def test_units_in_names() -> None:
    """Documented sprawl_ gauges and histograms carry a unit or a counted noun in their names."""
    for name, kind in documented_metrics().items():
        if name.startswith("sprawl_") and kind in ("gauge", "histogram"):
            assert name.endswith(_UNITS) or name.endswith(
                (
                    "_watermark",
                    "_members",
                    "_incarnation",
                    "_subscribers",
                    "_topics",
                    "_feeds",
                    "_ops",
                    "_term",
                    "_index",
                    "_ratio",
                    "_partitions",
                    "_ranges",
                )
                + (
                    "_role",
                    "_has_leader",
                    "_fault_tolerant",
                    "_voters",
                    "_learners",
                    "_faults",
                    "_drained",
                    "_stalled",
                )
                + ("_anomalies", "_series", "_per_second")
            ), name


def _one_timed_collection(cpu_clock: Callable[[], float] | None = None) -> str:
    """The exposition of fresh node metrics after one full collection timed by
    :class:`GCPauses` on a clock reading 1.0 then 1.25 (a pause of 0.25 s) and,
    if ``cpu_clock`` is given, its CPU time counted in ``sprawl_gc_cpu_seconds``."""
    import gc

    from sprawl.metrics import GCPauses, NodeMetrics

    m = NodeMetrics()
    ticks = iter([1.0, 1.25])
    pauses = GCPauses(
        m.gc_pause,
        clock=lambda: next(ticks),
        cpu=None if cpu_clock is None else m.gc_cpu,
        cpu_clock=cpu_clock,
    )
    pauses.install()
    try:
        gc.collect(2)
    finally:
        pauses.remove()
    return generate_latest(m.registry).decode()


def test_gc_pauses_are_timed_by_generation() -> None:
    """A collection lands in ``sprawl_gc_pause_seconds`` under its generation."""
    text = _one_timed_collection()
    assert 'sprawl_gc_pause_seconds_count{generation="2"} 1.0' in text
    assert 'sprawl_gc_pause_seconds_sum{generation="2"} 0.25' in text


def test_gc_cpu_time_is_counted_beside_the_pause() -> None:
    """With a CPU clock, a collection's CPU time lands in ``sprawl_gc_cpu_seconds``
    under its generation, beside its pause (wall time): a pause far above its
    CPU time was the thread waiting, not the collector working."""
    cpu = iter([3.0, 3.01])
    text = _one_timed_collection(cpu_clock=lambda: next(cpu))
    assert 'sprawl_gc_pause_seconds_sum{generation="2"} 0.25' in text
    (line,) = [x for x in text.splitlines() if x.startswith('sprawl_gc_cpu_seconds_total{generation="2"}')]
    assert abs(float(line.split()[-1]) - 0.01) < 1e-9
