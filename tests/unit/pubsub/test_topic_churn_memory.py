"""A deleted topic leaves nothing behind: its labelled counters go from
``/metrics`` and the traffic forecaster drops its series, so a node that
creates and deletes topics all day holds no more memory than one that does
not (the memory soak's drift, docs/benchmarks.md: 7-16 KB per deleted topic
before, the forecaster's series of every topic ever created -- fed from the
counters, which were never removed -- and the counters themselves)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from harness.inproc_http import Node
from harness.inproc_http import nodes as nodes
from sprawl.forecast.feed import PUBLISHED, TrafficFeed
from sprawl.forecast.traffic import TOPIC, topic_key
from sprawl.log.record import Record
from sprawl.node.binding import make_traffic_feed

#: Topics created, published to, read and deleted while the memory is measured.
CYCLES = 60
#: What one such cycle may leave behind on average (transient noise: LMDB's
#: pending writes, a deferred or two); it was 16 KB before.
PER_TOPIC_LIMIT = 600


def _topics_in_metrics(n: Node) -> set[str]:
    out: set[str] = set()
    for family in text_string_to_metric_families(n.metrics.render().decode()):
        if family.name in (
            "sprawl_published_messages",
            "sprawl_published_bytes",
            "sprawl_delivered_messages",
        ):
            out |= {s.labels["topic"] for s in family.samples}
    return out


def _feed(n: Node) -> TrafficFeed:
    """The node's traffic feed as the composition root wires it (gossip left out)."""
    feed = make_traffic_feed(n.config, n.clock, None, n.metrics)  # type: ignore[arg-type]
    assert feed is not None
    return feed


async def _churn(n: Node, feed: TrafficFeed, name: str) -> None:
    """One topic's life on the broker (the in-process HTTP harness keeps
    every request it served): created, published to, counted as delivered,
    sampled, deleted, sampled."""
    t, _ = await n.broker.put_topic(name, {})
    await n.broker.publish(
        t, [Record(-1, 0, 0, None, None, None, b"y" * 200, True) for _ in range(20)], "leader"
    )
    n.metrics.delivered(name, "fetch", 20, 4000)
    n.clock.advance(feed.interval)
    feed.tick()
    await n.broker.delete_topic(name)
    n.clock.advance(feed.interval)
    feed.tick()


@pytest_twisted.ensureDeferred
async def test_a_deleted_topics_counters_leave_the_metrics(nodes: Callable[..., Node]) -> None:
    """Published and delivered counters of a deleted topic are gone; the other topic's stay."""
    n = nodes()
    for t in ("gone", "kept"):
        await n.create(t)
        await n.publish(t, [{"payload": "x"}] * 3)
        await n.fetch(t, **{"from": "earliest"})
    assert _topics_in_metrics(n) == {"gone", "kept"}
    r = await n.http.delete("/v1/topics/gone")
    assert r.code in (200, 204), r
    assert _topics_in_metrics(n) == {"kept"}
    await n.publish("kept", [{"payload": "x"}])
    assert 'sprawl_published_messages_total{topic="kept"} 4.0' in n.metrics.render().decode()


@pytest_twisted.ensureDeferred
async def test_the_forecaster_forgets_a_deleted_topic(nodes: Callable[..., Node]) -> None:
    """The feed's series of a deleted topic go at the next sample; a topic
    created again under the name starts afresh."""
    n = nodes()
    feed = _feed(n)
    fc = feed.forecaster
    await n.create("kept")
    await n.publish("kept", [{"payload": "x"}] * 5)
    await _churn(n, feed, "gone")
    keys = fc.keys()
    assert topic_key("kept", PUBLISHED) in keys
    assert not [k for k in keys if k[0] == TOPIC and k[1] == "gone"], keys
    assert not [k for k in fc._counters if k[1] == "gone"]


@pytest_twisted.ensureDeferred
async def test_topic_churn_leaves_no_memory_behind(nodes: Callable[..., Node]) -> None:
    """Creating, publishing to, reading and deleting topics, with the
    forecaster sampling, holds no memory per deleted topic once warm."""
    n = nodes()
    feed = _feed(n)
    for k in range(10):  # warm: first-use caches, the dict sizes
        await _churn(n, feed, f"warm{k}")
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(CYCLES):
            await _churn(n, feed, f"churn{k}")
        gc.collect()
        per_topic = (tracemalloc.get_traced_memory()[0] - before) / CYCLES
    finally:
        tracemalloc.stop()
    series = len(feed.forecaster.keys())
    assert per_topic < PER_TOPIC_LIMIT, f"{per_topic:.0f} B held per deleted topic ({series} series)"
    assert series == 0, feed.forecaster.keys()


@pytest_twisted.ensureDeferred
async def test_a_topic_deleted_by_a_publishs_own_callback(nodes: Callable[..., Node]) -> None:
    """An ack's callbacks run synchronously when the commit lands: deleting
    the topic there (as a churning client does at once) finds no fired
    waiter left to fail (it raised AlreadyCalledError), and the delete completes."""
    n = nodes()
    t, _ = await n.broker.put_topic("short", {})
    deleted: list[object] = []

    def delete_now(result: object) -> object:
        deleted.append(n.broker.delete_topic("short"))
        return result

    d = n.broker.publish(t, [Record(-1, 0, 0, None, None, None, b"z", True)], "leader")
    d.addCallback(delete_now)
    await d
    assert len(deleted) == 1
    await deleted[0]
    assert "short" not in n.broker.topics
