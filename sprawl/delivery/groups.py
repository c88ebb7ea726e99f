"""Consumer groups: competing consumers with leases, acks, nacks,
redelivery with attempt counts, and dead-lettering.

Pure: no Twisted import.  The adapter passes the clock (``now_ms``) and the
partitions' visible ranges in; the core returns deliveries (which offsets to
hand out, with ack ids) and dead-letter actions (which offsets to copy to the
dead-letter topic).  State round-trips through :meth:`ConsumerGroup.to_state`
so a restart keeps committed offsets, attempt counts and pending redeliveries.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

LEASED = 0
READY = 1
DONE = 2  # acked or dead-lettered

#: The longest a lease may be extended by at once (12 hours, as SQS allows).
MAX_EXTEND_MS = 43_200_000


@dataclass
class GroupConfig:
    """How a group delivers: where new groups start, lease length, DLQ policy."""

    start: str = "earliest"
    ack_deadline_ms: int = 30_000
    max_deliveries: int = 0  # 0: redeliver forever
    dead_letter_topic: str | None = None
    max_in_flight: int = 10_000

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "start": self.start,
            "ack_deadline_ms": self.ack_deadline_ms,
            "max_deliveries": self.max_deliveries,
            "dead_letter_topic": self.dead_letter_topic,
            "max_in_flight": self.max_in_flight,
        }


@dataclass
class Delivery:
    """One offset handed to a consumer under a lease."""

    partition: int
    offset: int
    attempt: int
    ack_id: str
    deadline_ms: int


@dataclass
class DeadLetter:
    """An offset that exhausted ``max_deliveries``: copy it to the DLQ topic."""

    partition: int
    offset: int
    attempts: int


@dataclass
class _Pending:
    state: int
    attempts: int
    due_ms: int  # lease deadline when LEASED, earliest redelivery when READY


@dataclass
class _Cursor:
    committed: int  # every offset below is done
    next: int  # first offset never delivered
    pending: dict[int, _Pending] = field(default_factory=dict)


def make_ack_id(partition: int, offset: int, attempt: int) -> str:
    """Ack ids name the exact delivery, so a late ack of an old lease is refused."""
    return f"{partition}-{offset}-{attempt}"


def parse_ack_id(ack_id: str) -> tuple[int, int, int] | None:
    """Inverse of :func:`make_ack_id`; None when malformed."""
    parts = ack_id.split("-") if isinstance(ack_id, str) else []
    if len(parts) != 3:
        return None
    try:
        p, o, a = (int(x) for x in parts)
    except ValueError:
        return None
    if p < 0 or o < 0 or a < 1:
        return None
    return p, o, a


class ConsumerGroup:
    """Delivery state of one group over the partitions of one topic."""

    def __init__(self, name: str, config: GroupConfig, starts: dict[int, int]):
        self.name = name
        self.config = config
        self.cursors: dict[int, _Cursor] = {p: _Cursor(o, o) for p, o in starts.items()}
        self.dead_lettered = 0
        self.delivered_total = 0
        self.acked_total = 0
        self.redelivered_total = 0
        self._leases: list[tuple[int, int, int, int]] = []  # (deadline, p, off, attempt)
        self._ready: list[tuple[int, int, int]] = []  # (due, p, off)
        self._rr = 0

    # -- queries -------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Offsets currently leased to a consumer."""
        return sum(1 for c in self.cursors.values() for s in c.pending.values() if s.state == LEASED)

    def committed(self) -> dict[int, int]:
        """Per partition: the offset below which everything is acked or dead-lettered."""
        return {p: c.committed for p, c in self.cursors.items()}

    def lag(self, high_watermarks: dict[int, int]) -> int:
        """Messages visible to the group and not yet acked (summed over partitions)."""
        return sum(max(0, high_watermarks.get(p, c.committed) - c.committed) for p, c in self.cursors.items())

    def checkpoint(self, partition: int) -> int | None:
        """The partition's committed offset (None: no cursor)."""
        c = self.cursors.get(partition)
        return c.committed if c is not None else None

    def adopt(self, partition: int, committed: int) -> None:
        """Take the partition's leader's committed offset (this node follows
        it): everything below is done, nothing is pending here."""
        c = self.cursors.get(partition)
        if c is None:
            self.cursors[partition] = _Cursor(committed, committed)
            return
        c.committed = committed
        c.next = committed
        c.pending.clear()

    def ensure_partitions(self, starts: dict[int, int]) -> None:
        """Start cursors for partitions added to the topic."""
        for p, o in starts.items():
            self.cursors.setdefault(p, _Cursor(o, o))

    # -- delivery --------------------------------------------------------------

    def pull(
        self,
        max_count: int,
        now_ms: int,
        visible: dict[int, tuple[int, int]],
        only: Collection[int] | None = None,
    ) -> list[Delivery]:
        """Lease up to ``max_count`` offsets (of the partitions in ``only``, when given).

        ``visible`` maps partition → (log_start, high_watermark).  Redeliveries
        that are due go first (oldest offset first), then new offsets.
        """
        self._clip(visible)
        out: list[Delivery] = []
        deadline = now_ms + self.config.ack_deadline_ms
        ready = self._ready
        skipped: list[tuple[int, int, int]] = []
        while ready and len(out) < max_count and ready[0][0] <= now_ms:
            due, p, off = heapq.heappop(ready)
            c = self.cursors.get(p)
            st = c.pending.get(off) if c else None
            if st is None or st.state != READY or st.due_ms != due:
                continue
            if only is not None and p not in only:
                skipped.append((due, p, off))
                continue
            if st.attempts:  # not one given back unseen (:meth:`give_back`)
                self.redelivered_total += 1
            out.append(self._lease(p, off, st, deadline))
        for item in skipped:
            heapq.heappush(ready, item)
        in_flight = self.in_flight if len(out) < max_count else 0
        parts = sorted(self.cursors if only is None else (p for p in self.cursors if p in only))
        n = len(parts)
        idle = 0
        # Acks out of order leave settled offsets behind an unacked head; bound
        # that bookkeeping too, not just the leases.
        max_pending = self.config.max_in_flight * 10
        while len(out) < max_count and n and idle < n and in_flight < self.config.max_in_flight:
            p = parts[self._rr % n]
            self._rr += 1
            c = self.cursors[p]
            hw = visible.get(p, (c.next, c.next))[1]
            if c.next >= hw or len(c.pending) >= max_pending:
                idle += 1
                continue
            idle = 0
            off = c.next
            c.next += 1
            st = _Pending(LEASED, 0, 0)
            c.pending[off] = st
            out.append(self._lease(p, off, st, deadline))
            in_flight += 1
        self.delivered_total += len(out)
        return out

    def unlease(self, deliveries: Collection[Delivery], now_ms: int) -> None:
        """Take back leases that were never handed to a consumer (an answer had
        no room for them): see :meth:`give_back`."""
        for dv in sorted(deliveries, key=lambda d: (d.partition, -d.offset)):
            self._take_back(dv.partition, dv.offset, dv.attempt, now_ms)

    def _lease(self, p: int, off: int, st: _Pending, deadline: int) -> Delivery:
        st.state = LEASED
        st.attempts += 1
        st.due_ms = deadline
        heapq.heappush(self._leases, (deadline, p, off, st.attempts))
        return Delivery(p, off, st.attempts, make_ack_id(p, off, st.attempts), deadline)

    def _clip(self, visible: dict[int, tuple[int, int]]) -> None:
        """Skip offsets deleted by retention."""
        for p, (low, _hw) in visible.items():
            c = self.cursors.get(p)
            if c is None:
                continue
            if c.committed < low:
                for off in [o for o in c.pending if o < low]:
                    del c.pending[off]
                c.committed = low
                self._advance(c)  # acked offsets right after the deleted ones
            if c.next < low:
                c.next = low

    def ack(self, ack_id: str, now_ms: int) -> str | None:
        """Acknowledge one delivery.  Returns None on success, else the reason
        it was refused (``malformed``, ``unknown``, ``expired``)."""
        parsed = parse_ack_id(ack_id)
        if parsed is None:
            return "malformed"
        p, off, attempt = parsed
        c = self.cursors.get(p)
        st = c.pending.get(off) if c else None
        if c is None or st is None or st.attempts != attempt or st.state == DONE:
            return "unknown"
        if st.state != LEASED or st.due_ms <= now_ms:
            return "expired"
        st.state = DONE
        self.acked_total += 1
        self._advance(c)
        return None

    def nack(self, ack_id: str, delay_ms: int, now_ms: int) -> tuple[str | None, DeadLetter | None]:
        """Give a delivery back for redelivery after ``delay_ms``.

        Returns (refusal reason or None, a dead-letter action when the
        message has used up ``max_deliveries``).
        """
        parsed = parse_ack_id(ack_id)
        if parsed is None:
            return "malformed", None
        p, off, attempt = parsed
        c = self.cursors.get(p)
        st = c.pending.get(off) if c else None
        if c is None or st is None or st.attempts != attempt or st.state != LEASED:
            return "unknown", None
        return None, self._release(p, off, st, now_ms + max(0, delay_ms))

    def extend(self, ack_id: str, extend_ms: int, now_ms: int) -> tuple[str | None, int]:
        """Move a live lease's deadline to ``now_ms + extend_ms`` (a consumer
        that needs longer than ``ack_deadline_ms``).  The ack id stays valid;
        the message is not redelivered at the old deadline, but is at the new
        one unless acked.  Returns (None, new deadline) on success, else (the
        reason it was refused -- ``malformed``, ``unknown``, ``expired`` --, 0)."""
        parsed = parse_ack_id(ack_id)
        if parsed is None:
            return "malformed", 0
        p, off, attempt = parsed
        c = self.cursors.get(p)
        st = c.pending.get(off) if c else None
        if c is None or st is None or st.attempts != attempt or st.state == DONE:
            return "unknown", 0
        if st.state != LEASED or st.due_ms <= now_ms:
            return "expired", 0
        deadline = now_ms + max(1, extend_ms)
        st.due_ms = deadline
        # The old heap entry is skipped by :meth:`tick` (its deadline no longer matches).
        heapq.heappush(self._leases, (deadline, p, off, attempt))
        return None, deadline

    def _release(self, p: int, off: int, st: _Pending, due: int) -> DeadLetter | None:
        mx = self.config.max_deliveries
        if mx and st.attempts >= mx:
            st.state = DONE
            self.dead_lettered += 1
            self._advance(self.cursors[p])
            return DeadLetter(p, off, st.attempts)
        st.state = READY
        st.due_ms = due
        heapq.heappush(self._ready, (due, p, off))
        return None

    def give_back(self, ack_id: str, now_ms: int) -> str | None:
        """Take back a lease its consumer never saw (the answer carrying it was
        full, or a faster owner answered first): the offset is delivered
        again at once and the attempt is not counted (a newest offset never
        leased before just rolls the cursor back).  Returns None, or why the
        id was refused (``malformed``, ``unknown``).  Give leases back newest
        first, so a run of fresh ones rolls back whole."""
        parsed = parse_ack_id(ack_id)
        if parsed is None:
            return "malformed"
        return None if self._take_back(*parsed, now_ms) else "unknown"

    def _take_back(self, p: int, off: int, attempt: int, now_ms: int) -> bool:
        c = self.cursors.get(p)
        st = c.pending.get(off) if c else None
        if c is None or st is None or st.attempts != attempt or st.state != LEASED:
            return False
        self.delivered_total -= 1
        st.attempts -= 1
        if st.attempts:
            self.redelivered_total -= 1
        elif off == c.next - 1:
            # The newest offset handed out, never seen: as if never leased.
            del c.pending[off]
            c.next = off
            return True
        st.state = READY
        st.due_ms = now_ms
        heapq.heappush(self._ready, (now_ms, p, off))
        return True

    def tick(self, now_ms: int) -> list[DeadLetter]:
        """Expire leases whose deadline passed; returns dead-letter actions."""
        out: list[DeadLetter] = []
        leases = self._leases
        while leases and leases[0][0] <= now_ms:
            deadline, p, off, attempt = heapq.heappop(leases)
            c = self.cursors.get(p)
            st = c.pending.get(off) if c else None
            if st is None or st.state != LEASED or st.attempts != attempt or st.due_ms != deadline:
                continue  # settled, or taken back unseen and leased again (a later deadline)
            dl = self._release(p, off, st, now_ms)
            if dl:
                out.append(dl)
        return out

    def next_due_ms(self) -> int | None:
        """When :meth:`tick` or a redelivery next has work (for the adapter's timer)."""
        times = []
        if self._leases:
            times.append(self._leases[0][0])
        if self._ready:
            times.append(self._ready[0][0])
        return min(times) if times else None

    def _advance(self, c: _Cursor) -> None:
        pend = c.pending
        while c.committed < c.next:
            st = pend.get(c.committed)
            if st is None or st.state != DONE:
                break
            del pend[c.committed]
            c.committed += 1

    # -- persistence -----------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume after a restart.

        Leases do not survive a restart: a leased offset comes back READY with
        its attempt count, so it is redelivered at once (at-least-once).
        """
        return {
            "config": self.config.to_dict(),
            "dead_lettered": self.dead_lettered,
            "cursors": {
                str(p): [
                    c.committed,
                    c.next,
                    [[o, s.state, s.attempts] for o, s in c.pending.items()],
                ]
                for p, c in self.cursors.items()
            },
        }

    @classmethod
    def from_state(cls, name: str, state: dict[str, Any], now_ms: int) -> ConsumerGroup:
        """Inverse of :meth:`to_state`."""
        cfg = state["config"]
        g = cls(name, GroupConfig(**cfg), {})
        g.dead_lettered = int(state.get("dead_lettered", 0))
        for p_s, (committed, nxt, pending) in state["cursors"].items():
            c = _Cursor(int(committed), int(nxt))
            for o, s, a in pending:
                if s == DONE:
                    c.pending[int(o)] = _Pending(DONE, int(a), 0)
                else:
                    c.pending[int(o)] = _Pending(READY, int(a), now_ms)
                    heapq.heappush(g._ready, (now_ms, int(p_s), int(o)))
            g.cursors[int(p_s)] = c
        return g

    def describe(self, high_watermarks: dict[int, int]) -> dict[str, Any]:
        """The group as ``GET .../groups/{group}`` shows it."""
        return {
            "group": self.name,
            **self.config.to_dict(),
            "committed": {str(p): c.committed for p, c in self.cursors.items()},
            "lag": self.lag(high_watermarks),
            "in_flight": self.in_flight,
            "dead_lettered": self.dead_lettered,
            "delivered_total": self.delivered_total,
            "acked_total": self.acked_total,
            "redelivered_total": self.redelivered_total,
        }
