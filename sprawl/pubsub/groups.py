"""Consumer groups: the adapter over the pure :mod:`sprawl.delivery.groups`
core (config, persistence, pull with leases, ack/nack, dead letters)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from sprawl.delivery.groups import ConsumerGroup, DeadLetter, Delivery, GroupConfig
from sprawl.errors import BadRequest, Conflict, NotFound, SprawlError, Unavailable
from sprawl.log.record import DEFAULT_READ_BYTES, Record
from sprawl.pubsub.names import check_group_name, check_topic_name
from sprawl.pubsub.replica import ReplicaWrites
from sprawl.storage import keys
from sprawl.topics import Topic

_json_encode = msgspec.json.encode

log = Logger()


class Groups(ReplicaWrites):
    """The consumer groups of this node's topics."""

    def put_group(
        self, topic: Topic, name: str, body: dict[str, Any]
    ) -> Deferred[tuple[ConsumerGroup, bool]]:
        """Create or update a consumer group; fires once persisted."""
        g = topic.groups.get(name)
        cfg = self.group_config_from(topic.name, name, body, g.config if g else None)
        created = g is None
        if g is None:
            if cfg.start == "earliest":
                starts = {lg.partition: lg.log_start for lg in topic.logs}
            else:
                starts = {lg.partition: lg.high_watermark for lg in topic.logs}
            g = ConsumerGroup(name, cfg, starts)
            topic.groups[name] = g
            self._grouped_at = float("-inf")  # the broker tick finds it at once
        else:
            g.config = cfg
        d: Deferred[Any] = self._persist_group(topic, g)
        d.addCallback(lambda _: (g, created))
        return d

    def group_config_from(
        self, topic_name: str, name: str, body: dict[str, Any], base: GroupConfig | None
    ) -> GroupConfig:
        """Validate a ``PUT .../groups/{group}`` body; touches no state.

        A dead-letter topic must exist or be creatable (auto-create on), so a
        message that runs out of deliveries always has somewhere to go.
        """
        check_topic_name(topic_name)
        check_group_name(name)
        allowed = {"start", "ack_deadline_ms", "max_deliveries", "dead_letter_topic", "max_in_flight"}
        unknown = set(body) - allowed
        if unknown:
            raise BadRequest(f"unknown group field(s): {', '.join(sorted(unknown))}", code="invalid_field")
        cfg = GroupConfig(**base.to_dict()) if base else GroupConfig()
        if "start" in body:
            if body["start"] not in ("earliest", "latest"):
                raise BadRequest("start must be 'earliest' or 'latest'", code="invalid_field")
            cfg.start = body["start"]
        for k, lo in (("ack_deadline_ms", 1), ("max_deliveries", 0), ("max_in_flight", 1)):
            if k in body:
                v = body[k]
                if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > 2**31:
                    raise BadRequest(f"{k} must be an integer >= {lo}", code="invalid_field")
                setattr(cfg, k, v)
        if "dead_letter_topic" in body:
            v = body["dead_letter_topic"]
            if v is not None:
                if not isinstance(v, str):
                    raise BadRequest("dead_letter_topic must be a topic name", code="invalid_field")
                check_topic_name(v)
                if v == topic_name:
                    raise BadRequest("dead_letter_topic must differ from the topic", code="invalid_field")
                if v not in self.topics and not self.config.auto_create_topics:
                    raise BadRequest(
                        f"dead_letter_topic {v!r} does not exist and topics are not auto-created",
                        code="dead_letter_topic_not_found",
                    )
            cfg.dead_letter_topic = v
        return cfg

    def get_group(self, topic: Topic, name: str) -> ConsumerGroup:
        """The group, or :class:`NotFound`."""
        g = topic.groups.get(name)
        if g is None:
            check_group_name(name)
            raise NotFound(f"group {name!r} does not exist on topic {topic.name!r}", code="group_not_found")
        return g

    def delete_group(self, topic: Topic, name: str) -> Deferred[None]:
        """Forget a group and its state."""
        self.get_group(topic, name)
        del topic.groups[name]
        d = self.store.write([("d", "meta", keys.group_meta_key(topic.config.uid, name))])
        d.addErrback(self._storage_error)
        return d

    def _persist_group(self, topic: Topic, g: ConsumerGroup) -> Deferred[None]:
        self._dirty_groups.discard((topic.name, g.name))
        state = g.to_state()
        state["name"] = g.name
        d = self.store.write(
            [("p", "meta", keys.group_meta_key(topic.config.uid, g.name), _json_encode(state))]
        )
        d.addErrback(self._storage_error)
        return d

    def mark_group_dirty(self, topic_name: str, group_name: str) -> None:
        """The group's state changed without being persisted: the next tick writes it."""
        self._dirty_groups.add((topic_name, group_name))

    def _flush_dirty_groups(self) -> None:
        dirty, self._dirty_groups = self._dirty_groups, set()
        for tname, gname in dirty:
            t = self.topics.get(tname)
            g = t.groups.get(gname) if t else None
            if t is not None and g is not None:
                self._persist_group(t, g).addErrback(lambda f: None)

    def pull(
        self,
        topic: Topic,
        g: ConsumerGroup,
        max_count: int,
        wait_ms: int,
        partitions: Collection[int] | None = None,
        max_bytes: int = DEFAULT_READ_BYTES,
    ) -> Deferred[list[tuple[Delivery, Record]]]:
        """Lease up to ``max_count`` messages, at most ``max_bytes`` of them
        (at least one), waiting up to ``wait_ms`` for some.

        Only partitions this node owns the group state of are leased from
        (``partitions``, else the group owner's answer (:class:`~sprawl.pubsub.links.ClusterLinks`); all of them on
        a single node): in a cluster each partition's leader owns it."""
        deadline = self.clock.seconds() + wait_ms / 1000.0
        owner = self.links.group_owner
        if partitions is None and owner is not None:
            partitions = owner.owned(topic)

        def attempt() -> Deferred[list[tuple[Delivery, Record]]]:
            if topic.groups.get(g.name) is not g:
                raise NotFound(f"group {g.name!r} was deleted", code="group_not_found")
            self._run_group_tick(topic, g)
            deliveries = g.pull(max_count, self.now_ms(), topic.visible(), partitions)
            if deliveries:
                self._dirty_groups.add((topic.name, g.name))
                loaded = Deferred.fromCoroutine(self._load_deliveries(topic, g, deliveries, max_bytes))
                # Only control records (settled unseen): keep waiting, if there is time.
                return loaded.addCallback(lambda got: got or again())
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                return succeed([])
            due = g.next_due_ms()
            if due is not None:
                remaining = min(remaining, max(0.001, due / 1000.0 - self.clock.seconds()))
            return self.wait_any(topic, remaining).addCallback(lambda _: attempt())

        def again() -> Any:
            return attempt() if deadline > self.clock.seconds() else []

        return attempt()

    async def _load_deliveries(
        self, topic: Topic, g: ConsumerGroup, deliveries: list[Delivery], max_bytes: int
    ) -> list[tuple[Delivery, Record]]:
        """The leased records, read in offset order per partition until
        ``max_bytes`` of them are in hand (at least one).  Leases past the
        budget are given back unseen (:meth:`ConsumerGroup.give_back`, the
        attempt not counted); leases whose record is gone (retention) or is a
        control record are settled.  A failed read fails the pull: its leases
        run out and the messages are delivered again, never settled unread."""
        by_part: dict[int, list[int]] = {}
        for dv in deliveries:
            by_part.setdefault(dv.partition, []).append(dv.offset)
        found: dict[tuple[int, int], Record] = {}
        #: partition → the first offset not read (the budget ran out there).
        unread_from: dict[int, int] = {}
        room = max_bytes
        for p, offs in by_part.items():
            if room <= 0 and found:
                unread_from[p] = -1
                continue
            offs.sort()
            want = set(offs)
            i = 0
            while i < len(offs) and p not in unread_from:
                # A run of offsets close together is read as one span.
                j = i + 1
                while j < len(offs) and offs[j] - offs[j - 1] <= 4:
                    j += 1
                start, hi = offs[i], offs[j - 1] + 1
                i = j
                while start < hi:
                    if room <= 0 and found:
                        unread_from[p] = start
                        break
                    recs = await self.read(topic, p, start, hi - start, max_bytes=max(room, 1))
                    recs = [r for r in recs if r.offset < hi]
                    if not recs:
                        break  # nothing left below hi: deleted meanwhile
                    for r in recs:
                        if r.offset not in want:
                            continue
                        if found and r.size > room:
                            unread_from[p] = r.offset
                            break
                        found[(p, r.offset)] = r
                        room -= r.size
                    if p in unread_from:
                        break
                    start = recs[-1].offset + 1
        out: list[tuple[Delivery, Record]] = []
        now = self.now_ms()
        unseen: list[Delivery] = []
        for dv in deliveries:
            got = found.get((dv.partition, dv.offset))
            if got is not None:
                if not got.control:
                    out.append((dv, got))
                else:
                    g.ack(dv.ack_id, now)  # a control record: nothing to deliver
            elif dv.offset >= unread_from.get(dv.partition, dv.offset + 1):
                unseen.append(dv)
            else:
                g.ack(dv.ack_id, now)  # deleted by retention meanwhile: settle it
        for dv in reversed(unseen):
            g.give_back(dv.ack_id, now)
        return out

    def _read_span(self, topic: Topic, p: int, lo: int, hi: int) -> Deferred[list[Record]]:
        out: list[Record] = []

        def step(start: int) -> Deferred[list[Record]]:
            d = self.read(topic, p, start, hi - start)

            def got(recs: list[Record]) -> Any:
                recs = [r for r in recs if r.offset < hi]
                out.extend(recs)
                if not recs or recs[-1].offset + 1 >= hi:
                    return out
                return step(recs[-1].offset + 1)

            return d.addCallback(got)

        return step(lo)

    def ack(self, topic: Topic, g: ConsumerGroup, ack_ids: list[str]) -> Deferred[dict[str, str]]:
        """Ack deliveries; fires with {ack_id: refusal reason} once the state is persisted."""
        now = self.now_ms()
        self._run_group_tick(topic, g)
        refused: dict[str, str] = {}
        for a in ack_ids:
            why = g.ack(a, now)
            if why is not None:
                refused[a] = why
        d = self._persist_group(topic, g)
        return d.addCallback(lambda _: refused)

    def extend(
        self, topic: Topic, g: ConsumerGroup, ack_ids: list[str], extend_ms: int
    ) -> tuple[dict[str, str], dict[str, int]]:
        """Extend live leases to now + ``extend_ms`` (:meth:`ConsumerGroup.extend`):
        ({ack_id: refusal reason}, {ack_id: new deadline}).  Leases do not
        survive a restart, so nothing is persisted."""
        now = self.now_ms()
        self._run_group_tick(topic, g)
        refused: dict[str, str] = {}
        deadlines: dict[str, int] = {}
        for a in ack_ids:
            why, deadline = g.extend(a, extend_ms, now)
            if why is not None:
                refused[a] = why
            else:
                deadlines[a] = deadline
        return refused, deadlines

    def give_back(self, topic: Topic, g: ConsumerGroup, ack_ids: list[str]) -> Deferred[dict[str, str]]:
        """Take back leases their consumer never saw (:meth:`ConsumerGroup.give_back`)."""
        now = self.now_ms()
        refused: dict[str, str] = {}
        for a in reversed(ack_ids):
            why = g.give_back(a, now)
            if why is not None:
                refused[a] = why
        self._dirty_groups.add((topic.name, g.name))
        return succeed(refused)

    def nack(
        self, topic: Topic, g: ConsumerGroup, ack_ids: list[str], delay_ms: int
    ) -> Deferred[dict[str, str]]:
        """Nack deliveries for redelivery after ``delay_ms``."""
        now = self.now_ms()
        self._run_group_tick(topic, g)
        refused: dict[str, str] = {}
        dead: list[DeadLetter] = []
        for a in ack_ids:
            why, dl = g.nack(a, delay_ms, now)
            if why is not None:
                refused[a] = why
            if dl is not None:
                dead.append(dl)
        d = self._dead_letter(topic, g, dead) if dead else succeed(None)
        d.addCallback(lambda _: self._persist_group(topic, g))
        return d.addCallback(lambda _: refused)

    def _run_group_tick(self, topic: Topic, g: ConsumerGroup) -> None:
        dead = g.tick(self.now_ms())
        if dead:
            d = self._dead_letter(topic, g, dead)
            d.addCallback(lambda _: self._persist_group(topic, g))
            d.addErrback(lambda f: log.failure("dead-lettering failed", f))

    def _dead_letter(self, topic: Topic, g: ConsumerGroup, dead: list[DeadLetter]) -> Deferred[None]:
        """Copy exhausted messages to the group's dead-letter topic."""
        dlq = g.config.dead_letter_topic
        if self.metrics is not None:
            self.metrics.dead_lettered(topic.name, g.name, len(dead))
        if not dlq:
            return succeed(None)
        reads = [self._read_span(topic, d.partition, d.offset, d.offset + 1) for d in dead]
        attempts = {(d.partition, d.offset): d.attempts for d in dead}

        def publish(results: list[Any]) -> Any:
            recs = []
            for ok, found in results:
                if not ok:
                    continue
                for r in found:
                    headers = dict(r.headers or {})
                    headers.update(
                        {
                            "sprawl-dlq-topic": topic.name,
                            "sprawl-dlq-partition": str(r.partition),
                            "sprawl-dlq-offset": str(r.offset),
                            "sprawl-dlq-group": g.name,
                            "sprawl-dlq-attempts": str(attempts[(r.partition, r.offset)]),
                        }
                    )
                    recs.append(Record(-1, 0, 0, None, r.key, headers, r.payload, r.is_text))
            if not recs:
                return None
            d = self.ensure_topic(dlq)
            route = self.links.publisher.publish if self.links.publisher is not None else self.publish
            d.addCallback(lambda t: route(t, recs, "leader"))
            return d

        return DeferredList(reads, consumeErrors=True).addCallback(publish)


def nothing_extended(refused: dict[str, str]) -> SprawlError:
    """The error of an extend that extended nothing, by the first id's reason:
    400 ``invalid_ack_id`` (malformed), 409 ``lease_expired`` (the lease ran
    out: the message will be, or was, delivered again), 404 ``lease_not_found``
    (settled, an older attempt, or never leased), 503 ``unavailable`` (the
    partition's owner did not answer)."""
    why = next(iter(refused.values()), "unknown")
    listed = ", ".join(f"{a} ({r})" for a, r in list(refused.items())[:10])
    more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
    message = f"no lease extended: {listed}{more}"
    if why == "malformed":
        return BadRequest(message, code="invalid_ack_id")
    if why == "expired":
        return Conflict(message, code="lease_expired")
    if why == "unavailable":
        return Unavailable(message, code="unavailable")
    return NotFound(message, code="lease_not_found")
