"""Applying a topic's creation and deletion on one node (``MetadataApply``):
the broker's record and the new replicas' records go to disk in ONE group
commit (issue 23: fewer LMDB commits per create), and a deletion is one
commit too, on a real LMDB store with a real broker and the real data
plane's replicas.

The replicas follow the change in the same reactor turn as the broker's
write is queued, so the LMDB writer, which commits queued writes together and
in order, puts them in the same transaction: when the broker's record is
durable, so is every replica's epoch record (and the control record that
opens the epoch of a partition led here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import pytest_twisted
from twisted.internet.task import Clock, deferLater

from harness import the_reactor
from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.metadata import Metadata, encode_command
from sprawl.cluster.metadata_apply import MetadataApply
from sprawl.config import NodeConfig
from sprawl.log.record import Record
from sprawl.peer.frames import REPLICATION
from sprawl.pubsub import Broker
from sprawl.raft.messages import Entry
from sprawl.replication.envelope import Envelope, pack_record
from sprawl.replication.messages import Append, AppendResp, decode, encode
from sprawl.replication.partition import HW_SAVE_SECONDS
from sprawl.storage import keys
from sprawl.storage.lmdb import LmdbStore
from sprawl.testing import FakeRPC

T0 = 1_700_000_000.0
NODES = ("a", "b", "c")


class Here:
    """Node ``a`` of three: store, broker, the metadata applier and the data
    plane following it (peers unreachable: what they are sent is dropped)."""

    def __init__(self, path: Path) -> None:
        clock = Clock()
        clock.advance(T0)
        self.clock = clock
        self.store = LmdbStore(str(path / "lmdb"), reactor=the_reactor(), map_size=64 * 1024**2)
        self.store.open()
        self.broker = Broker(NodeConfig(data_dir=str(path)), self.store, clock, "a")
        self.broker.recover()
        self.metadata = Metadata()
        for i, n in enumerate(NODES):
            self.metadata.nodes[n] = {"raft_id": i + 1, "peer": "", "http": ""}
        self.answers: list[dict[str, Any]] = []
        self.control = SimpleNamespace(
            metadata=self.metadata,
            names={},
            node_id="a",
            answer=lambda req, result: self.answers.append(result),
            applied_here=lambda req: None,
            leader_name="a",
            dead_grace=30.0,
            is_leader=True,
            is_voter=lambda rid: True,
        )
        self.apply = MetadataApply(self.control, self.broker)  # type: ignore[arg-type]
        self.control.watch_topics = self.apply.watch_topics
        #: What the data plane sent: (peer, kind, payload).
        self.sent: list[tuple[str, int, bytes]] = []
        channel = SimpleNamespace(
            handlers={}, send=lambda peer, kind, data: bool(self.sent.append((peer, kind, data)))
        )
        self.channel = channel
        self.plane = DataPlane("a", self.broker, self.control, channel, FakeRPC(), the_reactor())  # type: ignore[arg-type]
        self.index = 10

    def entry(self, cmd: dict[str, Any]) -> Entry:
        self.index += 1
        return Entry(1, self.index, data=encode_command(cmd))

    def replication_sent(self) -> list[tuple[str, Any]]:
        """The replication messages sent so far: (peer, message)."""
        out = []
        for peer, kind, data in self.sent:
            if kind == REPLICATION:
                out.append((peer, decode(msgspec.msgpack.decode(data, type=Envelope).message)))
        return out

    async def turns(self, done: Callable[[], bool], limit: int = 200) -> None:
        """Let the reactor run until ``done()`` (at most ``limit`` turns)."""
        for _ in range(limit):
            if done():
                return
            await deferLater(the_reactor(), 0, lambda: None)
        raise AssertionError("not done within the reactor turns allowed")

    def on_disk(self, db: str, key: bytes) -> bool:
        return self.store.get(db, key) is not None

    async def close(self) -> None:
        self.plane.stop()
        await self.store.write([])  # (the replicas' chains end with their writes)
        await self.broker.stop()
        await self.store.close()


@pytest_twisted.async_yield_fixture
async def here(tmp_path: Path) -> AsyncIterator[Here]:
    """Node a, closed after the test."""
    h = Here(tmp_path)
    yield h
    await h.close()


@pytest_twisted.ensureDeferred
async def test_a_created_topics_replica_records_are_durable_with_its_broker_record(here: Here) -> None:
    """A topic of two partitions replicated on a, b, c -- partition 0 led
    here, partition 1 by b: once the broker's record of the topic is durable
    (the apply's Deferred fires), both replicas' epoch records and the
    control record opening partition 0's epoch are on disk too, all of it
    written in one LMDB commit."""
    cmd = {
        "op": "put_topic",
        "name": "t",
        "config": {"partitions": 2, "replication_factor": 3},
        "placement": [["a", "b", "c"], ["b", "a", "c"]],
        "req": "r1",
    }
    commits = here.store.commits
    await here.apply.apply(here.entry(cmd))
    t = here.broker.topics["t"]
    uid = t.config.uid
    assert here.on_disk("meta", keys.topic_meta_key("t"))
    assert set(here.plane.service.replicas) == {("t", 0), ("t", 1)}
    assert here.on_disk("meta", keys.replica_state_key(uid, 0)), "the led replica's epoch record"
    assert here.on_disk("meta", keys.replica_state_key(uid, 1)), "the following replica's epoch record"
    assert here.on_disk("records", keys.record_key(uid, 0, 0)), "the control record of epoch 1"
    assert here.store.commits == commits + 1
    assert here.answers == [{"created": True, "created_index": here.index}]


@pytest_twisted.ensureDeferred
async def test_a_new_partitions_control_record_joins_the_applys_held_writes(here: Here) -> None:
    """The control record opening a new partition's first epoch, led here,
    is no ack's write: it joins the writes the apply holds (they commit with
    the node's next Raft append) instead of ending the hold -- which made the
    apply's writes a commit of their own on the partition's leader, ahead of
    the next create's append (issue 23, create41)."""
    cmd = {"op": "put_topic", "name": "t", "config": {"partitions": 1}, "placement": [list(NODES)]}
    holds, joined, commits = here.store.holds, here.store.holds_joined, here.store.commits
    await here.apply.apply(here.entry(cmd))
    uid = here.broker.topics["t"].config.uid
    assert here.on_disk("records", keys.record_key(uid, 0, 0)), "the control record of epoch 1"
    assert here.store.holds == holds + 1
    assert here.store.holds_joined == joined, "the control record ended the apply's hold"
    assert here.store.commits == commits + 1


@pytest.mark.parametrize("stored", [0, 1])
@pytest_twisted.ensureDeferred
async def test_a_follower_of_a_new_partition_writes_its_leaders_control_record_with_the_apply(
    here: Here, stored: int
) -> None:
    """Node a follows a new partition led by b.  Every node applies the same
    placement, and the leader of a partition's first epoch starts its log with
    a control record at offset 0, so the follower writes that record itself in
    the apply's one commit; the leader's first append (that record) then finds
    it held -- answered (ok, end 1) with no commit of its own, also when the
    append says the leader's copy is durable (``stored``: the follower takes
    the high watermark 1, written lazily).  Before, each follower wrote the
    record when the append came: a second commit per create on every node
    (issue 23, create41)."""
    cmd = {"op": "put_topic", "name": "t", "config": {"partitions": 1}, "placement": [["b", "a", "c"]]}
    commits = here.store.commits
    await here.apply.apply(here.entry(cmd))
    uid = here.broker.topics["t"].config.uid
    assert here.on_disk("records", keys.record_key(uid, 0, 0)), "the control record, derived here"
    assert here.store.commits == commits + 1
    assert here.replication_sent() == [], "a new partition's follower waits for its leader's appends unasked"
    rec = Record(0, 0, 1, None, None, None, b"", True, control=True)
    first = Append(epoch=1, start=0, prev_epoch=-1, count=1, runs=((1, 0),), hw=0, stored=stored)
    env = Envelope("t", 0, encode(first), [pack_record(rec)])
    here.channel.handlers[REPLICATION]("b", msgspec.msgpack.encode(env))
    await here.turns(lambda: bool(here.replication_sent()))
    assert here.replication_sent() == [("b", AppendResp(1, True, 1, stored))]
    assert here.store.commits == commits + 1, "the leader's first append cost a commit"
    assert here.plane.service.replicas[("t", 0)].log.stored_end == 1


@pytest_twisted.ensureDeferred
async def test_new_partitions_first_high_watermarks_are_saved_together(here: Here) -> None:
    """Four new partitions led here: each one's high watermark moves to 1 as
    its follower b answers the first append, the answers 50 ms apart.  The
    watermark is saved lazily (no write carries it), and every partition due
    is saved in ONE write within ``HW_SAVE_SECONDS`` of the first -- not one
    write (a commit of its own) per partition, each its own 0.1 s after it
    moved: at one create every few ms that was ~0.4 of a commit per create on
    every node (issue 23, create41)."""
    n = 4
    cmd = {"op": "put_topic", "name": "t", "config": {"partitions": n}, "placement": [list(NODES)] * n}
    await here.apply.apply(here.entry(cmd))
    reps = [here.plane.service.replicas[("t", p)] for p in range(n)]
    await here.turns(lambda: all(r.core.stored_end == 1 for r in reps))
    uid = here.broker.topics["t"].config.uid
    saves: list[int] = []
    write = here.store.write

    def counting(ops: list[Any], *a: Any, **kw: Any) -> Any:
        states = sum(1 for op in ops if op[1] == "meta" and op[2].startswith(b"repl/"))
        if states:
            saves.append(states)
        return write(ops, *a, **kw)

    here.store.write = counting  # type: ignore[method-assign]

    def answer(p: int) -> None:
        env = Envelope("t", p, encode(AppendResp(1, True, 1, 0)))
        here.channel.handlers[REPLICATION]("b", msgspec.msgpack.encode(env))

    def saved_hw(p: int) -> int:
        raw = here.store.get("meta", keys.replica_state_key(uid, p))
        return int(msgspec.json.decode(raw)["hw"]) if raw is not None else -1

    answer(0)
    assert reps[0].core.hw == 1
    here.clock.advance(HW_SAVE_SECONDS / 2)
    for p in range(1, n):
        answer(p)
    assert all(r.core.hw == 1 for r in reps)
    here.clock.advance(HW_SAVE_SECONDS / 2)
    here.clock.advance(0)  # (the saves of one turn are written together at its end)
    assert saves == [n], "one write for every partition due"
    await here.store.write([])
    assert [saved_hw(p) for p in range(n)] == [1] * n


@pytest_twisted.ensureDeferred
async def test_a_deleted_topics_replicas_are_dropped_with_its_broker_record(here: Here) -> None:
    """Deleting the topic is one commit on this node: the broker's delete
    removes the topic's record and its replicas' records together, and the
    replicas are dropped."""
    create = {"op": "put_topic", "name": "t", "config": {"partitions": 1}, "placement": [list(NODES)]}
    await here.apply.apply(here.entry(create))
    uid = here.broker.topics["t"].config.uid
    await here.store.write([])  # (everything the replica queued is durable)
    assert here.on_disk("meta", keys.replica_state_key(uid, 0))
    commits = here.store.commits
    await here.apply.apply(here.entry({"op": "delete_topic", "name": "t"}))
    assert "t" not in here.broker.topics and here.plane.service.replicas == {}
    assert not here.on_disk("meta", keys.topic_meta_key("t"))
    assert not here.on_disk("meta", keys.replica_state_key(uid, 0))
    assert here.store.commits == commits + 1


@pytest_twisted.ensureDeferred
async def test_a_create_is_answered_at_its_in_memory_apply_and_what_follows_is_ordered_after_its_write(
    here: Here,
) -> None:
    """A committed ``put_topic`` is answered as soon as it is applied in
    memory -- the broker has the topic, the replica follows it -- before the
    broker's write is on disk (issue 23: one fsync less on the answer's
    chain).  Anything written after the answer (here a write standing for the
    client's next request) is durable only once the topic's record is: the
    single writer commits in order."""
    cmd = {
        "op": "put_topic",
        "name": "t",
        "config": {"partitions": 1},
        "placement": [list(NODES)],
        "req": "r",
    }
    d = here.apply.apply(here.entry(cmd))
    assert here.answers == [{"created": True, "created_index": here.index}], "answered at the apply"
    assert not d.called, "while the broker's write is still on its way to disk"
    assert "t" in here.broker.topics and ("t", 0) in here.plane.service.replicas
    await here.store.write([("p", "meta", b"test/after", b"1")])
    assert here.on_disk("meta", keys.topic_meta_key("t")), "the next write is durable only after the topic's"
    await d


@pytest_twisted.ensureDeferred
async def test_a_delete_is_answered_at_its_in_memory_apply_and_what_follows_is_ordered_after_its_write(
    here: Here,
) -> None:
    """A committed ``delete_topic`` likewise: answered once the broker has
    dropped the topic in memory; a later write is durable only after the
    deletion is."""
    create = {"op": "put_topic", "name": "t", "config": {"partitions": 1}, "placement": [list(NODES)]}
    await here.apply.apply(here.entry(create))
    here.answers.clear()
    d = here.apply.apply(here.entry({"op": "delete_topic", "name": "t", "req": "r"}))
    assert len(here.answers) == 1 and "error" not in here.answers[0], "answered at the apply"
    assert not d.called
    assert "t" not in here.broker.topics
    await here.store.write([("p", "meta", b"test/after", b"1")])
    assert not here.on_disk("meta", keys.topic_meta_key("t")), (
        "the next write is durable only after the deletion"
    )
    await d
