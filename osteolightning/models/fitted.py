"""Models that spend few parameters: fixed features and a regularised logistic head, fitted in
closed form instead of trained by gradient steps.

``model=linear_probe`` (a frozen pretrained backbone's features) and ``model=texture`` (local
binary patterns and co-occurrence statistics) are :class:`FittedHeadClassifier`: one pass
over the training split collects every image's features (read from
:class:`~osteolightning.models.components.feature_cache.FeatureCache` when an earlier run
embedded it), scikit-learn fits a class-balanced multinomial logistic regression on them
(the strength ``C`` from config, or chosen by grouped, stratified inner cross-validation on
the training split), and the fitted coefficients become the weights of a linear layer. The
module is then a classifier like any other: validation, test, the report, checkpoints,
``osteo-eval``, ``osteo-predict`` and the ensembles use it unchanged, and its probabilities
are scikit-learn's ``predict_proba`` on the same features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.classifier import Batch, KneeClassifier
from osteolightning.models.components.feature_cache import FeatureCache
from osteolightning.models.components.features import FeatureHead

#: the strengths ``C = "auto"`` chooses among (inverse L2 penalty; log-spaced)
DEFAULT_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
#: the logit of a class the training split does not have (probability 0)
ABSENT_LOGIT = -1.0e4


@dataclass(frozen=True)
class LogisticFit:
    """A fitted head: ``logits = coef @ ((x - mean) / scale) + intercept``.

    Attributes:
        coef: ``(K, D)``; rows of classes absent from the training data are 0.
        intercept: ``(K,)``; absent classes get :data:`ABSENT_LOGIT`.
        mean: ``(D,)`` training means.
        scale: ``(D,)`` training standard deviations (1 where constant).
        C: the strength used.
        inner_scores: ``C`` → mean inner-CV log-loss (``C = "auto"`` only).
    """

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    C: float
    inner_scores: dict[float, float]


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    C: float | str = "auto",
    Cs: Sequence[float] = DEFAULT_CS,
    groups: np.ndarray | None = None,
    inner_folds: int = 5,
    seed: int = 0,
) -> LogisticFit:
    """Fit a class-balanced multinomial logistic regression (L2, lbfgs) on standardised features.

    Args:
        features: ``(N, D)`` training features.
        labels: ``(N,)`` class indices in ``[0, k)``.
        k: the number of classes.
        C: the inverse regularisation strength, or ``"auto"``: the one of ``Cs`` with the best
            mean log-loss over ``inner_folds`` stratified, grouped folds of these images.
        Cs: the candidates of ``"auto"``.
        groups: ``(N,)`` group ids (patient or copy groups: never split across inner folds).
        inner_folds: folds of the inner search (fewer when a class has fewer groups).
        seed: the inner folds' seed.

    Returns:
        The fit, with the coefficients of every class (absent ones: :data:`ABSENT_LOGIT`).

    Raises:
        ConfigError: fewer than two classes in the training data, a bad ``C``.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    if len(present) < 2:
        raise ConfigError(
            f"The training split holds images of one class only ({present.tolist()}): a "
            "classifier needs at least two. Check the data's labels and split fractions."
        )
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    z = (x - mean) / scale
    scores: dict[float, float] = {}
    if C == "auto":
        scores = _inner_search(z, y, Cs, groups, inner_folds, seed)
        chosen = min(scores, key=lambda c: (scores[c], -c))
    else:
        try:
            chosen = float(C)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"Expected `C` to be a positive number or 'auto', but got {C!r}."
            ) from err
        if not chosen > 0:
            raise ConfigError(f"Expected `C` to be a positive number or 'auto', but got {C!r}.")
    model = LogisticRegression(C=chosen, class_weight="balanced", max_iter=5000)
    model.fit(z, y)
    coef = np.zeros((k, x.shape[1]))
    intercept = np.full(k, ABSENT_LOGIT)
    if len(model.classes_) == 2:  # sklearn's binary form: logit of the second class only
        coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
        intercept[model.classes_[0]] = 0.0
    else:
        coef[model.classes_] = model.coef_
        intercept[model.classes_] = model.intercept_
    return LogisticFit(coef, intercept, mean, scale, chosen, scores)


def _inner_search(
    z: np.ndarray,
    y: np.ndarray,
    Cs: Sequence[float],
    groups: np.ndarray | None,
    inner_folds: int,
    seed: int,
) -> dict[float, float]:
    """Mean inner-CV log-loss of each ``C`` (folds stratified by class, grouped)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    smallest = min(len(np.unique(groups[y == c])) for c in np.unique(y))
    n_splits = max(2, min(int(inner_folds), smallest))
    if smallest < 2:
        return {float(c): 0.0 for c in Cs[len(Cs) // 2 : len(Cs) // 2 + 1]}  # nothing to search
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    labels = np.unique(y)
    scores = {}
    for c in Cs:
        losses = []
        for train, test in folds.split(z, y, groups):
            if len(np.unique(y[train])) < 2:
                continue
            model = LogisticRegression(C=float(c), class_weight="balanced", max_iter=5000)
            model.fit(z[train], y[train])
            probs = np.full((len(test), len(labels)), 1e-9)
            probs[:, np.searchsorted(labels, model.classes_)] = model.predict_proba(z[test])
            losses.append(log_loss(y[test], probs / probs.sum(1, keepdims=True), labels=labels))
        scores[float(c)] = float(np.mean(losses)) if losses else float("inf")
    return scores


class FittedHeadClassifier(KneeClassifier):
    """A classifier with fixed features and a logistic head fitted once (see the module).

    Args:
        net: a :class:`FeatureHead`.
        class_names: ``K`` class names.
        C: inverse regularisation strength, or ``"auto"`` (inner grouped CV over ``Cs``).
        Cs: the candidates of ``"auto"``.
        inner_folds: folds of the inner search.
        feature_cache: where features are kept between runs (``None``: computed every time).
        **kwargs: :class:`~osteolightning.models.classifier.KneeClassifier`'s (class names,
            preprocessing facts, monitor); its optimiser, loss weighting and mixup do not apply.
    """

    def __init__(
        self,
        net: FeatureHead,
        class_names: Sequence[str],
        C: float | str = "auto",
        Cs: Sequence[float] = DEFAULT_CS,
        inner_folds: int = 5,
        feature_cache: FeatureCache | None = None,
        **kwargs: Any,
    ) -> None:
        for unused in ("optimizer", "scheduler", "mixup"):
            kwargs.pop(unused, None)
        super().__init__(net, class_names, **kwargs)
        if C != "auto" and not (isinstance(C, int | float) and C > 0):
            raise ConfigError(
                f"Expected argument `C` to be a positive number or 'auto', but got {C!r}."
            )
        self.save_hyperparameters(
            {"C": C, "Cs": [float(c) for c in Cs], "inner_folds": int(inner_folds)}
        )
        self.feature_cache = feature_cache or FeatureCache(None)
        self.automatic_optimization = False
        self._collected: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- features ---------------------------------------------------------------------------
    def features(self, batch: Batch) -> torch.Tensor:
        """``(B, D)`` features of a batch, from the cache where the data names each image
        (``batch["key"]``) and it is not augmented; the rest computed and stored."""
        keys = batch.get("key")
        if keys is None or bool(torch.as_tensor(batch.get("augmented", False)).any()):
            return self.net.embedder(batch["image"])
        embedder = f"{self.net.key}-{self._preprocessing_key()}"
        found = self.feature_cache.get(embedder, list(keys))
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            computed = self.net.embedder(batch["image"][todo]).float().cpu().numpy()
            self.feature_cache.put(embedder, [keys[i] for i in todo], computed)
            for i, vector in zip(todo, computed, strict=True):
                found[i] = vector
        return torch.as_tensor(np.stack(found), device=batch["image"].device)

    def _preprocessing_key(self) -> str:
        pre = self.preprocessing
        return f"in{pre.in_chans}-m{','.join(map(str, pre.mean))}-s{','.join(map(str, pre.std))}"

    def model_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.net.head(self.features(batch))
        loss = nn.functional.cross_entropy(logits, batch["label"], weight=self.class_weights)
        return loss, logits.softmax(dim=1), batch["label"]

    # -- the fit ----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._collected = []

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        groups = batch.get("group", batch["index"])
        self._collected.append((self.features(batch).cpu(), batch["label"].cpu(), groups.cpu()))
        if self.trainer.is_last_batch:
            self._fit_head()
            # the fit is the run's one optimisation step: counted as one, so checkpoints are
            # written for it (the optimiser's learning rate is 0 and no gradient exists)
            self.optimizers().step()
            self.trainer.should_stop = True  # fitted: this epoch's validation is the last

    def _fit_head(self) -> None:
        features, labels, groups = (
            torch.cat(parts) for parts in zip(*self._collected, strict=True)
        )
        if self.trainer.world_size > 1:  # every rank fits the same head on all images
            features, labels, groups = (
                self.all_gather(t.to(self.device)).flatten(0, 1).cpu()
                for t in (features, labels, groups)
            )
        fit = fit_logistic(
            features.numpy(),
            labels.numpy(),
            len(self.hparams.class_names),
            C=self.hparams.C,
            Cs=self.hparams.Cs,
            groups=groups.numpy(),
            inner_folds=self.hparams.inner_folds,
        )
        self.net.set_head(fit.mean, fit.scale, fit.coef, fit.intercept)
        self.log("train/C", float(fit.C), on_step=False, on_epoch=True, batch_size=1)
        self.log("train/n_fitted", float(len(labels)), on_step=False, on_epoch=True, batch_size=1)
        self.print_cache_use()

    def print_cache_use(self) -> None:
        """Log how many features the cache served (``train/cache_hits``, ``train/cache_misses``)."""
        cache = self.feature_cache
        self.log("train/cache_hits", float(cache.hits), on_step=False, on_epoch=True, batch_size=1)
        self.log(
            "train/cache_misses", float(cache.misses), on_step=False, on_epoch=True, batch_size=1
        )

    def on_train_epoch_end(self) -> None:
        self._collected = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A placeholder optimiser that changes nothing (the head is fitted in closed form); its
        one step marks the fit for Lightning's step count and checkpointing."""
        return torch.optim.SGD(self.net.linear.parameters(), lr=0.0)
