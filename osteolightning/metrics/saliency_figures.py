"""Pictures of saliency: a heat map over the radiograph, and a grid of test cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

#: Resolution of the grid PNG.
DPI = 120


def heat_overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a saliency map (``jet``: blue low, red high) over a grayscale radiograph.

    The map is scaled by its own maximum (a zero map leaves the image as it is), and its
    opacity follows its value, so where the network did not look the radiograph shows through.

    Args:
        image: ``(H, W)`` uint8, or float in [0, 1].
        saliency: ``(H, W)`` non-negative map of the same shape.
        alpha: opacity at the map's maximum.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    gray = np.asarray(image, dtype=np.float32)
    if image.dtype != np.uint8:
        gray = gray * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    sal = np.nan_to_num(np.asarray(saliency, dtype=np.float32), nan=0.0).clip(min=0)
    peak = float(sal.max(initial=0.0))
    if peak <= 0:
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    sal = sal / peak
    heat = colormaps["jet"](sal)[..., :3].astype(np.float32) * 255.0  # (H, W, 3)
    weight = (alpha * np.sqrt(sal))[..., None]
    return np.clip(np.rint((1 - weight) * rgb + weight * heat), 0, 255).astype(np.uint8)


def write_saliency_grid(
    cells: Mapping[str, Sequence[tuple[np.ndarray, str]]],
    columns: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """A grid of overlays: one row per key of ``cells``, one panel per overlay.

    Args:
        cells: row name (e.g. the true class) → ``(overlay (H, W, 3) uint8, caption)`` pairs,
            already ordered (e.g. correct cases, then wrong ones); an empty row is drawn blank.
        columns: the column headings (``len`` = the widest row).
        path: the PNG to write (atomically).
        title: the figure's title.

    Returns:
        ``path``.
    """
    rows = list(cells)
    n_cols = max(1, len(columns), *(len(v) for v in cells.values()))
    fig = Figure(figsize=(2.1 * n_cols, 2.3 * max(1, len(rows)) + 0.4))
    axes = fig.subplots(max(1, len(rows)), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if r == 0 and c < len(columns):
                ax.set_title(columns[c], fontsize=9, fontweight="bold")
            if c < len(cells[row]):
                picture, caption = cells[row][c]
                ax.imshow(picture)
                ax.text(0.5, -0.02, caption, transform=ax.transAxes, ha="center", va="top",
                        fontsize=7)  # fmt: skip
            if c == 0:
                ax.text(-0.08, 0.5, row, transform=ax.transAxes, rotation=90, ha="right",
                        va="center", fontsize=9, fontweight="bold")  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI)
    fig.clear()
    tmp.replace(path)
    return path
