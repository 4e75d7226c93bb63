"""Segmentation metrics per image and class, and their bootstrap report.

Definitions (nnU-Net's conventions, checked against MONAI in the tests):

- Dice ``2 TP / (2 TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)`` per image and class, from
  label maps (argmax of the network's output). A class absent from both the prediction and the
  ground truth of an image is undefined there (NaN) and left out of every mean; a class
  predicted where the truth has none scores 0.
- HD95: the 95th percentile of the symmetric surface distances (MONAI's
  ``compute_hausdorff_distance(percentile=95)``), in pixels of the evaluation grid (the
  letterboxed ``image_size`` square). Both empty: NaN. One empty and the other not: the
  grid's diagonal, the worst distance possible (a missed bone must not vanish from the mean).
- ``dice``, ``iou`` and ``hd95`` without a class suffix are the means over the foreground
  classes of the per-class means over images (class 0 is background and never averaged in).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from osteolightning.errors import ConfigError
from osteolightning.metrics.report import percentile_interval

#: Metrics per image and class, in the order of the report.
SEGMENTATION_METRICS = ("dice", "iou", "hd95")


def overlap_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, H, W)`` label maps → ``(B, K, 3)`` counts of TP, FP, FN per image and class."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ConfigError(
            f"Expected prediction and target label maps of one shape (B, H, W), but got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}."
        )
    b = pred.shape[0]
    flat = (target.long() * num_classes + pred.long()).view(b, -1)
    offsets = torch.arange(b, device=pred.device)[:, None] * num_classes * num_classes
    cm = torch.bincount((flat + offsets).view(-1), minlength=b * num_classes * num_classes)
    cm = cm.view(b, num_classes, num_classes).float()  # rows: truth, columns: prediction
    tp = torch.diagonal(cm, dim1=1, dim2=2)
    fp = cm.sum(dim=1) - tp
    fn = cm.sum(dim=2) - tp
    return torch.stack([tp, fp, fn], dim=2)


def dice_iou(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K, 3)`` TP/FP/FN counts → ``(B, K)`` Dice and IoU, NaN where both masks are empty."""
    tp, fp, fn = counts.unbind(dim=2)
    union = tp + fp + fn
    nan = torch.full_like(tp, math.nan)
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1e-12), nan)
    iou = torch.where(union > 0, tp / union.clamp(min=1e-12), nan)
    return dice, iou


def hd95(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, H, W)`` label maps → ``(B, K)`` 95th-percentile Hausdorff distances in pixels.

    Column 0 (background) is NaN. See the module docstring for empty masks.
    """
    from monai.metrics import compute_hausdorff_distance

    b, h, w = pred.shape
    eye = torch.eye(num_classes, device=pred.device)
    pred_1h = eye[pred.long()].permute(0, 3, 1, 2).cpu()
    target_1h = eye[target.long()].permute(0, 3, 1, 2).cpu()
    with warnings.catch_warnings():  # MONAI warns about every empty mask; handled below
        warnings.simplefilter("ignore")
        dist = compute_hausdorff_distance(
            pred_1h, target_1h, include_background=False, percentile=95
        ).float()
    pred_any = pred_1h.flatten(2).any(dim=2)[:, 1:]
    target_any = target_1h.flatten(2).any(dim=2)[:, 1:]
    diagonal = math.hypot(h, w)
    dist = torch.where(pred_any ^ target_any, torch.full_like(dist, diagonal), dist)
    dist = torch.where(~pred_any & ~target_any, torch.full_like(dist, math.nan), dist)
    return torch.cat([torch.full((b, 1), math.nan), dist], dim=1)


def per_image_scores(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, with_hd95: bool = True
) -> dict[str, torch.Tensor]:
    """Dice, IoU and (optionally) HD95 of each image and class: name → ``(B, K)`` on CPU."""
    dice, iou = dice_iou(overlap_counts(pred, target, num_classes))
    scores = {"dice": dice.cpu(), "iou": iou.cpu()}
    if with_hd95:
        scores["hd95"] = hd95(pred, target, num_classes)
    return scores


def _class_means(values: np.ndarray) -> np.ndarray:
    """``(R, N, K)`` → ``(R, K)`` means over images ignoring NaN (NaN where all are NaN)."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=1)
    count = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def segmentation_report(
    scores: dict[str, np.ndarray],
    class_names: Sequence[str],
    prefix: str = "test/",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, object]:
    """Means over images with percentile-bootstrap intervals (images resampled).

    Args:
        scores: metric name → ``(N, K)`` per-image, per-class values (NaN: undefined).
        class_names: ``K`` mask class names, background first.
        prefix: key prefix.
        n_resamples: bootstrap resamples.
        confidence: interval coverage.
        seed: bootstrap seed.

    Returns:
        Flat dict: ``test/dice``, ``test/dice_ci95``, ``test/dice_<class>`` (foreground classes),
        the same for ``iou`` and ``hd95``, and ``test/n``. Undefined values are ``None``.

    Raises:
        ConfigError: no images, or arrays that do not match ``class_names``.
    """
    k = len(class_names)
    n = {v.shape[0] for v in scores.values()}
    if len(n) != 1 or any(v.ndim != 2 or v.shape[1] != k for v in scores.values()):
        raise ConfigError(
            f"Expected every score array shaped (N, {k}), but got "
            f"{ {name: v.shape for name, v in scores.items()} }."
        )
    (n_images,) = n
    if n_images == 0:
        raise ConfigError("Cannot compute a segmentation report on zero images.")
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [np.arange(n_images)[None], rng.integers(0, n_images, (n_resamples, n_images))]
    )
    tag = f"ci{round(confidence * 100)}"
    report: dict[str, object] = {f"{prefix}n": int(n_images)}

    def put(key: str, values: np.ndarray) -> None:  # values: (1 + R,) point first
        point = float(values[0])
        report[key] = None if not np.isfinite(point) else point
        report[f"{key}_{tag}"] = percentile_interval(values[1:], confidence)

    for name, values in scores.items():
        means = _class_means(np.asarray(values, dtype=np.float64)[idx])  # (1 + R, K)
        foreground = means[:, 1:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
            put(f"{prefix}{name}", np.nanmean(foreground, axis=1))
        for c in range(1, k):
            put(f"{prefix}{name}_{class_names[c]}", means[:, c])
    report[f"{prefix}bootstrap_resamples"] = int(n_resamples)
    return report
