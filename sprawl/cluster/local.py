"""A lone node's cluster parts: null objects over the local broker.

:class:`LocalControl` -- metadata changes applied straight to the broker,
without Raft: the seam the HTTP API uses for topic and group definitions.  A
real node uses :class:`sprawl.cluster.control.ClusterControl` (every change a
Raft proposal); in-process tests of the HTTP layer use this one.  Both pass
the same contract tests (tests/unit/cluster/test_metadata_seam.py).

:class:`LocalDataPlane` -- publishes, reads and consumer groups served by the
broker alone, where a cluster node has :class:`sprawl.cluster.dataplane.DataPlane`
(tests/unit/cluster/test_message_plane_seam.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed

from sprawl.errors import Unavailable
from sprawl.log.record import DEFAULT_READ_BYTES, Record

if TYPE_CHECKING:
    from sprawl.delivery.groups import ConsumerGroup, Delivery
    from sprawl.delivery.remote_feed import RemoteFeeds
    from sprawl.interfaces import Clock
    from sprawl.pubsub import Broker, PublishResult
    from sprawl.topics import Topic


class LocalControl:
    """Topic and group definitions changed directly on one broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def put_topic(self, name: str, body: dict[str, Any]) -> Deferred[tuple[Topic, bool]]:
        """Create or update a topic; fires with (topic, created)."""
        return self.broker.put_topic(name, body)

    def ensure_topic(self, name: str) -> Deferred[Topic]:
        """The topic, auto-created with defaults when allowed."""
        return self.broker.ensure_topic(name)

    def delete_topic(self, name: str) -> Deferred[None]:
        """Delete a topic and its data."""
        return self.broker.delete_topic(name)

    def put_group(
        self, topic: Topic, group: str, body: dict[str, Any]
    ) -> Deferred[tuple[ConsumerGroup, bool]]:
        """Create or update a group of an existing topic; fires with (group, created)."""
        return self.broker.put_group(topic, group, body)

    def delete_group(self, topic: Topic, group: str) -> Deferred[None]:
        """Forget a group."""
        return self.broker.delete_group(topic, group)

    def wait_topic(self, name: str) -> Deferred[None]:
        """Fires once a topic ``name`` is created (committed to LMDB); cancel to stop waiting."""
        return self.broker.new_topics.wait(name)

    def linearizable(self) -> Deferred[None]:
        """One node is always up to date with itself."""
        return succeed(None)


class LocalGroups:
    """Consumer groups of a lone node: every partition's group state is in its broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def describe(self, topic: Topic, group: str) -> dict[str, Any]:
        """The group's JSON description."""
        g = self.broker.get_group(topic, group)
        return g.describe(topic.high_watermarks())

    async def pull(
        self, topic: Topic, group: str, max_count: int, wait_ms: int, max_bytes: int = DEFAULT_READ_BYTES
    ) -> list[tuple[Delivery, Record]]:
        """Lease up to ``max_count`` messages (at most ``max_bytes``, at least one)."""
        g = self.broker.get_group(topic, group)
        return await self.broker.pull(topic, g, max_count, wait_ms, max_bytes=max_bytes)

    async def settle(
        self, topic: Topic, group: str, ack_ids: list[str], nack: bool, delay_ms: int = 0
    ) -> dict[str, str]:
        """Ack (or nack with ``delay_ms``) deliveries; {ack_id: refusal}."""
        g = self.broker.get_group(topic, group)
        if nack:
            return await self.broker.nack(topic, g, ack_ids, delay_ms)
        return await self.broker.ack(topic, g, ack_ids)

    async def extend(
        self, topic: Topic, group: str, ack_ids: list[str], extend_ms: int
    ) -> tuple[dict[str, str], dict[str, int]]:
        """Extend live leases to now + ``extend_ms``: ({ack_id: refusal}, {ack_id: new deadline})."""
        g = self.broker.get_group(topic, group)
        return self.broker.extend(topic, g, ack_ids, extend_ms)


class LocalDataPlane:
    """The data plane of a lone node: every partition is its broker's.

    The null object of :class:`sprawl.cluster.dataplane.DataPlane` (the seam
    :class:`sprawl.interfaces.MessagePlane`): publishes go straight to the
    broker, every read is served here (:meth:`read_source` is always None),
    and there is nothing to add to a partition's or the cluster's view.  Both
    pass the same contract tests (tests/unit/cluster/test_message_plane_seam.py).
    """

    #: No partition is held elsewhere: no remote feeds.
    feeds: RemoteFeeds | None = None

    def __init__(self, broker: Broker, clock: Clock) -> None:
        self.broker = broker
        self.clock = clock
        self.groups = LocalGroups(broker)

    def publish(
        self, topic: Topic, records: list[Record], acks: str, partition: int | None = None
    ) -> Deferred[PublishResult]:
        """Publish ``records`` to the broker (all of them to ``partition`` when given)."""
        if partition is None:
            return self.broker.publish(topic, records, acks)
        return self.broker.publish(topic, records, acks, partition)

    def read_source(self, topic: str, partition: int) -> str | None:
        """Always None: this node's broker holds every partition."""
        return None

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
        """Never asked (no partition has a read source): fails ``no_leader``."""
        return fail(Unavailable(f"no replica of {topic}/{partition} is known", code="no_leader"))

    def changed(self, name: str, p: int, seconds: float) -> Deferred[None]:
        """Fires when the partition's high watermark moves, or after ``seconds``."""
        d: Deferred[None] = Deferred()

        def fire() -> None:
            unwatch()
            if timer.active():
                timer.cancel()
            if not d.called:
                d.callback(None)

        unwatch = self.broker.watch(name, p, fire)
        timer = self.clock.callLater(max(seconds, 0.0), fire)
        return d

    def partition_view(self, topic: str, partition: int) -> dict[str, Any]:
        """Nothing to add: no replicas."""
        return {}

    def summary(self) -> dict[str, Any] | None:
        """Nothing to add to ``GET /v1/cluster``."""
        return None

    def summary_ready(self) -> Deferred[None]:
        """Nothing to judge first: fired."""
        return succeed(None)
