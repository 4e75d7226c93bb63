"""Figures that compare models: Demšar's (2006) critical-difference diagram, and the study
report's ROC curves of every model, reliability diagrams and per-fold spread.

Built on :class:`matplotlib.figure.Figure` (Agg canvas), never ``pyplot``, as
:mod:`osteolightning.metrics.figures`: no figure stays registered in global state.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from osteolightning.metrics.calibration import expected_calibration_error, reliability_bins
from osteolightning.metrics.figures import DPI
from osteolightning.metrics.report import ECE_BINS


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


def _panels(n: int, width: float, height: float) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel().tolist()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def roc_rows_figure(
    rows: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str]
) -> Figure:
    """One-vs-rest ROC curves of several models on one figure: a panel per class, a curve per
    model with its AUROC in the legend (a class without positives or negatives is left out).

    Args:
        rows: model name → ``(labels (N,), probs (N, K))``, e.g. each leaderboard row's pooled
            out-of-fold predictions.
        class_names: ``K`` class names.
    """
    from sklearn.metrics import roc_auc_score, roc_curve  # only where drawn

    fig, axes = _panels(len(class_names), 5.0, 4.8)
    for c, (ax, name) in enumerate(zip(axes, class_names, strict=True)):
        for i, (model, (labels, probs)) in enumerate(rows.items()):
            positive = np.asarray(labels) == c
            if positive.all() or not positive.any():
                continue
            scores = np.asarray(probs)[:, c]
            fpr, tpr, _ = roc_curve(positive, scores)
            auc = roc_auc_score(positive, scores)
            style = "-" if i < 10 else "--"  # the colour cycle has 10 colours
            ax.plot(fpr, tpr, style, linewidth=1.3, label=f"{model} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), title=f"{name} vs rest")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=6, title="AUROC", title_fontsize=7)
    return fig


def reliability_rows_figure(
    rows: Mapping[str, tuple[np.ndarray, np.ndarray]], n_bins: int = ECE_BINS
) -> Figure:
    """A reliability diagram per model (top label, ``n_bins`` equal-width bins): accuracy per
    bin against its mean confidence, the bins' image counts as bar shading, the ECE in the title.

    Args:
        rows: model name → ``(labels (N,), probs (N, K))``.
        n_bins: confidence bins.
    """
    fig, axes = _panels(len(rows), 3.6, 3.4)
    for ax, (model, (labels, probs)) in zip(axes, rows.items(), strict=True):
        bins = reliability_bins(labels, probs, n_bins)
        edges, count = bins["edges"], bins["count"]
        filled = count > 0
        centres = (edges[:-1] + edges[1:]) / 2
        shade = 0.25 + 0.75 * count[filled] / max(int(count.max()), 1)
        colours = [(0.12, 0.47, 0.71, a) for a in shade]
        ax.bar(centres[filled], bins["accuracy"][filled], width=1 / n_bins, color=colours)
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ece = expected_calibration_error(labels, probs, n_bins)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.set_title(f"{model}\nECE = {ece:.3f} (n = {len(labels)})", fontsize=8)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    return fig


def spread_figure(values: Mapping[str, Sequence[float]], metric: str) -> Figure:
    """Per-fold spread: each model's values over its (seed, fold) units as points, their mean
    as a bar; models top to bottom in the given order.

    Args:
        values: model name → its per-unit values (undefined ones left out by the caller).
        metric: the axis label.
    """
    names = list(values)
    fig = Figure(figsize=(8, 1.0 + 0.4 * len(names)), layout="constrained")
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # vertical jitter only, for overlapping points
    for i, name in enumerate(names):
        y = len(names) - 1 - i
        v = np.asarray(values[name], dtype=float)
        if not len(v):
            continue
        ax.scatter(v, y + rng.uniform(-0.12, 0.12, len(v)), s=14, color="tab:blue", alpha=0.7)
        ax.vlines(v.mean(), y - 0.3, y + 0.3, color="tab:red", linewidth=2)
    ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
    ax.set_xlabel(f"{metric} per (seed, fold); red: mean")
    ax.grid(axis="x", alpha=0.3)
    return fig


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """A figure as PNG bytes (trimmed to its content), its artists freed afterwards."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # long labels outside the axes (the CD diagram's row names) leave constrained layout no
        # room; it steps aside with a warning and bbox_inches="tight" frames the labels instead
        warnings.filterwarnings("ignore", "constrained_layout not applied", UserWarning)
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    fig.clear()
    return buffer.getvalue()
