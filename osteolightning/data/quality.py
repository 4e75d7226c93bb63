"""Input that is technically valid but probably wrong: the warnings of the data summary and audit.

Each check returns :class:`Finding` s (a kind, a one-line message that names a few files and
says what was done, and the full file list); the DataModules add them to the data summary
(logged as a warning) and ``osteo-data audit`` to its table and ``audit.json``:

- ``partial_bit_depth``: 16-bit images whose values use fewer bits (12-bit detector data in a
  16-bit PNG). They are scaled by their own depth (:func:`~osteolightning.data.io.read_image_info`);
  the finding lists the depths found, since images scaled by different depths differ in
  brightness.
- ``extreme_aspect_ratio``: images whose longer side is more than :data:`MAX_ASPECT_RATIO`
  times the shorter, which letterboxing leaves as a thin band of the square network input.
- ``blank_image``: images of one gray level (blank or constant, :func:`is_blank`): no picture,
  only a label. They are kept, and never counted as near-duplicates of each other (two blank
  files share no content, only the lack of it; byte copies of one file are still copies).
- ``empty_mask``: masks with no foreground pixel (every pixel background).
- ``binary_mask_levels``: masks read with ``mask_format=binary`` that hold more than two gray
  levels (the threshold decided between them).
- ``few_images``: classes with fewer than
  :data:`~osteolightning.data.splits.MIN_PER_CLASS_PER_SPLIT` images in a split (see
  :func:`~osteolightning.data.splits.split_warnings`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np

from osteolightning.data.io import ImageInfo
from osteolightning.errors import DataSourceError, shorten

__all__ = [
    "MAX_ASPECT_RATIO",
    "BLANK_MAX_SPAN",
    "Finding",
    "blank_images",
    "image_findings",
    "is_blank",
    "mask_findings",
]

#: An image whose longer side exceeds this many times its shorter side gets a warning: it fills
#: less than a quarter of the square network input after letterboxing.
MAX_ASPECT_RATIO: Final = 4.0
#: An image whose pixels (inside its letterbox, after preprocessing to uint8) span at most this
#: many gray levels is blank: rounding and resizing leave a constant image within 2 levels.
BLANK_MAX_SPAN: Final = 2


@dataclass
class Finding:
    """One kind of suspicious input.

    Attributes:
        kind: ``partial_bit_depth``, ``extreme_aspect_ratio``, ``blank_image``,
            ``empty_mask``, ``binary_mask_levels`` or ``few_images``.
        message: what was found (a few files named), what was done and what to do.
        files: every file concerned.
    """

    kind: str
    message: str
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(info: ImageInfo) -> float:
    return max(info.height, info.width) / max(1, min(info.height, info.width))


def _content(size: int, side: int, n: int) -> slice:
    """The rows (or columns) of a letterboxed ``size`` square that hold ``n`` of ``side``
    source pixels (:func:`~osteolightning.data.cache.letterbox_resize` centres them), less the
    edge pixels that resizing blends with the zero fill; the middle one of a thinner band."""
    scale = size / side
    start, stop = (side - n) // 2 * scale, ((side - n) // 2 + n) * scale
    margin = 1 + math.ceil(scale / 2) if scale > 1 else 1  # upscaling blends over scale/2
    lo, hi = math.ceil(start) + margin, math.floor(stop) - margin
    if hi <= lo:
        mid = min(size - 1, int((start + stop) / 2))
        return slice(mid, mid + 1)
    return slice(lo, hi)


def is_blank(pixels: np.ndarray, info: ImageInfo) -> bool:
    """Whether a preprocessed image holds one gray level (a blank or constant file).

    Args:
        pixels: ``(S, S)`` uint8, the letterboxed image as the cache keeps it.
        info: its :class:`~osteolightning.data.io.ImageInfo` (where the letterbox put it).

    Returns:
        ``True`` when the pixels inside the letterbox span at most :data:`BLANK_MAX_SPAN`
        gray levels.

    Example:
        >>> is_blank(np.full((64, 64), 200, np.uint8), ImageInfo(512, 256, 8, 8, "file"))
        True
    """
    size, side = pixels.shape[0], max(info.height, info.width)
    region = pixels[_content(size, side, info.height), _content(size, side, info.width)]
    return int(region.max()) - int(region.min()) <= BLANK_MAX_SPAN


def blank_images(images: Sequence[np.ndarray], infos: Sequence[ImageInfo]) -> list[bool]:
    """:func:`is_blank` of each image (``(S, S)`` uint8) with its info."""
    return [is_blank(image, info) for image, info in zip(images, infos, strict=True)]


def image_findings(
    paths: Sequence[object],
    infos: Sequence[ImageInfo],
    image_size: int,
    blank: Sequence[bool] | None = None,
) -> list[Finding]:
    """16-bit images of partial depth, images of extreme aspect ratio and blank images.

    Args:
        paths: the image files.
        infos: their :class:`~osteolightning.data.io.ImageInfo` (from the cache).
        image_size: the side of the square network input.
        blank: whether each image is blank (:func:`is_blank`); ``None``: not judged.

    Example:
        >>> tall = ImageInfo(4000, 200, 8, 8, "file")
        >>> image_findings(["strip.png"], [tall], 160)[0].kind
        'extreme_aspect_ratio'
    """
    found = []
    partial = [(str(p), i) for p, i in zip(paths, infos, strict=True) if i.partial_depth]
    if partial:
        depths = Counter(f"{i.scale_bits}-bit by {i.depth_from}" for _, i in partial)
        listed = ", ".join(f"{d}: {n}" for d, n in sorted(depths.items()))
        mixed = (
            "; they were scaled by different depths, so their brightness is not comparable "
            "unless their detectors differ: check them"
            if len({i.scale_bits for _, i in partial}) > 1
            else ""
        )
        found.append(
            Finding(
                "partial_bit_depth",
                f"{len(partial)} 16-bit image(s) hold data of fewer bits ({listed}), e.g. "
                f"{shorten([p for p, _ in partial], 3)}: each is divided by 2^bits - 1 of its "
                f"PNG sBIT chunk or of the smallest of 10/12/14/16 bits that holds its maximum, "
                f"not by 65535{mixed}.",
                [p for p, _ in partial],
            )
        )
    wide = [(str(p), i) for p, i in zip(paths, infos, strict=True) if _ratio(i) > MAX_ASPECT_RATIO]
    if wide:
        path, info = max(wide, key=lambda w: _ratio(w[1]))
        rows = max(1, round(image_size / _ratio(info)))
        worst = (
            f"'{path}' ({info.height}x{info.width} pixels, height x width, {_ratio(info):.0f}:1) "
            f"spans {rows} of {image_size} rows (or columns) of the network input after "
            f"letterboxing"
        )
        what = (
            f"1 image is more than {MAX_ASPECT_RATIO:g} times as long as wide: {worst}."
            if len(wide) == 1
            else f"{len(wide)} images are more than {MAX_ASPECT_RATIO:g} times as long as wide "
            f"({shorten([p for p, _ in wide], 3)}); the most extreme, {worst}."
        )
        found.append(
            Finding(
                "extreme_aspect_ratio",
                f"{what} Crop such images to the anatomy or leave them out.",
                [p for p, _ in wide],
            )
        )
    empty = [str(p) for p, b in zip(paths, blank or [False] * len(paths), strict=True) if b]
    if empty:
        found.append(
            Finding(
                "blank_image",
                f"{len(empty)} image(s) hold a single gray level (blank or constant: no "
                f"picture), e.g. {shorten(empty, 3)}: they are kept and teach the network "
                f"nothing but their label; none is counted as a near-duplicate of another. "
                f"Leave them out of the data set, or replace them by their radiographs.",
                empty,
            )
        )
    return found


def mask_findings(
    masks: Sequence[object],
    empty: Sequence[bool],
    levels: Sequence[int],
    binary_threshold: int | None,
) -> list[Finding]:
    """All-background masks and binary masks of more than two gray levels.

    Args:
        masks: the mask files.
        empty: whether each mask is all background.
        levels: the number of distinct values in each file (see
            :func:`~osteolightning.data.masks.read_mask_info`).
        binary_threshold: the threshold of ``mask_format=binary``; ``None`` for other formats
            (then ``levels`` is not judged).

    Raises:
        DataSourceError: every mask is all background: nothing to learn, and most likely a
            mask format or threshold that does not fit the files.
    """
    names = [str(m) for m in masks]
    hint = (
        f" With mask_format=binary a pixel is foreground only above gray level "
        f"{binary_threshold} (data.mask_threshold): a 0/1 or label mask (values 0..K) reads "
        f"as empty; use mask_format=label for it."
        if binary_threshold is not None
        else ""
    )
    blank = [n for n, e in zip(names, empty, strict=True) if e]
    if names and len(blank) == len(names):
        raise DataSourceError(
            f"All {len(names)} masks are all background (no foreground pixel), e.g. "
            f"{shorten(blank, 3)}: there is nothing to segment.{hint}",
            details=blank,
        )
    found = []
    if blank:
        found.append(
            Finding(
                "empty_mask",
                f"{len(blank)} mask(s) are all background (no foreground pixel), e.g. "
                f"{shorten(blank, 3)}; they are kept and teach the network that there is no "
                f"bone in their images. If they should show bone, fix them.{hint}",
                blank,
            )
        )
    if binary_threshold is not None:
        grey = [(n, k) for n, k in zip(names, levels, strict=True) if k > 2]
        if grey:
            found.append(
                Finding(
                    "binary_mask_levels",
                    f"{len(grey)} binary mask(s) hold more than two gray levels (up to "
                    f"{max(k for _, k in grey)}), e.g. {shorten([n for n, _ in grey], 3)}: each "
                    f"was thresholded at gray level > {binary_threshold}. JPEG compression or "
                    f"anti-aliasing blurs a mask's boundary (save masks as PNG); a label mask "
                    f"(values 0..K) needs mask_format=label.",
                    [n for n, _ in grey],
                )
            )
    return found
