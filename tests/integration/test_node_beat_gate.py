"""The cluster feature gate reaches the replication service of a real node: on
three real ``twistd sprawl`` nodes holding 60 single-partition topics of
replication factor 3, once ``node-beat`` is on everywhere the idle leaders go
quiet -- each node beats the controller instead of sending a heartbeat per
partition per follower per tick.  Measured on ``sprawl_peer_frames_sent_total``:
about 20 frames/s per node quiet, 800-1,000 with the gate not wired (the
node's ``DataPlane(feature_on=...)``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from harness import NodeCluster, http_json, metric_value, poll_until

pytestmark = [pytest.mark.integration]

TOPICS = 60
#: Frames a second per node below which the leaders count as quiet: the quiet
#: cluster sends ~20, the per-partition ticks ~1,000 (60 partitions x 2
#: followers x 10 ticks a second, and their answers).  A loaded machine ticks
#: less often, which only lowers both.
QUIET_FRAMES_PER_S = 200.0
BOUND = 60.0


def test_idle_leaders_go_quiet_once_every_node_has_the_node_beat(cluster_factory: Any) -> None:
    c: NodeCluster = cluster_factory(3)
    for i in range(TOPICS):
        status, body = http_json(
            c.url("n0") + f"/v1/topics/g{i:03d}",
            "PUT",
            {"partitions": 1, "replication_factor": 3},
            timeout=30,
        )
        assert status in (200, 201), body

    def gate_on() -> bool:
        return all(
            "node-beat" in (c.cluster_view(n).get("features") or {}).get("enabled", []) for n in c.names
        )

    assert poll_until(gate_on, BOUND) is not None, {n: c.cluster_view(n).get("features") for n in c.names}
    # Each poll (``poll_until`` waits a second between them) compares every node's frame
    # counter with the last poll's: quiet once every node sent few frames per second since.
    last: dict[str, tuple[float, float]] = {}
    rates: dict[str, float] = {}

    def quiet() -> bool:
        for n in c.names:
            now = (time.monotonic(), metric_value(c.url(n), "sprawl_peer_frames_sent_total"))
            if n in last:
                rates[n] = (now[1] - last[n][1]) / (now[0] - last[n][0])
            last[n] = now
        return len(rates) == len(c.names) and all(r < QUIET_FRAMES_PER_S for r in rates.values())

    assert poll_until(quiet, BOUND, step=1.0) is not None, rates
