"""Two balancing rules judged over many draws, paired (issue 18, docs/benchmarks.md trust39).

A *draw* is one (trace, seed, clock phase) run: the simulator is chaotic
draw by draw (the reactive balancer with its decision clock shifted 5 s
differs from itself by x0.6-x3.5 in hot time, trust38), so a rule is judged
on the sums over many draws, paired: the same (trace, seed, phase) under
both rules.  This module reads ``benchmarks.earned_sweep``'s rows (one JSON
object per run, as its ``--out`` files hold them) and gives, per family
(trace) and over all:

* the paired table: per draw, both rules' moves / seconds with a node hot /
  messages delayed and the differences;
* the sums of hot seconds, moves and messages delayed under each rule;
* a sign test on which run of a pair is less hot (ties left out; exact
  two-sided binomial, :func:`sign_test`);
* a seeded bootstrap interval on each summed difference (resampling the
  pairs, :func:`bootstrap_interval`).

Two bars, both printed on every line (:meth:`Aggregate.line`):

* the strict rule (:meth:`Aggregate.wins`, trust39): the second rule's summed
  hot time lower with the interval of the difference wholly below zero, and
  its summed moves and messages delayed not higher;
* issue 18's bar since trust42 (:meth:`Aggregate.holds`), "without losing on
  moves" judged as non-inferiority: hot time as above, messages delayed not
  higher in sum, and the summed moves at most :data:`MOVES_MARGIN` of the
  baseline's above it with the interval of the difference not wholly above
  zero.

``earned_sweep --paired --out A --out B`` prints the report (:func:`report`);
the day-long tests of ``tests/unit/forecast/test_forecast_replay.py`` assert
:meth:`Aggregate.holds` per family (and :meth:`Aggregate.wins` where it is
met).  Pure: no clock, no randomness but the seeded bootstrap's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: What is summed and compared, in the order of the tables: seconds with a
#: node hot, moves, messages delayed during moves.
MEASURES = ("hot", "moves", "delayed")
#: The bootstrap's resamples and seed (trust38b's: 10,000, seed 38).
RESAMPLES = 10_000
SEED = 38
#: The non-inferiority margin on moves (:meth:`Aggregate.holds`): the second
#: rule's summed moves may exceed the baseline's by at most this share of the
#: baseline's sum.  Why a margin, not "not higher": the summed moves of a
#: family move by about +-10 with anything that shifts when moves fall (four
#: rounds of levers on surges landed between 635 and 651 against the reactive
#: 637, trust38-41), their bootstrap interval is about +-60 on 16 draws, and
#: the reactive rule against itself with its clock shifted 5 s differs by +21
#: moves on 8 draws (trust42): a test of equality on the sum decides by the
#: draw, not by the rule.  2 % is below that yardstick (the lead's choice,
#: made before the data it judges: issue 18, trust42).
MOVES_MARGIN = 0.02

Row = dict[str, Any]


def phase(row: Row) -> float:
    """The run's decision-clock phase (``earned_sweep``'s ``offset``; absent: 0)."""
    return float(row.get("offset") or 0.0)


def mode(row: Row) -> str:
    """``reactive``, ``predictive``, ``early`` or ``earned`` (older rows have no ``mode``)."""
    return str(row.get("mode") or ("reactive" if row.get("lasting") is None else "earned"))


@dataclass(frozen=True)
class Pair:
    """One draw under both rules: ``a`` the baseline's row, ``b`` the other's."""

    trace: str
    seed: int
    phase: float
    a: Row
    b: Row

    def d(self, what: str) -> float:
        """``b - a`` on the measure ``what``."""
        return float(self.b[what]) - float(self.a[what])

    @property
    def draw(self) -> str:
        """``trace / seed / phase`` as the tables print it."""
        return f"{self.trace} / {self.seed} / {'0' if not self.phase else f'+{self.phase:g} s'}"


def _index(rows: Iterable[Row], want: str, lasting: float | None) -> dict[tuple[str, int, float], Row]:
    """The rows of mode ``want`` (and ``lasting``, for earned rows) by draw; a draw
    seen twice must hold the same figures (files of one sweep read twice, or a
    resumed sweep), else the files mix code versions: ValueError."""
    out: dict[tuple[str, int, float], Row] = {}
    for r in rows:
        if mode(r) != want or (lasting is not None and r.get("lasting") != lasting):
            continue
        k = (str(r["trace"]), int(r["seed"]), phase(r))
        old = out.get(k)
        if old is not None and any(old[m] != r[m] for m in MEASURES):
            raise ValueError(f"two different runs of {k} under {want}: {old} and {r}")
        out.setdefault(k, r)
    return out


def pairs(
    rows: Iterable[Row], a: str = "reactive", b: str = "earned", lasting: float | None = None
) -> list[Pair]:
    """Every draw run under both mode ``a`` and mode ``b`` (``lasting``: only the
    earned rows of that ``predict_lasting``), sorted by trace, seed, phase."""
    rows = list(rows)
    ia, ib = _index(rows, a, None), _index(rows, b, lasting if b == "earned" else None)
    return [Pair(*k, ia[k], ib[k]) for k in sorted(ia.keys() & ib.keys())]


def phase_pairs(rows: Iterable[Row], rule: str = "reactive", shift: float = 5.0) -> list[Pair]:
    """The yardstick: the same rule at phase 0 (``a``) and at ``shift`` (``b``), per
    (trace, seed) -- how much a draw moves when nothing but its clock does."""
    by = _index(rows, rule, None)
    return [
        Pair(t, s, shift, by[(t, s, 0.0)], by[(t, s, shift)])
        for (t, s, p) in sorted(by)
        if p == 0.0 and (t, s, shift) in by
    ]


def sign_test(lower: int, higher: int) -> float:
    """Two-sided exact sign test: the chance, were either side equally likely on
    every untied pair, of a split at least as uneven as ``lower`` against
    ``higher`` (1.0 with no untied pair)."""
    n = lower + higher
    if n == 0:
        return 1.0
    k = min(lower, higher)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(
    diffs: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED, level: float = 0.95
) -> tuple[float, float]:
    """The percentile bootstrap interval of ``sum(diffs)``: ``resamples`` sums of
    ``len(diffs)`` pairs drawn with replacement (``random.Random(seed)``), and
    their ``(1-level)/2`` and ``(1+level)/2`` quantiles (:func:`_quantile`).
    Deterministic: trust38b's intervals are these, to the unit."""
    if not diffs:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(diffs)
    sums = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) for _ in range(resamples))
    return (_quantile(sums, (1 - level) / 2), _quantile(sums, (1 + level) / 2))


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of the sorted ``ordered`` as the inverse of its
    empirical distribution: the smallest value with a share ``q`` of the values
    at or below it (``ordered[ceil(q * n) - 1]``)."""
    rank = math.ceil(round(q * len(ordered), 9))  # (1 - 0.95) / 2 * 10,000 is 250.0000000000002
    return ordered[min(len(ordered) - 1, max(0, rank - 1))]


@dataclass(frozen=True)
class Aggregate:
    """A set of pairs summed: ``sum_a`` / ``sum_b`` per measure, the intervals of
    the summed differences (``b - a``), and the sign test on hot time."""

    label: str
    n: int
    sum_a: dict[str, float]
    sum_b: dict[str, float]
    interval: dict[str, tuple[float, float]]
    #: Pairs where ``b`` was less hot, more hot, equally hot.
    lower: int
    higher: int
    equal: int
    p: float

    def d(self, what: str) -> float:
        """The summed difference ``b - a`` on ``what``."""
        return self.sum_b[what] - self.sum_a[what]

    def wins(self) -> bool:
        """The strict rule (trust39): ``b``'s hot time lower, the interval of the
        difference wholly below zero; its moves and messages delayed not higher
        in sum."""
        return self.n > 0 and self.interval["hot"][1] < 0 and self.d("moves") <= 0 and self.d("delayed") <= 0

    def misses(self) -> list[str]:
        """Why :meth:`holds` fails: one phrase per clause missed (empty: it holds)."""
        if self.n == 0:
            return ["no pairs"]
        out = []
        if self.interval["hot"][1] >= 0:
            out.append("hot interval not below zero")
        if self.d("delayed") > 0:
            out.append("more delayed")
        if self.d("moves") > MOVES_MARGIN * self.sum_a["moves"]:
            out.append(f"moves over +{100 * MOVES_MARGIN:g} %")
        if self.interval["moves"][0] > 0:
            out.append("moves interval above zero")
        return out

    def holds(self) -> bool:
        """Issue 18's bar as non-inferiority (trust42): ``b``'s hot time lower
        with the interval of the difference wholly below zero (as :meth:`wins`);
        its messages delayed -- the user-visible cost of moves -- not higher in
        sum (as :meth:`wins`); and on moves not *worse*, rather than not higher:
        the summed difference at most :data:`MOVES_MARGIN` of ``a``'s summed
        moves, and its interval not wholly above zero.  Why not "not higher"
        (:meth:`wins`): the summed moves turn on the draw by more than any
        rule's effect on them (:data:`MOVES_MARGIN`), so equality on them is a
        coin the draw tosses; a rule that makes clearly more moves (over the
        margin, or an interval clear of zero) still fails."""
        return not self.misses()

    def line(self) -> str:
        """One line: the sums, differences, intervals, the sign test, and both
        verdicts: the strict rule's (:meth:`wins`) and non-inferiority's
        (:meth:`holds`, with what it misses)."""
        parts = []
        for what in MEASURES:
            lo, hi = self.interval[what]
            parts.append(
                f"{what} {self.sum_a[what]:,.0f} vs {self.sum_b[what]:,.0f} "
                f"(d {self.d(what):+,.0f}, {pct(self.sum_a[what], self.d(what))}95% CI {lo:+,.0f}..{hi:+,.0f})"
            )
        return (
            f"{self.label}: n={self.n}; "
            + "; ".join(parts)
            + f"; hot lower on {self.lower}, higher on {self.higher}, equal on {self.equal}, "
            f"sign test p={self.p:.3f}; strict: {'WINS' if self.wins() else 'does not win'}; "
            f"non-inferiority: {'HOLDS' if self.holds() else 'does not hold (' + ', '.join(self.misses()) + ')'}"
        )


def pct(base: float, d: float) -> str:
    """``d`` as a share of ``base`` ("-31 %, "), or "" when ``base`` is 0."""
    return f"{100 * d / base:+.0f} %, " if base else ""


def aggregate(
    ps: Sequence[Pair], label: str = "all", resamples: int = RESAMPLES, seed: int = SEED
) -> Aggregate:
    """The sums, intervals and sign test of the pairs ``ps``."""
    lower = sum(1 for p in ps if p.d("hot") < 0)
    higher = sum(1 for p in ps if p.d("hot") > 0)
    return Aggregate(
        label=label,
        n=len(ps),
        sum_a={w: float(sum(float(p.a[w]) for p in ps)) for w in MEASURES},
        sum_b={w: float(sum(float(p.b[w]) for p in ps)) for w in MEASURES},
        interval={w: bootstrap_interval([p.d(w) for p in ps], resamples, seed) for w in MEASURES},
        lower=lower,
        higher=higher,
        equal=len(ps) - lower - higher,
        p=sign_test(lower, higher),
    )


def families(ps: Sequence[Pair]) -> dict[str, list[Pair]]:
    """The pairs by trace, in the order first seen."""
    out: dict[str, list[Pair]] = {}
    for p in ps:
        out.setdefault(p.trace, []).append(p)
    return out


def by_family(ps: Sequence[Pair], resamples: int = RESAMPLES, seed: int = SEED) -> list[Aggregate]:
    """One :class:`Aggregate` per trace, then one over all of ``ps`` (label ``all``)."""
    return [aggregate(f, name, resamples, seed) for name, f in families(ps).items()] + [
        aggregate(ps, "all", resamples, seed)
    ]


def table(ps: Sequence[Pair], a: str = "reactive", b: str = "earned") -> str:
    """The paired table: per draw, moves / s hot / delayed under each rule and the differences."""
    out = [
        f"| trace / seed / phase | {a} moves / s hot / delayed | {b} moves / s hot / delayed "
        "| d hot | d moves | d delayed |",
        "|---|---|---|---|---|---|",
    ]
    for p in ps:
        out.append(
            f"| {p.draw} | {p.a['moves']} / {p.a['hot']:.0f} / {p.a['delayed']:.0f} | "
            f"{p.b['moves']} / {p.b['hot']:.0f} / {p.b['delayed']:.0f} | "
            f"{p.d('hot'):+.0f} | {p.d('moves'):+.0f} | {p.d('delayed'):+.0f} |"
        )
    return "\n".join(out)


def spread(ps: Sequence[Pair]) -> str:
    """How far a draw moves with its clock (``ps`` from :func:`phase_pairs`): the mean
    and range of ``|log(hot b / hot a)|``, the mean and largest move difference."""
    logs = [abs(math.log(p.b["hot"] / p.a["hot"])) for p in ps if p.a["hot"] > 0 and p.b["hot"] > 0]
    ratios = [p.b["hot"] / p.a["hot"] for p in ps if p.a["hot"] > 0]
    dm = [abs(p.d("moves")) for p in ps]
    if not ps:
        return "no pairs"
    return (
        f"n={len(ps)}: mean |log(hot +shift / hot 0)| {sum(logs) / max(1, len(logs)):.3f} "
        f"(x{math.exp(sum(logs) / max(1, len(logs))):.2f}), range {min(ratios):.2f}-{max(ratios):.2f}; "
        f"mean |d moves| {sum(dm) / len(dm):.1f} (max {max(dm):.0f})"
    )


def report(
    rows: Sequence[Row],
    b: str = "earned",
    lasting: float | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    shift: float = 5.0,
) -> str:
    """The whole paired report of ``rows``: the table and the aggregates of
    reactive against ``b``, then the yardstick (reactive against itself
    ``shift`` s later) in the same form."""
    ps = pairs(rows, "reactive", b, lasting)
    out = [f"### {b} vs reactive ({len(ps)} paired runs)", table(ps, "reactive", b), ""]
    out += [g.line() for g in by_family(ps, resamples, seed)]
    yard = phase_pairs(rows, "reactive", shift)
    if yard:
        out += ["", f"### reactive vs reactive +{shift:g} s ({len(yard)} draws: the yardstick)"]
        out.append(table(yard, "reactive", f"reactive +{shift:g} s"))
        out.append("")
        out += [g.line() for g in by_family(yard, resamples, seed)]
        out += [f"{name}: {spread(f)}" for name, f in families(yard).items()]
        out.append(f"all: {spread(yard)}")
    return "\n".join(out)
