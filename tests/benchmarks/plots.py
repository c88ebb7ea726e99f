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
    ``key`` against ``x`` (in ascending ``x``); the first panel has the legend.
    A row without ``key`` (a figure measured at some counts only, such as a
    failover) adds no point to that panel; a group with none draws no line there
    (a group keeps its colour in every panel, and every panel spans all the
    rows' ``x``).  Up to four panels a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = min(len(panels), 4)
    rows_n = -(-len(panels) // cols)
    fig, grid = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.4 * rows_n), squeeze=False)
    axes = list(grid.flat)
    for spare in axes[len(panels) :]:
        fig.delaxes(spare)
    groups = sorted({r[group] for r in rows})
    xs = [r[x] for r in rows]
    for ax, (key, title) in zip(axes, panels, strict=False):
        for i, g in enumerate(groups):
            pts = sorted(
                ((r[x], r[key]) for r in rows if r[group] == g and r.get(key) is not None), key=lambda p: p[0]
            )
            if not pts:
                continue
            # The group's colour is the same in every panel, whichever groups have points there.
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label(g), color=f"C{i}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
            if xs:
                ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
        elif xs:
            pad = 0.05 * (max(xs) - min(xs)) or 1
            ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
