"""Replication on a node: the adapter between the pure replica and failover
cores, the broker (records in memory and LMDB) and the peer channel.

One :class:`~sprawl.replication.partition.PartitionReplication` per
replicated partition this node holds; one :class:`ReplicationService` per
node routes peer frames (each an :class:`~sprawl.replication.envelope.Envelope`)
to them and to the failover cores the node runs as controller, and ticks
them all.

The cluster data plane (:mod:`sprawl.cluster`) builds one
:class:`PartitionReplication` for every replicated partition this node holds
and gives the service the function that commits a failover choice as a Raft
proposal (``set_partition``); see docs/architecture.md, "Replication" and
"The data plane".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import msgspec
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.interfaces import Clock, ReplicaStore
from sprawl.peer.frames import REPLICATION
from sprawl.replication.envelope import Envelope, unpack_record
from sprawl.replication.failover import Commit, ControlOutput, FailoverCore
from sprawl.replication.messages import (
    Append,
    FenceResp,
    HandoffReady,
    LeaderBeat,
    Message,
    append_flaw,
    decode,
    encode,
)
from sprawl.replication.partition import PartitionReplication

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sprawl.peer.tcp import PeerChannel

log = Logger()


class ReplicationService:
    """Routes replication frames on one node and ticks its replicas and controller cores."""

    def __init__(
        self,
        node_id: str,
        channel: PeerChannel,
        reactor: Clock,
        *,
        tick_seconds: float = 0.1,
        commit: Callable[[str, int, Commit], defer.Deferred[None]] | None = None,
        accept: Callable[[str, tuple[str, int], Message], bool] | None = None,
    ) -> None:
        self.node_id = node_id
        self.channel = channel
        self.reactor = reactor
        self.tick_seconds = tick_seconds
        self.replicas: dict[tuple[str, int], PartitionReplication] = {}
        #: Failover cores this node runs as the controller, by partition, with
        #: the function that commits a choice (Raft, in the real node;
        #: without one, every choice counts as committed at once).
        self.controllers: dict[tuple[str, int], FailoverCore] = {}
        self.commit: Callable[[str, int, Commit], defer.Deferred[None]] = commit or (
            lambda t, p, c: defer.succeed(None)
        )
        #: Whether a message about a partition is taken from a peer (the data
        #: plane's rule: replicas of the partition, controller messages from a
        #: Raft voter); everything is taken without one.
        self.accept: Callable[[str, tuple[str, int], Message], bool] = accept or (lambda peer, key, m: True)
        self.dropped = 0
        #: Messages refused: from a node that is no replica (or controller), or
        #: an Append that is not one a leader could have sent.
        self.refused = 0
        self._refusals_logged: dict[str, float] = {}
        channel.handlers[REPLICATION] = self._frame
        self._loop: task.LoopingCall | None = None

    def start(self) -> None:
        """Start ticking."""
        loop = task.LoopingCall(self.tick)
        loop.clock = cast("IReactorTime", self.reactor)
        self._loop = loop
        loop.start(self.tick_seconds, now=False)

    def stop(self) -> None:
        """Stop ticking."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def add(self, replica: PartitionReplication) -> None:
        """Serve a replicated partition on this node."""
        self.replicas[(replica.topic.name, replica.partition)] = replica

    def replica(
        self, topic: str, partition: int, broker: ReplicaStore, controller: str
    ) -> PartitionReplication:
        """The partition's replica here, created on first use."""
        key = (topic, partition)
        r = self.replicas.get(key)
        if r is None:
            r = PartitionReplication(
                self.node_id, controller, broker, broker.topics[topic], partition, self.sender(key)
            )
            self.replicas[key] = r
        return r

    def sender(self, key: tuple[str, int]) -> Callable[[str, Envelope], None]:
        """The function a partition's replica sends its messages with (to itself: delivered here)."""

        def send(dst: str, env: Envelope) -> None:
            if dst == self.node_id:
                self._deliver(self.node_id, env)
            else:
                self.channel.send(dst, REPLICATION, msgspec.msgpack.encode(env))

        return send

    def tick(self) -> None:
        """Tick every replica and controller core."""
        for r in list(self.replicas.values()):
            r.tick()
        for key, c in list(self.controllers.items()):
            self.run_control(key, c.tick())

    def _frame(self, peer: str, payload: bytes) -> None:
        try:
            env = msgspec.msgpack.decode(payload, type=Envelope)
        except msgspec.DecodeError:
            self.dropped += 1
            return
        self._deliver(peer, env)

    def _refuse(self, peer: str, key: tuple[str, int], why: str) -> None:
        self.refused += 1
        now = self.reactor.seconds()
        if now - self._refusals_logged.get(peer, float("-inf")) >= 30.0:
            if len(self._refusals_logged) > 1024:
                self._refusals_logged.clear()
            self._refusals_logged[peer] = now
            log.warn(
                "replication: refused a message about {topic}/{partition} from {peer}: {why}",
                topic=key[0],
                partition=key[1],
                peer=peer,
                why=why,
            )

    def _deliver(self, peer: str, env: Envelope) -> None:
        try:
            m = decode(env.message)
        except msgspec.DecodeError:
            self.dropped += 1
            return
        key = (env.topic, env.partition)
        if peer != self.node_id:
            if isinstance(m, Append):
                why = append_flaw(m, [t[0] for t in env.records])
                if why is not None:
                    self._refuse(peer, key, why)
                    return
            elif env.records:
                self._refuse(peer, key, "records on a message that carries none")
                return
            if not self.accept(peer, key, m):
                self._refuse(peer, key, "not a replica of the partition (nor its controller)")
                return
        c = self.controllers.get(key)
        if c is not None and isinstance(m, FenceResp | LeaderBeat | HandoffReady):
            self.run_control(key, c.receive(peer, m))
            return
        r = self.replicas.get(key)
        if r is None:
            self.dropped += 1
            return
        r.receive(peer, m, [unpack_record(t, env.partition) for t in env.records])

    def run_control(self, key: tuple[str, int], out: ControlOutput) -> None:
        """Carry out what a partition's failover core decided: send its messages,
        commit its choice (then tell the core how that went)."""
        send = self.sender(key)
        for dst, m in out.messages:
            send(dst, Envelope(key[0], key[1], encode(m)))
        if out.commit is not None:
            c = self.controllers[key]

            def committed(_: object) -> None:
                self.run_control(key, c.committed(True))

            def failed(f: Failure) -> None:
                log.failure(
                    "committing the leader of {topic}/{partition} failed", f, topic=key[0], partition=key[1]
                )
                self.run_control(key, c.committed(False))

            self.commit(key[0], key[1], out.commit).addCallbacks(committed, failed)
