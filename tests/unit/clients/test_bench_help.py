"""Every benchmark script answers ``--help`` with its usage and does nothing else
(docs/benchmarks.md names them: ``PYTHONPATH=tests python -m benchmarks.NAME``)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

import benchmarks

HERE = Path(benchmarks.__file__).parent

#: The benchmark modules run as scripts (``plots`` is a library).
SCRIPTS = sorted(p.stem for p in HERE.glob("*.py") if '__name__ == "__main__"' in p.read_text())


def test_the_scripts_are_found() -> None:
    """The list is not empty and holds the scripts the issues name."""
    assert {"sidebyside", "quorum_latency", "scale", "scale_curves", "forecast_sim"} <= set(SCRIPTS)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # run_module of an imported one
@pytest.mark.parametrize("name", SCRIPTS)
def test_help_prints_the_usage_and_exits_cleanly(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m benchmarks.NAME --help`` exits 0 (or returns) having printed
    its usage or its docstring, before it starts any node or measurement."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    try:
        runpy.run_module(f"benchmarks.{name}", run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (0, None), (name, stop.code)
    out = capsys.readouterr().out
    doc = (HERE / f"{name}.py").read_text().split('"""')[1]
    first = doc.strip().splitlines()[0]
    assert "usage" in out.lower() or first in out, (name, out[:300])
