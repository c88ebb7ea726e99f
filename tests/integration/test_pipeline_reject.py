"""A pipeline meeting a record its target can never take (bigger than the target's
``max_message_bytes``), on a real ``twistd sprawl`` node: with ``on_reject`` ``stall``
(the default) it goes no further and says why -- ``GET /v1/pipelines``,
``sprawl_pipeline_stalled`` -- until the target's limit is raised; with ``skip`` it
leaves the record out and counts it; with ``dead-letter`` the source record goes to
the dead-letter topic with the reason.  Three pipelines over one source, side by side."""

from __future__ import annotations

from typing import Any

import pytest

from harness import NodeProcess, http_json, metric_value, poll_until

pytestmark = pytest.mark.integration

LIMIT = 1000
BOUND = 30.0  # seconds for the pipelines to get as far as they can (scaled by load)


def _put(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = http_json(url + path, "PUT", body, timeout=15)
    assert status in (200, 201), (path, status, answer)
    return answer  # type: ignore[no-any-return]


def _messages(url: str, topic: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in range(2):
        status, body = http_json(f"{url}/v1/topics/{topic}/messages?partition={p}&offset=0&limit=100")
        if status == 404:
            break
        assert status == 200, (topic, status, body)
        out += body["messages"]
    return out


def test_stall_skip_and_dead_letter_side_by_side(sprawl_node: NodeProcess) -> None:
    url = sprawl_node.url
    _put(url, "/v1/topics/orders", {"partitions": 1})
    for target in ("copy-stall", "copy-skip", "copy-dl"):
        _put(url, f"/v1/topics/{target}", {"partitions": 2, "max_message_bytes": LIMIT})
    _put(url, "/v1/topics/rejected", {"partitions": 1})
    msgs = [{"id": f"m{i}", "key": f"k{i}", "payload": "x" * (3 * LIMIT if i == 2 else 10)} for i in range(6)]
    status, body = http_json(url + "/v1/topics/orders/messages", "POST", {"messages": msgs}, timeout=15)
    assert status == 200, body
    _put(url, "/v1/pipelines/stall", {"source": "orders", "target": "copy-stall"})
    _put(url, "/v1/pipelines/skip", {"source": "orders", "target": "copy-skip", "on_reject": "skip"})
    dl = {
        "source": "orders",
        "target": "copy-dl",
        "on_reject": "dead-letter",
        "dead_letter_topic": "rejected",
    }
    assert _put(url, "/v1/pipelines/dl", dl)["on_reject"] == "dead-letter"

    def settled() -> bool:
        stall = http_json(url + "/v1/pipelines/stall")[1]
        return (
            len(_messages(url, "copy-skip")) == 5
            and len(_messages(url, "copy-dl")) == 5
            and len(_messages(url, "rejected")) == 1
            and bool(stall.get("stalled"))
        )

    assert poll_until(settled, BOUND) is not None, http_json(url + "/v1/pipelines")[1]
    stall = http_json(url + "/v1/pipelines/stall")[1]
    assert "source partition 0 offset 2" in stall["stalled"], stall
    assert f"max_message_bytes {LIMIT}" in stall["stalled"] and stall["on_reject"] == "stall"
    assert _messages(url, "copy-stall") == [] and stall["lag"] == 6
    assert sorted(m["key"] for m in _messages(url, "copy-skip")) == ["k0", "k1", "k3", "k4", "k5"]
    (letter,) = _messages(url, "rejected")
    assert letter["key"] == "k2" and letter["payload"] == "x" * 3 * LIMIT
    assert letter["headers"]["sprawl-source-offset"] == "2" and letter["headers"]["sprawl-pipeline"] == "dl"
    assert f"max_message_bytes {LIMIT}" in letter["headers"]["sprawl-reject-reason"]
    assert metric_value(url, "sprawl_pipeline_stalled", pipeline="stall") == 1
    assert metric_value(url, "sprawl_pipeline_stalled", pipeline="skip") == 0
    assert metric_value(url, "sprawl_pipeline_skipped_total", pipeline="skip") == 1
    assert metric_value(url, "sprawl_pipeline_dead_lettered_total", pipeline="dl") == 1

    # the stalled pipeline goes on once its target can take the record
    _put(url, "/v1/topics/copy-stall", {"max_message_bytes": 10 * LIMIT})

    def unstalled() -> bool:
        return (
            len(_messages(url, "copy-stall")) == 6
            and http_json(url + "/v1/pipelines/stall")[1]["stalled"] is None
        )

    assert poll_until(unstalled, BOUND) is not None, http_json(url + "/v1/pipelines/stall")[1]
    assert metric_value(url, "sprawl_pipeline_stalled", pipeline="stall") == 0
