"""Figures of a regression (the T-score): predicted vs true, and the Bland-Altman plot.

Built like :mod:`osteolightning.metrics.figures`: a :class:`matplotlib.figure.Figure` on the Agg
canvas, never ``pyplot``, so no figure stays registered in global state. Each PNG is rendered
into memory and written atomically, so a killed run never leaves a truncated image.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from osteolightning.errors import ConfigError
from osteolightning.metrics.figures import DPI
from osteolightning.metrics.regression import (
    as_pair,
    as_vector,
    empirical_coverage,
    regression_table,
)
from osteolightning.utils.files import atomic_write_bytes


def _intervals(lower: Any, upper: Any, n: int) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    if (lower is None) != (upper is None):
        raise ConfigError(
            "Expected arguments `lower` and `upper` to be given together, but got only "
            f"`{'lower' if upper is None else 'upper'}`."
        )
    if lower is None:
        return None, None
    lo, hi = as_vector(lower, "lower"), as_vector(upper, "upper")
    if len(lo) != n or len(hi) != n:
        raise ConfigError(
            f"Expected arguments `lower` and `upper` of shape ({n},), but got {lo.shape} and "
            f"{hi.shape}."
        )
    return lo, hi


def plot_predicted_vs_true(
    y_true: Any,
    y_pred: Any,
    name: str = "t_score",
    lower: Any = None,
    upper: Any = None,
) -> Figure:
    """Scatter of predictions against truth with the identity line, and optional interval bars.

    Args:
        y_true: ``(N,)`` reference values.
        y_pred: ``(N,)`` predictions.
        name: the target's name, for the axis labels.
        lower: ``(N,)`` lower interval bounds (e.g. :meth:`.SplitConformal.interval`), or None.
        upper: ``(N,)`` upper bounds; given with ``lower``.
    """
    t, p = as_pair(y_true, y_pred)
    lo, hi = _intervals(lower, upper, len(t))
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    if lo is not None:
        covered = empirical_coverage(t, lo, hi)
        ax.vlines(t, lo, hi, color="C0", alpha=0.25, linewidth=1,
                  label=f"interval ({covered:.1%} contain the truth)")  # fmt: skip
    stats = {k: float(v[0]) for k, v in regression_table(t[None], p[None]).items()}
    ax.scatter(t, p, s=10, alpha=0.7, color="C0", label=f"n = {len(t)}")
    values = np.concatenate([t, p] + ([lo, hi] if lo is not None else []))
    low, high = values.min(), values.max()
    pad = 0.05 * (high - low) or 0.5
    ax.plot([low - pad, high + pad], [low - pad, high + pad], "--", color="grey", label="y = x")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.set_title(f"MAE {stats['mae']:.3f}, RMSE {stats['rmse']:.3f}, CCC {stats['ccc']:.3f}")
    ax.legend(loc="upper left")
    return fig


def plot_bland_altman(y_true: Any, y_pred: Any, name: str = "t_score") -> Figure:
    """Bland-Altman plot: the difference ``pred - true`` against the mean of the two, with the
    bias and the 95 % limits of agreement as horizontal lines.

    Args:
        y_true: ``(N,)`` reference values.
        y_pred: ``(N,)`` predictions.
        name: the target's name, for the axis labels.
    """
    t, p = as_pair(y_true, y_pred)
    stats = {k: float(v[0]) for k, v in regression_table(t[None], p[None]).items()}
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter((t + p) / 2, p - t, s=10, alpha=0.7, color="C0", label=f"n = {len(t)}")
    ax.axhline(stats["bias"], color="C1", label=f"bias {stats['bias']:+.3f}")
    for key in ("loa_low", "loa_high"):
        if np.isfinite(stats[key]):  # undefined for a single point
            ax.axhline(stats[key], color="C3", linestyle="--",
                       label=f"{'lower' if key == 'loa_low' else 'upper'} limit of agreement "
                             f"{stats[key]:+.3f}")  # fmt: skip
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"mean of true and predicted {name}")
    ax.set_ylabel(f"predicted - true {name}")
    ax.set_title("Bland-Altman (limits: bias -/+ 1.96 SD)")
    ax.legend(loc="best", fontsize=8)
    return fig


def _write_png(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()  # free the artists now rather than at garbage collection
    return atomic_write_bytes(path, buffer.getvalue())


def write_regression_figures(
    y_true: Any,
    y_pred: Any,
    out_dir: str | Path,
    name: str = "t_score",
    lower: Any = None,
    upper: Any = None,
) -> dict[str, Path]:
    """Write ``<out_dir>/predicted_vs_true.png`` and ``<out_dir>/bland_altman.png`` atomically.

    The file names do not contain ``name`` (it labels the axes): give each target its own
    ``out_dir``.

    Args:
        y_true: ``(N,)`` reference values.
        y_pred: ``(N,)`` predictions.
        out_dir: folder, created if missing.
        name: the target's name.
        lower: optional ``(N,)`` lower interval bounds, drawn as bars.
        upper: optional ``(N,)`` upper interval bounds.

    Returns:
        ``{"predicted_vs_true": path, "bland_altman": path}``.

    Raises:
        ConfigError: empty, non-finite or mismatched input; ``lower`` without ``upper``.
    """
    out = Path(out_dir)
    figures = {
        "predicted_vs_true": plot_predicted_vs_true(y_true, y_pred, name, lower, upper),
        "bland_altman": plot_bland_altman(y_true, y_pred, name),
    }
    return {key: _write_png(fig, out / f"{key}.png") for key, fig in figures.items()}
