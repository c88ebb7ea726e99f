"""Repair of damaged ranges in a cluster: a replica whose copy of a range is
damaged fetches it again from a healthy replica and rewrites it.

An adapter beside the data plane (``plane.repairs``).  The broker's
:class:`~sprawl.storage.integrity.Integrity` finds damage (reads, the
start-time check, the scrub, the replication sender); for a replicated
partition this node holds:

- **On a read** that meets the range (``Integrity.meet`` calls
  :meth:`Repairs.repair`): the read waits for the repair and is served from
  the rewritten range -- so a leader never serves a damaged range while a
  healthy replica holds it.
- **In the background** (:meth:`Repairs.tick`, every data-plane tick): every
  known damaged range is repaired without waiting for a reader, at most two
  at a time, a failed one tried again with back-off (1 s doubling to 60 s).

A repair asks the other replicas in turn (the leader first) with the peer
method ``repair_read`` for the range's records; the source serves them only
below its high watermark (committed records, the same on every replica),
checked by its own reads (a source whose copy is damaged too answers
``corrupt_record`` and is passed over; it never starts a repair of its own
for a request).  The records -- exactly the range's offsets -- are rewritten
in one transaction and read back checked before the range is cleared
(:meth:`Integrity.rewrite`).

**Not in sync while damaged.**  A damaged replica tells its partition's
leader (``damage_report``, again every 2 s while the damage lasts); the
leader leaves it out of the partition's ``in_sync`` set (what the controller
asks before dropping a replica, and the description shows) and counts the
partition under-replicated, until the report stops or says repaired.

Ranges in S3 (``tier: s3``) are not rewritten here: the segment object
belongs to the tier; a read that meets one is served from a healthy replica
instead (:meth:`Repairs.read_elsewhere`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from sprawl.errors import BadRequest, NotFound, SprawlError, Unavailable
from sprawl.log.damage import DamageEntry
from sprawl.log.record import Record, pack_record, unpack_record

if TYPE_CHECKING:
    from sprawl.cluster.dataplane import DataPlane
    from sprawl.topics import Topic

log = Logger()

#: Records one ``repair_read`` answers at most (and bytes, about).
MAX_RECORDS = 1000
MAX_BYTES = 8 * 1000**2
#: Repairs running at once in the background.
CONCURRENCY = 2
#: Seconds a damaged follower's report lasts at its leader without being said again.
REPORT_TTL = 6.0
REPORT_EVERY = 2.0


class Repairs:
    """This node's repairs, and its view (as a leader) of damaged followers."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.broker = plane.broker
        self.reactor = plane.reactor
        self._running: dict[tuple[str, int, int, int], list[defer.Deferred[bool]]] = {}
        #: (topic, partition, first) → (attempts, not before): back-off of failed repairs.
        self._backoff: dict[tuple[str, int, int], tuple[int, float]] = {}
        #: (topic, partition) → {follower: report expiry} (this node leading).
        self._damaged_followers: dict[tuple[str, int], dict[str, float]] = {}
        #: (topic, partition) → when this node last reported its damage to the leader.
        self._reported: dict[tuple[str, int], float] = {}
        self.repaired = 0
        self.failed = 0
        self.served_elsewhere = 0
        plane.rpc.register("repair_read", self._rpc_repair_read)
        plane.rpc.register("damage_report", self._rpc_damage_report)

    # -- repairing ----------------------------------------------------------------

    def repair(self, topic: Topic, partition: int, e: DamageEntry) -> defer.Deferred[bool]:
        """Repair ``e`` from a healthy replica (one repair per range at a
        time: callers of a range already in repair wait for that one)."""
        key = (topic.name, partition, e.first, e.last)
        waiting = self._running.get(key)
        mine: defer.Deferred[bool] = defer.Deferred()
        if waiting is not None:
            waiting.append(mine)
            return mine
        if e.tier != "lmdb":
            return defer.succeed(False)
        if self._backoff.get((topic.name, partition, e.first), (0, 0.0))[1] > self.reactor.seconds():
            return defer.succeed(False)  # failed a moment ago: not again for every read
        self._running[key] = waiters = [mine]
        done = defer.ensureDeferred(self._repair(topic, partition, e.first, e.last))

        def finished(ok: Any) -> None:
            self._running.pop(key, None)
            bk = (topic.name, partition, e.first)
            if ok is True:
                self.repaired += 1
                self._backoff.pop(bk, None)
                self._report(topic, partition)
            else:
                self.failed += 1
                n, _at = self._backoff.get(bk, (0, 0.0))
                self._backoff[bk] = (n + 1, self.reactor.seconds() + min(60.0, 2.0**n))
                if not isinstance(ok, bool):
                    log.failure(
                        "repair of {topic}/{partition} failed", ok, topic=topic.name, partition=partition
                    )
            for w in waiters:
                w.callback(ok is True)

        done.addBoth(finished)
        return mine

    async def _repair(self, topic: Topic, partition: int, first: int, last: int) -> bool:
        sources = self._sources(topic.name, partition)
        if not sources:
            self.broker.integrity.repair_failed(topic, partition, first, last, "no other replica holds it")
            return False
        errors = []
        for src in sources:
            try:
                records = await self._fetch(src, topic.name, partition, first, last)
            except SprawlError as err:
                errors.append(f"{src}: {err.code}: {err.message}")
                continue
            log.info(
                "repairing {topic}/{partition} offsets {first}-{last} from {src}",
                topic=topic.name,
                partition=partition,
                first=first,
                last=last,
                src=src,
            )
            ok = await self.broker.integrity.rewrite(topic, partition, first, last, records)
            if ok:
                return True
            errors.append(f"{src}: the rewrite did not hold")
        self.broker.integrity.repair_failed(topic, partition, first, last, "; ".join(errors))
        return False

    def _sources(self, name: str, partition: int) -> list[str]:
        """The other replicas of the partition, its leader first."""
        pl = self.plane.placement(name, partition)
        if pl is None:
            return []
        known = getattr(self.plane.channel, "addresses", None)
        reps = [
            str(r)
            for r in pl["replicas"]
            if str(r) != self.plane.node_id and (known is None or str(r) in known)  # (reachable at all)
        ]
        leader = str(pl.get("leader") or "")
        return sorted(reps, key=lambda r: r != leader)

    async def _fetch(self, src: str, name: str, partition: int, first: int, last: int) -> list[Record]:
        """Records ``first..last`` from ``src``, in as many calls as the answer bounds need."""
        out: list[Record] = []
        pos = first
        for _ in range(last - first + 2):
            if pos > last:
                return out
            body = {"topic": name, "partition": partition, "first": pos, "last": last}
            answer = await self.plane.rpc.call(src, "repair_read", body, hops=1, timeout=10.0)
            got = [unpack_record(x) for x in answer["records"]]
            if not got or [r.offset for r in got] != list(range(pos, pos + len(got))):
                raise Unavailable(f"{src} did not answer offsets from {pos}", code="repair_source_short")
            out.extend(got)
            pos = got[-1].offset + 1
        raise Unavailable("repair read did not end", code="repair_source_short")

    def _rpc_repair_read(self, caller: str, body: Any, hops: int) -> defer.Deferred[dict[str, Any]]:
        """A damaged replica asks for ``first..last``: this node's checked copy,
        committed records only, bounded in count and bytes."""
        try:
            name, p = str(body["topic"]), int(body["partition"])
            first, last = int(body["first"]), int(body["last"])
        except (TypeError, KeyError, ValueError):
            raise BadRequest("malformed repair read", code="bad_request") from None
        t = self.broker.get_topic(name)
        if not 0 <= p < len(t.logs) or not self.plane.holds(name, p):
            raise NotFound(f"this node holds no replica of {name}/{p}", code="partition_not_found")
        lg = t.logs[p]
        if first < lg.log_start or last >= lg.high_watermark or last < first:
            raise Unavailable(
                f"offsets {first}-{last} are not all committed here (log {lg.log_start}-{lg.high_watermark})",
                code="repair_range_unavailable",
            )
        limit = min(MAX_RECORDS, last - first + 1)
        d = self.broker.read(t, p, first, limit, repair=False)

        def answer(recs: list[Record]) -> dict[str, Any]:
            out: list[Any] = []
            size = 0
            for r in recs:
                if r.offset > last or (out and size + len(r.payload) > MAX_BYTES):
                    break
                out.append(pack_record(r))
                size += len(r.payload) + 64
            return {"records": out}

        return d.addCallback(answer)

    def read_elsewhere(
        self, topic: Topic, partition: int, start: int, limit: int
    ) -> defer.Deferred[list[Record]] | None:
        """A read that met damage this node cannot rewrite (a segment object in
        S3): served by a healthy replica's copy instead, if any."""
        srcs = self._sources(topic.name, partition)
        lg = topic.logs[partition]
        if not srcs or not lg.replicated:
            return None

        async def run() -> list[Record]:
            errors = []
            end = min(start + limit, lg.high_watermark)
            for src in srcs:
                try:
                    got = await self._fetch(src, topic.name, partition, start, end - 1)
                except SprawlError as err:
                    errors.append(f"{src}: {err.message}")
                    continue
                self.served_elsewhere += 1
                return got
            raise Unavailable(
                "no healthy replica could serve the range: " + "; ".join(errors), code="no_replica"
            )

        return defer.ensureDeferred(run())

    # -- background ------------------------------------------------------------------

    def tick(self) -> None:
        """Start repairs of known damaged ranges (bounded, with back-off) and
        report this node's damage to the partitions' leaders."""
        now = self.reactor.seconds()
        b = self.broker
        for key, reps in list(self._damaged_followers.items()):
            for node, until in list(reps.items()):
                if until <= now:
                    del reps[node]
            if not reps:
                del self._damaged_followers[key]
        damaged = []
        if getattr(b, "integrity", None) is None:
            return
        dmap = b.integrity.map
        if dmap.parts:
            # Only the partitions with ranges on record (not every partition: issue 23).
            by_uid = {t.config.uid: t for t in b.topics.values()}
            for uid, p in list(dmap.parts):
                t = by_uid.get(uid)
                if t is None or not 0 <= p < len(t.logs) or not t.logs[p].replicated:
                    continue
                es = dmap.damaged((uid, p))
                if es:
                    damaged.append((t, p, es))
        for t, p, es in damaged:
            if now - self._reported.get((t.name, p), float("-inf")) >= REPORT_EVERY:
                self._report(t, p)
            for e in es:
                if len(self._running) >= CONCURRENCY:
                    return
                if e.tier != "lmdb" or (t.name, p, e.first, e.last) in self._running:
                    continue
                _n, at = self._backoff.get((t.name, p, e.first), (0, 0.0))
                if at > now or e.last >= t.logs[p].high_watermark or not self._sources(t.name, p):
                    continue  # backing off, not all committed yet (sources serve only that), no peer known yet
                self.repair(t, p, e)

    def _report(self, topic: Topic, partition: int) -> None:
        """Tell the partition's leader whether this replica is damaged."""
        pl = self.plane.placement(topic.name, partition)
        if pl is None:
            return
        leader = str(pl.get("leader") or "")
        damaged = bool(self.broker.integrity.map.damaged((topic.config.uid, partition)))
        self._reported[(topic.name, partition)] = self.reactor.seconds()
        body = {"topic": topic.name, "partition": partition, "damaged": damaged}
        if leader == self.plane.node_id:
            self._rpc_damage_report(self.plane.node_id, body, 0)
        elif leader:
            self.plane.rpc.call(leader, "damage_report", body, hops=1, timeout=5.0).addErrback(lambda f: None)

    def _rpc_damage_report(self, caller: str, body: Any, hops: int) -> dict[str, Any]:
        try:
            key = (str(body["topic"]), int(body["partition"]))
        except (TypeError, KeyError, ValueError):
            raise BadRequest("malformed damage report", code="bad_request") from None
        reps = self._damaged_followers.setdefault(key, {})
        if body.get("damaged"):
            reps[caller] = self.reactor.seconds() + REPORT_TTL
        else:
            reps.pop(caller, None)
            if not reps:
                del self._damaged_followers[key]
        return {}

    def damaged_replicas(self, name: str, partition: int) -> set[str]:
        """Replicas of a partition this node leads that reported damage (not in sync)."""
        now = self.reactor.seconds()
        return {n for n, until in self._damaged_followers.get((name, partition), {}).items() if until > now}

    def damaged_keys(self) -> list[tuple[str, int]]:
        """The partitions led here with a replica's damage on record (reports
        lapse with time: :meth:`damaged_replicas` says which still hold)."""
        return list(self._damaged_followers)

    def view(self) -> dict[str, Any]:
        """Counts for ``GET /v1/cluster``."""
        return {
            "repairs_running": len(self._running),
            "repaired": self.repaired,
            "repair_failures": self.failed,
            "served_by_other_replicas": self.served_elsewhere,
        }
