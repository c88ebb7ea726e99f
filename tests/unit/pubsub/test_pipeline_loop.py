"""The per-node pipeline loop (:mod:`sprawl.cluster.pipeline_loop`) on a real broker
(real LMDB) whose group ownership -- which source partitions this node leads -- is a
fake: it runs a declared pipeline for the partitions led here only, stops when
leadership moves or the definition changes, counts failed rounds, and its lag and
errors are what ``/metrics`` shows.  (Here, next to the runner's tests, for their
broker fixture.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from test_broker import T0, Node, msg, topic
from test_pipeline_runner import _target
from twisted.internet.task import Clock

from harness.reactor import the_reactor
from sprawl.cluster.pipeline_loop import PipelineCollector, PipelineLoop
from sprawl.pubsub.links import ClusterLinks
from sprawl.pubsub.pipeline_runner import PipelineRunner
from sprawl.topics import Topic


class _Leads:
    """The group owner: the source partitions this node leads (a fake of the data plane's)."""

    def __init__(self, mine: set[int]) -> None:
        self.mine = mine

    def owned(self, topic: Topic) -> set[int]:
        return set(self.mine) if topic.name == "orders" else set(range(len(topic.logs)))


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    clock = Clock()
    clock.advance(T0)
    n = Node(tmp_path, clock, links=ClusterLinks())
    yield n
    await n.close()


DEFINITION = {
    "pipeline": "big",
    "source": "orders",
    "target": "big-orders",
    "filter": "payload.big",
    "fields": "n",
    "key": None,
    "acks": "leader",
}


async def _setup(n: Node, leads: set[int], count: int = 30) -> tuple[_Leads, dict[str, Any], PipelineLoop]:
    owner = _Leads(leads)
    n.broker.links.bind(group_owner=owner)
    src = await topic(n, "orders", partitions=3)
    await topic(n, "big-orders", partitions=2)
    for i in range(count):
        payload = json.dumps({"n": i, "big": i % 2 == 0, "extra": "x"})
        await n.broker.publish(src, [msg(payload, key=f"k{i}")], "leader")
    await n.broker.put_group(src, "pipeline.big", {"start": "earliest", "ack_deadline_ms": 60_000})
    declared = {"big": dict(DEFINITION)}
    # The real reactor as the loop's clock: its reactor turns between rounds are real
    # ones; passes are driven by calling sync() (no timer is started).
    loop = PipelineLoop(n.broker, lambda: declared, the_reactor(), wait_ms=0, batch=4)  # type: ignore[arg-type]
    return owner, declared, loop


async def _finish(loop: PipelineLoop, name: str = "big") -> None:
    d = loop.running(name)
    if d is not None:
        await d


def _source_partition(n: Node, i: int) -> int:
    return n.broker.get_topic("orders").partition_for(f"k{i}")


@pytest_twisted.ensureDeferred
async def test_a_declared_pipeline_runs_for_the_partitions_led_here_only(node: Node) -> None:
    """Led: partitions 0 and 2.  The target gets exactly their filtered records, once
    each; partition 1 (another node's) is not touched; the lag is per partition led."""
    owner, _, loop = await _setup(node, {0, 2})
    loop.sync()
    await _finish(loop)
    want = [i for i in range(30) if i % 2 == 0 and _source_partition(node, i) in owner.mine]
    assert want and await _target(node) == want
    assert loop.lag("big") == {0: 0, 2: 0}
    g = node.broker.get_topic("orders").groups["pipeline.big"]
    assert g.committed().get(1, 0) == 0
    loop.sync()  # nothing new: a run starts, finds nothing and ends
    await _finish(loop)
    assert await _target(node) == want and loop.errors == {}


@pytest_twisted.ensureDeferred
async def test_no_run_where_nothing_is_led_and_a_run_ends_when_leadership_moves(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leading nothing, the loop starts no run; a run whose partitions moved away
    during a round does not start another round."""
    owner, _, loop = await _setup(node, set())
    loop.sync()
    assert loop.running("big") is None and loop.lag("big") == {}
    step = PipelineRunner.step
    rounds = []

    async def one_round_then_moved(self: PipelineRunner, wait_ms: int = 0) -> int:
        rounds.append(1)
        n = await step(self, wait_ms)
        owner.mine = set()  # the controller moved every leadership away
        return n

    monkeypatch.setattr(PipelineRunner, "step", one_round_then_moved)
    owner.mine = {0, 1, 2}
    loop.sync()
    runner = loop._runs["big"].runner
    await _finish(loop)
    assert len(rounds) == 1 and runner.read_total == 4
    loop.sync()
    assert loop.running("big") is None


@pytest_twisted.ensureDeferred
async def test_a_changed_definition_replaces_the_run_and_a_deleted_one_stops(node: Node) -> None:
    """A new definition gets a new runner (after the old round ended); the position is
    the group's, so the new one goes on where the old one stopped."""
    _, declared, loop = await _setup(node, {0, 1, 2})
    loop.sync()
    first = loop._runs["big"]
    await _finish(loop)
    declared["big"] = {**DEFINITION, "filter": "payload.n > `100`"}
    loop.sync()
    assert loop._runs["big"] is not first and first.stopping
    await _finish(loop)
    assert await _target(node) == [i for i in range(30) if i % 2 == 0]
    declared.clear()
    loop.sync()
    assert loop.names() == [] and loop.running("big") is None


@pytest_twisted.ensureDeferred
async def test_failed_rounds_are_counted_and_shown_with_the_lag(node: Node) -> None:
    """A round that fails ends the run and counts in sprawl_pipeline_errors_total; the
    next pass runs the pipeline again and it catches up; /metrics shows both figures."""
    _, _, loop = await _setup(node, {0, 1, 2})

    async def broken(self: PipelineRunner, wait_ms: int = 0) -> int:
        raise RuntimeError("no leader for the target")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PipelineRunner, "step", broken)
        loop.sync()
        await _finish(loop)
    assert loop.errors == {"big": 1}
    registry = CollectorRegistry()
    registry.register(PipelineCollector(loop))
    text = generate_latest(registry).decode()
    assert 'sprawl_pipeline_errors_total{pipeline="big"} 1.0' in text
    lag = sum(loop.lag("big").values())
    assert lag == 30
    assert f'sprawl_pipeline_lag_messages{{partition="0",pipeline="big"}} {loop.lag("big")[0]}.0' in text
    loop.sync()
    await _finish(loop)
    assert loop.errors == {"big": 1} and sum(loop.lag("big").values()) == 0
    assert await _target(node) == [i for i in range(30) if i % 2 == 0]


@pytest_twisted.ensureDeferred
async def test_stop_ends_the_rounds_and_the_passes(node: Node) -> None:
    """After stop() no pass runs and the loop becomes idle once its round ended."""
    _, _, loop = await _setup(node, {0, 1, 2})
    loop.start()
    d = loop.running("big")
    loop.stop()
    if d is not None:
        await d
    assert loop.idle and loop.names() == []
    assert loop._call is None


@pytest_twisted.ensureDeferred
async def test_a_stall_and_the_skipped_records_are_shown_and_counted(node: Node) -> None:
    """A pipeline stalled on a record its target can never take says why
    (:meth:`PipelineLoop.stalled`, ``sprawl_pipeline_stalled`` 1); declared with
    ``on_reject: skip`` instead, it goes on and ``sprawl_pipeline_skipped_total``
    counts the record left out."""
    _, declared, loop = await _setup(node, {0, 1, 2}, count=6)
    await topic(node, "big-orders", max_message_bytes=100)
    src = node.broker.get_topic("orders")
    await node.broker.publish(
        src, [msg(json.dumps({"n": 99, "big": True, "pad": "x" * 500}), key="k1")], "leader"
    )
    declared["big"] = {**DEFINITION, "fields": None}  # the whole payload: the big one is too big
    loop.sync()
    await _finish(loop)
    why = loop.stalled("big")
    assert why is not None and "exceeds the topic's max_message_bytes 100" in why
    registry = CollectorRegistry()
    registry.register(PipelineCollector(loop))
    assert 'sprawl_pipeline_stalled{pipeline="big"} 1.0' in generate_latest(registry).decode()
    assert loop.errors == {"big": 1}
    declared["big"] = {**DEFINITION, "fields": None, "on_reject": "skip", "dead_letter_topic": None}
    loop.sync()  # the changed definition replaces the run
    await _finish(loop)
    loop.sync()
    await _finish(loop)
    assert loop.stalled("big") is None and loop.skipped == {"big": 1}
    text = generate_latest(registry).decode()
    assert 'sprawl_pipeline_stalled{pipeline="big"} 0.0' in text
    assert 'sprawl_pipeline_skipped_total{pipeline="big"} 1.0' in text
    assert sum(loop.lag("big").values()) == 0
    assert len(await _target(node)) == 3  # n 0, 2, 4 (the big one skipped)


def test_the_passes_fall_on_the_interval_grid_with_the_other_loops() -> None:
    """Issue 23 (idle39): a loop started at any moment passes at the multiples
    of its interval on the clock -- the reactor turns of the node's other
    periodic loops (``sprawl.ticks``) -- not at its own phase: no wake-up of
    its own twice a second.  As often as before: one pass per interval."""
    clock = Clock()
    clock.advance(1000.37)
    passes: list[float] = []
    loop = PipelineLoop(None, lambda: passes.append(clock.seconds()) or {}, clock)  # type: ignore[arg-type]
    loop.start()
    for _ in range(1000):  # 10 s in 10 ms steps
        clock.advance(0.01)
    loop.stop()
    assert passes[0] == 1000.37  # (the first at once, as before)
    later = passes[1:]
    # Each within a step of a multiple of 0.5 s (1000.87, 1001.37, ... before).
    assert all(abs(t - round(t / 0.5) * 0.5) < 0.011 for t in later), later[:4]
    assert len(later) == 20
