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

    # Its member entry in the cluster view carries its predicted load.
    status, view = http_json(f"{url}/v1/cluster")
    me = next(m for m in view["members"] if m["id"] == load["node_id"])
    assert status == 200 and me["predicted_load"] > 0, me
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


def test_every_node_of_a_cluster_forecasts_every_leaders_partitions(tmp_path: Any) -> None:
    """Three nodes: partitions led by different nodes are forecast on every
    node, each under its leader as the gossip names it -- the rates come from
    the other nodes' gossip, not from this node's own counters."""
    from harness import NodeCluster

    cluster = NodeCluster(tmp_path, 3, *FAST)
    cluster.start()
    try:
        n0 = cluster.names[0]
        status, body = http_json(
            cluster.url(n0) + f"/v1/topics/{TOPIC}",
            "PUT",
            {"partitions": 6, "replication_factor": 1},
            timeout=15,
        )
        assert status in (200, 201), body

        def leaders_known() -> bool:
            return len({n for n in cluster.partition_leaders(TOPIC).values() if n}) >= 2

        assert poll_until(leaders_known, 30.0) is not None, cluster.partition_leaders(TOPIC)
        leaders = cluster.partition_leaders(TOPIC)
        ids = {nm: cluster.cluster_view(nm)["node_id"] for nm in cluster.names}
        seen: dict[str, Any] = {}

        def forecast_everywhere() -> bool:
            _publish(cluster.url(n0), 60)
            for nm in cluster.names:
                status, load = http_json(cluster.url(nm) + "/v1/cluster/load")
                seen[nm] = load
                if status != 200:
                    return False
                got = {
                    p["partition"]: p["leader"]
                    for p in load["partitions"]
                    if p["topic"] == TOPIC and p["predicted"] is not None
                }
                if got != {p: leader for p, leader in leaders.items()}:
                    return False
                predicted_nodes = {n["node"] for n in load["nodes"] if n["predicted"] is not None}
                if not set(leaders.values()) <= predicted_nodes:
                    return False
            return True

        assert poll_until(forecast_everywhere, 120.0, step=0.5) is not None, (leaders, ids, seen)
    finally:
        cluster.close()
