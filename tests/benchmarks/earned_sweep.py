"""How stable earned trust's wins are: the simulator's traces across seeds and
``predict_lasting`` values (docs/benchmarks.md, "trust35").

    PYTHONPATH=tests python -m benchmarks.earned_sweep [--traces hourly,recorded,daily,ramp,surges]
        [--seeds 1,2,3] [--lasting 0.3,0.4,0.5,0.6,0.7] [--plain] [--again season]
        [--early] [--offset S] [--window W] [--total T] [--jobs N] [--out FILE]
    PYTHONPATH=tests python -m benchmarks.earned_sweep --paired [--rule earned|early]
        --out FILE [--out FILE ...]

Each (trace, seed) runs the reactive balancer once and the earned-trust
combination (:func:`sprawl.forecast.replay.earned`, the values of a node with
``--earned-trust``) once per ``predict_lasting`` value (and, with
``--plain``, the plain predictive balancer once: the defaults with
forecasts, ``benchmarks.forecast_sim``'s "predictive" row; ``--again``
sets ``BalanceConfig.predict_again`` on the earned runs: seconds, or
``season`` for the trace's season; ``--early`` also runs the early shed,
:func:`sprawl.forecast.replay.early`, once; ``--offset S`` runs every run
with the controller's first decision S seconds in,
``SimConfig.decision_offset``: the same rules at another phase of the
decision clock, docs/benchmarks.md trust38; ``--window W`` windows the
gossiped rates over W seconds, ``SimConfig.rate_window``, 0 the last
sample alone, and ``--total T`` re-gossips them on a change of T of their
sum, ``SimConfig.regossip_total``, 0 not: trust38b; ``--per-partition``
gives earned trust's distrust per partition, ``SimConfig.distrust_partition``:
trust39, and ``--keep-profiles`` with it keeps the surprised partition's
profile, ``SimConfig.distrust_profiles`` off: trust40 -- both earned trust's
values since trust43, so these two flags change nothing now;
``--cluster-wide`` runs earned trust's distrust as it was until trust43, one
surprise withholding every forecast, and ``--withhold-profiles`` trust39's
per-partition form, the surprised partition's profile withheld too); the
synthetic traces take the seed (their noise, and the surges'
times and partitions), the recorded trace has none: its draws are its
recordings (``benchmarks.forecast_sim.RECORDINGS``, seed = index, every one
run).  The simulator is seeded and runs no real
time, so the figures do not depend on the machine's load.  Every run is
appended to ``--out`` as one JSON line as it ends (a run already there is not
run again: an interrupted sweep resumes), and the summary is printed at the
end: per run, moves / seconds with a node hot / messages delayed, and
whether it *wins* (fewer hot seconds, no more moves, no more messages
delayed: issue 18's bar), *ties* (the same moves and hot seconds) or *loses*
against the reactive run of its trace and seed.

``--paired`` runs nothing: it reads every ``--out`` file given (e.g. one per
``--offset``) and prints the paired judgement over all their draws
(:mod:`benchmarks.paired`, docs/benchmarks.md trust39): per (trace, seed,
phase) the reactive run against ``--rule`` (earned trust by default), the
sums of hot seconds, moves and messages delayed per family and over all, a
sign test and a seeded 95 % bootstrap interval on each summed difference,
and the yardstick: the reactive rule against itself with its clock 5 s later.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from benchmarks import paired
from benchmarks.forecast_sim import RECORDED_CONFIG, RECORDED_PERIOD, RECORDINGS
from sprawl.forecast import traces
from sprawl.forecast.replay import SimConfig, Trace, early, earned, season_seconds, simulate

#: Each trace's default seed (:mod:`sprawl.forecast.traces`): the docs' tables ran these.
DEFAULT_SEEDS = {"hourly": 1, "daily": 1, "ramp": 2, "surges": 3}


def trace_of(name: str, seed: int) -> tuple[Trace, SimConfig]:
    """The trace ``name`` with ``seed`` and its simulation settings (as ``forecast_sim``'s)."""
    if name == "hourly":
        return traces.hourly(seed=seed), SimConfig()
    if name == "daily":
        return traces.daily(seed=seed, days=2.0), SimConfig()
    if name == "ramp":
        return traces.ramp(seed=seed), SimConfig()
    if name == "surges":
        return traces.surges(seed=seed), SimConfig()
    if name == "recorded":
        return traces.recorded(RECORDINGS[seed], period=RECORDED_PERIOD, bucket=10.0), RECORDED_CONFIG
    raise ValueError(f"no trace {name!r}")


#: ``run``'s ``lasting`` for the plain predictive balancer (no earned trust).
PLAIN = -1.0
#: ``run``'s ``lasting`` for the early shed (:func:`sprawl.forecast.replay.early`).
EARLY = -2.0


def mode_of(row: dict[str, Any]) -> str:
    """``reactive``, ``predictive`` (plain) or ``earned`` (rows of older sweeps have no ``mode``)."""
    return str(row.get("mode") or ("reactive" if row["lasting"] is None else "earned"))


def _label(row: dict[str, Any]) -> str:
    mode = mode_of(row)
    if mode == "predictive":
        return "plain predictive"
    if mode == "early":
        return "early shed"
    return f"predict_lasting {row['lasting']:g}"


def run(
    name: str,
    seed: int,
    lasting: float | None,
    again: str = "",
    offset: float = 0.0,
    window: float | None = None,
    total: float | None = None,
    per_partition: bool | None = None,
    keep_profiles: bool | None = None,
) -> dict[str, Any]:
    """One run: reactive (``lasting`` None), the plain predictive balancer
    (:data:`PLAIN`), the early shed (:data:`EARLY`) or earned trust with that
    ``predict_lasting`` (and ``predict_again``: ``again`` seconds, ``season``,
    or "" for off); the first decision ``offset`` seconds in; the gossiped
    rates windowed over ``window`` seconds (None: ``SimConfig.rate_window``)
    and re-gossiped on a ``total`` change of their sum (None:
    ``SimConfig.regossip_total``); ``per_partition``: earned trust's
    distrust per partition (``SimConfig.distrust_partition``, trust39), and
    ``keep_profiles`` with it: the surprised partition's profile still given
    (``SimConfig.distrust_profiles`` off, trust40); None (the default):
    earned trust's own values (:class:`sprawl.forecast.earned.EarnedTrust`:
    both on since trust43).  An earned row says which it ran
    (``distrust_partition``, ``keep_profiles``; rows of sweeps before
    trust43 carry them only when on)."""
    tr, cfg = trace_of(name, seed)
    cfg = dataclasses.replace(cfg, decision_offset=offset)
    if window is not None:
        cfg = dataclasses.replace(cfg, rate_window=window)
    if total is not None:
        cfg = dataclasses.replace(cfg, regossip_total=total)
    t0 = time.process_time()
    mode = {None: "reactive", PLAIN: "predictive", EARLY: "early"}.get(lasting, "earned")
    c = cfg
    if lasting is None:
        r = simulate(tr, False, cfg)
    elif lasting == PLAIN:
        r = simulate(tr, True, cfg)
    elif lasting == EARLY:
        r = simulate(tr, True, early(tr, cfg))
    else:
        c = earned(tr, cfg)
        if per_partition is not None:
            c = dataclasses.replace(c, distrust_partition=per_partition)
        if keep_profiles is not None:
            c = dataclasses.replace(c, distrust_profiles=not keep_profiles)
        seconds = season_seconds(tr) if again == "season" else float(again or 0.0)
        c = dataclasses.replace(
            c, balance=dataclasses.replace(c.balance, predict_lasting=lasting, predict_again=seconds)
        )
        r = simulate(tr, True, c)
    return {
        "trace": name,
        "seed": seed,
        "mode": mode,
        "lasting": lasting,
        **({"again": again} if again and mode == "earned" else {}),
        **({"offset": offset} if offset else {}),
        **(
            {
                "distrust_partition": c.distrust_partition,
                "keep_profiles": c.distrust_partition and not c.distrust_profiles,
            }
            if mode == "earned"
            else {}
        ),
        "window": cfg.rate_window,
        "total": cfg.regossip_total,
        "hot": r.hot_seconds,
        "node_hot": r.node_hot_seconds,
        "moves": r.moves,
        "predicted": r.moves_by_reason.get("predicted", 0),
        "delayed": round(r.delayed),
        "regossips": r.regossips,
        "mape": r.mape,
        "cpu": round(time.process_time() - t0, 1),
    }


def verdict(run: dict[str, Any], reactive: dict[str, Any]) -> str:
    """``win`` (less hot time, no more moves, no more messages delayed), ``tie``
    (the same hot time, no more moves or delayed) or ``LOSS`` (``>moves``,
    ``>hot``, ``>delayed``) against the reactive run."""
    worse = [f">{what}" for what in ("moves", "hot", "delayed") if run[what] > reactive[what]]
    if worse:
        return "LOSS " + " ".join(worse)
    if run["hot"] < reactive["hot"]:
        return "win"
    return "tie" if run["moves"] == reactive["moves"] else "tie (fewer moves)"


def summary(rows: list[dict[str, Any]]) -> str:
    """The sweep's table (one line per run) and the verdicts by ``predict_lasting``."""
    reactive = {(r["trace"], r["seed"]): r for r in rows if r["lasting"] is None}
    out = [
        "| trace | seed | predict_lasting | moves | s hot | node-s hot | delayed | reactive moves / s hot / delayed | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by: dict[str, list[str]] = {}
    for r in sorted(
        (r for r in rows if r["lasting"] is not None), key=lambda r: (r["trace"], r["seed"], r["lasting"])
    ):
        base = reactive.get((r["trace"], r["seed"]))
        v = verdict(r, base) if base is not None else "?"
        label = _label(r)
        by.setdefault(label, []).append(f"{r['trace']}/{r['seed']}: {v}")
        ref = f"{base['moves']} / {base['hot']:.0f} / {base['delayed']}" if base is not None else "?"
        out.append(
            f"| {r['trace']} | {r['seed']} | {label.split()[-1]} | {r['moves']} | {r['hot']:.0f} | "
            f"{r['node_hot']:.0f} | {r['delayed']} | {ref} | {v} |"
        )
    out.append("")
    for label, vs in sorted(by.items()):
        losses = [v for v in vs if "LOSS" in v]
        wins = sum(1 for v in vs if v.endswith(": win"))
        out.append(f"{label}: {len(vs)} runs, {wins} wins, {len(losses)} losses {losses}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", default="hourly,recorded,daily,ramp,surges")
    ap.add_argument(
        "--seeds", default="", help="seeds of the synthetic traces (default, or 0: each trace's own)"
    )
    ap.add_argument("--lasting", default="0.3,0.4,0.5,0.6,0.7")
    ap.add_argument("--plain", action="store_true", help="also run the plain predictive balancer")
    ap.add_argument("--again", default="", help="predict_again of the earned runs: seconds or 'season'")
    ap.add_argument("--early", action="store_true", help="also run the early shed (replay.early)")
    ap.add_argument("--offset", type=float, default=0.0, help="seconds before the first decision")
    ap.add_argument(
        "--window", type=float, default=None, help="SimConfig.rate_window (0: the last sample alone)"
    )
    ap.add_argument(
        "--total", type=float, default=None, help="SimConfig.regossip_total (0: the 20%% rule alone)"
    )
    ap.add_argument(
        "--per-partition",
        action="store_const",
        const=True,
        dest="per_partition",
        help="earned runs distrust per partition (SimConfig.distrust_partition; earned trust's value)",
    )
    ap.add_argument(
        "--cluster-wide",
        action="store_const",
        const=False,
        dest="per_partition",
        help="earned runs distrust cluster-wide (earned trust until trust43)",
    )
    ap.add_argument(
        "--keep-profiles",
        action="store_const",
        const=True,
        dest="keep_profiles",
        help="the surprised partition's profile still given (trust40; earned trust's value)",
    )
    ap.add_argument(
        "--withhold-profiles",
        action="store_const",
        const=False,
        dest="keep_profiles",
        help="the surprised partition's profile withheld too (trust39's per-partition form)",
    )
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument(
        "--out",
        type=Path,
        action="append",
        help="the rows' file (default earned_sweep.jsonl); --paired: several",
    )
    ap.add_argument("--summary", action="store_true", help="print the summary of --out and exit")
    ap.add_argument(
        "--paired",
        action="store_true",
        help="print the paired judgement (benchmarks.paired) of every --out file and exit",
    )
    ap.add_argument("--rule", default="earned", help="--paired: the rule judged (earned or early)")
    ap.add_argument(
        "--runs", default="", help="TRACE:SEED:LASTING,... to run first, in this order (LASTING - : reactive)"
    )
    a = ap.parse_args(argv)
    outs: list[Path] = a.out or [Path("earned_sweep.jsonl")]
    if a.paired:
        rows = [json.loads(line) for p in outs for line in p.read_text().splitlines() if line.strip()]
        print(paired.report(rows, a.rule))
        return 0
    if len(outs) > 1:
        ap.error("one --out file to run into (several only with --paired)")
    out = outs[0]
    done: list[dict[str, Any]] = []
    if out.exists():
        done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    if a.summary:
        print(summary(done))
        return 0
    have = {(r["trace"], r["seed"], r["lasting"]) for r in done}
    todo: list[tuple[str, int, float | None]] = []
    for spec in filter(None, a.runs.split(",")):
        name, seed_, value = spec.split(":")
        for want in ((name, int(seed_), None), (name, int(seed_), None if value == "-" else float(value))):
            if want not in have and want not in todo:
                todo.append(want)
    # by ``--lasting`` first (in its order), then seed, then trace: a sweep cut
    # short has the first values on every trace and seed; a reactive run goes
    # just before the first run that needs it
    lastings = [*(float(x) for x in a.lasting.split(",") if x), *([PLAIN] if a.plain else [])]
    for lasting in [*lastings, *([EARLY] if a.early else [])]:
        for seed in [int(s) for s in a.seeds.split(",") if s] or [0]:
            for name in a.traces.split(","):
                # the recorded trace's draws are its recordings (every one, whatever the seeds)
                for s_ in range(len(RECORDINGS)) if name == "recorded" else [seed or DEFAULT_SEEDS[name]]:
                    for want in ((name, s_, None), (name, s_, lasting)):
                        if want not in have and want not in todo:
                            todo.append(want)
    with ProcessPoolExecutor(max_workers=a.jobs) as pool, out.open("a") as f:
        futures = {
            pool.submit(
                run,
                *t,
                a.again if t[2] not in (None, PLAIN, EARLY) else "",
                a.offset,
                a.window,
                a.total,
                a.per_partition,
                a.keep_profiles,
            ): t
            for t in todo
        }
        for fut in as_completed(futures):
            row = fut.result()
            done.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(summary(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
