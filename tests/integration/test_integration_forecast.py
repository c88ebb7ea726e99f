"""Traffic forecasts on a real node: once publish rates flow (through the
node's own gossiped load figures and its counters), ``GET /v1/cluster/load``,
the topic's ``predicted_*`` fields and ``/metrics`` show a forecast; with
``--forecast false`` there is none.

The model runs on one-second steps without seasons (``--forecast-step 1s
--forecast-seasons none``) so it warms up in seconds; gossip samples the
load figures every 5 s as always.  Every wait is a bounded poll
(``harness.poll_until``) that publishes a small batch each round, so rates
keep flowing until the condition holds.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness import NodeProcess, http_json, metric_value, poll_until

pytestmark = pytest.mark.integration

FAST = (
    "--forecast-interval",
    "1s",
    "--forecast-step",
    "1s",
    "--forecast-seasons",
    "none",
    "--forecast-horizon",
    "10s",
)
TOPIC = "forecast.orders"


def _publish(url: str, n: int = 20) -> None:
    status, body = http_json(
        f"{url}/v1/topics/{TOPIC}/messages",
        "POST",
        {"messages": [{"payload": f"m{i}", "key": f"k{i}"} for i in range(n)]},
    )
    assert status == 200, body


def test_a_node_forecasts_its_partitions_once_rates_flow(sprawl_nodes: Any) -> None:
    node: NodeProcess = sprawl_nodes(*FAST)
    url = node.url
    status, body = http_json(f"{url}/v1/topics/{TOPIC}", "PUT", {"partitions": 2})
    assert status in (200, 201), body
    seen: dict[str, Any] = {}

    def forecast_shown() -> bool:
        _publish(url)
        status, load = http_json(f"{url}/v1/cluster/load")
        assert status == 200, load
        seen["load"] = load
        parts = [p for p in load["partitions"] if p["topic"] == TOPIC and p["predicted"] is not None]
        nodes = [n for n in load["nodes"] if n["predicted"] is not None]
        return len(parts) == 2 and bool(nodes)

    assert poll_until(forecast_shown, 90.0, step=0.5) is not None, seen.get("load")
    load = seen["load"]
    assert load["node_id"] and load["horizon_s"] == 10.0 and load["step_s"] == 1.0
    mine = next(n for n in load["nodes"] if n["node"] == load["node_id"])
    assert mine["predicted"] > 0 and mine["predicted_low"] <= mine["predicted"] <= mine["predicted_high"]
    for p in load["partitions"]:
        assert p["leader"] == load["node_id"] and p["load"] > 0

    # The node's own metrics show the forecast and the series behind it.
    assert metric_value(url, "sprawl_node_predicted_load_per_second", node=load["node_id"]) > 0
    assert metric_value(url, "sprawl_forecast_series") >= 4  # 2 partitions, the node, the topic

    # The topic's description carries the predicted fields.
    def topic_predicted() -> bool:
        _publish(url)
        status, desc = http_json(f"{url}/v1/topics/{TOPIC}")
        seen["desc"] = desc
        return status == 200 and desc.get("predicted_publish_rate") is not None

    assert poll_until(topic_predicted, 60.0, step=0.5) is not None, seen.get("desc")
    desc = seen["desc"]
    assert desc["predicted_horizon_s"] == 10.0
    assert all(d["predicted_load"] is not None for d in desc["partition_details"])


def test_forecasting_off_answers_forecast_off(sprawl_nodes: Any) -> None:
    node: NodeProcess = sprawl_nodes("--forecast", "false")
    _publish(node.url)
    status, body = http_json(f"{node.url}/v1/cluster/load")
    assert status == 409 and body["error"]["code"] == "forecast_off", body
    status, desc = http_json(f"{node.url}/v1/topics/{TOPIC}")
    assert status == 200 and "predicted_publish_rate" not in desc
    assert metric_value(node.url, "sprawl_forecast_series") == 0
