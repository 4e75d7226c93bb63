"""What a classification DataModule does with each image's mask: read, check and letterbox it
like its image, then nothing, zero the image outside it (``mask_input="apply"``) or crop the
image to it (``mask_input="crop"``). The data plan (:func:`~osteolightning.data.plan.plan_data`)
calls these with what they read; a :class:`MaskReading` says how a task reads a mask (the
segmentation DataModule reads class indices).

``mask_input="apply"`` zeroes each image outside its mask's foreground (any non-zero mask
pixel; :func:`~osteolightning.data.masks.read_foreground`), so the classifier sees only the
segmented bone. The mask comes from the source (a manifest's ``mask`` column, e.g. the manifest
the mask export writes), must have its image's size and is letterboxed like it; an image without
a mask is an error. ``"crop"`` crops each image to the square around its mask's foreground taken
from the image letterboxed at ``mask_crop_from`` pixels, resized to ``image_size``: the bone at
a higher resolution than the whole knee would get
(:func:`~osteolightning.data.masks.crop_to_foreground`). ``"provide"``: the image unchanged, its
mask in every batch (``batch["mask"]``, moved with the image by the augmentation) for a model
that measures the bone region (``experiment=fathima2020``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from osteolightning.data.masks import (
    crop_to_foreground,
    image_shape,
    letterbox_mask,
    read_foreground,
)
from osteolightning.data.quality import Finding, mask_findings
from osteolightning.data.sample import Sample
from osteolightning.errors import DataSourceError, shorten
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class MaskReading:
    """How a task reads each sample's mask.

    Attributes:
        use: what the masks are for, for error messages (``mask_input=apply``,
            ``Segmentation``).
        read: one sample's mask at its original resolution, ``(H, W)`` uint8, and the number
            of distinct values in its file; raises :class:`DataSourceError` for a bad mask.
        binary_threshold: the threshold of binary masks, whose gray levels are judged (a
            finding); ``None``: not judged.
    """

    use: str
    read: Callable[[Sample], tuple[np.ndarray, int]]
    binary_threshold: int | None = None


def read_foreground_mask(sample: Sample) -> tuple[np.ndarray, int]:
    """The foreground (1) and background (0) of any mask, for ``mask_input``; a mask without
    foreground would blank its image, so it is a bad file (``on_bad_image``)."""
    mask = read_foreground(sample.mask)
    if not mask.any():
        raise DataSourceError(
            f"Mask '{sample.mask}' of image '{sample.path}' is all background (no non-zero "
            f"pixel): mask_input=apply would blank the whole image. Fix the mask, or leave "
            f"the image out (data.on_bad_image=skip lists it in skipped.csv)."
        )
    return mask, 2


def letterboxed_mask(
    sample: Sample, read: Callable[[Sample], tuple[np.ndarray, int]], size: int
) -> tuple[np.ndarray, int, bool]:
    """Read a sample's mask, check it has its image's size, letterbox it like the image to
    ``size``; with the number of values in its file and whether it is all background."""
    mask, levels = read(sample)
    shape = image_shape(sample.path)
    if mask.shape != shape:
        raise DataSourceError(
            f"Mask '{sample.mask}' is {mask.shape[0]}x{mask.shape[1]} pixels (height x "
            f"width) but its image '{sample.path}' is {shape[0]}x{shape[1]}; a mask must "
            f"have the size of its image (after the image's EXIF orientation)."
        )
    return letterbox_mask(mask, size), levels, not mask.any()


@dataclass(frozen=True)
class LoadedMasks:
    """What :func:`load_masks` read.

    Attributes:
        keep: indices of the samples whose mask is usable.
        masks: their ``(n, S, S)`` uint8 letterboxed masks.
        skipped: ``(mask file, reason)`` of the unusable ones (``on_bad_image="skip"``).
        findings: all-background masks, binary masks of many levels.
    """

    keep: list[int]
    masks: np.ndarray
    skipped: list[tuple[str, str]]
    findings: list[Finding]


def load_masks(
    samples: Sequence[Sample],
    reading: MaskReading,
    size: int,
    on_bad_image: str,
    workers: int | None = None,
) -> LoadedMasks:
    """Read, check and letterbox every sample's mask in threads.

    With ``on_bad_image="error"`` the first bad mask (in sample order) raises; with ``"skip"``
    its sample is left out and listed.

    Args:
        samples: the samples (each with a mask).
        reading: how a mask is read.
        size: the side the images are letterboxed to (the cache's).
        on_bad_image: ``error`` or ``skip``.
        workers: reading threads.
    """

    def one(sample: Sample) -> tuple[np.ndarray, int, bool] | DataSourceError:
        try:
            return letterboxed_mask(sample, reading.read, size)
        except DataSourceError as exc:  # ImageReadError too
            return exc

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, samples))
    keep: list[int] = []
    bad: list[tuple[str, str]] = []
    for i, (sample, result) in enumerate(zip(samples, results, strict=True)):
        if not isinstance(result, DataSourceError):
            keep.append(i)
        elif on_bad_image == "error":
            raise result
        else:
            bad.append((str(sample.mask), str(result)))
    if bad:
        log.warning(
            f"Skipped {len(bad)} image(s) whose mask cannot be used (on_bad_image=skip), "
            f"e.g. {bad[0][1]}"
        )
    kept = [results[i] for i in keep]
    if not kept:
        return LoadedMasks([], np.zeros((0, size, size), np.uint8), bad, [])
    findings = mask_findings(
        [samples[i].mask for i in keep],
        [r[2] for r in kept],
        [r[1] for r in kept],
        reading.binary_threshold,
    )
    return LoadedMasks(keep, np.stack([r[0] for r in kept]), bad, findings)


def crop_to_masks(
    images: np.ndarray, masks: np.ndarray, paths: Sequence[str], image_size: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each image cropped to its mask's foreground; an empty mask names its image."""
    empty = [str(paths[i]) for i, m in enumerate(masks) if not m.any()]
    if empty:
        raise DataSourceError(
            f"mask_input=crop needs bone in every mask, but {len(empty)} mask(s) are all "
            f"background: {shorten(empty)}. Fix or leave out those images.",
            details=empty,
        )
    return crop_to_foreground(images, masks, image_size, margin)
