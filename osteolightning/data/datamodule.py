"""The LightningDataModule: any source → validated samples → cached arrays → leakage-free splits."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from osteolightning.data.cache import PREPROCESS_VERSION, PreprocessedCache
from osteolightning.data.columns import ColumnValues
from osteolightning.data.datasets import ArrayDataset
from osteolightning.data.hygiene import (
    POLICIES,
    apply_conflict_policy,
    apply_record_policy,
    conflict_rows,
    find_copies,
    log_copies,
)
from osteolightning.data.io import check_on_bad_image
from osteolightning.data.mask_inputs import MaskInputs
from osteolightning.data.near_duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
from osteolightning.data.on_device import DeviceData
from osteolightning.data.privacy import dicom_patient_id, pseudonym
from osteolightning.data.quality import Finding, image_findings
from osteolightning.data.sample import Sample
from osteolightning.data.sampling import train_sampler
from osteolightning.data.splits import (
    EXCLUDED,
    SPLIT_NAMES,
    TEST,
    crossing_groups,
    group_ids,
    permute_group_labels,
    split_codes,
    split_name,
    split_warnings,
)
from osteolightning.data.transforms import ToNormalizedTensor, compose
from osteolightning.errors import ConfigError, DataSourceError, shorten
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: training samplers by ``sampler`` name (``None``: shuffle).
SAMPLERS = (None, "balanced")
#: what a classifier does with each sample's mask: nothing, zero the image outside it, crop
#: the image to it, or hand it to the model beside the unchanged image (``batch["mask"]``).
MASK_INPUTS = (None, "apply", "crop", "provide")


class KneeDataModule(MaskInputs, ColumnValues, DeviceData, L.LightningDataModule):
    """Knee radiographs from any source, split without leakage, cached once, augmented on the fly.

    Images of one patient and byte-identical copies of one image always land in the same split
    (see :mod:`osteolightning.data.splits`).

    Args:
        source: an object with ``samples(class_names) -> list[Sample]`` (class folders, CSV
            manifest, phantom; see :mod:`osteolightning.data.sources`).
        class_names: the classes, in label-index order.
        image_size: side of the square network input.
        in_chans: network input channels (grayscale is repeated).
        mean: normalisation mean per channel (the backbone's).
        std: normalisation std per channel.
        batch_size: samples per batch *per device*.
        num_workers: DataLoader worker processes.
        val_fraction: share of images for validation.
        test_fraction: share of images for the test split (hold-out mode).
        split_seed: seed of the split assignment.
        num_folds: K for K-fold cross-validation (``None``: single hold-out split).
        fold: the test fold when ``num_folds`` is set.
        evaluate_all: put every image in the test split (for ``osteo-eval`` on new data).
        cache_dir: where preprocessed arrays are kept.
        train_transforms: albumentations transforms for training images.
        eval_transforms: albumentations transforms for val/test images (usually none).
        pin_memory: pin host memory for faster GPU transfer.
        root: the data location as given on the command line (``data.root=DIR``); the source
            config interpolates it, so it is only recorded here.
        on_bad_image: ``error`` (stop, naming the file) or ``skip`` (leave it out, list it in
            the run directory's ``skipped.csv`` and the summary).
        on_label_conflict: what to do with copies of one image that carry different labels:
            ``drop``, ``keep`` or ``error`` (see :mod:`osteolightning.data.hygiene`).
        near_duplicate_distance: perceptual-hash distance under which two images count as
            copies for splitting (``None``: exact copies only).
        near_duplicate_correlation: correlation a near-duplicate candidate must reach.
        sampler: the training sampler: ``None`` (shuffle) or ``"balanced"`` (a
            ``WeightedRandomSampler`` drawing ``len(train)`` images per epoch with replacement,
            each with weight 1 / its class count, so classes come equally often; under DDP
            wrapped in Lightning's ``DistributedSamplerWrapper``, each rank taking its share).
            With ``model.class_weighting=balanced`` too the imbalance is corrected twice (the
            classifier warns).
        mask_input: ``None`` (default), ``"apply"`` (zero each image outside its mask: the
            segmentation → classification cascade), ``"crop"`` (the image cropped to its mask,
            at a higher resolution) or ``"provide"`` (the mask beside the image in every
            batch); see :mod:`osteolightning.data.mask_inputs`.
        seed: the run's seed: the training order of each epoch and each image's augmentation
            are drawn from it (see :mod:`osteolightning.data.sampling`).
        mask_crop_from: ``mask_input="crop"``: the side the image is letterboxed to before
            cropping (``None``: 4 × ``image_size``).
        mask_crop_margin: ``mask_input="crop"``: context around the mask's box, a fraction.
        inner_folds: nested cross-validation: with ``num_folds`` and ``fold``, the outer test
            fold is left out entirely and the test split is fold ``inner_fold`` of
            ``inner_folds`` of the rest (:func:`~osteolightning.data.splits.assign_nested_splits`).
        inner_fold: the inner test fold.
        train_fraction: keep this share of the training images (whole groups, stratified;
            a learning curve's point); the rest is left out.
        permute_labels: a seed: shuffle the labels between groups of images (a permutation
            test's null); ``None``: the true labels.
        drop_last: drop the last, incomplete training batch (a batch of one image breaks
            BatchNorm in training mode); ``False`` for models that must see every image (the
            fitted-head models).
        target: the regression target column (``t_score``, ``bmd``, any numeric column) carried
            in every item as ``"target"`` (NaN where unknown); ``None``: none. A source without
            the column gives NaN everywhere (a model that needs the target says so).
        covariates: clinical covariate columns (``age``, ``sex``, ``bmi``, yes/no, categories)
            carried as ``"covariates"`` ``(P',)`` (NaN where unknown; encoded as
            :mod:`osteolightning.data.columns` says), or ``"all"``: every value column but the
            target, the T-score and identifiers. A column the data lacks is an error naming the
            columns it has; an implausible value (a negative age) names its file and line.
        on_device: the GPU data path for training batches (:mod:`.on_device`): ``None`` (the
            CPU path), ``"stream"``, ``"resident"``, ``"auto"`` or ``"normalize"``.
        covariate_coding: how each covariate becomes numbers (a checkpoint's, for new data);
            ``None``: from the training split's cells.
        separating_threshold: the leakage guard: a covariate that alone separates the training
            classes with this balanced accuracy stops the run, naming it (``None``: no check).
        allow_separating: covariates the guard lets through (intended).
        on_record_conflict: copies of one image filed under different records (manifest
            columns): ``drop`` (every copy; neither record can be trusted), ``keep`` or
            ``error``; listed in ``label_conflicts.csv``.
        images: ``False``: decode no pixels (a model without an image network, e.g.
            ``model=covariates``): copies are found by file hashes only, every image is a
            1 × 1 placeholder.

    Attributes:
        require_labels: (class attribute) every sample needs a class label.
        require_masks: (class attribute) every sample needs a mask, even without
            ``mask_input``.
        label_names: names of the image-level labels (``class_names`` here), used for
            conflicts and ``split_rows``.
        masks: after :meth:`setup`, the letterboxed ``(N, S, S)`` uint8 masks of
            :attr:`samples` when masks are used, else ``None``.
        findings: after :meth:`setup`, input that is valid but suspicious (16-bit images of
            partial depth, extreme aspect ratios, empty or many-level masks, classes with
            few images in a split; see :mod:`osteolightning.data.quality`), also in
            :meth:`summary`.
    """

    require_labels: bool = True
    require_masks: bool = False

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
        if batch_size < 1:
            raise ConfigError(
                f"Expected argument `batch_size` to be a positive integer, but got {batch_size}."
            )
        if image_size < 32:
            raise ConfigError(
                f"Expected argument `image_size` to be an integer >= 32, but got {image_size}."
            )
        self.source, self.root = source, root
        self.class_names = [str(c) for c in class_names]
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.split_args = dict(
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=split_seed,
            num_folds=num_folds,
            fold=fold,
        )
        self.evaluate_all = evaluate_all
        if inner_folds is not None and num_folds is None:
            raise ConfigError(
                "data.inner_folds (nested cross-validation) needs data.num_folds and data.fold: "
                "the outer fold whose images the inner runs must never see."
            )
        self.nested = dict(inner_folds=inner_folds, inner_fold=inner_fold)
        self.train_fraction = float(train_fraction)
        self.permute_labels = permute_labels
        check_on_bad_image(on_bad_image)
        for name, policy in (
            ("on_label_conflict", on_label_conflict),
            ("on_record_conflict", on_record_conflict),
        ):
            if policy not in POLICIES:
                raise ConfigError(
                    f"Expected argument `{name}` to be one of {list(POLICIES)}, but got {policy!r}."
                )
        self.on_bad_image, self.on_label_conflict = on_bad_image, on_label_conflict
        self.on_record_conflict, self.images = on_record_conflict, bool(images)
        if sampler not in SAMPLERS:
            raise ConfigError(
                f"Expected argument `sampler` to be one of {list(SAMPLERS)}, but got {sampler!r}."
            )
        self.sampler = sampler
        if mask_input not in MASK_INPUTS:
            raise ConfigError(
                f"Expected argument `mask_input` to be one of {list(MASK_INPUTS)}, but got "
                f"{mask_input!r}."
            )
        self.mask_input = mask_input
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.label_names: list[str] = self.class_names
        self.masks: np.ndarray | None = None
        self.near_args = dict(
            max_distance=near_duplicate_distance, min_correlation=near_duplicate_correlation
        )
        self.skipped: list[tuple[str, str]] = []
        self.findings: list[Finding] = []
        self.conflicts: list[tuple[int, str, str, str]] = []
        self.image_size = int(image_size)
        self.mask_crop_margin = float(mask_crop_margin)
        source = int(mask_crop_from or 4 * image_size) if mask_input == "crop" else image_size
        if source < image_size:
            raise ConfigError(
                f"Expected `mask_crop_from` >= image_size ({image_size}): the crop is taken at a "
                f"higher resolution than the network's input, but got {mask_crop_from}."
            )
        self.cache = PreprocessedCache(cache_dir, source)
        self.to_tensor = ToNormalizedTensor(mean, std, in_chans)
        self.train_augment = compose(train_transforms)
        self.eval_augment = compose(eval_transforms)
        self._init_device_path(on_device)
        self.samples: list[Sample] = []
        self.split_codes = np.zeros(0, dtype=np.int64)
        self.groups = np.zeros(0, dtype=np.int64)
        self.digests: list[str] = []
        self.pixel_keys: list[str] = []
        self.datasets: dict[str, ArrayDataset] = {}
        self._init_columns(
            target, covariates, covariate_coding, separating_threshold, allow_separating
        )

    # -- building ---------------------------------------------------------------------------
    def _source_samples(self) -> list[Sample]:
        """The source's samples (hook: a subclass may read labels of other names)."""
        return self.source.samples(self.class_names)

    def prepare_data(self) -> None:
        """Validate the source and decode every image into the cache (local rank 0 only);
        nothing to do once :meth:`setup` has run in this process (the entry point sets up
        before fitting: it reads the training split's class counts)."""
        if self.datasets:
            return
        samples = self._source_samples()
        self.cache.prepare([s.path for s in samples], on_bad_image=self.on_bad_image)

    def _readable_samples(self) -> list[Sample]:
        """The source's samples minus skipped files (listed in ``self.skipped``)."""
        samples = self._source_samples()
        paths = [s.path for s in samples]
        if self.images:
            prepared = self.cache.prepare(paths, on_bad_image=self.on_bad_image)
            digests, unread = prepared.digests, prepared.skipped
        else:  # no pixels: the files' content hashes are all hygiene needs
            digests, unread = self.cache.file_digests(paths, self.on_bad_image)
        skipped = [*getattr(self.source, "skipped", []), *unread]
        self.skipped = [(str(path), reason) for path, reason in skipped]
        self.digests = [d for d in digests if d is not None]
        good = [s for s, d in zip(samples, digests, strict=True) if d is not None]
        if not good:
            raise DataSourceError(
                f"The data source {self.source.describe()} yielded no readable images "
                f"({len(self.skipped)} skipped)."
            )
        unlabelled = [str(s.path) for s in good if s.label < 0]
        if unlabelled and self.require_labels:
            raise DataSourceError(
                f"{len(unlabelled)} image(s) have no label, e.g. '{unlabelled[0]}'; every image "
                f"needs one of {self.class_names} for training and evaluation."
            )
        unmasked = [s.path for s in good if s.mask is None]
        if unmasked and self._uses_masks():
            raise DataSourceError(
                f"{len(unmasked)} image(s) of {self.source.describe()} have no mask: "
                f"{shorten(unmasked)}. {self._mask_use()} needs a mask for every image: give it "
                f"in a manifest's mask column, or use a segmentation tree ROOT/images/* + "
                f"ROOT/masks/* with the same file names.",
                details=unmasked,
            )
        return self._pseudonymise(good)

    # -- masks -------------------------------------------------------------------------------
    def _pseudonymise(self, samples: list[Sample]) -> list[Sample]:
        """Replace patient IDs (manifest column, else DICOM PatientID) by salted hashes."""
        salt = self.cache.salt()
        out = []
        for s in samples:
            raw = s.patient_id or dicom_patient_id(s.path)
            patient = pseudonym(raw, salt) if raw else None
            out.append(dataclasses.replace(s, patient_id=patient))
        return out

    def setup(self, stage: str | None = None) -> None:
        """Load the cached arrays, resolve copies and conflicts, assign splits (every rank)."""
        if self.datasets:
            return
        self.findings = []
        samples = self._readable_samples()
        masks = None
        if self._uses_masks():
            samples, masks = self._load_masks(samples)
        hashes = blank = None
        if self.images:
            # memory-mapped, shared by workers and ranks; the splits below are views, not copies
            cached = self.cache.open_array([s.path for s in samples])
            images, hashes, blank = cached.images, cached.hashes, cached.blank
            self.findings += image_findings(
                [s.path for s in samples], cached.infos, self.cache.image_size, blank
            )
        else:  # one shared 1 x 1 placeholder (a broadcast view: no memory per image)
            images = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (len(samples), 1, 1))
        labels = np.array([s.label for s in samples], dtype=np.int64)
        near = self.near_args["max_distance"] is not None and self.images
        targets, target_names = self._conflict_targets(labels, masks)
        search = dict(hashes=hashes, blank=blank, **self.near_args)
        copies = find_copies(self.digests, targets, images if near else None, **search)
        paths = [str(s.path) for s in samples]
        keep = apply_conflict_policy(copies, self.on_label_conflict, paths, target_names, targets)
        self.conflicts = conflict_rows(copies, self.on_label_conflict, paths, target_names, targets)
        records = [(s.extra, s.t_score) for s in samples]
        kept, rows = apply_record_policy(copies, records, keep, self.on_record_conflict, paths)
        keep &= kept
        base = len(copies.conflicts)  # record-conflict groups numbered after the label ones
        self.conflicts += [(base + g, p, target_names[targets[i]], a) for g, i, p, a in rows]
        log_copies(copies, self.on_label_conflict)
        idx = np.flatnonzero(keep)
        self.samples = [samples[i] for i in idx]
        self.digests = [self.digests[i] for i in idx]
        images, labels, component = images[idx], labels[idx], copies.component[idx]
        self.masks = masks[idx] if masks is not None else None
        if self.mask_input == "apply":
            images = np.asarray(images)  # a private copy: the mapped cache is read-only
            images[self.masks == 0] = 0  # bone-only input: zero outside the mask
        elif self.mask_input == "crop":
            images, self.masks = self._crop_to_masks(images, self.masks)
        self.pixel_keys = self._pixel_keys()
        keys = [
            [f"patient:{s.patient_id}" if s.patient_id else None, f"copy:{c}"]
            for s, c in zip(self.samples, component.tolist(), strict=True)
        ]
        self.groups = group_ids(keys)
        if self.evaluate_all:
            self.split_codes = np.full(len(labels), TEST, dtype=np.int64)
        else:
            # stratified by label when every image has one, else one stratum
            strata = labels if len(labels) and labels.min() >= 0 else np.zeros_like(labels)
            self.split_codes = self._split(strata)
            names = self.class_names if self.require_labels else None
            for _, message in split_warnings(self.split_codes, labels, names or []):
                self.findings.append(Finding("few_images", message))
        self._resolve_columns()
        if self.permute_labels is not None:
            labels = permute_group_labels(labels, self.groups, int(self.permute_labels))
            self.samples = [
                dataclasses.replace(s, label=int(y))
                for s, y in zip(self.samples, labels, strict=True)
            ]
            log.warning(
                f"data.permute_labels={self.permute_labels}: the labels are shuffled between "
                "image groups (a permutation test's null run); its metrics measure chance."
            )
        for code, name in enumerate(SPLIT_NAMES):
            sel = np.flatnonzero(self.split_codes == code)
            self.datasets[name] = self._make_dataset(name, sel, images[sel], labels[sel])
        (log.warning if self.findings else log.info)(self.summary())

    def _split(self, strata: np.ndarray) -> np.ndarray:
        """Split codes (:func:`~osteolightning.data.splits.split_codes`); a source's given split
        must not put a patient or a copy on two sides."""
        given = None
        if any(s.split for s in self.samples):
            given = np.array([SPLIT_NAMES.index(s.split) for s in self.samples])
            crossing = crossing_groups(self.groups, given)
            if crossing:
                files = [
                    str(s.path)
                    for s, g in zip(self.samples, self.groups, strict=True)
                    if g in crossing
                ]
                raise DataSourceError(
                    f"{len(crossing)} patient(s) or copy group(s) have images in two of the data "
                    f"set's given splits: {shorten(files)}. The given split leaks; fix it, or "
                    "read the folders as one tree (data=folder) and let the split be made.",
                    details=files,
                )
        names = self.class_names if self.require_labels else None
        return split_codes(
            strata, self.groups, self.split_args, self.nested, self.train_fraction, given, names
        )

    def _pixel_keys(self) -> list[str]:
        """A key per sample naming its preprocessed pixels: the file's content hash, the
        preprocessing (size, version) and, where a mask changes the input, the mask's hash."""
        base = f"s{self.cache.image_size}-v{PREPROCESS_VERSION}"
        if self.mask_input == "crop":
            base += f"-crop{self.image_size}m{self.mask_crop_margin:g}"
        if self.masks is None or self.mask_input is None:
            return [f"{d}-{base}" for d in self.digests]
        return [
            f"{d}-{base}-{self.mask_input}{hashlib.sha1(m.tobytes()).hexdigest()[:12]}"
            for d, m in zip(self.digests, self.masks, strict=True)
        ]

    def _conflict_targets(
        self, labels: np.ndarray, masks: np.ndarray | None
    ) -> tuple[np.ndarray, list[str]]:
        """What copies of one image must agree on (hook): an index per image and the names of
        the indices. Here the class label; copies that disagree are a label conflict
        (``on_label_conflict``)."""
        return labels, list(self.label_names)

    def _make_dataset(
        self, split_name: str, sel: np.ndarray, images: np.ndarray, labels: np.ndarray
    ) -> Dataset:
        """The dataset of one split (hook).

        Args:
            split_name: ``train``, ``val`` or ``test``.
            sel: indices of the split's images in :attr:`samples`.
            images: their ``(n, S, S)`` uint8 arrays.
            labels: their class indices.
        """
        augment = self.train_augment if split_name == "train" else self.eval_augment
        values = self.values()
        return ArrayDataset(
            images,
            labels,
            sel,
            self.to_tensor,
            augment,
            paths=[str(self.samples[i].path) for i in sel],
            seed=self.seed,
            keys=[self.pixel_keys[i] for i in sel],
            groups=self.groups[sel],
            targets=values[sel, 0] if self.target else None,
            covariates=values[sel, int(bool(self.target)) :] if self.covariates else None,
            masks=self.masks[sel] if self.mask_input == "provide" else None,
        )

    # -- facts other layers read -----------------------------------------------------------
    def class_counts(self, split: str = "train") -> list[int]:
        """Number of images per class in ``split`` (label-index order)."""
        counts = Counter(self.datasets[split].labels.tolist())
        return [counts.get(i, 0) for i in range(len(self.class_names))]

    def split_rows(self) -> list[tuple[str, str, str, str, int, str]]:
        """One row per image: split, path, label, patient_id, group, sha1 (for the run directory).

        The label is ``""`` for an unlabelled image (label ``-1``).
        """
        return [
            (
                split_name(c),
                str(s.path),
                self.label_names[s.label] if s.label >= 0 else "",
                s.patient_id or "",
                int(g),
                d,
            )
            for s, c, g, d in zip(
                self.samples, self.split_codes, self.groups, self.digests, strict=True
            )
        ]

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
        lines += self._values_summary()
        return "\n".join(lines + [f"  WARNING: {f.message}" for f in self.findings])

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        if train and self.on_device:
            dataset = self._device_loader_dataset(dataset)
        world = self.trainer.world_size if self.trainer is not None else 1
        if train:
            rank = self.trainer.global_rank if world > 1 else 0
            sampler: Sampler | None = train_sampler(
                dataset, self.sampler, self.seed, world, rank, clock=self.trainer
            )
        elif world > 1:
            # every image exactly once across ranks (no padding duplicates), so synced test
            # metrics equal a 1-device run
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=False
            )
        else:
            sampler = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # A last batch of one image breaks BatchNorm in training mode.
            drop_last=train and self.drop_last and len(dataset) > self.batch_size,
            # the workers' base seed from the loader's own generator, not the global one, so
            # making a loader draws nothing from the stream that dropout and mixup use
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
