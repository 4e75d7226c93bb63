"""The LightningModules' options, grouped into a few typed, checked specs.

A config sets a module's options as flat keys under ``model:`` (``model.label_smoothing``,
``model.tta``, ``model.dice_weight``, ...), and a checkpoint keeps them flat in its
hyper-parameters. Each group of them is one frozen spec built by its ``of`` classmethod, whose
keyword parameters *are* the flat keys, with their defaults; :func:`build_specs` hands every
builder the keys it names and refuses a key no builder takes ("did you mean"). The module's
constructor takes the flat keys (Hydra's ``_target_``, a checkpoint's hyper-parameters) or
one ready spec, and reads only the specs; :class:`FlatSignature` shows the flat keys in the
class's signature, so the config checks and help list them. :class:`~osteolightning.models.targets.TargetSpec`
(the regression head) and :class:`~osteolightning.models.checkpointing.Preprocessing` (the
input facts) are two of the groups.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from osteolightning.data.columns import plain_coding
from osteolightning.errors import ConfigError, did_you_mean
from osteolightning.metrics.regression import WHO_CUTOFFS
from osteolightning.models.checkpointing import Preprocessing
from osteolightning.models.losses import MixupCutmix
from osteolightning.models.targets import TargetSpec

Builders = Mapping[str, Callable[..., Any]]

#: test-time augmentations: name → the image dims it flips (``(B, C, H, W)``).
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (3,), "vflip": (2,)}
#: segmentation inference modes: the whole (letterboxed) image at once, or overlapping tiles.
INFERENCE_MODES = ("resize", "sliding_window")


def flat_keys(builders: Builders) -> dict[str, inspect.Parameter]:
    """The flat option keys the builders take (keyword parameters), first one of a name wins."""
    keys: dict[str, inspect.Parameter] = {}
    for build in builders.values():
        for name, param in inspect.signature(build).parameters.items():
            if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            keys.setdefault(name, param)
    return keys


def build_specs(
    owner: str, builders: Builders, options: Mapping[str, Any], shared: Mapping[str, Any]
) -> dict[str, Any]:
    """``{spec name: builder(**the options it names)}``; ``shared`` values (the class names)
    go to every builder that names them.

    Raises:
        ConfigError: an option no builder takes (with the closest one and the accepted ones).
    """
    accepted = flat_keys(builders)
    unknown = [k for k in options if k not in accepted or k in shared]
    if unknown:
        names = sorted(k for k in accepted if k not in shared)
        raise ConfigError(
            f"`{unknown[0]}` is not an argument of {owner}.{did_you_mean(unknown[0], names)} "
            f"It takes: {', '.join(names)}."
        )
    given = {**options, **shared}
    specs = {}
    for name, build in builders.items():
        params = inspect.signature(build).parameters
        specs[name] = build(**{k: v for k, v in given.items() if k in params})
    return specs


def flat_signature(leading: Sequence[str], builders: Builders) -> inspect.Signature:
    """A class's call signature: the ``leading`` parameters (``net``, ...), then every flat
    key of ``builders`` as a keyword with its default."""
    keys = flat_keys(builders)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    first = [inspect.Parameter(leading[0], kind)]
    first += [inspect.Parameter(n, kind, default=None) for n in leading[1:]]
    rest = [
        inspect.Parameter(
            n, inspect.Parameter.KEYWORD_ONLY, default=p.default, annotation=p.annotation
        )
        for n, p in keys.items()
        if n not in leading
    ]
    return inspect.Signature([*first, *rest])


class FlatSignature:
    """A class's ``__signature__`` that lists its flat options (:func:`flat_signature`), so
    ``inspect.signature(cls)`` (the config checks, help) shows every key the constructor's
    ``**options`` takes. Only the class that declares it has it: a subclass with its own
    constructor, and the constructor function itself (Lightning reads it), keep theirs.
    """

    def __init__(self, leading: Sequence[str], builders: Builders) -> None:
        self.leading, self.builders = tuple(leading), builders
        self.owner: type | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner = owner

    def __get__(self, obj: Any, objtype: type | None = None) -> inspect.Signature | None:
        if obj is None and objtype is self.owner:
            return flat_signature(self.leading, self.builders)
        return None  # inspect then computes the signature as usual


def resolve_spec(
    owner: str, kind: type, class_names: Any, spec: Any, options: Mapping[str, Any]
) -> Any:
    """``spec``, or the ``kind`` (a :mod:`~osteolightning.models.specs` bundle) of the flat
    options; not both.

    Raises:
        ConfigError: both a spec and flat options, or neither a spec nor class names.
    """
    if spec is not None:
        if options or class_names is not None:
            raise ConfigError(
                f"Expected {owner}'s options either as one `spec` or as flat arguments, but got "
                f"both (spec and {sorted(options) or ['class_names']})."
            )
        return spec
    if class_names is None:
        raise ConfigError(f"Expected argument `class_names` of {owner}, but got none.")
    return kind.of(class_names, owner=owner, **options)


@dataclass(frozen=True)
class Optimization:
    """How the weights are trained: partial ``optimizer(params)`` (``_partial_: true`` in
    config) and partial ``scheduler(optimizer, total_steps)`` stepped per step, or ``None``."""

    optimizer: Callable[..., Any] | None = None
    scheduler: Callable[..., Any] | None = None

    @classmethod
    def of(
        cls,
        optimizer: Callable[..., Any] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> Optimization:
        return cls(optimizer, scheduler)


@dataclass(frozen=True)
class Acceleration:
    """GPU options (see :mod:`osteolightning.models.acceleration`): ``torch.compile`` (true,
    or a mapping of its arguments) and the channels-last memory layout. Not kept in the
    checkpoint."""

    compile: bool | Mapping[str, Any] | None = False
    channels_last: bool = False

    @classmethod
    def of(
        cls, compile: bool | Mapping[str, Any] | None = False, channels_last: bool = False
    ) -> Acceleration:
        return cls(compile, bool(channels_last))


@dataclass(frozen=True)
class ClassLoss:
    """The class loss and what shapes it.

    Attributes:
        loss: ``loss(logits, targets, weight=, label_smoothing=) -> scalar`` (``_partial_:
            true`` in config; :mod:`osteolightning.models.losses`); ``None``: cross-entropy.
        class_weighting: ``"balanced"`` (inverse training frequency) or ``"none"``.
        label_smoothing: in [0, 1).
        mixup: :class:`~osteolightning.models.losses.MixupCutmix` arguments (``mixup_alpha``,
            ``cutmix_alpha``, ``prob``, ``switch_prob``); empty or both alphas 0: off.
    """

    loss: Callable[..., Any] | None
    class_weighting: str
    label_smoothing: float
    mixup: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        loss: Callable[..., Any] | None = None,
        class_weighting: str = "balanced",
        label_smoothing: float = 0.0,
        mixup: Mapping[str, float] | None = None,
    ) -> ClassLoss:
        """Check the settings.

        Raises:
            ConfigError: an unknown weighting, a smoothing outside [0, 1), bad mixup arguments.
        """
        if class_weighting not in ("balanced", "none"):
            raise ConfigError(
                f"Expected argument `class_weighting` to be one of ['balanced', 'none'], "
                f"but got {class_weighting!r}."
            )
        if not 0 <= label_smoothing < 1:
            raise ConfigError(
                f"Expected argument `label_smoothing` in [0, 1), but got {label_smoothing}."
            )
        MixupCutmix(**(mixup or {}))  # checked now
        return cls(loss, str(class_weighting), float(label_smoothing), dict(mixup or {}))

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (mixup / cutmix on)."""
        return MixupCutmix(**self.mixup).enabled


@dataclass(frozen=True)
class TrainingData:
    """What the entry point measures on the training split and passes in (``null`` in
    config; ``None`` in a model rebuilt from a checkpoint, whose state comes with it).

    Attributes:
        class_counts: images per class (label-index order), for ``balanced`` class weights.
        target_train: the target values (NaN unknown), for the regression head's scaler.
    """

    class_counts: Sequence[int] | None = None
    target_train: Sequence[float] | None = None

    @classmethod
    def of(
        cls, class_counts: Sequence[int] | None = None, target_train: Sequence[float] | None = None
    ) -> TrainingData:
        return cls(class_counts, target_train)


@dataclass(frozen=True)
class Covariates:
    """The clinical covariates fused with the image (late fusion).

    Attributes:
        names: the covariate columns (``model.covariates``); empty: none.
        coding: how each one's cells become numbers
            (:func:`~osteolightning.data.columns.infer_coding`), passed by the entry point from
            the data and kept in the checkpoint, so new data is encoded alike.
        train: the training split's ``(N, P')`` encoded covariates (NaN unknown), passed by the
            entry point (``None``: restored from a checkpoint).
    """

    names: tuple[str, ...] = ()
    coding: Mapping[str, Any] | None = None
    train: Sequence[Sequence[float]] | None = None

    @classmethod
    def of(
        cls,
        covariates: Sequence[str] = (),
        covariate_coding: Mapping[str, Any] | None = None,
        covariates_train: Sequence[Sequence[float]] | None = None,
    ) -> Covariates:
        names = tuple(str(c) for c in covariates or ())
        return cls(names, plain_coding(covariate_coding), covariates_train)


@dataclass(frozen=True)
class Evaluation:
    """The validation metric of the best checkpoint (``monitor``, for ``<monitor>_best``) and
    the test-time augmentations of test / predict (``tta``, a subset of :data:`TTA_FLIPS`)."""

    monitor: str = "val/f1_macro"
    tta: tuple[str, ...] = ()

    @classmethod
    def of(cls, monitor: str = "val/f1_macro", tta: Sequence[str] = ()) -> Evaluation:
        """Raises: ConfigError: a ``tta`` name outside :data:`TTA_FLIPS`."""
        flips = tuple(str(t) for t in tta)
        for name in flips:
            if name not in TTA_FLIPS:
                raise ConfigError(
                    f"Expected argument `tta` to hold names from {list(TTA_FLIPS)}, "
                    f"but got {name!r}.{did_you_mean(name, list(TTA_FLIPS))}"
                )
        return cls(str(monitor), flips)


@dataclass(frozen=True)
class SegmentationLoss:
    """``dice_weight`` * soft Dice + ``ce_weight`` * cross-entropy (MONAI ``DiceCELoss``);
    ``deep_supervision_weights``: of ``[main, side_1, ...]`` (``None``: 1, 1/2, 1/4, ...)."""

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    include_background: bool = False
    deep_supervision_weights: tuple[float, ...] | None = None

    @classmethod
    def of(
        cls,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        include_background: bool = False,
        deep_supervision_weights: Sequence[float] | None = None,
    ) -> SegmentationLoss:
        """Raises: ConfigError: a negative weight, or both 0."""
        if min(dice_weight, ce_weight) < 0 or dice_weight + ce_weight <= 0:
            raise ConfigError(
                f"Expected non-negative `dice_weight` and `ce_weight` with a positive sum, but got "
                f"{dice_weight} and {ce_weight}."
            )
        weights = deep_supervision_weights
        return cls(
            float(dice_weight),
            float(ce_weight),
            bool(include_background),
            None if weights is None else tuple(float(w) for w in weights),
        )


@dataclass(frozen=True)
class SegmentationInference:
    """How a segmenter infers and what its test measures.

    Attributes:
        inference: ``"resize"`` (the letterboxed image in one pass) or ``"sliding_window"``
            (MONAI's ``sliding_window_inference``, Gaussian-weighted ``roi_size`` tiles).
        roi_size: tile side (the network's ``image_size`` where not set).
        sw_overlap: tile overlap in [0, 1).
        sw_batch_size: tiles per forward pass.
        hd95_on_test: compute HD95 per test image and class.
        monitor: the validation metric of the best checkpoint.
    """

    inference: str = "resize"
    roi_size: int = 160
    sw_overlap: float = 0.25
    sw_batch_size: int = 4
    hd95_on_test: bool = True
    monitor: str = "val/dice"

    @classmethod
    def of(
        cls,
        image_size: int = 160,
        inference: str = "resize",
        roi_size: int | None = None,
        sw_overlap: float = 0.25,
        sw_batch_size: int = 4,
        hd95_on_test: bool = True,
        monitor: str = "val/dice",
    ) -> SegmentationInference:
        """Raises: ConfigError: an unknown mode, an overlap outside [0, 1)."""
        if inference not in INFERENCE_MODES:
            raise ConfigError(
                f"Expected argument `inference` to be one of {list(INFERENCE_MODES)}, "
                f"but got {inference!r}.{did_you_mean(str(inference), INFERENCE_MODES)}"
            )
        if not (isinstance(sw_overlap, int | float) and math.isfinite(sw_overlap)) or not (
            0 <= sw_overlap < 1
        ):
            raise ConfigError(f"Expected argument `sw_overlap` in [0, 1), but got {sw_overlap}.")
        return cls(
            str(inference),
            int(roi_size or image_size),
            float(sw_overlap),
            int(sw_batch_size),
            bool(hd95_on_test),
            str(monitor),
        )


def _classifier_inputs(
    class_names: Sequence[str],
    image_size: int = 224,
    in_chans: int = 1,
    mean: Sequence[float] = (0.449,),
    std: Sequence[float] = (0.226,),
) -> Preprocessing:
    return Preprocessing.of(class_names, image_size, in_chans, mean, std)


def _segmenter_inputs(
    class_names: Sequence[str],
    image_size: int = 160,
    in_chans: int = 1,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
) -> Preprocessing:
    if len(class_names) < 2:
        raise ConfigError(
            f"Expected at least two mask classes (background first), but got {list(class_names)}."
        )
    return Preprocessing.of(class_names, image_size, in_chans, mean, std)


def _target(
    class_names: Sequence[str],
    target: str = "t_score",
    t_score_weight: float = 0.0,
    class_weight: float = 1.0,
    bmd_reference: Sequence[float] | None = None,
    who_cutoffs: Sequence[float] = WHO_CUTOFFS,
) -> TargetSpec:
    return TargetSpec.of(target, t_score_weight, class_weight, bmd_reference, who_cutoffs,
                         class_names)  # fmt: skip


@dataclass(frozen=True)
class ClassifierSpec:
    """A :class:`~osteolightning.models.classifier.KneeClassifier`'s options, in groups."""

    inputs: Preprocessing
    optimization: Optimization
    loss: ClassLoss
    target: TargetSpec
    covariates: Covariates
    data: TrainingData
    evaluation: Evaluation
    acceleration: Acceleration

    #: the builder of each group; their keyword parameters are the flat keys
    BUILDERS: ClassVar[dict[str, Callable[..., Any]]] = {
        "inputs": _classifier_inputs,
        "optimization": Optimization.of,
        "loss": ClassLoss.of,
        "target": _target,
        "covariates": Covariates.of,
        "data": TrainingData.of,
        "evaluation": Evaluation.of,
        "acceleration": Acceleration.of,
    }

    @classmethod
    def of(
        cls, class_names: Sequence[str], owner: str = "KneeClassifier", **options: Any
    ) -> ClassifierSpec:
        """The specs of the flat options (``model.<key>`` in config; see :func:`build_specs`).

        Raises:
            ConfigError: an unknown option, a bad value (each group's ``of``), or mixup together
                with a regression head or covariates.
        """
        spec = cls(**build_specs(owner, cls.BUILDERS, options, {"class_names": class_names}))
        if spec.loss.mixes and (spec.target.enabled or spec.covariates.names):
            raise ConfigError(
                "Mixup / cutmix mixes images and their labels, not their T-scores or "
                "covariates: turn it off (model.mixup.mixup_alpha=0 model.mixup.cutmix_alpha=0) "
                "for a model with a regression head or covariates."
            )
        return spec

    def hparams(self) -> dict[str, Any]:
        """The flat options a checkpoint keeps, as plain Python types (``weights_only``)."""
        target = self.target
        return {
            **self.inputs.hparams(),
            "class_weighting": self.loss.class_weighting,
            "label_smoothing": self.loss.label_smoothing,
            "monitor": self.evaluation.monitor,
            "tta": list(self.evaluation.tta),
            "target": target.target,
            "t_score_weight": target.weight,
            "class_weight": target.class_weight,
            "bmd_reference": list(target.reference) if target.reference else None,
            "who_cutoffs": list(target.cutoffs),
            "covariates": list(self.covariates.names),
            "covariate_coding": dict(self.covariates.coding or {}),
        }


@dataclass(frozen=True)
class SegmenterSpec:
    """A :class:`~osteolightning.models.segmenter.KneeSegmenter`'s options, in groups."""

    inputs: Preprocessing
    optimization: Optimization
    loss: SegmentationLoss
    inference: SegmentationInference
    acceleration: Acceleration

    BUILDERS: ClassVar[dict[str, Callable[..., Any]]] = {
        "inputs": _segmenter_inputs,
        "optimization": Optimization.of,
        "loss": SegmentationLoss.of,
        "inference": SegmentationInference.of,
        "acceleration": Acceleration.of,
    }

    @classmethod
    def of(
        cls, class_names: Sequence[str], owner: str = "KneeSegmenter", **options: Any
    ) -> SegmenterSpec:
        """The specs of the flat options (see :func:`build_specs`)."""
        return cls(**build_specs(owner, cls.BUILDERS, options, {"class_names": class_names}))
