"""What a node knows of its damaged ranges, and what it does about them.

An adapter owned by the broker (``broker.integrity``).  Reads (LMDB and
S3), the start-time check, the scrub and the replication sender report
:class:`~sprawl.log.damage.DamagedRange` here; the range is recorded in a
:class:`~sprawl.log.damage.DamageMap` -- logged once per range, counted in
``sprawl_damage_found_total``, kept in LMDB ``meta`` (``dmg/UID PARTITION``)
so a restart still knows it, and shown by ``/readyz``, ``/v1/damage`` and
the topic's description -- and the read answers ``corrupt_record`` naming
the range.

In a cluster the ``repairs`` (:mod:`sprawl.cluster.repair`) are attached: a read
that meets a damaged range of a replicated partition first has it repaired
from a healthy replica, then reads again.  :meth:`rewrite` is the repair's
write: one transaction drops the damaged entries of the range (damaged keys
included) and puts the healthy replica's records, then a checked read of the
range must pass before the range is cleared.  A single node has nothing to
repair from: an operator may :meth:`skip` the range (``POST
/v1/damage/skip``, ``sprawlctl damage skip``); readers then pass over it as
over offsets retention deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.errors import CorruptData, NotFound
from sprawl.interfaces import BrokerStorage, DamageRepair, ScrubProgress
from sprawl.log.damage import DAMAGED, DamagedRange, DamageEntry, DamageMap
from sprawl.log.record import CorruptRecord, Record, check_stored
from sprawl.storage import keys
from sprawl.storage.lmdb import Op
from sprawl.storage.verify import dense_ranges

if TYPE_CHECKING:
    from sprawl.log.partition import PartitionLog
    from sprawl.topics import Topic

log = Logger()

#: Times a read is tried again after a race (a segment moved to S3, retention)
#: or a repair, before its damage is answered.
MAX_READ_ATTEMPTS = 3


class Integrity:
    """Damaged ranges of one node's partitions (see the module docstring)."""

    def __init__(self, broker: BrokerStorage) -> None:
        self.broker = broker
        self.map = DamageMap()
        #: Where damaged ranges of replicated partitions are mended from a
        #: healthy replica (:class:`sprawl.cluster.repair.Repairs`); None on a
        #: node with nothing to repair from.  Set by :meth:`attach`.
        self.repairs: DamageRepair | None = None
        #: The background scrub (:class:`sprawl.storage.scrub.Scrubber`), if
        #: any (its progress is shown with the damage).  Set by :meth:`attach`.
        self.scrubber: ScrubProgress | None = None
        self.found = {"lmdb": 0, "s3": 0}
        self.repaired = 0
        self.skipped = 0

    def attach(self, *, repairs: DamageRepair | None = None, scrubber: ScrubProgress | None = None) -> None:
        """Hand the map the parts built on the broker that owns it (called once
        by the composition root, :func:`sprawl.node.bind_cluster_parts`).

        Not constructor arguments, because of a real construction cycle: the
        broker builds this map, and the scrub (which reads through the
        broker) and the cluster's repairs (built on the data plane, itself
        built on the broker) exist only after it."""
        if repairs is not None:
            self.repairs = repairs
        if scrubber is not None:
            self.scrubber = scrubber

    # -- what is expected where ------------------------------------------------

    def dense(self, topic: Topic, lg: PartitionLog, start: int, end: int) -> list[tuple[int, int]]:
        """The offsets of ``[start, end)`` LMDB must hold: the local segments'
        (not those in S3), without ranges an operator skipped."""
        segs = [(s.base, s.last) for s in lg.segments if s.remote is None]
        return dense_ranges(segs, start, end, self.map.skipped((topic.config.uid, lg.partition)))

    def known(self, topic: Topic, partition: int, lo: int, hi: int) -> DamageEntry | None:
        """A damaged range already known that meets ``lo..hi``."""
        return self.map.overlapping((topic.config.uid, partition), lo, hi)

    # -- damage found ----------------------------------------------------------------

    def note(self, topic: Topic, partition: int, d: DamagedRange) -> DamageEntry:
        """Record a damaged range: logged, counted and kept only the first time."""
        key = (topic.config.uid, partition)
        b = self.broker
        if self.map.add(key, d.first, d.last, d.reason, d.tier, b.now_ms()):
            self.found[d.tier] = self.found.get(d.tier, 0) + 1
            if b.metrics is not None:
                b.metrics.damage_found.labels(d.tier).inc()
            log.error(
                "DAMAGED: {topic}/{partition} offsets {first}-{last} ({tier}): {reason}; reads of "
                "this range answer corrupt_record until it is repaired or skipped",
                topic=topic.name,
                partition=partition,
                first=d.first,
                last=d.last,
                tier=d.tier,
                reason=d.reason,
            )
            self._persist(topic, partition)
        hit = self.map.overlapping(key, d.first, d.last)
        return hit if hit is not None else DamageEntry(d.first, d.last, d.reason, d.tier)

    def error(self, topic: Topic, partition: int, e: DamageEntry) -> CorruptData:
        """The answer of a read that meets ``e``: 500, or 503 (retry) while
        other replicas may still repair it."""
        replicated = self.repairs is not None and topic.logs[partition].replicated
        err = CorruptData(
            f"offsets {e.first}-{e.last} of {topic.name}/{partition} are damaged in {e.tier} "
            f"({e.reason}); nothing in this range is served until it is repaired"
            + (
                " from another replica (retry shortly)"
                if replicated
                else " or an operator skips it (sprawlctl damage skip)"
            ),
            topic=topic.name,
            partition=partition,
            first=e.first,
            last=e.last,
            tier=e.tier,
        )
        if replicated:
            err.status = 503
        return err

    def _persist(self, topic: Topic, partition: int) -> None:
        uid = topic.config.uid
        data = self.map.encode((uid, partition))
        op: Op = (
            ("d", "meta", keys.damage_key(uid, partition))
            if data is None
            else ("p", "meta", keys.damage_key(uid, partition), data)
        )
        d = self.broker.store.write([op])
        d.addErrback(lambda f: log.warn("keeping the damage record failed: {err}", err=str(f.value)))

    def load(self, topic: Topic) -> None:
        """Recovery: the damaged and skipped ranges a partition had."""
        store = self.broker.store
        for lg in topic.logs:
            raw = store.get("meta", keys.damage_key(topic.config.uid, lg.partition))
            if raw:
                try:
                    self.map.load((topic.config.uid, lg.partition), raw)
                except ValueError as err:
                    log.warn(
                        "ignoring a damaged damage record of {topic}: {err}", topic=topic.name, err=str(err)
                    )
                for e in self.map.damaged((topic.config.uid, lg.partition)):
                    log.error(
                        "DAMAGED (known before the restart): {topic}/{partition} offsets {first}-{last} "
                        "({tier}): {reason}",
                        topic=topic.name,
                        partition=lg.partition,
                        first=e.first,
                        last=e.last,
                        tier=e.tier,
                        reason=e.reason,
                    )

    # -- reads that meet damage --------------------------------------------------

    def how(
        self,
        topic: Topic,
        partition: int,
        start: int,
        limit: int,
        retry: Callable[[], Any],
        attempt: int,
        repair: bool,
    ) -> _Read:
        """What a read that may meet damage needs to know to act on it."""
        return _Read(topic, partition, start, limit, retry, attempt, repair)

    def read_failed(self, f: Failure, r: _Read) -> Any:
        """Errback of a read: a damaged range is a race to read again (the
        segment moved to S3, retention or a reset took the range, the topic
        went), or damage: noted, repaired where a replica can, else answered."""
        if not f.check(DamagedRange):
            return f
        d = f.value
        assert isinstance(d, DamagedRange)
        b = self.broker
        topic, partition = r.topic, r.partition
        if b.topics.get(topic.name) is not topic:
            raise NotFound(f"topic {topic.name!r} was deleted", code="topic_not_found")
        if self.raced(topic, partition, d) and r.attempt < MAX_READ_ATTEMPTS:
            return r.retry()
        return self.meet(self.note(topic, partition, d), r)

    def raced(self, topic: Topic, partition: int, d: DamagedRange) -> bool:
        """Whether a read of LMDB that found ``d`` raced a change of the log
        rather than met damage: the offsets left LMDB meanwhile (retention or
        a reset moved the log start past them, the S3 tier holds them now, a
        truncation cut them, the topic was deleted) -- each is made in memory
        before its LMDB write, so it shows here once the read is back."""
        if self.broker.topics.get(topic.name) is not topic:
            return True
        lg = topic.logs[partition]
        return d.tier == "lmdb" and (
            d.first < lg.log_start or _remote_at(lg, d.first) or d.first >= lg.stored_end
        )

    def meet(self, e: DamageEntry, r: _Read) -> Deferred[Any]:
        """A read met the damaged range ``e``: in a cluster, repair it from a
        healthy replica first (then read again), or -- a range this node cannot
        rewrite -- have a healthy replica serve the read; else fail with
        ``corrupt_record``."""
        topic, partition = r.topic, r.partition
        lg = topic.logs[partition]
        if not (r.repair and lg.replicated and r.attempt < MAX_READ_ATTEMPTS):
            return fail(self.error(topic, partition, e))
        repairs = self.repairs
        if e.tier == "lmdb" and repairs is not None:
            d = repairs.repair(topic, partition, e)

            def done(ok: bool) -> Any:
                if ok:
                    return r.retry()
                raise self.error(topic, partition, e)

            return d.addCallback(done)
        if repairs is not None and r.limit > 0:
            served = repairs.read_elsewhere(topic, partition, r.start, min(r.limit, e.last + 1 - r.start))
            if served is not None:

                def failed(f: Failure) -> Any:
                    log.warn(
                        "no healthy replica served {topic}/{partition} from {start}: {err}",
                        topic=topic.name,
                        partition=partition,
                        start=r.start,
                        err=str(f.value),
                    )
                    raise self.error(topic, partition, e)

                return served.addErrback(failed)
        return fail(self.error(topic, partition, e))

    # -- repair and skip -----------------------------------------------------------

    def rewrite(
        self, topic: Topic, partition: int, first: int, last: int, records: list[Record]
    ) -> Deferred[bool]:
        """Replace offsets ``first..last`` with ``records`` (a healthy
        replica's, exactly those offsets): one transaction drops every entry
        of the range (damaged keys too) and puts the records; then a checked
        read of the range must pass.  Fires True once it does and the range
        is cleared, False when the rewrite did not hold."""
        b = self.broker
        lg = topic.logs[partition]
        uid = topic.config.uid
        if [r.offset for r in records] != list(range(first, last + 1)):
            return fail(ValueError(f"a repair of {first}-{last} needs exactly those offsets"))
        if topic.deleted or first < lg.log_start:
            return succeed(False)
        values = [(keys.record_key(uid, partition, r.offset), r.to_storage()) for r in records]
        errors: list[str] = []

        def fix(env: Any, txn: Any, db: Any) -> None:
            replace_range(env, txn, db, uid, partition, first, last, values, errors)

        d: Deferred[Any] = b.store.write([("x", "records", fix)])

        def check(_: object) -> Deferred[bool]:
            if errors:
                return succeed(self.repair_failed(topic, partition, first, last, errors[0]))
            dense = [(first, last)]
            return b.store.call_reader(
                b.store.read_records_sync, uid, partition, first, last - first + 1, last + 1, dense
            )

        def verified(result: Any) -> bool:
            if result is False or result is True:
                return bool(result)
            self.map.clear((uid, partition), first, last)
            self.repaired += 1
            if b.metrics is not None:
                b.metrics.damage_repaired.inc()
            log.info(
                "REPAIRED: {topic}/{partition} offsets {first}-{last} rewritten from a healthy replica",
                topic=topic.name,
                partition=partition,
                first=first,
                last=last,
            )
            self._persist(topic, partition)
            return True

        def failed(f: Failure) -> bool:
            if f.check(DamagedRange):
                return self.repair_failed(
                    topic, partition, first, last, f"the rewrite did not hold: {f.value}"
                )
            return self.repair_failed(topic, partition, first, last, str(f.value))

        d.addCallback(check)
        d.addCallbacks(verified, failed)
        return d

    def repair_failed(self, topic: Topic, partition: int, first: int, last: int, why: str) -> bool:
        """Count a failed repair of the range (and log why); False: nothing was repaired."""
        hit = self.map.overlapping((topic.config.uid, partition), first, last)
        if hit is not None:
            hit.attempts += 1
            hit.last_error = why
        log.error(
            "repair of {topic}/{partition} offsets {first}-{last} failed: {why}",
            topic=topic.name,
            partition=partition,
            first=first,
            last=last,
            why=why,
        )
        return False

    def skip(self, topic: Topic, partition: int, first: int, last: int) -> Deferred[dict[str, Any]]:
        """An operator gives up the damaged offsets ``first..last`` (the
        damaged range meeting them, whole): fires with the skipped range, or
        fails with 404 ``damage_not_found``."""
        key = (topic.config.uid, partition)
        if not self.map.skip(key, first, last, self.broker.now_ms()):
            return fail(
                NotFound(
                    f"no damaged range of {topic.name}/{partition} meets offsets {first}-{last}",
                    code="damage_not_found",
                )
            )
        e = next(
            e for e in self.map.entries(key) if e.state != DAMAGED and e.first <= last and e.last >= first
        )
        self.skipped += 1
        if self.broker.metrics is not None:
            self.broker.metrics.damage_skipped.inc()
        log.warn(
            "SKIPPED by an operator: {topic}/{partition} offsets {first}-{last} ({reason}); "
            "readers pass over them",
            topic=topic.name,
            partition=partition,
            first=e.first,
            last=e.last,
            reason=e.reason,
        )
        self._persist(topic, partition)
        self.broker.notify(topic.name, partition)
        return succeed(dict(e.to_dict(), topic=topic.name, partition=partition))

    def dropped(
        self, topic: Topic, partition: int, below: int | None = None, tier: str | None = None
    ) -> list[Op]:
        """Retention (``below``) or a reset / topic delete (None) removed
        offsets -- with ``tier``, only that tier's copy of those below
        ``below``: forget their ranges; returns the meta op keeping the rest."""
        uid = topic.config.uid
        key = (uid, partition)
        if below is None:
            if key not in self.map.parts:
                return []
            self.map.drop(key)
        elif not self.map.drop_below(key, below, tier):
            return []
        data = self.map.encode(key)
        if data is None:
            return [("d", "meta", keys.damage_key(uid, partition))]
        return [("p", "meta", keys.damage_key(uid, partition), data)]

    # -- views -------------------------------------------------------------------

    def partition_view(self, topic: Topic, partition: int) -> list[dict[str, Any]]:
        """The ranges of one partition, for the topic's description."""
        return [e.to_dict() for e in self.map.entries((topic.config.uid, partition))]

    def ranges(self) -> list[dict[str, Any]]:
        """Every range of every partition (``GET /v1/damage``)."""
        by_uid = {t.config.uid: t.name for t in self.broker.topics.values()}
        out = []
        for (uid, p), es in sorted(self.map.parts.items()):
            name = by_uid.get(uid)
            if name is None:
                continue
            for e in es:
                out.append(dict(e.to_dict(), topic=name, partition=p))
        return out

    def not_ready_reason(self) -> str | None:
        """Why ``/readyz`` is 503: the damaged (not skipped) ranges, named."""
        # (Asked on every /readyz: nothing per partition while no range is
        # damaged -- the common case -- issue 23.)
        if not any(e.state == DAMAGED for es in self.map.parts.values() for e in es):
            return None
        damaged = [r for r in self.ranges() if r["state"] == DAMAGED]
        if not damaged:
            return None
        names = ", ".join(
            f"{r['topic']}/{r['partition']} offsets {r['first_offset']}-{r['last_offset']} ({r['tier']})"
            for r in damaged[:5]
        )
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        return f"damaged partitions: {names}{more} (see GET /v1/damage)"


@dataclass
class _Read:
    """A read in flight: where it started, how to try it again."""

    topic: Topic
    partition: int
    start: int
    limit: int
    retry: Callable[[], Any]
    attempt: int
    repair: bool


def _remote_at(lg: PartitionLog, offset: int) -> bool:
    return any(s.remote is not None and s.base <= offset <= s.last for s in lg.segments)


def replace_range(
    env: Any,
    txn: Any,
    db: Any,
    uid: int,
    partition: int,
    first: int,
    last: int,
    values: list[tuple[bytes, bytes]],
    errors: list[str],
) -> None:
    """Writer thread, inside the group commit: drop every entry of
    ``first..last`` -- and, just past it, entries that fail their checksum
    (damaged keys that sort after the range) -- then put ``values``.  In a
    nested transaction: an LMDB error (a page it cannot read) aborts only
    this repair, noted in ``errors``, not the commit it shares."""
    prefix = keys.partition_prefix(uid, partition)
    stop = keys.record_key(uid, partition, last + 1)
    try:
        with env.begin(write=True, parent=txn, db=db) as child:
            cur = child.cursor(db=db)
            ok = cur.set_range(keys.record_key(uid, partition, first))
            past = 0
            for _ in range(10 * (last - first + 1) + 1024):
                if not ok:
                    break
                k = bytes(cur.key())
                if k >= stop:
                    past += 1
                    if past > 64 or _sound_beyond(k, bytes(cur.value()), prefix, partition, last):
                        break
                ok = cur.delete()
            for k, v in values:
                child.put(k, v, db=db)
    except lmdb.Error as e:
        errors.append(f"LMDB refused the rewrite: {e}")


def _sound_beyond(k: bytes, v: bytes, prefix: bytes, partition: int, last: int) -> bool:
    """An entry past the range to keep (and stop at): a sound one, or a
    record key of a later offset of this partition (damaged or not, it
    stands for its own offset).  Anything else there is a damaged key."""
    if len(k) != 16:
        return False
    off = keys.parse_record_key(k)[2]
    if k.startswith(prefix) and off > last:
        return True
    try:
        check_stored(partition, off, v)
    except CorruptRecord:
        return False
    return True
