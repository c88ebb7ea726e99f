"""The lock-free hot-path metrics (:mod:`sprawl.metrics.cells`) expose what prometheus_client's
``Counter``/``Histogram`` exposed for the same events: the same families, help, types, samples
in the same order with the same labels and values (``_created`` values aside: times), and the
hot paths make no prometheus_client call at all."""

from __future__ import annotations

import cProfile
import pstats
import random
from typing import Any

import pytest
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

import sprawl.metrics as metrics_module
from sprawl.metrics import NodeMetrics, _children
from sprawl.metrics.cells import CounterFamily, HistogramFamily

#: Families whose values move on their own (the process's CPU, memory, GC counts).
VOLATILE = ("process_", "python_", "sprawl_gc_")


class _RefCounter(Counter):
    cell = None


class _RefHistogram(Histogram):
    cell = None


class OldNodeMetrics(NodeMetrics):
    """The metrics as they were: prometheus_client's own ``Counter``/``Histogram``, updated
    through ``labels()`` / ``inc`` / ``observe`` (main before the cells)."""

    def committed(self, seconds: float, ops: int) -> None:
        self.lmdb_commit_duration.observe(seconds)
        self.lmdb_commit_ops.observe(ops)

    def hop(self, name: str, seconds: float) -> None:
        self.replication_hop.labels(name).observe(seconds)

    def published(self, topic: str, n: int, nbytes: int) -> None:
        c = _children(self, (topic,), self.published_messages, self.published_bytes)
        c[0].inc(n)
        c[1].inc(nbytes)

    def delivered(self, topic: str, mode: str, n: int, nbytes: int) -> None:
        c = _children(self, (topic, mode), self.delivered_messages, self.delivered_bytes)
        c[0].inc(n)
        c[1].inc(nbytes)

    def request_done(self, route: str, method: str, code: int, seconds: float) -> None:
        _children(self, (route, method), self.http_request_duration)[0].observe(seconds)
        _children(self, (route, method, str(code)), self.http_requests)[0].inc()

    def forget_topic(self, topic: str) -> None:
        cache = self.label_children
        topical = (self.published_messages, self.delivered_messages)
        for key in [k for k in cache if k[0] in topical and k[1] == topic]:
            del cache[key]
        for counter in (
            self.published_messages,
            self.published_bytes,
            self.delivered_messages,
            self.delivered_bytes,
            self.dead_lettered_messages,
        ):
            for family in counter.collect():
                for labels in {
                    tuple(s.labels.values()) for s in family.samples if s.labels.get("topic") == topic
                }:
                    counter.remove(*labels)


def old_metrics(monkeypatch: pytest.MonkeyPatch) -> NodeMetrics:
    """An :class:`OldNodeMetrics`, its hot metrics built as prometheus_client's."""
    with monkeypatch.context() as mp:
        mp.setattr(metrics_module, "CounterFamily", _RefCounter)
        mp.setattr(metrics_module, "HistogramFamily", _RefHistogram)
        m = OldNodeMetrics()
    assert isinstance(m.published_messages, Counter)
    return m


def drive(m: NodeMetrics, seed: int) -> None:
    """The same events, on either: every hot-path method, the direct ``labels()`` call sites,
    values on and either side of bucket bounds, integers and floats, a forgotten topic."""
    rng = random.Random(seed)
    edges = [0.0, 0.0005, 0.0004999, 0.001, 0.0010001, 0.25, 1, 1.0, 2.5, 30, 30.5, 1e9]
    for i in range(400):
        topic = f"t{rng.randrange(5)}"
        m.published(topic, rng.randrange(0, 50), rng.randrange(0, 10_000))
        m.delivered(topic, rng.choice(["stream", "fetch", "group"]), rng.randrange(1, 9), rng.randrange(900))
        secs = rng.choice(edges) if i % 3 == 0 else rng.expovariate(200)
        m.request_done(
            rng.choice(["publish", "fetch"]), rng.choice(["POST", "GET"]), rng.choice([200, 429]), secs
        )
        m.committed(
            rng.choice(edges) if i % 4 == 0 else rng.expovariate(300), rng.choice([1, 2, 5, 7, 1000, 5000])
        )
        if i % 7 == 0:
            m.hop(rng.choice(["forward", "quorum", "visible"]), rng.expovariate(100))
            m.dead_lettered(topic, "g", rng.randrange(3))
            m.rejected_requests.labels(rng.choice(["oversize", "backpressure"])).inc()
            m.http_requests.labels("websocket", "GET", "101").inc()
            m.http_request_duration.labels("stream", "GET").observe(rng.choice(edges))
            m.raft_proposal_duration.observe(rng.expovariate(50))
        if i == 200:
            m.forget_topic("t1")


def parsed(m: NodeMetrics) -> tuple[list[str], list[tuple[str, tuple[tuple[str, str], ...], float | None]]]:
    """The exposition's comment lines and its samples in order (``name``, labels, value);
    ``_created`` and the volatile families' values are left out (``None``)."""
    text = m.render().decode()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    samples = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            keep = not s.name.endswith("_created") and not s.name.startswith(VOLATILE)
            samples.append((s.name, tuple(sorted(s.labels.items())), s.value if keep else None))
    return comments, samples


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_exposition_is_prometheus_clients_for_the_same_events(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Old (prometheus_client) and new metrics, the same events: the same text, sample by sample."""
    old, new = old_metrics(monkeypatch), NodeMetrics()
    assert parsed(old) == parsed(new)  # (nothing yet: the unlabelled series at 0)
    drive(old, seed)
    drive(new, seed)
    old_comments, old_samples = parsed(old)
    new_comments, new_samples = parsed(new)
    assert new_comments == old_comments
    assert new_samples == old_samples
    assert any(name == "sprawl_lmdb_commit_ops_bucket" and v for name, _, v in new_samples)


def test_created_series_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_created`` samples are there while prometheus_client makes them, and gone with them."""
    from prometheus_client import metrics

    new = NodeMetrics()
    new.published("t", 1, 1)
    assert b"sprawl_published_messages_created{" in new.render()
    monkeypatch.setattr(metrics, "_use_created", False)
    old = old_metrics(monkeypatch)
    old.published("t", 1, 1)
    assert b"_created" not in new.render()
    assert parsed(old) == parsed(new)


def test_the_hot_paths_call_no_prometheus_client_code() -> None:
    """Once a series exists, a publish's, a delivery's, a request's, a commit's and a hop's
    updates are one Python call each (the method itself), with no lock."""
    m = NodeMetrics()
    events: list[Any] = [
        (m.published, ("t", 1, 100)),
        (m.delivered, ("t", "stream", 1, 100)),
        (m.request_done, ("publish", "POST", 200, 0.001)),
        (m.committed, (0.002, 3)),
        (m.hop, ("quorum", 0.001)),
    ]
    for f, args in events:
        f(*args)  # (the series made)
    prof = cProfile.Profile()
    prof.enable()
    for f, args in events:
        f(*args)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    python_calls = {
        fn: cc for (file, _, fn), (cc, *_rest) in stats.items() if file != "~" and "cProfile" not in file
    }
    assert python_calls == {"published": 1, "delivered": 1, "request_done": 1, "committed": 1, "hop": 1}
    assert not any("prometheus_client" in file or "lock" in fn for (file, _, fn) in stats)


def test_cells_refuse_what_prometheus_client_refuses() -> None:
    """Wrong label counts and negative counts raise as prometheus_client's do."""
    c = CounterFamily("x", "doc", ["a"], registry=None)
    with pytest.raises(ValueError):
        c.labels("1", "2")
    with pytest.raises(ValueError):
        c.labels("1").inc(-1)
    with pytest.raises(ValueError):
        c.inc()
    assert c.labels(a=1) is c.labels("1")
    with pytest.raises(ValueError):
        HistogramFamily("h", "doc", buckets=[2, 1], registry=None)


def test_metrics_updated_off_the_reactor_keep_their_locks() -> None:
    """The garbage collector's callback runs on whichever thread allocates (the LMDB writer,
    the S3 pool): its metrics stay prometheus_client's, whose updates take a lock."""
    m = NodeMetrics()
    assert isinstance(m.gc_pause, Histogram)
    assert isinstance(m.gc_cpu, Counter)
