"""``sprawlctl pipelines list|put|delete`` against a real node (in-process CLI)."""

from __future__ import annotations

import json
from typing import Any

from test_ctl import ctl, make_topic, ok, one_line_error

from harness import poll_until


def test_pipelines_put_list_delete(sprawl_node: Any) -> None:
    """Declare, change, list (table and JSON, with the lag), delete; a bad filter is a
    one-line error naming it."""
    url = sprawl_node.url
    make_topic(url, "clicks")
    make_topic(url, "clicks.eu")
    ok(ctl(url, "publish", "-t", "clicks", "-m", "-", input='{"region": "eu"}\n{"region": "us"}\n'))
    put = ("pipelines", "put", "eu", "--source", "clicks", "--target", "clicks.eu")
    out = ok(ctl(url, *put, "--filter", "payload.region == 'eu'"))
    assert out == "pipeline eu (clicks -> clicks.eu) declared\n"
    out = ok(ctl(url, *put, "--filter", "payload.region == 'eu'", "--acks", "leader"))
    assert out == "pipeline eu (clicks -> clicks.eu) changed\n"

    def caught_up() -> bool:
        listed = json.loads(ok(ctl(url, "pipelines", "list", "--json")))["pipelines"]
        return [(p["pipeline"], p["acks"], p["lag"]) for p in listed] == [("eu", "leader", 0)]

    assert poll_until(caught_up, 30.0) is not None
    table = ok(ctl(url, "pipelines", "list")).splitlines()
    head = ["NAME", "SOURCE", "TARGET", "FILTER", "FIELDS", "KEY", "ACKS", "LAG", "ON", "REJECT"]
    assert table[0].split() == head
    assert table[1].split()[:3] == ["eu", "clicks", "clicks.eu"] and table[1].split()[-2:] == ["0", "stall"]
    line = one_line_error(ctl(url, *put[:2], "bad", *put[3:], "--filter", "(("))
    assert "invalid_filter" in line or "filter" in line
    make_topic(url, "clicks.rejected")
    ok(ctl(url, *put, "--on-reject", "dead-letter", "--dead-letter-topic", "clicks.rejected"))
    table = ok(ctl(url, "pipelines", "list")).splitlines()
    assert table[1].split()[-3:] == ["dead-letter", "->", "clicks.rejected"]
    line = one_line_error(ctl(url, *put, "--on-reject", "dead-letter"))
    assert "dead_letter_topic" in line
    assert ok(ctl(url, "pipelines", "delete", "eu")) == "pipeline eu deleted\n"
    assert json.loads(ok(ctl(url, "pipelines", "list", "--json"))) == {"pipelines": []}
    assert "eu" in one_line_error(ctl(url, "pipelines", "delete", "eu"))
