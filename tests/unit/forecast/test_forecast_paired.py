"""The paired judgement of two balancing rules over many draws
(``benchmarks.paired``, ``earned_sweep --paired``; docs/benchmarks.md trust39):
its statistics on small hand-made inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import earned_sweep, paired


def row(
    trace: str, seed: int, mode: str, hot: float, moves: int, delayed: float, offset: float = 0.0
) -> dict[str, Any]:
    """One ``earned_sweep`` row (only what the judgement reads)."""
    r: dict[str, Any] = {
        "trace": trace,
        "seed": seed,
        "mode": mode,
        "lasting": None if mode == "reactive" else 0.5,
        "hot": hot,
        "moves": moves,
        "delayed": delayed,
    }
    if offset:
        r["offset"] = offset
    return r


def test_the_sign_test_is_the_exact_two_sided_binomial() -> None:
    """16 of 16 untied pairs one way: 2 / 2^16; 12 against 4: 2 * P(X <= 4) for
    X ~ Bin(16, 1/2) = 2 * 2,517 / 65,536 (trust38b's ramp, p = 0.077); an even
    split and no untied pair: 1; symmetric."""
    assert paired.sign_test(16, 0) == pytest.approx(2 / 2**16)
    assert paired.sign_test(12, 4) == pytest.approx(2 * 2517 / 65536)
    assert paired.sign_test(4, 12) == paired.sign_test(12, 4)
    assert paired.sign_test(5, 5) == 1.0
    assert paired.sign_test(0, 0) == 1.0
    assert paired.sign_test(1, 0) == 1.0  # one pair says nothing
    assert paired.sign_test(6, 0) == pytest.approx(0.03125)


def test_the_bootstrap_interval_of_a_sum() -> None:
    """Equal differences: a point; two differences -1 and +1: the resampled sum
    is -2, 0 or 2 with chances 1/4, 1/2, 1/4, so the 95 % interval is -2..2; all
    differences negative: an interval wholly below zero; seeded: the same
    interval every time; the interval holds the sum."""
    assert paired.bootstrap_interval([-5.0, -5.0, -5.0]) == (-15.0, -15.0)
    assert paired.bootstrap_interval([-1.0, 1.0]) == (-2.0, 2.0)
    lo, hi = paired.bootstrap_interval([-30.0, -1.0, -2.0, -7.0])
    assert -120.0 <= lo <= -40.0 <= hi < 0
    d = [-300.0, 120.0, -45.0, 80.0, -500.0, 10.0, -20.0, 0.0]
    assert paired.bootstrap_interval(d) == paired.bootstrap_interval(d)
    lo, hi = paired.bootstrap_interval(d, resamples=2000)
    assert lo < sum(d) < hi
    assert paired.bootstrap_interval([]) == (0.0, 0.0)


def test_the_quantile_is_the_empirical_inverse_at_the_exact_rank() -> None:
    """The 2.5 % quantile of 10,000 values is the 250th (index 249), though
    ``(1 - 0.95) / 2 * 10,000`` computes as 250.0000000000002: trust38b's
    intervals, to the unit."""
    values = list(range(10_000))
    assert paired._quantile(values, (1 - 0.95) / 2) == 249
    assert paired._quantile(values, (1 + 0.95) / 2) == 9749
    assert paired._quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert paired._quantile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert paired._quantile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0


def test_pairs_are_the_same_trace_seed_and_phase() -> None:
    """A reactive and an earned run of the same (trace, seed, phase) pair up;
    a run without its partner, another phase's run, or an early-shed run does
    not; a draw read twice with the same figures counts once; with different
    figures the files mix two versions of the code: refused."""
    rows = [
        row("ramp", 1, "reactive", 100, 10, 50),
        row("ramp", 1, "earned", 80, 9, 40),
        row("ramp", 1, "reactive", 200, 12, 60, offset=5),
        row("ramp", 1, "early", 150, 11, 55, offset=5),
        row("ramp", 2, "earned", 70, 8, 30),
        row("hourly", 3, "reactive", 30, 5, 9, offset=5),
        row("hourly", 3, "earned", 20, 6, 8, offset=5),
        row("hourly", 3, "earned", 20, 6, 8, offset=5),
    ]
    ps = paired.pairs(rows)
    assert [(p.trace, p.seed, p.phase) for p in ps] == [("hourly", 3, 5.0), ("ramp", 1, 0.0)]
    assert [p.d("hot") for p in ps] == [-10.0, -20.0] and ps[0].draw == "hourly / 3 / +5 s"
    assert [(p.trace, p.seed, p.phase) for p in paired.pairs(rows, b="early")] == [("ramp", 1, 5.0)]
    with pytest.raises(ValueError, match="two different runs"):
        paired.pairs([*rows, row("ramp", 1, "earned", 81, 9, 40)])


def test_the_yardstick_pairs_a_rule_with_itself_at_the_other_phase() -> None:
    """``phase_pairs``: reactive at phase 0 against reactive at +5 s, per (trace, seed)."""
    rows = [
        row("daily", 1, "reactive", 100, 10, 50),
        row("daily", 1, "reactive", 150, 13, 50, offset=5),
        row("daily", 2, "reactive", 100, 10, 50),
        row("daily", 1, "earned", 1, 1, 1, offset=5),
    ]
    (p,) = paired.phase_pairs(rows)
    assert (p.trace, p.seed, p.d("hot"), p.d("moves")) == ("daily", 1, 50.0, 3.0)
    assert "mean |log(hot +shift / hot 0)| 0.405 (x1.50)" in paired.spread([p])


def _agg(diffs: list[tuple[float, int, float]], moves: int = 20) -> paired.Aggregate:
    """An aggregate of pairs whose ``b - a`` are ``diffs`` (hot, moves, delayed),
    the baseline making ``moves`` moves in each."""
    rows = []
    for i, (dh, dm, dd) in enumerate(diffs):
        rows += [
            row("t", i, "reactive", 1000, moves, 500),
            row("t", i, "earned", 1000 + dh, moves + dm, 500 + dd),
        ]
    return paired.aggregate(paired.pairs(rows), "t")


def test_the_bar_is_less_hot_clear_of_zero_and_no_more_moves_or_delayed_in_sum() -> None:
    """``Aggregate.wins``: hot time lower with the interval below zero and the
    summed moves and messages delayed not higher; each clause can fail it."""
    good = [(-100.0, -1, -10.0), (-50.0, 1, 5.0), (-80.0, 0, -5.0), (-20.0, 0, 0.0)]
    g = _agg(good)
    assert g.wins() and g.n == 4 and (g.lower, g.higher, g.equal) == (4, 0, 0)
    assert g.d("hot") == -250.0 and g.d("moves") == 0 and g.d("delayed") == -10.0
    assert g.sum_a["hot"] == 4000.0 and g.sum_b["moves"] == 80.0
    assert g.p == pytest.approx(0.125)
    assert "WINS" in g.line()
    # one more move in sum
    assert not _agg([*good, (-10.0, 1, 0.0)]).wins()
    # more messages delayed in sum
    assert not _agg([*good, (-10.0, 0, 11.0)]).wins()
    # less hot in sum, but the interval crosses zero: one big loss among small wins
    crossing = _agg([(-100.0, 0, 0.0), (-100.0, 0, 0.0), (-100.0, 0, 0.0), (250.0, 0, 0.0)])
    assert crossing.d("hot") < 0 and crossing.interval["hot"][1] > 0 and not crossing.wins()
    # all ties: no win
    tie = _agg([(0.0, 0, 0.0), (0.0, 0, 0.0)])
    assert tie.equal == 2 and tie.p == 1.0 and not tie.wins()
    assert not paired.aggregate([], "none").wins()


def test_non_inferiority_holds_with_a_few_more_moves_within_the_margin() -> None:
    """``Aggregate.holds``: hot time lower clear of zero and messages delayed not
    higher, as the strict rule; but one more move in 100 (within
    ``MOVES_MARGIN``, 2 %, its interval across zero) still holds, where the
    strict rule (``wins``) fails; both verdicts are printed."""
    assert paired.MOVES_MARGIN == 0.02
    # 5 draws of 20 moves each: the margin is 2 moves
    g = _agg([(-100.0, 2, -10.0), (-50.0, -2, 0.0), (-80.0, 1, -5.0), (-20.0, 0, 0.0), (-40.0, 0, 0.0)])
    assert g.d("moves") == 1 and g.sum_a["moves"] == 100
    assert g.interval["moves"][0] < 0 < g.interval["moves"][1]
    assert g.holds() and not g.wins() and g.misses() == []
    assert "strict: does not win; non-inferiority: HOLDS" in g.line()
    # exactly at the margin: holds
    assert _agg(
        [(-100.0, 2, 0.0), (-50.0, 0, 0.0), (-80.0, 0, 0.0), (-20.0, 0, 0.0), (-40.0, 0, 0.0)]
    ).holds()
    # what the strict rule passes, non-inferiority passes too
    w = _agg([(-100.0, -1, -10.0), (-50.0, 1, 5.0), (-80.0, 0, -5.0), (-20.0, 0, 0.0)])
    assert w.wins() and w.holds() and "strict: WINS; non-inferiority: HOLDS" in w.line()


def test_non_inferiority_fails_each_way() -> None:
    """Each clause of ``Aggregate.holds`` can fail it alone: moves over the
    margin (3 more in 100, interval across zero); moves within the margin but
    their interval wholly above zero (one more on each of 5 draws of 100
    moves: +1 %, every resample +5); more messages delayed in sum; hot time
    lower in sum but its interval across zero; no pairs."""
    base = [(-100.0, 0, 0.0), (-50.0, 0, 0.0), (-80.0, 0, 0.0), (-20.0, 0, 0.0), (-40.0, 0, 0.0)]
    over = _agg([(-100.0, 3, 0.0), (-50.0, -1, 0.0), (-80.0, 1, 0.0), (-20.0, 0, 0.0), (-40.0, 0, 0.0)])
    assert over.d("moves") == 3 and over.interval["moves"][0] < 0
    assert not over.holds() and over.misses() == ["moves over +2 %"]
    assert "non-inferiority: does not hold (moves over +2 %)" in over.line()
    above = _agg([(dh, 1, dd) for dh, _, dd in base], moves=100)
    assert above.d("moves") == 5 <= paired.MOVES_MARGIN * above.sum_a["moves"]
    assert above.interval["moves"] == (5.0, 5.0)
    assert not above.holds() and above.misses() == ["moves interval above zero"]
    delayed = _agg([*base[:-1], (-40.0, 0, 1.0)])
    assert not delayed.holds() and delayed.misses() == ["more delayed"]
    crossing = _agg([(-100.0, 0, 0.0), (-100.0, 0, 0.0), (-100.0, 0, 0.0), (250.0, 0, 0.0)])
    assert crossing.d("hot") < 0 and not crossing.holds()
    assert crossing.misses() == ["hot interval not below zero"]
    tie = _agg([(0.0, 0, 0.0), (0.0, 0, 0.0)])
    assert not tie.holds() and tie.misses() == ["hot interval not below zero"]
    assert not paired.aggregate([], "none").holds()


def test_families_and_all() -> None:
    """``by_family``: one aggregate per trace, then ``all`` over every pair."""
    rows = [
        row("hourly", 1, "reactive", 100, 10, 50),
        row("hourly", 1, "earned", 60, 9, 40),
        row("ramp", 1, "reactive", 100, 10, 50),
        row("ramp", 1, "earned", 130, 12, 40),
    ]
    aggs = paired.by_family(paired.pairs(rows))
    assert [(g.label, g.n, g.d("hot"), g.d("moves")) for g in aggs] == [
        ("hourly", 1, -40.0, -1.0),
        ("ramp", 1, 30.0, 2.0),
        ("all", 2, -10.0, 1.0),
    ]


def test_earned_sweep_paired_reads_several_out_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``earned_sweep --paired --out A --out B``: the pairs across both files
    (one per clock phase, as the sweeps write them), the aggregates and the
    yardstick; running a sweep into two files is refused."""
    a, b = tmp_path / "off0.jsonl", tmp_path / "off5.jsonl"
    a.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                row("ramp", s, m, h, 10, 50)
                for s in (1, 2, 3)
                for m, h in (("reactive", 100), ("earned", 90))
            ]
        )
    )
    b.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                row("ramp", s, m, h, 10, 50, offset=5)
                for s in (1, 2, 3)
                for m, h in (("reactive", 120), ("earned", 95))
            ]
        )
    )
    assert earned_sweep.main(["--paired", "--out", str(a), "--out", str(b)]) == 0
    out = capsys.readouterr().out
    assert "### earned vs reactive (6 paired runs)" in out
    assert "| ramp / 2 / +5 s | 10 / 120 / 50 | 10 / 95 / 50 | -25 | +0 | +0 |" in out
    assert "all: n=6; hot 660 vs 555 (d -105, -16 %, 95% CI -135..-75)" in out and "WINS" in out
    assert "### reactive vs reactive +5 s (3 draws: the yardstick)" in out
    assert f"(x{math.exp(math.log(1.2)):.2f})" in out
    with pytest.raises(SystemExit):
        earned_sweep.main(["--out", str(a), "--out", str(b), "--traces", "recorded", "--lasting", "0.5"])
