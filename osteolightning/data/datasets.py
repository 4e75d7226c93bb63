"""The datasets the DataModules hand to their loaders: preprocessed images, memory-mapped from
the cache (:class:`~osteolightning.data.arrays.MappedImages`) or, where a mask changed them,
in memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from osteolightning.data.sampling import Key, item_seed, seed_pipeline, split_key
from osteolightning.data.transforms import ToNormalizedTensor


class ArrayDataset(Dataset):
    """Preprocessed uint8 images with labels.

    Each item is ``{"image": (C, H, W) float32, "label": int64, "index": int64, "path": str}``
    where ``index`` points into the DataModule's ``samples`` (to name the file in predictions),
    and, where given, ``"target"`` (float32, NaN when unknown: the regression target),
    ``"covariates"`` (``(P,)`` float32, NaN when unknown: age, sex, BMI, ...) and ``"mask"``
    (``(H, W)`` int64, the image's mask, moved with the image by the augmentation).
    An item is asked for by its position or by ``(position, epoch)``
    (:class:`~osteolightning.data.sampling.WithEpoch`); its augmentation is seeded from
    ``(seed, epoch, index)``, so it is the same in any worker process and any run of the seed.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        to_tensor: ToNormalizedTensor,
        augment: A.Compose | None = None,
        paths: Sequence[str] | None = None,
        seed: int = 0,
        keys: Sequence[str] | None = None,
        groups: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        covariates: np.ndarray | None = None,
        masks: np.ndarray | None = None,
    ) -> None:
        self.images, self.labels, self.indices = images, labels, indices
        self.paths = list(paths) if paths is not None else [""] * len(indices)
        self.to_tensor, self.augment, self.seed = to_tensor, augment, int(seed)
        self.keys = list(keys) if keys is not None else None
        self.groups = np.asarray(groups) if groups is not None else np.asarray(indices)
        self.targets, self.covariates, self.masks = targets, covariates, masks

    def __len__(self) -> int:
        return len(self.indices)

    def seed_augment(self, i: int, epoch: int) -> None:
        """Seed the augmentation for item ``i`` in ``epoch``."""
        if self.augment is not None:
            seed_pipeline(self.augment, item_seed(self.seed, epoch, int(self.indices[i])))

    def __getitem__(self, key: int | Key) -> dict[str, Any]:
        i, epoch = split_key(key)
        image = self.images[i]  # (H, W) uint8
        mask = self.masks[i] if self.masks is not None else None  # (H, W) uint8
        if self.augment is not None:
            self.seed_augment(i, epoch)
            moved = self.augment(image=image, **({"mask": mask} if mask is not None else {}))
            image, mask = moved["image"], moved.get("mask")
        return {
            "image": self.to_tensor(image),
            "label": torch.tensor(self.labels[i], dtype=torch.long),
            "index": torch.tensor(self.indices[i], dtype=torch.long),
            "path": self.paths[i],  # names the files of a batch whose loss turns NaN
            # the pixels' identity (file content, preprocessing, mask): what a feature cache
            # is keyed on, unless the item was augmented
            **({"key": self.keys[i]} if self.keys is not None else {}),
            "augmented": self.augment is not None,
            "group": torch.tensor(self.groups[i], dtype=torch.long),  # patient / copy group
            **self._values(i),
            **(
                {"mask": torch.from_numpy(np.ascontiguousarray(mask)).long()}
                if mask is not None
                else {}
            ),
        }

    def _values(self, i: int) -> dict[str, torch.Tensor]:
        """The item's regression target and covariates, where the dataset has them."""
        out = {}
        if self.targets is not None:
            out["target"] = torch.tensor(self.targets[i], dtype=torch.float32)
        if self.covariates is not None:
            out["covariates"] = torch.as_tensor(self.covariates[i], dtype=torch.float32)
        return out
