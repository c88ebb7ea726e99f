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
partition's dedup window.  A record the target can never take is stalled on, skipped
or dead-lettered as the definition's ``on_reject`` says (:mod:`sprawl.pubsub.pipelines`;
:class:`PipelineStalled`, :attr:`PipelineRunner.stalled`).  The declaration (``PUT /v1/pipelines/P``, a Raft command that
also creates the group) is in :mod:`sprawl.cluster.metadata`; the per-node loop that runs
the pipelines whose source partitions this node leads is :mod:`sprawl.cluster.pipeline_loop`.
"""

from __future__ import annotations

from typing import NoReturn

from twisted.logger import Logger

from sprawl.delivery.groups import ConsumerGroup
from sprawl.errors import NotFound, SprawlError
from sprawl.log.record import DEFAULT_READ_BYTES, Record
from sprawl.pubsub.broker import Broker
from sprawl.pubsub.pipelines import (
    PipelineCore,
    PipelineSpec,
    dead_letter,
    derived_id,
    reject_reason,
    target_partition,
)
from sprawl.topics import Topic

log = Logger()


class PipelineStalled(SprawlError):
    """A round met a record its target can never take, and the pipeline stalls on it
    (``on_reject: stall``, or a dead-letter topic that cannot take it either)."""

    status = 409
    code = "pipeline_stalled"


def group_name(pipeline: str) -> str:
    """The consumer group on the source topic that holds a pipeline's position."""
    return f"pipeline.{pipeline}"


def _origin(r: Record) -> str:
    """Where a derived record comes from (its origin headers), for the logs and the stall."""
    h = r.headers or {}
    return f"source partition {h.get('sprawl-source-partition')} offset {h.get('sprawl-source-offset')}"


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
        #: Records the target can never take, left out (``on_reject: skip``) or written to
        #: the dead-letter topic (``dead-letter``; duplicates included).
        self.skipped_total = 0
        self.dead_lettered_total = 0
        #: Why the pipeline is stalled (the last round met a record the target can never
        #: take, ``on_reject: stall``), or None; cleared by the next round that goes on.
        self.stalled: str | None = None

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
        skipped = dead = 0
        if out:
            try:
                target = await self.broker.ensure_topic(self.spec.target)
                out, refused = self.core.rejects(out, target.config.max_message_bytes)
                dlq = None
                if refused and self.spec.on_reject == "dead-letter":
                    dlq = await self.broker.ensure_topic(str(self.spec.dead_letter_topic))
                letters = self._on_reject(refused, by_part, dlq)
                skipped = len(refused) - len(letters)
                await self._publish(target, out)
                if dlq is not None and letters:
                    await self._publish(dlq, letters)
                    dead = len(letters)
            except BaseException:
                await self._release(source, g, ack_ids)
                raise
        await self.broker.ack(source, g, ack_ids)
        self.stalled = None
        self.read_total += len(got)
        self.written_total += len(out)
        self.skipped_total += skipped
        self.dead_lettered_total += dead
        return len(got)

    def _on_reject(
        self, refused: list[tuple[Record, str]], sources: dict[int, list[Record]], dlq: Topic | None
    ) -> list[Record]:
        """What becomes of the records the target refused (``on_reject``): raises
        :class:`PipelineStalled` (``stall``, or a dead-letter topic that cannot take one
        either), logs and drops them (``skip``), or returns their dead-letter records."""
        if not refused:
            return []
        first, why = refused[0]
        if self.spec.on_reject == "skip":
            log.warn(
                "pipeline {pipeline}: skipped {n} record(s) the target cannot take (first: {where}: {why})",
                pipeline=self.spec.name,
                n=len(refused),
                where=_origin(first),
                why=why,
            )
            return []
        if self.spec.on_reject == "dead-letter" and dlq is not None:
            # Each derived record's id names its source record (partition, offset).
            by_id = {
                derived_id(self.spec.name, p, r.offset): (p, r) for p, recs in sources.items() for r in recs
            }
            letters = []
            for r, reason in refused:
                p, src = by_id[str(r.id)]
                letter = dead_letter(self.spec.name, p, src, reason)
                too_big = reject_reason(letter, dlq.config.max_message_bytes)
                if too_big is not None:
                    self._stall(
                        f"{_origin(r)}: {reason}; the dead-letter topic cannot take it either: {too_big}"
                    )
                letters.append(letter)
            return letters
        self._stall(f"{_origin(first)}: {why}")

    def _stall(self, why: str) -> NoReturn:
        self.stalled = why
        raise PipelineStalled(
            f"pipeline {self.spec.name!r} stalled at {why} (raise the topic's max_message_bytes, "
            'or declare on_reject "skip" or "dead-letter")'
        )

    async def _publish(self, target: Topic, out: list[Record]) -> None:
        """Publish records to ``target``, each to its :func:`target_partition`."""
        if not out:
            return
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
