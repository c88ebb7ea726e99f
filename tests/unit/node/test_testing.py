"""The test harness itself (``tests/harness/``): what it promises the rest of the suite."""

from __future__ import annotations

from typing import Any

import pytest

from harness import http_json, in_ci, load_factor, node_environment, scaled


def test_a_test_node_inherits_no_node_configuration(
    monkeypatch: pytest.MonkeyPatch, sprawl_nodes: Any
) -> None:
    """Stray SPRAWL_*, MINIO_* and AWS_* variables of the shell never reach a
    node the tests start (here they would refuse topic creation, turn on an S3
    tier that cannot work, and point boto at nowhere); what the test gives
    with ``env`` does."""
    monkeypatch.setenv("SPRAWL_NO_AUTO_CREATE", "1")
    monkeypatch.setenv("MINIO_ENDPOINT", "127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    env = node_environment({"SPRAWL_MAX_MESSAGE_BYTES": "2KB"})
    assert not {k for k in env if k in ("SPRAWL_NO_AUTO_CREATE", "MINIO_ENDPOINT", "AWS_ENDPOINT_URL")}
    assert env["SPRAWL_MAX_MESSAGE_BYTES"] == "2KB" and env["PYTHONPATH"]

    sprawl_nodes.env["SPRAWL_MAX_MESSAGE_BYTES"] = "2KB"
    node = sprawl_nodes()
    status, body = http_json(node.url + "/v1/topics/auto/messages", "POST", {"messages": [{"payload": "x"}]})
    assert status == 200, body  # auto-create on: SPRAWL_NO_AUTO_CREATE did not reach it
    status, body = http_json(
        node.url + "/v1/topics/auto/messages", "POST", {"messages": [{"payload": "x" * 3000}]}
    )
    assert status == 413, body  # the test's own variable did
    status, body = http_json(node.url + "/v1/topics/auto")
    assert status == 200 and not any(p["tiers"]["s3"]["enabled"] for p in body["partition_details"]), (
        body
    )  # MINIO_ENDPOINT did not turn the S3 tier on


@pytest.mark.parametrize(
    ("value", "ci"),
    [
        ("", False),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("true", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_ci_is_any_value_but_an_empty_or_false_one(value: str, ci: bool) -> None:
    """The one rule of require_tools: CI is on for any value but empty, 0, false, no, off."""
    assert in_ci({"CI": value}) is ci
    assert in_ci({}) is False


def test_bounds_stretch_with_the_load_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """scaled() is the bound itself at least, and at most MAX_LOAD_FACTOR (4) times
    it times SPRAWL_TEST_TIME_SCALE."""
    assert 1.0 <= load_factor() <= 4.0
    assert 10.0 <= scaled(10.0) <= 40.0
    monkeypatch.setenv("SPRAWL_TEST_TIME_SCALE", "3")
    assert 3.0 <= load_factor() <= 12.0


def test_the_shared_fakes_keep_their_seams_contracts() -> None:
    """sprawl.testing's fakes fail the way the real seams do: a request refuses a write after
    its finish and a finish with its producer still registered; the fake RPC records every
    call and fails an unreachable peer with ``peer_unreachable`` (and ``start`` gives such
    a call the id 0, as ``PeerRPC.start`` does); the fake broker's watchers
    are woken until they stop."""
    from sprawl.errors import Unavailable
    from sprawl.testing import FakeBroker, FakeRequest, FakeRPC

    req = FakeRequest()
    req.setHeader(b"Content-Type", b"text/event-stream")
    req.registerProducer(object(), True)
    req.write(b'id: 0:1\nevent: message\ndata: {"payload": "a", "offset": 1}\n\n')
    with pytest.raises(AssertionError):
        req.finish()
    req.unregisterProducer()
    req.finish()
    with pytest.raises(AssertionError):
        req.write(b"late")
    assert req.headers == {b"content-type": b"text/event-stream"} and req.finished == 1
    assert req.payloads() == ["a"] and req.offsets() == [1]

    rpc = FakeRPC(lambda peer, method, body: {"peer": peer, **body})
    rpc.down.add("dead")
    got: list[Any] = []
    rpc.call("b", "fetch", {"x": 1}).addCallback(got.append)
    rpc.call("dead", "fetch", {}).addErrback(lambda f: got.append(f.value))
    assert got[0] == {"peer": "b", "x": 1}
    assert isinstance(got[1], Unavailable) and got[1].code == "peer_unreachable"
    assert rpc.peers == ["b", "dead"]
    # (start: the call with its id for drop -- 0 when it failed at once, as PeerRPC's)
    d, rid = rpc.start("b", "fetch", {"x": 2})
    d.addCallback(got.append)
    d_dead, rid_dead = rpc.start("dead", "fetch", {})
    d_dead.addErrback(lambda f: got.append(f.value.code))
    assert rid == 3 and rid_dead == 0 and got[2:] == [{"peer": "b", "x": 2}, "peer_unreachable"]
    rpc.drop(rid)
    assert rpc.dropped == [3]

    broker = FakeBroker("t", partitions=2)
    woken: list[int] = []
    stop = broker.watch("t", 1, lambda: woken.append(1))
    broker.notify("t", 1)
    broker.notify("t", 0)
    stop()
    broker.notify("t", 1)
    assert woken == [1] and [lg.partition for lg in broker.topic.logs] == [0, 1]
