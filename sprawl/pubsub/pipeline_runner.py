"""Derived-topic pipelines, the adapter: runs one pipeline's pure core
(:mod:`sprawl.pubsub.pipelines`) on this node.

**Position.**  A pipeline's position is a consumer group on its source topic,
``pipeline.NAME`` (:func:`group_name`), so it is committed, checkpointed to followers
and taken over on failover exactly like any group's (see
:mod:`sprawl.cluster.group_routes`): the runner leases only from the partitions this
node owns the group state of -- each partition's leader in a cluster -- and acks a
batch only once its target records are published.

**No loss, no duplicates.**  A crash or a leader change between the publish and the
ack re-delivers the batch; re-publishing it writes the same derived ids
(:func:`~sprawl.pubsub.pipelines.derived_id`), which the target's dedup window drops.

Not wired yet: who declares a pipeline (the metadata, ``/v1/pipelines``) creates its
group and starts a runner; see docs/architecture.md.
"""

from __future__ import annotations

from twisted.logger import Logger

from sprawl.errors import NotFound
from sprawl.log.record import Record
from sprawl.pubsub.broker import Broker
from sprawl.pubsub.pipelines import PipelineCore, PipelineSpec

log = Logger()


def group_name(pipeline: str) -> str:
    """The consumer group on the source topic that holds a pipeline's position."""
    return f"pipeline.{pipeline}"


class PipelineRunner:
    """One pipeline on this node (see the module docstring)."""

    def __init__(self, broker: Broker, spec: PipelineSpec, *, batch: int = 500, acks: str = "quorum") -> None:
        self.broker = broker
        self.spec = spec
        self.core = PipelineCore(spec)
        self.batch = batch
        self.acks = acks
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
        got = await self.broker.pull(source, g, self.batch, wait_ms)
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
        if out:
            target = await self.broker.ensure_topic(self.spec.target)
            links = self.broker.links
            publish = links.publisher.publish if links.publisher is not None else self.broker.publish
            await publish(target, out, self.acks)
        await self.broker.ack(source, g, [dv.ack_id for dv, _ in got])
        self.read_total += len(got)
        self.written_total += len(out)
        return len(got)
