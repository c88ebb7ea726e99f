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
    from twisted.internet.defer import Deferred

    from sprawl.log.record import Record
    from sprawl.pubsub.publish import PublishResult
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


# --- pubsub: what the broker offers the parts above it ---------------------------------


class PartitionWatch(Protocol):
    """Waiting for a partition's high watermark to move
    (:class:`sprawl.pubsub.watchers.PartitionWatchers`, through the broker)."""

    def watch(self, name: str, partition: int, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` whenever the partition moves; returns the unwatch function."""
        ...

    def notify(self, name: str, partition: int) -> None:
        """Wake the partition's watchers."""
        ...

    def wait_any(self, topic: Topic, seconds: float) -> Deferred[None]:
        """Fires when any partition of ``topic`` gets new data, or after ``seconds``."""
        ...
