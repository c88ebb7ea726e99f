"""Reactive against predictive balancing on a rate trace, in virtual time.  Pure.

:func:`simulate` replays a :class:`Trace` -- every partition's publish rate
over time, synthetic (:mod:`sprawl.forecast.traces`) or recorded from a real
cluster -- through the same cores the controller runs:

* every ``step`` seconds (5: the gossip's sampling period) each node
  re-gossips the rates of the partitions it leads as the real node does:
  through the node's :class:`sprawl.gossip.load.RateWindow` (time constant
  ``SimConfig.rate_window``, 0 by default: the last sample), encoded by
  :func:`sprawl.gossip.load.encode_parts`, only when a rate moved by more
  than 20% and the floors, :func:`sprawl.gossip.load.parts_changed`, or its
  leaderships changed), and the controller's view is built from that with
  :func:`sprawl.gossip.load.rates_by_node` and
  :func:`sprawl.cluster.balance.partitions_from`;
* every ``BalanceConfig.interval`` the :class:`~sprawl.cluster.balance.Balancer`
  decides; the predictive run also feeds a
  :class:`~sprawl.forecast.traffic.TrafficForecaster` from the gossip and
  hands its forecasts to the balancer (and, with ``SimConfig.profile_horizon``,
  each partition's forecast profile over that many seconds, recomputed every
  ``profile_every``: options measured in docs/benchmarks.md, off by default);
* when no replica can take a hot node's partitions for long, the
  controller's :func:`~sprawl.cluster.balance.replica_move` swaps the hot
  node for a cool one in a partition's replica set: the copy takes
  ``copy_seconds``, then the leadership moves as below (each partition at
  most every 10 minutes, as in the controller);
* with ``SimConfig.budget`` the controller also runs the reactive balancer in
  shadow (:class:`~sprawl.forecast.budget.ShadowReactive`, fed as
  ``shadow_feed`` says) and the predictive run moves on a forecast only while
  the :class:`~sprawl.forecast.budget.MoveBudget` it gives allows
  (``Result.shadow_moves``, ``budget_debt``);
* a leadership move takes ``move_seconds`` (the handoff: the leader holds
  the partition's publishes until the target has its whole log, then the
  controller fences and commits), during which every message published to
  the partition is *delayed*; the load stays on the old leader until the
  move lands.

Measured, from the *true* rates (not the gossiped ones): seconds during
which some node was hot (above ``mean * (1 + threshold)`` and ``min_load``,
the balancer's own bound), node-seconds hot, moves, messages delayed by
moves, and the forecast's MAPE: ``|forecast - actual| / actual`` of every
partition ``horizon`` seconds after the forecast was made (samples whose
actual rate is under ``mape_floor`` units/s are left out: the ratio means
nothing near 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from sprawl.cluster.balance import BalanceConfig, Balancer, Move, partitions_from, replica_move
from sprawl.forecast.budget import MoveBudget, ShadowReactive
from sprawl.forecast.earned import earned_trust
from sprawl.forecast.holtwinters import ForecastConfig
from sprawl.forecast.traffic import TrafficForecaster, partition_key
from sprawl.gossip.load import (
    BYTES_PER_UNIT,
    PART_TOTAL_JUMP,
    RATE_WINDOW,
    RateWindow,
    encode_parts,
    parts_changed,
    rates_by_node,
    view_rates,
)

PartKey = tuple[str, int]
#: (msgs/s, bytes/s) of every partition at time t.
RateFn = Callable[[float], dict[PartKey, tuple[float, float]]]


@dataclass(frozen=True)
class Trace:
    """Partitions, their replicas and first leaders, and their rates over time."""

    name: str
    nodes: tuple[str, ...]
    #: partition -> replicas (the first one leads at the start).
    replicas: dict[PartKey, tuple[str, ...]]
    seconds: float
    rates: RateFn
    #: The forecaster's tuning for this trace (its seasons).
    forecast: ForecastConfig = field(default_factory=ForecastConfig)


@dataclass(frozen=True)
class SimConfig:
    """The simulated controller and the cost model."""

    step: float = 5.0
    move_seconds: float = 2.0
    copy_seconds: float = 60.0
    horizon: float = 900.0
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    mape_floor: float = 5.0
    #: ``TrafficForecaster(hold_seasons=...)`` of the predictive run.
    hold_seasons: bool = False
    #: Seconds of each partition's load profile handed to the balancer
    #: (:meth:`~sprawl.forecast.traffic.TrafficForecaster.partition_profiles`;
    #: 0: none), its points, and how often it is recomputed (seconds).
    profile_horizon: float = 0.0
    profile_points: int = 24
    profile_every: float = 60.0
    #: ``TrafficForecaster(surge_guard=...)`` of the predictive run.
    surge_guard: float = 0.0
    surge_jump: float = 2.0
    #: ``TrafficForecaster(distrust=...)`` of the predictive run: seconds
    #: after a surprise during which the balancer gets no forecast.
    distrust: float = 0.0
    #: ``TrafficForecaster(distrust_partition=...)``: the distrust withholds
    #: only the surprised partition's forecast (trust39; the forecaster's
    #: default is off, earned trust's value on since trust43: :func:`earned`).
    distrust_partition: bool = False
    #: ``TrafficForecaster(distrust_profiles=...)``: with ``distrust_partition``,
    #: the distrust withholds the partition's profile too (trust39's form, the
    #: forecaster's default), not only its short forecasts (trust40; earned
    #: trust's value since trust43).
    distrust_profiles: bool = True
    #: Run the reactive balancer in shadow (:class:`~sprawl.forecast.budget.ShadowReactive`)
    #: and, in the predictive run, make moves on a forecast only while its
    #: :class:`~sprawl.forecast.budget.MoveBudget` has more than ``budget_reserve``
    #: tokens (tokens lasting ``budget_expire`` seconds).
    budget: bool = False
    budget_reserve: int = 0
    budget_expire: float = math.inf
    #: What the shadow is fed: ``"view"`` the partition rates the controller
    #: has from the real gossip; ``"regossip"`` those, through the gossip's
    #: 20% rule per shadow node; ``"exact"`` the true rates through that rule
    #: (the reactive run's own view: only a simulator has it).
    shadow_feed: str = "view"
    #: Seconds before the controller's first decision (then one every
    #: ``BalanceConfig.interval``): the phase of its decision clock against
    #: the gossip's steps.  Not a tuning: the same rule at another phase, the
    #: measure of how much a run's outcome turns on when its moves fall
    #: (docs/benchmarks.md, trust38).
    decision_offset: float = 0.0
    #: Time constant (seconds) of the rates each node gossips
    #: (:class:`sprawl.gossip.load.RateWindow`, the real node's
    #: :data:`~sprawl.gossip.load.RATE_WINDOW`); 0 (the default): the last 5-s
    #: sample alone.  60 measured worse: docs/benchmarks.md, trust38b.
    rate_window: float = RATE_WINDOW
    #: A node re-gossips when its partitions' summed rate moved by more than
    #: this share (:func:`sprawl.gossip.load.parts_changed`'s ``total``, the
    #: real node's :data:`~sprawl.gossip.load.PART_TOTAL_JUMP`); 0 (the
    #: default): the 20 % per-partition rule alone.
    regossip_total: float = PART_TOTAL_JUMP


@dataclass
class Result:
    """What one run measured."""

    trace: str
    mode: str
    seconds: float
    #: Seconds some node spent above the hot bound.
    hot_seconds: float = 0.0
    #: Sum over nodes of their seconds above it.
    node_hot_seconds: float = 0.0
    moves: int = 0
    moves_by_reason: dict[str, int] = field(default_factory=dict)
    #: Messages published to a partition while its leadership was moving.
    delayed: float = 0.0
    #: Forecast error over the horizon (None for the reactive run or no sample).
    mape: float | None = None
    mape_samples: int = 0
    anomalies: int = 0
    #: Reactive moves a move on a forecast pre-empted (``BalanceConfig.predict_replace``):
    #: a node hot long enough to shed held back by a pre-emption, once per pre-emption.
    preempted: int = 0
    #: (time, move) of every move started.
    log: list[tuple[float, Move]] = field(default_factory=list)
    #: The shadow reactive run (``SimConfig.budget``): its moves, their log,
    #: and the budget's debt and expired tokens at the end.
    shadow_moves: int = 0
    shadow_log: list[tuple[float, Move]] = field(default_factory=list)
    budget_debt: int = 0
    budget_expired: int = 0
    #: (time, hot nodes) of every step with a node hot.
    hot_log: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    #: Times a node re-gossiped its partition rates (the real node's
    #: metadata updates for them: the gossip's cost).
    regossips: int = 0


def season_seconds(trace: Trace) -> float:
    """The trace's (longest) season in seconds."""
    return trace.forecast.bucket * max(trace.forecast.seasons)


def earned(trace: Trace, config: SimConfig | None = None) -> SimConfig:
    """``config`` with the *earned trust* combination (docs/benchmarks.md,
    "Predictive balancing", ninth session): the balancer gets no short
    forecast of a partition for one season after its surprise (``distrust``,
    per partition, the profile kept: ``distrust_partition``,
    ``distrust_profiles``; trust43), each partition's profile over
    one season (``profile_horizon``), and sheds on a forecast only a node
    predicted over the bound at :data:`EARNED_LASTING` of the profile's
    points or more (``BalanceConfig.predict_lasting``); the values are
    :func:`sprawl.forecast.earned.earned_trust`'s, a real node's with
    ``--earned-trust``."""
    c = config or SimConfig()
    e = earned_trust(season_seconds(trace))
    return replace(
        c,
        profile_horizon=e.profile_horizon,
        profile_points=e.profile_points,
        profile_every=e.profile_every,
        distrust=e.distrust,
        distrust_partition=e.distrust_partition,
        distrust_profiles=e.distrust_profiles,
        balance=e.balance(c.balance),
    )


#: Hot decisions before a shed the forecast confirms (:func:`early`): at once.
EARLY_SHED = 1


def early(trace: Trace, config: SimConfig | None = None) -> SimConfig:
    """``config`` with the *early shed* rule: no move on a forecast of its
    own (``BalanceConfig.predict`` off), but a node hot now sheds at its first
    hot decision instead of after ``persist`` when the forecast confirms the
    heat lasts (``BalanceConfig.early_shed``): the reactive balancer's own
    moves, made sooner.  ``trace`` is unused (the rule needs no season)."""
    del trace
    c = config or SimConfig()
    return replace(c, balance=replace(c.balance, predict=False, early_shed=EARLY_SHED))


def _units(r: tuple[float, float]) -> float:
    return r[0] + r[1] / BYTES_PER_UNIT


def _recent(moved: dict[PartKey, float], now: float, key: PartKey) -> bool:
    """Whether ``key`` got a new replica in the last 10 minutes (the controller's rule)."""
    return now - moved.get(key, -math.inf) < 600.0


def simulate(trace: Trace, predictive: bool, config: SimConfig | None = None) -> Result:
    """One run of ``trace`` (see the module docstring)."""
    c = config or SimConfig()
    nodes = list(trace.nodes)
    leader = {k: reps[0] for k, reps in trace.replicas.items()}
    replicas = dict(trace.replicas)
    replica_moved: dict[PartKey, float] = {}
    moving: dict[PartKey, tuple[str, float]] = {}
    gossiped: dict[str, list[object]] = {n: [] for n in nodes}
    gossiped_led: dict[str, frozenset[PartKey]] = {n: frozenset() for n in nodes}
    windows = {n: RateWindow(c.rate_window) for n in nodes}
    balancer = Balancer(c.balance)
    bal = c.balance
    fc = (
        TrafficForecaster(
            trace.forecast,
            horizon=c.horizon,
            hold_seasons=c.hold_seasons,
            surge_guard=c.surge_guard,
            surge_jump=c.surge_jump,
            distrust=c.distrust,
            distrust_partition=c.distrust_partition,
            distrust_profiles=c.distrust_profiles,
        )
        if predictive
        else None
    )
    res = Result(trace.name, "predictive" if predictive else "reactive", trace.seconds)
    pending: dict[int, dict[PartKey, float]] = {}
    profiles: dict[PartKey, tuple[float, ...]] = {}
    profiled_at = -math.inf
    abs_err = 0.0
    shadow = (
        ShadowReactive(
            bal,
            replicas,
            leader,
            regossip=c.shadow_feed != "view",
            move_seconds=c.move_seconds,
            copy_seconds=c.copy_seconds,
        )
        if c.budget
        else None
    )
    tokens = MoveBudget(expire=c.budget_expire)
    steps = math.floor(trace.seconds / c.step)
    horizon_steps = max(1, round(c.horizon / c.step))
    for i in range(steps):
        now = i * c.step
        rates = trace.rates(now)
        # moves that land now
        for k, (dst, until) in list(moving.items()):
            if until <= now:
                leader[k] = dst
                del moving[k]
        # the truth: present loads
        load = dict.fromkeys(nodes, 0.0)
        for k, r in rates.items():
            if leader.get(k) in load:
                load[leader[k]] += _units(r)
        mean = sum(load.values()) / len(nodes)
        upper = mean * (1 + bal.threshold)
        hot = [n for n in nodes if load[n] > upper and load[n] >= bal.min_load]
        if hot:
            res.hot_seconds += c.step
            res.node_hot_seconds += c.step * len(hot)
            res.hot_log.append((now, tuple(hot)))
        # what the controller sees: the gossip
        views = []
        for n in nodes:
            led = frozenset(k for k, ld in leader.items() if ld == n)
            mine = windows[n].update({k: rates.get(k, (0.0, 0.0)) for k in led}, c.step)
            new = encode_parts(mine)
            if led != gossiped_led[n] or parts_changed(gossiped[n], new, c.regossip_total):
                gossiped[n], gossiped_led[n] = new, led
                res.regossips += 1
            views.append({"id": n, "state": "alive", "partition_rates": view_rates(gossiped[n])})
        if shadow is not None:
            if c.shadow_feed == "exact":
                shadow.observe(now, rates)
            else:
                seen = rates_by_node(views)
                shadow.observe(
                    now, {k: got for k, n in leader.items() if (got := seen.get(n, {}).get(k)) is not None}
                )
        forecasts = None
        if fc is not None:
            res.anomalies += sum(1 for e in fc.observe_gossip(now, views) if e.end is None)
            # the forecast error, horizon seconds after the forecast
            for k, f in pending.pop(i, {}).items():
                actual = _units(rates.get(k, (0.0, 0.0)))
                if actual >= c.mape_floor:
                    abs_err += abs(f - actual) / actual
                    res.mape_samples += 1
            made = {}
            for k in trace.replicas:
                b = fc.predict(partition_key(*k), now, now + c.horizon)
                if b is not None:
                    made[k] = b.point
            if made:
                pending[i + horizon_steps] = made
        if now < c.decision_offset or not balancer.due(now):
            continue
        allowance = None
        if shadow is not None:
            tokens.earn(now, shadow.decide(now, nodes))
            if fc is not None:
                allowance = tokens.available(now) - c.budget_reserve
        paths = None
        if fc is not None:
            if (
                bal.predict_replace
                or bal.choose_target
                or bal.choose_partition
                or bal.shed_skip
                or bal.predict_choose
                or bal.early_shed
            ):
                paths = fc.partition_paths(now)
                forecasts = {k: max(v) for k, v in paths.items()}
            else:
                forecasts = fc.partition_forecasts(now)
            if c.profile_horizon > 0 and now - profiled_at >= c.profile_every:
                profiles = fc.partition_profiles(now, c.profile_horizon, c.profile_points)
                profiled_at = now
        placement = {}
        for topic in sorted({k[0] for k in replicas}):
            count = 1 + max(p for t, p in replicas if t == topic)
            placement[topic] = [
                {"leader": leader.get((topic, p), ""), "replicas": list(replicas.get((topic, p), ()))}
                for p in range(count)
            ]
        parts = partitions_from(
            placement, rates_by_node(views), lambda k: k not in moving, forecasts, profiles or None, paths
        )
        d = balancer.decide(now, parts, nodes, len(moving), allowance)
        made_before = res.moves
        rm = replica_move(
            d,
            parts,
            nodes,
            bytes_per_unit=bal.bytes_per_unit,
            recently_moved=partial(_recent, replica_moved, now),
        )
        if rm is not None:
            k = (rm.topic, rm.partition)
            replicas[k] = tuple(rm.dst if r == rm.src else r for r in replicas[k])
            replica_moved[k] = now
            moving[k] = (rm.dst, now + c.copy_seconds + c.move_seconds)
            res.delayed += rates.get(k, (0.0, 0.0))[0] * c.move_seconds
            res.moves += 1
            res.moves_by_reason[rm.reason] = res.moves_by_reason.get(rm.reason, 0) + 1
            res.log.append((now, rm))
        for mv in d.moves:
            k = (mv.topic, mv.partition)
            moving[k] = (mv.dst, now + c.move_seconds)
            res.delayed += rates.get(k, (0.0, 0.0))[0] * c.move_seconds
            res.moves += 1
            res.moves_by_reason[mv.reason] = res.moves_by_reason.get(mv.reason, 0) + 1
            res.log.append((now, mv))
        tokens.spend(now, res.moves - made_before)
    if shadow is not None:
        res.shadow_moves, res.shadow_log = shadow.moves, shadow.log
        res.budget_debt, res.budget_expired = tokens.debt, tokens.expired
    if res.mape_samples:
        res.mape = abs_err / res.mape_samples
    res.preempted = balancer.preempted_total
    return res


def compare(traces: Sequence[Trace], config: SimConfig | None = None) -> list[tuple[Result, Result]]:
    """(reactive, predictive) for every trace."""
    return [(simulate(t, False, config), simulate(t, True, config)) for t in traces]


def table(rows: Sequence[tuple[Result, Result]], config: SimConfig | None = None) -> str:
    """The comparison as a Markdown table."""
    c = config or SimConfig()
    out = [
        "| trace | hours | balancer | s with a node hot | node-s hot | moves | msgs delayed | forecast MAPE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair in rows:
        for r in pair:
            mape = "" if r.mape is None else f"{100 * r.mape:.1f}% ({r.mape_samples} samples)"
            out.append(
                f"| {r.trace} | {r.seconds / 3600:.1f} | {r.mode} | {r.hot_seconds:.0f} | "
                f"{r.node_hot_seconds:.0f} | {r.moves} | {r.delayed:.0f} | {mape} |"
            )
    out.append("")
    out.append(
        f"(moves take {c.move_seconds:g} s; forecasts {c.horizon:g} s ahead; decisions every "
        f"{c.balance.interval:g} s, persist {c.balance.persist}, cooldown {c.balance.cooldown:g} s)"
    )
    return "\n".join(out)
