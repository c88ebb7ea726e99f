"""Set-up the balancer's property tests share (``tests/unit/cluster/test_balance_*.py``):
the partitions of a steady placement with one decision's drawn forecasts and
profiles, and the node loads whose sum of squares the no-flapping checks watch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sprawl.cluster.balance import PartitionLoad

Key = tuple[str, int]
#: One partition's draw for one decision: its forecast and its profile (either may be None).
Draw = tuple[float | None, Sequence[float] | None]


def drawn(
    leaders: Mapping[Key, str],
    replicas: Mapping[Key, tuple[str, ...]],
    rate: Mapping[Key, float],
    draw: Sequence[Draw],
) -> list[PartitionLoad]:
    """Every partition ``(topic, i)`` at its steady ``rate``, with the ``i``-th
    draw's forecast and profile."""
    out = []
    for k, n in leaders.items():
        forecast, profile = draw[k[1]]
        out.append(
            PartitionLoad(
                k[0],
                k[1],
                n,
                replicas[k],
                rate[k],
                0.0,
                forecast=forecast,
                profile=None if profile is None else tuple(profile),
            )
        )
    return out


def node_loads(
    leaders: Mapping[Key, str], rate: Mapping[Key, float], nodes: Iterable[str]
) -> dict[str, float]:
    """Each node's load: the rates of the partitions it leads."""
    out = dict.fromkeys(nodes, 0.0)
    for k, n in leaders.items():
        out[n] += rate[k]
    return out


def squares(leaders: Mapping[Key, str], rate: Mapping[Key, float], nodes: Iterable[str]) -> float:
    """The sum of squared node loads, which every move must lower."""
    return sum(v * v for v in node_loads(leaders, rate, nodes).values())


class FlapCheck:
    """The no-flapping property at plan level, over a steady placement whose
    leaders each decision's moves change (:meth:`apply`): every move starts at
    its partition's leader; between decisions with no plan under way
    (``Balancer.plan`` empty: a relief or multi-decision plan takes whole
    decisions and may raise the sum on its way) the sum of squared node loads
    fell whenever anything moved, and no leader assignment comes back; a plan
    is never dropped under steady loads."""

    def __init__(self, leaders: dict[Key, str], rate: Mapping[Key, float], nodes: Sequence[str]) -> None:
        self.leaders = leaders
        self.rate = rate
        self.nodes = nodes
        self.seen = {tuple(sorted(leaders.items()))}
        self.last = squares(leaders, rate, nodes)
        self.moved = False

    def apply(self, plan: Sequence[object], moves: Sequence[Any], held: Sequence[str]) -> None:
        """One decision: its ``moves`` made, the balancer's ``plan`` left after it and its
        ``held`` lines (``Decision.moves``, ``Balancer.plan``, ``Decision.held``)."""
        for m in moves:
            assert self.leaders[(m.topic, m.partition)] == m.src
            self.leaders[(m.topic, m.partition)] = m.dst
        self.moved = self.moved or bool(moves)
        if plan:
            assert not any("plan dropped" in h for h in held)
            return
        if self.moved:
            now = squares(self.leaders, self.rate, self.nodes)
            assert now < self.last, (moves, [(k, self.rate[k]) for k in self.leaders], self.last)
            state = tuple(sorted(self.leaders.items()))
            assert state not in self.seen  # never back to an earlier assignment
            self.seen.add(state)
            self.last, self.moved = now, False
