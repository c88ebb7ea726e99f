#!/usr/bin/env python3
"""The controller's step time against partitions x nodes (issues 16 and 23), in process.

    PYTHONPATH=tests python -m benchmarks.scale_controller [--nodes 3,5,9] \\
        [--partitions 100,1000,3000,10000] [--idle-steps 20] [--plot DIR] [--json FILE]

Builds the real :class:`~sprawl.cluster.dataplane.DataPlane` (its
:class:`~sprawl.cluster.controller.PartitionController` and the replication
service's failover cores) of the Raft leader over ``partitions``
single-partition topics of replication factor 3 on ``nodes`` nodes (placed
where the controller's rendezvous hashing puts them, so nothing moves), on a
``task.Clock``, with gossip replaced by a plain object and Raft by one that
applies each proposal at once (as ``tests/unit/cluster/test_controller_cost.py``
builds it), and times, with ``time.perf_counter``:

* **first step**: the step of a new controller, which looks at every partition
  once (and assigns them);
* **idle step**: the median of ``--idle-steps`` steps of a settled cluster in
  which nothing changes (every node beats);
* **failover step**: the step that notices a node dead by gossip and fences
  every partition it led (a ``1/nodes`` share of them).

Each size is built and measured ``--repeat`` times (the median shown; the
garbage collector runs before each timed step).  Prints a Markdown table; ``--plot DIR`` draws ``scale_controller.png``
(needs matplotlib), ``--json`` saves the figures.  CPU only, single thread:
the figures scale with the machine's load.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed

from benchmarks.plots import panel_curves
from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.metadata import Metadata
from sprawl.cluster.placement import replicas as rendezvous
from sprawl.replication.messages import LeaderBeat


def build(nodes: int, partitions: int) -> tuple[DataPlane, dict[str, str], task.Clock, list[str]]:
    """The controller (node n0, the Raft leader) of ``partitions`` topics, RF 3."""
    names = [f"n{i}" for i in range(nodes)]
    clock = task.Clock()
    meta = Metadata()
    for i, n in enumerate(names):
        meta.nodes[n] = {"raft_id": i + 1, "peer": "", "http": ""}
    rf = min(3, nodes)
    for i in range(partitions):
        name = f"t{i:05d}"
        meta.topics[name] = {
            "config": {"partitions": 1, "replication_factor": rf},
            "created_index": 1,
            "groups": {},
        }
        reps = rendezvous(name, 0, names, rf)  # where the controller wants them: nothing moves
        meta.placement[name] = [{"replicas": reps, "leader": reps[0], "epoch": 1}]
    states = dict.fromkeys(names, "alive")
    membership = SimpleNamespace(
        member_views=lambda: [{"id": n, "state": st} for n, st in states.items()],
        live_member_ids=lambda: [n for n, st in states.items() if st == "alive"],
    )
    listeners: list[Any] = []
    proposed: list[dict[str, Any]] = []

    def propose(cmd: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Raft, committed at once: a partition's new placement is applied and announced."""
        proposed.append(cmd)
        if cmd.get("op") == "set_partition":
            pl = meta.placement[cmd["topic"]][cmd["partition"]]
            pl.update(leader=cmd["leader"], replicas=cmd["replicas"], epoch=cmd["epoch"])
            if "goal" in cmd:
                pl["goal"] = cmd["goal"]
            else:
                pl.pop("goal", None)
            for listener in listeners:
                listener(cmd["topic"])
        return succeed({})

    control = SimpleNamespace(
        metadata=meta,
        leader_name=names[0],
        dead_grace=30.0,
        is_leader=True,
        watch_topics=listeners.append,
        is_foreign=lambda v: False,
        propose=propose,
        proposed=proposed,
    )
    channel = SimpleNamespace(handlers={}, send=lambda dst, kind, payload: None)
    broker = SimpleNamespace(topics={}, notify=lambda t, p: None)
    plane = DataPlane(
        names[0],
        broker,  # type: ignore[arg-type]
        control,  # type: ignore[arg-type]
        channel,  # type: ignore[arg-type]
        SimpleNamespace(register=lambda *a: None),  # type: ignore[arg-type]
        clock,
        membership,  # type: ignore[arg-type]
        feature_on=lambda name: name == "node-beat",  # every node has the node beat
    )
    for name in meta.placement:  # what the metadata apply tells the listeners
        for listener in listeners:
            if getattr(listener, "__self__", None) is plane.controller:
                listener(name)
    return plane, states, clock, names


def timed_step(plane: DataPlane) -> float:
    """One controller step, ms (the garbage of what came before collected first)."""
    gc.collect()
    t0 = time.perf_counter()
    plane.controller.tick()
    return (time.perf_counter() - t0) * 1000


def measure(nodes: int, partitions: int, idle_steps: int) -> dict[str, Any]:
    """The three step times of one size."""
    plane, states, clock, names = build(nodes, partitions)
    first = timed_step(plane)
    proposed: list[Any] = plane.control.proposed  # type: ignore[attr-defined]
    settle_steps = 0
    for settle_steps in range(1, 1001):  # until a step proposes nothing (replicas moved to their goal)
        for c in plane.service.controllers.values():  # every leader confirms its Assign
            if c.leader is not None and not c.leader_confirmed:
                c.receive(c.leader, LeaderBeat(c.epoch, 0, 0))
        before = len(proposed)
        clock.advance(0.1)
        for n in names[1:]:
            plane.service.heard(n)
        plane.controller.tick()
        if len(proposed) == before and settle_steps > 2:
            break
    idle = []
    for _ in range(idle_steps):
        clock.advance(0.1)
        for n in names[1:]:
            plane.service.heard(n)
        idle.append(timed_step(plane))
    states[names[-1]] = "dead"
    clock.advance(0.1)
    failover = timed_step(plane)
    fenced = sum(1 for c in plane.service.controllers.values() if c.fencing is not None)
    return {
        "nodes": nodes,
        "partitions": partitions,
        "first_ms": first,
        "idle_ms": statistics.median(idle),
        "failover_ms": failover,
        "fenced": fenced,
        "settle_steps": settle_steps,
        "proposals": len(proposed),
        "visits": plane.controller.visits,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """One line per size."""
    out = [
        "| nodes | partitions | first step ms | idle step ms (median) | failover step ms (partitions fenced) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['nodes']} | {r['partitions']:,} | {r['first_ms']:.1f} | {r['idle_ms']:.3f} "
            f"| {r['failover_ms']:.1f} ({r['fenced']:,}) |"
        )
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Step time against partitions, one line per node count, one panel per step."""
    panels = [
        ("first_ms", "first step (a new controller), ms"),
        ("idle_ms", "idle step, ms (median)"),
        ("failover_ms", "step that fails a dead node over, ms"),
    ]
    panel_curves(
        rows,
        panels,
        out / "scale_controller.png",
        x="partitions",
        xlabel="partitions (RF 3)",
        label=lambda n: f"{n} nodes",
        log_x=True,
    )


def main() -> None:
    """Run the sizes asked, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="3,5,9", help="cluster sizes, comma-separated")
    ap.add_argument("--partitions", default="100,1000,3000,10000", help="partition counts")
    ap.add_argument("--idle-steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="runs per size (the median is shown)")
    ap.add_argument("--plot", type=Path, help="write scale_controller.png to this directory")
    ap.add_argument("--json", type=Path, help="save the figures to this file")
    a = ap.parse_args()
    rows = []
    for n in (int(x) for x in a.nodes.split(",")):
        for p in (int(x) for x in a.partitions.split(",")):
            runs = [measure(n, p, a.idle_steps) for _ in range(a.repeat)]
            row = dict(runs[0])
            for key in ("first_ms", "idle_ms", "failover_ms"):
                row[key] = statistics.median(r[key] for r in runs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    if a.plot:
        plot(rows, a.plot)


if __name__ == "__main__":
    main()
