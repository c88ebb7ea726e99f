"""A move budget for predictive balancing, taken from a shadow run of the reactive rule.  Pure.

Issue 18 asks the predictive balancer for less hot time *and* no more moves
than the reactive one.  The controller can know, at every decision, how many
moves the reactive balancer as it is today would have made by now: it runs
that balancer in *shadow* (:class:`ShadowReactive`) on its own copy of the
placement -- a leader map and replica sets changed only by the shadow's own
moves -- fed the same gossiped partition rates the real balancer sees.
Every move the shadow makes earns a token (:class:`MoveBudget`); every move
the real cluster makes, for any reason, spends one (or goes into debt when
there is none); the predictive balancer makes a move on a forecast only
while ``tokens - debt - reserve >= 1``, and its reactive moves are never held
(a node truly hot is relieved).  So over a whole run::

    real moves <= shadow moves + debt left at the end

and the debt comes only from the real cluster's own reactive moves running
ahead of the shadow's.  Early in a run there are no tokens and the balancer
is the reactive one; the tokens it banks are reactive moves the shadow makes
that the better-balanced real cluster did not need, and they pay for
forecast moves later.  With ``expire`` a token not spent within that many
seconds of being earned is dropped (a move banked hours ago pays for nothing
now).

The shadow is the controller's loop in miniature, on pure cores: every
gossip step :meth:`ShadowReactive.observe` lands the shadow's moves that are
due and takes the partitions' rates; every decision :meth:`ShadowReactive.decide`
builds the shadow's view (:func:`~sprawl.cluster.balance.partitions_from` on
the shadow placement), runs a reactive :class:`~sprawl.cluster.balance.Balancer`
(``predict=False``) and the controller's
:func:`~sprawl.cluster.balance.replica_move`, and starts the moves (a
leadership move lands after ``move_seconds``, a replica move after
``copy_seconds + move_seconds``).  The rates it is fed:

* ``regossip=False`` (the default): the partition rates as the controller
  has them, each from its real leader's gossip (the last one known where the
  real leader has not reported it yet);
* ``regossip=True``: the shadow re-applies the gossip's own rule per shadow
  node (:func:`sprawl.gossip.load.encode_parts`, re-sent only when a rate
  moved by 20% or the node's leaderships changed) to the rates it is fed, so
  its view lags the way the reactive run's own gossip does.  Fed the true
  rates (the simulator can) it *is* the reactive run, move for move
  (``tests/unit/forecast/test_forecast_budget.py``).

Cost per decision: one reactive decision over the partitions and a pass over
them to build the view -- O(partitions), measured in docs/benchmarks.md.

Why the budget cannot add flapping: it only withholds moves on a forecast;
every move that is made is one the balancer would have made without it, and
the no-flapping argument of :mod:`sprawl.cluster.balance` (every move lowers
the sum of squared present node loads) holds for any subset of those moves.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

from sprawl.cluster.balance import BalanceConfig, Balancer, Decision, Move, PartitionLoad, replica_move
from sprawl.gossip.load import encode_parts, parts_changed, rates_by_node, view_rates

PartKey = tuple[str, int]
Rate = tuple[float, float]

#: The topic name of the stand-in partitions that carry a cool node's load
#: in the shadow's view (not a valid topic name: never a real partition).
_STAND_IN = "\x00node"

#: The controller's rule: a partition gets a new replica at most every 10 minutes.
REPLICA_MOVE_EVERY = 600.0


@dataclass
class MoveBudget:
    """Tokens earned by the shadow's moves, spent by the real cluster's.

    ``expire``: seconds a token lasts unspent (``inf``: for ever).  Tokens are
    spent oldest first; a move with no token left goes into ``debt``, which
    later tokens pay off before any is banked."""

    expire: float = math.inf
    #: Times at which the unspent tokens were earned, oldest first.
    tokens: deque[float] = field(default_factory=deque)
    debt: int = 0
    earned: int = 0
    spent: int = 0
    #: Tokens dropped unspent (``expire``).
    expired: int = 0

    def _drop(self, now: float) -> None:
        while self.tokens and now - self.tokens[0] > self.expire:
            self.tokens.popleft()
            self.expired += 1

    def earn(self, now: float, n: int = 1) -> None:
        """``n`` moves of the shadow at ``now``."""
        for _ in range(n):
            self.earned += 1
            if self.debt > 0:
                self.debt -= 1
            else:
                self.tokens.append(now)

    def spend(self, now: float, n: int = 1) -> None:
        """``n`` moves of the real cluster at ``now`` (whatever their reason)."""
        self._drop(now)
        for _ in range(n):
            self.spent += 1
            if self.tokens:
                self.tokens.popleft()
            else:
                self.debt += 1

    def available(self, now: float) -> int:
        """Unexpired tokens less the debt (may be negative)."""
        self._drop(now)
        return len(self.tokens) - self.debt


class ShadowReactive:
    """The reactive balancer as it is today, run on its own copy of the
    placement (see the module docstring): ``moves`` is R(t), the moves it
    would have made by now."""

    def __init__(
        self,
        config: BalanceConfig,
        replicas: Mapping[PartKey, Iterable[str]],
        leaders: Mapping[PartKey, str],
        *,
        regossip: bool = False,
        move_seconds: float = 2.0,
        copy_seconds: float = 60.0,
    ) -> None:
        self.config = dataclasses.replace(config, predict=False)
        self.balancer = Balancer(self.config)
        self.replicas: dict[PartKey, tuple[str, ...]] = {k: tuple(v) for k, v in replicas.items()}
        self.leader: dict[PartKey, str] = dict(leaders)
        #: The partitions in placement order (topic, then partition): the
        #: order the controller's view lists them in.
        self._order = sorted(self.replicas)
        self.regossip = regossip
        self.move_seconds = move_seconds
        self.copy_seconds = copy_seconds
        #: key -> (destination, when it lands).
        self.moving: dict[PartKey, tuple[str, float]] = {}
        self._replica_moved: dict[PartKey, float] = {}
        #: The last rate known of every partition.
        self._rates: dict[PartKey, Rate] = {}
        #: regossip: per shadow node, the list last "gossiped" and the leaderships it was sent with.
        self._sent: dict[str, list[object]] = {}
        self._sent_led: dict[str, frozenset[PartKey]] = {}
        self.moves = 0
        #: (time, move) of every move the shadow started.
        self.log: list[tuple[float, Move]] = []
        self.last: Decision | None = None
        #: Partitions handed to the reactive rule in the last decision (the
        #: partitions of the nodes that may shed in it; the rest stand-ins).
        self.built = 0

    def observe(self, now: float, rates: Mapping[PartKey, Rate | tuple[float | None, float | None]]) -> None:
        """A gossip step: land the moves that are due, take the partitions'
        rates (a partition missing or ``None``: its last known rate)."""
        for k, (dst, until) in list(self.moving.items()):
            if until <= now:
                self.leader[k] = dst
                del self.moving[k]
        for k, r in rates.items():
            if r[0] is not None or r[1] is not None:
                self._rates[k] = (r[0] or 0.0, r[1] or 0.0)
        if self.regossip:
            led: dict[str, set[PartKey]] = {}
            for k, n in self.leader.items():
                led.setdefault(n, set()).add(k)
            for n in set(led) | set(self._sent):
                mine = frozenset(led.get(n, ()))
                new = encode_parts({k: self._rates.get(k, (0.0, 0.0)) for k in mine})
                if mine != self._sent_led.get(n) or parts_changed(self._sent.get(n, []), new):
                    self._sent[n], self._sent_led[n] = new, mine

    def due(self, now: float) -> bool:
        """Whether the shadow's balancer decides at ``now``."""
        return self.balancer.due(now)

    def _view(self, nodes: Iterable[str]) -> dict[PartKey, Rate]:
        """Every partition's rate as the shadow's balancer would see it (its
        shadow leader's report; missing: not reported)."""
        if not self.regossip:
            return self._rates
        views = [
            {"id": n, "state": "alive", "partition_rates": view_rates(self._sent.get(n, []))} for n in nodes
        ]
        out: dict[PartKey, Rate] = {}
        for n, rates in rates_by_node(views).items():
            for k, r in rates.items():
                if self.leader.get(k) == n:
                    out[k] = r
        return out

    def _node_loads(self, now: float, nodes: list[str], seen: Mapping[PartKey, Rate]) -> dict[str, float]:
        """Every live node's load summed exactly as :meth:`Balancer.decide`
        sums it: the same partitions in the same order, the same stand-in for
        a partition not reported yet."""
        c = self.config
        loads = dict.fromkeys(sorted(set(nodes)), 0.0)
        moved = self.balancer.moved_loads
        for k in self._order:
            n = self.leader.get(k)
            if n not in loads:
                continue
            r = seen.get(k)
            if r is None:
                m = moved.get(k)
                if m is not None and now - m[0] < c.cooldown:
                    loads[n] += m[1]
                continue
            loads[n] += max(0.0, r[0]) + max(0.0, r[1]) / c.bytes_per_unit
        return loads

    def decide(self, now: float, live: Iterable[str]) -> int:
        """One shadow decision (call when :meth:`due`): the moves it started.

        The reactive rule only ever looks at the partitions of nodes that
        shed: hot for ``persist`` decisions in a row (with this one); the
        others count by their node's load.  So the view handed to the
        balancer holds those nodes' partitions and, for every other node,
        one stand-in partition carrying the node's load (not movable, no
        replicas): node loads, mean, bound, hot set and moves are those of
        the whole view, since each node's load is summed in the same order
        (:meth:`_node_loads`), and a decision in which no node sheds builds
        no per-partition object at all.  (The shadow's :attr:`last` decision
        therefore counts a stand-in as one led partition.)"""
        c = self.config
        nodes = list(live)
        self.built = 0
        seen = self._view(nodes)
        loads = self._node_loads(now, nodes, seen)
        upper = sum(loads.values()) / len(loads) * (1 + c.threshold) if loads else 0.0
        hot = {n for n, v in loads.items() if v > upper and v >= c.min_load}
        # a hot node sheds (or gets a replica move) only once hot ``persist``
        # decisions in a row: before that its partitions are not looked at
        last = self.balancer.last
        was = {} if last is None else {n: v.streak for n, v in last.nodes.items()}
        hot = {n for n in hot if was.get(n, 0) + 1 >= c.persist}
        parts = [
            PartitionLoad(_STAND_IN, i, n, (), msgs_s=v, bytes_s=0.0, movable=False)
            for i, (n, v) in enumerate(loads.items())
            if n not in hot
        ]
        for k in self._order if hot else ():
            n = self.leader.get(k)
            if n not in hot:
                continue
            r = seen.get(k)
            self.built += 1
            parts.append(
                PartitionLoad(
                    k[0],
                    k[1],
                    n,
                    self.replicas[k],
                    msgs_s=None if r is None else r[0],
                    bytes_s=None if r is None else r[1],
                    movable=k not in self.moving,
                )
            )
        d = self.balancer.decide(now, parts, nodes, len(self.moving))
        self.last = d
        started = 0
        rm = replica_move(
            d,
            parts,
            nodes,
            bytes_per_unit=self.config.bytes_per_unit,
            recently_moved=partial(_recent, self._replica_moved, now),
        )
        if rm is not None:
            k = (rm.topic, rm.partition)
            self.replicas[k] = tuple(rm.dst if r == rm.src else r for r in self.replicas[k])
            self._replica_moved[k] = now
            self.moving[k] = (rm.dst, now + self.copy_seconds + self.move_seconds)
            self.log.append((now, rm))
            started += 1
        for mv in d.moves:
            self.moving[(mv.topic, mv.partition)] = (mv.dst, now + self.move_seconds)
            self.log.append((now, mv))
            started += 1
        self.moves += started
        return started


def _recent(moved: Mapping[PartKey, float], now: float, key: PartKey) -> bool:
    return now - moved.get(key, -math.inf) < REPLICA_MOVE_EVERY
