"""Replicas from the placement: which partitions this node holds, and the
replica adapters that follow the applied Raft metadata.  An adapter (part of
the data plane, :mod:`sprawl.cluster.dataplane`).

Every node applies the same Raft log; after each ``put_topic`` /
``set_partition`` / ``delete_topic`` (and a snapshot) :meth:`ReplicaSync.sync_topic`
makes the local replicas match the applied placement: a partition with more
than one replica that lists this node gets a
:class:`~sprawl.replication.partition.PartitionReplication`, which hears the
committed ``Assign(epoch, leader, replicas)``.  A partition whose only replica
is this node is served by the broker directly, as on a single node.  A
replica whose adapter failed is built again from what this node stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from sprawl.cluster.placement import raft_id_of
from sprawl.log.record import Record
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Assign, Fence, Handoff, Message
from sprawl.replication.partition import PartitionReplication
from sprawl.replication.service import ReplicationService
from sprawl.storage import keys

if TYPE_CHECKING:
    from sprawl.interfaces import ControlView
    from sprawl.log.partition import PartitionLog
    from sprawl.pubsub import Broker
    from sprawl.topics import Topic

log = Logger()


def sync_core(c: FailoverCore, pl: dict[str, Any]) -> None:
    """Bring a controller's failover core up to the applied placement ``pl``
    of its partition (a newer epoch, or a leader it had not learnt yet)."""
    epoch = int(pl["epoch"])
    landed = c.committing is not None and c.landing is not None and epoch >= c.committing.epoch
    early = c.heard_early
    if landed:
        # The choice whose proposal timed out landed (or a later one did):
        # committed after all (see ``FailoverCore.committed``).
        c.committing, c.landing, c.heard_early = None, None, None
    if epoch > c.epoch:
        c.cancel_move()  # a pending leadership hand-off is for an epoch gone by
    if epoch > c.epoch or (epoch == c.epoch and c.leader is None and c.committing is None):
        c.epoch, c.leader = epoch, str(pl["leader"])
        c.replicas = tuple(str(x) for x in pl["replicas"])
        # Whatever confirmed the last leader does not confirm this one (also
        # while a choice is committing: ``FailoverCore.committed`` skips the
        # Assigns only when this leader said it leads this epoch).
        c.leader_confirmed = False
        if c.committing is None:
            c.fencing = None
            c.silent_ticks = 0
        if landed and early == (c.epoch, c.leader):
            c.leader_confirmed = True  # its leader said it leads this epoch already


class ReplicaSync:
    """This node's replicas, kept matching the applied placement (see the module docstring).

    ``follow`` hears the records every replica stores (the consumer groups
    follow their partitions' commits with it)."""

    def __init__(
        self,
        node_id: str,
        broker: Broker,
        control: ControlView,
        service: ReplicationService,
        follow: Callable[[Topic, int, list[Record]], None],
    ) -> None:
        self.node_id = node_id
        self.broker = broker
        self.control = control
        self.service = service
        self.follow = follow
        #: The epoch each local replica was last assigned (from the metadata).
        self._assigned: dict[tuple[str, int], int] = {}
        #: Replicas built again after their adapter failed.
        self.rebuilt = 0
        #: Partitions each topic had at most (its replicas' keys), for :meth:`sync_topic`.
        self._parts_seen: dict[str, int] = {}
        #: The controller every replica was last pointed at (see :meth:`follow_controller`).
        self._controller: str | None = None
        #: Replicas dropped (this node left the partition's replicas) while
        #: their outputs were still being written: this node taken back in
        #: meanwhile takes the same replica back rather than one built from
        #: the store, which lags it (see :meth:`_drop`).  Forgotten once settled.
        self._parked: dict[tuple[str, int], PartitionReplication] = {}

    # -- the placement -----------------------------------------------------------------

    def placement(self, topic: str, partition: int) -> dict[str, Any] | None:
        """The applied placement of one partition, or None."""
        parts = self.control.metadata.placement.get(topic)
        if parts is None or not 0 <= partition < len(parts):
            return None
        return parts[partition]

    def leads(self, topic: str, partition: int) -> bool:
        """Whether this node leads the partition now (or holds it alone)."""
        if self.is_local(topic, partition):
            return True
        r = self.service.replicas.get((topic, partition))
        return r is not None and r.core.is_leader

    def is_local(self, topic: str, partition: int) -> bool:
        """Whether the broker serves this partition alone here (this node is its only replica)."""
        pl = self.placement(topic, partition)
        if pl is None:
            return True  # not (yet) in the metadata: the broker's own partition
        reps = pl["replicas"]
        return not reps or list(reps) == [self.node_id]

    def holds(self, topic: str, partition: int) -> bool:
        """Whether this node has the partition's committed records (local or a replica)."""
        return self.is_local(topic, partition) or (topic, partition) in self.service.replicas

    def accepts(self, peer: str, key: tuple[str, int], m: Message) -> bool:
        """Replication takes messages about a partition only from its replicas
        (and the nodes of its goal) in the applied placement, and the
        controller's (Fence, Assign, Handoff) only from a Raft voter: the
        controller is the Raft leader."""
        if isinstance(m, Fence | Assign | Handoff):
            return self.control.is_voter(raft_id_of(peer))
        pl = self.placement(*key)
        if pl is None:
            return False
        return peer in pl["replicas"] or peer in (pl.get("goal") or ())

    # -- following the metadata ----------------------------------------------------------

    def sync_topic(self, name: str) -> None:
        """Make this node's replicas of ``name`` match the applied placement."""
        parts = self.control.metadata.placement.get(name)
        t = self.broker.topics.get(name)
        # The topic's own replicas only (not a scan of every replica: issue 23).
        seen = max(self._parts_seen.get(name, 0), len(parts) if parts is not None else 0)
        for key in [(name, p) for p in range(seen) if (name, p) in self.service.replicas]:
            r = self.service.replicas[key]
            if parts is None or t is None or r.topic is not t:
                self._drop(key, park=False)
        for key in [(name, p) for p in range(seen) if (name, p) in self._parked]:
            if parts is None or t is None or self._parked[key].topic is not t:
                del self._parked[key]  # the topic is gone (or is another one of that name)
        if parts is None:
            self._parts_seen.pop(name, None)
        else:
            self._parts_seen[name] = seen
        if parts is None or t is None:
            return
        for p, pl in enumerate(parts):
            if p >= len(t.logs):
                break
            lg = t.logs[p]
            reps = [str(x) for x in pl["replicas"]]
            leader, epoch = str(pl["leader"]), int(pl["epoch"])
            if reps:
                if lg.leader != leader or lg.replicas != reps:
                    self.broker.touched.touch(name)  # (the load sample and fault watch look again)
                lg.replicas, lg.leader, lg.epoch = list(reps), leader, epoch
            key = (name, p)
            if len(reps) <= 1 or self.node_id not in reps:
                if key in self.service.replicas:
                    self._drop(key)
                if reps == [self.node_id]:
                    self._parked.pop(key, None)  # served alone from now: no replica to take back
                if reps == [self.node_id] and lg.replicated:
                    self._alone(t, lg)
                continue
            existing = self.service.replicas.get(key) or self._take_parked(key, t)
            if existing is not None:
                r = existing
            else:
                r = PartitionReplication(
                    self.node_id,
                    self.control.leader_name or leader,
                    self.broker,
                    t,
                    p,
                    self.service.sender(key),
                    committed_if_new=leader == self.node_id,
                    on_records=self._follower(t, p),
                )
                self.service.add(r)
            if epoch > self._assigned.get(key, 0):
                self._assigned[key] = epoch
                src = self.control.leader_name or leader
                assign = Assign(epoch, leader, tuple(reps))
                self.service.timeline.mark("applied", self.service.reactor.seconds())
                if leader == self.node_id and existing is not None:
                    # A replica that moves to leader (a failover's, a move's):
                    # taken with the turn's other new leaderships in one write
                    # (issue 23).  A new topic's replica leads at once: its
                    # records join the topic's own write (create23).
                    self.service.lead(key, r, src, assign)
                else:
                    self.service.flush(key)
                    was_leader = r.core.is_leader
                    r.receive(src, assign, [])
                    self.service.assigned(key, r, was_leader)  # (the failover timeline)
            c = self.service.controllers.get(key)
            if c is not None:
                sync_core(c, pl)
                self.service.wake_control(key)

    def rebuild_failed(self) -> None:
        """Build again every replica whose adapter failed (its error is
        logged) from what this node stored: it rejoins as a follower."""
        # Those that said they failed (not a scan of every replica: issue 23).
        if self._parked:
            for key in [k for k, r in self._parked.items() if r.settled or r.failed is not None]:
                del self._parked[key]
        said, self.service.broken = self.service.broken, set()
        if said and self.service.storage_failed():
            # (a replica built again would fail at its first write: the store
            # refuses every write until a restart; see ReplicationService.storage_failed)
            return
        broken = [k for k in said if (r := self.service.replicas.get(k)) is not None and r.failed is not None]
        for key in broken:
            self.rebuilt += 1
            log.warn(
                "rebuilding the replica of {topic}/{partition} from its stored state",
                topic=key[0],
                partition=key[1],
            )
            self._drop(key, park=False)
        for name in {key[0] for key in broken}:
            self.sync_topic(name)

    def follow_controller(self) -> None:
        """Point every replica at the current controller (the Raft leader)."""
        leader = self.control.leader_name
        if not leader:
            self._controller = None  # replicas built meanwhile get a stand-in: all again once known
        elif leader != self._controller:
            # Only when it changed (not every tick: issue 23); replicas built
            # since are given the controller when they are built.
            self._controller = leader
            for r in self.service.replicas.values():
                r.core.controller = leader

    def _follower(self, t: Topic, p: int) -> Callable[[list[Record]], None]:
        """What a replica of ``t``/``p`` calls with the records it stored."""

        def stored(records: list[Record]) -> None:
            self.follow(t, p, records)

        return stored

    def _alone(self, t: Topic, lg: PartitionLog) -> None:
        """This node became the partition's only replica: the broker serves it
        directly again -- its high watermark follows the local fsync (what
        this leader stored is all there is), and the replica state is
        forgotten, so a later replica set starts from this log as committed."""
        lg.replicated = False
        if lg.stored_end > lg.high_watermark:
            lg.high_watermark = lg.stored_end
            self.broker.notify(t.name, lg.partition)
        d = self.broker.store.write([("d", "meta", keys.replica_state_key(t.config.uid, lg.partition))])
        d.addErrback(lambda f: log.warn("forgetting a replica state failed: {err}", err=str(f.value)))

    def _drop(self, key: tuple[str, int], park: bool = True) -> None:
        """This node no longer serves the partition's replica.  A replica
        whose outputs are still being written is parked (``park``): its
        log's records are in memory before their write, with the replica
        state (epoch runs, promise) that describes them, so a replica built
        from the store now would see records of "epoch 0" and no high
        watermark -- and refuse its leader's every append at the end the
        leader knows it holds, catching up never (the readiness flake after
        a whole-cluster restart: a node taken out of a partition's replicas
        and back in within a moment).  Taken back in, the node takes the
        parked replica back (:meth:`_take_parked`)."""
        r = self.service.replicas.pop(key, None)
        self._assigned.pop(key, None)
        if park and r is not None and r.failed is None and not r.settled:
            self._parked[key] = r

    def _take_parked(self, key: tuple[str, int], t: Topic) -> PartitionReplication | None:
        """The replica parked for ``key`` (see :meth:`_drop`), served again, or None."""
        r = self._parked.pop(key, None)
        if r is None or r.topic is not t or r.failed is not None:
            return None
        r.core.controller = self.control.leader_name or r.core.controller
        self.service.add(r)
        return r
