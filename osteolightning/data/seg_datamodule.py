"""The segmentation DataModule: images with label masks, split and cached like the classifier's.

:class:`SegmentationDataModule` is a :class:`~osteolightning.data.datamodule.KneeDataModule`
whose classes are the *mask* classes (e.g. ``[background, femur, tibia, fibula, patella]`` or
``[background, bone]``). It shares everything else with the classifier's DataModule: the
sources, the preprocessed-image cache, leakage-free grouped splits (patients and copies never
straddle splits), DDP samplers, ``skipped`` and ``split_rows``. At setup every mask is read
(:func:`~osteolightning.data.masks.read_mask`), checked against its image (same height and
width, values in range) and letterboxed with the image's geometry, in threads. Training
augmentation is joint: albumentations moves image and mask together (nearest-neighbour for
the mask) and intensity transforms touch the image only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from osteolightning.data.datamodule import KneeDataModule
from osteolightning.data.datasets import ArrayDataset
from osteolightning.data.folders import FolderSource
from osteolightning.data.mask_inputs import MaskReading
from osteolightning.data.masks import check_mask_format, check_mask_threshold, read_mask_info
from osteolightning.data.plan import DataTask
from osteolightning.data.sample import Sample
from osteolightning.data.sampling import Key, split_key
from osteolightning.data.splits import SPLIT_NAMES
from osteolightning.data.transforms import ToNormalizedTensor
from osteolightning.errors import ConfigError

__all__ = ["MaskArrayDataset", "SegmentationDataModule"]


class MaskArrayDataset(ArrayDataset):
    """Preprocessed uint8 images with their letterboxed label masks.

    Each item is ``{"image": (C, H, W) float32, "mask": (H, W) int64, "index": int64,
    "path": str}``; ``index`` points into the DataModule's ``samples``.

    Args:
        images: ``(N, S, S)`` uint8 images.
        masks: ``(N, S, S)`` uint8 class indices, aligned with ``images``.
        indices: ``(N,)`` indices into the DataModule's samples.
        to_tensor: scaling and normalisation of the image.
        augment: albumentations pipeline applied jointly (``augment(image=..., mask=...)``).
        paths: the image files, to name a batch's files.
        labels: ``(N,)`` image-level labels (``-1`` when unknown), kept for reference.
        seed: the run's seed; each item's augmentation is seeded from it, the epoch and the
            image (as in :class:`~osteolightning.data.datamodule.ArrayDataset`).
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        indices: np.ndarray,
        to_tensor: ToNormalizedTensor,
        augment: A.Compose | None = None,
        paths: Sequence[str] | None = None,
        labels: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        if images.shape != masks.shape:
            raise ValueError(
                f"Expected images and masks of the same shape, but got {images.shape} and "
                f"{masks.shape}."
            )
        if labels is None:
            labels = np.full(len(indices), -1, np.int64)
        super().__init__(images, labels, indices, to_tensor, augment, paths, seed)
        self.masks = masks

    def __getitem__(self, key: int | Key) -> dict[str, Any]:
        i, epoch = split_key(key)
        image, mask = self.images[i], self.masks[i]  # (H, W) uint8 each
        if self.augment is not None:
            self.seed_augment(i, epoch)
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": self.to_tensor(image),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "index": torch.tensor(self.indices[i], dtype=torch.long),
            "path": self.paths[i],
        }


def _read_mask(sample: Sample, classes: int, fmt: str, threshold: int) -> tuple[np.ndarray, int]:
    """A sample's mask as class indices and its file's number of values."""
    return read_mask_info(sample.mask, classes, fmt, threshold)


class SegmentationDataModule(KneeDataModule):
    """Knee radiographs with label masks, for bone segmentation.

    Takes every argument of :class:`~osteolightning.data.datamodule.KneeDataModule`
    (``mask_input`` and ``sampler`` excepted), with ``class_names`` naming the *mask* classes
    in index order, class 0 being the background. Samples need no image-level label; the split
    is stratified by label when every sample has one (see ``label_names``), else drawn as one
    stratum, and always grouped by patient and by copies. Every sample needs a mask (a
    manifest's ``mask`` column, a :class:`~osteolightning.data.seg_sources.SegmentationTreeSource`,
    the phantom), of its image's height and width, with values in range; a bad mask stops the
    run naming the file (``on_bad_image="error"``) or is left out and listed in
    :attr:`skipped` (``"skip"``). Identical images with different masks are a conflict, like
    copies with different labels in classification (``on_label_conflict``: ``drop`` the group,
    ``keep`` it inside one split, or stop with an ``error`` naming the files; listed in
    ``label_conflicts.csv``).

    Args:
        source: a data source whose samples carry masks.
        class_names: the mask classes, in index order (2 to 256 names).
        mask_format: ``"label"`` (pixel value = class index) or ``"binary"`` (gray level
            above ``mask_threshold`` = class 1; needs two class names); see
            :mod:`osteolightning.data.masks`.
        mask_threshold: the gray level (0..254) of a ``binary`` mask above which a pixel is
            foreground.
        label_names: the image-level classes of the source's ``label`` column, read only to
            stratify the split (e.g. ``[normal, osteopenia, osteoporosis]`` for the phantom);
            ``None`` (default) reads no labels.
        mask_classes: the mask classes as the data config names them (``data.mask_classes``);
            when given they must equal ``class_names``.
        train_crop: side of random training crops of image and mask (``None``: whole
            images); validation and test see the whole ``image_size`` square, so pair it with
            ``model.inference=sliding_window model.roi_size=<train_crop>``.
        **kwargs: the other arguments of :class:`KneeDataModule`.

    Attributes:
        masks: after :meth:`setup`, the letterboxed ``(N, S, S)`` uint8 masks of
            :attr:`samples`.

    Raises:
        ConfigError: a class-folder source (it has no masks), a bad ``mask_format`` / ``mask_threshold`` / class count, ``mask_classes``
            other than ``class_names``, ``mask_input`` set, or ``sampler`` set (samples carry
            no class to balance).

    Example:
        >>> from osteolightning.data.seg_sources import SegmentationTreeSource
        >>> dm = SegmentationDataModule(  # doctest: +SKIP
        ...     SegmentationTreeSource("data/knee-seg"), ["background", "bone"],
        ...     mask_format="binary", image_size=224)
        >>> dm.setup(); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
        >>> batch["image"].shape, batch["mask"].shape  # doctest: +SKIP
        (torch.Size([32, 1, 224, 224]), torch.Size([32, 224, 224]))
    """

    def __init__(
        self,
        source: Any,
        class_names: Sequence[str],
        mask_format: str = "label",
        mask_threshold: int = 127,
        label_names: Sequence[str] | None = None,
        mask_classes: Sequence[str] | None = None,
        train_crop: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("mask_input", "sampler"):
            if kwargs.get(name) is not None:
                raise ConfigError(
                    f"Expected argument `{name}` to be null for segmentation, but got "
                    f"{kwargs[name]!r}: "
                    + (
                        "the masks are the targets here, not an input filter."
                        if name == "mask_input"
                        else "segmentation samples carry no class to balance."
                    )
                )
        if isinstance(source, FolderSource):
            raise ConfigError(
                f"A class-folder tree ({source.root}) holds no masks; segmentation reads a "
                f"segmentation tree ROOT/images/* + ROOT/masks/* (data=seg_folder) or a CSV "
                f"manifest with a mask column (data=seg_manifest)."
            )
        if mask_classes is not None and [str(c) for c in mask_classes] != [
            str(c) for c in class_names
        ]:
            raise ConfigError(
                f"Expected `class_names` to be the mask classes {list(mask_classes)} "
                f"(data.mask_classes), but got {list(class_names)}: a segmentation run's classes "
                f"are its mask classes (common=segmentation sets class_names: "
                f"${{data.mask_classes}})."
            )
        super().__init__(source, class_names, **kwargs)
        self.mask_format = check_mask_format(mask_format, len(self.class_names))
        self.mask_threshold = check_mask_threshold(mask_threshold)
        self._label_source = [str(c) for c in label_names] if label_names is not None else None
        self.label_names = self._label_source or []
        if train_crop is not None:
            size = int(kwargs.get("image_size", 224))
            if not 32 <= int(train_crop) <= size:
                raise ConfigError(
                    f"Expected argument `train_crop` between 32 and image_size={size} (the side "
                    f"of the random training crops), but got {train_crop}."
                )
            # Random crops of image and mask together, before the other augmentations: the
            # network trains on tiles and infers with model.inference=sliding_window.
            crop = A.RandomCrop(int(train_crop), int(train_crop))
            augment = self.train_augment
            self.train_augment = A.Compose([crop, *(augment.transforms if augment else [])])
        self.train_crop = train_crop

    # -- hooks of KneeDataModule -----------------------------------------------------------
    def task(self) -> DataTask:
        """Labels only where ``label_names`` are given; a mask each, read as class indices (an
        all-background mask is kept: a warning of the summary; all of them empty is an
        error); copies must carry the same mask."""
        reading = MaskReading(
            "Segmentation",
            partial(
                _read_mask,
                classes=len(self.class_names),
                fmt=self.mask_format,
                threshold=self.mask_threshold,
            ),
            self.mask_threshold if self.mask_format == "binary" else None,
        )
        labels = tuple(self._label_source) if self._label_source is not None else None
        return DataTask(tuple(self.label_names), labels, False, reading, masks_agree=True)

    def _make_dataset(
        self, split_name: str, sel: np.ndarray, images: np.ndarray, labels: np.ndarray
    ) -> Dataset:
        augment = self.train_augment if split_name == "train" else self.eval_augment
        assert self.masks is not None  # set by setup() before the datasets are made
        return MaskArrayDataset(
            images,
            self.masks[sel],
            sel,
            self.to_tensor,
            augment,
            paths=[str(self.samples[i].path) for i in sel],
            labels=labels,
            seed=self.loader.seed,
        )

    # -- facts other layers read -----------------------------------------------------------
    def class_fractions(self, split: str = "train") -> list[float]:
        """Mean fraction of each image's pixels per mask class in ``split``.

        Measured on the letterboxed network input (padding counts as background).

        Returns:
            One fraction per class (class-index order), summing to 1; zeros for an empty split.
        """
        masks = self.datasets[split].masks
        if len(masks) == 0:
            return [0.0] * len(self.class_names)
        counts = np.bincount(masks.ravel(), minlength=len(self.class_names))
        return (counts / masks.size).tolist()

    def class_counts(self, split: str = "train") -> list[int]:
        """Number of images in ``split`` in which each mask class appears (class-index order)."""
        masks = self.datasets[split].masks
        present = np.zeros(len(self.class_names), dtype=np.int64)
        for mask in masks:
            present += np.bincount(mask.ravel(), minlength=len(self.class_names)) > 0
        return present.tolist()

    def summary(self) -> str:
        dropped = sum(1 for row in self.conflicts if row[3] == "dropped")
        lines = [
            f"Data: {self.source.describe()}: {len(self.samples)} images with masks, "
            f"{len(np.unique(self.groups))} independent groups; mask classes "
            f"{', '.join(self.class_names)} ({self.mask_format} masks)."
        ]
        for name in SPLIT_NAMES:
            fractions = self.class_fractions(name)
            areas = ", ".join(
                f"{c}={f:.3f}" for c, f in zip(self.class_names, fractions, strict=True)
            )
            lines.append(
                f"  {name:5s}: {len(self.datasets[name]):5d} images; mean area fraction {areas}"
            )
        if self.skipped or dropped:
            lines.append(
                f"  left out: {len(self.skipped)} unreadable files or masks (skipped.csv), "
                f"{dropped} images with conflicting labels (label_conflicts.csv)"
            )
        return "\n".join(lines + [f"  WARNING: {f.message}" for f in self.findings])
