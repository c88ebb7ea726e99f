"""A bounded search for the moves that relieve a *stuck* hot node.  Pure.

A node is stuck when it is hot and no single leadership move the reactive
rule may make (to a replica below the mean that stays at or below the bound)
takes any of its partitions: every replica of its partitions is too loaded
to take one.  Some placement within the replica sets may still have no node
hot; reaching it takes a sequence -- make room on a replica first (one of
its partitions to a replica of *its* own), then move the hot node's
partition there, or swap two partitions.

:func:`search` looks for the shortest such sequence (at most ``depth``
leadership moves, each to a replica of its partition, so no data is copied)
by trying every sequence in turn, shortest first.  A plan must:

* end with the stuck node at or below the bound, every node it loads at or
  below the bound (less a ``slack``) (and at or below the *predicted* bound, on the predicted
  loads, when forecasts are given: its benefit must last past the moves);
* load no node above the bound at any step, but for the stuck node itself
  (a swap may hand it a smaller partition first);
* lower the sum of squared node loads by more than ``min_gain``, so that under
  a steady load no plan can undo another (see :mod:`sprawl.cluster.balance`,
  "Why there is no flapping").

Of the plans of the fewest moves, the one that moves the least load (the
fewest messages wait during the handoffs), then the lowest highest load
among the nodes it touches, then the lowest sum of squares.  The last move of
a plan is always off the stuck node (a plan that relieves it sooner is a
shorter one), which keeps the search small: with ``n`` possible single moves
and ``s`` off the stuck node, ``n * s`` plans of two moves, ``n * n * s`` of
three -- a few thousand on the traces the balancer is measured on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PartKey = tuple[str, int]


@dataclass(frozen=True)
class Part:
    """One partition as the search sees it: where it may lead and its load."""

    key: PartKey
    leader: str
    replicas: tuple[str, ...]
    #: Present load (units/s).
    load: float
    #: Predicted load (the present where there is no forecast).
    predicted: float


@dataclass(frozen=True)
class Plan:
    """The moves ``(key, src, dst)`` in order, and what they move."""

    moves: tuple[tuple[PartKey, str, str], ...]
    #: Load moved (units/s summed over the moves).
    moved: float
    #: The highest load, after the plan, of a node it touches.
    peak: float
    #: Sum of squared node loads after the plan.
    squares: float


def search(
    stuck: str,
    parts: Sequence[Part],
    loads: Mapping[str, float],
    upper: float,
    *,
    predicted: Mapping[str, float] | None = None,
    predicted_upper: float = 0.0,
    depth: int = 3,
    min_gain: float = 1.0,
    slack: float = 0.0,
) -> Plan | None:
    """The plan for ``stuck`` (see the module docstring), or None.

    ``parts``: the partitions free to move (movable, out of cooldown, not
    moved in this decision, not too small to move); ``loads``: every live
    node's present load (moves already made in this decision applied);
    ``predicted``: the nodes' predicted loads and their bound, when the
    balancer has forecasts; ``slack``: how far under ``upper`` the plan must
    leave the nodes it touches (a plan made over two decisions is checked
    again before its last move, and a node left just under the bound fails
    that check with the next sample's noise)."""
    if stuck not in loads or loads[stuck] <= upper:
        return None
    nodes = dict(loads)
    pred = dict(predicted) if predicted is not None else None
    leader = {p.key: p.leader for p in parts}
    base = sum(v * v for v in nodes.values())
    best: tuple[tuple[float, float, float], Plan] | None = None
    for n in range(1, depth + 1):
        found: list[tuple[tuple[float, float, float], Plan]] = []
        _walk(
            stuck,
            parts,
            nodes,
            pred,
            leader,
            (upper, slack),
            predicted_upper,
            n,
            [],
            0.0,
            base,
            min_gain,
            found,
        )
        if found:
            best = min(found, key=lambda x: x[0])
            break
    return None if best is None else best[1]


def _walk(
    stuck: str,
    parts: Sequence[Part],
    nodes: dict[str, float],
    pred: dict[str, float] | None,
    leader: dict[PartKey, str],
    bound: tuple[float, float],
    pupper: float,
    left: int,
    path: list[tuple[Part, str, str]],
    moved: float,
    base: float,
    min_gain: float,
    found: list[tuple[tuple[float, float, float], Plan]],
) -> None:
    """Every plan of exactly ``left`` more moves after ``path`` (applied to
    ``nodes``, ``pred`` and ``leader``, undone before returning); ``bound``:
    the hot bound and the slack a plan leaves under it."""
    upper = bound[0]
    used = {p.key for p, _, _ in path}
    for p in parts:
        if p.key in used:
            continue
        src = leader[p.key]
        if left == 1 and src != stuck:
            continue  # the last move relieves the stuck node
        if src not in nodes:
            continue
        for dst in p.replicas:
            if dst == src or dst not in nodes:
                continue
            after = nodes[dst] + p.load
            if dst != stuck and after > upper:
                continue  # never a node made hot (the stuck one aside: a swap)
            nodes[src] -= p.load
            nodes[dst] = after
            if pred is not None:
                pred[src] -= p.predicted
                pred[dst] += p.predicted
            leader[p.key] = dst
            path.append((p, src, dst))
            if left > 1:
                _walk(
                    stuck,
                    parts,
                    nodes,
                    pred,
                    leader,
                    bound,
                    pupper,
                    left - 1,
                    path,
                    moved + p.load,
                    base,
                    min_gain,
                    found,
                )
            else:
                _judge(stuck, nodes, pred, bound, pupper, path, moved + p.load, base, min_gain, found)
            path.pop()
            leader[p.key] = src
            if pred is not None:
                pred[src] += p.predicted
                pred[dst] -= p.predicted
            nodes[dst] -= p.load
            nodes[src] += p.load


def _judge(
    stuck: str,
    nodes: Mapping[str, float],
    pred: Mapping[str, float] | None,
    bound: tuple[float, float],
    pupper: float,
    path: Sequence[tuple[Part, str, str]],
    moved: float,
    base: float,
    min_gain: float,
    found: list[tuple[tuple[float, float, float], Plan]],
) -> None:
    """Keep ``path`` if it is a plan (see the module docstring)."""
    touched = {n for _, s, d in path for n in (s, d)}
    if any(nodes[n] > bound[0] - bound[1] for n in touched):
        return
    if pred is not None and any(pred[n] > pupper for n in touched):
        return  # its benefit would not last: a node it loads is predicted hot
    squares = sum(v * v for v in nodes.values())
    if base - squares <= min_gain:
        return
    peak = max(nodes[n] for n in touched)
    plan = Plan(tuple((p.key, s, d) for p, s, d in path), moved, peak, squares)
    found.append(((moved, peak, squares), plan))
