"""Where the tests find the checkout's files, wherever a test module sits under ``tests/``."""

from __future__ import annotations

from pathlib import Path

#: The checkout's root (the folder holding ``tests/``, ``docs/``, ``bin/``).
ROOT = Path(__file__).resolve().parents[2]
#: ``docs/``: the pages and specs the contract tests hold the code to.
DOCS = ROOT / "docs"
#: ``tests/data/``: fixtures (recorded traces, an old data dir).
DATA = ROOT / "tests" / "data"
