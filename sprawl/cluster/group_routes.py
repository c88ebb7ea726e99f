"""Consumer groups across the cluster: each partition's group state lives
with the partition's leader.  An adapter over the broker's groups, the data
plane and peer RPC.

* **Ownership.**  The leader of a partition owns every group's cursor, leases
  and redeliveries for that partition; the broker leases only from the
  partitions this node owns (:meth:`GroupRoutes.owned`, bound into the
  broker's :class:`~sprawl.pubsub.links.ClusterLinks` by the node).
* **Routing.**  A pull on any node asks the owners in turn (this node first)
  for what is left of ``max``; with ``wait_ms`` and nothing ready, it
  long-polls every owner at once and answers with the first that brings
  messages -- leases a later answer brings are given straight back (a nack
  with no delay), so they are redelivered at once, never lost.  Acks, nacks
  and lease extensions go to the owner of each ack id's partition; a group's
  description merges the owners' cursors.  Extensions travel as their own RPC
  (``group_extend``), never as a ``group_settle`` flag: a node that predates
  them answers ``unknown_method`` (the ids are refused as ``unavailable``)
  rather than reading an extension as an ack.
* **Failover keeps the group.**  Each leader writes a *checkpoint* -- a
  control record carrying every group's committed offset of the partition --
  into the partition's own log whenever a committed offset moved (at most once
  per :attr:`checkpoint_seconds`); followers adopt it as they store it.  A new
  leader therefore resumes from its last checkpoint: what was acked after it
  is delivered again (at-least-once), nothing acked before it is.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.delivery.groups import MAX_EXTEND_MS, Delivery, parse_ack_id
from sprawl.errors import BadRequest, SprawlError
from sprawl.log.record import DEFAULT_READ_BYTES, Record, pack_record, unpack_record
from sprawl.peer.frames import BATCH_BYTES
from sprawl.replication.envelope import record_bytes

if TYPE_CHECKING:
    from sprawl.cluster.dataplane import DataPlane
    from sprawl.topics import Topic

log = Logger()

#: The first bytes of a checkpoint control record's payload.
CHECKPOINT = b'{"groups":'


class GroupRoutes:
    """Consumer-group requests routed to partition leaders (see the module docstring)."""

    def __init__(self, plane: DataPlane, *, checkpoint_seconds: float = 1.0) -> None:
        self.plane = plane
        self.broker = plane.broker
        self.rpc = plane.rpc
        self.node_id = plane.node_id
        self.checkpoint_seconds = checkpoint_seconds
        self._checkpointed: dict[tuple[str, int], dict[str, int]] = {}
        self._last_checkpoint = 0.0
        self.checkpoints_written = 0
        self.checkpoints_adopted = 0
        self.given_back = 0
        self.rpc.register("group_pull", self._rpc_pull)
        self.rpc.register("group_settle", self._rpc_settle)
        self.rpc.register("group_describe", self._rpc_describe)
        self.rpc.register("group_extend", self._rpc_extend)

    # -- ownership -------------------------------------------------------------------

    def owner(self, topic: str, p: int) -> str:
        """The node owning the partition's group state ("" when none is known)."""
        if self.plane.leads(topic, p):
            return str(self.node_id)
        pl = self.plane.placement(topic, p)
        return str(pl["leader"]) if pl else ""

    def owned(self, topic: Topic) -> set[int] | None:
        """Partitions of ``topic`` whose group state this node owns (None: all)."""
        n = len(topic.logs)
        mine = {p for p in range(n) if self.plane.leads(topic.name, p)}
        return None if len(mine) == n else mine

    def _by_owner(self, topic: Topic) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for p in range(len(topic.logs)):
            o = self.owner(topic.name, p)
            if o:
                out.setdefault(o, []).append(p)
        return out

    # -- pull ------------------------------------------------------------------------

    async def pull(
        self, topic: Topic, group: str, max_count: int, wait_ms: int, max_bytes: int = DEFAULT_READ_BYTES
    ) -> list[tuple[Delivery, Record]]:
        """Lease up to ``max_count`` messages of ``group`` from every
        partition's owner, at most ``max_bytes`` of them (at least one)."""
        owners = self._by_owner(topic)
        order = sorted(owners, key=lambda o: (o != self.node_id, self.plane.rng.random()))
        got: list[tuple[Delivery, Record]] = []
        room = max_bytes
        for o in order:
            if len(got) >= max_count or (got and room <= 0):
                break
            try:
                more = await self._pull_at(o, topic, group, owners[o], max_count - len(got), 0, max(room, 1))
            except SprawlError as e:
                if e.code in ("group_not_found", "topic_not_found") and o == self.node_id:
                    raise
                log.debug("group pull at {node} failed: {err}", node=o, err=e.message)
                continue
            keep = 0
            for _dv, r in more:
                if (got or keep) and r.size > room:
                    break  # over the budget (each owner gives at least one): back unseen
                room -= r.size
                keep += 1
            got += more[:keep]
            if keep < len(more):
                self._give_back(topic, group, o, more[keep:])
        if got or not wait_ms:
            return got
        pending = [
            defer.ensureDeferred(self._pull_at(o, topic, group, owners[o], max_count, wait_ms, max_bytes))
            for o in order
        ]
        first: defer.Deferred[None] = defer.Deferred()
        results: list[list[tuple[Delivery, Record]]] = []
        ended = [0]

        def settle(res: Any, owner: str) -> None:
            ended[0] += 1
            if isinstance(res, list) and res:
                if first.called:
                    self._give_back(topic, group, owner, res)
                else:
                    results.append(res)
                    first.callback(None)
            elif ended[0] == len(pending) and not first.called:
                first.callback(None)

        for o, d in zip(order, pending, strict=True):
            d.addBoth(settle, o)
        if pending:
            await first
        return results[0] if results else []

    def _pull_at(
        self,
        node: str,
        topic: Topic,
        group: str,
        parts: list[int],
        max_count: int,
        wait_ms: int,
        max_bytes: int = DEFAULT_READ_BYTES,
    ) -> defer.Deferred[list[tuple[Delivery, Record]]]:
        if node == self.node_id:
            g = self.broker.get_group(topic, group)
            d: defer.Deferred[list[tuple[Delivery, Record]]] = self.broker.pull(
                topic, g, max_count, wait_ms, partitions=set(parts), max_bytes=max_bytes
            )
            return d
        body = {
            "topic": topic.name,
            "group": group,
            "max": max_count,
            "wait_ms": wait_ms,
            "partitions": parts,
            "max_bytes": max_bytes,
        }
        call = self.rpc.call(
            node, "group_pull", body, hops=1, timeout=self.plane.forward_timeout + wait_ms / 1000.0
        )
        return call.addCallback(_unpack_deliveries)

    def _give_back(self, topic: Topic, group: str, owner: str, got: list[tuple[Delivery, Record]]) -> None:
        """Leases nobody will see (a slower owner answered after the first, or
        the answer is full): redeliver now, the attempt not counted."""
        self.given_back += len(got)
        d = self._settle_at(owner, topic, group, [dv.ack_id for dv, _ in got], True, 0, unseen=True)
        d.addErrback(lambda f: log.debug("giving leases back failed: {err}", err=str(f.value)))

    def _rpc_pull(self, caller: str, body: Any, hops: int) -> defer.Deferred[list[Any]]:
        if not isinstance(body, dict):
            raise BadRequest("malformed group pull", code="bad_request")
        t = self.broker.get_topic(str(body["topic"]))
        g = self.broker.get_group(t, str(body["group"]))
        mine = self.owned(t)
        parts = {int(p) for p in body["partitions"]}
        if mine is not None:
            parts &= mine
        # The answer is one peer frame: the pull reads at most the caller's
        # budget, never more than BATCH_BYTES (one message at least) ...
        max_bytes = max(1, min(int(body.get("max_bytes") or BATCH_BYTES), BATCH_BYTES))
        d = self.broker.pull(
            t, g, int(body["max"]), min(int(body["wait_ms"]), 60_000), partitions=parts, max_bytes=max_bytes
        )

        def bounded(got: list[tuple[Delivery, Record]]) -> list[Any]:
            # ... and, measured as the frame will carry them, at most
            # BATCH_BYTES of messages (but one); the rest leased back unseen
            # (no delivery attempt counted).
            keep, size = 0, 0
            for _dv, r in got:
                n = record_bytes(r)
                if keep and size + n > BATCH_BYTES:
                    break
                keep += 1
                size += n
            if keep < len(got):
                g.unlease([dv for dv, _r in got[keep:]], self.broker.now_ms())
                self.broker.mark_group_dirty(t.name, g.name)
            return _pack_deliveries(got[:keep])

        return d.addCallback(bounded)

    # -- ack / nack --------------------------------------------------------------------

    async def settle(
        self, topic: Topic, group: str, ack_ids: list[str], nack: bool, delay_ms: int = 0
    ) -> dict[str, str]:
        """Ack (or nack) deliveries at their partitions' owners; {ack_id: refusal}."""
        refused, by_owner = self._by_ack_owner(topic, ack_ids)
        for o, ids in by_owner.items():
            try:
                refused.update(await self._settle_at(o, topic, group, ids, nack, delay_ms))
            except SprawlError as e:
                if o == self.node_id:
                    raise
                for a in ids:
                    refused[a] = "unavailable"
                log.debug("group settle at {node} failed: {err}", node=o, err=e.message)
        return refused

    def _by_ack_owner(self, topic: Topic, ack_ids: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
        """Ack ids by the node owning their partition; those that have none refused."""
        refused: dict[str, str] = {}
        by_owner: dict[str, list[str]] = {}
        for a in ack_ids:
            parsed = parse_ack_id(a)
            if parsed is None or not 0 <= parsed[0] < len(topic.logs):
                refused[a] = "malformed" if parsed is None else "unknown"
                continue
            o = self.owner(topic.name, parsed[0])
            if not o:
                refused[a] = "unavailable"
                continue
            by_owner.setdefault(o, []).append(a)
        return refused, by_owner

    def _settle_at(
        self,
        node: str,
        topic: Topic,
        group: str,
        ids: list[str],
        nack: bool,
        delay_ms: int,
        unseen: bool = False,
    ) -> defer.Deferred[dict[str, str]]:
        if node == self.node_id:
            g = self.broker.get_group(topic, group)
            if unseen:
                return self.broker.give_back(topic, g, ids)  # type: ignore[no-any-return]
            if nack:
                return self.broker.nack(topic, g, ids, delay_ms)  # type: ignore[no-any-return]
            return self.broker.ack(topic, g, ids)  # type: ignore[no-any-return]
        # ``unseen`` rides with ``nack``: a node that predates it redelivers them.
        body = {
            "topic": topic.name,
            "group": group,
            "ack_ids": ids,
            "nack": nack or unseen,
            "delay_ms": delay_ms,
            "unseen": unseen,
        }
        return self.rpc.call(node, "group_settle", body, hops=1, timeout=self.plane.forward_timeout)

    def _rpc_settle(self, caller: str, body: Any, hops: int) -> defer.Deferred[dict[str, str]]:
        if not isinstance(body, dict):
            raise BadRequest("malformed group ack", code="bad_request")
        t = self.broker.get_topic(str(body["topic"]))
        g = self.broker.get_group(t, str(body["group"]))
        ids = [str(a) for a in body["ack_ids"]]
        if body.get("unseen"):
            return self.broker.give_back(t, g, ids)  # type: ignore[no-any-return]
        if body.get("nack"):
            return self.broker.nack(t, g, ids, int(body.get("delay_ms") or 0))  # type: ignore[no-any-return]
        return self.broker.ack(t, g, ids)  # type: ignore[no-any-return]

    # -- lease extension ----------------------------------------------------------------

    async def extend(
        self, topic: Topic, group: str, ack_ids: list[str], extend_ms: int
    ) -> tuple[dict[str, str], dict[str, int]]:
        """Extend leases at their partitions' owners to now + ``extend_ms``:
        ({ack_id: refusal}, {ack_id: new deadline})."""
        refused, by_owner = self._by_ack_owner(topic, ack_ids)
        deadlines: dict[str, int] = {}
        for o, ids in by_owner.items():
            try:
                if o == self.node_id:
                    g = self.broker.get_group(topic, group)
                    no, yes = self.broker.extend(topic, g, ids, extend_ms)
                else:
                    body = {"topic": topic.name, "group": group, "ack_ids": ids, "extend_ms": extend_ms}
                    answer = await self.rpc.call(
                        o, "group_extend", body, hops=1, timeout=self.plane.forward_timeout
                    )
                    no, yes = _extend_answer(answer, ids)
            except SprawlError as e:
                if o == self.node_id:
                    raise
                no, yes = dict.fromkeys(ids, "unavailable"), {}
                log.debug("group extend at {node} failed: {err}", node=o, err=e.message)
            refused.update(no)
            deadlines.update(yes)
        return refused, deadlines

    def _rpc_extend(self, caller: str, body: Any, hops: int) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("malformed group extend", code="bad_request")
        t = self.broker.get_topic(str(body["topic"]))
        g = self.broker.get_group(t, str(body["group"]))
        ids = [str(a) for a in body["ack_ids"]]
        extend_ms = int(body["extend_ms"])
        if not 1 <= extend_ms <= MAX_EXTEND_MS:
            raise BadRequest("extend_ms out of range", code="invalid_field")
        refused, deadlines = self.broker.extend(t, g, ids, extend_ms)
        return {"refused": refused, "deadlines": deadlines}

    # -- describe ----------------------------------------------------------------------

    async def describe(self, topic: Topic, group: str) -> dict[str, Any]:
        """The group as its owners see it: each partition's cursor from its owner."""
        g = self.broker.get_group(topic, group)
        out = g.describe(topic.high_watermarks())
        committed: dict[str, int] = {}
        hws: dict[str, int] = {}
        totals = dict.fromkeys(
            ("in_flight", "dead_lettered", "delivered_total", "acked_total", "redelivered_total"), 0
        )
        for o, parts in self._by_owner(topic).items():
            try:
                if o == self.node_id:
                    view = self._owner_view(topic, group, parts)
                else:
                    body = {"topic": topic.name, "group": group, "partitions": parts}
                    view = await self.rpc.call(
                        o, "group_describe", body, hops=1, timeout=self.plane.forward_timeout
                    )
            except SprawlError as e:
                if o == self.node_id:
                    raise
                log.debug("group describe at {node} failed: {err}", node=o, err=e.message)
                continue
            committed.update({str(k): int(v) for k, v in view["committed"].items()})
            hws.update({str(k): int(v) for k, v in view["hw"].items()})
            for k in totals:
                totals[k] += int(view.get(k, 0))
        out["committed"] = {
            str(p): committed.get(str(p), c) for p, c in ((int(k), v) for k, v in out["committed"].items())
        }
        out.update(totals)
        out["lag"] = sum(max(0, hws.get(p, 0) - c) for p, c in out["committed"].items() if p in hws)
        return out

    def _owner_view(self, topic: Topic, group: str, parts: list[int]) -> dict[str, Any]:
        g = self.broker.get_group(topic, group)
        mine = self.owned(topic)
        keep = [p for p in parts if mine is None or p in mine]
        d = g.describe(topic.high_watermarks())
        return {
            "committed": {str(p): d["committed"].get(str(p), 0) for p in keep},
            "hw": {str(p): topic.logs[p].high_watermark for p in keep},
            "in_flight": d["in_flight"],
            "dead_lettered": d["dead_lettered"],
            "delivered_total": d["delivered_total"],
            "acked_total": d["acked_total"],
            "redelivered_total": d["redelivered_total"],
        }

    def _rpc_describe(self, caller: str, body: Any, hops: int) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("malformed group describe", code="bad_request")
        t = self.broker.get_topic(str(body["topic"]))
        return self._owner_view(t, str(body["group"]), [int(p) for p in body["partitions"]])

    # -- checkpoints -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """As leader of replicated partitions: write a checkpoint where a group's
        committed offset moved (at most once per :attr:`checkpoint_seconds`)."""
        if now - self._last_checkpoint < self.checkpoint_seconds:
            return
        self._last_checkpoint = now
        replicas = self.plane.service.replicas
        # Only the topics with groups, as the broker keeps them: most have
        # none, and an idle second walks no list of every topic (issue 23).
        led = [
            ((t.name, p), t)
            for t in list(self.broker.grouped_topics())
            if t.groups
            for p in range(len(t.logs))
            if (t.name, p) in replicas
        ]
        for (name, p), t in led:
            r = replicas.get((name, p))
            if r is None or not r.core.is_leader:
                continue
            state: dict[str, int] = {}
            for gname, g in t.groups.items():
                c = g.checkpoint(p)
                if c is not None:
                    state[gname] = c
            key = (name, p)
            if not state or self._checkpointed.get(key) == state:
                continue
            rec = Record(
                -1, p, 0, None, None, None, CHECKPOINT + json.dumps(state).encode() + b"}", True, control=True
            )
            try:
                d = r.publish([rec])
            except Exception as e:  # not leader any more, or too many waiting: next time
                log.debug(
                    "checkpoint of {topic}/{partition} not written: {err}",
                    topic=name,
                    partition=p,
                    err=str(e),
                )
                continue
            self._checkpointed[key] = state
            self.checkpoints_written += 1

            def forget(_: Failure, key: tuple[str, int] = key) -> None:
                self._checkpointed.pop(key, None)  # written again next time

            d.addErrback(forget)

    def follow(self, topic: Topic, partition: int, records: list[Record]) -> None:
        """(Follower) stored records of the leader: adopt the checkpoints among them."""
        for rec in records:
            if not rec.control or not rec.payload.startswith(CHECKPOINT):
                continue
            try:
                state = json.loads(rec.payload)["groups"]
            except (ValueError, KeyError, TypeError):
                continue
            for gname, committed in state.items():
                g = topic.groups.get(gname)
                if g is not None and isinstance(committed, int):
                    g.adopt(partition, committed)
                    self.broker.mark_group_dirty(topic.name, gname)
            self.checkpoints_adopted += 1


def _pack_deliveries(got: list[tuple[Delivery, Record]]) -> list[Any]:
    return [[dv.partition, dv.offset, dv.attempt, dv.ack_id, dv.deadline_ms, pack_record(r)] for dv, r in got]


def _unpack_deliveries(raw: list[Any]) -> list[tuple[Delivery, Record]]:
    return [
        (Delivery(int(p), int(o), int(a), str(i), int(dl)), unpack_record(r)) for p, o, a, i, dl, r in raw
    ]


def _extend_answer(answer: Any, ids: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    """A ``group_extend`` answer, kept to the ids asked about; one of another shape is
    an owner that did not answer (every id ``unavailable``)."""
    try:
        no = {str(k): str(v) for k, v in answer["refused"].items()}
        yes = {str(k): int(v) for k, v in answer["deadlines"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SprawlError("malformed group_extend answer", code="bad_answer", status=502) from None
    asked = set(ids)
    return {k: v for k, v in no.items() if k in asked}, {k: v for k, v in yes.items() if k in asked}
