"""Who changes a partition's shared remote segments, and how a change commits.

The list of a partition's segments in the object store
(:class:`~sprawl.log.manifest.RemoteState`) is one list for all its replicas.
The S3 tier (:mod:`sprawl.storage.tiering`) adds to it after an upload, the
broker's retention trims it; both go through a :class:`RemoteLog`:

* :meth:`RemoteLog.leader_epoch` -- only the partition's leader changes the
  list, in its epoch (followers never upload, never trim);
* :meth:`RemoteLog.add` / :meth:`RemoteLog.trim` fire once the change is
  committed *and* this node's log follows it (its local copies of the
  covered records are gone; see :meth:`sprawl.pubsub.replica.ReplicaWrites.follow_remote`);
  a refused change (a stale epoch: another leader took over; a gap) fails;
* :meth:`RemoteLog.state` -- the list as committed, which every replica's log
  follows.

:class:`LocalRemoteLog` is a lone broker's: the node is the partition, the
list is its own manifest and a change applies at once.  In a cluster the
list lives in the Raft metadata (:mod:`sprawl.cluster.shared_tier`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred, fail

from sprawl.errors import Conflict
from sprawl.interfaces import RemoteFollower
from sprawl.log.manifest import RemoteObject, RemoteState

if TYPE_CHECKING:
    from sprawl.topics import Topic


class RemoteLog(Protocol):
    """The seam between the S3 tier and where the shared remote list lives."""

    def state(self, topic: Topic, partition: int) -> RemoteState:
        """The partition's shared remote state as committed (and applied here)."""

    def tiered(self) -> Iterable[tuple[str, int]]:
        """(topic name, partition) of the partitions whose logs follow a
        shared state as their high watermarks move: every partition whose
        :meth:`state` is not the empty ``RemoteState()``."""

    def leader_epoch(self, topic: Topic, partition: int) -> int | None:
        """The epoch in which this node leads the partition now (None: it does not)."""

    def incarnation(self, topic: Topic) -> int:
        """Which life of the topic name this is (part of every object key)."""

    def add(
        self, topic: Topic, partition: int, epoch: int, objects: Sequence[RemoteObject]
    ) -> Deferred[None]:
        """Append uploaded segments to the list (as the leader of ``epoch``)."""

    def trim(self, topic: Topic, partition: int, epoch: int, start: int) -> Deferred[list[RemoteObject]]:
        """Retention: the log starts at ``start``; fires with the remote
        segments the list dropped (their objects are the caller's to delete)."""


class LocalRemoteLog:
    """A lone broker's remote list: the remote segments at the front of its
    own log (its manifest); changes apply at once."""

    def __init__(self, broker: RemoteFollower) -> None:
        self.broker = broker

    def state(self, topic: Topic, partition: int) -> RemoteState:
        """The node's remote prefix (without its legacy objects) and log start."""
        lg = topic.logs[partition]
        own = self.broker.legacy_keys(topic, partition)
        objs: list[RemoteObject] = []
        for s in lg.segments:
            if s.remote is None:
                break
            if s.remote.key not in own:
                objs.append(s.remote)
        return RemoteState(lg.log_start, tuple(objs))

    def tiered(self) -> Iterable[tuple[str, int]]:
        """None: a lone broker's list is its own log's front, every change
        applied at once (there is nothing to follow later)."""
        return ()

    def leader_epoch(self, topic: Topic, partition: int) -> int | None:
        """Always 0: a lone broker leads every partition, in no epoch."""
        return 0

    def incarnation(self, topic: Topic) -> int:
        """The topic's local uid."""
        return int(topic.config.uid)

    def add(
        self, topic: Topic, partition: int, epoch: int, objects: Sequence[RemoteObject]
    ) -> Deferred[None]:
        """Append and follow at once."""
        try:
            new = self.state(topic, partition).added(objects)
        except ValueError as e:
            return fail(Conflict(str(e), code="remote_gap"))
        return self.broker.follow_remote(topic, partition, new)

    def trim(self, topic: Topic, partition: int, epoch: int, start: int) -> Deferred[list[RemoteObject]]:
        """Trim and follow at once."""
        new, gone = self.state(topic, partition).trimmed(start)
        d = self.broker.follow_remote(topic, partition, new)
        return d.addCallback(lambda _: gone)
