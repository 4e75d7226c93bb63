"""``osteo-predict CKPT PATH... --explain``: where the classifier looked, one overlay per image.

Each image's class-activation map (Grad-CAM or Grad-CAM++ for its predicted class, at the
backbone's ``backbone.cam_layer``; :mod:`osteolightning.models.saliency`) is mapped back from
the letterboxed network input onto the original image and drawn over it
(``<explain dir>/<name>.png``, names relative to the folder given, as for masks). The
prediction CSV gains two columns: ``saliency`` (the overlay's path) and
``saliency_border_share`` (the share of the map's most salient 10 % in the image's border band,
the per-image shortcut check of :mod:`osteolightning.metrics.saliency`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from osteolightning.callbacks.seg_evaluation import png_bytes
from osteolightning.data.cache import letterbox_resize
from osteolightning.data.io import read_image
from osteolightning.data.masks import letterbox_mask
from osteolightning.data.transforms import ToNormalizedTensor
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.metrics.saliency import border_band, saliency_shares, top_saliency
from osteolightning.metrics.saliency_figures import heat_overlay
from osteolightning.models.saliency import SaliencyExplainer, cam_layer_of
from osteolightning.utils.files import atomic_write_bytes

#: overlays are written at most this many pixels on their long side
OVERLAY_MAX_SIDE = 1024
#: the per-image shortcut check's band and peak share (the ``saliency`` config's defaults)
BORDER_FRACTION, TOP_FRACTION = 0.1, 0.1
COLUMNS = ("saliency", "saliency_border_share")


def default_dir(out: str | None) -> Path:
    """Where overlays go without ``--explain-dir``: ``<out stem>_saliency/`` beside ``--out``,
    else ``./saliency``."""
    if not out:
        return Path("saliency")
    out_path = Path(out)
    return out_path.with_name(f"{out_path.stem}_saliency")


def unletterbox_map(square: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A ``(S, S)`` map of the letterboxed input back onto the ``(H, W)`` image (bilinear)."""
    h, w = shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    resized = cv2.resize(square.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    return resized[top : top + h, left : left + w]


def _overlay_png(image: np.ndarray, saliency: np.ndarray) -> bytes:
    scale = OVERLAY_MAX_SIDE / max(image.shape)
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        saliency = cv2.resize(saliency, size, interpolation=cv2.INTER_LINEAR)
    return png_bytes(heat_overlay(image, saliency))


def explain_images(
    model: Any,
    pairs: Sequence[tuple[Path, Path]],
    out_dir: str | Path,
    method: str = "gradcam",
    cam_layer: str | None = None,
    batch_size: int = 16,
) -> list[list[str]]:
    """Write one saliency overlay per image and return its CSV cells.

    Args:
        model: a classification LightningModule loaded from its checkpoint (its ``run_config``
            names ``backbone.cam_layer``).
        pairs: ``(root, image)`` pairs, in the order of the prediction rows.
        out_dir: a new (or empty) folder.
        method: ``gradcam`` or ``gradcampp``.
        cam_layer: the target layer; ``None``: the checkpoint's ``backbone.cam_layer``.
        batch_size: images per backward pass.

    Returns:
        Per image ``[overlay path, border share]`` (the share empty for a zero map).

    Raises:
        ConfigError: not a classifier checkpoint (an exported model has no gradients), no
            target layer (the message names ``backbone.cam_layer`` and ``--cam-layer``), or
            an ``out_dir`` holding other files.
    """
    if not hasattr(model, "net") or not hasattr(model, "predict_proba"):
        raise ConfigError(
            "--explain needs a classification checkpoint (.ckpt): saliency maps take the "
            "network's gradients, which an exported model or a segmentation checkpoint lacks."
        )
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--explain-dir '{out}' exists and is not an empty folder; osteo-predict never "
            "writes over files it did not create. Pass a new folder."
        )
    names = [image.relative_to(root).with_suffix(".png") for root, image in pairs]
    if len(set(names)) < len(names):
        raise DataSourceError(
            "Two images would write the same overlay name; pass their folders, or rename one."
        )
    layer = cam_layer or cam_layer_of(getattr(model, "run_config", None))
    explainer = SaliencyExplainer(model.net, layer, method).to(model.device)
    pre = model.preprocessing
    to_tensor = ToNormalizedTensor(pre.mean, pre.std, pre.in_chans)
    cells: list[list[str]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        originals = [read_image(image) for _, image in chunk]
        batch = torch.stack([to_tensor(letterbox_resize(im, pre.image_size)) for im in originals])
        with torch.no_grad():
            classes = model.predict_proba(batch.to(model.device)).argmax(dim=1)
        maps, _ = explainer(batch, classes)  # (B, S, S): each image's predicted class
        bands = np.stack([letterbox_mask(border_band(im.shape, BORDER_FRACTION), pre.image_size)
                          for im in originals])  # fmt: skip
        shares = saliency_shares(top_saliency(maps.numpy(), TOP_FRACTION), bands)
        for original, square, share, name in zip(
            originals, maps.numpy(), shares, names[start : start + batch_size], strict=True
        ):
            path = atomic_write_bytes(
                out / name, _overlay_png(original, unletterbox_map(square, original.shape))
            )
            cells.append([str(path), "" if not np.isfinite(share) else f"{share:.4f}"])
    return cells


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """``--explain`` and its options, for ``osteo-predict``."""
    parser.add_argument(
        "--explain",
        action="store_true",
        help="classification: write each image's saliency map (Grad-CAM) as an overlay PNG",
    )
    parser.add_argument(
        "--explain-dir",
        help="the new folder for the overlays (default: <out stem>_saliency/ beside --out, "
        "else ./saliency)",
    )
    parser.add_argument("--explain-method", default="gradcam", help="gradcam or gradcampp")
    parser.add_argument(
        "--cam-layer", help="the layer to explain (default: the checkpoint's backbone.cam_layer)"
    )


def explain_rows(
    model: Any,
    args: argparse.Namespace,
    pairs: Sequence[tuple[Path, Path]],
    header: list[str],
    rows: list[list[str]],
) -> tuple[list[str], list[list[str]]]:
    """Write the overlays of ``--explain`` for the ``(root, image)`` pairs of the prediction
    ``rows`` (same order); the header and rows gain ``saliency,saliency_border_share``."""
    cells = explain_images(
        model,
        pairs,
        args.explain_dir or default_dir(args.out),
        method=args.explain_method,
        cam_layer=args.cam_layer,
        batch_size=args.batch_size,
    )
    return [*header, *COLUMNS], [row + cell for row, cell in zip(rows, cells, strict=True)]
