"""A burst of replication messages to one node goes as one frame (issue 23,
apply36): a dead node's failover sent each survivor a frame per message --
thousands of fences, their answers, the new leaders' first appends and
theirs, about ten frames per moved partition, each framed, written, read,
parsed and dispatched on its own.  Within :meth:`ReplicationService.held`
the messages to other nodes are held and leave at its end as one
``REPLICATION_BATCH`` frame per node, in order; a node taking such a frame
holds what it sends back likewise.  Until every node has the ``repl-batch``
feature (an older node drops a frame kind it does not know), each message is
a frame, as before.  Counted, not timed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest_twisted
from twisted.internet import task

from benchmarks.failover_apply import Failover
from harness import the_reactor
from sprawl.peer.frames import BATCH_BYTES, REPLICATION, REPLICATION_BATCH
from sprawl.replication.envelope import Envelope
from sprawl.replication.messages import Fence, decode, encode
from sprawl.replication.service import HELD_ALONE_BYTES, ReplicationService


def _service(node: str, batch: bool = True) -> tuple[ReplicationService, list[tuple[str, int, bytes]]]:
    """A service on a fake channel that records each frame (peer, kind, payload)."""
    frames: list[tuple[str, int, bytes]] = []
    channel = SimpleNamespace(
        handlers={}, send=lambda dst, kind, payload: frames.append((dst, kind, payload))
    )
    return ReplicationService(node, channel, task.Clock(), batch_frames=lambda: batch), frames  # type: ignore[arg-type]


def _fences(frames: list[tuple[str, int, bytes]]) -> list[tuple[str, int]]:
    """(peer, fence epoch) of every message in ``frames``, in order."""
    out = []
    for dst, kind, payload in frames:
        for one in (
            msgspec.msgpack.decode(payload, type=list[bytes]) if kind == REPLICATION_BATCH else [payload]
        ):
            m = decode(msgspec.msgpack.decode(one, type=Envelope).message)
            assert isinstance(m, Fence)
            out.append((dst, m.epoch))
    return out


def test_held_messages_leave_as_one_frame_per_node_in_order() -> None:
    """500 messages to b and one to c within a hold: nothing leaves until its
    end, then one batch frame to b (its messages in order) and a plain frame
    to c (one message needs no batch); a nested hold sends at the outer end."""
    svc, frames = _service("a")
    send = svc.sender(("t", 0))
    with svc.held():
        with svc.held():
            for i in range(500):
                send("b", Envelope("t", 0, encode(Fence(i))))
        send("c", Envelope("t", 0, encode(Fence(7))))
        assert frames == []
    assert [(dst, kind) for dst, kind, _ in frames] == [("b", REPLICATION_BATCH), ("c", REPLICATION)]
    assert _fences(frames) == [("b", i) for i in range(500)] + [("c", 7)]
    assert (svc.batch_frames_sent, svc.batched_messages) == (1, 500)
    send("b", Envelope("t", 0, encode(Fence(9))))  # outside a hold: at once, as before
    assert [kind for _, kind, _ in frames[2:]] == [REPLICATION]


def test_without_the_feature_every_message_is_a_frame() -> None:
    """While some node lacks ``repl-batch`` a hold changes nothing on the wire:
    one plain frame per message, in order (an older node would drop a batch)."""
    svc, frames = _service("a", batch=False)
    send = svc.sender(("t", 0))
    with svc.held():
        for i in range(300):
            send("b", Envelope("t", 0, encode(Fence(i))))
    assert [kind for _, kind, _ in frames] == [REPLICATION] * 300
    assert _fences(frames) == [("b", i) for i in range(300)]
    assert svc.batch_frames_sent == 0


def test_a_batch_frame_is_bounded_in_bytes() -> None:
    """Held messages past :data:`BATCH_BYTES` go in more than one frame, each
    within the bound, none lost or reordered; a message that carries records
    (over :data:`HELD_ALONE_BYTES`) goes as its own frame, in its place --
    a follower catching up gets its appends in frames of the replica's
    ``batch_bytes``, not merged."""
    svc, frames = _service("a")
    send = svc.sender(("t", 0))
    small = Envelope("t" * 3_000, 0, encode(Fence(1)))  # ~3 kB each
    n = 2 * BATCH_BYTES // 3_000 + 3
    with svc.held():
        for _ in range(n):
            send("b", small)
    assert len(frames) == 3
    assert all(len(p) <= BATCH_BYTES + 64 for _, _, p in frames)
    assert sum(len(msgspec.msgpack.decode(p, type=list[bytes])) for _, _, p in frames) == n
    frames.clear()
    big = Envelope("t" * 20_000, 0, encode(Fence(2)))
    with svc.held():
        for m in (small, small, big, small, big, big, small):
            send("b", m)
    assert [k for _, k, _ in frames] == [
        REPLICATION_BATCH,
        REPLICATION,
        REPLICATION,
        REPLICATION,
        REPLICATION,
        REPLICATION,
    ]
    assert [e for _, e in _fences(frames)] == [1, 1, 2, 1, 2, 2, 1]
    assert max(len(p) for _, _, p in frames) < 20_000 + HELD_ALONE_BYTES


def test_a_batch_frame_is_taken_message_by_message_and_answered_in_one() -> None:
    """The receiver takes a batch's messages in order, as if each came alone,
    and what they make it send back leaves as one frame: here each message
    is answered to the sender."""
    svc, frames = _service("a")
    send = svc.sender(("t", 0))
    with svc.held():
        for i in range(200):
            send("b", Envelope("t", 0, encode(Fence(i))))
    (_, kind, payload) = frames[0]
    other, back = _service("b")
    got: list[int] = []
    answer = other.sender(("t", 0))

    def deliver(peer: str, env: Envelope) -> None:
        m = decode(env.message)
        assert isinstance(m, Fence)
        got.append(m.epoch)
        answer(peer, Envelope("t", 0, encode(Fence(m.epoch + 1000))))

    other._deliver = deliver  # type: ignore[method-assign]
    other.channel.handlers[kind]("a", payload)
    assert got == list(range(200))
    assert [(dst, k) for dst, k, _ in back] == [("a", REPLICATION_BATCH)]
    assert _fences(back) == [("a", 1000 + i) for i in range(200)]
    other.channel.handlers[kind]("a", b"\x00not a batch")
    assert other.dropped == 1


async def _failover_frames(path: Path, partitions: int) -> dict[str, Any]:
    """One failover of ``partitions`` (no ticks), until every partition is led
    with its control record committed: frames and messages by node pair."""
    fo = Failover(path, partitions, the_reactor(), ticking=False)
    try:
        await fo.setup()
        fo.start()
        await fo.until_led()
        got = {"frames": dict(fo.net.by_pair), "messages": dict(fo.net.by_kind)}
        await fo.quiet()
        return got
    finally:
        await fo.close()


@pytest_twisted.ensureDeferred
async def test_a_failovers_10000_partitions_cost_a_few_frames_per_node_pair(tmp_path: Path) -> None:
    """10,000 partitions of the dead node b move to a (the controller's node),
    c follows: every message is still sent (a fence to each replica and its
    answer, the control record and the high watermark covering it, their
    answers) but the frames between a and c are a few per reactor turn of
    the apply -- not the ~10 per partition (100,000) of one frame per
    message -- and no Assign follows the commit (each node applies it)."""
    n = 10_000
    got = await _failover_frames(tmp_path, n)
    msgs = got["messages"]
    assert msgs["a>c Fence"] == n and msgs["c>a FenceResp"] == n
    assert msgs["a>c Append"] == 2 * n and msgs["c>a AppendResp"] <= 2 * n
    assert not [k for k in msgs if k.endswith("Assign")], msgs
    # The apply is 50 slices of 200 topics; each slice's first appends, the
    # follower's answers and the watermarks are a frame or two per turn.
    # One frame per 20 partitions is far above that and far below a frame per message.
    assert got["frames"]["a>c"] <= n // 20, got["frames"]
    assert got["frames"]["c>a"] <= n // 20, got["frames"]
