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

With a regression head (``model.t_score_weight > 0``) a ridge regression (its strength chosen
by grouped inner cross-validation, or from config) is fitted on the same standardised features
to the standardised target, and becomes one more output row of the same linear layer. With
covariates (``model.covariates``) their encoding (standardised, imputed, missing-indicators)
is appended to the image features; ``model=covariates`` has no image features at all, the
clinical baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from osteolightning.errors import ConfigError
from osteolightning.models.classifier import Batch, KneeClassifier
from osteolightning.models.components.feature_cache import FeatureCache
from osteolightning.models.components.features import FeatureHead

#: the strengths ``C = "auto"`` chooses among (inverse L2 penalty; log-spaced)
DEFAULT_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
#: the logit of a class the training split does not have (probability 0)
ABSENT_LOGIT = -1.0e4
#: the ridge strengths ``alpha = "auto"`` chooses among (on standardised features and target)
DEFAULT_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
#: the image block's weights ``image_weight = "auto"`` chooses among, beside covariates (0: the
#: covariates alone; 1: one penalty for both blocks)
DEFAULT_IMAGE_WEIGHTS = (0.0, 0.03, 0.1, 0.3, 1.0)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training means and standard deviations ``(D,)`` of ``(N, D)`` features (1 where
    constant)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return mean, scale


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
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    mean, scale = standardisation(x)
    coef, intercept, chosen, scores = fit_logistic_z(
        (x - mean) / scale, y, k, C, Cs, groups, inner_folds, seed
    )
    return LogisticFit(coef, intercept, mean, scale, chosen, scores)


def fit_logistic_z(
    z: np.ndarray,
    y: np.ndarray,
    k: int,
    C: float | str = "auto",
    Cs: Sequence[float] = DEFAULT_CS,
    groups: np.ndarray | None = None,
    inner_folds: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float, dict[float, float]]:
    """:func:`fit_logistic` on features already standardised (or scaled on purpose, e.g. a
    block weighted down): ``(coef (K, D), intercept (K,), C, inner scores)``, logits
    ``z @ coef.T + intercept``."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    if len(present) < 2:
        raise ConfigError(
            f"The training split holds images of one class only ({present.tolist()}): a "
            "classifier needs at least two. Check the data's labels and split fractions."
        )
    d = z.shape[1]
    # Wider than tall (an embedding of 1280 numbers, ~100 training images): fit in the span of
    # the training rows. The L2-penalised solution lies there (the representer theorem; the
    # intercept is not penalised), and the penalty's norm is kept by the orthonormal basis, so
    # the fit is the same problem in N instead of D dimensions (inner folds' rows lie in the
    # span too): several times faster for the permutation test's thousands of fits.
    basis = _row_space(z)
    if basis is not None:
        z = z @ basis
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
    if basis is not None:  # back to the D standardised features
        model.coef_ = model.coef_ @ basis.T
    coef = np.zeros((k, d))
    intercept = np.full(k, ABSENT_LOGIT)
    if len(model.classes_) == 2:  # sklearn's binary form: logit of the second class only
        coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
        intercept[model.classes_[0]] = 0.0
    else:
        coef[model.classes_] = model.coef_
        intercept[model.classes_] = model.intercept_
    return coef, intercept, chosen, scores


def _row_space(z: np.ndarray) -> np.ndarray | None:
    """An orthonormal ``(D, r)`` basis of the span of the rows of ``z`` (``None`` when ``z`` is
    not wider than tall: nothing to gain)."""
    n, d = z.shape
    if d <= n:
        return None
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    rank = int(np.sum(singular > singular[0] * max(n, d) * np.finfo(np.float64).eps))
    return vt[:rank].T if rank else None


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
    splits = list(folds.split(z, y, groups))  # once: the same folds for every C
    scores = {}
    for c in Cs:
        losses = []
        for train, test in splits:
            if len(np.unique(y[train])) < 2:
                continue
            model = LogisticRegression(C=float(c), class_weight="balanced", max_iter=5000)
            model.fit(z[train], y[train])
            probs = np.full((len(test), len(labels)), 1e-9)
            probs[:, np.searchsorted(labels, model.classes_)] = model.predict_proba(z[test])
            losses.append(log_loss(y[test], probs / probs.sum(1, keepdims=True), labels=labels))
        scores[float(c)] = float(np.mean(losses)) if losses else float("inf")
    return scores


@dataclass(frozen=True)
class RidgeFit:
    """A fitted linear regression on standardised features: ``y = coef @ z + intercept``.

    Attributes:
        coef: ``(D,)``.
        intercept: the intercept.
        alpha: the strength used.
        inner_scores: ``alpha`` → mean inner-CV squared error (``alpha = "auto"`` only).
    """

    coef: np.ndarray
    intercept: float
    alpha: float
    inner_scores: dict[float, float]


def fit_ridge(
    z: np.ndarray,
    y: np.ndarray,
    alpha: float | str = "auto",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    groups: np.ndarray | None = None,
    inner_folds: int = 5,
) -> RidgeFit:
    """Fit a ridge regression (scikit-learn) on standardised features.

    Args:
        z: ``(N, D)`` standardised training features.
        y: ``(N,)`` targets (standardised), all known.
        alpha: the L2 strength, or ``"auto"``: the one of ``alphas`` with the smallest mean
            squared error over ``inner_folds`` grouped folds (``GroupKFold``).
        alphas: the candidates of ``"auto"``.
        groups: ``(N,)`` group ids (never split across inner folds).
        inner_folds: folds of the inner search (fewer when there are fewer groups).

    Raises:
        ConfigError: fewer than two training values, a bad ``alpha``.
    """
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold

    if len(y) < 2:
        raise ConfigError(
            f"The regression head needs at least 2 training images with a known target, but "
            f"got {len(y)}."
        )
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    scores: dict[float, float] = {}
    if alpha == "auto":
        n_splits = min(int(inner_folds), len(np.unique(groups)))
        if n_splits >= 2:
            for a in alphas:
                errors = []
                for train, test in GroupKFold(n_splits=n_splits).split(z, y, groups):
                    model = Ridge(alpha=float(a)).fit(z[train], y[train])
                    errors.append(float(np.mean((model.predict(z[test]) - y[test]) ** 2)))
                scores[float(a)] = float(np.mean(errors))
            chosen = min(scores, key=lambda a: (scores[a], -a))
        else:
            chosen = float(alphas[len(alphas) // 2])
    else:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
            raise ConfigError(
                f"Expected argument `alpha` to be a positive number or 'auto', but got {alpha!r}."
            )
        chosen = float(alpha)
    model = Ridge(alpha=chosen).fit(z, y)
    return RidgeFit(
        np.asarray(model.coef_, dtype=np.float64), float(model.intercept_), chosen, scores
    )


@dataclass(frozen=True)
class HeadFit:
    """A fitted linear head: ``outputs = ((x - mean) / scale) @ coef.T + intercept``, the ``K``
    logits then (with a regression head) the standardised target prediction.

    Attributes:
        mean: ``(D,)`` training means.
        scale: ``(D,)`` training standard deviations (1 where constant).
        coef: ``(O, D)``.
        intercept: ``(O,)``.
        info: what the fit chose (``C``, ``alpha``, ``image_weight``), logged as ``train/*``.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    info: dict[str, float]

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """``(M, D)`` features → ``(M, O)`` outputs."""
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept


def _weighted(z: np.ndarray, d_image: int, w: float) -> np.ndarray:
    """``z`` with its first ``d_image`` columns (the image block) times ``w``. An L2 penalty on
    the weighted features is a penalty ``1 / w²`` times as strong on the image's coefficients
    as on the covariates': the two blocks regularised separately with one solver; ``w = 0`` is
    the covariates alone."""
    if w == 1.0:
        return z
    out = np.array(z, dtype=np.float64, copy=True)
    out[:, :d_image] *= w
    return out


class FittedHeadClassifier(KneeClassifier):
    """A classifier with fixed features and a logistic head fitted once (see the module).

    Args:
        net: a :class:`FeatureHead`.
        class_names: ``K`` class names.
        C: inverse regularisation strength, or ``"auto"`` (inner grouped CV over ``Cs``).
        Cs: the candidates of ``"auto"``.
        inner_folds: folds of the inner search.
        alpha: the ridge strength of the regression head, or ``"auto"`` (grouped inner CV over
            ``alphas``).
        alphas: the candidates of ``"auto"``.
        image_weight: with covariates beside image features, the image block's weight (its
            penalty ``1 / w²`` times the covariates'), or ``"auto"``: the one of
            ``image_weights`` (and ``C`` / ``alpha`` with it) with the best grouped inner-CV
            loss. ``0`` in the grid keeps the covariates-alone model among the candidates, so
            an image without signal cannot drown what the record knows.
        image_weights: the candidates of ``"auto"``.
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
        alpha: float | str = "auto",
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        image_weight: float | str = 1.0,
        image_weights: Sequence[float] = DEFAULT_IMAGE_WEIGHTS,
        **kwargs: Any,
    ) -> None:
        for unused in ("optimizer", "scheduler", "mixup"):
            kwargs.pop(unused, None)
        super().__init__(net, class_names, **kwargs)
        if C != "auto" and not (isinstance(C, int | float) and C > 0):
            raise ConfigError(
                f"Expected argument `C` to be a positive number or 'auto', but got {C!r}."
            )
        if image_weight != "auto" and not (
            isinstance(image_weight, int | float) and image_weight >= 0
        ):
            raise ConfigError(
                "Expected argument `image_weight` to be a number >= 0 or 'auto', but got "
                f"{image_weight!r}."
            )
        self.save_hyperparameters(
            {
                "image_weight": image_weight,
                "image_weights": [float(w) for w in image_weights],
                "C": C,
                "Cs": [float(c) for c in Cs],
                "inner_folds": int(inner_folds),
                "alpha": alpha,
                "alphas": [float(a) for a in alphas],
            }
        )
        self.feature_cache = feature_cache or FeatureCache(None)
        self.automatic_optimization = False
        self._collected: list[tuple[torch.Tensor, ...]] = []

    def _build_heads(self, n_covariates: int) -> None:
        """One fitted linear layer for every output: widen the feature head for the encoded
        covariates and the regression output."""
        self.pooled = self.target_head = self.covariate_head = None
        k = len(self.hparams.class_names)
        if n_covariates or self.spec.enabled:
            self.net.resize(2 * n_covariates, k + int(self.spec.enabled))

    def batch_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits (B, K), standardised target prediction (B,) or None)``."""
        outputs = self.net.outputs(self.all_features(batch))
        k = len(self.hparams.class_names)
        return outputs[:, :k], (outputs[:, k] if self.spec.enabled else None)

    def all_features(self, batch: Batch) -> torch.Tensor:
        """``(B, D + 2P)``: the image's features and the encoded covariates."""
        features = self.features(batch).float()
        if self.covariate_encoder is None:
            return features
        covariates = self.covariate_encoder(self._covariates(batch)).to(features)
        return torch.cat([features, covariates], dim=1)

    # -- features ---------------------------------------------------------------------------
    def features(self, batch: Batch) -> torch.Tensor:
        """``(B, D)`` features of a batch, from the cache where the data names each image
        (``batch["key"]``) and it is not augmented; the rest computed and stored."""
        keys = batch.get("key")
        if self.net.image_dim == 0:  # no image features (the covariates-only baseline)
            return batch["image"].new_zeros(len(batch["image"]), 0)
        if keys is None or bool(torch.as_tensor(batch.get("augmented", False)).any()):
            return self._embed(batch, None)
        embedder = f"{self.net.key}-{self._preprocessing_key()}"
        found = self.feature_cache.get(embedder, list(keys))
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            computed = self._embed(batch, todo).float().cpu().numpy()
            self.feature_cache.put(embedder, [keys[i] for i in todo], computed)
            for i, vector in zip(todo, computed, strict=True):
                found[i] = vector
        return torch.as_tensor(np.stack(found), device=batch["image"].device)

    def _embed(self, batch: Batch, rows: list[int] | None) -> torch.Tensor:
        """The embedder's features of the batch's images (``rows`` of them); an embedder that
        measures a region (``needs_mask``) also gets the batch's masks."""
        images = batch["image"] if rows is None else batch["image"][rows]
        if not getattr(self.net.embedder, "needs_mask", False):
            return self.net.embedder(images)
        masks = batch.get("mask")
        if masks is None:
            raise ConfigError(
                f"{type(self.net.embedder).__name__} measures the bone inside each image's "
                "mask, but the batch has none: set data.mask_input=provide and give masks (the "
                "phantom's, or a manifest's mask column)."
            )
        return self.net.embedder(images, masks if rows is None else masks[rows])

    def _preprocessing_key(self) -> str:
        pre = self.preprocessing
        return f"in{pre.in_chans}-m{','.join(map(str, pre.mean))}-s{','.join(map(str, pre.std))}"

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The classifier's test step; an embedder that segments each image (a bone-region
        embedder with a ``segmenter``) adds, per image, the Dice of its bone against the data's
        masks and whether the segmenter trained on the image (``extras``, reported as
        ``test/segmentation_dice`` and ``test/segmenter_trained_on``)."""
        out = super().test_step(batch, batch_idx)
        embedder = self.net.embedder
        if getattr(embedder, "segmenter", None) is None:
            return out
        extras = {}
        if batch.get("mask") is not None:
            extras["segmentation_dice"] = embedder.segmentation_dice(batch["image"], batch["mask"])
        keys = batch.get("key")
        if keys is not None:
            seen = [str(k).split("-")[0] in embedder.segmenter_train for k in keys]
            extras["segmenter_trained_on"] = torch.tensor(seen, dtype=torch.float)
        return {**out, "extras": extras}

    # -- the fit ----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._collected = []

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        groups = batch.get("group", batch["index"])
        targets = batch.get(
            "target", torch.full_like(batch["label"], float("nan"), dtype=torch.float)
        )
        self._collected.append(
            (
                self.all_features(batch).cpu(),
                batch["label"].cpu(),
                groups.cpu(),
                targets.float().cpu(),
            )
        )
        if self.trainer.is_last_batch:
            self._fit_head()
            # the fit is the run's one optimisation step: counted as one, so checkpoints are
            # written for it (the optimiser's learning rate is 0 and no gradient exists)
            self.optimizers().step()
            self.trainer.should_stop = True  # fitted: this epoch's validation is the last

    def _fit_head(self) -> None:
        features, labels, groups, targets = (
            torch.cat(parts) for parts in zip(*self._collected, strict=True)
        )
        if self.trainer.world_size > 1:  # every rank fits the same head on all images
            features, labels, groups, targets = (
                self.all_gather(t.to(self.device)).flatten(0, 1).cpu()
                for t in (features, labels, groups, targets)
            )
        fit = self.fit_head(
            features.double().numpy(), labels.numpy(), groups.numpy(), targets.double().numpy()
        )
        self.install_head(fit)
        for name, value in fit.info.items():
            self.log(f"train/{name}", float(value), on_step=False, on_epoch=True, batch_size=1)
        self.log("train/n_fitted", float(len(labels)), on_step=False, on_epoch=True, batch_size=1)
        self.print_cache_use()

    def fit_head(
        self, x: np.ndarray, labels: np.ndarray, groups: np.ndarray, targets: np.ndarray
    ) -> HeadFit:
        """The model's whole fitting procedure on training arrays (no trainer needed: the
        permutation tests call it on shuffled labels or features).

        Args:
            x: ``(N, D + 2P)`` features (:meth:`all_features`).
            labels: ``(N,)`` class indices.
            groups: ``(N,)`` group ids (never split by an inner fold).
            targets: ``(N,)`` raw target values (NaN unknown; unused without a regression head).

        Returns:
            The fitted outputs (logits, then the standardised target prediction).
        """
        mean, scale = standardisation(x)
        z = (x - mean) / scale
        k = len(self.hparams.class_names)
        d_image = self.net.image_dim
        weights = self._image_weights(d_image, x.shape[1])
        coef, intercept, info = np.zeros((k, x.shape[1])), np.zeros(k), {}
        hp = self.hparams
        # several weights: each is scored by the inner search, also with a fixed strength
        C, Cs = (hp.C, hp.Cs) if hp.C == "auto" or len(weights) == 1 else ("auto", [hp.C])
        alpha, alphas = (
            (hp.alpha, hp.alphas)
            if hp.alpha == "auto" or len(weights) == 1
            else ("auto", [hp.alpha])
        )
        if self.spec.class_weight > 0:
            best = None
            for w in weights:
                zw = _weighted(z, d_image, w)
                c, b, chosen, scores = fit_logistic_z(zw, labels, k, C, Cs, groups, hp.inner_folds)
                score = min(scores.values()) if scores else 0.0
                if best is None or score < best[0]:
                    best = (score, c, b, chosen, w)
            _, coef, intercept, info["C"], w = best
            coef = _weighted(coef, d_image, w)  # back to the unweighted standardised features
            if len(weights) > 1 or weights[0] != 1.0:
                info["image_weight"] = w
        if self.spec.enabled:
            y = self.scaler.transform(targets)
            known = ~np.isnan(y)
            best = None
            for w in weights:
                ridge = fit_ridge(
                    _weighted(z[known], d_image, w),
                    y[known],
                    alpha=alpha,
                    alphas=alphas,
                    groups=groups[known],
                    inner_folds=hp.inner_folds,
                )
                score = min(ridge.inner_scores.values()) if ridge.inner_scores else 0.0
                if best is None or score < best[0]:
                    best = (score, ridge, w)
            _, ridge, w = best
            coef = np.vstack([coef, _weighted(ridge.coef[None], d_image, w)])
            intercept = np.append(intercept, ridge.intercept)
            info["alpha"] = ridge.alpha
            if len(weights) > 1 or weights[0] != 1.0:
                info["target_image_weight"] = w
        return HeadFit(mean, scale, coef, intercept, info)

    def _image_weights(self, d_image: int, d: int) -> list[float]:
        """The image block's weights to try: one (no fusion, or a fixed weight), or the grid of
        ``image_weight="auto"`` when the features hold both an image and covariates."""
        weight = self.hparams.get("image_weight", 1.0)
        if d_image == 0 or d_image == d:  # one block only: nothing to weigh
            return [1.0]
        if weight == "auto":
            return [float(w) for w in self.hparams.image_weights]
        return [float(weight)]

    def install_head(self, fit: HeadFit) -> None:
        """Make ``fit`` the model's head (hook: a model with another kind of head)."""
        self.net.set_head(fit.mean, fit.scale, fit.coef, fit.intercept)

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
