"""The seams between Sprawl's parts, as :class:`typing.Protocol` classes only.

A part names what it needs of another by one of these, and the composition
root hands it the object that offers it.  This module imports nothing of
Sprawl at run time (it is a leaf of the layers, see docs/architecture.md);
the types its signatures name are imported for the type checker only.
Each part keeps its block, headed by a comment.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from twisted.internet.defer import Deferred

    from sprawl.log.manifest import RemoteState
    from sprawl.log.record import Record
    from sprawl.metrics import NodeMetrics
    from sprawl.pubsub.publish import PublishResult
    from sprawl.storage.integrity import Integrity
    from sprawl.storage.lmdb import LmdbStore, Op
    from sprawl.topics import Topic


# --- pubsub: what the broker's parts (sprawl/pubsub/) need of the layer above ----------


class Delayed(Protocol):
    """A call scheduled by :meth:`Clock.callLater` (``IDelayedCall``)."""

    def active(self) -> bool:
        """Whether it has neither run nor been cancelled."""
        ...

    def cancel(self) -> None:
        """Do not run it."""
        ...


class Clock(Protocol):
    """The time an adapter is given (the reactor, or ``task.Clock`` in tests):
    the part of ``IReactorTime`` the broker uses."""

    def seconds(self) -> float:
        """Now, in seconds since the epoch."""
        ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Delayed:
        """Call ``callable(*args, **kw)`` after ``delay`` seconds."""
        ...


class TopicCreator(Protocol):
    """How an auto-created topic comes to be: a lone broker creates it itself;
    a cluster node proposes it through Raft (:class:`sprawl.cluster.control.ClusterControl`)."""

    def ensure_topic(self, name: str) -> Deferred[Topic]:
        """The topic, created with defaults if it does not exist."""
        ...


class RecordPublisher(Protocol):
    """Where the broker's own publishes (dead letters) go: a lone broker's
    :meth:`~sprawl.pubsub.broker.Broker.publish`; in a cluster, the data
    plane's, through each partition's leader."""

    def publish(self, topic: Topic, records: list[Record], acks: str) -> Deferred[PublishResult]:
        """Publish ``records`` (offsets unassigned) with the ``acks`` level."""
        ...


class GroupOwner(Protocol):
    """Which partitions of a topic this node owns the consumer-group state of
    (in a cluster, those it leads: :class:`sprawl.cluster.group_routes.GroupRoutes`)."""

    def owned(self, topic: Topic) -> Collection[int] | None:
        """The partitions (None: all of them)."""
        ...


# --- pubsub: what the broker offers the adapters below it (they cannot import it) ----


class BrokerStorage(Protocol):
    """The broker as the storage adapters below it see it: its store,
    topics, metrics and damage map (:class:`sprawl.storage.integrity.Integrity`,
    :class:`sprawl.storage.scrub.Scrubber`)."""

    @property
    def store(self) -> LmdbStore:
        """The node's LMDB store."""
        ...

    @property
    def topics(self) -> dict[str, Topic]:
        """The topics on this node, by name."""
        ...

    @property
    def metrics(self) -> NodeMetrics | None:
        """The node's metrics (None in tests without them)."""
        ...

    @property
    def integrity(self) -> Integrity:
        """The damaged ranges of this node's partitions."""
        ...

    @property
    def stopping(self) -> bool:
        """Whether the node is stopping (refuses new work)."""
        ...

    def now_ms(self) -> int:
        """Wall-clock milliseconds."""
        ...

    def notify(self, name: str, partition: int) -> None:
        """Wake the partition's watchers."""
        ...


class RemoteFollower(Protocol):
    """The broker as a lone node's remote list (:class:`sprawl.storage.remote_log.LocalRemoteLog`) sees it."""

    def legacy_keys(self, topic: Topic, partition: int) -> set[str]:
        """Keys of this node's own uploads under the old per-node keys."""
        ...

    def follow_remote(self, topic: Topic, partition: int, state: RemoteState | None = None) -> Deferred[None]:
        """Make the partition's log follow its shared remote state."""
        ...


class ReplicaStore(BrokerStorage, Protocol):
    """The broker as a partition's replication (:mod:`sprawl.replication.service`) sees it."""

    @property
    def clock(self) -> Clock:
        """The broker's time."""
        ...

    def new_message_id(self) -> str:
        """A new unique message id."""
        ...

    def append_replicated(
        self, topic: Topic, partition: int, records: list[Record], extra_ops: Sequence[Op] = ()
    ) -> Deferred[None]:
        """Store a leader's batch at its offsets."""
        ...

    def truncate_partition(
        self, topic: Topic, partition: int, offset: int, extra_ops: Sequence[Op] = ()
    ) -> Deferred[None]:
        """Drop the records from ``offset`` on."""
        ...

    def reset_partition(
        self,
        topic: Topic,
        partition: int,
        start: int,
        extra_ops: Sequence[Op] = (),
        floor: int | None = None,
    ) -> Deferred[None]:
        """Restart the partition's local log empty at ``start``."""
        ...
