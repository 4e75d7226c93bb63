"""The DataModule's options, grouped and checked: how the data is split, kept clean, turned into
network inputs, loaded and moved to the device.

Each spec is a frozen dataclass checked when it is made (torchmetrics-style messages naming the
flat ``data.*`` key), so a spec in hand is a valid one. :class:`~osteolightning.data.datamodule.KneeDataModule`
takes the flat keys of the ``data:`` config (what Hydra passes) and builds these at its
boundary; :func:`~osteolightning.data.plan.plan_data` and the loaders read them. The regression
target and covariate columns have their spec beside their code
(:class:`~osteolightning.data.columns.ColumnSpec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from osteolightning.data.hygiene import POLICIES
from osteolightning.data.io import check_on_bad_image
from osteolightning.data.near_duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
from osteolightning.errors import ConfigError

__all__ = [
    "MASK_INPUTS",
    "ON_DEVICE",
    "SAMPLERS",
    "DeviceSpec",
    "HygieneSpec",
    "InputSpec",
    "LoaderSpec",
    "SplitSpec",
]

#: training samplers by ``sampler`` name (``None``: shuffle).
SAMPLERS = (None, "balanced")
#: what a classifier does with each sample's mask: nothing, zero the image outside it, crop
#: the image to it, or hand it to the model beside the unchanged image (``batch["mask"]``).
MASK_INPUTS = (None, "apply", "crop", "provide")
#: values of ``data.on_device`` (:mod:`osteolightning.data.on_device`)
ON_DEVICE = (None, "stream", "resident", "auto", "normalize")


def _one_of(name: str, value: Any, accepted: Sequence[Any]) -> None:
    if value not in accepted:
        raise ConfigError(
            f"Expected argument `{name}` to be one of {list(accepted)}, but got {value!r}."
        )


@dataclass(frozen=True)
class SplitSpec:
    """How the images are split (:func:`~osteolightning.data.splits.split_codes`).

    Attributes:
        val_fraction: share of images for validation.
        test_fraction: share of images for the test split (hold-out mode).
        seed: seed of the split assignment (``data.split_seed``).
        num_folds: K for K-fold cross-validation (``None``: single hold-out split).
        fold: the test fold when ``num_folds`` is set.
        inner_folds: nested cross-validation: the outer test fold ``fold`` is left out and the
            test split is fold ``inner_fold`` of ``inner_folds`` of the rest.
        inner_fold: the inner test fold.
        train_fraction: keep this share of the training groups (a learning curve's point).
        permute_labels: a seed: shuffle the labels between image groups (a permutation test's
            null); ``None``: the true labels.
        evaluate_all: every image in the test split (``osteo-eval`` on new data).
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    num_folds: int | None = None
    fold: int = 0
    inner_folds: int | None = None
    inner_fold: int = 0
    train_fraction: float = 1.0
    permute_labels: int | None = None
    evaluate_all: bool = False

    def __post_init__(self) -> None:
        if self.inner_folds is not None and self.num_folds is None:
            raise ConfigError(
                "data.inner_folds (nested cross-validation) needs data.num_folds and data.fold: "
                "the outer fold whose images the inner runs must never see."
            )

    @property
    def args(self) -> dict[str, Any]:
        """The hold-out / K-fold arguments of :func:`~osteolightning.data.splits.split_codes`."""
        return dict(
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
            num_folds=self.num_folds,
            fold=self.fold,
        )

    @property
    def nested(self) -> dict[str, Any]:
        return dict(inner_folds=self.inner_folds, inner_fold=self.inner_fold)


@dataclass(frozen=True)
class HygieneSpec:
    """What happens to bad files, copies and conflicts (:mod:`osteolightning.data.hygiene`).

    Attributes:
        on_bad_image: ``error`` (stop, naming the file) or ``skip`` (leave it out, listed).
        on_label_conflict: copies of one image with different labels (segmentation: masks):
            ``drop``, ``keep`` or ``error``.
        on_record_conflict: copies of one image filed under different records: ``drop``,
            ``keep`` or ``error``.
        near_distance: perceptual-hash distance under which two images count as copies
            (``data.near_duplicate_distance``; ``None``: exact copies only).
        near_correlation: correlation a near-duplicate candidate must reach.
    """

    on_bad_image: str = "error"
    on_label_conflict: str = "drop"
    on_record_conflict: str = "drop"
    near_distance: int | None = DEFAULT_MAX_DISTANCE
    near_correlation: float = DEFAULT_MIN_CORRELATION

    def __post_init__(self) -> None:
        check_on_bad_image(self.on_bad_image)
        _one_of("on_label_conflict", self.on_label_conflict, POLICIES)
        _one_of("on_record_conflict", self.on_record_conflict, POLICIES)


@dataclass(frozen=True)
class InputSpec:
    """What the network gets of each image.

    Attributes:
        image_size: side of the square network input.
        in_chans: network input channels (grayscale is repeated).
        mean: normalisation mean per channel (the backbone's).
        std: normalisation std per channel.
        images: ``False``: decode no pixels (a model without an image network).
        mask_input: ``None``, ``"apply"``, ``"crop"`` or ``"provide"``
            (:mod:`osteolightning.data.mask_inputs`).
        mask_crop_from: ``crop``: the side images are letterboxed to before cropping
            (``None``: 4 x ``image_size``).
        mask_crop_margin: ``crop``: context around the mask's box, a fraction.
    """

    image_size: int = 224
    in_chans: int = 1
    mean: tuple[float, ...] = (0.449,)
    std: tuple[float, ...] = (0.226,)
    images: bool = True
    mask_input: str | None = None
    mask_crop_from: int | None = None
    mask_crop_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ConfigError(
                f"Expected argument `image_size` to be an integer >= 32, but got {self.image_size}."
            )
        if self.mask_input not in MASK_INPUTS:
            raise ConfigError(
                f"Expected argument `mask_input` to be one of {list(MASK_INPUTS)}, but got "
                f"{self.mask_input!r}."
            )
        if self.cache_size < self.image_size:
            raise ConfigError(
                f"Expected `mask_crop_from` >= image_size ({self.image_size}): the crop is taken "
                f"at a higher resolution than the network's input, but got {self.mask_crop_from}."
            )

    @property
    def cache_size(self) -> int:
        """The side images are letterboxed to in the cache (larger under ``crop``)."""
        if self.mask_input == "crop":
            return int(self.mask_crop_from or 4 * self.image_size)
        return self.image_size


@dataclass(frozen=True)
class LoaderSpec:
    """How batches are drawn.

    Attributes:
        batch_size: samples per batch *per device*.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster GPU transfer.
        sampler: ``None`` (shuffle) or ``"balanced"`` (:mod:`osteolightning.data.sampling`).
        drop_last: drop the last, incomplete training batch.
        seed: the run's seed: the training order and each image's augmentation.
    """

    batch_size: int = 32
    num_workers: int = 0
    pin_memory: bool = False
    sampler: str | None = None
    drop_last: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(
                "Expected argument `batch_size` to be a positive integer, but got "
                f"{self.batch_size}."
            )
        _one_of("sampler", self.sampler, SAMPLERS)


@dataclass(frozen=True)
class DeviceSpec:
    """The data path of training batches (:mod:`osteolightning.data.on_device`).

    Attributes:
        on_device: ``None`` (the CPU path), ``"stream"``, ``"resident"``, ``"auto"`` or
            ``"normalize"``.
    """

    on_device: str | None = None

    def __post_init__(self) -> None:
        _one_of("on_device", self.on_device, ON_DEVICE)

    @property
    def augments(self) -> bool:
        """The device augments the batch (else the workers do, or nothing moves)."""
        return self.on_device not in (None, "normalize")
