"""The hot-path metrics' cached labelled children (:func:`sprawl.metrics._children`): counts
land in ``/metrics`` as without the cache, a deleted topic's series go and a topic created
again under its name counts afresh, and the cache is bounded."""

from __future__ import annotations

import pytest

from sprawl import metrics as metrics_module
from sprawl.metrics import NodeMetrics


def sample(m: NodeMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_cached_children_count_like_labels_and_forget_a_deleted_topic() -> None:
    m = NodeMetrics()
    for _ in range(3):
        m.published("t", 2, 200)
        m.delivered("t", "sse", 2, 200)
        m.request_done("publish", "POST", 200, 0.001)
    m.request_done("publish", "POST", 400, 0.001)
    assert sample(m, "sprawl_published_messages_total", topic="t") == 6
    assert sample(m, "sprawl_delivered_messages_total", topic="t", mode="sse") == 6
    assert sample(m, "sprawl_http_requests_total", route="publish", method="POST", status="200") == 3
    assert sample(m, "sprawl_http_requests_total", route="publish", method="POST", status="400") == 1
    m.forget_topic("t")
    assert sample(m, "sprawl_published_messages_total", topic="t") is None
    m.published("t", 1, 100)
    m.delivered("t", "sse", 1, 100)
    assert sample(m, "sprawl_published_messages_total", topic="t") == 1
    assert sample(m, "sprawl_delivered_messages_total", topic="t", mode="sse") == 1
    # Route series are not a topic's: a topic named like a route leaves them be.
    m.forget_topic("publish")
    m.request_done("publish", "POST", 200, 0.001)
    assert sample(m, "sprawl_http_requests_total", route="publish", method="POST", status="200") == 4


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_CACHED_CHILDREN", 10)
    m = NodeMetrics()
    for i in range(50):
        m.published(f"t{i}", 1, 1)
    assert len(m.label_children) == 10
    assert sample(m, "sprawl_published_messages_total", topic="t49") == 1
