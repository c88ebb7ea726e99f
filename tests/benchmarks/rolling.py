"""Rolling restart under load (issue 24): the slowest acknowledged publish with
and without restarts, and the errors.

``PYTHONPATH=tests python -m benchmarks.rolling [--rounds 3] [--rate 50]``
starts 3 ``twistd sprawl`` nodes on 127.0.0.1, creates a topic of 3
partitions with replication factor 3, and publishes batches of 5 messages
with ``acks=quorum`` at ``--rate`` requests a second, round robin over the
nodes a load balancer would choose (:class:`harness.rolling.PublishLoad`).
First a baseline of ``--baseline`` seconds with no restart, then ``--rounds``
rounds of a rolling restart: each node in turn is withdrawn from the load
(its in-flight requests answered), stopped with SIGTERM, started again and
waited on until ``/readyz`` and three voters.  Prints both figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from harness.cluster import NodeCluster
from harness.nodes import http_json
from harness.rolling import LoadReport, PublishLoad, restart_node
from harness.waits import poll_until


def run(
    rounds: int,
    rate: float,
    baseline: float,
    nodes: int = 3,
    keep: str | None = None,
    json_logs: bool = False,
) -> tuple[LoadReport, LoadReport]:
    """The baseline's report and the rolling restart's (``keep``: a directory
    for the nodes' data and logs, kept afterwards; ``json_logs``: the nodes
    log JSON lines, whose ``log_time`` has sub-second precision)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = keep or tmp
        cluster = NodeCluster(d, nodes, *(("--log-format", "json") if json_logs else ()))
        try:
            cluster.start()
            first = cluster.names[0]
            status, body = http_json(
                cluster.url(first) + "/v1/topics/roll",
                "PUT",
                {"partitions": 3, "replication_factor": nodes},
            )
            assert status in (200, 201), body
            poll_until(lambda: not cluster.replication_problems(["roll"]), 60)
            load = PublishLoad(cluster, "roll", rate=rate).start()
            end = time.monotonic() + baseline
            poll_until(lambda: time.monotonic() >= end, baseline + 1)
            base = load.stop()
            print(f"baseline ({baseline:.0f} s, no restart): {base.summary()}", flush=True)
            load = PublishLoad(cluster, "roll", rate=rate).start()
            for r in range(rounds):
                for name in cluster.names:

                    def say(what: str, r: int = r) -> None:
                        print(f"round {r + 1} (+{time.monotonic() - load._t0:.2f} s): {what}", flush=True)

                    restart_node(cluster, load, name, on_event=say)
            rolled = load.stop()
            print(f"rolling restart ({rounds} rounds of {nodes} nodes): {rolled.summary()}", flush=True)
            for a in rolled.errors[:10]:
                print(f"  error from {a.node}: {a.status} {a.error}")
            slow = sorted(rolled.ok, key=lambda a: -a.seconds)[:5]
            t0 = rolled.answers[0].sent if rolled.answers else 0.0
            for a in slow:
                at = time.strftime("%H:%M:%S", time.localtime(time.time() - time.monotonic() + a.sent))
                print(
                    f"  slow: {a.seconds * 1000:.0f} ms at +{a.sent - t0:.2f} s ({at}, {time.time() - time.monotonic() + a.sent:.3f}) "
                    f"via {a.node} to partition {a.partition}"
                )
            return base, rolled
        finally:
            cluster.close()


def main() -> None:
    """Parse the options, run, print."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--baseline", type=float, default=20.0)
    ap.add_argument("--keep", help="a directory to keep the nodes' data and logs in")
    ap.add_argument("--json-logs", action="store_true", help="the nodes log JSON lines (precise times)")
    a = ap.parse_args()
    base, rolled = run(a.rounds, a.rate, a.baseline, keep=a.keep, json_logs=a.json_logs)
    added = rolled.slowest() - base.slowest()
    print(f"added to the slowest publish: {added * 1000:.0f} ms; errors: {len(rolled.errors)}")


if __name__ == "__main__":
    main()
