"""The gossip core and the simulator are pure: importing them (in a fresh
interpreter) leaves Twisted out of ``sys.modules``."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "sprawl.gossip",
    "sprawl.gossip.messages",
    "sprawl.gossip.wire",
    "sprawl.gossip.broadcast",
    "sprawl.gossip.suspicion",
    "sprawl.gossip.membership",
    "sprawl.sim",
]

_PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted."))
print(leaked[0] if leaked else "")
sys.exit(1 if leaked else 0)
"""


def _probe(*modules: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, timeout=60, check=False
    )


def test_gossip_and_sim_do_not_import_twisted() -> None:
    """All pure gossip modules and the simulator, imported together, pull in no Twisted."""
    proc = _probe(*PURE)
    assert proc.returncode == 0, f"Twisted was imported: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("module", ["sprawl.gossip.membership", "sprawl.sim"])
def test_each_entry_point_alone_is_pure(module: str) -> None:
    """Each entry point imported on its own is pure as well."""
    proc = _probe(module)
    assert proc.returncode == 0, f"{module} imported Twisted: {proc.stdout}{proc.stderr}"


def test_the_probe_notices_twisted() -> None:
    """The check fails for a module that does import Twisted (so it can fail)."""
    proc = _probe("sprawl.gossip", "twisted.internet.task")
    assert proc.returncode == 1 and proc.stdout.startswith("twisted")
