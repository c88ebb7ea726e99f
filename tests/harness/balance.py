"""Set-up the balancer's property tests share (``tests/unit/cluster/test_balance_*.py``):
the partitions of a steady placement with one decision's drawn forecasts and
profiles, and the node loads whose sum of squares the no-flapping checks watch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

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
