"""A tick's messages to one node go as one frame (issue 23, failover37).

During a failover's burst the new leaders' re-sends and the controller
cores' retried fences leave from :meth:`ReplicationService.tick`, one frame
per message until now; the tick now holds them (:meth:`ReplicationService.held`)
like the other bursts, so they leave as one ``REPLICATION_BATCH`` frame per
node.  Counted, not timed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import task

from sprawl.peer.frames import REPLICATION_BATCH
from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Fence, decode
from sprawl.replication.service import ReplicationService

IDS = ("a", "b", "c")


def _controller(
    partitions: int, batch: bool
) -> tuple[ReplicationService, task.Clock, list[tuple[str, int, bytes]]]:
    """Node "a" the controller of ``partitions`` cores fencing epoch 2 (their
    first fences sent), nobody answering."""
    frames: list[tuple[str, int, bytes]] = []
    clock = task.Clock()
    channel: Any = SimpleNamespace(
        handlers={}, send=lambda dst, kind, payload: frames.append((dst, kind, payload))
    )
    svc = ReplicationService("a", channel, clock, batch_frames=lambda: batch)
    svc.controller_of = lambda: "a"
    for i in range(partitions):
        c = FailoverCore(IDS, epoch=1, leader="b", assign_on_commit=False)
        c.start_failover()
        svc.controllers[(f"t{i:05d}", 0)] = c
    return svc, clock, frames


def _retried_fences(partitions: int, batch: bool) -> tuple[int, int]:
    """(frames, fences in them) sent to b and c by the ticks until the first
    retry (b and c not heard: a heard node's fences are not retried before
    the beat timeout, see test_fence_retry_heard.py)."""
    svc, clock, frames = _controller(partitions, batch)
    retry = next(iter(svc.controllers.values())).retry_ticks
    for _ in range(retry):
        clock.advance(svc.tick_seconds)
        svc.tick()
    peers = [f for f in frames if f[0] in ("b", "c")]
    fences = 0
    for _dst, kind, payload in peers:
        many = msgspec.msgpack.decode(payload, type=list[bytes]) if kind == REPLICATION_BATCH else [payload]
        for one in many:
            m = decode(msgspec.msgpack.decode(one, type=Envelope).message)
            fences += isinstance(m, Fence)
    return len(peers), fences


def test_a_ticks_retried_fences_leave_as_a_few_frames_per_node() -> None:
    """10,000 cores retry their fences to b and c in one tick: every fence is
    sent (20,000), in a handful of frames per node (bounded in bytes), not
    one each; without the ``repl-batch`` feature, one frame each as before."""
    frames, fences = _retried_fences(10_000, batch=True)
    assert fences == 20_000
    assert frames <= 2 * 20
    frames, fences = _retried_fences(1_000, batch=False)
    assert (frames, fences) == (2_000, 2_000)
