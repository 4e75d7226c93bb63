"""The segmentation tree source: ``ROOT/images/*`` + ``ROOT/masks/*`` with the same file names.

Like the classification sources (:mod:`osteolightning.data.sources`), it lists samples without
decoding pixels, checks what it can see cheaply and never drops a file silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from osteolightning.data.io import check_on_bad_image
from osteolightning.data.sample import Sample
from osteolightning.data.sources import (
    MAX_REPORTED,
    SEGMENTATION_LAYOUT,
    absolute_path,
    not_an_image,
    report_skipped,
    scan_folder,
)
from osteolightning.errors import DataSourceError

log = logging.getLogger(__name__)


class SegmentationTreeSource:
    """A segmentation tree: ``ROOT/images/*`` and ``ROOT/masks/*`` with the same file names.

    Each image under ``images/`` (sub-folders too) is paired with the mask of the same path
    relative to ``masks/``; failing that, with the one mask of the same name without extension
    (``images/a/x.jpg`` + ``masks/a/x.png``) when exactly one image and one mask share it.
    Other entries of the root (a ``manifest.csv``, a README) are ignored, so a phantom folder
    is a segmentation tree too. System files are skipped and listed as in
    :class:`FolderSource`. An image without a mask, a mask without an image, an ambiguous pair
    or a non-image file is an error with ``on_bad_image="error"``; with ``"skip"`` it is left
    out and listed in :attr:`skipped` with the reason. Masks are not decoded here (see
    :func:`osteolightning.data.masks.read_mask`).

    Args:
        root: the tree's root folder.
        on_bad_image: ``"error"`` (default) or ``"skip"``.

    Attributes:
        skipped: after :meth:`samples`, ``(path, reason)`` of every file or folder left out,
            sorted by path.

    Raises:
        ConfigError: ``on_bad_image`` is not ``"error"`` or ``"skip"``.

    Example:
        >>> source = SegmentationTreeSource("data/knee-seg")  # doctest: +SKIP
        >>> source.samples(None)[0]  # doctest: +SKIP
        Sample(path=PosixPath('/abs/data/knee-seg/images/1.png'), label=-1,
               mask=PosixPath('/abs/data/knee-seg/masks/1.png'), ...)
    """

    def __init__(self, root: str | os.PathLike[str], on_bad_image: str = "error") -> None:
        self.root = absolute_path(root)
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.skipped: list[tuple[Path, str]] = []

    def describe(self) -> str:
        """One line saying what this source reads."""
        return f"segmentation tree {self.root} (ROOT/images/* + ROOT/masks/*)"

    def _fail(self, problem: str) -> DataSourceError:
        return DataSourceError(f"{problem}. Expected the layout {SEGMENTATION_LAYOUT}.")

    def samples(self, class_names: Sequence[str] | None = None) -> list[Sample]:
        """Pair every image with its mask, sorted by image path.

        Args:
            class_names: accepted for the source interface and not used: a segmentation
                tree carries no image-level labels (every label is ``-1``).

        Returns:
            One :class:`Sample` per image, with absolute ``path`` and ``mask``.

        Raises:
            DataSourceError: the root, ``images/`` or ``masks/`` is missing, or no image is
                found; (``"error"`` only) an image has no mask, a mask has no image, a name
                matches several files, or a file is not an image. The message names the
                files and the folder searched.
        """
        self.skipped = []
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise self._fail(f"Segmentation root '{self.root}' {what}")
        folders = {name: self.root / name for name in ("images", "masks")}
        absent = [f"'{name}/'" for name, folder in folders.items() if not folder.is_dir()]
        if absent:
            raise self._fail(f"Segmentation root '{self.root}' has no {' and no '.join(absent)}")
        images, ignored, not_images = scan_folder(folders["images"])
        masks, ignored_masks, not_masks = scan_folder(folders["masks"])
        ignored.extend(ignored_masks)
        not_images.extend(not_masks)
        pairs, problems = _pair_masks(images, masks, folders["images"], folders["masks"])
        problems.extend((p, not_an_image(p)) for p in not_images)
        if problems and self.on_bad_image == "error":
            error = self._fail(_pairing_report(problems))
            error.details = [f"{p}: {reason}" for p, reason in problems]
            raise error
        ignored.extend(problems)
        self.skipped = report_skipped(ignored, self.root)
        if not pairs:
            also = f" ({len(self.skipped)} file(s) skipped)" if self.skipped else ""
            raise self._fail(f"No image with a mask found under '{self.root}'{also}")
        return sorted(
            (Sample(path=image, mask=mask) for image, mask in pairs), key=lambda s: str(s.path)
        )


def _pair_masks(
    images: Sequence[Path], masks: Sequence[Path], image_dir: Path, mask_dir: Path
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Pair images with masks by relative path, else by unique relative path minus extension.

    Returns:
        ``(pairs, problems)``: ``(image, mask)`` pairs and ``(path, reason)`` of every image
        without a mask, mask without an image and file of an ambiguous name.
    """
    mask_by_rel = {m.relative_to(mask_dir).as_posix(): m for m in masks}
    pairs: list[tuple[Path, Path]] = []
    loose_images: dict[str, list[Path]] = {}
    for image in images:
        rel = image.relative_to(image_dir)
        mask = mask_by_rel.pop(rel.as_posix(), None)
        if mask is not None:
            pairs.append((image, mask))
        else:
            loose_images.setdefault(rel.with_suffix("").as_posix(), []).append(image)
    loose_masks: dict[str, list[Path]] = {}
    for rel, mask in mask_by_rel.items():
        loose_masks.setdefault(Path(rel).with_suffix("").as_posix(), []).append(mask)
    problems: list[tuple[Path, str]] = []
    for stem, found in loose_images.items():
        candidates = loose_masks.pop(stem, [])
        if len(found) == 1 and len(candidates) == 1:
            pairs.append((found[0], candidates[0]))
        elif not candidates:
            problems.extend(
                (p, f"no mask named '{p.name}' or '{p.stem}.*' in '{mask_dir}'") for p in found
            )
        else:
            names = ", ".join(f"'{p}'" for p in (*found, *candidates))
            reason = f"ambiguous name '{stem}.*': {names} cannot be paired one to one"
            problems.extend((p, reason) for p in (*found, *candidates))
    for stem, orphans in loose_masks.items():
        problems.extend(
            (p, f"no image named '{p.name}' or '{Path(stem).name}.*' in '{image_dir}'")
            for p in orphans
        )
    return pairs, problems


def _pairing_report(problems: Sequence[tuple[Path, str]]) -> str:
    """One message listing (up to ten) unpaired, ambiguous or non-image files."""
    shown = "\n  ".join(f"'{p}': {reason}" for p, reason in problems[:MAX_REPORTED])
    more = (
        f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    )
    return (
        f"{len(problems)} file(s) of the segmentation tree cannot be used:\n  {shown}{more}\n"
        "Every image needs exactly one mask and every mask one image (or set "
        "data.on_bad_image=skip to leave such files out and list them in skipped.csv)"
    )
