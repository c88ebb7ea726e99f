"""The cost of one round of the fault diagnosis (:mod:`sprawl.cluster.diagnosis`), which
every node runs every 0.5 s, against the partitions a node leads.

    PYTHONPATH=tests python -m benchmarks.diagnosis [--led 1000,3334,10000] [--rounds 40]

Two cases per size: a healthy cluster (every follower caught up: the usual round) and
one with a follower stuck on every partition, its node lost (every partition is
under-replicated, lagging and held by a lost node: the most a round does).  Pure code,
no process: the figure is CPU per round, to be read against the 500 ms between rounds.
"""

from __future__ import annotations

import argparse
import time

from sprawl.cluster.diagnosis import Diagnosis, DiskObs, MemberObs, Observation, PartitionObs, RaftObs

NODES = ("a", "b", "c")


def round_ms(led: int, rounds: int, broken: bool) -> float:
    """Mean milliseconds of one ``diagnose`` over ``rounds`` rounds 500 ms apart."""
    d = Diagnosis()
    members = (
        MemberObs("b", "alive", "answers", protocol=(2, 3)),
        MemberObs("c", "dead" if broken else "alive", "refused" if broken else "answers", protocol=(2, 3)),
    )
    total = 0.0
    for k in range(rounds):
        hw = 100 + k
        parts = tuple(
            PartitionObs(
                f"t{i // 10}", i % 10, NODES, "a", NODES, 3, hw, (("b", hw), ("c", 5 if broken else hw))
            )
            for i in range(led)
        )
        obs = Observation("a", k * 500, members, RaftObs(NODES, "a"), parts, DiskObs(1, 2), (2, 3))
        t = time.perf_counter()
        d.diagnose(obs)
        total += time.perf_counter() - t
    return total / rounds * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--led", default="1000,3334,10000", help="partitions led by the node, comma-separated")
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    print(f"{'led partitions':>15} {'healthy ms/round':>17} {'broken ms/round':>16}")
    for n in (int(x) for x in args.led.split(",")):
        print(f"{n:>15} {round_ms(n, args.rounds, False):>17.2f} {round_ms(n, args.rounds, True):>16.2f}")


if __name__ == "__main__":
    main()
