"""``sprawl.interfaces`` is a leaf of the layers: Protocols only, and nothing of
Sprawl (or Twisted) imported at run time, so any layer may use it."""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Protocol

import sprawl.interfaces

_PROBE = """
import sys
import sprawl.interfaces
loaded = sorted(m for m in sys.modules if m.startswith("sprawl.") or m == "twisted" or m.startswith("twisted."))
print("\\n".join(m for m in loaded if m != "sprawl.interfaces"))
"""


def test_interfaces_import_nothing_of_sprawl_or_twisted() -> None:
    """Importing it in a fresh interpreter loads no other Sprawl module and no Twisted."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def test_interfaces_define_only_protocols() -> None:
    """Every class defined in the module is a ``typing.Protocol``."""
    mine = [
        obj
        for _name, obj in inspect.getmembers(sprawl.interfaces, inspect.isclass)
        if obj.__module__ == "sprawl.interfaces"
    ]
    assert mine
    assert [
        c.__name__ for c in mine if Protocol not in c.__mro__ or not getattr(c, "_is_protocol", False)
    ] == []
