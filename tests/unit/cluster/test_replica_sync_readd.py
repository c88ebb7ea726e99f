"""A node taken out of a partition's replicas and back in while its last
writes are still on their way to disk keeps following its leader (the
readiness flake of ``test_create_answer_restart``).

After a whole-cluster restart the controller may take a node that is not
back yet out of a partition's replicas (a new epoch) and add it again a
moment later (another).  The node applies both at once; the records its
replica had just taken were in its log in memory, their LMDB write (with the
replica state that says which epoch each belongs to) still queued.  The
replica built again on the re-adding read the store: no state, so "epoch 0"
for every record and no high watermark -- and refused every heartbeat of its
leader, which knew it held the records: ``/readyz`` said "catching up" for
good.  Now the node takes back the replica it dropped while that one still
had writes to make; once they are made, a replica built from the store
starts where the old one stood."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest_twisted
from twisted.internet import defer

from harness import WAIT, bounded, the_reactor
from sprawl.cluster.metadata import Metadata
from sprawl.cluster.replica_sync import ReplicaSync
from sprawl.config import NodeConfig
from sprawl.log.record import Record
from sprawl.pubsub import Broker
from sprawl.replication.messages import Append, AppendResp
from sprawl.replication.service import ReplicationService
from sprawl.storage.lmdb import LmdbStore

ME, LEADER, OTHER = "me", "x", "y"
KEY = ("t", 0)


class _Control:
    """The applied metadata and who the controller is (what ReplicaSync reads)."""

    def __init__(self) -> None:
        self.metadata = Metadata()
        self.leader_name = LEADER

    def is_voter(self, raft_id: int) -> bool:
        return True

    def place(self, epoch: int, replicas: list[str]) -> None:
        self.metadata.placement["t"] = [{"replicas": replicas, "leader": LEADER, "epoch": epoch}]


class _HeldWrites:
    """The store's writes held back (queued, not on disk) until released: those
    answered by a Deferred (``write``) and by a plain call (``write_then``, a
    replicated append's), made in the order held."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self.real = store.write
        self.real_then = store.write_then
        self.held: list[tuple[list[Any], int, bool, defer.Deferred[None] | tuple[Any, ...]]] = []
        store.write = self.write  # type: ignore[method-assign]
        store.write_then = self.write_then  # type: ignore[method-assign]

    def write(
        self, ops: list[Any], nbytes: int = 0, *, wal: bool = False, urgent: bool = False
    ) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.held.append((ops, nbytes, wal, d))
        return d

    def write_then(
        self, ops: list[Any], nbytes: int, fn: Any, *args: Any, wal: bool = False, urgent: bool = False
    ) -> None:
        self.held.append((ops, nbytes, wal, (fn, *args)))

    def release(self) -> None:
        self.store.write = self.real  # type: ignore[method-assign]
        self.store.write_then = self.real_then  # type: ignore[method-assign]
        for ops, nbytes, wal, d in self.held:
            if isinstance(d, defer.Deferred):
                self.real(ops, nbytes, wal=wal).chainDeferred(d)
            else:
                self.real_then(ops, nbytes, *d, wal=wal)
        self.held = []


@pytest_twisted.ensureDeferred
async def test_a_node_taken_out_and_back_in_mid_write_follows_its_leader(tmp_path: Path) -> None:
    """Three records taken from the leader, their write held; the node taken
    out (epoch 3) and back in (epoch 4): its replica still knows the records'
    epoch and the high watermark and takes the leader's heartbeat (caught
    up).  Built from the store instead, it refused it (epoch 0 at offset 2)."""
    reactor = the_reactor()
    store = LmdbStore(str(tmp_path / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
    store.open()
    broker = Broker(NodeConfig(data_dir=str(tmp_path)), store, reactor, ME)
    broker.recover()
    held: _HeldWrites | None = None
    try:
        await bounded(broker.put_topic("t", {}), WAIT)
        control = _Control()
        service = ReplicationService(ME, SimpleNamespace(handlers={}, send=lambda *a: None), reactor)  # type: ignore[arg-type]
        sync = ReplicaSync(ME, broker, control, service, follow=lambda *a: None)  # type: ignore[arg-type]
        held = _HeldWrites(store)

        control.place(2, [LEADER, ME, OTHER])
        sync.sync_topic("t")
        first = service.replicas[KEY]
        records = [Record(i, 0, 0, None, None, None, b"m%d" % i, True) for i in range(3)]
        first.receive(LEADER, Append(2, 0, 0, 3, ((2, 0),), hw=3), records)
        assert first.core.end == 3 and first.core.hw == 3 and held.held  # in memory, not on disk

        control.place(3, [LEADER, OTHER])  # taken out ...
        sync.sync_topic("t")
        assert KEY not in service.replicas
        control.place(4, [LEADER, ME, OTHER])  # ... and back in, before the write is made
        sync.sync_topic("t")
        again = service.replicas[KEY]
        assert again.core.cache.epoch_at(2) == 2 and again.core.hw == 3
        heartbeat = Append(4, 3, 2, 0, (), hw=3)
        out = again.core.receive(LEADER, heartbeat)
        assert again.core.caught_up
        assert [m.ok for _, m in out.messages if isinstance(m, AppendResp)] == [True]

        # Once the writes are made, a replica built from the store starts where it stood.
        held.release()
        for _ in range(2000):
            if again.settled and not held.held:
                break
            await _turn()
        assert again.settled
        control.place(5, [LEADER, OTHER])
        sync.sync_topic("t")
        sync.rebuild_failed()  # (forgets settled parked replicas)
        control.place(6, [LEADER, ME, OTHER])
        sync.sync_topic("t")
        rebuilt = service.replicas[KEY]
        assert rebuilt is not again
        assert rebuilt.core.cache.epoch_at(2) == 2 and rebuilt.core.end == 3
        out = rebuilt.core.receive(LEADER, Append(6, 3, 2, 0, (), hw=3))
        assert rebuilt.core.caught_up
        assert [m.ok for _, m in out.messages if isinstance(m, AppendResp)] == [True]
    finally:
        if held is not None:
            held.release()  # (nothing is left queued for the store's close)
        await broker.stop()
        await store.close()


async def _turn() -> None:
    """One reactor turn (the store's writer calls back through the reactor)."""
    from twisted.internet import task

    await task.deferLater(the_reactor(), 0.001, lambda: None)
