"""The seams between Sprawl's parts, as :class:`typing.Protocol` classes only.

A part names what it needs of another by one of these, and the composition
root hands it the object that offers it.  This module imports nothing of
Sprawl at run time (it is a leaf of the layers, see docs/architecture.md);
the types its signatures name are imported for the type checker only.
Each part keeps its block, headed by a comment.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from sprawl.cluster.metadata import Metadata
    from sprawl.cluster.voters import Strength
    from sprawl.delivery.groups import ConsumerGroup, Delivery
    from sprawl.delivery.remote_feed import RemoteFeeds
    from sprawl.gossip.membership import MemberEvent
    from sprawl.log.damage import DamageEntry
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

    def publish(
        self, topic: Topic, records: list[Record], acks: str, partition: int | None = None
    ) -> Deferred[PublishResult]:
        """Publish ``records`` (offsets unassigned) with the ``acks`` level (all of
        them to ``partition`` when given, else by key)."""
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
        self,
        topic: Topic,
        partition: int,
        records: list[Record],
        extra_ops: Sequence[Op] = (),
        urgent: bool = True,
    ) -> Deferred[None]:
        """Store a leader's batch at its offsets (``urgent``: someone waits for
        it -- it ends the store's hold, ``LmdbStore.hold``)."""
        ...

    def append_replicated_then(
        self,
        topic: Topic,
        partition: int,
        records: list[Record],
        extra_ops: Sequence[Op],
        then: Callable[[Failure | None], object],
        urgent: bool = True,
    ) -> None:
        """:meth:`append_replicated`, answered by ``then(None)`` once durable or
        ``then(failure)``: no Deferred."""
        ...

    def check_writable(self) -> None:
        """Raise when nothing may be written now (storage failed or full)."""
        ...

    def stage_replicated(self, topic: Topic, partition: int, records: list[Record]) -> list[Op]:
        """Add a leader's batch to the log in memory; the ops that store it."""
        ...

    def replicated_stored(self, topic: Topic, partition: int, end: int) -> None:
        """Records staged with :meth:`stage_replicated` are durable up to ``end``."""
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


# --- http: what the HTTP API (sprawl/http/) needs of the layers below -------------------


class MetadataControl(Protocol):
    """Where topic and group definitions change: Raft on a cluster node
    (:class:`sprawl.cluster.control.ClusterControl`), the broker itself on a
    lone one (:class:`sprawl.cluster.local.LocalControl`)."""

    def put_topic(self, name: str, body: dict[str, Any]) -> Deferred[tuple[Topic, bool]]:
        """Create or update a topic; fires with (topic, created)."""
        ...

    def delete_topic(self, name: str) -> Deferred[None]:
        """Delete a topic and its data."""
        ...

    def put_group(
        self, topic: Topic, group: str, body: dict[str, Any]
    ) -> Deferred[tuple[ConsumerGroup, bool]]:
        """Create or update a group of an existing topic; fires with (group, created)."""
        ...

    def delete_group(self, topic: Topic, group: str) -> Deferred[None]:
        """Forget a group."""
        ...

    def wait_topic(self, name: str) -> Deferred[None]:
        """Fires once a topic ``name`` exists here; cancel to stop waiting."""
        ...

    def linearizable(self) -> Deferred[None]:
        """Fires once this node has applied everything committed before the call."""
        ...


class GroupRouter(Protocol):
    """Consumer-group requests, each partition's part at the node owning its
    group state (:class:`sprawl.cluster.group_routes.GroupRoutes`; on a lone
    node, the broker: :class:`sprawl.cluster.local.LocalGroups`)."""

    async def describe(self, topic: Topic, group: str) -> dict[str, Any]:
        """The group's JSON description (``GET .../groups/{group}``)."""
        ...

    async def pull(
        self, topic: Topic, group: str, max_count: int, wait_ms: int, max_bytes: int = ...
    ) -> list[tuple[Delivery, Record]]:
        """Lease up to ``max_count`` messages (at most ``max_bytes``, at least one)."""
        ...

    async def settle(
        self, topic: Topic, group: str, ack_ids: list[str], nack: bool, delay_ms: int = 0
    ) -> dict[str, str]:
        """Ack (or nack with ``delay_ms``) deliveries; fires with {ack_id: refusal}."""
        ...

    async def extend(
        self, topic: Topic, group: str, ack_ids: list[str], extend_ms: int
    ) -> tuple[dict[str, str], dict[str, int]]:
        """Extend live leases to now + ``extend_ms``: ({ack_id: refusal}, {ack_id: new deadline})."""
        ...


class MessagePlane(Protocol):
    """Where a partition is written and read: the cluster data plane
    (:class:`sprawl.cluster.dataplane.DataPlane`: publishes through each
    partition's leader, reads at a replica) or, on a lone node, the broker
    itself (:class:`sprawl.cluster.local.LocalDataPlane`)."""

    @property
    def feeds(self) -> RemoteFeeds | None:
        """The shared long-polls of partitions held elsewhere (None: every partition is here)."""
        ...

    @property
    def groups(self) -> GroupRouter:
        """Consumer groups, routed to the owners of their partitions."""
        ...

    def publish(self, topic: Topic, records: list[Record], acks: str) -> Deferred[PublishResult]:
        """Publish ``records`` (offsets unassigned) with the ``acks`` level."""
        ...

    def read_source(self, topic: str, partition: int) -> str | None:
        """The node a read of the partition goes to, or None: this node's broker."""
        ...

    def fetch_remote(
        self,
        topic: str,
        partition: int,
        start: str | int | None,
        from_time: int | None,
        limit: int,
        wait_ms: int,
        max_bytes: int | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Read a partition at its :meth:`read_source`: ``{"records", "start", "hw"}``."""
        ...

    def changed(self, name: str, p: int, seconds: float) -> Deferred[None]:
        """Fires when the partition's high watermark moves, or after ``seconds``."""
        ...

    def partition_view(self, topic: str, partition: int) -> dict[str, Any]:
        """What this node adds to a partition's description (its replica's state)."""
        ...

    def summary(self) -> dict[str, Any] | None:
        """The partitions' figures for ``GET /v1/cluster`` (None: nothing to add)."""
        ...

    def summary_ready(self) -> Deferred[None]:
        """Fires once :meth:`summary` can answer without a long reactor turn (what it
        keeps judged again in slices across turns first)."""
        ...


class MemberList(Protocol):
    """The gossip membership as the API shows it (:class:`sprawl.gossip.udp.GossipService`)."""

    @property
    def joined(self) -> bool:
        """Whether a seed has answered (the node is in the cluster)."""
        ...

    def member_views(self) -> Iterable[dict[str, Any]]:
        """Every member known, this node included, as JSON."""
        ...

    def live_member_ids(self) -> Iterable[str]:
        """The ids of the members alive now."""
        ...


class RaftStatus(Protocol):
    """The cluster control's Raft state as the API shows it
    (:class:`sprawl.cluster.control.ClusterControl`)."""

    @property
    def leader_name(self) -> str:
        """The Raft leader's node id ("" while none is known)."""
        ...

    @property
    def forced(self) -> str:
        """The cluster id this node forced (``--force-new-cluster``), or ""."""
        ...

    def raft_view(self) -> dict[str, Any]:
        """``GET /v1/cluster``'s ``raft`` object."""
        ...

    def strength(self) -> Strength:
        """How fault-tolerant the voter configuration is now."""
        ...

    @property
    def metadata(self) -> Metadata:
        """The cluster metadata as applied on this node (its drained nodes)."""
        ...

    def propose(self, cmd: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Propose a metadata command (a drain); fires with its result once applied here."""
        ...


class FeedSocket(Protocol):
    """What a WebSocket feed (:mod:`sprawl.http.ws_feeds`) needs of its socket
    (:class:`sprawl.http.websocket.SprawlWSProtocol`; a fake in tests)."""

    @property
    def transport(self) -> Any:
        """The TCP transport (Twisted's): producer registration and raw writes."""
        ...

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        """Send one WebSocket message."""
        ...

    def can_write_raw(self) -> bool:
        """Whether ready-made frames may be written to the transport directly."""
        ...

    def close_feed(self, code: int, reason: str) -> None:
        """The feed ended: close the socket with ``code`` and ``reason``."""
        ...


class TrafficView(Protocol):
    """What the HTTP API reads of the traffic forecasts
    (:class:`sprawl.forecast.feed.TrafficFeed`)."""

    def load_view(self) -> dict[str, Any]:
        """``GET /v1/cluster/load``: present and predicted load per node, partition and topic."""
        ...

    def topic_view(self, topic: str, partitions: int) -> dict[str, Any]:
        """The ``predicted_*`` fields of a topic's description."""
        ...

    def dashboard_view(self, topics: Iterable[str]) -> dict[str, Any]:
        """Per topic, the forecast band of this node's published rate."""
        ...

    def anomalies(self) -> list[dict[str, Any]]:
        """The latest anomaly events, newest first."""
        ...

    def member_fields(self) -> dict[str, dict[str, Any]]:
        """Per node id, the ``predicted_load*`` fields of its member entry."""
        ...


# --- cluster ------------------------------------------------------------------------------


class ControlView(Protocol):
    """What the data plane (:mod:`sprawl.cluster.dataplane` and its parts) needs
    of the cluster control (:class:`sprawl.cluster.control.ClusterControl`):
    the applied metadata, who the controller is, and proposals."""

    #: The cluster metadata as applied on this node.
    metadata: Metadata
    #: Seconds a node may be dead before its replicas are replaced.
    dead_grace: float

    @property
    def leader_name(self) -> str:
        """The Raft leader's node id ("" when none is known)."""
        ...

    @property
    def is_leader(self) -> bool:
        """Whether this node is the Raft leader (the controller)."""
        ...

    def is_voter(self, raft_id: int) -> bool:
        """Whether ``raft_id`` is a voter of the Raft configuration this node uses."""
        ...

    def is_foreign(self, view: dict[str, Any]) -> bool:
        """Whether a gossip member view belongs to another Raft cluster."""
        ...

    def propose(self, cmd: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Propose a metadata command; fires with its result once applied here."""
        ...

    def watch_topics(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after each change to a topic (or its
        placement) is applied here, broker included."""
        ...


class Members(Protocol):
    """What the cluster needs of gossip (:class:`sprawl.gossip.udp.GossipNode`): who is up."""

    def member_views(self) -> list[dict[str, Any]]:
        """Every known member as a JSON-able view (``id``, ``state``, ``peer``, ``http``, ...)."""
        ...

    def live_member_ids(self) -> list[str]:
        """Node ids of the members alive or suspect."""
        ...


class Gossip(Members, Protocol):
    """What the cluster control needs of gossip besides who is up: its member
    events, and the metadata this node gossips (its cluster id)."""

    #: Called with every member event (join, alive, suspect, dead, left, ...).
    listeners: list[Callable[[MemberEvent], None]]

    def set_meta(self, **fields: Any) -> None:
        """Change fields of the metadata this node gossips."""
        ...


# --- storage: what the damage map (sprawl/storage/integrity.py) is handed by the parts above


class DamageRepair(Protocol):
    """How a cluster node mends a damaged range of a replicated partition
    (:class:`sprawl.cluster.repair.Repairs`)."""

    def repair(self, topic: Topic, partition: int, e: DamageEntry) -> Deferred[bool]:
        """Rewrite ``e`` from a healthy replica; fires True once the range holds."""
        ...

    def read_elsewhere(
        self, topic: Topic, partition: int, start: int, limit: int
    ) -> Deferred[list[Record]] | None:
        """A read of damage this node cannot rewrite, served by a healthy replica (None: none can)."""
        ...


class ScrubProgress(Protocol):
    """The background scrub as ``GET /v1/damage`` and the metrics show it
    (:class:`sprawl.storage.scrub.Scrubber`)."""

    @property
    def enabled(self) -> bool:
        """Whether the scrub runs (a rate above 0)."""
        ...

    @property
    def progress(self) -> float:
        """Fraction of the current pass done (1 between passes)."""
        ...

    def view(self) -> dict[str, Any]:
        """The scrub's JSON view."""
        ...

    def run_now(self) -> int:
        """Start a pass now (or after the one running); the pass count it ends at."""
        ...


# --- delivery: what an SSE stream (sprawl/delivery/streams.py) needs ------------------------


class StreamSource(Protocol):
    """The broker as an SSE stream reads it (:class:`sprawl.pubsub.Broker`; a fake in tests)."""

    @property
    def topics(self) -> dict[str, Topic]:
        """The topics on this node, by name."""
        ...

    @property
    def metrics(self) -> NodeMetrics | None:
        """The node's metrics (None in tests without them)."""
        ...

    def read(
        self, topic: Topic, partition: int, start: int, limit: int, *, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        """Visible records from ``start``: at most ``limit`` and about ``max_bytes``."""
        ...

    def watch(self, name: str, partition: int, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` whenever the partition's high watermark moves; returns the unwatch."""
        ...


class StreamSink(Protocol):
    """The HTTP request an SSE stream writes to (twisted.web's ``Request``; a fake in tests)."""

    def setHeader(self, name: bytes, value: bytes) -> None:
        """Set a response header."""
        ...

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register the stream as the connection's (push) producer."""
        ...

    def unregisterProducer(self) -> None:
        """Unregister it."""
        ...

    def write(self, data: bytes) -> None:
        """Write to the response body."""
        ...

    def finish(self) -> None:
        """End the response."""
        ...


# --- peer: what the peer channel (sprawl/peer/) needs of the reactor -------------------------


class PeerReactor(Clock, Protocol):
    """The reactor as the peer channel uses it: time, and outbound TCP or TLS
    connections (``IReactorTCP``/``IReactorSSL``)."""

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> Any:
        """Connect to ``host:port`` with ``factory`` (from ``bindAddress`` when given)."""
        ...

    def connectSSL(
        self,
        host: str,
        port: int,
        factory: Any,
        contextFactory: Any,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> Any:
        """Connect over TLS with ``contextFactory``'s options (from ``bindAddress`` when given)."""
        ...
