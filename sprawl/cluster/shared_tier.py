"""The S3 tier's shared remote-segment lists in a cluster: kept in the Raft
metadata, changed only by each partition's leader.  An adapter (the
:class:`~sprawl.storage.remote_log.RemoteLog` of a cluster node).

* **Where the list lives.**  ``Metadata.remote`` holds, per partition, the
  log start and the remote segments (offsets, object keys, sizes, checksums,
  the leader epoch of the upload).  Every node applies the same Raft log, so
  every replica -- one that joins later included, through a snapshot --
  knows the partition's log start and reads the remote segments itself.
* **Who changes it.**  A ``remote_add`` or ``remote_trim`` command carries
  the proposer's leader epoch and the topic's incarnation; the state machine
  refuses it unless the epoch is the partition's current one, so a deposed
  leader's upload or trim never commits (the epoch-named object it left is
  the sweep's to delete).  The proposal is answered once the command is
  applied on this node, the broker's follow included
  (:meth:`sprawl.cluster.control.ClusterControl._materialise`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from sprawl.errors import SprawlError
from sprawl.log.manifest import RemoteObject, RemoteState

if TYPE_CHECKING:
    from sprawl.cluster.control import ClusterControl
    from sprawl.cluster.dataplane import DataPlane
    from sprawl.topics import Topic


class ClusterRemoteLog:
    """Shared remote lists in the Raft metadata (see the module docstring)."""

    def __init__(self, control: ClusterControl, plane: DataPlane) -> None:
        self.control = control
        self.plane = plane

    def state(self, topic: Topic, partition: int) -> RemoteState:
        """The list as applied on this node (empty for a topic the metadata
        does not know as this incarnation)."""
        meta = self.control.metadata
        mt = meta.topics.get(topic.name)
        if mt is None or topic.deleted:
            return RemoteState()
        state: RemoteState = meta.remote_state(topic.name, partition)
        return state

    def tiered(self) -> Iterable[tuple[str, int]]:
        """The partitions with a shared remote state in the metadata (any
        other's is empty): what the broker's tier tick follows."""
        return [(name, p) for name, parts in self.control.metadata.remote.items() for p in parts]

    def leader_epoch(self, topic: Topic, partition: int) -> int | None:
        """The epoch this node leads the partition in: its replica's, or the
        placement's when it is the partition's only replica."""
        name = topic.name
        pl = self.plane.placement(name, partition)
        if pl is None or topic.deleted:
            return None
        if list(pl["replicas"]) == [self.plane.node_id]:
            return int(pl["epoch"])
        r = self.plane.service.replicas.get((name, partition))
        if r is not None and r.core.is_leader and r.failed is None:
            return int(r.core.epoch)
        return None

    def incarnation(self, topic: Topic) -> int:
        """The Raft index that created the topic (the same on every node)."""
        mt = self.control.metadata.topics.get(topic.name)
        if mt is None:
            raise SprawlError(f"topic {topic.name!r} is not in the cluster metadata", code="topic_not_found")
        return int(mt["created_index"])

    async def _propose(self, cmd: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.control.propose(cmd)
        err = result.get("error")
        if err:
            raise SprawlError(err["message"], code=err["code"], status=err["status"])
        return result

    def _command(self, op: str, topic: Topic, partition: int, epoch: int) -> dict[str, Any]:
        return {
            "op": op,
            "topic": topic.name,
            "partition": partition,
            "created_index": self.incarnation(topic),
            "epoch": epoch,
        }

    def add(
        self, topic: Topic, partition: int, epoch: int, objects: Sequence[RemoteObject]
    ) -> defer.Deferred[None]:
        """Commit uploaded segments to the partition's list (fires once applied here)."""

        async def run() -> None:
            cmd = self._command("remote_add", topic, partition, epoch)
            cmd["segments"] = [o.to_row() for o in objects]
            await self._propose(cmd)

        return defer.ensureDeferred(run())

    def trim(
        self, topic: Topic, partition: int, epoch: int, start: int
    ) -> defer.Deferred[list[RemoteObject]]:
        """Commit a new log start; fires with the remote segments it dropped."""

        async def run() -> list[RemoteObject]:
            cmd = self._command("remote_trim", topic, partition, epoch)
            cmd["start"] = start
            result = await self._propose(cmd)
            return [RemoteObject.from_row(r) for r in result.get("dropped") or ()]

        return defer.ensureDeferred(run())
