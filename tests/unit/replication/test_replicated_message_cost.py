"""What a replicated message costs a replica's adapter in Python objects (issue
16, cpu39): a follower's append, one write, is answered once that write is
durable without a ``DeferredList`` around its one write and without a
coroutine to send the answer -- before, each cost a hundred-odd lines of
Twisted a message on every node (a follower ran 1,323 lines of Python a
message, now 1,083; a leader 2,770, now 2,520).  Counted, not timed: the
``gatherResults`` and the coroutine sends a follower's appends make."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest_twisted
from twisted.internet import defer

from harness import WAIT, bounded, the_reactor
from harness.counting import count_calls
from sprawl.config import NodeConfig
from sprawl.log.record import Record
from sprawl.peer.frames import REPLICATION
from sprawl.pubsub import Broker
from sprawl.replication.envelope import Envelope, pack_record
from sprawl.replication.messages import Append, AppendResp, decode, encode
from sprawl.replication.partition import PartitionReplication
from sprawl.replication.service import ReplicationService
from sprawl.storage.lmdb import LmdbStore


@pytest_twisted.ensureDeferred
async def test_a_followers_answer_takes_no_gathering_and_no_coroutine(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Ten appends of one record each from the leader (after the first, which
    also writes the epoch's promise), each awaited: every one answered (``ok``,
    its end), with no ``gatherResults`` and no coroutine send (one of each an
    append without the change)."""
    reactor = the_reactor()
    store = LmdbStore(str(tmp_path / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
    store.open()
    broker = Broker(NodeConfig(data_dir=str(tmp_path)), store, reactor, "f1")
    broker.recover()
    answers: list[AppendResp] = []
    waiting: list[defer.Deferred[None]] = []

    def send(dst: str, kind: int, payload: bytes) -> bool:
        m = decode(msgspec.msgpack.decode(payload, type=Envelope).message)
        assert dst == "L" and isinstance(m, AppendResp)
        answers.append(m)
        for d in waiting:
            reactor.callLater(0, d.callback, None)  # (not from within the sender)
        waiting.clear()
        return True

    channel = SimpleNamespace(handlers={}, send=send)
    svc = ReplicationService("f1", channel, reactor, tick_seconds=3600)  # type: ignore[arg-type]
    gathered: list[int] = []
    coroutine_sends: list[int] = []
    real_gather, real_send_ready = defer.gatherResults, PartitionReplication._send_ready

    def gather(*args: Any, **kw: Any) -> Any:
        gathered.append(1)
        return real_gather(*args, **kw)

    def send_ready(self: PartitionReplication) -> Any:
        coroutine_sends.append(1)
        return real_send_ready(self)

    try:
        await broker.put_topic("orders", {})
        svc.replica("orders", 0, broker, "ctl")

        async def append(o: int) -> None:
            m = Append(epoch=1, start=o, prev_epoch=1 if o else -1, count=1, runs=((1, o),), hw=o)
            rec = Record(o, 0, 1000 + o, f"id{o}", None, None, b"x" * 100, True)
            d: defer.Deferred[None] = defer.Deferred()
            waiting.append(d)
            frame = msgspec.msgpack.encode(Envelope("orders", 0, encode(m), [pack_record(rec)]))
            channel.handlers[REPLICATION]("L", frame)
            await bounded(d, WAIT)

        await append(0)  # (the first also writes the promise of epoch 1: two writes, gathered)
        monkeypatch.setattr(defer, "gatherResults", gather)
        monkeypatch.setattr(PartitionReplication, "_send_ready", send_ready)
        for o in range(1, 11):
            await append(o)
        assert [(a.ok, a.end) for a in answers] == [(True, o + 1) for o in range(11)]
        assert broker.topics["orders"].logs[0].stored_end == 11
        assert gathered == [] and coroutine_sends == []
    finally:
        svc.stop()
        await broker.stop()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_followers_lone_append_takes_no_deferred_link(tmp_path: Path, monkeypatch: Any) -> None:
    """Ten appends of one record each after the first, each awaited: the follower's
    write is answered by a plain call (``append_replicated_then``) -- no Deferred link
    is added on its path (one ``addCallbacks`` an append without qfollow42's lone
    path, the replica's wait on its write) -- and every append is still answered only
    once its records are durable: the answer's end is the stored end, never past it."""
    reactor = the_reactor()
    store = LmdbStore(str(tmp_path / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
    store.open()
    broker = Broker(NodeConfig(data_dir=str(tmp_path)), store, reactor, "f1")
    broker.recover()
    answers: list[tuple[AppendResp, int]] = []
    waiting: list[defer.Deferred[None]] = []

    def send(dst: str, kind: int, payload: bytes) -> bool:
        m = decode(msgspec.msgpack.decode(payload, type=Envelope).message)
        assert dst == "L" and isinstance(m, AppendResp)
        answers.append((m, broker.topics["orders"].logs[0].stored_end))  # (durable here when sent)
        for d in waiting:
            reactor.callLater(0, d.callback, None)  # (not from within the sender)
        waiting.clear()
        return True

    channel = SimpleNamespace(handlers={}, send=send)
    svc = ReplicationService("f1", channel, reactor, tick_seconds=3600)  # type: ignore[arg-type]
    links: list[str] = []
    try:
        await broker.put_topic("orders", {})
        svc.replica("orders", 0, broker, "ctl")

        async def append(o: int) -> None:
            m = Append(epoch=1, start=o, prev_epoch=1 if o else -1, count=1, runs=((1, o),), hw=o)
            rec = Record(o, 0, 1000 + o, f"id{o}", None, None, b"x" * 100, True)
            d: defer.Deferred[None] = defer.Deferred()
            waiting.append(d)
            frame = msgspec.msgpack.encode(Envelope("orders", 0, encode(m), [pack_record(rec)]))
            before = len(links)
            channel.handlers[REPLICATION]("L", frame)
            made.append(len(links) - before)
            await bounded(d, WAIT)

        made: list[int] = []
        await append(0)  # (the first also writes the promise of epoch 1: the general path)
        for name in ("addCallbacks", "addCallback", "addErrback", "addBoth"):
            count_calls(monkeypatch, defer.Deferred, name, links)
        made.clear()
        for o in range(1, 11):
            await append(o)
        assert made == [0] * 10, made
        assert [(a.ok, a.end, stored) for a, stored in answers] == [(True, o + 1, o + 1) for o in range(11)]
        assert broker.topics["orders"].logs[0].stored_end == 11
    finally:
        svc.stop()
        await broker.stop()
        await store.close()
