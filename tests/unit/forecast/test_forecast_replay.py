"""The simulation proof (sprawl.forecast.replay, virtual time, seeded): on the
hourly synthetic trace and on the trace recorded from a real 3-node cluster,
the predictive balancer keeps nodes hot for less time than the reactive one
without more moves or more messages delayed by moves; the runs are
deterministic and report the forecast's MAPE."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from benchmarks import paired
from benchmarks.earned_sweep import run
from harness.paths import DATA
from sprawl.forecast import traces
from sprawl.forecast.earned import EARNED_LASTING
from sprawl.forecast.replay import SimConfig, compare, earned, simulate, table

RECORDED = DATA / "forecast_trace.csv"

#: The two traces short enough for every run: hourly, and the recorded one.
_SHORT_TRACES = pytest.mark.parametrize(
    ("trace", "config"),
    [
        (lambda: traces.hourly(), SimConfig()),
        (lambda: traces.recorded(RECORDED, period=300.0, bucket=10.0), SimConfig(horizon=60.0)),
    ],
    ids=["hourly", "recorded"],
)


@_SHORT_TRACES
def test_predictive_beats_reactive(trace, config: SimConfig) -> None:  # type: ignore[no-untyped-def]
    """Fewer seconds with a node hot; no more moves, no more messages delayed."""
    ((reactive, predictive),) = compare([trace()], config)
    assert reactive.hot_seconds > 0  # the trace does make nodes hot
    assert predictive.hot_seconds < reactive.hot_seconds
    assert predictive.moves <= reactive.moves
    assert predictive.delayed <= reactive.delayed
    assert predictive.moves_by_reason.get("predicted", 0) > 0
    assert predictive.mape is not None and predictive.mape_samples > 0 and reactive.mape is None
    assert "| predictive |" in table([(reactive, predictive)], config)


#: Issue 18's proof asks for no more moves than the reactive balancer; on these
#: two traces the predictive rule still makes more (docs/benchmarks.md, "Predictive
#: balancing"): strict, so the day the rule wins there this test says so.
MORE_MOVES = pytest.mark.xfail(
    strict=True, reason="predictive makes more moves than reactive on ramp and surges (known, open)"
)


@pytest.mark.skipif(
    not os.environ.get("SPRAWL_SIM_LONG"),
    reason="day-long traces, 1-2 minutes each: run by tox -e sim (SPRAWL_SIM_LONG=1)",
)
@pytest.mark.parametrize(
    "trace",
    [
        pytest.param(lambda: traces.daily(days=2.0), id="daily"),
        pytest.param(lambda: traces.ramp(), id="ramp", marks=MORE_MOVES),
        pytest.param(lambda: traces.surges(), id="surges", marks=MORE_MOVES),
    ],
)
def test_predictive_moves_no_more_than_reactive_on_the_day_long_traces(trace) -> None:  # type: ignore[no-untyped-def]
    """The table's day-long traces (``benchmarks.forecast_sim``, 1-2 minutes each):
    less hot time and no more moves than the reactive balancer."""
    ((reactive, predictive),) = compare([trace()], SimConfig())
    assert reactive.hot_seconds > 0
    assert predictive.hot_seconds < reactive.hot_seconds
    assert predictive.moves <= reactive.moves, (predictive.moves_by_reason, reactive.moves_by_reason)


@_SHORT_TRACES
def test_earned_trust_beats_reactive(trace, config: SimConfig) -> None:  # type: ignore[no-untyped-def]
    """The earned-trust combination (:func:`sprawl.forecast.replay.earned`):
    fewer seconds with a node hot, no more moves, no more messages delayed."""
    tr = trace()
    ((reactive, predictive),) = compare([tr], earned(tr, config))
    assert reactive.hot_seconds > 0
    assert predictive.hot_seconds < reactive.hot_seconds
    assert predictive.moves <= reactive.moves
    assert predictive.delayed <= reactive.delayed
    assert predictive.moves_by_reason.get("predicted", 0) > 0


@pytest.mark.skipif(
    not os.environ.get("SPRAWL_SIM_LONG"),
    reason="day-long traces, 1-2 minutes each: run by tox -e sim (SPRAWL_SIM_LONG=1)",
)
@pytest.mark.parametrize(
    "trace",
    [
        pytest.param(lambda: traces.daily(days=2.0), id="daily"),
        pytest.param(lambda: traces.ramp(), id="ramp"),
    ],
)
def test_earned_trust_wins_the_day_long_traces(trace) -> None:  # type: ignore[no-untyped-def]
    """The earned-trust combination on the forecastable day-long traces: less
    hot time, no more moves and no more messages delayed than the reactive balancer."""
    tr = trace()
    ((reactive, predictive),) = compare([tr], earned(tr))
    assert predictive.hot_seconds < reactive.hot_seconds
    assert predictive.moves <= reactive.moves, (predictive.moves_by_reason, reactive.moves_by_reason)
    assert predictive.delayed <= reactive.delayed


@pytest.mark.skipif(
    not os.environ.get("SPRAWL_SIM_LONG"),
    reason="day-long traces, 1-2 minutes each: run by tox -e sim (SPRAWL_SIM_LONG=1)",
)
@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(
            1,
            marks=pytest.mark.xfail(
                strict=True,
                reason="earned trust makes more moves than reactive on the ramp trace of seed 1 (29 against "
                "25, 8,505 s hot against 8,210: neither stuck since the relief plan; docs/benchmarks.md, "
                "balance36): its forecast moves during the launch (known, open)",
            ),
        ),
        pytest.param(
            3,
            marks=pytest.mark.xfail(
                strict=True,
                reason="earned trust makes more moves than reactive on the ramp trace of seed 3 (31 against "
                "27, 10,085 s hot against 8,585: neither stuck since the relief plan; docs/benchmarks.md, "
                "balance36): its forecast moves on day 2 after the launch (known, open)",
            ),
        ),
    ],
)
def test_earned_trust_wins_the_ramp_of_other_seeds(seed: int) -> None:
    """Issue 18's bar on other draws of the ramp trace (the noise of another
    seed): less hot time and no more moves than the reactive balancer.
    Strict: the day earned trust holds there, these tests say so."""
    tr = traces.ramp(seed=seed)
    ((reactive, predictive),) = compare([tr], earned(tr))
    assert predictive.hot_seconds < reactive.hot_seconds
    assert predictive.moves <= reactive.moves, (predictive.moves_by_reason, reactive.moves_by_reason)


@pytest.mark.skipif(
    not os.environ.get("SPRAWL_SIM_LONG"),
    reason="day-long traces, 1-2 minutes each: run by tox -e sim (SPRAWL_SIM_LONG=1)",
)
def test_earned_trust_acts_on_surges_distrusting_the_surprised_partitions_alone() -> None:
    """On the surges trace earned trust no longer falls back to the reactive
    run: since trust43 a surprise withholds only the surprised partition's
    short forecasts (its profile kept), so the other partitions' forecasts
    keep moving partitions ahead of the daily cycle -- moves on a forecast,
    and under half the reactive run's hot time (2,125 s against 4,605).  Its
    moves are not held to the reactive run's on one draw (36 against 31):
    the reactive rule against itself 5 s later differs by up to 29 moves on
    one surges draw (trust42); the family test judges them over 64 draws.
    With the cluster-wide gate (earned trust until trust43) the first surge
    withdrew every forecast for a day: no move on a forecast, the reactive
    run move for move (a tie)."""
    tr = traces.surges()
    ((reactive, predictive),) = compare([tr], earned(tr))
    assert predictive.moves_by_reason.get("predicted", 0) > 0
    assert predictive.hot_seconds < reactive.hot_seconds / 2, (predictive.hot_seconds, reactive.hot_seconds)
    cluster_wide = simulate(tr, True, replace(earned(tr), distrust_partition=False))
    assert cluster_wide.moves_by_reason.get("predicted", 0) == 0 and cluster_wide.log == reactive.log


def test_runs_are_deterministic() -> None:
    """Same trace, same seed: the same moves at the same times."""
    tr = traces.recorded(RECORDED, period=300.0, bucket=10.0)
    a, b = simulate(tr, True, SimConfig(horizon=60.0)), simulate(tr, True, SimConfig(horizon=60.0))
    assert a.log == b.log and a.hot_seconds == b.hot_seconds


def test_recorded_trace_reads_the_file() -> None:
    """The recorded CSV gives the cluster's three nodes and its ten partitions."""
    tr = traces.recorded(RECORDED, period=300.0, bucket=10.0)
    assert len(tr.replicas) == 10 and len(tr.nodes) == 3 and tr.seconds >= 800


def test_decision_offset_shifts_the_decision_clock() -> None:
    """``SimConfig.decision_offset``: the same reactive rule with its first
    decision 5 s in decides at 5, 15, 25 ... s (every move at an odd multiple
    of 5 s), and the runs differ from there (docs/benchmarks.md, trust38:
    the view holds the sample of the step a move landed in)."""
    tr = traces.recorded(RECORDED, period=300.0, bucket=10.0)
    a = simulate(tr, False, SimConfig(horizon=60.0))
    b = simulate(tr, False, SimConfig(horizon=60.0, decision_offset=5.0))
    assert a.log and b.log
    assert all(t % 10 == 0 for t, _ in a.log) and all(t % 10 == 5 for t, _ in b.log)
    assert (b.moves, b.hot_seconds) != (a.moves, a.hot_seconds)


#: The bar over draws (docs/benchmarks.md, trust39, trust42, trust43): a family is a
#: synthetic trace's seeds 1-8 at both phases of the controller's decision
#: clock (0 and +5 s: decisions every 10 s on 5-s gossip steps), 16 draws,
#: each run by the reactive balancer and by earned trust; earned trust must be
#: less hot in sum with the bootstrap interval of the difference wholly below
#: zero, delay no more messages in sum, and make no more moves than the
#: reactive run within the non-inferiority margin (``paired.Aggregate.holds``:
#: at most +2 % in sum, the interval not wholly above zero); where it makes
#: none more at all, the strict rule too (``paired.Aggregate.wins``).  Per draw
#: no rule can be held to it: the reactive balancer, its clock shifted 5 s,
#: "loses" 18 of 22 draws to itself (trust38).
FAMILY_SEEDS = tuple(range(1, 9))
#: Surges are judged on seeds 1-32, 64 draws, and on the fresh seeds 17-32
#: alone: the lead's pre-registered confirmatory look (trust43).  Its summed
#: moves are the noisiest of the families (the reactive rule against itself
#: 5 s later: +2.9 % on seeds 1-16, -5.1 % on seeds 17-32); seeds 1-16 alone
#: (trust42) miss the margin by 1.5 moves (+28, +2.1 %), which is why the
#: verdict was taken again on 32 draws no run had seen, to pass together with
#: the pooled 64.
SURGES_SEEDS = tuple(range(1, 33))
#: The confirmatory sample within :data:`SURGES_SEEDS` (trust43).
SURGES_FRESH_SEEDS = tuple(range(17, 33))
PHASES = (0.0, 5.0)


def family_pairs(trace: str, seeds: tuple[int, ...], phases: tuple[float, ...] = PHASES) -> list[paired.Pair]:
    """Reactive against earned trust on every (seed, phase) of ``trace``: the
    same runs as ``earned_sweep --traces TRACE --seeds ... --lasting 0.5
    [--offset 5]`` (:func:`benchmarks.earned_sweep.run`)."""
    rows = [
        run(trace, seed, lasting, "", phase)
        for seed in seeds
        for phase in phases
        for lasting in (None, EARNED_LASTING)
    ]
    return paired.pairs(rows)


@pytest.mark.skipif(
    not os.environ.get("SPRAWL_SIM_LONG"),
    reason="16-64 draws of a day-long trace, 2-50 minutes a family: run by tox -e sim (SPRAWL_SIM_LONG=1)",
)
@pytest.mark.parametrize(
    ("trace", "seeds", "strict"),
    [
        pytest.param("hourly", FAMILY_SEEDS, True, id="hourly"),
        pytest.param("ramp", FAMILY_SEEDS, True, id="ramp"),
        pytest.param("daily", FAMILY_SEEDS, True, id="daily"),
        # surges: holds on 64 draws (2,667 moves against 2,639, +1.1 %, margin 52.8; hot -61 %) and on the
        # fresh 32 (1,312 against 1,312; hot -57 %), but not strictly on 64 (+28 moves): trust43
        pytest.param("surges", SURGES_SEEDS, False, id="surges"),
        # recorded: test_earned_trust_wins_the_paired_aggregate_of_the_recordings (every run)
    ],
)
def test_earned_trust_wins_the_paired_aggregate_of_each_family(
    trace: str, seeds: tuple[int, ...], strict: bool
) -> None:
    """Issue 18's bar over draws, per family (``paired.Aggregate.holds``): over
    the family's seeds at both clock phases, earned trust keeps nodes hot for
    less time in sum (interval clear of zero), delays no more messages in sum,
    and makes no more moves than the margin allows; on the families where it
    makes none more at all, the strict rule as well (``wins``).  Surges: the
    lead's pre-registered condition (trust43), ``holds`` over seeds 1-32 and
    over the fresh seeds 17-32 alone (~50 minutes of CPU)."""
    ps = family_pairs(trace, seeds)
    g = paired.aggregate(ps, trace)
    assert g.n == 2 * len(seeds), g.line()
    assert g.holds(), g.line() + "\n" + paired.table(ps)
    if strict:
        assert g.wins(), g.line() + "\n" + paired.table(ps)
    if trace == "surges":
        fresh = [p for p in ps if p.seed in SURGES_FRESH_SEEDS]
        f = paired.aggregate(fresh, "surges 17-32")
        assert f.n == 2 * len(SURGES_FRESH_SEEDS) and f.holds(), f.line()


def test_earned_trust_wins_the_paired_aggregate_of_hourly_seeds_1_and_2() -> None:
    """The same statistic at CI size: the hourly trace (the cheapest family that
    holds), seeds 1 and 2 at both clock phases, 4 draws (~15 s of CPU)."""
    ps = family_pairs("hourly", (1, 2))
    g = paired.aggregate(ps, "hourly 1-2")
    assert g.n == 4, g.line()
    assert g.wins() and g.holds(), g.line() + "\n" + paired.table(ps)


def test_earned_trust_wins_the_paired_aggregate_of_the_recordings() -> None:
    """The recorded family, every run (15 minutes of trace: well under a second
    of CPU a run): the recorded trace has no seed, its draws are its
    recordings (``benchmarks.forecast_sim.RECORDINGS``: two since trust40,
    made by ``benchmarks.forecast_record`` with the same schedule) at both
    clock phases, 4 draws.  With the first recording alone (2 draws, one a
    tie) no interval could be clear of zero (trust39)."""
    ps = family_pairs("recorded", (0, 1))
    g = paired.aggregate(ps, "recorded")
    assert g.n == 4, g.line()
    assert g.wins() and g.holds(), g.line() + "\n" + paired.table(ps)
