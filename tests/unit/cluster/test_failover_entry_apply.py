"""The apply of a dead node's failover entry, ``set_partitions`` (issue 23,
failapply): what it touches is what it changed, whatever the number of
partitions it leaves alone; the topics a node now leads are followed first;
and a proposal applied here no longer times out while the node is still
following it a slice per reactor turn (past the 10 s proposal timeout on a
loaded machine, the controller failed every partition over again).

Counted, not timed: placement rows replaced, listeners called, replica
objects built, the order the topics are followed in."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from test_cluster_control import Net, _node, _run_until
from twisted.internet import defer, task

from harness.placements import round_robin
from sprawl.cluster.metadata import Metadata, encode_command
from sprawl.cluster.metadata_apply import TOPICS_PER_TURN, MetadataApply
from sprawl.raft.messages import Entry

NODES = ("a", "b", "c")


def _metadata(partitions: int) -> Metadata:
    """``partitions`` single-partition topics on a, b, c, leaders round robin."""
    return round_robin(partitions, NODES)


def _b_fails_over(meta: Metadata) -> dict[str, Any]:
    """The ``set_partitions`` command moving every leadership of b (half to a,
    half to c) to epoch 2."""
    items = []
    for name, parts in meta.placement.items():
        pl = parts[0]
        if pl["leader"] == "b":
            to = "a" if len(items) % 2 == 0 else "c"
            items.append(
                {"topic": name, "partition": 0, "epoch": 2, "leader": to, "replicas": pl["replicas"]}
            )
    return {"op": "set_partitions", "items": items, "req": "r1"}


@pytest.mark.parametrize("partitions", [3_000, 10_000])
def test_the_entry_replaces_only_the_rows_it_changes(partitions: int) -> None:
    """b's leaderships (a third of the partitions) move: exactly their
    placement rows are replaced; every other row, every topic record and the
    placement map of each untouched topic stay the very same objects."""
    meta = _metadata(partitions)
    rows = {name: parts[0] for name, parts in meta.placement.items()}
    lists = {name: parts for name, parts in meta.placement.items()}
    topics = {name: t for name, t in meta.topics.items()}
    cmd = _b_fails_over(meta)
    result = meta.apply(2, cmd)
    moved = {item["topic"] for item in cmd["items"]}
    assert len(moved) == sum(1 for i in range(partitions) if i % 3 == 1)
    assert all("error" not in r for r in result["results"])
    replaced = {name for name, parts in meta.placement.items() if parts[0] is not rows[name]}
    assert replaced == moved
    assert all(meta.placement[name] is lists[name] for name in lists)
    assert all(meta.topics[name] is topics[name] for name in topics)
    assert all(meta.placement[n][0]["epoch"] == 2 for n in moved)


def _apply(meta: Metadata, me: str) -> tuple[list[list[str]], list[str], MetadataApply, list[Any]]:
    """Apply b's failover entry on node ``me`` through :class:`MetadataApply`;
    the topics each reactor turn told the listeners of, the answers, the apply
    and the reactor turns still due."""
    turns_due: list[Any] = []
    reactor = SimpleNamespace(callLater=lambda delay, f, *a: turns_due.append((f, a)))
    answers: list[str] = []
    applied_here: list[str] = []
    control = SimpleNamespace(
        metadata=meta,
        reactor=reactor,
        node_id=me,
        answer=lambda req, result: answers.append(req),
        applied_here=applied_here.append,
    )
    apply = MetadataApply(control, SimpleNamespace(topics={}))  # type: ignore[arg-type]
    heard: list[list[str]] = [[]]
    apply.watch_topics(lambda name: heard[-1].append(name))
    apply.apply(Entry(1, 2, data=encode_command(_b_fails_over(meta))))
    assert applied_here == ["r1"]  # committed and applied here: no timeout from now
    for _ in range(1_000):
        if not turns_due:
            break
        heard.append([])
        f, a = turns_due.pop(0)
        f(*a)
    return heard, answers, apply, turns_due


@pytest.mark.parametrize("partitions", [3_000, 10_000])
def test_the_listeners_hear_the_moved_topics_only_those_led_here_first(partitions: int) -> None:
    """On node a, the listeners (the replicas', the controller's) hear each
    moved topic once -- not the others, however many -- a slice per reactor
    turn, first every topic a now leads, then those c leads; the proposal is
    answered after the last slice."""
    meta = _metadata(partitions)
    moved = [item for item in _b_fails_over(meta)["items"]]
    heard, answers, _, _ = _apply(meta, "a")
    flat = [name for turn in heard for name in turn]
    assert sorted(flat) == sorted(item["topic"] for item in moved)
    led = [item["topic"] for item in moved if item["leader"] == "a"]
    assert flat[: len(led)] == led
    assert all(len(turn) <= TOPICS_PER_TURN for turn in heard)
    assert answers == ["r1"]


def test_a_set_partitions_proposal_does_not_time_out_while_it_is_followed() -> None:
    """A one-node cluster applies a 1,000-partition ``set_partitions``; its
    slices are held (a loaded node: other work runs between them) for longer
    than the proposal timeout.  The proposal is not failed with
    ``proposal_timeout`` (it is committed and applied); it is answered with
    every item's result once the last slice ran."""
    clock = task.Clock()
    net = Net(clock)
    outcome: list[Any] = []

    async def run() -> None:
        n0 = await _node(net, "n0", founder=True)
        meta = _metadata(1_000)
        n0.metadata.topics.update(meta.topics)
        n0.metadata.placement.update(meta.placement)
        heard: list[str] = []
        n0.watch_topics(heard.append)
        assert _run_until(clock, lambda: n0.is_leader, 2.0) is not None
        cmd = _b_fails_over(meta)
        del cmd["req"]
        d = n0.propose(cmd)
        d.addCallbacks(outcome.append, outcome.append)
        assert _run_until(clock, lambda: len(heard) >= TOPICS_PER_TURN, 1.0) is not None
        held = [c for c in clock.calls if getattr(c.func, "__name__", "") == "_follow_in_turns"]
        assert held
        for c in held:
            clock.calls.remove(c)
        clock.advance(n0.proposal_timeout + 1.0)
        assert outcome == []  # not timed out
        for c in held:
            c.func(*c.args, **c.kw)
        clock.advance(0)
        for _ in range(20):
            clock.advance(0)
        n0.stop()

    defer.ensureDeferred(run()).addErrback(outcome.append)
    for _ in range(100):
        clock.advance(0.01)
    assert len(outcome) == 1 and isinstance(outcome[0], dict), outcome
    assert len(outcome[0]["results"]) == 333 and all("epoch" in r for r in outcome[0]["results"])
