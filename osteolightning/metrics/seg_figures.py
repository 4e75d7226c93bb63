"""Pictures of segmentations: colour overlays of label maps on radiographs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: RGB colour of each label value (background transparent); repeats past the end.
PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],  # femur: red
        [60, 180, 75],  # tibia: green
        [0, 130, 200],  # fibula: blue
        [255, 225, 25],  # patella: yellow
        [145, 30, 180],
        [70, 240, 240],
        [245, 130, 48],
    ],
    dtype=np.float32,
)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a label map over a grayscale image.

    Args:
        image: ``(H, W)`` uint8 (or float in [0, 1]) radiograph.
        mask: ``(H, W)`` integer label map of the same shape (0 is left uncoloured).
        alpha: opacity of the colours.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    gray = np.asarray(image, dtype=np.float32)
    if gray.max(initial=0) <= 1.0 and image.dtype != np.uint8:
        gray = gray * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    labels = np.asarray(mask).astype(np.int64)
    colours = PALETTE[1 + (labels - 1) % (len(PALETTE) - 1)]
    fg = labels > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[fg]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_overlay_grid(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
) -> Path:
    """A figure with one row per image: the radiograph, the truth and the prediction overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for row, (img, truth, pred, title) in enumerate(
        zip(images, truths, preds, titles, strict=True)
    ):
        for col, (picture, name) in enumerate(
            ((img, "image"), (overlay(img, truth), "truth"), (overlay(img, pred), "prediction"))
        ):
            ax = axes[row][col]
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            ax.set_axis_off()
            ax.set_title(f"{title}: {name}" if col == 0 else name, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
