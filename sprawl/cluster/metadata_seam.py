"""The metadata seam of :class:`~sprawl.cluster.control.ClusterControl`
(the same shape as :class:`~sprawl.cluster.local.LocalControl`): topic and
group definitions proposed through Raft.  The caller is answered once the
entry is committed *and* applied on this node, broker included.
:class:`MetadataSeam` is a part of ``ClusterControl`` (its state lives there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from sprawl.cluster.metadata import TOPIC_FIELDS, Metadata
from sprawl.cluster.placement import replicas

if TYPE_CHECKING:
    from sprawl.cluster.voter_control import VoterControl
    from sprawl.delivery.groups import ConsumerGroup
    from sprawl.pubsub import Broker
    from sprawl.topics import Topic


class MetadataSeam:
    """Topic and group changes as Raft proposals (a part of ``ClusterControl``)."""

    broker: Broker
    metadata: Metadata
    voter_control: VoterControl
    _creating: dict[str, defer.Deferred[Any]]

    if TYPE_CHECKING:

        async def _propose_checked(self, cmd: dict[str, Any]) -> dict[str, Any]: ...

    def _topic_command(self, name: str, body: dict[str, Any], if_absent: bool = False) -> dict[str, Any]:
        existing = self.broker.topics.get(name)
        cfg = self.broker.topic_config_from(
            name, body, existing.config if existing and not if_absent else None
        )
        config = {k: getattr(cfg, k) for k in TOPIC_FIELDS}
        nodes = self.voter_control.live_nodes()
        old = self.metadata.placement.get(name, [])
        placement = [
            list(old[p]["replicas"]) if p < len(old) else replicas(name, p, nodes, cfg.replication_factor)
            for p in range(cfg.partitions)
        ]
        return {
            "op": "put_topic",
            "name": name,
            "config": config,
            "placement": placement,
            "if_absent": if_absent,
        }

    def put_topic(self, name: str, body: dict[str, Any]) -> defer.Deferred[tuple[Topic, bool]]:
        """Create or update a topic through Raft; fires with (topic, created)."""
        cmd = self._topic_command(name, body)

        async def run() -> tuple[Topic, bool]:
            result = await self._propose_checked(cmd)
            return self.broker.get_topic(name), bool(result["created"])

        return defer.ensureDeferred(run())

    def ensure_topic(self, name: str) -> defer.Deferred[Topic]:
        """The topic, auto-created (through Raft) with defaults when allowed."""
        t = self.broker.topics.get(name)
        if t is not None:
            return defer.succeed(t)
        if not self.broker.config.auto_create_topics:
            return defer.maybeDeferred(self.broker.get_topic, name)  # the 404
        pending = self._creating.get(name)
        if pending is None:
            cmd = self._topic_command(name, {}, if_absent=True)

            async def run() -> Failure | None:
                try:
                    await self._propose_checked(cmd)
                    return None
                except Exception:
                    return Failure()
                finally:
                    self._creating.pop(name, None)

            # Concurrent publishes to a new topic share one proposal.
            pending = self._creating[name] = defer.ensureDeferred(run())
        waiter: defer.Deferred[None] = defer.Deferred()

        def settle(outcome: Failure | None) -> Failure | None:
            if outcome is not None:
                waiter.errback(outcome)
            else:
                waiter.callback(None)
            return outcome

        pending.addCallback(settle)
        return waiter.addCallback(lambda _: self.broker.get_topic(name))

    def delete_topic(self, name: str) -> defer.Deferred[None]:
        """Delete a topic everywhere through Raft."""
        self.broker.get_topic(name)  # 404 before proposing

        async def run() -> None:
            await self._propose_checked({"op": "delete_topic", "name": name})

        return defer.ensureDeferred(run())

    def put_group(
        self, topic: Topic, group: str, body: dict[str, Any]
    ) -> defer.Deferred[tuple[ConsumerGroup, bool]]:
        """Create or update a consumer group through Raft; fires with (group, created)."""
        g = topic.groups.get(group)
        cfg = self.broker.group_config_from(topic.name, group, body, g.config if g else None)

        async def run() -> tuple[ConsumerGroup, bool]:
            result = await self._propose_checked(
                {"op": "put_group", "topic": topic.name, "group": group, "config": cfg.to_dict()}
            )
            t = self.broker.get_topic(topic.name)
            return self.broker.get_group(t, group), bool(result["created"])

        return defer.ensureDeferred(run())

    def delete_group(self, topic: Topic, group: str) -> defer.Deferred[None]:
        """Forget a consumer group everywhere through Raft."""
        self.broker.get_group(topic, group)

        async def run() -> None:
            await self._propose_checked({"op": "delete_group", "topic": topic.name, "group": group})

        return defer.ensureDeferred(run())
