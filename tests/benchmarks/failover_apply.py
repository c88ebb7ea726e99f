#!/usr/bin/env python3
"""One dead node's failover, applied in one process (issue 23): what the two
survivors do between "the controller noticed" and "every partition's new
leader takes a publish", without SWIM, Raft or sockets.

    PYTHONPATH=tests python -m benchmarks.failover_apply [--partitions 3300] [--profile FILE]

Two real brokers on their own LMDB (``a`` and ``c``) hold ``--partitions``
single-partition topics replicated on ``b``, ``a``, ``c`` and led by ``b``
(epoch 1).  ``b`` is dead: nothing reaches it.  The controller runs on
``a`` (:class:`~sprawl.replication.service.ReplicationService` with a
:class:`~sprawl.replication.failover.FailoverCore` per partition) and fails
over every partition ``b`` leads in one step, as it does when ``b`` falls
silent; its choices are committed in one batch (what the ``set_partitions``
Raft entry does), applied on both nodes through
:class:`~sprawl.cluster.replica_sync.ReplicaSync` a slice of
:data:`~sprawl.cluster.metadata_apply.TOPICS_PER_TURN` topics per reactor
turn, as :class:`~sprawl.cluster.metadata_apply.MetadataApply` does.  Peer
frames go between the two services through the reactor (``callLater(0)``),
encoded as on the wire.

Printed: seconds (wall and CPU of this process, the LMDB writer threads
included) until every partition is led by ``a`` with its control record
committed (its high watermark covers it: a publish is answered as soon as
the follower stores it), then until one publish to each partition with
``acks=quorum`` is answered; the LMDB commits each node made, the messages
sent (by kind) and the frames carrying them (by node pair: a
``REPLICATION_BATCH`` frame carries many), and the reactor turns the apply took.  ``--profile FILE`` writes a
cProfile of the failover (``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import defer, task

from sprawl.cluster.metadata_apply import TOPICS_PER_TURN
from sprawl.cluster.replica_sync import ReplicaSync
from sprawl.config import NodeConfig
from sprawl.log.record import Record
from sprawl.peer.frames import REPLICATION_BATCH
from sprawl.pubsub import Broker
from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import Commit, FailoverCore
from sprawl.replication.messages import decode
from sprawl.replication.service import ReplicationService
from sprawl.storage.lmdb import LmdbStore

#: The dead node, the new leader (and controller), the other survivor.
DEAD, LEADER, OTHER = "b", "a", "c"
REPLICAS = (DEAD, LEADER, OTHER)


class Net:
    """Frames between the nodes' services, delivered on a later reactor turn
    (a dead node's are dropped); counted."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.nodes: dict[str, Any] = {}
        self.frames = 0
        #: Messages by (from, to, message kind), while :attr:`counting`
        #: (a ``REPLICATION_BATCH`` frame carries many).
        self.by_kind: dict[str, int] = {}
        #: Frames by (from, to), while :attr:`counting`.
        self.by_pair: dict[str, int] = {}
        self.counting = False

    def channel(self, src: str) -> Any:
        """The peer channel of node ``src``."""

        def send(dst: str, kind: int, payload: bytes) -> None:
            self.frames += 1
            if self.counting:
                pair = f"{src}>{dst}"
                self.by_pair[pair] = self.by_pair.get(pair, 0) + 1
                many = (
                    msgspec.msgpack.decode(payload, type=list[bytes])
                    if kind == REPLICATION_BATCH
                    else [payload]
                )
                for one in many:
                    env = msgspec.msgpack.decode(one, type=Envelope)
                    what = f"{pair} {type(decode(env.message)).__name__}"
                    self.by_kind[what] = self.by_kind.get(what, 0) + 1
            ch = self.nodes.get(dst)
            if ch is not None:
                self.reactor.callLater(0, ch.handlers[kind], src, payload)

        ch = SimpleNamespace(handlers={}, send=send)
        self.nodes[src] = ch
        return ch


class Survivor:
    """One surviving node: broker on LMDB, replication service, replica sync."""

    def __init__(self, nid: str, path: Path, reactor: Any, net: Net, placement: dict[str, Any]) -> None:
        self.id = nid
        self.store = LmdbStore(str(path / nid / "lmdb"), reactor=reactor, map_size=1024**3)
        self.store.open()
        self.broker = Broker(NodeConfig(data_dir=str(path / nid)), self.store, reactor, nid)
        self.broker.recover()
        self.service = ReplicationService(nid, net.channel(nid), reactor)
        self.service.controller_of = lambda: LEADER
        self.control = SimpleNamespace(
            metadata=SimpleNamespace(placement=placement), leader_name=LEADER, is_voter=lambda rid: True
        )
        self.sync = ReplicaSync(nid, self.broker, self.control, self.service, lambda t, p, r: None)  # type: ignore[arg-type]

    async def close(self) -> None:
        self.service.stop()
        await self.broker.stop()
        await self.store.close()


class Failover:
    """The set-up and the one failover (see the module docstring)."""

    def __init__(self, path: Path, partitions: int, reactor: Any, ticking: bool = True) -> None:
        self.reactor = reactor
        #: Whether the services tick (every 0.1 s, as on a node); without, the
        #: failover moves by messages alone and its frames are the same every run.
        self.ticking = ticking
        self.names = [f"t{i:05d}" for i in range(partitions)]
        self.placement: dict[str, Any] = {}
        self.net = Net(reactor)
        self.nodes = {n: Survivor(n, path, reactor, self.net, self.placement) for n in (LEADER, OTHER)}
        self._commits: list[tuple[str, int, Commit, defer.Deferred[None]]] = []
        #: Reactor turns the apply of the batch took, per node.
        self.apply_turns = dict.fromkeys(self.nodes, 0)

    async def setup(self) -> None:
        """Topics on both brokers, led by the dead node at epoch 1; the controller's cores."""
        for node in self.nodes.values():
            await defer.gatherResults([node.broker.put_topic(n, {}) for n in self.names])
        for name in self.names:
            self.placement[name] = [{"replicas": list(REPLICAS), "leader": DEAD, "epoch": 1}]
        for node in self.nodes.values():
            for name in self.names:
                node.sync.sync_topic(name)
                # It had heard its leader (a follower of a running cluster).
                node.service.replicas[(name, 0)].core.caught_up = True
        ctl = self.nodes[LEADER].service
        ctl.commit = self._commit
        # The dead node is failed over by :meth:`start`, not found silent by
        # the controller's ticks while the set-up still runs (slow on a loaded machine).
        ctl.liveness.timeout = float("inf")
        for name in self.names:
            # As the controller makes them: every node applies the commit itself.
            c = FailoverCore(REPLICAS, epoch=1, leader=DEAD, assign_on_commit=False)
            c.leader_confirmed = True
            ctl.controllers[(name, 0)] = c
        for node in self.nodes.values():
            if self.ticking:
                node.service.start()  # ticks every 0.1 s, as on a node
        await self.quiet()

    def busy(self) -> bool:
        """Whether a replica's output chain or a store's commit is still at work."""
        for node in self.nodes.values():
            if node.store._queue or node.store._in_flight:
                return True
            if any(r._running or r._queued or r._unsent for r in node.service.replicas.values()):
                return True
        return False

    async def quiet(self, frames: bool = True) -> None:
        """Wait until nothing is at work and (``frames``) no frame moved for 50 ms."""
        seen = -1
        for _ in range(10_000):
            if not self.busy() and (not frames or seen == self.net.frames):
                return
            seen = self.net.frames
            await task.deferLater(self.reactor, 0.05, lambda: None)
        raise AssertionError("the nodes did not settle")

    def _commit(self, topic: str, partition: int, c: Commit) -> defer.Deferred[None]:
        """The controller's commit: choices of one turn go in one batch."""
        d: defer.Deferred[None] = defer.Deferred()
        if not self._commits:
            self.reactor.callLater(0, self._apply_batch)
        self._commits.append((topic, partition, c, d))
        return d

    def _apply_batch(self) -> None:
        """The batch's entry applied on every node (placement, then each node's
        replicas in slices per turn); the controller hears once its own is."""
        batch, self._commits = self._commits, []
        for topic, p, c, _ in batch:
            self.placement[topic][p] = {"replicas": list(c.replicas), "leader": c.leader, "epoch": c.epoch}
        names = list(dict.fromkeys(t for t, _, _, _ in batch))

        def answer(_: object) -> None:
            for *_x, d in batch:
                d.callback(None)

        for nid, node in self.nodes.items():
            done: defer.Deferred[None] = defer.Deferred()
            if nid == LEADER:
                done.addCallback(answer)
            self._follow(nid, node, names, 0, done)

    def _follow(
        self, nid: str, node: Survivor, names: list[str], start: int, done: defer.Deferred[None]
    ) -> None:
        self.apply_turns[nid] += 1
        for name in names[start : start + TOPICS_PER_TURN]:
            node.sync.sync_topic(name)
        nxt = start + TOPICS_PER_TURN
        if nxt < len(names):
            self.reactor.callLater(0, self._follow, nid, node, names, nxt, done)
        else:
            done.callback(None)

    def led(self, waiting: list[str]) -> list[str]:
        """Those of ``waiting`` not yet led by ``a`` with their control record committed."""
        reps = self.nodes[LEADER].service.replicas
        for i, name in enumerate(waiting):
            r = reps[(name, 0)]
            if not (r.core.is_leader and r.core.epoch == 2 and r.log.high_watermark >= r.core.cache.end):
                return waiting[i:]
        return []

    def start(self) -> None:
        """``b`` is found dead: the controller fails over every partition it
        leads (and gossip says so on both nodes about then)."""
        self.commits0 = {n: node.store.commits for n, node in self.nodes.items()}
        self.net.by_kind.clear()
        self.net.by_pair.clear()
        self.net.counting = True
        for node in self.nodes.values():
            node.service.member_event("dead", DEAD)
        self.nodes[LEADER].service._leader_lost(DEAD, "nothing heard from it")

    async def until_led(self) -> None:
        """Until every partition is led by ``a`` with its control record committed."""
        waiting = self.names
        for _ in range(1_000_000):
            waiting = self.led(waiting)
            if not waiting:
                return
            await task.deferLater(self.reactor, 0.005, lambda: None)
        raise AssertionError(f"{len(waiting)} partitions not led")

    def commits(self) -> dict[str, int]:
        """LMDB commits each node made since :meth:`start`."""
        return {n: node.store.commits - self.commits0[n] for n, node in self.nodes.items()}

    async def run(self, profile: cProfile.Profile | None = None) -> dict[str, Any]:
        """The failover, then a publish to every partition; the figures."""
        frames0 = self.net.frames
        t0, c0 = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        self.start()
        await self.until_led()
        led_s, led_cpu = time.perf_counter() - t0, time.process_time() - c0
        commits_led = self.commits()
        frames_led = self.net.frames - frames0
        frames_by = dict(sorted(self.net.by_kind.items()))
        frames_pairs = dict(sorted(self.net.by_pair.items()))
        self.net.counting = False
        reps = self.nodes[LEADER].service.replicas
        records = [Record(-1, 0, 0, None, None, None, b"x", True) for _ in self.names]
        await defer.gatherResults(
            [reps[(n, 0)].publish([r]) for n, r in zip(self.names, records, strict=True)]
        )
        if profile is not None:
            profile.disable()
        return {
            "partitions": len(self.names),
            "led_s": round(led_s, 3),
            "led_cpu_s": round(led_cpu, 3),
            "published_s": round(time.perf_counter() - t0, 3),
            "published_cpu_s": round(time.process_time() - c0, 3),
            "commits_until_led": commits_led,
            "frames_until_led": frames_led,
            "frames_until_led_by_kind": frames_by,
            "frames_until_led_by_pair": frames_pairs,
            "apply_turns": dict(self.apply_turns),
        }

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.close()


async def measure(partitions: int, profile: Path | None = None, ticking: bool = True) -> dict[str, Any]:
    """Set up and run one failover of ``partitions`` partitions (see the module docstring)."""
    from twisted.internet import reactor

    with tempfile.TemporaryDirectory(prefix="sprawl-failover-") as tmp:
        fo = Failover(Path(tmp), partitions, reactor, ticking)
        try:
            await fo.setup()
            prof = cProfile.Profile(time.thread_time) if profile is not None else None
            row = await fo.run(prof)
            if prof is not None and profile is not None:
                prof.dump_stats(str(profile))
            return row
        finally:
            await fo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", default="3300", help="partition counts, comma-separated")
    ap.add_argument("--no-ticks", action="store_true", help="no ticks: the failover moves by messages alone")
    ap.add_argument(
        "--profile", type=Path, help="write a cProfile (reactor thread CPU) of the (last) failover here"
    )
    a = ap.parse_args()
    from twisted.internet import reactor as the_reactor

    reactor: Any = the_reactor

    async def all_counts() -> None:
        for n in [int(x) for x in a.partitions.split(",")]:
            print(json.dumps(await measure(n, a.profile, not a.no_ticks)), flush=True)

    def stop(_: object) -> None:
        reactor.stop()

    d = defer.ensureDeferred(all_counts())
    d.addErrback(lambda f: print(f.getTraceback())).addBoth(stop)
    reactor.run()


if __name__ == "__main__":
    main()
