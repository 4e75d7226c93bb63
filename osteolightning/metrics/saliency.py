"""The shortcut check: how much of a classifier's saliency lies inside the bone, and how much in
a band along the image border, where burned-in side markers, collimation edges and scanner
borders sit.

An X-ray classifier can score well by reading those instead of the anatomy (Zech et al. 2018,
PLoS Med 15:e1002683; DeGrave et al. 2021, Nat Mach Intell 3:610). The check takes each test
image's saliency map (:mod:`osteolightning.models.saliency`), its bone mask (where known) and
the border band, and reports per image and overall the share of saliency in each region, with
percentile-bootstrap intervals over images. A mean border share above a configured maximum is
flagged.

Shares are ``sum(map * region) / sum(map)`` over the whole network input (letterbox padding
included), with each map cut to its most salient pixels first (``top_fraction``, default the top
10 %: Grad-CAM's diffuse floor over the whole image would otherwise pull every share towards
the region's share of the pixels). A map that is zero everywhere (no evidence for the class at the target layer)
has no share: it is ``NaN`` and left out of the means (``saliency_n`` counts the others).
For scale, the report also gives each region's share of the *pixels*: a map spread evenly over
the image has a border share equal to the band's area share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from osteolightning.errors import ConfigError
from osteolightning.metrics.report import percentile_interval


def check_border_fraction(fraction: float) -> float:
    """Raise unless ``fraction`` (the band's width as a fraction of the shorter side) is in
    (0, 0.5)."""
    if not 0 < float(fraction) < 0.5:
        raise ConfigError(
            "Expected argument `saliency.border_fraction` to be a float in the (0, 0.5) range "
            f"(the band's width as a fraction of the image's shorter side), but got {fraction}."
        )
    return float(fraction)


def border_band(shape: tuple[int, int], fraction: float) -> np.ndarray:
    """The pixels within ``fraction`` of the shorter side from any edge of an image.

    Args:
        shape: ``(H, W)`` of the image.
        fraction: the band's width as a fraction of ``min(H, W)``, in (0, 0.5); at least 1 px.

    Returns:
        ``(H, W)`` uint8, 1 in the band.

    Example:
        >>> border_band((4, 6), 0.25).tolist()[1]
        [1, 0, 0, 0, 0, 1]
    """
    h, w = (int(v) for v in shape)
    width = max(1, int(round(check_border_fraction(fraction) * min(h, w))))
    band = np.ones((h, w), dtype=np.uint8)
    band[width : h - width, width : w - width] = 0
    return band


def check_top_fraction(fraction: float) -> float:
    """Raise unless ``fraction`` (the share of most salient pixels kept) is in (0, 1]."""
    if not 0 < float(fraction) <= 1:
        raise ConfigError(
            "Expected argument `saliency.top_fraction` to be a float in the (0, 1] range (the "
            f"share of each map's most salient pixels that count), but got {fraction}."
        )
    return float(fraction)


def top_saliency(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Each map with all but its ``fraction`` most salient pixels set to 0.

    Grad-CAM maps carry a diffuse floor over the whole image that says little; the shares are
    taken over the peaks (as the pointing game takes the maximum), while keeping their mass.
    ``fraction=1`` keeps the whole map. Pixels tied at the cut are all kept.

    Args:
        maps: ``(N, H, W)`` non-negative saliency.
        fraction: share of pixels kept per map, in (0, 1].

    Returns:
        ``(N, H, W)`` float64.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if check_top_fraction(fraction) >= 1:
        return maps
    cut = np.quantile(maps.reshape(len(maps), -1), 1 - fraction, axis=1)  # (N,)
    return np.where(maps >= cut[:, None, None], maps, 0.0)


def saliency_shares(maps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The share of each map's saliency inside its region.

    Args:
        maps: ``(N, H, W)`` non-negative saliency (e.g. :func:`top_saliency`).
        region: ``(N, H, W)`` (or ``(H, W)``, shared) 0/1 region masks.

    Returns:
        ``(N,)`` shares in [0, 1]; ``NaN`` where a map sums to zero.
    """
    maps = np.asarray(maps, dtype=np.float64)
    region = np.broadcast_to(np.asarray(region, dtype=np.float64), maps.shape)
    total = maps.sum(axis=(1, 2))
    inside = (maps * region).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def _mean_with_interval(
    values: np.ndarray, n_resamples: int, seed: int
) -> tuple[float | None, list[float] | None]:
    """The mean of the finite ``values`` and its 95 % percentile-bootstrap interval."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return None, None
    rng = np.random.default_rng(seed)
    means = finite[rng.integers(0, len(finite), size=(n_resamples, len(finite)))].mean(axis=1)
    return float(finite.mean()), percentile_interval(means)


def shortcut_report(
    border_share: np.ndarray,
    border_area: np.ndarray,
    bone_share: np.ndarray | None = None,
    bone_area: np.ndarray | None = None,
    max_border_share: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    prefix: str = "test/",
) -> dict[str, Any]:
    """Overall saliency shares with bootstrap intervals, and the shortcut flag.

    Args:
        border_share: ``(N,)`` per-image share of saliency in the border band (NaN: no map).
        border_area: ``(N,)`` per-image share of the input's pixels in the band.
        bone_share: ``(N,)`` share of saliency inside the bone mask, or ``None`` (no masks).
        bone_area: ``(N,)`` share of the pixels inside the bone mask, or ``None``.
        max_border_share: flag the model when the mean border share exceeds it.
        n_resamples: bootstrap resamples over images.
        seed: bootstrap seed.
        prefix: key prefix (``test/``).

    Returns:
        Flat keys: ``{prefix}saliency_border_share`` (+ ``_ci95``),
        ``{prefix}saliency_border_area``, ``{prefix}saliency_bone_share`` (+ ``_ci95``) and
        ``{prefix}saliency_bone_area`` (``None`` without masks), ``{prefix}saliency_n`` (images
        with a non-zero map), ``{prefix}saliency_n_images`` and
        ``{prefix}saliency_shortcut_warning`` (bool).

    Raises:
        ConfigError: ``max_border_share`` outside [0, 1].
    """
    if not 0 <= float(max_border_share) <= 1:
        raise ConfigError(
            "Expected argument `saliency.max_border_share` to be a float in the [0, 1] range, "
            f"but got {max_border_share}."
        )
    border_share = np.asarray(border_share, dtype=np.float64)
    report: dict[str, Any] = {}
    border, border_ci = _mean_with_interval(border_share, n_resamples, seed)
    report[f"{prefix}saliency_border_share"] = border
    report[f"{prefix}saliency_border_share_ci95"] = border_ci
    report[f"{prefix}saliency_border_area"] = float(np.mean(border_area))
    bone, bone_ci = (None, None)
    if bone_share is not None:
        bone, bone_ci = _mean_with_interval(bone_share, n_resamples, seed)
    report[f"{prefix}saliency_bone_share"] = bone
    report[f"{prefix}saliency_bone_share_ci95"] = bone_ci
    report[f"{prefix}saliency_bone_area"] = (
        float(np.mean(bone_area)) if bone_area is not None else None
    )
    report[f"{prefix}saliency_n"] = int(np.isfinite(border_share).sum())
    report[f"{prefix}saliency_n_images"] = len(border_share)
    report[f"{prefix}saliency_shortcut_warning"] = bool(
        border is not None and border > float(max_border_share)
    )
    return report
