"""Mixed versions during an upgrade (issue 24, item 3), on real ``twistd sprawl``
processes of two builds of the project: this tree, and a copy of it with the peer
protocol constant bumped (the next release: protocol N+1, still talking to N, with one
feature more).

* Nodes of both builds form one cluster (the newer founding it, an older one joining:
  each way round), elect, replicate and serve; the next release's extra feature is held
  back (``features.pending`` names the older node) until that node is upgraded too,
  then it switches on by itself.
* A node two releases too new, and one too old, are refused: a clear log line on both
  sides of the handshake, ``peer_version_incompatible`` named by diagnose, and neither
  becomes a voter nor gets a replica.

The builds are copies of the ``sprawl`` package this test imported (the source tree in
the dev venv, the installed wheel under tox) and its twistd plugin, with
``sprawl/peer/frames.py``'s ``PROTOCOL`` / ``MIN_PROTOCOL`` (and ``FEATURES``)
rewritten; each node runs the build on its ``PYTHONPATH``."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sprawl
from harness import NodeCluster, NodeProcess, http_json, make_key_file, poll_until
from sprawl.peer.frames import MIN_PROTOCOL, PROTOCOL

pytestmark = [pytest.mark.integration]

TOPIC = "upgrade"
NEXT_FEATURE = "next-release-feature"
FORM_BOUND = 60.0
BOUND = 20.0  # the gate, log lines, gossip: seconds (stretched by load)


def _plugin_file() -> Path:
    """The twistd plugin registering ``sprawl`` next to the package (tree or wheel)."""
    roots = [Path(sprawl.__file__).resolve().parent.parent, *(Path(p) for p in sys.path if p)]
    for root in roots:
        f = root / "twisted" / "plugins" / "sprawl_plugin.py"
        if f.is_file():
            return f
    raise AssertionError("the sprawl twistd plugin is not found next to the package or on sys.path")


def build(base: Path, name: str, protocol: int, minimum: int, feature: str | None = None) -> str:
    """A copy of this build with another peer protocol range (and one feature more);
    the directory to put on a node's ``PYTHONPATH``."""
    root = base / name
    shutil.copytree(
        Path(sprawl.__file__).resolve().parent, root / "sprawl", ignore=shutil.ignore_patterns("__pycache__")
    )
    plugins = root / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    shutil.copy(_plugin_file(), plugins / "sprawl_plugin.py")
    frames = root / "sprawl" / "peer" / "frames.py"
    text = frames.read_text()
    text, n1 = re.subn(r"^PROTOCOL = \d+$", f"PROTOCOL = {protocol}", text, flags=re.M)
    text, n2 = re.subn(r"^MIN_PROTOCOL = \d+$", f"MIN_PROTOCOL = {minimum}", text, flags=re.M)
    n3 = 1
    if feature:
        text, n3 = re.subn(
            r"^(FEATURES: frozenset\[str\] = frozenset\(\s*\{)", rf'\1"{feature}", ', text, flags=re.M
        )
    assert (n1, n2, n3) == (1, 1, 1), "frames.py no longer has the constants this test rewrites"
    frames.write_text(text)
    return str(root)


@pytest.fixture
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("builds")
    return {
        "next": build(base, "next", PROTOCOL + 1, PROTOCOL, NEXT_FEATURE),
        "too_new": build(base, "too-new", PROTOCOL + 3, PROTOCOL + 2),
        "too_old": build(base, "too-old", MIN_PROTOCOL - 1, MIN_PROTOCOL - 1),
    }


@pytest.fixture
def closing() -> Iterator[list[NodeProcess]]:
    """Nodes to kill at the end, whatever happens."""
    made: list[NodeProcess] = []
    try:
        yield made
    finally:
        for m in made:
            m.kill()


def features(c: NodeCluster, name: str) -> dict[str, Any]:
    return dict(c.cluster_view(name).get("features") or {})


def keyed(tmp_path: Path, cluster_factory: Any) -> NodeCluster:
    """Three nodes n0..n2 sharing a cluster key, not started."""
    key = make_key_file(tmp_path / "cluster.key")
    return cluster_factory(3, "n", "--cluster-key-file", key, start=False)  # type: ignore[no-any-return]


def test_two_builds_form_one_cluster_and_gate_the_new_feature(
    tmp_path: Path, builds: dict[str, str], cluster_factory: Any
) -> None:
    c = keyed(tmp_path, cluster_factory)
    # the next release founds the cluster, this build's node joins it, then another next one
    for name in ("n0", "n2"):
        c.nodes[name].env["PYTHONPATH"] = builds["next"]
    c.start(FORM_BOUND)
    assert features(c, "n0")["protocol"] == [PROTOCOL, PROTOCOL + 1]
    assert features(c, "n1")["protocol"] == [MIN_PROTOCOL, PROTOCOL]

    # the next release's feature waits for n1; what both builds have is on everywhere
    def held_back() -> bool:
        f = features(c, "n0")
        return f.get("pending", {}).get(NEXT_FEATURE) == ["n1"] and NEXT_FEATURE not in f.get("enabled", [])

    assert poll_until(held_back, BOUND) is not None, features(c, "n0")
    assert set(features(c, "n1")["enabled"]) == set(features(c, "n1")["advertised"])

    # it serves: a replicated topic created through the older node, written through a
    # newer one, read back from the older one
    status, body = http_json(
        c.url("n1") + f"/v1/topics/{TOPIC}", "PUT", {"partitions": 2, "replication_factor": 3}, timeout=15
    )
    assert status in (200, 201), body
    msgs = [{"payload": f"m{i}", "key": f"k{i}"} for i in range(20)]
    status, body = http_json(
        c.url("n0") + f"/v1/topics/{TOPIC}/messages", "POST", {"messages": msgs}, timeout=15
    )
    assert status == 200, body
    assert poll_until(lambda: _count(c, "n1") == 20, BOUND) is not None, _count(c, "n1")
    report = http_json(c.url("n0") + "/v1/cluster/faults")[1]
    assert not [f for f in report["faults"] if f["code"] == "peer_version_incompatible"], report

    # upgrade n1: the feature switches on by itself once every node has it
    c.kill("n1")
    c.nodes["n1"].env["PYTHONPATH"] = builds["next"]
    c.restart("n1")
    assert poll_until(c.formed, FORM_BOUND) is not None, c.raft_views()
    assert features(c, "n1")["protocol"] == [PROTOCOL, PROTOCOL + 1]

    def switched_on() -> bool:
        return all(NEXT_FEATURE in features(c, n).get("enabled", []) for n in c.names)

    assert poll_until(switched_on, BOUND) is not None, {n: features(c, n) for n in c.names}
    assert poll_until(lambda: _count(c, "n1") == 20, BOUND) is not None  # its data kept


def _count(c: NodeCluster, name: str) -> int:
    total = 0
    for p in (0, 1):
        status, body = http_json(
            c.url(name) + f"/v1/topics/{TOPIC}/messages?partition={p}&offset=0&limit=100"
        )
        if status != 200 or not isinstance(body, dict):
            return -1
        total += sum(1 for m in body.get("messages", []) if str(m.get("payload", "")).startswith("m"))
    return total


def test_a_node_too_new_or_too_old_is_refused_with_a_clear_line(
    tmp_path: Path, builds: dict[str, str], cluster_factory: Any, closing: list[Any]
) -> None:
    c = keyed(tmp_path, cluster_factory)
    c.start(FORM_BOUND)
    key = str(tmp_path / "cluster.key")
    seed = f"127.0.0.1:{c.nodes['n0'].peer_port}"
    strangers = {}
    for name in ("too_new", "too_old"):
        node = NodeProcess(
            tmp_path / name,
            "--node-id",
            name.replace("_", "-"),
            "--seeds",
            seed,
            "--cluster-key-file",
            key,
            env={"PYTHONPATH": builds[name]},
        )
        closing.append(node)
        strangers[name] = node.start()

    def logged() -> bool:
        ours = c.nodes["n0"].log_text() + c.nodes["n1"].log_text()
        return (
            "peer too-new speaks peer protocol" in ours
            and "too new for this node" in ours
            and "peer too-old speaks peer protocol" in ours
            and "too old for this node" in ours
            and "too old for this node" in strangers["too_new"].log_text()  # it refuses ours in turn
            and "too new for this node" in strangers["too_old"].log_text()
        )

    assert poll_until(logged, BOUND) is not None, "\n".join(
        line for n in c.names for line in c.nodes[n].log_text().splitlines() if "peer" in line
    )[-3000:]

    def named() -> bool:
        faults = http_json(c.url("n0") + "/v1/cluster/faults")[1] or {}
        got = {f["node"] for f in faults.get("faults", []) if f["code"] == "peer_version_incompatible"}
        return got == {"too-new", "too-old"}

    assert poll_until(named, BOUND) is not None, http_json(c.url("n0") + "/v1/cluster/faults")
    # neither becomes a voter nor gets a replica: a topic created now stays on n0, n1 and n2
    status, body = http_json(
        c.url("n0") + f"/v1/topics/{TOPIC}", "PUT", {"partitions": 4, "replication_factor": 3}, timeout=15
    )
    assert status in (200, 201), body
    for name in c.names:
        assert c.cluster_view(name)["raft"]["voters"] == ["n0", "n1", "n2"]
        for p in c.placement(name).get(TOPIC, {}).values():
            assert set(p["replicas"]) <= {"n0", "n1", "n2"}, p
