"""A follower entry node's router for in-process tests of the forwarding path.

:class:`FollowerEntry` is the node ``a`` that follows ``t``/0 (led by ``L``): its
replica's :class:`PartitionLog`, a fake broker whose watchers the log's moves
notify, and a :class:`Router` on the RPC the test gives.  Tests drive the
replica (:meth:`replicate`, :meth:`show`) and read what the router sent.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet import task

from sprawl.cluster.routing import Router
from sprawl.log.partition import PartitionLog
from sprawl.log.record import Record

REPLICAS = ["L", "a", "b"]


class FollowerEntry:
    """Node ``a``'s router over ``rpc``; ``self.leader`` names the leader the
    placement gives (a test may change it between publishes)."""

    def __init__(self, rpc: Any, clock: task.Clock) -> None:
        self.clock = clock
        self.rpc = rpc
        self.log = PartitionLog("t", 0, leader="L", replicas=list(REPLICAS))
        self.log.replicated = True
        self.topic = SimpleNamespace(
            name="t",
            logs=[self.log],
            partition_for=lambda key: 0,
            config=SimpleNamespace(max_message_bytes=1 << 20),
        )
        self.watchers: dict[tuple[str, int], set[Callable[[], None]]] = {}
        self.leader = "L"
        ids = iter(range(1_000_000))
        broker = SimpleNamespace(
            topics={"t": self.topic},
            check_message_sizes=lambda records, limit: None,
            new_message_id=lambda: f"named-{next(ids)}",
            watch=self._watch,
            metrics=None,
        )
        core = SimpleNamespace(is_leader=False, fenced_epoch=1)
        sync = SimpleNamespace(
            is_local=lambda name, p: False,
            service=SimpleNamespace(replicas={("t", 0): SimpleNamespace(core=core)}),
            placement=lambda name, p: {"leader": self.leader, "replicas": list(REPLICAS), "epoch": 1},
        )
        self.router = Router("a", broker, sync, rpc, clock)  # type: ignore[arg-type]

    def _watch(self, name: str, p: int, fn: Callable[[], None]) -> Callable[[], None]:
        fns = self.watchers.setdefault((name, p), set())
        fns.add(fn)
        return lambda: fns.discard(fn)

    def no_timer_left(self) -> bool:
        """No call waits and no timer is left once the RPC's deadlines' timer
        -- armed for a call answered since, which does not disarm it (one
        timer for every call: issue 16, turn44) -- fires, to nothing."""
        if self.rpc._pending:
            return False
        self.clock.advance(self.rpc.timeout)
        return self.clock.getDelayedCalls() == []

    def watching(self) -> int:
        """How many watchers the router keeps on the replica."""
        return sum(len(s) for s in self.watchers.values())

    def replicate(self, *ids: str) -> int:
        """The leader's append of ``ids`` reaches this replica and is durable here
        (not shown yet); returns the offset of the first."""
        start = self.log.next_offset
        self.log.append_at([Record(start + k, 0, 1, i, None, None, b"m", True) for k, i in enumerate(ids)], 1)
        self.log.stored(self.log.next_offset)
        return start

    def show(self, end: int) -> None:
        """The replica's high watermark passes ``end`` (a majority holds it)."""
        if self.log.advance_high_watermark(end):
            for fn in list(self.watchers.get(("t", 0), ())):
                fn()
