"""The upkeep of the S3 tier's bucket: the bucket made on first use, a
leader's bounded sweep of a partition's prefix for orphans (uploads no
shared list names), the adoption of this node's objects of the old
per-node layout into the shared list, and object deletes (retried).
:class:`TierUpkeep` is a part of :class:`~sprawl.storage.tiering.S3Tier`
(its state lives there; see that module for when objects may go).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.errors import SprawlError
from sprawl.interfaces import Clock
from sprawl.log.manifest import RemoteObject, RemoteState, parse_key, partition_key_prefix
from sprawl.log.partition import PartitionLog
from sprawl.storage.s3 import S3Client, S3Failure

if TYPE_CHECKING:
    from collections import OrderedDict
    from collections.abc import Iterable

    from sprawl.metrics import NodeMetrics
    from sprawl.storage.remote_log import RemoteLog
    from sprawl.storage.segment_format import SegmentIndex
    from sprawl.storage.tier_reads import ByteLRU
    from sprawl.topics import Topic

#: The log lines keep the namespace they had before the module was split out.
log = Logger(namespace="sprawl.storage.tiering")

#: Seconds between retries of object deletes that failed.
DELETE_RETRY_SECONDS = 30.0
#: Keys listed per sweep of a partition's prefix (one page; the next sweep goes on from there).
SWEEP_PAGE = 1000
#: The longest pause between two sweeps of a partition this node leads.
SWEEP_MAX_SECONDS = 300.0


class TierUpkeep:
    """The bucket's upkeep in :class:`~sprawl.storage.tiering.S3Tier`."""

    client: S3Client
    clock: Clock
    metrics: NodeMetrics | None
    cache: ByteLRU
    _indexes: OrderedDict[str, SegmentIndex]
    _pending_deletes: list[str]
    _delete_retry_at: float
    deleted_objects: int
    bucket_ready: bool
    orphan_grace: float
    _sweep_cursor: dict[tuple[int, int], str]
    sweeps: int
    orphans_deleted: int
    adopted: int

    async def _ensure_bucket(self) -> None:
        if not self.bucket_ready:
            created = await self.client.ensure_bucket()
            self.bucket_ready = True
            if created:
                log.info("created S3 bucket {bucket}", bucket=self.client.settings.bucket)

    async def _adopt(
        self, t: Topic, lg: PartitionLog, epoch: int, objs: list[RemoteObject], remote_log: RemoteLog
    ) -> None:
        """Name this node's own uploads of the old per-node layout in the
        shared list (as the leader), so every replica reads them."""
        try:
            await remote_log.add(t, lg.partition, epoch, objs)
        except SprawlError as e:
            raise S3Failure(
                f"adopting segments of the old layout was refused ({e.code}): {e.message}"
            ) from None
        self.adopted += len(objs)
        log.info(
            "adopted {n} segment(s) of {topic}/{partition} ({base}-{last}) written under this node's "
            "old keys into the shared remote list",
            n=len(objs),
            topic=t.name,
            partition=lg.partition,
            base=objs[0].base,
            last=objs[-1].last,
        )

    async def _sweep(self, t: Topic, lg: PartitionLog, epoch: int, remote_log: RemoteLog) -> None:
        """One bounded page of the partition's prefix: delete the objects no
        shared list names that are older than the grace age -- of an older
        incarnation of the topic name, or of this or an earlier leader epoch
        (an upload whose commit never came).  Never an object of the old
        per-node layout (its node deletes it) or of a later epoch."""
        uid, p = t.config.uid, lg.partition
        await self._ensure_bucket()
        prefix = partition_key_prefix(self.client.settings.prefix, t.name, p)
        page, more = await self.client.list_page(prefix, self._sweep_cursor.get((uid, p)), SWEEP_PAGE)
        self.sweeps += 1
        if more and page:
            self._sweep_cursor[(uid, p)] = page[-1][0]
        else:
            self._sweep_cursor.pop((uid, p), None)
        inc = remote_log.incarnation(t)
        for key, modified in page:
            info = parse_key(key)
            if info is None or info.epoch is None or info.incarnation > inc:
                continue
            if info.incarnation == inc and info.epoch > epoch:
                continue
            if self.clock.seconds() - modified < self.orphan_grace:
                continue
            # Still this epoch's leader, and still unnamed (the list may have moved on).
            if t.deleted or remote_log.leader_epoch(t, p) != epoch:
                return
            if info.incarnation == inc and key in remote_log.state(t, p).keys():
                continue
            log.info(
                "deleting orphan object {key} of {topic}/{partition} (no shared list names it)",
                key=key,
                topic=t.name,
                partition=p,
            )
            self.orphans_deleted += 1
            if self.metrics is not None:
                self.metrics.s3_orphans_deleted.inc()
            self._delete(key)

    def _sweep_failed(self, f: Failure, t: Topic, lg: PartitionLog) -> None:
        log.warn(
            "sweeping the S3 prefix of {topic}/{partition} failed (tried again later): {error}",
            topic=t.name,
            partition=lg.partition,
            error=f"{type(f.value).__name__}: {f.value}",
        )

    # -- deletes ---------------------------------------------------------------

    def delete_objects(self, objects: Iterable[RemoteObject]) -> None:
        """Delete the objects of segments gone from every manifest (retried on later ticks)."""
        for o in objects:
            self._indexes.pop(o.key, None)
            self.cache.discard_prefix(o.key)
            for k in (o.key, o.index_key):
                self._delete(k)

    def _delete(self, key: str) -> None:
        d = self.client.delete(key)

        def done(_: object) -> None:
            self.deleted_objects += 1
            if self.metrics is not None:
                self.metrics.s3_deleted_objects.inc()

        def failed(f: Failure) -> None:
            first = not self._pending_deletes
            self._pending_deletes.append(key)
            self._delete_retry_at = self.clock.seconds() + DELETE_RETRY_SECONDS
            if first:  # one line per failing round, not one per object
                log.warn(
                    "S3 delete of {key} failed, retrying failed deletes every {every}s: {error}",
                    key=key,
                    every=DELETE_RETRY_SECONDS,
                    error=str(f.value),
                )

        d.addCallbacks(done, failed)

    def _retry_deletes(self) -> None:
        if not self._pending_deletes or self.clock.seconds() < self._delete_retry_at:
            return
        keys_, self._pending_deletes = self._pending_deletes, []
        for k in keys_:
            self._delete(k)


def adoption(shared: RemoteState, own: list[RemoteObject], epoch: int) -> list[RemoteObject]:
    """This node's old-layout uploads that continue the shared list (the
    first one serving offsets from where the list ends), to be named in it
    in ``epoch``; empty when none does (the list covers them already, or a
    hole lies between)."""
    out: list[RemoteObject] = []
    end = shared.end if shared.objects else None
    for o in sorted(own, key=lambda o: o.base):
        if o.last < (end if end is not None else shared.start):
            continue
        if not out:
            if end is not None and o.base > end:
                break
            first = o.starting_at(end) if end is not None else o
            out.append(replace(first, epoch=epoch))
        elif o.base == out[-1].last + 1:
            out.append(replace(o, epoch=epoch))
        else:
            break
    return out
