"""An entry node that follows a partition answers an ``acks=quorum`` publish it
forwarded from its own replica, once that replica shows the records (issue 16,
quorum38) -- and only when that says exactly what the leader's answer would:
the publish's first attempt, ids this node named, records found below its own
high watermark (on its disk and a majority's).  Off the happy path (the leader
dies between, a record cut before it was shown, a client's id) the leader's
answer, or the retry's, is the answer, and nothing is left watching."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from harness.entry_router import FollowerEntry
from sprawl.log.record import Record
from sprawl.pubsub import PublishResult
from sprawl.testing import FakeRPC


class _Entry(FollowerEntry):
    """A follower entry node's router: its replica's log of ``t``/0, a fake broker
    whose watchers the log's moves notify, and the leader's RPC answers held."""

    def __init__(self) -> None:
        #: The leader's answers, one Deferred per call, in order.
        self.answers: list[defer.Deferred[Any]] = []

        def answer(peer: str, method: str, body: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            self.answers.append(d)
            return d

        super().__init__(FakeRPC(answer), task.Clock())

    def publish(self, *ids: str | None) -> defer.Deferred[PublishResult]:
        recs = [Record(-1, 0, 0, i, None, None, b"m", True) for i in ids]
        return self.router.publish(self.topic, recs, "quorum")  # type: ignore[arg-type]

    def forwarded_ids(self, call: int = -1) -> list[str]:
        return [r[3] for r in self.rpc.calls[call][2]["records"]]


def _answered(d: defer.Deferred[Any]) -> bool:
    """Whether ``d`` has its outcome (not: fired into a retry it waits on)."""
    return d.called and not isinstance(d.result, defer.Deferred)


def test_a_forwarded_publish_is_answered_from_the_entry_nodes_replica_once_it_shows_it() -> None:
    """The records named here are answered with their offsets in this replica
    once its high watermark passes every one of them -- not before, and not
    waiting for the leader's answer, which is dropped when it comes."""
    e = _Entry()
    d = e.publish(None, None)
    ours = e.forwarded_ids()
    assert len(ours) == 2 and not d.called
    e.replicate("someone-else")
    first = e.replicate(*ours)
    e.show(first + 1)  # (the first of the two only)
    assert not d.called
    e.show(first + 2)
    assert d.called, "not answered from the replica"
    res = d.result
    assert res.offsets == [first, first + 1] and res.ids == ours
    assert res.duplicates == [False, False] and res.stored == "quorum" and res.partitions == [0, 0]
    assert e.router.answered_here == 1 and e.watching() == 0 and e.router._shown == {}
    e.answers[0].callback(
        {"offsets": [first, first + 1], "ids": ours, "duplicates": [False] * 2, "stored": "quorum"}
    )
    e.answers[0].addErrback(lambda f: None)  # (nothing failed)


def test_the_leader_dying_between_leaves_the_answer_to_the_retry() -> None:
    """The record reached this replica, durable here, but the leader died before a
    majority was known: its call fails and the publish is retried at the next
    leader.  The retry may meet the first copy (the next leader answers it as a
    duplicate at its offset), so it is not answered from the replica -- even once
    the replica shows the record -- but with the next leader's answer."""
    e = _Entry()
    d = e.publish(None)
    ours = e.forwarded_ids()
    at = e.replicate(*ours)
    e.leader = "a2"
    e.answers[0].errback(_unreachable())
    assert not _answered(d) and e.watching() == 0
    e.clock.advance(0.05)  # (the retry's backoff)
    assert e.rpc.peers == ["L", "a2"] and e.forwarded_ids() == ours
    e.show(at + 1)  # the next leader committed the first copy
    assert not _answered(d), "a retry was answered from the replica"
    e.answers[1].callback({"offsets": [at], "ids": ours, "duplicates": [True], "stored": "quorum"})
    assert _answered(d) and d.result.offsets == [at] and d.result.duplicates == [True]
    assert e.router.answered_here == 0 and e.watching() == 0


def test_a_record_cut_before_it_was_shown_is_not_taken_for_the_answer() -> None:
    """Only records below the replica's high watermark count: a copy of ours that
    was cut (an old epoch's uncommitted suffix) and replaced is never the answer."""
    e = _Entry()
    d = e.publish(None)
    ours = e.forwarded_ids()
    before = e.replicate("earlier")
    at = e.replicate(*ours)
    e.show(before + 1)  # (the record before ours: ours is durable here, not shown)
    assert not d.called
    e.log.truncate(at)  # a new leader's log differs there
    e.replicate("theirs")
    e.show(at + 1)
    assert not d.called
    e.answers[0].callback({"offsets": [at + 5], "ids": ours, "duplicates": [False], "stored": "quorum"})
    assert d.called and d.result.offsets == [at + 5]
    assert e.router.answered_here == 0 and e.watching() == 0


def test_a_clients_own_id_is_answered_by_the_leader() -> None:
    """A message with the client's id may repeat an earlier publish (the leader
    answers it as a duplicate at the first copy's offset): the replica showing a
    record with that id is not the answer."""
    e = _Entry()
    d = e.publish("client-1")
    at = e.replicate("client-1")
    e.show(at + 1)
    assert not d.called and e.watching() == 0
    e.answers[0].callback({"offsets": [0], "ids": ["client-1"], "duplicates": [True], "stored": "quorum"})
    assert d.called and d.result.duplicates == [True] and d.result.offsets == [0]


def test_the_leaders_answer_first_is_the_answer_and_stops_the_look() -> None:
    """When the leader answers before the replica shows the records, its answer is
    the answer and the replica's watch ends."""
    e = _Entry()
    d = e.publish(None)
    ours = e.forwarded_ids()
    assert e.watching() == 1
    e.answers[0].callback({"offsets": [7], "ids": ours, "duplicates": [False], "stored": "quorum"})
    assert d.called and d.result.offsets == [7] and e.watching() == 0


def _unreachable() -> Exception:
    from sprawl.errors import Unavailable

    return Unavailable("the peer went away", code="peer_unreachable")
