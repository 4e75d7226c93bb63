"""The LightningDataModule: the holder of a data set's plan (:mod:`.plan`), its cache and its
loaders, and of the device path of training batches (:mod:`.on_device`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from osteolightning.data.cache import PreprocessedCache
from osteolightning.data.columns import Coding, Columns, ColumnSpec, split_values, values_summary
from osteolightning.data.datasets import ArrayDataset
from osteolightning.data.folders import source_at
from osteolightning.data.hygiene import log_copies
from osteolightning.data.mask_inputs import MaskReading, read_foreground_mask
from osteolightning.data.near_duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
from osteolightning.data.on_device import DevicePath, transfer_batch
from osteolightning.data.plan import DataPlan, DataTask, list_samples, plan_data, split_rows
from osteolightning.data.sampling import make_loader
from osteolightning.data.specs import (
    MASK_INPUTS,
    SAMPLERS,
    DeviceSpec,
    HygieneSpec,
    InputSpec,
    LoaderSpec,
    SplitSpec,
)
from osteolightning.data.splits import EXCLUDED, SPLIT_NAMES
from osteolightning.data.transforms import ToNormalizedTensor, compose
from osteolightning.utils.logging import get_logger

__all__ = ["MASK_INPUTS", "SAMPLERS", "ArrayDataset", "KneeDataModule"]

log = get_logger(__name__)


class KneeDataModule(L.LightningDataModule):
    """Knee radiographs from any source, split without leakage, cached once, augmented on the fly.

    Images of one patient and byte-identical copies of one image always land in the same split
    (see :mod:`osteolightning.data.splits`). The keyword arguments are the flat keys of the
    ``data:`` config (``osteolightning/conf/data/_knee.yaml`` explains each); they are checked and grouped
    here into :attr:`split`, :attr:`hygiene`, :attr:`inputs`, :attr:`loader`, :attr:`device`
    (:mod:`osteolightning.data.specs`) and :attr:`column_spec`
    (:class:`~osteolightning.data.columns.ColumnSpec`).

    Args:
        source: an object with ``samples(class_names) -> list[Sample]`` and ``describe()``
            (class folders, CSV manifest, phantom; see :mod:`osteolightning.data.sources`);
            ``None``: the source at ``root``.
        class_names: the classes, in label-index order.
        root: the data location as given on the command line (``data.root=DIR``). The data
            configs' source interpolates it (``${data.root}``); without a ``source`` the
            DataModule reads it itself: a CSV manifest (``.csv``) or a class-folder tree, as
            ``osteo-data audit ROOT`` does.
        cache_dir: where preprocessed arrays are kept.
        train_transforms: albumentations transforms for training images.
        eval_transforms: albumentations transforms for val/test images (usually none).
        image_size, in_chans, mean, std, images, mask_input, mask_crop_from,
            mask_crop_margin: the network inputs (:class:`~osteolightning.data.specs.InputSpec`).
        batch_size, num_workers, pin_memory, sampler, drop_last, seed: the loaders
            (:class:`~osteolightning.data.specs.LoaderSpec`).
        val_fraction, test_fraction, split_seed, num_folds, fold, inner_folds, inner_fold,
            train_fraction, permute_labels, evaluate_all: the split
            (:class:`~osteolightning.data.specs.SplitSpec`).
        on_bad_image, on_label_conflict, on_record_conflict, near_duplicate_distance,
            near_duplicate_correlation: bad files and copies
            (:class:`~osteolightning.data.specs.HygieneSpec`).
        on_device: the GPU data path of training batches
            (:class:`~osteolightning.data.specs.DeviceSpec`).
        target, covariates, covariate_coding, separating_threshold, allow_separating: the
            value columns every item carries (:class:`~osteolightning.data.columns.ColumnSpec`).

    Attributes:
        plan: after :meth:`setup`, the :class:`~osteolightning.data.plan.DataPlan` (its
            samples, masks, digests, groups, ... are also attributes of the DataModule).
        datasets: after :meth:`setup`, the dataset of each split.
        label_names: names of the image-level labels (``class_names`` here), used for
            conflicts and ``split_rows``.
    """

    def __init__(
        self,
        source: Any,
        class_names: Sequence[str],
        image_size: int = 224,
        in_chans: int = 1,
        mean: Sequence[float] = (0.449,),
        std: Sequence[float] = (0.226,),
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_folds: int | None = None,
        fold: int = 0,
        evaluate_all: bool = False,
        cache_dir: str | Path = ".cache/preprocessed",
        train_transforms: Sequence[A.BasicTransform] | None = None,
        eval_transforms: Sequence[A.BasicTransform] | None = None,
        pin_memory: bool = False,
        root: str | None = None,
        on_bad_image: str = "error",
        on_label_conflict: str = "drop",
        near_duplicate_distance: int | None = DEFAULT_MAX_DISTANCE,
        near_duplicate_correlation: float = DEFAULT_MIN_CORRELATION,
        sampler: str | None = None,
        mask_input: str | None = None,
        seed: int = 0,
        drop_last: bool = True,
        mask_crop_from: int | None = None,
        mask_crop_margin: float = 0.05,
        inner_folds: int | None = None,
        inner_fold: int = 0,
        train_fraction: float = 1.0,
        permute_labels: int | None = None,
        target: str | None = None,
        covariates: Sequence[str] | str = (),
        on_device: str | None = None,
        covariate_coding: dict[str, Any] | None = None,
        separating_threshold: float | None = 0.95,
        allow_separating: Sequence[str] = (),
        on_record_conflict: str = "drop",
        images: bool = True,
    ) -> None:
        super().__init__()
        self.loader = LoaderSpec(
            batch_size, num_workers, bool(pin_memory), sampler, bool(drop_last), int(seed)
        )
        self.inputs = InputSpec(
            int(image_size), int(in_chans), tuple(mean), tuple(std), bool(images),
            mask_input, mask_crop_from, float(mask_crop_margin),
        )  # fmt: skip
        self.split = SplitSpec(
            val_fraction, test_fraction, split_seed, num_folds, fold, inner_folds, inner_fold,
            float(train_fraction), permute_labels, bool(evaluate_all),
        )  # fmt: skip
        self.hygiene = HygieneSpec(
            on_bad_image, on_label_conflict, on_record_conflict,
            near_duplicate_distance, near_duplicate_correlation,
        )  # fmt: skip
        if source is None and root is not None:
            source = source_at(root, on_bad_image)
        self.source = source
        self.class_names = [str(c) for c in class_names]
        self.label_names: list[str] = self.class_names
        self.cache = PreprocessedCache(cache_dir, self.inputs.cache_size)
        self.to_tensor = ToNormalizedTensor(self.inputs.mean, self.inputs.std, self.inputs.in_chans)
        self.train_augment = compose(train_transforms)
        self.eval_augment = compose(eval_transforms)
        self.device = DeviceSpec(on_device)
        self.device_path = DevicePath(self.device, self.to_tensor, self.train_augment, seed)
        self.column_spec = ColumnSpec.of(
            target, covariates, covariate_coding, separating_threshold, allow_separating
        )
        spec = self.column_spec
        covariates_now = () if spec.covariates == "all" else spec.covariates
        self.columns = Columns(spec.target, covariates_now, dict(spec.coding or {}))
        self.plan = DataPlan()
        self.datasets: dict[str, Dataset] = {}
        self._values: np.ndarray | None = None

    # -- the plan ----------------------------------------------------------------------------
    def task(self) -> DataTask:
        """What this task asks of its samples (hook): a label each, and a mask each where
        ``mask_input`` uses them."""
        use = self.inputs.mask_input
        masks = MaskReading(f"mask_input={use}", read_foreground_mask) if use else None
        names = tuple(self.label_names)
        return DataTask(label_names=names, read_labels=names, masks=masks)

    def prepare_data(self) -> None:
        """Validate the source and decode every image into the cache (local rank 0 only);
        nothing to do once :meth:`setup` has run in this process (the entry point sets up
        before fitting: it reads the training split's class counts)."""
        if self.datasets:
            return
        samples = list_samples(self.source, self.task())
        self.cache.prepare([s.path for s in samples], on_bad_image=self.hygiene.on_bad_image)

    def setup(self, stage: str | None = None) -> None:
        """Plan the data set and make the datasets of its splits (every rank)."""
        if self.datasets:
            return
        plan = plan_data(
            self.source, self.task(), self.cache, self.hygiene, self.split, self.inputs,
            self.column_spec,
        )  # fmt: skip
        base = len(plan.copies.conflicts)  # record-conflict groups follow the label ones
        records = [row for row in plan.conflicts if row[0] >= base]
        log_copies(plan.copies, self.hygiene.on_label_conflict, records)
        if self.split.permute_labels is not None:
            log.warning(
                f"data.permute_labels={self.split.permute_labels}: the labels are shuffled "
                "between image groups (a permutation test's null run); its metrics measure "
                "chance."
            )
        self.plan, self.columns, self._values = plan, plan.columns, None
        for code, name in enumerate(SPLIT_NAMES):
            sel = np.flatnonzero(plan.split_codes == code)
            self.datasets[name] = self._make_dataset(name, sel, plan.images[sel], plan.labels[sel])
        (log.warning if plan.findings else log.info)(self.summary())

    def _make_dataset(
        self, split_name: str, sel: np.ndarray, images: np.ndarray, labels: np.ndarray
    ) -> Dataset:
        """The dataset of split ``split_name`` (hook): the samples ``sel`` (indices into
        :attr:`samples`), their ``(n, S, S)`` uint8 ``images`` and their ``labels``."""
        augment = self.train_augment if split_name == "train" else self.eval_augment
        values, t = self.values(), int(bool(self.target))
        return ArrayDataset(
            images,
            labels,
            sel,
            self.to_tensor,
            augment,
            paths=[str(self.samples[i].path) for i in sel],
            seed=self.loader.seed,
            keys=[self.plan.pixel_keys[i] for i in sel],
            groups=self.groups[sel],
            targets=values[sel, 0] if self.target else None,
            covariates=values[sel, t:] if self.covariates else None,
            masks=self.masks[sel] if self.inputs.mask_input == "provide" else None,
        )

    # -- the plan's values, as the other layers read them -----------------------------------
    samples = property(lambda self: self.plan.samples, doc="The kept samples.")
    masks = property(lambda self: self.plan.masks, doc="Their ``(N, S, S)`` masks or None.")
    digests = property(lambda self: self.plan.digests, doc="Their files' SHA-1.")
    groups = property(lambda self: self.plan.groups, doc="Their ``(N,)`` independent groups.")
    split_codes = property(lambda self: self.plan.split_codes, doc="Their ``(N,)`` splits.")
    skipped = property(lambda self: self.plan.skipped, doc="``(path, reason)`` left out.")
    findings = property(lambda self: self.plan.findings, doc="Valid but suspicious input.")
    conflicts = property(lambda self: self.plan.conflicts, doc="``label_conflicts.csv`` rows.")
    images = property(lambda self: self.inputs.images, doc="Whether pixels are decoded.")
    target = property(lambda self: self.columns.target, doc="The target column or None.")
    covariates = property(lambda self: list(self.columns.covariates), doc="Covariate columns.")

    def values(self) -> np.ndarray:
        """``(N, T + P')`` float64 values of :attr:`samples`: the target column (``T = 1`` when
        one is set) then the encoded covariates; NaN where unknown. Parsed once."""
        if self._values is None or len(self._values) != len(self.samples):
            self._values = self.columns.values(self.samples, self.source.describe())
        return self._values

    def covariate_coding(self) -> Coding:  # how each covariate becomes numbers
        return dict(self.columns.coding)

    def covariate_names(self) -> list[str]:  # a category's one-hot columns: name=level
        return self.columns.names()

    def split_values(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """The target ``(n,)`` and covariates ``(n, P)`` of one split's images."""
        return split_values(self.datasets[split])

    def require_target(self) -> None:  # DataSourceError: the model's target is not in the data
        self.columns.require_target(self.samples, self.source.describe())

    def class_counts(self, split: str = "train") -> list[int]:
        """Number of images per class in ``split`` (label-index order)."""
        counts = Counter(self.datasets[split].labels.tolist())
        return [counts.get(i, 0) for i in range(len(self.class_names))]

    def split_rows(self) -> list[tuple[str, str, str, str, int, str]]:
        """One row per image for the run's ``splits.csv`` (:func:`~.plan.split_rows`)."""
        return split_rows(self.plan, self.label_names)

    def summary(self) -> str:
        dropped = sum(1 for row in self.conflicts if row[3] == "dropped")
        lines = [
            f"Data: {self.source.describe()}: {len(self.samples)} images, "
            f"{len(np.unique(self.groups))} independent groups."
        ]
        for name in SPLIT_NAMES:
            counts = self.class_counts(name)
            per_class = ", ".join(f"{c}={n}" for c, n in zip(self.class_names, counts, strict=True))
            lines.append(f"  {name:5s}: {sum(counts):5d} ({per_class})")
        excluded = int((self.split_codes == EXCLUDED).sum())
        if excluded:
            lines.append(
                f"  not used: {excluded} (an outer test fold of nested CV, or left out of a "
                "learning curve's training share; listed as `excluded` in splits.csv)"
            )
        if self.skipped or dropped:
            lines.append(
                f"  left out: {len(self.skipped)} unreadable or non-image files (skipped.csv), "
                f"{dropped} copies with conflicting labels or records (label_conflicts.csv)"
            )
        lines += values_summary(self.columns, self.datasets)
        return "\n".join(lines + [f"  WARNING: {f.message}" for f in self.findings])

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        if train and self.device.on_device:
            device = self.trainer.strategy.root_device if self.trainer is not None else None
            dataset = self.device_path.loader_dataset(dataset, len(self.samples), device)
        return make_loader(dataset, self.loader, train, self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # -- the device path (Lightning's batch hooks) -------------------------------------------
    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """A batch dict's tensors moved to ``device``, its lists of names as they are
        (:func:`~osteolightning.data.on_device.transfer_batch`); other batches: Lightning's."""
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return transfer_batch(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        epoch = int(self.trainer.current_epoch) if self.trainer is not None else 0
        return self.device_path.before_transfer(batch, epoch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.device_path.after_transfer(batch)
