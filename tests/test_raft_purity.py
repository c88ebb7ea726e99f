"""The Raft core is pure: importing it (in a fresh interpreter) leaves Twisted
out of ``sys.modules``."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "sprawl.raft",
    "sprawl.raft.messages",
    "sprawl.raft.storage",
    "sprawl.raft.log",
    "sprawl.raft.quorum",
    "sprawl.raft.progress",
    "sprawl.raft.node",
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


def test_raft_core_does_not_import_twisted() -> None:
    """All Raft core modules, imported together, pull in no Twisted."""
    proc = _probe(*PURE)
    assert proc.returncode == 0, f"Twisted was imported: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("module", PURE)
def test_each_raft_module_alone_is_pure(module: str) -> None:
    """Each module imported on its own is pure as well."""
    proc = _probe(module)
    assert proc.returncode == 0, f"{module} imported Twisted: {proc.stdout}{proc.stderr}"


def test_the_probe_notices_twisted() -> None:
    """The check fails for a module that does import Twisted (so it can fail)."""
    proc = _probe("sprawl.raft", "twisted.internet.task")
    assert proc.returncode == 1 and proc.stdout.startswith("twisted")
