"""Integration: the example programs of ``docs/examples/`` (producer, consumer-group worker,
replay tool) run as their own processes against a real node and do what their docstrings
say.  Each run is bounded by a timeout; the node is stopped by the fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import NodeProcess
from harness.nodes import node_environment

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
BOUND = 60.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node for the module."""
    with NodeProcess(Path(tmp_path_factory.mktemp("examples")) / "n") as n:
        yield n


def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one example with this interpreter and the source tree on its path."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env=node_environment(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_producer_worker_and_replay(node: NodeProcess) -> None:
    """The producer publishes 12 orders (a rerun is deduplicated by id), the worker handles
    each once, and the replay tool prints them all, then only what came after its resume point."""
    out = run("producer.py", "--url", node.url, "--topic", "ex-orders", "--count", "12").stdout
    assert len(out.splitlines()) == 12 and "run1-11 -> partition" in out
    run("producer.py", "--url", node.url, "--topic", "ex-orders", "--count", "12")  # same ids
    worked = run("worker.py", "--url", node.url, "--topic", "ex-orders", "--group", "g", "--idle", "2")
    lines = worked.stdout.splitlines()
    assert sorted(lines) == sorted(f"order {i} of customer-{i % 3}: total {10 * i}" for i in range(12))
    replay = run("replay.py", "--url", node.url, "--topic", "ex-orders", "--idle", "2")
    rows = [json.loads(x) for x in replay.stdout.splitlines()]
    assert sorted(json.loads(r["payload"])["order"] for r in rows) == list(range(12))
    resume = replay.stderr.split("--resume", 1)[1].strip()
    run("producer.py", "--url", node.url, "--topic", "ex-orders", "--count", "2", "--run", "run2")
    more = run("replay.py", "--url", node.url, "--topic", "ex-orders", "--resume", resume, "--idle", "2")
    assert sorted(json.loads(json.loads(x)["payload"])["order"] for x in more.stdout.splitlines()) == [0, 1]
