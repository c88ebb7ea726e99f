"""Pure cores never import Twisted (the direction of imports in the design)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "sprawl.config",
    "sprawl.errors",
    "sprawl.topics",
    "sprawl.log.partition",
    "sprawl.log.segments",
    "sprawl.log.dedup",
    "sprawl.log.record",
    "sprawl.delivery.groups",
    "sprawl.storage.keys",
    "sprawl.storage.segment_format",
    "sprawl.log.manifest",
    "sprawl.log.spill",
    "sprawl.sim",
    "sprawl.gossip",
    "sprawl.gossip.messages",
    "sprawl.gossip.wire",
    "sprawl.gossip.broadcast",
    "sprawl.gossip.suspicion",
    "sprawl.gossip.membership",
    "sprawl.gossip.load",
    "sprawl.raft",
    "sprawl.raft.messages",
    "sprawl.raft.storage",
    "sprawl.raft.log",
    "sprawl.raft.quorum",
    "sprawl.raft.progress",
    "sprawl.raft.node",
    "sprawl.raft.codec",
    "sprawl.peer",
    "sprawl.peer.frames",
    "sprawl.cluster",
    "sprawl.cluster.metadata",
    "sprawl.cluster.placement",
    "sprawl.cluster.voters",
    "sprawl.cluster.balance",
    "sprawl.cluster.drain",
    "sprawl.cluster.diagnosis",
    "sprawl.cluster.features",
    "sprawl.replication",
    "sprawl.replication.epochs",
    "sprawl.replication.messages",
    "sprawl.replication.replica",
    "sprawl.replication.failover",
    "sprawl.replication.replica_state",
    "sprawl.replication.envelope",
    "sprawl.replication.liveness",
    "sprawl.auth",
    "sprawl.forecast",
    "sprawl.forecast.holtwinters",
    "sprawl.forecast.anomaly",
    "sprawl.forecast.traffic",
    "sprawl.forecast.traces",
    "sprawl.forecast.replay",
    "sprawl.operator",
    "sprawl.operator.reconcile",
    "sprawl.operator.objects",
]

_PROBE = """
import importlib, sys
bad = []
for name in sys.argv[1:]:
    importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted."))
    if leaked:
        bad.append(name + ": " + leaked[0])
        break
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


@pytest.mark.parametrize("module", PURE)
def test_pure_core_does_not_import_twisted(module: str) -> None:
    """Importing the module in a fresh interpreter leaves ``twisted`` out of sys.modules."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"{module} pulled in Twisted: {proc.stdout}{proc.stderr}"


def test_probe_detects_twisted() -> None:
    """The probe itself fails for a module that does import Twisted."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, "twisted.internet.task"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and "twisted" in proc.stdout
