"""Reads: records from the hot tail, LMDB or the S3 tier (checked), and
the first offset at a time."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from sprawl.errors import Unavailable
from sprawl.log.partition import PartitionLog
from sprawl.log.record import Record, take_bytes
from sprawl.log.segments import Segment
from sprawl.pubsub.core import BrokerCore
from sprawl.topics import Topic


class Reads(BrokerCore):
    """The read side of the broker: :meth:`read` and :meth:`find_time`."""

    def read(
        self,
        topic: Topic,
        partition: int,
        start: int,
        limit: int,
        _attempt: int = 0,
        *,
        repair: bool = True,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        """Visible records from ``start`` (below the high watermark), hot tail,
        S3 or LMDB, checked: a damaged range met fails the read with
        ``corrupt_record`` -- never a short read.  In a cluster (``repair``)
        the range is first repaired from a healthy replica, or the read served
        by one.  At most ``limit`` records and, with ``max_bytes``, at most
        that many bytes of :attr:`Record.size` -- but always at least one
        record when there is one, so a record larger than the budget is still
        read."""
        lg = topic.logs[partition]
        if start < lg.log_start:
            start = lg.log_start
        got = lg.read_hot(start, limit)
        if got is not None:
            return succeed(got if max_bytes is None else take_bytes(got, max_bytes))

        def again() -> Deferred[list[Record]]:
            return self.read(topic, partition, start, limit, _attempt + 1, repair=repair, max_bytes=max_bytes)

        ig = self.integrity
        how = ig.how(topic, partition, start, limit, again, _attempt, repair)

        seg = remote_segment(lg, start)
        if seg is None:
            hole = lg.remote_hole()
            if hole is not None and hole[0] <= start < hole[1]:
                return fail(
                    Unavailable(
                        f"offsets {hole[0]}-{hole[1] - 1} of {topic.name}/{partition} are not readable on "
                        "this replica yet (its list of the partition's remote segments is behind); retry shortly",
                        code="catching_up",
                    )
                )
        end = min(lg.hot_start, lg.high_watermark, lg.stored_end)
        hi = min(seg.last + 1 if seg is not None else end, start + limit) - 1
        known = self.integrity.known(topic, partition, start, hi) if hi >= start else None
        if known is not None:
            return ig.meet(known, how)
        if seg is not None:
            try:
                d = self._read_remote(topic, lg, seg, start, limit)
            except Exception:
                return fail()
            if max_bytes is not None:
                d.addCallback(take_bytes, max_bytes)
            return d.addErrback(ig.read_failed, how)
        d = self.store.read_records(
            topic.config.uid,
            partition,
            start,
            limit,
            end,
            self.integrity.dense(topic, lg, start, end),
            max_bytes,
        )

        def fill(recs: list[Record]) -> Any:
            if (not recs or recs[0].offset > start) and remote_segment(lg, start) is not None:
                # The segment moved to S3 while this read was on its way to LMDB.
                return self.read(topic, partition, start, limit, max_bytes=max_bytes)
            if not recs and start < lg.hot_start:
                # A gap below the hot tail (an ephemeral tail lost in a
                # restart): nothing is stored there, continue at the tail.
                tail = lg.read_hot(lg.hot_start, limit) or []
                return tail if max_bytes is None else take_bytes(tail, max_bytes)
            if max_bytes is not None:
                # Go on into the hot tail only if the stored range was read to
                # its end: a scan the budget stopped must not skip past it.
                whole = not recs or recs[-1].offset + 1 >= end
                kept = take_bytes(recs, max_bytes)  # (the scan stops past the budget, not at it)
                room = max_bytes - sum(r.size for r in kept)
                if not whole or len(kept) < len(recs) or len(kept) >= limit or room <= 0:
                    return kept
                more = lg.read_hot(
                    max(lg.hot_start, kept[-1].offset + 1 if kept else start), limit - len(kept)
                )
                if more:
                    kept.extend(_fit(more, room))
                return kept
            if len(recs) < limit:
                more = lg.read_hot(
                    max(lg.hot_start, recs[-1].offset + 1 if recs else start), limit - len(recs)
                )
                if more:
                    recs.extend(more)
            return recs

        d.addCallback(fill)
        d.addErrback(ig.read_failed, how)
        return d

    def _read_remote(
        self, topic: Topic, lg: PartitionLog, seg: Segment, start: int, limit: int
    ) -> Deferred[list[Record]]:
        if self.tier is None:
            raise Unavailable(
                f"offsets {seg.base}-{seg.last} of {topic.name}/{lg.partition} are in S3, "
                "and the S3 tier is not configured on this node",
                code="s3_tier_disabled",
            )
        return self.tier.read(seg, lg.partition, start, limit)

    def find_time(self, topic: Topic, partition: int, ts_ms: int, _attempt: int = 0) -> Deferred[int]:
        """The first offset whose timestamp is at or after ``ts_ms`` (a damaged
        range on the way fails it with ``corrupt_record``, as a read)."""
        lg = topic.logs[partition]
        seg = lg.segment_for_time(ts_ms)
        if seg is None:
            return succeed(lg.high_watermark)
        if lg.hot_start <= seg.base:
            # The whole segment is in memory.  (Otherwise its start is in
            # LMDB or S3, and the hot tail would skip what lies below it.)
            for r in lg.hot:
                if r.timestamp >= ts_ms and r.offset >= seg.base:
                    return succeed(r.offset)
        uid = topic.config.uid
        end = min(lg.stored_end, seg.last + 1)
        if seg.remote is not None:
            return self._find_time_remote(topic, lg, seg, ts_ms)

        dense = self.integrity.dense(topic, lg, seg.base, end)

        def scan() -> int:
            start = seg.base
            while start < end:
                part = [(max(lo, start), hi) for lo, hi in dense if hi >= start]
                recs = self.store.read_records_sync(uid, partition, start, 1000, end, part)
                if not recs:
                    break
                for r in recs:
                    if r.timestamp >= ts_ms:
                        return r.offset
                start = recs[-1].offset + 1
            return end

        def again() -> Deferred[int]:
            return self.find_time(topic, partition, ts_ms, _attempt + 1)

        d: Deferred[int] = self.store.call_reader(scan)
        how = self.integrity.how(topic, partition, seg.base, 0, again, _attempt, repair=True)
        return d.addErrback(self.integrity.read_failed, how)

    def _find_time_remote(self, topic: Topic, lg: PartitionLog, seg: Segment, ts_ms: int) -> Deferred[int]:
        """``find_time`` inside a segment held in S3 (reads it chunk by chunk)."""

        def step(start: int) -> Any:
            if start > seg.last:
                return start
            d = self._read_remote(topic, lg, seg, start, 1_000_000)

            def got(recs: list[Record]) -> Any:
                for r in recs:
                    if r.timestamp >= ts_ms:
                        return r.offset
                return step(recs[-1].offset + 1) if recs else seg.last + 1

            return d.addCallback(got)

        return step(seg.base)


def _fit(recs: list[Record], room: int) -> list[Record]:
    """The longest prefix of ``recs`` within ``room`` bytes (possibly none)."""
    total = 0
    for i, r in enumerate(recs):
        total += r.size
        if total > room:
            return recs[:i]
    return recs


def remote_segment(lg: PartitionLog, offset: int) -> Segment | None:
    """The S3 segment holding ``offset``, if it lies below the LMDB range (remote segments come first)."""
    for s in lg.segments:
        if s.remote is None:
            return None
        if s.base <= offset <= s.last:
            return s
        if offset < s.base:
            return None
    return None
