"""Record-only models beside the clinical baseline (``model=covariates``): gradient-boosted
trees on the covariates, and the published OST screening rule.

Both are :class:`~osteolightning.models.fitted.FittedHeadClassifier` on
:func:`~osteolightning.models.components.features.covariates_net` (no image features), so they
go through the run contract of every model (checkpoint, metrics.json, predictions.csv,
``osteo-eval``, ``osteo-predict``, the leaderboard) and the permutation tests
(:mod:`osteolightning.selection.null`). Their :meth:`all_features` are the raw covariates
``(B, P)`` (NaN where unknown): trees split on raw values and handle unknown ones natively, and
the rule reads weight and age as they are.

* :class:`BoostedTreesClassifier` (``model=boosting``): scikit-learn's
  ``HistGradientBoostingClassifier`` (class-balanced) and, with a regression head, a
  ``HistGradientBoostingRegressor`` of the standardised target. The fitted trees become
  buffers (:class:`TreeForest`: every tree's nodes concatenated), and prediction walks them
  in torch, so the checkpoint holds tensors only (``torch.load(weights_only=True)``) and no
  pickled scikit-learn object.
* :class:`ClinicalRuleClassifier` (``model=ost_rule``): the Osteoporosis Self-assessment Tool
  (Koh et al. 2001, Osteoporos Int 12:699), ``OST = 0.2 × (weight_kg − age)``; nothing is
  fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.classifier import Batch
from osteolightning.models.components.features import FeatureHead
from osteolightning.models.components.trees import (
    ONE_THREAD_ROWS,
    TreeForest,
    TreesFit,
    forest_arrays,
)
from osteolightning.models.fitted import FittedHeadClassifier
from osteolightning.models.linear_fits import ABSENT_LOGIT
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def _raw_covariates(model: FittedHeadClassifier, batch: Batch) -> torch.Tensor:
    """``(B, P)`` float64 raw covariates of a batch, NaN where unknown."""
    return model._covariates(batch).double()


def _silence_image_head(model: FittedHeadClassifier) -> None:
    """Zero the network's placeholder layer (the one the optimiser step holds): an image
    alone, ``model(images)`` (saliency, export), tells a record-only model nothing, so its
    logits are 0, uniform probabilities."""
    nn.init.zeros_(model.net.linear.weight)
    nn.init.zeros_(model.net.linear.bias)


def _require_record_only(model: FittedHeadClassifier, name: str) -> None:
    if model.net.image_dim:
        raise ConfigError(
            f"Expected argument `net` of {name} to be covariates_net (no image features), but it "
            f"has {model.net.image_dim} image features."
        )


class BoostedTreesClassifier(FittedHeadClassifier):
    """Gradient-boosted trees on the clinical record (``model=boosting``).

    A class-balanced ``HistGradientBoostingClassifier`` on the raw covariates ``(N, P)``
    (unknown values go down the branch the training data sent them, or the larger child) and,
    with a regression head, a ``HistGradientBoostingRegressor`` of the standardised target on
    the images that have one. Early stopping is off: scikit-learn's validation share would be
    drawn image by image, not by patient, so images of one patient would score trees they
    trained; ``max_iter`` is a hyper-parameter like the others (sweep it on the run's own,
    grouped validation split). The fitted trees are buffers of :attr:`forest`
    (:class:`TreeForest`), and every prediction walks them.

    Args:
        net: :func:`~osteolightning.models.components.features.covariates_net`.
        class_names: ``K`` class names.
        max_iter: boosting iterations (trees per class).
        learning_rate: shrinkage of each tree.
        max_leaf_nodes: leaves per tree.
        min_samples_leaf: fewest training images in a leaf.
        l2_regularization: L2 penalty on the leaf values.
        random_state: the trees' seed (fixed: the fit is deterministic).
        **kwargs: :class:`~osteolightning.models.fitted.FittedHeadClassifier`'s (covariates,
            target, class names' facts); its ``C``, ``alpha`` and image weights do not apply.

    Raises:
        ConfigError: no covariates, image features in ``net``, a bad hyper-parameter.

    Example:
        >>> from osteolightning.models.components.features import covariates_net
        >>> x = np.array([[60.0, 1.0], [70.0, np.nan], [55.0, 0.0], [80.0, 1.0]] * 5)
        >>> model = BoostedTreesClassifier(covariates_net(2), ["a", "b"], max_iter=3,
        ...     min_samples_leaf=2, covariates=["age", "sex"], covariates_train=x.tolist())
        >>> model.install_head(model.fit_head(x, np.arange(20) % 2, np.arange(20), x[:, 0]))
        >>> model.forest.n_trees
        3
    """

    def __init__(
        self,
        net: FeatureHead,
        class_names: Sequence[str],
        max_iter: int = 100,
        learning_rate: float = 0.05,
        max_leaf_nodes: int = 8,
        min_samples_leaf: int = 10,
        l2_regularization: float = 1.0,
        random_state: int = 0,
        **kwargs: Any,
    ) -> None:
        for arg, value, low in (
            ("max_iter", max_iter, 1),
            ("max_leaf_nodes", max_leaf_nodes, 2),
            ("min_samples_leaf", min_samples_leaf, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"Expected argument `{arg}` to be an integer >= {low}, but got {value!r}."
                )
        if not (isinstance(learning_rate, int | float) and learning_rate > 0):
            raise ConfigError(
                f"Expected argument `learning_rate` to be a positive number, but got "
                f"{learning_rate!r}."
            )
        if not (isinstance(l2_regularization, int | float) and l2_regularization >= 0):
            raise ConfigError(
                "Expected argument `l2_regularization` to be a number >= 0, but got "
                f"{l2_regularization!r}."
            )
        super().__init__(net, class_names, **kwargs)
        _require_record_only(self, "BoostedTreesClassifier")
        if self.covariate_encoder is None:
            raise ConfigError(
                "Expected argument `covariates` to name at least one clinical column for the "
                "boosted trees, but got []. Set model.covariates=[age,sex,bmi,...]."
            )
        self.save_hyperparameters(
            {
                "max_iter": int(max_iter),
                "learning_rate": float(learning_rate),
                "max_leaf_nodes": int(max_leaf_nodes),
                "min_samples_leaf": int(min_samples_leaf),
                "l2_regularization": float(l2_regularization),
                "random_state": int(random_state),
            }
        )

    def _build_heads(self, n_covariates: int) -> None:
        super()._build_heads(n_covariates)  # the placeholder layer the one optimiser step holds
        _silence_image_head(self)
        k = len(self.hparams.class_names)
        self.forest = TreeForest(k + int(self.specs.target.enabled))

    def all_features(self, batch: Batch) -> torch.Tensor:
        """``(B, P)`` float64 raw covariates, NaN where unknown (the trees' input)."""
        return _raw_covariates(self, batch)

    def batch_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits (B, K), standardised target prediction (B,) or None)`` from the trees."""
        outputs = self.forest(self.all_features(batch)).float()
        k = len(self.hparams.class_names)
        return outputs[:, :k], (outputs[:, k] if self.specs.target.enabled else None)

    def _tree_args(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "max_iter": hp.max_iter,
            "learning_rate": hp.learning_rate,
            "max_leaf_nodes": hp.max_leaf_nodes,
            "min_samples_leaf": hp.min_samples_leaf,
            "l2_regularization": hp.l2_regularization,
            "early_stopping": False,
            "random_state": hp.random_state,
        }

    def fit_head(
        self, x: np.ndarray, labels: np.ndarray, groups: np.ndarray, targets: np.ndarray
    ) -> TreesFit:
        """Grow the trees on training arrays (no trainer needed: the permutation tests call it).

        Args:
            x: ``(N, P)`` raw covariates (:meth:`all_features`), NaN where unknown.
            labels: ``(N,)`` class indices.
            groups: ``(N,)`` group ids (unused: no inner split, see the class).
            targets: ``(N,)`` raw target values (NaN unknown; used with a regression head).

        Returns:
            The forest: the ``K`` logits (a class absent from the training data gets
            :data:`~osteolightning.models.fitted.ABSENT_LOGIT`), then the standardised target.

        Raises:
            ConfigError: fewer than two classes, or fewer than two known targets.
        """
        from threadpoolctl import threadpool_limits

        x = np.asarray(x, dtype=np.float64)
        with threadpool_limits(limits=1 if len(x) < ONE_THREAD_ROWS else None):
            return self._grow(x, labels, targets)

    def _grow(self, x: np.ndarray, labels: np.ndarray, targets: np.ndarray) -> TreesFit:
        """:meth:`fit_head`'s work, on the threads it allows."""
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        k = len(self.hparams.class_names)
        baseline = np.zeros(k + int(self.specs.target.enabled))
        models: list[tuple[Any, list[int]]] = []
        if self.specs.target.class_weight > 0:
            present = np.unique(labels)
            if len(present) < 2:
                raise ConfigError(
                    f"The training split holds images of one class only ({present.tolist()}): "
                    "a classifier needs at least two. Check the data's labels and split "
                    "fractions."
                )
            trees = HistGradientBoostingClassifier(class_weight="balanced", **self._tree_args())
            trees.fit(x, np.asarray(labels, dtype=np.int64))
            classes = [int(c) for c in trees.classes_]
            baseline[:k] = ABSENT_LOGIT
            baseline[classes] = 0.0
            # binary: scikit-learn grows one tree per iteration, the logit of the second class
            models.append((trees, classes[1:] if len(classes) == 2 else classes))
        if self.specs.target.enabled:
            y = self.scaler.transform(np.asarray(targets, dtype=np.float64))
            known = ~np.isnan(y)
            if known.sum() < 2:
                raise ConfigError(
                    "The regression head needs at least 2 training images with a known target, "
                    f"but got {int(known.sum())}."
                )
            regressor = HistGradientBoostingRegressor(**self._tree_args())
            models.append((regressor.fit(x[known], y[known]), [k]))
        arrays = forest_arrays(models, baseline)
        info = {"n_trees": float(len(arrays["roots"])), "n_nodes": float(len(arrays["value"]))}
        return TreesFit(arrays, info)

    def install_head(self, fit: TreesFit) -> None:
        """Make the fitted trees the model's (its buffers)."""
        self.forest.set(fit.arrays)


#: the classes of the OST rule's low, moderate and high risk category by default
WHO_CLASSES = ("normal", "osteopenia", "osteoporosis")
#: added to the rule's category's logit, so its probability is the largest also where two
#: categories' linear logits tie (at a cut-off: the rule's bands are closed, ``-4 <= OST <= -1``)
TIE_MARGIN = 1e-3


@dataclass(frozen=True)
class OSTRule:
    """The Osteoporosis Self-assessment Tool (Koh et al. 2001): ``OST = 0.2 × (weight_kg −
    age)``; ``OST < cutoffs[0]`` high risk, ``cutoffs[0] <= OST <= cutoffs[1]`` moderate,
    ``OST > cutoffs[1]`` low.

    Probabilities are an adjacent-category logit model of OST with the cut-offs as its
    boundaries: logits ``slope × (OST − cutoffs[1])`` (low), ``0`` (moderate),
    ``slope × (cutoffs[0] − OST)`` (high), plus :data:`TIE_MARGIN` on the rule's category.
    Its argmax is the rule's category; the probability of high risk falls and that of low
    risk rises with OST (so AUROC is defined). Unknown weight or age: uniform probabilities.

    Attributes:
        weight: the column of weight in kg in the features.
        age: the column of age in years.
        cutoffs: ``(high/moderate, moderate/low)`` OST cut-offs.
        slope: logit change per OST unit.
        columns: the output (class) column of the low, moderate and high risk category.
        k: the number of outputs.
    """

    weight: int
    age: int
    cutoffs: tuple[float, float]
    slope: float
    columns: tuple[int, int, int]
    k: int

    def ost(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` raw covariates → ``(B,)`` float64 OST (NaN where weight or age is
        unknown). ``(weight − age) / 5`` is 0.2 × (weight − age) exactly at whole cut-offs."""
        x = x.double()
        return (x[:, self.weight] - x[:, self.age]) / 5.0

    def category(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` risk category: 0 low, 1 moderate, 2 high; -1 unknown."""
        ost = self.ost(x)
        low, high = self.cutoffs
        category = torch.ones_like(ost, dtype=torch.long)
        category[ost > high] = 0
        category[ost < low] = 2
        return torch.where(ost.isnan(), -1, category)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` → ``(B, K)`` float64 class logits (0 for every class where unknown)."""
        ost = self.ost(x)
        low, high = self.cutoffs
        zero = torch.zeros_like(ost)
        risk = torch.stack([self.slope * (ost - high), zero, self.slope * (low - ost)], dim=1)
        category = self.category(x)
        risk = risk + TIE_MARGIN * nn.functional.one_hot(category.clamp(min=0), 3)
        risk = torch.where((category < 0)[:, None], 0.0, risk)  # (B, 3)
        out = torch.zeros(len(x), self.k, dtype=torch.float64, device=x.device)
        out[:, list(self.columns)] = risk
        return out


@dataclass(frozen=True)
class RuleFit:
    """What :meth:`ClinicalRuleClassifier.fit_head` returns: the rule itself (nothing is
    fitted) and the training images it cannot score (``info["ost_unknown"]``)."""

    rule: OSTRule
    info: dict[str, float]

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """``(M, P)`` raw covariates → ``(M, K)`` logits."""
        return self.rule.logits(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


class ClinicalRuleClassifier(FittedHeadClassifier):
    """The OST screening rule as a model (``model=ost_rule``): nothing is fitted; the one
    training step only marks the run, so it writes a checkpoint like every model.

    The categories are the classes in ``class_order`` (low, moderate, high risk; by default
    normal, osteopenia, osteoporosis). An image whose weight or age is unknown gets uniform
    probabilities; each split's count is logged (``train/ost_unknown``, ``val/ost_unknown``,
    ``test/ost_unknown``) and a warning names it.

    Args:
        net: :func:`~osteolightning.models.components.features.covariates_net`.
        class_names: the run's ``K = 3`` classes, those of ``class_order`` in any order.
        cutoffs: ``[high/moderate, moderate/low]`` OST cut-offs (Koh et al.: ``[-4, -1]``).
        weight_column: the covariate holding weight in kg.
        age_column: the covariate holding age in years.
        class_order: the classes of the low, moderate and high risk category.
        slope: the probabilities' logit change per OST unit (see :class:`OSTRule`).
        **kwargs: :class:`~osteolightning.models.fitted.FittedHeadClassifier`'s (covariates,
            which must include the two columns; ``t_score_weight`` must be 0).

    Raises:
        ConfigError: a T-score head, cut-offs that are not two ascending numbers, a slope that
            is not positive, covariates without the two columns, classes other than
            ``class_order``'s.

    Example:
        >>> from osteolightning.models.components.features import covariates_net
        >>> model = ClinicalRuleClassifier(covariates_net(3), list(WHO_CLASSES),
        ...     covariates=["weight_kg", "age"])
        >>> probs = model.predict_proba(torch.zeros(2, 1, 8, 8), torch.tensor([[50.0, 75.0],
        ...     [80.0, 50.0]]))  # OST -5 (high risk), 6 (low)
        >>> probs.argmax(1).tolist()
        [2, 0]
    """

    def __init__(
        self,
        net: FeatureHead,
        class_names: Sequence[str],
        cutoffs: Sequence[float] = (-4.0, -1.0),
        weight_column: str = "weight_kg",
        age_column: str = "age",
        class_order: Sequence[str] = WHO_CLASSES,
        slope: float = 1.0,
        **kwargs: Any,
    ) -> None:
        t_weight = kwargs.get("t_score_weight", 0.0)
        if t_weight:
            raise ConfigError(
                "Expected argument `t_score_weight` to be 0 for the OST rule (it scores a risk "
                f"category, not a T-score), but got {t_weight!r}. Set model.t_score_weight=0."
            )
        try:
            cuts = [float(c) for c in cutoffs] if not isinstance(cutoffs, str) else []
        except (TypeError, ValueError):
            cuts = []
        if len(cuts) != 2 or not np.all(np.isfinite(cuts)) or not cuts[0] < cuts[1]:
            raise ConfigError(
                "Expected argument `cutoffs` to be two ascending OST cut-offs [high/moderate, "
                f"moderate/low] such as [-4.0, -1.0], but got {cutoffs!r}."
            )
        if isinstance(slope, bool) or not (isinstance(slope, int | float) and slope > 0):
            raise ConfigError(
                f"Expected argument `slope` to be a positive number, but got {slope!r}."
            )
        super().__init__(net, class_names, **kwargs)
        _require_record_only(self, "ClinicalRuleClassifier")
        names = list(self.hparams.covariates)
        lacking = [c for c in (weight_column, age_column) if c not in names]
        if lacking:
            raise ConfigError(
                f"Expected argument `covariates` to include the OST rule's columns "
                f"{[weight_column, age_column]}, but got {names} (no {lacking}). Add them "
                f"(model.covariates=[{weight_column},{age_column}]) or name the columns "
                "holding weight in kg and age in years (model.weight_column, model.age_column)."
            )
        order, classes = [str(c) for c in class_order], [str(c) for c in class_names]
        if len(order) != 3 or len(set(order)) != 3 or sorted(order) != sorted(classes):
            raise ConfigError(
                f"Expected the run's classes to be the OST rule's three risk categories "
                f"`class_order` {order} (low, moderate, high risk) in any order, but got "
                f"{classes}. Name your classes of low, moderate and high risk: "
                "model.class_order=[<low>,<moderate>,<high>]."
            )
        self.save_hyperparameters(
            {
                "cutoffs": cuts,
                "weight_column": str(weight_column),
                "age_column": str(age_column),
                "class_order": order,
                "slope": float(slope),
            }
        )
        self.rule = OSTRule(
            weight=names.index(weight_column),
            age=names.index(age_column),
            cutoffs=(cuts[0], cuts[1]),
            slope=float(slope),
            columns=tuple(classes.index(c) for c in order),
            k=len(classes),
        )
        self._test_unknown = [0, 0]  # (unknown, images) of the test epoch, for its warning

    def _build_heads(self, n_covariates: int) -> None:
        super()._build_heads(n_covariates)
        _silence_image_head(self)

    def all_features(self, batch: Batch) -> torch.Tensor:
        """``(B, P)`` float64 raw covariates, NaN where unknown (the rule's input)."""
        return _raw_covariates(self, batch)

    def batch_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits (B, K), None)``: the rule's (see :class:`OSTRule`)."""
        return self.rule.logits(self.all_features(batch)).float(), None

    def fit_head(
        self, x: np.ndarray, labels: np.ndarray, groups: np.ndarray, targets: np.ndarray
    ) -> RuleFit:
        """Nothing to fit: the rule, and how many of the ``(N, P)`` training rows it cannot
        score (weight or age unknown)."""
        unknown = int((self.rule.category(torch.as_tensor(x)) < 0).sum())
        if unknown:
            self._warn_unknown("training", unknown, len(x))
        return RuleFit(self.rule, {"ost_unknown": float(unknown)})

    def install_head(self, fit: RuleFit) -> None:
        """Nothing to install: the rule is fixed by the hyper-parameters."""

    def _warn_unknown(self, split: str, unknown: int, n: int) -> None:
        hp = self.hparams
        log.warning(
            f"{unknown} of the {n} {split} images lack {hp.weight_column} or {hp.age_column}: "
            "the OST rule cannot score them and gives them uniform probabilities."
        )

    def _count_unknown(self, split: str, batch: Batch) -> None:
        unknown = self.rule.category(self.all_features(batch)) < 0
        if split == "test":
            self._test_unknown[0] += int(unknown.sum())
            self._test_unknown[1] += len(unknown)
        self.log(
            f"{split}/ost_unknown",
            unknown.sum().float(),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            batch_size=len(unknown),
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._count_unknown("val", batch)
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        self._count_unknown("test", batch)
        return super().test_step(batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        self._test_unknown = [0, 0]

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self._test_unknown[0]:
            self._warn_unknown("test", *self._test_unknown)
