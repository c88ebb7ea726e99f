"""Reactive against predictive balancing on the same traces: the table of docs/benchmarks.md.

    PYTHONPATH=tests python -m benchmarks.forecast_sim [--quick] [--only NAME] [--trace FILE]
        [--first-seasons N] [--recur N] [--hold-seasons] [--profile-hours H]
        [--surge-guard S] [--surge-jump X] [--predict-hold S] [--hold-waiver F]
        [--predict-quiet] [--chain-after N] [--plan-after N] [--plan-lasting F] [--plan-moves N]
        [--plan-margin F] [--predict-replace cap|same] [--replace-within S] [--replace-points N]
        [--choose-target] [--choose-partition] [--shed-skip N] [--no-predict-pass] [--forecast-only]
        [--budget] [--budget-reserve N] [--budget-expire S] [--shadow-feed view|regossip|exact]
        [--predict-choose] [--shadow-cost N] [--distrust S] [--profile-seasons N]
        [--balance NAME=VALUE ...] [--earned]

Runs :func:`sprawl.forecast.replay.compare` (virtual time, seeded: the same
table every run) over the synthetic traces of :mod:`sprawl.forecast.traces`
-- ``hourly`` (4 h), ``daily``, ``ramp`` and ``surges`` (2 days
each) -- and the trace recorded from a real 3-node cluster by
``tests/benchmarks/forecast_record.py`` (``tests/data/forecast_trace.csv``:
a "day" compressed into 300 s, so the forecaster runs 10 s steps and looks
60 s ahead there).  ``--quick`` runs the hourly and recorded traces only.
``--first-seasons``, ``--recur`` and ``--hold-seasons`` run the predictive
balancer with those forecaster settings (``ForecastConfig.first_seasons``,
``ForecastConfig.recur``, ``TrafficForecaster(hold_seasons=True)``; all off
by default), the variants measured in docs/benchmarks.md; so do
``--profile-hours`` (the balancer gets each partition's forecast profile
over that many hours: ``SimConfig.profile_horizon``), ``--surge-guard``
(``TrafficForecaster(surge_guard=...)``; ``--surge-jump 0`` guards every
surge, not only sudden ones), ``--predict-hold``, ``--hold-waiver``,
``--predict-quiet``, ``--chain-after``, ``--plan-after``, ``--plan-lasting``,
``--plan-moves``, ``--plan-margin``, ``--predict-replace``, ``--replace-within``
(default: the trace's forecast horizon), ``--replace-points``,
``--choose-target``, ``--choose-partition`` and ``--shed-skip``
(``BalanceConfig``); ``--no-predict-pass`` runs the forecast run with no
move on a forecast (``BalanceConfig(predict=False)``: the reactive rule with
the forecast-guided choices), ``--forecast-only`` skips the reactive run
(its row is left at zeros: its figures do not depend on these options).  ``--only``
runs one trace (``hourly``, ``daily``, ``ramp``, ``surges``, ``recorded``).
``--budget`` runs the reactive balancer in shadow and makes moves on a
forecast only while the move budget it gives has more than
``--budget-reserve`` tokens (``SimConfig.budget``; tokens last
``--budget-expire`` seconds; the shadow is fed as ``--shadow-feed`` says:
:mod:`sprawl.forecast.budget`); ``--predict-choose`` makes the move on a
forecast that removes the most predicted excess (``BalanceConfig.predict_choose``).
``--shadow-cost N`` times the shadow's decisions at N partitions and exits.
``--distrust S`` hands the balancer no forecast for S seconds after a
surprise (``TrafficForecaster(distrust=...)``); ``--profile-seasons N`` gives
it profiles over N of the trace's seasons; ``--balance NAME=VALUE`` sets any
other ``BalanceConfig`` field; ``--earned`` is the earned-trust combination
(:func:`sprawl.forecast.replay.earned`: profiles and distrust of one season,
``predict_lasting`` 0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path
from typing import Any

from sprawl.cluster.balance import BalanceConfig
from sprawl.forecast import traces
from sprawl.forecast.budget import ShadowReactive
from sprawl.forecast.earned import EARNED_LASTING
from sprawl.forecast.replay import (
    Result,
    SimConfig,
    Trace,
    compare,
    season_seconds,
    simulate,
    table,
)

TRACE = Path(__file__).resolve().parents[1] / "data" / "forecast_trace.csv"
#: Every recording of ``benchmarks.forecast_record`` (``--seconds 900 --cycle
#: 300``, the same schedule): the recorded family's draws, by index (the
#: "seed" of ``earned_sweep``'s recorded runs).  The first is :data:`TRACE`
#: (2026-12-05); the second was recorded by trust40 (2026-12-06, load 2.7-7.8 on
#: the shared 2-core host), the cluster's own noise its only difference.
RECORDINGS = (TRACE, TRACE.with_name("forecast_trace_1.csv"))

#: How the recorded trace is read and simulated (see the module docstring).
RECORDED_PERIOD = 300.0
RECORDED_CONFIG = SimConfig(horizon=60.0)


def runs(quick: bool, trace: Path) -> list[tuple[Trace, SimConfig]]:
    """The traces and the simulation settings each one runs with."""
    out = [(traces.hourly(), SimConfig())]
    if not quick:
        out += [
            (traces.daily(days=2.0), SimConfig()),
            (traces.ramp(), SimConfig()),
            (traces.surges(), SimConfig()),
        ]
    out.append((traces.recorded(trace, period=RECORDED_PERIOD, bucket=10.0), RECORDED_CONFIG))
    return out


def shadow_cost(partitions: int, nodes: int = 3, decisions: int = 60) -> str:
    """CPU per gossip step and decision of :class:`ShadowReactive` at
    ``partitions`` (RF 3 on ``nodes``), both feeds: rates redrawn every 10 s
    (a gossip step and a decision each); every eighth decision on, four in a
    row with one node's partitions at 3x (hot; it sheds in the third); the
    decisions in which a node may shed (its partitions handed to the
    reactive rule) and the others timed apart."""
    names = [f"n{i}" for i in range(nodes)]
    reps = {
        (f"t{i // 10}", i % 10): tuple(names[(i + j) % nodes] for j in range(min(3, nodes)))
        for i in range(partitions)
    }
    out = [f"shadow reactive, {partitions} partitions on {nodes} nodes, {decisions} decisions each (CPU ms):"]
    for regossip in (False, True):
        leaders = {k: v[0] for k, v in reps.items()}
        s = ShadowReactive(BalanceConfig(), reps, leaders, regossip=regossip)
        rng = random.Random(7)
        quiet: list[float] = []
        hot: list[float] = []
        for i in range(decisions):
            surge = i % 8 >= 4  # four decisions in eight n0's partitions run at 3x
            rates = {
                k: (rng.uniform(5.0, 15.0) * (3.0 if surge and leaders[k] == "n0" else 1.0), 0.0)
                for k in reps
            }
            t0 = time.process_time()
            s.observe(10.0 * i, rates)
            s.decide(10.0 * i, names)
            (hot if s.built else quiet).append(time.process_time() - t0)
        for name, xs in (("no shed", quiet), ("may shed", hot)):
            xs.sort()
            if xs:
                out.append(
                    f"  {'regossip' if regossip else 'view'} {name}: {len(xs)} decisions, median "
                    f"{1000 * xs[len(xs) // 2]:.1f}, max {1000 * xs[-1]:.1f}"
                )
    return "\n".join(out)


def _field(kv: str) -> tuple[str, Any]:
    """``--balance NAME=VALUE``: the field and its value, typed as its default."""
    name, _, raw = kv.partition("=")
    default = getattr(BalanceConfig(), name)  # AttributeError names a wrong field
    if isinstance(default, bool):
        return name, raw.lower() in ("1", "true", "yes")
    return name, type(default)(raw)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="hourly and recorded traces only")
    ap.add_argument("--trace", type=Path, default=TRACE, help="recorded trace (CSV)")
    ap.add_argument("--first-seasons", type=int, default=0, help="forecast only after N whole seasons")
    ap.add_argument("--recur", type=int, default=1, help="a seasonal bucket counts once passed N times")
    ap.add_argument("--hold-seasons", action="store_true", help="seasons do not learn during an anomaly")
    ap.add_argument("--profile-hours", type=float, default=0.0, help="long-horizon profiles (hours; 0: none)")
    ap.add_argument(
        "--profile-seasons", type=float, default=0.0, help="profiles over N of the trace's seasons"
    )
    ap.add_argument("--surge-guard", type=float, default=0.0, help="seconds a surge is taken as passing")
    ap.add_argument("--surge-jump", type=float, default=2.0, help="guard surges starting at X times the top")
    ap.add_argument("--distrust", type=float, default=0.0, help="seconds without forecasts after a surprise")
    ap.add_argument("--predict-hold", type=float, default=0.0, help="seconds between forecast moves")
    ap.add_argument(
        "--hold-waiver", type=float, default=0.25, help="profile share over the bound that waives it"
    )
    ap.add_argument("--predict-quiet", action="store_true", help="forecast moves only when no node is hot")
    ap.add_argument("--chain-after", type=int, default=0, help="two-move plans after N hot decisions")
    ap.add_argument("--plan-after", type=int, default=0, help="multi-move plans after N hot decisions")
    ap.add_argument(
        "--plan-lasting", type=float, default=0.5, help="profile share over the bound a plan needs"
    )
    ap.add_argument("--plan-moves", type=int, default=3, help="moves in a plan at most")
    ap.add_argument(
        "--plan-margin", type=float, default=0.5, help="share of the band over the bound a plan needs"
    )
    ap.add_argument(
        "--predict-replace",
        choices=("", "cap", "same"),
        default="",
        help="forecast moves only where they replace a reactive one (cap: as many; same: the same moves)",
    )
    ap.add_argument(
        "--replace-within",
        type=float,
        default=None,
        help="seconds a forecast move pre-empts (default: horizon)",
    )
    ap.add_argument(
        "--replace-points", type=int, default=1, help="path points hot in a row before the replay moves"
    )
    ap.add_argument("--choose-target", action="store_true", help="every move's target by the forecast")
    ap.add_argument("--choose-partition", action="store_true", help="every shed's partition by the forecast")
    ap.add_argument(
        "--shed-skip", type=int, default=0, help="no shed when the path is under the bound after N points"
    )
    ap.add_argument(
        "--no-predict-pass",
        action="store_true",
        help="the forecast run makes no move on a forecast (the reactive rule with the choices)",
    )
    ap.add_argument("--forecast-only", action="store_true", help="skip the reactive run (its row: zeros)")
    ap.add_argument("--budget", action="store_true", help="forecast moves paid by a shadow reactive run")
    ap.add_argument("--budget-reserve", type=int, default=0, help="tokens kept back")
    ap.add_argument("--budget-expire", type=float, default=float("inf"), help="seconds a token lasts")
    ap.add_argument("--shadow-feed", choices=("view", "regossip", "exact"), default="view")
    ap.add_argument("--predict-choose", action="store_true", help="the forecast move removing most excess")
    ap.add_argument(
        "--shadow-cost", type=int, default=0, help="time the shadow's decisions at N partitions and exit"
    )
    ap.add_argument(
        "--balance",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other BalanceConfig field (repeatable; numbers and true/false)",
    )
    ap.add_argument(
        "--earned",
        action="store_true",
        help="the earned-trust combination: --profile-seasons 1, --distrust one season, predict_lasting 0.5",
    )
    ap.add_argument("--only", help="run this trace only")
    a = ap.parse_args(argv)
    if a.shadow_cost:
        print(shadow_cost(a.shadow_cost))
        return 0
    extra: dict[str, Any] = dict(_field(kv) for kv in a.balance)
    if a.earned:
        a.profile_seasons = a.profile_seasons or 1.0
        extra.setdefault("predict_lasting", EARNED_LASTING)
    rows: list[tuple[Result, Result]] = []
    for tr, cfg in runs(a.quick, a.trace):
        if a.only and tr.name != a.only:
            continue
        tr = dataclasses.replace(
            tr, forecast=dataclasses.replace(tr.forecast, first_seasons=a.first_seasons, recur=a.recur)
        )
        cfg = dataclasses.replace(
            cfg,
            hold_seasons=a.hold_seasons,
            profile_horizon=(
                a.profile_seasons * season_seconds(tr) if a.profile_seasons else 3600.0 * a.profile_hours
            ),
            surge_guard=a.surge_guard,
            surge_jump=a.surge_jump,
            distrust=a.distrust or (season_seconds(tr) if a.earned else 0.0),
            budget=a.budget,
            budget_reserve=a.budget_reserve,
            budget_expire=a.budget_expire,
            shadow_feed=a.shadow_feed,
            balance=dataclasses.replace(
                cfg.balance,
                predict_hold=a.predict_hold,
                hold_waiver=a.hold_waiver,
                predict_quiet=a.predict_quiet,
                chain_after=a.chain_after,
                plan_after=a.plan_after,
                plan_lasting=a.plan_lasting,
                plan_moves=a.plan_moves,
                plan_margin=a.plan_margin,
                predict_replace=a.predict_replace,
                replace_within=cfg.horizon if a.replace_within is None else a.replace_within,
                replace_points=a.replace_points,
                choose_target=a.choose_target,
                choose_partition=a.choose_partition,
                shed_skip=a.shed_skip,
                predict=not a.no_predict_pass,
                predict_choose=a.predict_choose,
                **extra,
            ),
        )
        t0 = time.monotonic()
        if a.forecast_only:
            rows.append((Result(tr.name, "reactive", tr.seconds), simulate(tr, True, cfg)))
        else:
            rows += compare([tr], cfg)
        print(
            f"{tr.name}: {time.monotonic() - t0:.0f} s; moves by reason: reactive run "
            f"{rows[-1][0].moves_by_reason}, forecast run {rows[-1][1].moves_by_reason}"
            + (
                f"; shadow {rows[-1][1].shadow_moves} moves, debt {rows[-1][1].budget_debt}, "
                f"expired {rows[-1][1].budget_expired}"
                if a.budget
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )
        print(
            "\n".join(
                line for line in table(rows[-1:], cfg).splitlines() if line.startswith(f"| {tr.name} ")
            ),
            file=sys.stderr,
            flush=True,
        )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
