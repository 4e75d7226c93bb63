"""What a classification DataModule does with each image's mask: read, check and letterbox it
like its image, then nothing, zero the image outside it (``mask_input="apply"``) or crop the
image to it (``mask_input="crop"``). A mixin of :class:`~osteolightning.data.datamodule.KneeDataModule`
(the segmentation DataModule overrides the reading hooks).

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

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from osteolightning.data.masks import (
    crop_to_foreground,
    image_shape,
    letterbox_mask,
    read_foreground,
)
from osteolightning.data.quality import mask_findings
from osteolightning.data.sample import Sample
from osteolightning.errors import DataSourceError, shorten
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


class MaskInputs:
    """Mask handling of a DataModule (attributes from :class:`KneeDataModule`)."""

    def _uses_masks(self) -> bool:
        return self.require_masks or self.mask_input is not None

    def _mask_use(self) -> str:
        """What the masks are for, for error messages."""
        return f"mask_input={self.mask_input}"

    def _read_sample_mask(self, sample: Sample) -> tuple[np.ndarray, int]:
        """One sample's mask at its original resolution, ``(H, W)`` uint8, and the number of
        distinct values in its file (hook; judged only for binary masks).

        Here the foreground (1) and background (0) of any mask, for ``mask_input="apply"``; a
        mask without foreground would blank its image, so it is a bad file (``on_bad_image``).
        """
        mask = read_foreground(sample.mask)
        if not mask.any():
            raise DataSourceError(
                f"Mask '{sample.mask}' of image '{sample.path}' is all background (no non-zero "
                f"pixel): mask_input=apply would blank the whole image. Fix the mask, or leave "
                f"the image out (data.on_bad_image=skip lists it in skipped.csv)."
            )
        return mask, 2

    def _binary_threshold(self) -> int | None:
        """The threshold of binary masks, whose gray levels are judged (hook); else None."""
        return None

    def _letterboxed_mask(self, sample: Sample) -> tuple[np.ndarray, int, bool]:
        """Read a sample's mask, check it has its image's size, letterbox it like the image;
        with the number of values in its file and whether it is all background."""
        mask, levels = self._read_sample_mask(sample)
        shape = image_shape(sample.path)
        if mask.shape != shape:
            raise DataSourceError(
                f"Mask '{sample.mask}' is {mask.shape[0]}x{mask.shape[1]} pixels (height x "
                f"width) but its image '{sample.path}' is {shape[0]}x{shape[1]}; a mask must "
                f"have the size of its image (after the image's EXIF orientation)."
            )
        return letterbox_mask(mask, self.cache.image_size), levels, not mask.any()

    def _load_masks(self, samples: list[Sample]) -> tuple[list[Sample], np.ndarray]:
        """Read, check and letterbox every sample's mask in threads.

        With ``on_bad_image="error"`` the first bad mask (in sample order) raises; with
        ``"skip"`` its sample is left out and listed in :attr:`skipped`.

        Returns:
            The samples whose mask is usable and their ``(N, S, S)`` uint8 masks.
        """

        def one(sample: Sample) -> tuple[np.ndarray, int, bool] | DataSourceError:
            try:
                return self._letterboxed_mask(sample)
            except DataSourceError as exc:  # ImageReadError too
                return exc

        with ThreadPoolExecutor(self.cache.workers) as pool:
            results = list(pool.map(one, samples))
        keep: list[int] = []
        bad: list[tuple[str, str]] = []
        for i, (sample, result) in enumerate(zip(samples, results, strict=True)):
            if not isinstance(result, DataSourceError):
                keep.append(i)
            elif self.on_bad_image == "error":
                raise result
            else:
                bad.append((str(sample.mask), str(result)))
        if bad:
            log.warning(
                f"Skipped {len(bad)} image(s) whose mask cannot be used (on_bad_image=skip), "
                f"e.g. {bad[0][1]}"
            )
            self.skipped.extend(bad)
        if not keep:
            raise DataSourceError(
                f"The data source {self.source.describe()} yielded no image with a usable mask "
                f"({len(self.skipped)} skipped)."
            )
        self.digests = [self.digests[i] for i in keep]
        kept = [results[i] for i in keep]
        self.findings += mask_findings(
            [samples[i].mask for i in keep],
            [r[2] for r in kept],
            [r[1] for r in kept],
            self._binary_threshold(),
        )
        return [samples[i] for i in keep], np.stack([r[0] for r in kept])

    def _crop_to_masks(
        self, images: np.ndarray, masks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each image cropped to its mask's foreground; an empty mask names its image."""
        empty = [str(self.samples[i].path) for i, m in enumerate(masks) if not m.any()]
        if empty:
            raise DataSourceError(
                f"mask_input=crop needs bone in every mask, but {len(empty)} mask(s) are all "
                f"background: {shorten(empty)}. Fix or leave out those images.",
                details=empty,
            )
        return crop_to_foreground(images, masks, self.image_size, self.mask_crop_margin)
