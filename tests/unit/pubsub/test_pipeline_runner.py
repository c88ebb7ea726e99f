"""The pipeline adapter on a real broker (real LMDB): the target holds exactly the
filtered source, once each, including when a round is re-run after a crash between its
publish and its ack (the derived ids are deduplicated), and the position is a group's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from test_broker import T0, Node, msg, read_all, topic
from twisted.internet.task import Clock

from sprawl.pubsub.pipeline_runner import PipelineRunner, PipelineStalled, group_name
from sprawl.pubsub.pipelines import PipelineSpec


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    clock = Clock()
    clock.advance(T0)
    n = Node(tmp_path, clock)
    yield n
    await n.close()


async def _setup(n: Node, count: int) -> PipelineRunner:
    src = await topic(n, "orders", partitions=3)
    for i in range(count):
        payload = json.dumps({"n": i, "big": i % 3 == 0, "extra": "x"})
        await n.broker.publish(src, [msg(payload, key=f"k{i}")], "leader")
    await n.broker.put_group(src, group_name("big"), {"start": "earliest", "ack_deadline_ms": 1000})
    spec = PipelineSpec.from_body(
        "big", {"source": "orders", "target": "big-orders", "filter": "payload.big", "fields": "n"}
    )
    return PipelineRunner(n.broker, spec, batch=7, acks="leader")


async def _target(n: Node) -> list[int]:
    t = n.broker.get_topic("big-orders")
    out = []
    for p in range(len(t.logs)):
        out += [json.loads(r.payload)["n"] for r in await read_all(n, t, p) if not r.control]
    return sorted(out)


@pytest_twisted.ensureDeferred
async def test_the_target_holds_the_filtered_source_once_each(node: Node) -> None:
    runner = await _setup(node, 40)
    for _ in range(50):
        if not await runner.step():
            break
    assert await _target(node) == [i for i in range(40) if i % 3 == 0]
    assert runner.lag() == 0 and runner.read_total == 40


@pytest_twisted.ensureDeferred
async def test_a_round_re_run_after_a_crash_before_its_ack_writes_nothing_twice(node: Node) -> None:
    """Publish done, ack lost (the node died): the leases run out, the batch comes
    again, and its re-publish is deduplicated by the derived ids."""
    runner = await _setup(node, 40)
    acked = node.broker.ack

    async def crash(*a: object, **kw: object) -> None:
        raise RuntimeError("died before the ack")

    node.broker.ack = crash  # type: ignore[method-assign,assignment]
    try:
        await runner.step()
    except RuntimeError:
        pass
    node.broker.ack = acked  # type: ignore[method-assign]
    first = await _target(node)
    assert first, "the crashed round published"
    node.clock.advance(2)  # its leases run out
    for _ in range(50):
        if not await runner.step():
            break
    assert await _target(node) == [i for i in range(40) if i % 3 == 0]
    assert runner.lag() == 0


@pytest_twisted.ensureDeferred
async def test_a_source_message_at_the_size_limit_is_derived(node: Node) -> None:
    """The origin headers a pipeline adds do not count toward ``max_message_bytes``
    (up to ``ORIGIN_ALLOWANCE``): a source message at the limit reaches the target
    rather than failing every round (the chaos test found the pipeline stuck on one)."""
    limit = node.config.max_message_bytes
    src = await topic(node, "orders", partitions=1)
    await node.broker.publish(src, [msg(b"x" * (limit - 2), key="k1", id="big")], "leader")
    await node.broker.publish(src, [msg(b"y", key="k2", id="small")], "leader")
    await node.broker.put_group(src, group_name("all"), {"start": "earliest", "ack_deadline_ms": 1000})
    spec = PipelineSpec.from_body("all", {"source": "orders", "target": "copy"})
    runner = PipelineRunner(node.broker, spec, acks="leader")
    for _ in range(5):
        if not await runner.step():
            break
    t = node.broker.get_topic("copy")
    got = [r for p in range(len(t.logs)) for r in await read_all(node, t, p) if not r.control]
    assert sorted(len(r.payload) for r in got) == [1, limit - 2]
    assert all(r.headers and r.headers["sprawl-source-offset"] for r in got)
    assert runner.lag() == 0


def test_only_the_origin_headers_are_spared_and_only_up_to_the_allowance() -> None:
    """``limited_bytes``: a user's own headers count in full; the origin headers count
    beyond ``ORIGIN_ALLOWANCE`` bytes (no way around the limit)."""
    from sprawl.log.record import ORIGIN_ALLOWANCE

    plain = msg(b"p", headers={"h": "v" * 100})
    assert plain.limited_bytes == plain.message_bytes
    origin = msg(b"p", headers={"sprawl-pipeline": "x", "sprawl-source-offset": "7"})
    assert origin.limited_bytes == 1
    huge = msg(b"p", headers={"sprawl-pipeline": "x" * 5000})
    assert huge.limited_bytes == huge.message_bytes - ORIGIN_ALLOWANCE


@pytest_twisted.ensureDeferred
async def test_a_failed_publish_hands_the_batch_back_at_once(node: Node) -> None:
    """A round whose publish fails (the target's leader moving, say) nacks its batch:
    the next round retries it at once instead of waiting out the leases."""
    runner = await _setup(node, 40)
    published = node.broker.publish

    async def refuse(*a: object, **kw: object) -> None:
        raise RuntimeError("no leader for the target partition")

    node.broker.publish = refuse  # type: ignore[method-assign,assignment]
    try:
        await runner.step()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the round did not fail")
    node.broker.publish = published  # type: ignore[method-assign]
    for _ in range(50):  # (the clock stands still: no lease runs out)
        if not await runner.step():
            break
    assert await _target(node) == [i for i in range(40) if i % 3 == 0]
    assert runner.lag() == 0


# -- a record the target can never take (on_reject) ---------------------------------------

LIMIT = 1000


async def _rejecting(
    n: Node, on_reject: dict[str, str], partitions: int = 1, big: tuple[int, ...] = (2,)
) -> PipelineRunner:
    """``orders`` holds m0..m5 (keys k0..k5), those in ``big`` bigger than the target's
    limit; ``small`` takes at most ``LIMIT`` bytes a message; a pipeline copies one to the other."""
    src = await topic(n, "orders", partitions=partitions)
    for i in range(6):
        size = 3 * LIMIT if i in big else 10
        await n.broker.publish(src, [msg(b"x" * size, key=f"k{i}", id=f"m{i}")], "leader")
    await topic(n, "small", partitions=2, max_message_bytes=LIMIT)
    await topic(n, "rejected", partitions=1)
    await n.broker.put_group(src, group_name("copy"), {"start": "earliest", "ack_deadline_ms": 1000})
    spec = PipelineSpec.from_body("copy", {"source": "orders", "target": "small", **on_reject})
    return PipelineRunner(n.broker, spec, acks="leader")


async def _keys(n: Node, name: str) -> list[str]:
    t = n.broker.get_topic(name)
    out = []
    for p in range(len(t.logs)):
        out += [str(r.key) for r in await read_all(n, t, p) if not r.control]
    return sorted(out)


async def _drain(runner: PipelineRunner) -> None:
    for _ in range(10):
        if not await runner.step():
            return


@pytest_twisted.ensureDeferred
async def test_on_reject_stall_goes_no_further_and_says_why_until_the_target_takes_it(node: Node) -> None:
    """The default: every round fails on the big record (nothing of its batch written,
    nothing acked) and :attr:`stalled` names it; once the target's limit is raised the
    next round goes on and the stall clears."""
    runner = await _rejecting(node, {})
    for _ in range(3):
        with pytest.raises(PipelineStalled) as e:
            await runner.step()
        assert e.value.code == "pipeline_stalled" and "offset 2" in str(e.value)
    assert runner.stalled is not None and "source partition 0 offset 2" in runner.stalled
    assert f"exceeds the topic's max_message_bytes {LIMIT}" in runner.stalled
    assert await _keys(node, "small") == [] and runner.lag() == 6
    await topic(node, "small", max_message_bytes=10 * LIMIT)
    await _drain(runner)
    assert runner.stalled is None and runner.lag() == 0
    assert await _keys(node, "small") == [f"k{i}" for i in range(6)]


@pytest_twisted.ensureDeferred
async def test_on_reject_skip_leaves_the_record_out_and_counts_it(node: Node) -> None:
    runner = await _rejecting(node, {"on_reject": "skip"})
    await _drain(runner)
    assert await _keys(node, "small") == ["k0", "k1", "k3", "k4", "k5"]
    assert (runner.skipped_total, runner.dead_lettered_total, runner.stalled) == (1, 0, None)
    assert runner.lag() == 0


@pytest_twisted.ensureDeferred
async def test_on_reject_dead_letter_writes_the_source_record_with_the_reason(node: Node) -> None:
    """The big record goes to the dead-letter topic, whole, with its origin and why; a
    re-run of the round (its ack lost) writes nothing twice there either."""
    runner = await _rejecting(node, {"on_reject": "dead-letter", "dead_letter_topic": "rejected"})
    acked = node.broker.ack

    async def crash(*a: object, **kw: object) -> None:
        raise RuntimeError("died before the ack")

    node.broker.ack = crash  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        await runner.step()
    node.broker.ack = acked  # type: ignore[method-assign]
    node.clock.advance(2)  # its leases run out: the round comes again
    await _drain(runner)
    assert await _keys(node, "small") == ["k0", "k1", "k3", "k4", "k5"]
    t = node.broker.get_topic("rejected")
    (letter,) = [r for r in await read_all(node, t, 0) if not r.control]
    assert (letter.key, letter.payload) == ("k2", b"x" * 3 * LIMIT)
    h = letter.headers or {}
    assert (h["sprawl-pipeline"], h["sprawl-source-partition"], h["sprawl-source-offset"]) == (
        "copy",
        "0",
        "2",
    )
    assert f"exceeds the topic's max_message_bytes {LIMIT}" in h["sprawl-reject-reason"]
    assert runner.dead_lettered_total == 1 and runner.lag() == 0 and runner.stalled is None


@pytest_twisted.ensureDeferred
async def test_a_dead_letter_topic_that_cannot_take_it_either_stalls(node: Node) -> None:
    runner = await _rejecting(node, {"on_reject": "dead-letter", "dead_letter_topic": "rejected"})
    await topic(node, "rejected", max_message_bytes=LIMIT)
    with pytest.raises(PipelineStalled):
        await runner.step()
    assert runner.stalled is not None and "the dead-letter topic cannot take it either" in runner.stalled
    assert await _keys(node, "small") == [] and await _keys(node, "rejected") == []


@pytest_twisted.ensureDeferred
async def test_dead_letters_from_several_source_partitions_name_their_origin(node: Node) -> None:
    dl = {"on_reject": "dead-letter", "dead_letter_topic": "rejected"}
    runner = await _rejecting(node, dl, partitions=3, big=(1, 2, 4))
    await _drain(runner)
    src = node.broker.get_topic("orders")
    letters = [r for r in await read_all(node, node.broker.get_topic("rejected"), 0) if not r.control]
    origin = {(r.key, (r.headers or {})["sprawl-source-partition"]) for r in letters}
    assert origin == {(f"k{i}", str(src.partition_for(f"k{i}"))) for i in (1, 2, 4)}
    assert await _keys(node, "small") == ["k0", "k3", "k5"] and runner.dead_lettered_total == 3
