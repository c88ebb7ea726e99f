"""An entry node forwards a publish's first attempt without a coroutine (issue
16, qlead42): ``Router._forward_first`` sends it and answers from the leader's
answer or this node's replica as ``_publish_once`` did, as a plain Deferred
chain -- the ``_publish_partition`` and ``_publish_once`` coroutines were ~50
lines of Python a forward on the entry nodes, which take ~60 % of the
publishes at 8 connections over 3 nodes.  A retryable failure goes on to the
coroutine's retries as that first attempt's.  Counted: ``ensureDeferred``
calls (the router's coroutines)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from twisted.internet import defer, task

from harness.counting import count_calls
from harness.entry_router import FollowerEntry
from sprawl.log.record import Record
from sprawl.peer.rpc import PeerRPC, _Request, _Response


class _Entry(FollowerEntry):
    """Node ``a`` (a follower of ``t``/0, led by ``L``) on a real :class:`PeerRPC`
    over a channel that records what it sends."""

    def __init__(self) -> None:
        clock = task.Clock()
        self.frames: list[tuple[str, int, bytes]] = []

        def send(dst: str, kind: int, payload: bytes) -> bool:
            self.frames.append((dst, kind, payload))
            return True

        channel = SimpleNamespace(
            handlers={}, send=send, fits=lambda kind, size: True, on_unreachable=lambda p: None
        )
        super().__init__(PeerRPC(channel, clock), clock)

    def request(self) -> _Request:
        return msgspec.msgpack.decode(self.frames[-1][2], type=_Request)

    def answer(self, ok: bool, body: Any) -> None:
        """The leader answers the last forward."""
        self.rpc._on_response(self.leader, msgspec.msgpack.encode(_Response(self.request().id, ok, body)))

    def publish(self) -> list[Any]:
        """A publish of one message: its outcome (a result or a failure) once it has one."""
        out: list[Any] = []
        d = self.router.publish(self.topic, [Record(-1, 0, 0, None, None, None, b"m", True)], "quorum")  # type: ignore[arg-type]
        d.addBoth(out.append)
        return out


@pytest.fixture
def coroutines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return count_calls(monkeypatch, defer, "ensureDeferred")


def test_forwards_answered_here_run_no_coroutine(coroutines: list[str]) -> None:
    """Five quiet forwards answered from the replica: their offsets there, no
    call or timer left, and no coroutine (five without the change)."""
    e = _Entry()
    results = []
    for _ in range(5):
        d = e.publish()
        req = e.request()
        assert req.body["quiet"] is True and req.hops == 1
        e.replicate(*[r[3] for r in req.body["records"]])
        e.show(e.log.next_offset)
        results.extend(d)
    assert [r.offsets for r in results] == [[0], [1], [2], [3], [4]]
    assert all(r.stored == "quorum" and r.partitions == [0] for r in results)
    assert e.rpc._pending == {} and e.no_timer_left()
    assert e.router.answered_here == 5 and e.router._shown == {} and e.watching() == 0
    assert coroutines == []


def test_forwards_answered_by_the_leader_run_no_coroutine(coroutines: list[str]) -> None:
    """The leader's answer first: it is the answer (its ids, duplicates and
    ``stored``), the replica is no longer looked at, and no coroutine ran."""
    e = _Entry()
    for k in range(5):
        d = e.publish()
        ids = [r[3] for r in e.request().body["records"]]
        e.answer(True, {"offsets": [40 + k], "ids": ids, "duplicates": [k == 3], "stored": "quorum"})
        (res,) = d
        assert (res.offsets, res.ids, res.duplicates) == ([40 + k], ids, [k == 3])
    assert e.router._shown == {} and e.watching() == 0 and e.no_timer_left()
    assert coroutines == []


def test_a_refused_first_attempt_is_retried_by_the_loop(coroutines: list[str]) -> None:
    """``not_leader`` from the leader: the publish goes on to the retries (one
    coroutine), whose next attempt -- not a first: not quiet -- is answered."""
    e = _Entry()
    d = e.publish()
    first = e.request()
    e.answer(False, {"code": "not_leader", "message": "moved", "status": 503})
    assert d == [] and coroutines == ["ensureDeferred"]
    e.clock.advance(0.05)  # (the retry's backoff)
    again = e.request()
    assert again.id != first.id and "quiet" not in again.body
    assert again.body["records"] == first.body["records"]
    e.answer(
        True,
        {"offsets": [7], "ids": [first.body["records"][0][3]], "duplicates": [False], "stored": "quorum"},
    )
    assert [r.offsets for r in d] == [[7]] and e.router.retried == 1


def test_an_error_that_is_not_retried_fails_the_publish() -> None:
    e = _Entry()
    d = e.publish()
    e.answer(False, {"code": "payload_too_large", "message": "no", "status": 413})
    assert len(d) == 1 and d[0].value.code == "payload_too_large"
    assert e.router._shown == {} and e.no_timer_left()


def test_a_quiet_forward_costs_the_entry_two_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of the leader's answer and this replica's is one Deferred with a
    link on each side and none of its own (six links a forward with the chain of
    ``_first_of``, the forget, the choice, the retry and the partition named; the
    test's own link to read the outcome makes a third)."""
    from twisted.internet.defer import Deferred

    e = _Entry()
    links: list[str] = []
    for add in ("addCallbacks", "addCallback", "addErrback", "addBoth"):
        count_calls(monkeypatch, Deferred, add, links)
    for _ in range(5):
        d = e.publish()
        e.replicate(*[r[3] for r in e.request().body["records"]])
        e.show(e.log.next_offset)
        assert len(d) == 1
    assert len(links) == 15


def test_a_forward_answered_here_forgets_its_call_without_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five quiet forwards answered from the replica: each call to the leader is
    forgotten (``PeerRPC.drop``) without failing its Deferred -- no cancel and no
    Failure built (five of each without the change: the cancel's
    ``CancelledError``, traceback included, for a Deferred nothing waited on);
    the leader's late answers are dropped, and nothing fires at the deadlines."""
    from twisted.python import failure

    e = _Entry()
    cancels = count_calls(monkeypatch, defer.Deferred, "cancel")
    failures = count_calls(monkeypatch, failure.Failure, "__init__")
    results, ids = [], []
    for _ in range(5):
        d = e.publish()
        req = e.request()
        ids.append(req.id)
        e.replicate(*[r[3] for r in req.body["records"]])
        e.show(e.log.next_offset)
        results.extend(d)
    assert [r.offsets for r in results] == [[0], [1], [2], [3], [4]]
    assert cancels == [] and failures == []
    for rid in ids:
        e.rpc._on_response(e.leader, msgspec.msgpack.encode(_Response(rid, True, {"offsets": [9]})))
    assert e.rpc.dropped == 5 and [r.offsets for r in results] == [[0], [1], [2], [3], [4]]
    assert e.no_timer_left() and failures == []


def test_a_quiet_forward_the_leader_does_not_answer_times_out_and_is_retried() -> None:
    """The leader never answers a quiet forward and the entry's replica never
    shows its records: the call still fails at ``forward_timeout`` (the RPC's
    one deadline timer, issue 16, turn44) -- not before -- and the publish is
    retried, not quiet, and answered by the leader's answer to the retry."""
    e = _Entry()
    d = e.publish()
    first = e.request()
    assert first.body["quiet"] is True
    e.clock.advance(e.router.forward_timeout - 0.001)
    assert d == [] and len(e.frames) == 1
    e.clock.advance(0.001)  # (the deadline: the call fails, the retries begin)
    e.clock.advance(0.05)  # (the retry's backoff)
    again = e.request()
    assert len(e.frames) == 2 and again.id != first.id and "quiet" not in again.body
    assert again.body["records"] == first.body["records"] and e.router.retried == 1
    ids = [r[3] for r in again.body["records"]]
    e.answer(True, {"offsets": [3], "ids": ids, "duplicates": [False], "stored": "quorum"})
    assert [r.offsets for r in d] == [[3]] and e.rpc._pending == {}
