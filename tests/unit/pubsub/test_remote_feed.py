"""Remote partition feeds (:mod:`sprawl.delivery.remote_feed`): SSE / WebSocket
clients on a node that holds no replica of the partition.

The holder is a fake (:class:`Holder`) answering ``fetch`` like
:meth:`DataPlane.fetch_remote` -- a long-poll parks until records arrive -- and
time is a :class:`task.Clock`: nothing sleeps.  Covered: one feed per node and
partition however many streams read it (reference counted), the bounded window,
catch-up reads below it, bounded backoff on errors, a stream's output (order,
control records skipped, pause/resume), and, through a real
:class:`~sprawl.cluster.dataplane.DataPlane` with a fake peer RPC, a feed that
follows the partition to its new leader after a failover.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task

from sprawl.cluster.dataplane import DataPlane
from sprawl.delivery.remote_feed import RemoteFeed, RemoteFeeds
from sprawl.delivery.streams import SSEStream, StreamRegistry
from sprawl.errors import NotFound, Unavailable
from sprawl.log.partition import PartitionLog
from sprawl.log.record import Record, pack_record, take_bytes
from sprawl.testing import FakeBroker, FakeRequest, FakeRPC

WAIT_MS = 20_000


class Holder:
    """A node holding partitions: ``fetch`` answers like ``DataPlane.fetch_remote``."""

    def __init__(self) -> None:
        self.logs: dict[int, list[Record]] = {}
        self.log_start: dict[int, int] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.parked: list[tuple[int, int, int, defer.Deferred[dict[str, Any]]]] = []
        self.fail_with: Exception | None = None
        self.max_bytes: list[int | None] = []

    def hw(self, p: int) -> int:
        lg = self.logs.get(p, [])
        return lg[-1].offset + 1 if lg else self.log_start.get(p, 0)

    def publish(self, p: int, payloads: list[str], control: bool = False) -> None:
        lg = self.logs.setdefault(p, [])
        for x in payloads:
            off = self.hw(p)
            lg.append(Record(off, p, 1000 + off, None, None, None, x.encode(), True, control=control))
        parked, self.parked = self.parked, []
        for pp, start, limit, d in parked:
            got = self._read(pp, start, limit)
            if pp == p and got and not d.called:
                d.callback(self._answer(pp, start, got))
            elif not d.called:
                self.parked.append((pp, start, limit, d))

    def _read(self, p: int, start: int, limit: int) -> list[Record]:
        return [r for r in self.logs.get(p, []) if r.offset >= start][:limit]

    def _answer(self, p: int, start: int, recs: list[Record]) -> dict[str, Any]:
        return {"records": recs, "start": start, "hw": self.hw(p), "log_start": self.log_start.get(p, 0)}

    def fetch(
        self,
        topic: str,
        p: int,
        start: str | int | None,
        from_time: int | None,
        limit: int,
        wait_ms: int,
        max_bytes: int | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        self.calls.append((topic, p, start, from_time, limit, wait_ms))
        self.max_bytes.append(max_bytes)
        if self.fail_with is not None:
            return defer.fail(self.fail_with)
        ls, hw = self.log_start.get(p, 0), self.hw(p)
        if from_time is not None:
            s = next((r.offset for r in self.logs.get(p, []) if r.timestamp >= from_time), hw)
        elif start == "earliest" or start is None:
            s = ls
        elif start == "latest":
            s = hw
        else:
            s = min(max(int(start), ls), hw)
        got = self._read(p, s, limit)
        if max_bytes is not None:
            got = take_bytes(got, max_bytes)
        if got or not wait_ms:
            return defer.succeed(self._answer(p, s, got))
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.parked.append((p, s, limit, d))
        return d

    def long_polls(self) -> int:
        return sum(1 for c in self.calls if c[5] > 0)


def feed_of(holder: Holder, clock: task.Clock, **kw: Any) -> tuple[RemoteFeed, list[int]]:
    notified: list[int] = []
    f = RemoteFeed("t", 0, holder.fetch, clock, lambda: notified.append(1), **kw)
    return f, notified


def offsets(recs: list[Record] | None) -> list[int]:
    assert recs is not None
    return [r.offset for r in recs]


# -- the feed ---------------------------------------------------------------------------------


def test_feed_starts_at_the_tail_and_long_polls_for_new_records() -> None:
    clock, h = task.Clock(), Holder()
    h.publish(0, ["old0", "old1", "old2"])
    f, notified = feed_of(h, clock)
    f.start()
    assert h.calls == []
    clock.advance(0)
    # One quick probe finds the tail; the window starts there (no history is
    # pulled); then a long-poll from there.
    assert h.calls == [("t", 0, "latest", None, 1000, 0), ("t", 0, 3, None, 1000, WAIT_MS)]
    assert (f.window_start, f.next, f.hw) == (3, 3, 3)
    assert notified == [1]
    assert f.read(3, 10) == []
    assert f.read(0, 10) is None  # older than the window: a catch-up read
    h.publish(0, ["a", "b"])
    assert offsets(f.read(3, 10)) == [3, 4]
    assert offsets(f.read(4, 10)) == [4]
    assert offsets(f.read(3, 1)) == [3]
    assert f.read(5, 10) == []
    assert (f.next, f.hw) == (5, 5)
    assert len(notified) == 2
    clock.advance(0)
    assert h.calls[-1][2] == 5 and h.long_polls() == 2
    f.stop()
    assert h.parked[0][3].called  # the parked long-poll was cancelled
    assert f.window_start is None and len(f) == 0
    clock.advance(60)
    assert h.long_polls() == 2


def test_window_is_bounded_by_count_and_by_bytes() -> None:
    clock, h = task.Clock(), Holder()
    f, _ = feed_of(h, clock, max_records=5)
    f.start()
    clock.advance(0)
    h.publish(0, [f"m{i}" for i in range(12)])
    assert len(f) == 5
    assert f.window_start == 7
    assert offsets(f.read(7, 100)) == [7, 8, 9, 10, 11]
    assert f.read(6, 100) is None
    assert f.bytes == sum(r.size for r in h.logs[0][7:])

    clock2, h2 = task.Clock(), Holder()
    one = Record(0, 0, 0, None, None, None, b"x" * 1000, True).size
    g, _ = feed_of(h2, clock2, max_bytes=3 * one)
    g.start()
    clock2.advance(0)
    h2.publish(0, ["x" * 1000] * 10)
    assert len(g) == 3 and g.bytes <= 3 * one
    assert offsets(g.read(g.window_start or 0, 100)) == [7, 8, 9]
    # A single record larger than the byte bound is still kept (the newest one).
    h2.publish(0, ["y" * 10 * one])
    clock2.advance(0)
    assert offsets(g.read(0 if g.window_start is None else g.window_start, 100)) == [10]


def test_many_evictions_keep_reads_right() -> None:
    """The window compacts its list as it slides; reads stay exact."""
    clock, h = task.Clock(), Holder()
    f, _ = feed_of(h, clock, max_records=100, limit=50)
    f.start()
    for i in range(100):
        clock.advance(0)
        h.publish(0, [f"m{i}-{j}" for j in range(37)])
        clock.advance(0)
    end = 100 * 37
    assert f.next == end and len(f) == 100 and f.window_start == end - 100
    assert offsets(f.read(end - 60, 1000)) == list(range(end - 60, end))


def test_errors_back_off_boundedly_and_recovery_keeps_the_window() -> None:
    clock, h = task.Clock(), Holder()
    f, _ = feed_of(h, clock, min_backoff=0.1, max_backoff=1.0)
    f.start()
    clock.advance(0)
    h.publish(0, ["a"])
    h.fail_with = Unavailable("peer b cannot be reached now", code="peer_unreachable")
    clock.advance(0)  # the next long-poll fails
    assert (f.failures, f.last_error) == (1, "peer_unreachable")
    delays = []
    for _ in range(8):
        n = len(h.calls)
        (call,) = clock.getDelayedCalls()  # nothing is polled before the backoff ends
        delays.append(round(call.getTime() - clock.seconds(), 3))
        clock.advance(call.getTime() - clock.seconds())
        assert len(h.calls) == n + 1
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    h.fail_with = None
    clock.advance(1.0)
    assert offsets(f.read(0, 10)) == [0]  # the window survived the errors
    h.publish(0, ["b"])
    assert f.failures == 0 and f.errors == 9
    assert offsets(f.read(0, 10)) == [0, 1]
    f.stop()


def test_an_exception_from_fetch_is_a_failed_round() -> None:
    clock = task.Clock()

    def broken(*a: Any, **kw: Any) -> Any:
        raise NotFound("no topic", code="topic_not_found")

    f = RemoteFeed("t", 0, broken, clock, lambda: None, min_backoff=0.5)
    f.start()
    clock.advance(0)
    assert f.failures == 1 and f.last_error == "topic_not_found"
    clock.advance(0.5)
    assert f.failures == 2
    f.stop()
    assert not clock.getDelayedCalls()


def test_a_recreated_topic_restarts_the_window_and_a_gap_is_skipped() -> None:
    clock, h = task.Clock(), Holder()
    h.publish(0, ["a", "b", "c"])
    f, notified = feed_of(h, clock)
    f.start()
    clock.advance(0)
    h.publish(0, ["d"])
    assert f.next == 4
    clock.advance(0)
    # The topic is recreated at the holder: its log is empty again.
    h.logs[0] = []
    h.publish(0, ["new"])  # the parked poll (from 4) sees nothing: still parked
    h.parked.pop()[3].callback({"records": [], "start": 1, "hw": 1, "log_start": 0})
    assert (f.window_start, f.next) == (1, 1)
    assert len(f) == 0
    # A gap below the holder's high watermark: nothing readable, move past it.
    clock.advance(0)
    h.parked.pop()[3].callback({"records": [], "start": 1, "hw": 9, "log_start": 0})
    assert f.next == 9 and f.read(1, 10) == [] and f.read(0, 10) is None
    assert len(notified) >= 4
    f.stop()


def test_feeds_are_counted_by_reference() -> None:
    clock, h = task.Clock(), Holder()
    woken: list[tuple[str, int]] = []
    feeds = RemoteFeeds(h.fetch, lambda t, p: "b", clock, lambda t, p: woken.append((t, p)))
    a = feeds.acquire("t", 0)
    b = feeds.acquire("t", 0)
    c = feeds.acquire("t", 1)
    assert a is b and a is not c
    clock.advance(0)
    assert h.long_polls() == 2  # one per partition, not per subscriber
    assert woken == [("t", 0), ("t", 1)]
    v = feeds.view()
    assert (v["remote_feeds"], v["remote_subscribers"], v["remote_feeds_started"]) == (2, 3, 2)
    feeds.release(a)
    assert a.running and feeds.view()["remote_feeds"] == 2
    feeds.release(b)
    assert not a.running and feeds.view()["remote_feeds"] == 1
    again = feeds.acquire("t", 0)
    assert again is not a and feeds.started == 3
    feeds.stop()
    assert not again.running and not c.running and feeds.feeds == {}
    clock.advance(100)
    assert not clock.getDelayedCalls()


# -- streams reading through a feed -------------------------------------------------------------


def remote_setup(**kw: Any) -> tuple[task.Clock, Holder, FakeBroker, RemoteFeeds]:
    clock, h, b = task.Clock(), Holder(), FakeBroker()
    feeds = RemoteFeeds(h.fetch, lambda t, p: "holder", clock, b.notify, **kw)
    return clock, h, b, feeds


def stream(
    b: FakeBroker, feeds: RemoteFeeds, clock: task.Clock, start: int, **kw: Any
) -> tuple[Any, FakeRequest]:
    req = FakeRequest()
    s = SSEStream(b, b.topic, {0: start}, req, clock, registry=StreamRegistry(), feeds=feeds, **kw)
    s.start()
    return s, req


def test_streams_catch_up_then_follow_one_feed_in_order_skipping_control_records() -> None:
    clock, h, b, feeds = remote_setup()
    h.publish(0, [f"h{i}" for i in range(2500)])
    s1, r1 = stream(b, feeds, clock, 0)  # from earliest: history by catch-up reads
    s2, r2 = stream(b, feeds, clock, 2500)  # from latest
    clock.advance(0)
    assert r1.payloads() == [f"h{i}" for i in range(2500)]
    assert feeds.catch_ups == 3  # 1000 at a time
    assert r2.payloads() == []
    h.publish(0, ["x"])
    h.publish(0, ["epoch marker"], control=True)
    h.publish(0, ["y"])
    clock.advance(0)
    for r in (r1, r2):
        assert r.payloads()[-2:] == ["x", "y"]
        assert r.offsets()[-2:] == [2500, 2502]
    assert s1.cursors == s2.cursors == {0: 2503}
    assert len(feeds.feeds) == 1 and feeds.feeds[("t", 0)].refs == 2
    assert h.long_polls() <= 4  # one feed: long-polls per batch, not per stream
    s1.stopProducing()
    assert feeds.feeds[("t", 0)].refs == 1
    s2.close()
    assert feeds.feeds == {}


def test_a_paused_stream_resumes_from_the_window_or_the_holder() -> None:
    clock, h, b, feeds = remote_setup(max_records=10, limit=10)
    s, req = stream(b, feeds, clock, 0, slow_timeout=30)
    other, oreq = stream(b, feeds, clock, 0, slow_timeout=30)
    clock.advance(0)
    s.pauseProducing()
    h.publish(0, [f"a{i}" for i in range(5)])
    assert req.payloads() == [] and len(oreq.payloads()) == 5
    s.resumeProducing()  # inside the window: from memory
    assert req.payloads() == [f"a{i}" for i in range(5)]
    catch_ups = feeds.catch_ups
    s.pauseProducing()
    clock.advance(0)
    h.publish(0, [f"b{i}" for i in range(25)])  # the window slides past the paused cursor
    for _ in range(5):
        clock.advance(0)  # the feed reads 10 at a time; the other stream keeps up from memory
    s.resumeProducing()
    assert feeds.catch_ups == catch_ups + 1
    assert req.payloads() == oreq.payloads() == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(25)]
    s.close()
    other.close()


def test_a_failed_catch_up_is_retried_and_a_hard_failure_ends_the_stream() -> None:
    clock, h, b, feeds = remote_setup()
    h.publish(0, ["a", "b"])
    feeds.acquire("t", 0)  # the window starts at 2
    h.fail_with = Unavailable("no leader", code="no_leader")
    s, req = stream(b, feeds, clock, 0)
    assert req.payloads() == [] and not req.finished
    h.fail_with = None
    clock.advance(1.0)
    assert req.payloads() == ["a", "b"]
    s.close()
    h.fail_with = NotFound("gone", code="topic_not_found")
    s2, req2 = stream(b, feeds, clock, 0)
    assert req2.finished == 1
    kind, data = req2.frames()[-1]
    assert (kind, data["code"]) == ("error", "read_failed")
    assert s2.closed


def test_a_partition_that_becomes_held_here_is_read_locally_from_the_cursor() -> None:
    """The node becomes a replica of the partition while a stream reads it
    remotely: the stream releases the feed and reads the local log from its cursor."""
    clock, h, b = task.Clock(), Holder(), FakeBroker()
    where: dict[str, str | None] = {"source": "holder"}
    feeds = RemoteFeeds(h.fetch, lambda t, p: where["source"], clock, b.notify)
    lg = PartitionLog("t", 0, durable=False)
    b.topic.logs = [lg]
    h.publish(0, ["m0", "m1", "m2"])
    s, req = stream(b, feeds, clock, 0)
    clock.advance(0)
    assert req.payloads() == ["m0", "m1", "m2"]
    assert len(feeds.feeds) == 1
    lg.append([Record(-1, 0, 0, None, None, None, f"m{i}".encode(), True) for i in range(6)], 1000)
    where["source"] = None  # the placement now lists this node
    b.notify("t", 0)
    assert req.payloads() == ["m0", "m1", "m2", "m3", "m4", "m5"]
    assert feeds.feeds == {} and s.cursors == {0: 6}
    s.close()


# -- a data plane following a failover ---------------------------------------------------------


def holders_answer(holders: dict[str, Holder]) -> Any:
    """A :class:`FakeRPC` answer: ``fetch`` served by the named holder, records packed as on the wire."""

    def answer(peer: str, method: str, body: Any) -> Any:
        assert method == "fetch"
        d = holders[peer].fetch(
            body["topic"], body["partition"], body["start"], body["from_time"], body["limit"], body["wait_ms"]
        )
        return d.addCallback(lambda a: dict(a, records=[pack_record(r) for r in a["records"]]))

    return answer


def test_a_feed_follows_the_partition_to_its_new_leader() -> None:
    clock = task.Clock()
    a, bb = Holder(), Holder()
    for h in (a, bb):
        h.publish(0, ["m0", "m1"])
    placement = {"t": [{"replicas": ["a", "b"], "leader": "a", "epoch": 1}]}
    control = SimpleNamespace(
        metadata=SimpleNamespace(placement=placement, nodes={}),
        leader_name="a",
        is_leader=False,
        watch_topics=lambda listener: None,
    )
    rpc = FakeRPC(holders_answer({"a": a, "b": bb}))
    broker = FakeBroker()
    plane = DataPlane("c", broker, control, SimpleNamespace(handlers={}), rpc, clock)  # type: ignore[arg-type]
    assert plane.read_source("t", 0) == "a"
    s, req = stream(broker, plane.feeds, clock, 0)
    clock.advance(0)
    assert req.payloads() == ["m0", "m1"]
    a.publish(0, ["m2"])
    bb.publish(0, ["m2"])
    assert req.payloads() == ["m0", "m1", "m2"]
    clock.advance(0)
    # a dies; the controller makes b the leader; the feed's next round goes to b.
    rpc.down.add("a")
    a.parked.pop()[3].errback(Unavailable("connection to peer a failed", code="peer_unreachable"))
    placement["t"][0] = {"replicas": ["a", "b"], "leader": "b", "epoch": 2}
    for _ in range(20):
        clock.advance(0.1)
    bb.publish(0, ["m3", "m4"])
    assert req.payloads() == ["m0", "m1", "m2", "m3", "m4"]
    assert rpc.peers[-1] == "b"
    assert plane.summary()["remote_feeds"] == 1
    s.close()
    assert plane.summary()["remote_feeds"] == 0
    plane.stop()
