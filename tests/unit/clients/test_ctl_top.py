"""``sprawlctl top`` and ``sprawlctl cluster load`` against a real node whose
forecasts warm up in seconds (one-second steps, no seasons): the node and its
partitions with present and predicted load, as a table and as ``--json``; a
node without forecasting is a one-line ``forecast_off`` error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_ctl import ctl, ok, one_line_error

from harness import http_json, poll_until

pytestmark = pytest.mark.integration

FAST = ("--forecast-interval", "1s", "--forecast-step", "1s", "--forecast-seasons", "none")


def test_top_shows_present_and_predicted_load(sprawl_nodes: Any) -> None:
    url = sprawl_nodes(*FAST).url
    ok(ctl(url, "topics", "create", "hot", "--partitions", "2"))
    seen: dict[str, Any] = {}

    def predicted() -> bool:
        status, _ = http_json(
            f"{url}/v1/topics/hot/messages",
            "POST",
            {"messages": [{"payload": "x", "key": f"k{i}"} for i in range(30)]},
        )
        assert status == 200
        seen["json"] = info = json.loads(ok(ctl(url, "top", "--json")))
        parts = [p for p in info["partitions"] if p["topic"] == "hot" and p["predicted"] is not None]
        return len(parts) == 2 and any(n["predicted"] is not None for n in info["nodes"])

    assert poll_until(predicted, 90.0, step=0.5) is not None, seen.get("json")
    node_id = seen["json"]["node_id"]
    lines = ok(ctl(url, "top", "--topic", "hot")).splitlines()
    assert lines[1].split() == ["NODE", "LOAD", "PREDICTED", "INTERVAL"]
    mine = next(line.split() for line in lines if line.startswith(node_id))
    assert len(mine) == 4 and float(mine[2].replace(",", "")) > 0
    header = lines.index(next(line for line in lines if line.startswith("TOPIC")))
    assert lines[header].split() == ["TOPIC", "PARTITION", "LEADER", "LOAD", "PREDICTED", "INTERVAL"]
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert sorted(r[1] for r in rows) == ["0", "1"] and {r[2] for r in rows} == {node_id}
    # ``cluster load`` is the same command; --limit keeps the hottest.
    limited = ok(ctl(url, "cluster", "load", "-n", "1")).splitlines()
    assert "... and 1 more partitions (--limit)" in limited


def test_top_without_forecasting_is_one_line(sprawl_nodes: Any) -> None:
    url = sprawl_nodes("--forecast", "false").url
    line = one_line_error(ctl(url, "top"))
    assert "forecast" in line, line
