"""What a classifier's regression head predicts and how its losses are weighted.

A :class:`~osteolightning.models.classifier.KneeClassifier` may carry, beside its class head, a
regression head for a continuous target column: the T-score itself (``target: t_score``) or the
bone mineral density (``target: bmd``, with ``bmd_reference``: the young-adult mean and SD that
turn a BMD into a T-score, ``T = (BMD - mean) / SD``). From a T-score the WHO category follows
by the cut-offs (:data:`~osteolightning.metrics.regression.WHO_CUTOFFS`). The loss is
``class_weight * class loss + t_score_weight * regression loss``; ``t_score_weight = 0`` turns
the head off, ``class_weight = 0`` makes the model a regressor whose class output is the WHO
category of its predicted T-score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from osteolightning.data.sources import normalize_class_name
from osteolightning.errors import ConfigError
from osteolightning.metrics.regression import WHO_CUTOFFS
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: the run's classes must be these (in this order) for WHO categories of a T-score
WHO_CLASSES = ("normal", "osteopenia", "osteoporosis")


def is_who(class_names: Sequence[str]) -> bool:
    """Whether the classes are the WHO categories in their order (normal, osteopenia,
    osteoporosis), so a T-score's category is a class index."""
    return tuple(normalize_class_name(c) for c in class_names) == WHO_CLASSES


def who_index(t_scores: torch.Tensor, cutoffs: Sequence[float]) -> torch.Tensor:
    """The WHO category (0 normal, 1 osteopenia, 2 osteoporosis) of ``(B,)`` T-scores, as
    :func:`~osteolightning.metrics.regression.who_category` on tensors."""
    low, high = float(cutoffs[0]), float(cutoffs[1])
    return torch.where(t_scores <= low, 2, torch.where(t_scores < high, 1, 0))


@dataclass(frozen=True)
class TargetSpec:
    """The regression head's settings (checked).

    Attributes:
        target: the target column (``t_score``, ``bmd``, or another numeric column).
        weight: the regression loss weight (``model.t_score_weight``); 0: no head.
        class_weight: the class loss weight; 0: regression only.
        reference: ``(mean, sd)`` turning the target into a T-score, or ``None`` (the target is
            the T-score itself, or has no T-score).
        cutoffs: the WHO cut-offs ``(osteoporosis, normal)``.
        who: the run's classes are the WHO categories.
    """

    target: str
    weight: float
    class_weight: float
    reference: tuple[float, float] | None
    cutoffs: tuple[float, float]
    who: bool

    @classmethod
    def of(
        cls,
        target: str,
        t_score_weight: float,
        class_weight: float,
        bmd_reference: Sequence[float] | None,
        who_cutoffs: Sequence[float],
        class_names: Sequence[str],
    ) -> TargetSpec:
        """Check the settings.

        Raises:
            ConfigError: a negative weight, both weights 0, a bad reference or cut-offs, or a
                regression-only model whose class output cannot be a WHO category.
        """
        for name, value in (("t_score_weight", t_score_weight), ("class_weight", class_weight)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"Expected argument `{name}` to be a number >= 0, but got {value!r}."
                )
        if t_score_weight == 0 and class_weight == 0:
            raise ConfigError(
                "Expected `model.t_score_weight` or `model.class_weight` to be > 0, but both are "
                "0: the model would learn nothing."
            )
        reference = None
        if bmd_reference is not None:
            ref = [float(v) for v in bmd_reference]
            if len(ref) != 2 or not all(math.isfinite(v) for v in ref) or ref[1] <= 0:
                raise ConfigError(
                    f"Expected argument `bmd_reference` to be [young-adult mean, SD > 0] (e.g. "
                    f"[1.0, 0.12] g/cm^2), but got {list(bmd_reference)!r}."
                )
            reference = (ref[0], ref[1])
        low, high = (float(c) for c in who_cutoffs)
        if not low < high:
            raise ConfigError(
                f"Expected argument `who_cutoffs` to be two increasing numbers (osteoporosis, "
                f"normal) such as {list(WHO_CUTOFFS)}, but got {list(who_cutoffs)!r}."
            )
        spec = cls(
            str(target),
            float(t_score_weight),
            float(class_weight),
            reference,
            (low, high),
            is_who(class_names),
        )
        if reference is not None and str(target) == "t_score":
            log.warning(
                "model.bmd_reference is ignored: the target is the T-score itself "
                "(model.target=t_score); it turns a BMD target into a T-score."
            )
        if t_score_weight == 0 and (str(target) != "t_score" or reference is not None):
            log.warning(
                f"model.target={target!r} and model.bmd_reference are ignored: the model has "
                "no regression head (model.t_score_weight=0)."
            )
        if class_weight == 0 and not (spec.has_t_score and spec.who):
            raise ConfigError(
                "A regression-only model (model.class_weight=0) reports the WHO category of its "
                "predicted T-score as its class, so it needs target=t_score (or "
                "model.bmd_reference=[mean, sd] for a BMD target) and class_names "
                f"{list(WHO_CLASSES)}; got target={target!r}, bmd_reference={bmd_reference!r}, "
                f"class_names={list(class_names)}."
            )
        return spec

    @property
    def enabled(self) -> bool:
        """Whether the model has a regression head."""
        return self.weight > 0

    @property
    def regression_only(self) -> bool:
        return self.class_weight == 0

    @property
    def has_t_score(self) -> bool:
        """Whether a T-score follows from the target."""
        return self.target == "t_score" or self.reference is not None

    def t_scores(self, values: torch.Tensor) -> torch.Tensor:
        """Target values → T-scores (the values themselves for ``t_score``)."""
        if self.reference is None:
            return values
        return (values - self.reference[0]) / self.reference[1]
