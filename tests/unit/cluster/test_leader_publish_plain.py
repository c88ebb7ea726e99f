"""A publish this node's replica leads is a plain Deferred chain on the leader (issue 16,
lat41): the router's ``acks=quorum`` path -- a client's publish taken here and a
publish another entry node forwards -- runs no coroutine (no ``ensureDeferred``: ~43
lines of ``_inlineCallbacks`` a message before), and is answered as before: after the
replica's quorum waiter fires, duplicates after their first copy is committed, a
failure the publish's retries ride through (the leadership lost and won back) retried
as the coroutine's first attempt would be.  Counted: ``ensureDeferred`` calls."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from twisted.internet import defer, task

from harness.counting import count_calls
from sprawl.cluster.routing import Router
from sprawl.errors import Overloaded
from sprawl.log.record import Record, pack_record
from sprawl.peer.frames import REQUEST, RESPONSE
from sprawl.peer.rpc import PeerRPC, _Request, _Response
from sprawl.pubsub import PublishResult
from sprawl.replication.replica import NotLeader


class _Window:
    """A dedup window: id -> (partition, offset)."""

    def __init__(self) -> None:
        self.ids: dict[str, tuple[int, int]] = {}

    def lookup(self, rid: str, now: int) -> tuple[int, int] | None:
        return self.ids.get(rid)

    def remember(self, rid: str, p: int, offset: int, now: int) -> None:
        self.ids[rid] = (p, offset)


class _Replica:
    """The leader's replica of ``t``/0: each publish waits in ``waiting`` for the test
    to commit it (a quorum), as :meth:`PartitionReplication.publish` does."""

    def __init__(self) -> None:
        self.partition = 0
        self.core = SimpleNamespace(is_leader=True, dead=frozenset(), followers={}, fenced_epoch=1)
        self.next = 0
        self.waiting: list[tuple[defer.Deferred[Any], Any]] = []
        self.committed: list[tuple[int, defer.Deferred[None]]] = []
        self.refuse: Exception | None = None

    def publish(self, records: list[Record], value: Any = None) -> defer.Deferred[Any]:
        if self.refuse is not None:
            e, self.refuse = self.refuse, None
            raise e
        offsets = []
        for r in records:
            r.offset, r.partition = self.next, 0
            offsets.append(self.next)
            self.next += 1
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((d, offsets if value is None else value))
        return d

    def commit(self) -> None:
        """The oldest waiting publish reaches a quorum."""
        d, offsets = self.waiting.pop(0)
        d.callback(offsets)

    def wait_committed(self, offset: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.committed.append((offset, d))
        return d


class _Leader:
    """Node ``L``'s router, leading ``t``/0 (not local: replicated), on a real
    :class:`PeerRPC` over a recording channel."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.frames: list[tuple[str, int, bytes]] = []

        def send(dst: str, kind: int, payload: bytes) -> bool:
            self.frames.append((dst, kind, payload))
            return True

        self.channel = SimpleNamespace(
            handlers={}, send=send, fits=lambda kind, size: True, on_unreachable=lambda p: None
        )
        self.rpc = PeerRPC(self.channel, self.clock)
        self.replica = _Replica()
        self.topic = SimpleNamespace(
            name="t",
            logs=[object()],
            partition_for=lambda key: 0,
            config=SimpleNamespace(max_message_bytes=1 << 20),
            dedup=_Window(),
            recent=_Window(),
        )
        ids = iter(range(1_000_000))
        self.broker = SimpleNamespace(
            topics={"t": self.topic},
            check_message_sizes=lambda records, limit: None,
            check_writable=lambda: None,
            now_ms=lambda: 1000,
            new_message_id=lambda: f"named-{next(ids)}",
            published_total=0,
            published_bytes_total=0,
            deduplicated_total=0,
            metrics=None,
        )
        self.sync = SimpleNamespace(
            is_local=lambda name, p: False,
            service=SimpleNamespace(replicas={("t", 0): self.replica}),
            placement=lambda name, p: {"leader": "L", "replicas": ["L", "a", "b"], "epoch": 1},
        )
        self.router = Router("L", self.broker, self.sync, self.rpc, self.clock)  # type: ignore[arg-type]
        self.rid = 0

    def publish(self, *ids: str | None) -> defer.Deferred[PublishResult]:
        recs = [Record(-1, 0, 0, i, None, None, b"m", True) for i in ids]
        return self.router.publish(self.topic, recs, "quorum")  # type: ignore[arg-type]

    def forward(self, caller: str, *ids: str) -> None:
        """``caller`` forwards a publish of records it named ``ids`` (not quiet)."""
        self.rid += 1
        body: dict[str, Any] = {
            "topic": "t",
            "partition": 0,
            "acks": "quorum",
            "records": [pack_record(Record(-1, 0, 0, i, None, None, b"m", True)) for i in ids],
            "named": list(ids),
        }
        self.channel.handlers[REQUEST](caller, msgspec.msgpack.encode(_Request(self.rid, "publish", 1, body)))

    def answers(self, to: str) -> list[Any]:
        return [
            msgspec.msgpack.decode(payload, type=_Response).body
            for dst, kind, payload in self.frames
            if dst == to and kind == RESPONSE
        ]


def answered(d: defer.Deferred[PublishResult]) -> list[PublishResult]:
    """What ``d`` is answered with, once it is (a chained Deferred counts as
    ``called`` while it still waits)."""
    out: list[PublishResult] = []
    d.addCallback(lambda r: out.append(r) or r)
    return out


@pytest.fixture
def coroutines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts ``defer.ensureDeferred`` calls (the router's coroutines)."""
    return count_calls(monkeypatch, defer, "ensureDeferred")


def test_a_leaders_quorum_publishes_run_no_coroutine(coroutines: list[str]) -> None:
    """Ten publishes taken here and ten forwarded: no coroutine (one each without the
    change), each answered only once its quorum waiter fired, with its offsets."""
    lead = _Leader()
    results = []
    for k in range(10):
        d = lead.publish(None)
        assert not d.called  # (waits for the quorum)
        lead.replica.commit()
        assert d.called
        results.append(d.result)
        lead.forward("a", f"fw{k}")
        n = len(lead.answers("a"))
        lead.replica.commit()
        assert len(lead.answers("a")) == n + 1
    assert coroutines == []
    assert [r.offsets for r in results] == [[2 * k] for k in range(10)]
    assert all(r.stored == "quorum" and r.partitions == [0] and r.duplicates == [False] for r in results)
    got = lead.answers("a")
    assert [x["offsets"] for x in got] == [[2 * k + 1] for k in range(10)]
    assert [x["ids"] for x in got] == [[f"fw{k}"] for k in range(10)]
    assert all(x["stored"] == "quorum" and x["duplicates"] == [False] for x in got)


def test_a_duplicate_is_answered_once_its_first_copy_is_committed(coroutines: list[str]) -> None:
    """A client id seen before: answered with the first copy's offset, as a duplicate,
    only once that offset is committed (as before); no coroutine."""
    lead = _Leader()
    first = lead.publish("c1")
    lead.replica.commit()
    again = lead.publish("c1", "c2")
    got = answered(again)
    lead.replica.commit()  # (c2's append reached its quorum)
    assert not got  # (c1's first copy: waiting for its commit)
    ((offset, committed),) = lead.replica.committed
    assert offset == 0
    committed.callback(None)
    assert got and first.called
    assert got[0].offsets == [0, 1] and got[0].duplicates == [True, False]
    assert coroutines == []


@pytest.mark.parametrize("when", ["at once", "while waiting"])
def test_a_lost_leadership_is_retried_as_before(coroutines: list[str], when: str) -> None:
    """The replica refuses (``NotLeader``) at once or fails its waiter later: the publish
    is retried (after its backoff) as the coroutine's first attempt was, and answered
    by the next attempt -- the records' ids seen again, as the duplicates they are."""
    lead = _Leader()
    if when == "at once":
        lead.replica.refuse = NotLeader("b", 2)
    d = lead.publish(None)
    got = answered(d)
    if when == "while waiting":
        w, _offsets = lead.replica.waiting.pop(0)
        w.errback(NotLeader("b", 2))
    assert not got and lead.router.retried == 1 and len(coroutines) == 1
    lead.clock.advance(0.05)  # (the backoff: the next attempt)
    if when == "at once":
        lead.replica.commit()
        assert got and got[0].offsets == [0] and got[0].duplicates == [False]
    else:
        ((offset, committed),) = lead.replica.committed
        assert offset == 0
        committed.callback(None)
        assert got and got[0].offsets == [0] and got[0].duplicates == [True]
    assert got[0].stored == "quorum"


def test_a_refusal_that_is_not_retried_fails_the_publish_and_the_forward() -> None:
    """``Overloaded`` (too many publishes waiting) fails the publish at once, and a
    forwarded one's answer is the error, as before."""
    lead = _Leader()
    lead.replica.refuse = Overloaded("too many", retry_after=1)
    failures: list[Any] = []
    lead.publish(None).addErrback(failures.append)
    assert len(failures) == 1 and isinstance(failures[0].value, Overloaded)
    lead.replica.refuse = Overloaded("too many", retry_after=1)
    lead.forward("a", "fw0")
    ((got,),) = [lead.answers("a")]
    assert got["code"] == Overloaded("x").code


def test_a_leaders_quorum_publish_is_answered_without_an_answer_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quorum waiter fires with the publish's answer itself (issue 16, qlead42):
    no ``_answer`` callback link a publish (one each, taken or forwarded, without
    the change), and the answers are those the link made -- offsets filled in
    after the append, the ids the entry node gave, duplicates of one batch."""
    from sprawl.cluster import routing

    links = count_calls(monkeypatch, routing, "_answer")
    lead = _Leader()
    results = []
    for k in range(5):
        d = lead.publish(f"c{k}", f"c{k}", None)
        lead.replica.commit()
        results.extend(answered(d))
        lead.forward("a", f"fw{k}")
        lead.replica.commit()
    assert links == []
    assert [r.offsets for r in results] == [[3 * k, 3 * k, 3 * k + 1] for k in range(5)]
    assert [r.duplicates for r in results] == [[False, True, False]] * 5
    assert all(r.ids[:2] == [f"c{k}"] * 2 and r.ids[2].startswith("named-") for k, r in enumerate(results))
    assert [x["offsets"] for x in lead.answers("a")] == [[3 * k + 2] for k in range(5)]


def test_a_forwarded_publish_costs_the_leader_two_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward the leader takes runs two callback links besides its waiter's own
    (issue 16, qlead42): the router's answer-or-refusal and the peer RPC's
    answer, which also ends the request's serving -- four without the change
    (``served`` and the answer, the answer and the refusal, each a link)."""
    from twisted.internet.defer import Deferred

    lead = _Leader()
    links: list[str] = []
    for add in ("addCallbacks", "addCallback", "addErrback", "addBoth"):
        count_calls(monkeypatch, Deferred, add, links)
    for k in range(10):
        lead.forward("a", f"fw{k}")
        lead.replica.commit()
    assert len(links) == 20
    assert [x["offsets"] for x in lead.answers("a")] == [[k] for k in range(10)]
    assert lead.rpc._serving == {}
    lead.forward("a", "fw-refused")
    lead.replica.waiting.pop(0)[0].errback(NotLeader("b", 2))
    (refused,) = lead.answers("a")[10:]
    assert refused["code"] == "not_leader" and lead.rpc._serving == {}


def test_a_leaders_own_publish_names_its_partition_without_a_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish this node leads is answered with its partition named by the
    replica's answer itself: no ``_in_partition`` link (issue 16, turn44; one a
    publish without the change); a publish retried through a lost leadership
    is still named so, by the retry's link."""
    from sprawl.cluster import routing

    links = count_calls(monkeypatch, routing, "_in_partition")
    lead = _Leader()
    results = []
    for _ in range(5):
        d = lead.publish(None, None)
        lead.replica.commit()
        results.extend(answered(d))
    assert links == []
    assert [r.offsets for r in results] == [[2 * k, 2 * k + 1] for k in range(5)]
    assert all(r.partitions == [0, 0] for r in results)
    lead.replica.refuse = NotLeader("b", 2)
    got = answered(lead.publish(None))
    lead.clock.advance(0.05)  # (the retry's backoff)
    lead.replica.commit()
    assert got and got[0].partitions == [0] and links == ["_in_partition"]
