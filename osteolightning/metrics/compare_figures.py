"""The critical-difference diagram of Demšar (2006) for a sweep leaderboard.

Built on :class:`matplotlib.figure.Figure` (Agg canvas), never ``pyplot``, as
:mod:`osteolightning.metrics.figures`: no figure stays registered in global state.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from osteolightning.metrics.figures import DPI


def critical_difference_figure(result: Mapping[str, object]) -> Figure:
    """Demšar's diagram of :func:`~osteolightning.metrics.compare.friedman_critical_difference`.

    A rank axis (1 = best, on the left), each method hanging from its average rank (the better
    half labelled on the left, the rest on the right), the CD as a bar above the axis, and a
    thick bar under the axis joining each group of methods not significantly different.

    Args:
        result: ``friedman_critical_difference``'s dict (``names``, ``avg_ranks``, ``cd``,
            ``groups``).
    """
    names, ranks = list(result["names"]), np.asarray(result["avg_ranks"], dtype=float)
    k, cd, groups = len(names), float(result["cd"]), result["groups"]
    order = np.argsort(ranks, kind="stable")  # best first
    half = (k + 1) // 2
    step, bars = 0.35, 0.25 + 0.12 * len(groups)  # label spacing; depth below the group bars
    depth = bars + step * (half + 0.5)
    fig = Figure(figsize=(7, 1.2 + 0.35 * depth), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(1, k)
    ax.set_ylim(depth, -1.1)  # y grows downwards from the rank axis at 0
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", linewidth=1)
    for tick in np.arange(1, k + 0.01, 0.5):
        whole = tick == int(tick)
        ax.vlines(tick, -0.12 if whole else -0.06, 0, color="black", linewidth=1)
        if whole:
            ax.text(tick, -0.2, str(int(tick)), ha="center", va="bottom", fontsize=9)
    ax.hlines(-0.85, 1, 1 + cd, color="black", linewidth=1.5)
    ax.vlines([1, 1 + cd], -0.92, -0.78, color="black", linewidth=1.5)
    ax.text(1 + cd / 2, -0.95, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for pos, m in enumerate(order):
        left = pos < half
        y = bars + step * ((pos if left else k - 1 - pos) + 1)
        edge = 1 - 0.04 * (k - 1) if left else k + 0.04 * (k - 1)
        ax.plot([ranks[m], ranks[m], edge], [0, y, y], color="black", linewidth=1, clip_on=False)
        label = f" {names[m]} ({ranks[m]:.2f}) "
        ax.text(edge, y, label, ha="right" if left else "left", va="center", fontsize=9)
    for g, group in enumerate(groups):
        r = ranks[[names.index(name) for name in group]]
        ax.hlines(0.2 + 0.12 * g, r.min() - 0.03, r.max() + 0.03, color="black", linewidth=4)
    return fig


def plot_critical_difference(result: Mapping[str, object], path: str | Path) -> Path:
    """Write :func:`critical_difference_figure` as a PNG (150 dpi, trimmed to its content).

    Args:
        result: ``friedman_critical_difference``'s dict.
        path: the PNG to write; its folder is created.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = critical_difference_figure(result)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # labels sit outside the rank axis
    fig.clear()
    return path
