"""The curves the scale benchmarks draw (``--plot DIR``): one panel per figure,
one line per cluster size, the figure against a count (needs matplotlib:
``pip install .[bench]``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def panel_curves(
    rows: Sequence[dict[str, Any]],
    panels: Sequence[tuple[str, str]],
    path: Path,
    *,
    x: str,
    xlabel: str,
    label: Callable[[Any], str],
    group: str = "nodes",
    log_x: bool = False,
) -> None:
    """Write ``path`` (PNG): a panel per ``(key, title)`` of ``panels``, in it a
    line per value of ``rows``' ``group`` (labelled ``label(value)``) of
    ``key`` against ``x`` (in ascending ``x``); the first panel has the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for g in sorted({r[group] for r in rows}):
            pts = sorted(((r[x], r[key]) for r in rows if r[group] == g), key=lambda p: p[0])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label(g))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
