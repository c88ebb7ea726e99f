"""A forwarded ``acks=quorum`` publish the entry node answers from its own
replica costs the leader no answer frame (issue 16, cpu39): the entry asks
``quiet``, and a leader that committed the records while the entry's copy of
them was durable (its follower's acknowledged end passes them) sends nothing
-- the entry's replica shows them once it learns the high watermark.  Every
other outcome is answered as before (the entry's copy short of the records,
duplicates, an error, a forward that did not ask), and the entry forgets its
call once its replica answered: no call, no timer left.  Counted: the
``RESPONSE`` frames the leader sends, the calls and timers the entry keeps."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import defer, task

from harness.counting import count_calls
from harness.entry_router import FollowerEntry
from sprawl.cluster.routing import Router
from sprawl.errors import Unavailable
from sprawl.log.record import Record, pack_record
from sprawl.peer.frames import REQUEST, RESPONSE
from sprawl.peer.rpc import PeerRPC, _Request, _Response
from sprawl.pubsub import PublishResult


def _channel(frames: list[tuple[str, int, bytes]]) -> Any:
    """A peer channel that records every frame it is given (peer, kind, payload)."""

    def send(dst: str, kind: int, payload: bytes) -> bool:
        frames.append((dst, kind, payload))
        return True

    return SimpleNamespace(
        handlers={}, send=send, fits=lambda kind, size: True, on_unreachable=lambda p: None
    )


class _Leader:
    """The leader's router on a real :class:`PeerRPC` over a recording channel;
    each publish it takes waits in ``committed`` until the test commits it."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.frames: list[tuple[str, int, bytes]] = []
        self.channel = _channel(self.frames)
        self.rpc = PeerRPC(self.channel, self.clock)
        self.followers = {"a": SimpleNamespace(match=0), "b": SimpleNamespace(match=0)}
        core = SimpleNamespace(is_leader=True, dead=frozenset(), followers=self.followers)
        #: The leader's waits for an entry's copy (follower, end, Deferred): the test fires them.
        self.held: list[tuple[str, int, defer.Deferred[bool]]] = []

        def when_held(follower: str, end: int, seconds: float) -> defer.Deferred[bool]:
            d: defer.Deferred[bool] = defer.Deferred()
            self.held.append((follower, end, d))
            return d

        topic = SimpleNamespace(name="t", logs=[object()], config=SimpleNamespace(max_message_bytes=1 << 20))
        broker = SimpleNamespace(topics={"t": topic}, check_message_sizes=lambda records, limit: None)
        sync = SimpleNamespace(
            is_local=lambda name, p: False,
            service=SimpleNamespace(replicas={("t", 0): SimpleNamespace(core=core, when_held=when_held)}),
        )
        self.router = Router("L", broker, sync, self.rpc, self.clock)  # type: ignore[arg-type]
        self.committed: list[defer.Deferred[PublishResult]] = []

        def publish_replicated(*args: Any, **kw: Any) -> defer.Deferred[PublishResult]:
            d: defer.Deferred[PublishResult] = defer.Deferred()
            self.committed.append(d)
            return d

        # (the leading replica's publish: answered when the test commits it)
        self.router._publish_replicated = publish_replicated  # type: ignore[method-assign]
        self.rid = 0

    def forward(self, caller: str, *ids: str, quiet: bool = True) -> None:
        """``caller`` forwards a publish of records it named ``ids``."""
        self.rid += 1
        body: dict[str, Any] = {
            "topic": "t",
            "partition": 0,
            "acks": "quorum",
            "records": [pack_record(Record(-1, 0, 0, i, None, None, b"m", True)) for i in ids],
            "named": list(ids),
        }
        if quiet:
            body["quiet"] = True
        self.channel.handlers[REQUEST](caller, msgspec.msgpack.encode(_Request(self.rid, "publish", 1, body)))

    def answers(self, to: str) -> list[Any]:
        """The bodies of the answers sent to ``to``."""
        return [
            msgspec.msgpack.decode(payload, type=_Response).body
            for dst, kind, payload in self.frames
            if dst == to and kind == RESPONSE
        ]


def _committed(first: int, n: int, dups: bool = False) -> PublishResult:
    return PublishResult(
        list(range(first, first + n)), [f"x{i}" for i in range(n)], [0] * n, [dups] * n, "quorum"
    )


def test_the_leader_sends_no_answer_to_a_quiet_forward_whose_entry_holds_the_records() -> None:
    """The entry's copy passes the records when they are committed: no frame
    at all (one per forward without the change)."""
    lead = _Leader()
    for k in range(10):
        lead.forward("a", f"n{k}")
        lead.followers["a"].match = 100 + k + 1  # a's durable end passes offset 100 + k
        lead.committed[-1].callback(_committed(100 + k, 1))
    assert lead.answers("a") == []
    assert lead.frames == []


def test_every_other_outcome_is_answered() -> None:
    """Answered as before: the entry's copy one record short when committed (a
    quorum of the others), duplicates, a forward that did not ask, an error."""
    lead = _Leader()
    lead.forward("a", "n0", "n1")
    lead.followers["a"].match = 11  # holds 10, not 11
    lead.committed[-1].callback(_committed(10, 2))
    assert lead.answers("a") == [] and [h[:2] for h in lead.held] == [("a", 12)]
    lead.held.pop()[2].callback(False)  # (not held within the wait: answered)
    lead.forward("a", "n2")
    lead.followers["a"].match = 13
    lead.committed[-1].callback(_committed(12, 1, dups=True))
    lead.forward("a", "n3", quiet=False)
    lead.followers["a"].match = 14
    lead.committed[-1].callback(_committed(13, 1))
    lead.forward("b", "n4")  # b's copy is not known to hold it
    lead.committed[-1].callback(_committed(14, 1))
    lead.held.pop()[2].callback(False)
    lead.forward("a", "n5")
    lead.committed[-1].errback(Unavailable("between leaders", code="no_leader"))
    assert lead.held == []
    got = lead.answers("a")
    assert [x["offsets"] for x in got[:3]] == [[10, 11], [12], [13]]
    assert got[1]["duplicates"] == [True]
    assert got[3]["code"] == "no_leader"
    assert [x["offsets"] for x in lead.answers("b")] == [[14]]


def test_a_quiet_forward_committed_before_the_entry_held_it_is_left_unanswered_once_it_does() -> None:
    """Committed by the other follower's copy, before the entry's was durable: the
    leader waits (at most ``quiet_wait``) for the entry's copy and sends nothing
    once it is held (issue 16, qlead42: an answer frame each without the wait);
    not held in time, it answers; with ``quiet_wait`` 0 it answers at once."""
    lead = _Leader()
    for k in range(10):
        lead.forward("a", f"n{k}")
        lead.followers["a"].match = 100 + k  # durable up to the record before
        lead.committed[-1].callback(_committed(100 + k, 1))
        ((who, end, d),) = lead.held
        assert (who, end) == ("a", 100 + k + 1)
        lead.held.clear()
        d.callback(True)
    assert lead.frames == []
    lead.forward("a", "late")
    lead.committed[-1].callback(_committed(200, 1))
    lead.held.pop()[2].callback(False)
    assert [x["offsets"] for x in lead.answers("a")] == [[200]]
    lead.router.quiet_wait = 0
    lead.forward("a", "now")
    lead.committed[-1].callback(_committed(201, 1))
    assert lead.held == [] and [x["offsets"] for x in lead.answers("a")] == [[200], [201]]


class _Entry(FollowerEntry):
    """A follower entry node's router on a real :class:`PeerRPC` (the leader's
    answers never come): its replica of ``t``/0 and the watchers its moves notify."""

    def __init__(self) -> None:
        clock = task.Clock()
        self.frames: list[tuple[str, int, bytes]] = []
        super().__init__(PeerRPC(_channel(self.frames), clock), clock)

    def sent_ids(self) -> list[str]:
        req = msgspec.msgpack.decode(self.frames[-1][2], type=_Request)
        assert req.body["quiet"] is True
        return [r[3] for r in req.body["records"]]

    def show_ids(self, *ids: str) -> None:
        """The leader's append of ``ids`` is durable here and the high watermark passes it."""
        self.replicate(*ids)
        self.show(self.log.next_offset)


def test_the_entry_forgets_its_quiet_call_once_its_replica_answered() -> None:
    """Answered from the replica; the call to the leader is forgotten with its
    timer (without it each forward kept a call and a timer for its timeout,
    then failed it), and a late answer from an older leader is dropped."""
    e = _Entry()
    results = []
    for _ in range(5):
        d = e.router.publish(e.topic, [Record(-1, 0, 0, None, None, None, b"m", True)], "quorum")  # type: ignore[arg-type]
        e.show_ids(*e.sent_ids())
        assert d.called
        results.append(d.result)
    assert [r.offsets for r in results] == [[0], [1], [2], [3], [4]]
    assert all(r.stored == "quorum" and r.partitions == [0] for r in results)
    assert e.rpc._pending == {}
    assert e.no_timer_left()
    assert e.router.answered_here == 5 and e.router._shown == {}
    late = _Response(1, True, {"offsets": [0], "ids": ["x"], "duplicates": [False], "stored": "quorum"})
    e.rpc._on_response("L", msgspec.msgpack.encode(late))
    assert e.rpc.dropped == 1


def test_a_one_partition_publish_is_not_gathered(monkeypatch: Any) -> None:
    """A publish whose records all go to one partition (a batch without keys)
    is that partition's answer, its partitions named: no ``gatherResults``
    (nor the combining of its one result) a message -- 280 lines of Python
    to send a forwarded message without it, 221 with it."""
    e = _Entry()
    gathered = count_calls(monkeypatch, defer, "gatherResults")
    recs = [Record(-1, 0, 0, None, None, None, b"m", True) for _ in range(3)]
    d = e.router.publish(e.topic, recs, "quorum")  # type: ignore[arg-type]
    e.show_ids(*e.sent_ids())
    assert d.called and gathered == []
    assert d.result.offsets == [0, 1, 2] and d.result.partitions == [0, 0, 0]
