"""A real node with ``--earned-trust`` (issue 18): it starts, its forecasts
warm up and ``sprawlctl top`` and the dashboard's feed show them as without
the option (the option changes only what the balancer is given).

The model runs on five-second steps with the hourly season (earned trust
needs a season: its distrust and profiles last one), so it warms up in well
under a minute; every wait is a bounded poll that publishes a small batch
each round, so rates keep flowing until the condition holds."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from test_ctl import ctl, ok

from harness import http_json, poll_until

pytestmark = pytest.mark.integration

EARNED = (
    "--earned-trust",
    "true",
    "--forecast-interval",
    "1s",
    "--forecast-step",
    "5s",
    "--forecast-seasons",
    "hourly",
)
TOPIC = "earned.orders"


def _dashboard_snapshot(url: str) -> Any:
    """The first snapshot of the node's dashboard feed (``GET /v1/dashboard/stream``)."""
    with urllib.request.urlopen(url + "/v1/dashboard/stream", timeout=10) as r:
        for _ in range(100):
            line = r.readline()
            if line.startswith(b"data:"):
                return json.loads(line[5:])
    raise AssertionError("no snapshot on the dashboard feed")


def test_top_and_the_dashboard_work_with_earned_trust(sprawl_nodes: Any) -> None:
    url = sprawl_nodes(*EARNED).url
    ok(ctl(url, "topics", "create", TOPIC, "--partitions", "2"))
    seen: dict[str, Any] = {}

    def predicted() -> bool:
        status, _ = http_json(
            f"{url}/v1/topics/{TOPIC}/messages",
            "POST",
            {"messages": [{"payload": "x", "key": f"k{i}"} for i in range(30)]},
        )
        assert status == 200
        seen["top"] = info = json.loads(ok(ctl(url, "top", "--json")))
        parts = [p for p in info["partitions"] if p["topic"] == TOPIC and p["predicted"] is not None]
        if len(parts) != 2 or not any(n["predicted"] is not None for n in info["nodes"]):
            return False
        seen["dash"] = snap = _dashboard_snapshot(url)
        mine = [t for t in snap["topics"] if t["name"] == TOPIC]
        return snap["forecast"] is True and len(mine) == 1 and mine[0]["forecast"] is not None

    assert poll_until(predicted, 120.0, step=0.5) is not None, (seen.get("top"), seen.get("dash"))
    assert seen["top"]["predictive"] is True and seen["top"]["step_s"] == 5.0
    lines = ok(ctl(url, "top", "--topic", TOPIC)).splitlines()
    assert lines[1].split() == ["NODE", "LOAD", "PREDICTED", "INTERVAL"]
