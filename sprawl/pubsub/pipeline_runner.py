"""Derived-topic pipelines, the adapter: runs one pipeline's pure core
(:mod:`sprawl.pubsub.pipelines`) on this node.

**Position.**  A pipeline's position is a consumer group on its source topic,
``pipeline.NAME`` (:func:`group_name`), so it is committed, checkpointed to followers
and taken over on failover exactly like any group's (see
:mod:`sprawl.cluster.group_routes`): the runner leases only from the partitions this
node owns the group state of -- each partition's leader in a cluster -- and acks a
batch only once its target records are published.

**No loss, no duplicates.**  A crash or a leader change between the publish and the
ack re-delivers the batch (a failed publish hands it back at once: a nack); re-publishing it writes the same derived ids
(:func:`~sprawl.pubsub.pipelines.derived_id`), which the target's dedup window drops.

Each target record goes to the partition :func:`~sprawl.pubsub.pipelines.target_partition`
names (its key's, else its derived id's), so a re-run meets the first copy in the same
partition's dedup window.  The declaration (``PUT /v1/pipelines/P``, a Raft command that
also creates the group) is in :mod:`sprawl.cluster.metadata`; the per-node loop that runs
the pipelines whose source partitions this node leads is :mod:`sprawl.cluster.pipeline_loop`.
"""

from __future__ import annotations

from twisted.logger import Logger

from sprawl.delivery.groups import ConsumerGroup
from sprawl.errors import NotFound
from sprawl.log.record import DEFAULT_READ_BYTES, Record
from sprawl.pubsub.broker import Broker
from sprawl.pubsub.pipelines import PipelineCore, PipelineSpec, target_partition
from sprawl.topics import Topic

log = Logger()


def group_name(pipeline: str) -> str:
    """The consumer group on the source topic that holds a pipeline's position."""
    return f"pipeline.{pipeline}"


class PipelineRunner:
    """One pipeline on this node (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        spec: PipelineSpec,
        *,
        batch: int = 500,
        acks: str | None = None,
        max_bytes: int = DEFAULT_READ_BYTES,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.core = PipelineCore(spec)
        self.batch = batch
        #: The publish durability (the definition's unless given).
        self.acks = acks if acks is not None else spec.acks
        #: At most this many source bytes are leased per round (at least one record):
        #: the bound of what a round holds in memory.
        self.max_bytes = max_bytes
        self.group = group_name(spec.name)
        #: Source records looked at, target records written (duplicates included).
        self.read_total = 0
        self.written_total = 0

    def lag(self) -> int | None:
        """Source messages not yet handled (None: the source or the group is missing)."""
        t = self.broker.topics.get(self.spec.source)
        g = t.groups.get(self.group) if t is not None else None
        return None if t is None or g is None else g.lag(t.high_watermarks())

    async def step(self, wait_ms: int = 0) -> int:
        """One round: lease up to :attr:`batch` source records (waiting up to ``wait_ms``),
        publish what the core derives from them to the target, then ack them.  Returns
        how many source records were handled (0: nothing to do).  A failed publish fails
        the round with nothing acked: the leases run out and the batch comes again."""
        source = self.broker.get_topic(self.spec.source)
        g = source.groups.get(self.group)
        if g is None:
            raise NotFound(f"pipeline group {self.group!r} is missing", code="group_not_found")
        got = await self.broker.pull(source, g, self.batch, wait_ms, max_bytes=self.max_bytes)
        if not got:
            return 0
        by_part: dict[int, list[Record]] = {}
        for dv, r in got:
            by_part.setdefault(dv.partition, []).append(r)
        out: list[Record] = []
        for p, recs in sorted(by_part.items()):
            recs.sort(key=lambda r: r.offset)
            derived, _ = self.core.step(p, recs[0].offset, recs)
            out += derived
        ack_ids = [dv.ack_id for dv, _ in got]
        if out:
            try:
                await self._publish(out)
            except BaseException:
                await self._release(source, g, ack_ids)
                raise
        await self.broker.ack(source, g, ack_ids)
        self.read_total += len(got)
        self.written_total += len(out)
        return len(got)

    async def _publish(self, out: list[Record]) -> None:
        """Publish the derived records, each to its :func:`target_partition`."""
        target = await self.broker.ensure_topic(self.spec.target)
        links = self.broker.links
        publish = links.publisher.publish if links.publisher is not None else self.broker.publish
        by_target: dict[int, list[Record]] = {}
        for r in out:
            by_target.setdefault(target_partition(r, len(target.logs)), []).append(r)
        for tp, recs in sorted(by_target.items()):
            await publish(target, recs, self.acks, tp)

    async def _release(self, source: Topic, g: ConsumerGroup, ack_ids: list[str]) -> None:
        """After a failed publish: hand the batch back at once (a nack without delay), so
        the next round retries it rather than waiting out the leases (the group's ack
        deadline, a minute).  Best effort: where the nack fails too (this node no longer
        leads the partition), the leases still run out."""
        try:
            await self.broker.nack(source, g, ack_ids, 0)
        except Exception as e:
            log.debug(
                "pipeline {pipeline}: releasing a failed round's leases failed: {err}",
                pipeline=self.spec.name,
                err=e,
            )
