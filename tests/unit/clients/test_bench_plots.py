"""The scale benchmarks' curves (``benchmarks.plots.panel_curves``, drawn by
``benchmarks.scale`` and ``benchmarks.scale_controller`` with ``--plot``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import scale, scale_controller

plt = pytest.importorskip("matplotlib.pyplot")  # the bench extra's


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plots close (kept, to look at after they are written)."""
    figures: list[Any] = []
    close = plt.close

    def keep(fig: Any) -> None:
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return figures


def _lines(fig: Any) -> list[list[tuple[str, list[float], list[float]]]]:
    return [
        [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()]
        for ax in fig.axes
    ]


def test_scale_draws_a_line_per_cluster_size_in_each_panel(tmp_path: Path, drawn: list[Any]) -> None:
    """Five panels (create, describe, delete, idle CPU, KB per replica), a
    line per node count labelled with its replication factor, written to
    ``DIR/scale.png``."""
    keys = ("create_ms", "describe_ms", "delete_ms", "idle_cpu", "kb_per_replica")
    rows = [
        {"nodes": n, "topics": t, **{k: n * t + i for i, k in enumerate(keys)}}
        for n in (1, 5)
        for t in (10, 100)
    ]
    scale.plot(rows, tmp_path / "out")
    assert (tmp_path / "out" / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = drawn
    panels = _lines(fig)
    assert len(panels) == 5
    assert panels[0] == [
        ("1 node(s), RF 1", [10, 100], [10, 100]),
        ("5 node(s), RF 3", [10, 100], [50, 500]),
    ]
    assert panels[4][1] == ("5 node(s), RF 3", [10, 100], [54, 504])
    assert [ax.get_xscale() for ax in fig.axes] == ["linear"] * 5


def test_scale_controller_draws_sorted_curves_on_a_log_axis(tmp_path: Path, drawn: list[Any]) -> None:
    """Three panels (first, idle, failover step), each node count's points
    in ascending partitions whatever the rows' order, on a log x axis."""
    rows = [
        {"nodes": n, "partitions": p, "first_ms": p + n, "idle_ms": 0.5, "failover_ms": p / 10}
        for n in (9, 3)
        for p in (1000, 100)
    ]
    scale_controller.plot(rows, tmp_path)
    assert (tmp_path / "scale_controller.png").exists()
    (fig,) = drawn
    panels = _lines(fig)
    assert [len(p) for p in panels] == [2, 2, 2]
    assert panels[0] == [("3 nodes", [100, 1000], [103, 1003]), ("9 nodes", [100, 1000], [109, 1009])]
    assert [ax.get_xscale() for ax in fig.axes] == ["log"] * 3
