"""Integration: ``benchmarks.latency --publish ws`` (issue 16, lat40) against a real ``twistd
sprawl`` node -- every message published as a WebSocket msgpack frame is answered and
reaches the SSE subscriber, and both latencies are printed; ``latency_profile``'s closed loop
on the same wire.  One node for the module, stopped by the fixture; every run bounded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.latency_profile import closed_loop
from harness import NodeProcess
from harness.nodes import node_pythonpath

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node for the module."""
    with NodeProcess(Path(tmp_path_factory.mktemp("latws")) / "n") as n:
        yield n


def test_the_latency_tool_publishes_on_the_websocket_and_measures(node: NodeProcess) -> None:
    """200 messages at 200 msg/s over two publish sockets: all 200 answered and delivered on
    the SSE stream, the wire named, and both the e2e and the publish's own latency printed."""
    done = subprocess.run(
        [sys.executable, str(HERE / "latency.py"), "--url", node.url, "--rate", "200", "--seconds", "1"]
        + ["--connections", "2", "--publish", "ws", "--topic", "latws"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": node_pythonpath()},  # (the sprawl the node runs)
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "publish wire ws" in out and "200/200 delivered, 200/200 answered" in out, out
    for line in ("publish -> SSE delivery", "publish round trip"):
        m = re.search(line + r": p50 ([\d.]+) ms  p99 ([\d.]+) ms", out)
        assert m is not None and 0 < float(m.group(1)) <= float(m.group(2)), out


def test_the_closed_loop_on_the_websocket_is_answered_and_delivered(node: NodeProcess) -> None:
    """``latency_profile``'s closed loop, ``publish="ws"``: 50 frames, each answered before the
    next (by ref), all 50 delivered on the stream."""
    p50, p99, line = closed_loop(node.url, 50, publish="ws")
    assert "closed loop (ws): 50 publishes, 50 delivered" in line and 0 < p50 <= p99, line
