#!/usr/bin/env python3
"""One ``sprawlctl bench`` row compared between source trees, runs interleaved.

    PYTHONPATH=tests python -m benchmarks.ab --server before=/tmp/old --server after=. \\
        [--client NAME=TREE ...] [--rounds 3] -- --messages 1000000 --batch 100 \\
        --publishers 16 --subscribers 1 --acks leader

Each round, for every server tree, starts a fresh ``twistd sprawl`` with that tree on
``PYTHONPATH`` (ports from the OS, loopback) and runs ``sprawlctl bench --json`` of every
client tree (default: this tree) against it, in turn (every other round in reverse order),
so every pair sees the same background load.  Prints each run, then the median (and range) of each pair and the load average seen:
on a shared machine only such interleaved figures say whether a change costs anything.
Beside the rate it prints the CPU each side spent per message (the node process's user +
system time, and the bench's with its subscriber child): unlike a rate, CPU time per
message hardly moves with the load other jobs put on the machine.
Trees are checkouts (``git worktree add --detach /tmp/old REV``); a tree's ``sprawlctl`` is
``sprawl.ctl:main`` as its setup.cfg names it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import NodeProcess


def _pair(value: str) -> tuple[str, Path]:
    name, sep, tree = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=TREE, got {value!r}")
    path = Path(tree).resolve()
    if not (path / "sprawl" / "__init__.py").exists():
        raise argparse.ArgumentTypeError(f"{path} holds no sprawl package")
    return name, path


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children (and theirs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench(client: Path, url: str, args: list[str]) -> dict[str, Any]:
    """``sprawlctl bench --json ARGS`` of the ``client`` tree against ``url``: its JSON result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPRAWL_")}
    env.update(PYTHONPATH=str(client), SPRAWL_URL=url)
    out = subprocess.run(
        [sys.executable, "-c", "from sprawl.ctl import main; main()", "bench", "--json", *args],
        env=env,
        cwd=str(client),  # (``-c`` puts the working directory first on sys.path)
        capture_output=True,
        timeout=1800,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", type=_pair, action="append", required=True, help="NAME=TREE (repeat)")
    ap.add_argument("--client", type=_pair, action="append", help="NAME=TREE (default: this tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--measure",
        default="delivered_msgs_per_s",
        help="the result field compared (publish_msgs_per_s, ...)",
    )
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: sprawlctl bench's options")
    a = ap.parse_args()
    args = [x for x in a.bench_args if x != "--"]
    here = Path(__file__).resolve().parent.parent.parent
    clients: list[tuple[str, Path]] = a.client or [("this", here)]
    got: dict[tuple[str, str], list[float]] = {}
    server_us: dict[tuple[str, str], list[float]] = {}
    client_us: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [(s, c) for s in a.server for c in clients]
        for rnd in range(a.rounds):
            # Every other round runs the pairs in reverse: no pair always goes first.
            for (sname, stree), (cname, ctree) in pairs if rnd % 2 == 0 else pairs[::-1]:
                node = NodeProcess(Path(tmp) / f"{sname}-{cname}-{rnd}", env={"PYTHONPATH": str(stree)})
                node.start()
                try:
                    assert node.proc is not None
                    s0, c0 = process_cpu(node.proc.pid), children_cpu()
                    r = bench(ctree, node.url, args)
                    s1, c1 = process_cpu(node.proc.pid), children_cpu()
                finally:
                    node.stop()
                load = os.getloadavg()[0]
                loads.append(load)
                value = float(r[a.measure])
                n = max(1, int(r["delivered"] or r["published"]))
                key = (sname, cname)
                got.setdefault(key, []).append(value)
                server_us.setdefault(key, []).append((s1 - s0) / n * 1e6)
                client_us.setdefault(key, []).append((c1 - c0) / n * 1e6)
                print(
                    f"round {rnd + 1} server {sname} client {cname}: {value:,.0f} ({a.measure}), "
                    f"CPU per message: server {server_us[key][-1]:.2f} us, bench {client_us[key][-1]:.2f} us; "
                    f"load {load:.1f}",
                    flush=True,
                )
    print(
        f"\n| server | client | {a.measure} (median) | range | server CPU us/msg | bench CPU us/msg | runs |"
    )
    print("|---|---|---|---|---|---|---|")
    for (sname, cname), values in got.items():
        sv, cv = server_us[(sname, cname)], client_us[(sname, cname)]
        print(
            f"| {sname} | {cname} | {statistics.median(values):,.0f} | "
            f"{min(values):,.0f}-{max(values):,.0f} | {statistics.median(sv):.2f} ({min(sv):.2f}-{max(sv):.2f}) | "
            f"{statistics.median(cv):.2f} ({min(cv):.2f}-{max(cv):.2f}) | {len(values)} |"
        )
    print(f"\nload average (1 min) after the runs: {min(loads):.1f}-{max(loads):.1f}")


if __name__ == "__main__":
    main()
