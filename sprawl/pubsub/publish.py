"""The publish path: sizes, the write checks, per-partition backlog, dedup,
the LMDB commit and the answer of what is stored where."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from twisted.internet.defer import Deferred, DeferredList, succeed

from sprawl.errors import (
    InsufficientStorage,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
)
from sprawl.log.record import RECORD_OVERHEAD, Record
from sprawl.log.spill import hard_limit
from sprawl.pubsub.core import first_failure
from sprawl.pubsub.memory import MemoryBudget
from sprawl.storage import keys, timeline
from sprawl.storage.lmdb import Op
from sprawl.topics import Topic

_json_encode = msgspec.json.encode


ACKS = ("quorum", "leader", "none")


@dataclass
class PublishResult:
    """What a publish acknowledges, and where the data is."""

    offsets: list[int]
    ids: list[str]
    partitions: list[int]
    duplicates: list[bool]
    stored: str  # "lmdb" (fsynced), "memory" (ephemeral) or "pending" (acks=none)


class Publishing(MemoryBudget):
    """Appends new records: :meth:`publish` and its checks."""

    def check_writable(self) -> None:
        """Refuse writes the node cannot honour: stopping, storage broken or full, backlog."""
        if self.stopping:
            raise Unavailable("node is stopping", code="stopping")
        if self.store.failed is not None:
            raise Unavailable(f"storage failed: {self.store.failed}", code="storage_failed")
        limit = self.disk_hard_limit
        if self.store.used_bytes > limit:
            why = ""
            if self.tier is not None and self.tier.failing:
                why = f" (S3 uploads are failing: {self.tier.last_error})"
            raise InsufficientStorage(
                f"disk budget exceeded: LMDB uses {self.store.used_bytes} of {limit} bytes{why}; "
                "nothing was written (raise --disk-budget, set retention, or fix the S3 tier)",
                code="disk_budget_exceeded",
            )
        if self.store.pending_bytes > self.max_pending_bytes:
            raise Overloaded("too much unflushed data; retry shortly", retry_after=1)

    @property
    def disk_hard_limit(self) -> int:
        """LMDB bytes past which publishes are refused (the budget, or more with S3 behind it)."""
        c = self.config
        return hard_limit(c.disk_budget, self.tier is not None, c.disk_hard_limit)

    @staticmethod
    def check_message_sizes(records: list[Record], max_bytes: int) -> None:
        """413 when a message (payload, key and headers; a pipeline's origin headers
        aside: :attr:`Record.limited_bytes`) exceeds ``max_bytes``."""
        for r in records:
            if r.size - RECORD_OVERHEAD > max_bytes and r.limited_bytes > max_bytes:
                raise _too_large(r, max_bytes)

    def publish(
        self, topic: Topic, records: list[Record], acks: str, partition: int | None = None
    ) -> Deferred[PublishResult]:
        """Append ``records`` (offsets unassigned) to ``topic`` -- all of them to
        ``partition`` when given (the cluster routed them), else by key.

        Fires once the ``acks`` level holds: for a durable topic with acks
        ``leader``/``quorum``, after the records are fsynced in LMDB (with one
        node, the quorum is this node); for an ephemeral topic, once they are
        in memory; with ``acks=none``, at once.
        """
        self.check_writable()
        cfg = topic.config
        max_bytes = cfg.max_message_bytes
        message_bytes = 0
        any_id = False
        overhead = RECORD_OVERHEAD
        for r in records:
            size = r.size - overhead  # payload, key and headers
            if size > max_bytes and r.limited_bytes > max_bytes:  # (a pipeline's origin aside)
                raise _too_large(r, max_bytes)
            message_bytes += size
            if r.id is not None:
                any_id = True
        if not cfg.durable:
            unstored = sum(lg.hot_bytes for t in self.topics.values() for lg in t.logs)
            if unstored > self.config.memory_budget * 2:
                raise Overloaded("memory budget exceeded; ephemeral spill is behind", retry_after=1)
        now = self.now_ms()
        dedup = topic.dedup
        n = len(records)
        offsets = [0] * n
        parts = [0] * n
        dup = [False] * n
        by_part: dict[int, list[Record]] = {}
        batch_ids: dict[str, int] = {}
        ids = self._ids
        fast = not any_id and (len(topic.logs) == 1 or partition is not None)
        if fast:
            # The common case: one partition, no client ids, so no dedup.
            prefix, base = ids.prefix, ids.n
            for k, r in enumerate(records, base + 1):
                r.timestamp = now
                r.id = f"{prefix}{k:x}"
            ids.n = base + n
            by_part[partition or 0] = records
            if partition:
                parts = [partition] * n
        for i, r in enumerate(records if not fast else ()):
            r.timestamp = now
            if r.id is None:
                r.id = ids.next()
            else:
                hit = dedup.lookup(r.id, now)
                if hit is None and r.id in batch_ids:
                    j = batch_ids[r.id]
                    hit = (parts[j], -1 - j)
                if hit is not None:
                    parts[i], offsets[i] = hit
                    dup[i] = True
                    continue
                batch_ids[r.id] = i
            p = topic.partition_for(r.key) if partition is None else partition
            parts[i] = p
            by_part.setdefault(p, []).append(r)
        ops: list[Op] = []
        nbytes = 0
        waits: list[Deferred[None]] = []
        uid = cfg.uid
        name = cfg.name
        if cfg.durable:
            self.check_backlog(uid, name, by_part)
        put_records = self.store.put_records
        sizes: dict[int, int] = {}
        added = 0
        for p, recs in by_part.items():
            lg = topic.logs[p]
            before = lg.hot_records_memory
            changed = lg.append(recs, now)
            added += lg.hot_records_memory - before
            if cfg.durable:
                ops.extend(put_records(uid, p, recs))
                for s in changed:
                    ops.append(
                        ("p", "segments", keys.segment_key(uid, p, s.base), _json_encode(s.to_tuple()))
                    )
                # (one partition: every record's size is its message bytes and the overhead)
                size = message_bytes + n * overhead if fast else sum(r.size for r in recs)
                sizes[p] = size
                nbytes += size
        self.touched.touch(name)
        self.note_hot_added(added)
        if fast:
            first = records[0].offset
            offsets = list(range(first, first + n))
            ndup = 0
        else:
            for i, r in enumerate(records):
                if not dup[i]:
                    offsets[i] = r.offset
                elif offsets[i] < 0:
                    offsets[i] = records[-1 - offsets[i]].offset
            for rid, i in batch_ids.items():
                r = records[i]
                dedup.remember(rid, r.partition, r.offset, now)
            ndup = sum(dup)
        self.published_total += n - ndup
        self.published_bytes_total += nbytes
        self.deduplicated_total += ndup
        if self.metrics is not None:
            self.metrics.published(name, n - ndup, message_bytes)
        if cfg.durable:
            if ops:
                backlog = self.backlog
                for p, size in sizes.items():
                    backlog[(uid, p)] = backlog.get((uid, p), 0) + size
                tl = timeline.TIMELINE
                if tl is not None:
                    for recs in by_part.values():
                        if timeline.READ_AT:
                            tl.mark_at("read", timeline.READ_AT, recs[0].offset, recs[-1].offset + 1)
                        tl.mark("pub", recs[0].offset, recs[-1].offset + 1)
                # (urgent: a client waits for it -- it ends a metadata apply's hold,
                # LmdbStore.hold, rather than wait behind it)
                # (a plain call, no Deferred: the backlog is released either way, then
                # the commit is settled or its waiters failed -- once it is fsynced)
                self.store.write_then(
                    ops,
                    nbytes,
                    self._written,
                    name,
                    {p: recs[-1].offset + 1 for p, recs in by_part.items()},
                    uid,
                    sizes,
                    wal=True,
                    urgent=True,
                )
        else:
            for p in by_part:
                self.notify(name, p)
        if acks == "none":
            stored = "pending" if cfg.durable else "memory"
        else:
            stored = "lmdb" if cfg.durable else "memory"
        result = PublishResult(offsets, [r.id or "" for r in records], parts, dup, stored)
        if cfg.durable and acks != "none":
            # Wait for every offset in the answer (duplicates too) to be stored.
            if fast:  # one partition, the offsets in order: its waiter fires with the result
                return self.wait_stored(name, parts[0], offsets[-1], result)
            high: dict[int, int] = {}
            for p, o in zip(parts, offsets, strict=False):
                high[p] = max(high.get(p, -1), o)
            if len(high) == 1:  # (one partition): no DeferredList on the way
                for p, o in high.items():
                    return self.wait_stored(name, p, o, result)
            for p, o in high.items():
                waits.append(self.wait_stored(name, p, o))
        if not waits:
            return succeed(result)
        dl: Deferred[Any] = DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)
        dl.addCallback(lambda _: result)
        dl.addErrback(first_failure)
        return dl  # type: ignore[return-value]

    def check_backlog(self, uid: int, name: str, partitions: Iterable[int]) -> None:
        """429 ``backpressure`` when a partition's unflushed backlog is over its limit."""
        backlog = self.backlog
        limit = self.partition_backlog
        for p in partitions:
            if backlog.get((uid, p), 0) > limit:
                if self.metrics is not None:
                    self.metrics.rejected_requests.labels("backpressure").inc()
                raise Overloaded(
                    f"partition {name}/{p} has more than {limit} bytes waiting for storage; "
                    "retry after the Retry-After delay",
                    retry_after=1,
                    code="backpressure",
                )

    def _written(
        self, result: object, name: str, ends: dict[int, int], uid: int, sizes: dict[int, int]
    ) -> None:
        """A publish's write is done: its backlog released, then the partitions'
        stored ends moved (:meth:`_committed`), or every waiter failed if it failed."""
        self._release_backlog(uid, sizes)
        self._committed_or_failed(result, name, ends, uid)

    def _release_backlog(self, uid: int, sizes: dict[int, int]) -> None:
        backlog = self.backlog
        for p, size in sizes.items():
            left = backlog.get((uid, p), 0) - size
            if left > 0:
                backlog[(uid, p)] = left
            else:
                backlog.pop((uid, p), None)


def _too_large(r: Record, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"message of {r.size - RECORD_OVERHEAD} bytes (payload {len(r.payload)}, key and headers "
        f"{r.size - RECORD_OVERHEAD - len(r.payload)}) exceeds max_message_bytes {max_bytes}",
        code="message_too_large",
    )
