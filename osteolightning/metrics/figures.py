"""Figures of the evaluation report: confusion matrix, ROC curves, reliability diagram.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas), never through
``pyplot``: nothing needs a display and no figure stays registered in pyplot's global state,
so writing thousands of them in a sweep leaks nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from osteolightning.metrics.calibration import expected_calibration_error, reliability_bins
from osteolightning.metrics.report import ECE_BINS, confusion_matrices

#: Resolution of the written PNGs.
DPI = 150


def _confusion_panel(ax, matrix: np.ndarray, class_names: Sequence[str], fmt: str, title: str):
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    k = len(class_names)
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    high = matrix.max() if matrix.size else 0
    for i in range(k):
        for j in range(k):
            value = matrix[i, j]
            ax.text(
                j,
                i,
                format(value, fmt),
                ha="center",
                va="center",
                color="white" if value > high / 2 else "black",
            )
    return image


def plot_confusion_matrix(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> Figure:
    """Two panels: counts and row-normalised (recall per true class).

    Args:
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` probabilities (the prediction is the arg max).
        class_names: ``K`` names, in class-index order.
    """
    y = np.asarray(labels, dtype=np.int64)
    cm = confusion_matrices(y[None], np.asarray(probs).argmax(axis=1)[None], len(class_names))[0]
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    _confusion_panel(left, cm, class_names, "d", f"counts (n = {len(y)})")
    image = _confusion_panel(right, normalised, class_names, ".2f", "row-normalised")
    image.set_clim(0, 1)
    fig.colorbar(image, ax=right, fraction=0.046)
    return fig


def plot_roc(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> Figure:
    """One-vs-rest ROC curve per class, its AUROC in the legend (classes absent from
    ``labels`` or without negatives are left out)."""
    from sklearn.metrics import roc_auc_score, roc_curve  # only where drawn

    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=float)
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for c, name in enumerate(class_names):
        positive = y == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, c])
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(positive, p[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one vs rest")
    ax.legend(loc="lower right")
    return fig


def plot_reliability(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], n_bins: int = ECE_BINS
) -> Figure:
    """Reliability diagram: accuracy vs mean confidence per equal-width bin (top label), the
    bin counts below, the diagonal of perfect calibration, the ECE in the title."""
    bins = reliability_bins(labels, probs, n_bins)
    edges, count = bins["edges"], bins["count"]
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n_bins
    ece = expected_calibration_error(labels, probs, n_bins)
    fig = Figure(figsize=(5.5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    filled = count > 0
    top.bar(
        centres[filled],
        bins["accuracy"][filled],
        width=width,
        edgecolor="black",
        label="accuracy",
    )
    top.plot(
        bins["confidence"][filled],
        bins["accuracy"][filled],
        "o",
        color="C1",
        ms=4,
        label="mean confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"reliability ({len(class_names)} classes, top label): ECE = {ece:.3f}")
    top.legend(loc="upper left")
    bottom.bar(centres, count, width=width, color="grey", edgecolor="black")
    for x, n in zip(centres[filled], count[filled], strict=True):
        bottom.text(x, n, str(int(n)), ha="center", va="bottom", fontsize=7)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel(f"confidence ({n_bins} equal-width bins)")
    bottom.set_ylabel("images")
    return fig


#: File stem → plotting function; the keys are the names used in W&B and in the run directory.
FIGURES = {
    "confusion_matrix": plot_confusion_matrix,
    "roc": plot_roc,
    "reliability": plot_reliability,
}


def write_figures(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], out_dir: str | Path
) -> dict[str, Path]:
    """Write every figure as ``<out_dir>/<name>.png`` (150 dpi).

    Returns:
        name → written path (``confusion_matrix``, ``roc``, ``reliability``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, plot in FIGURES.items():
        fig = plot(labels, probs, class_names)
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=DPI)
        fig.clear()  # free the artists now rather than at garbage collection
    return paths
