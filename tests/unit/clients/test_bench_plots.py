"""The scale benchmarks' curves (``benchmarks.plots.panel_curves``, drawn by
``benchmarks.scale`` and ``benchmarks.scale_controller`` with ``--plot``)."""

from __future__ import annotations

import json
import sys
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
    """Eight panels (create, describe, list, delete, idle CPU, KB per replica,
    failover, restart), a line per node count labelled with its replication
    factor, written to ``DIR/scale.png``; failover and restart have points only
    at the counts they were measured at, and no line for a size without one."""
    keys = ("create_ms", "describe_ms", "list_ms", "delete_ms", "idle_cpu", "kb_per_replica")
    rows: list[dict[str, Any]] = [
        {"nodes": n, "topics": t, **{k: n * t + i for i, k in enumerate(keys)}}
        for n in (1, 5)
        for t in (10, 100)
    ]
    rows[1]["restart_s"] = 1.5  # 1 node, 100 topics
    rows[2]["failover_s"] = 2.0  # 5 nodes, 10 topics
    rows[3].update(failover_s=4.0, restart_s=7.0)
    scale.plot(rows, tmp_path / "out")
    assert (tmp_path / "out" / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = drawn
    panels = _lines(fig)
    assert len(panels) == 8
    assert panels[0] == [
        ("1 node(s), RF 1", [10, 100], [10, 100]),
        ("5 node(s), RF 3", [10, 100], [50, 500]),
    ]
    assert panels[5][1] == ("5 node(s), RF 3", [10, 100], [55, 505])
    assert panels[6] == [("5 node(s), RF 3", [10, 100], [2.0, 4.0])]
    assert panels[7] == [("1 node(s), RF 1", [100], [1.5]), ("5 node(s), RF 3", [100], [7.0])]
    assert [ax.get_xscale() for ax in fig.axes] == ["linear"] * 8
    # A size keeps its colour where the other has no line, and every panel spans every count.
    assert fig.axes[6].get_lines()[0].get_color() == fig.axes[0].get_lines()[1].get_color()
    assert fig.axes[7].get_xlim() == fig.axes[0].get_xlim()


def test_scale_replot_draws_saved_rows_without_starting_a_node(
    tmp_path: Path, drawn: list[Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--replot FILE --plot DIR`` prints the table of the rows a ``--json`` run
    saved and draws them (``run_size``, which starts nodes, is not called)."""
    row = {
        "nodes": 3,
        "topics": 100,
        "replicas_per_node": 100,
        **dict.fromkeys(("create_ms", "describe_ms", "list_ms", "delete_ms", "idle_cpu", "rss_mb"), 1.0),
        "kb_per_replica": 10.0,
        "failover_s": 2.1,
        "failover_partitions": 41,
    }
    saved = tmp_path / "scale.json"
    saved.write_text(json.dumps([row]))

    def no_nodes(*_: Any) -> list[dict[str, Any]]:
        raise AssertionError("started nodes")

    monkeypatch.setattr(scale, "run_size", no_nodes)
    monkeypatch.setattr(sys, "argv", ["scale.py", "--replot", str(saved), "--plot", str(tmp_path)])
    scale.main()
    assert "| 3 | 100 | 100 |" in capsys.readouterr().out
    assert (tmp_path / "scale.png").exists()
    (fig,) = drawn
    assert _lines(fig)[6] == [("3 node(s), RF 3", [100], [2.1])]


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
