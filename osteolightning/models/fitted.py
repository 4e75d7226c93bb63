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
from typing import Any

import numpy as np
import torch

from osteolightning.errors import ConfigError
from osteolightning.models.classifier import Batch, KneeClassifier
from osteolightning.models.components.feature_cache import FeatureCache
from osteolightning.models.components.features import FeatureHead
from osteolightning.models.linear_fits import (
    DEFAULT_ALPHAS,
    DEFAULT_CS,
    HeadFit,
    fit_logistic_z,
    fit_ridge,
    standardisation,
    weight_block,
)

#: the image block's weights ``image_weight = "auto"`` chooses among, beside covariates (0: the
#: covariates alone; 1: one penalty for both blocks)
DEFAULT_IMAGE_WEIGHTS = (0.0, 0.03, 0.1, 0.3, 1.0)


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
        if n_covariates or self.specs.target.enabled:
            self.net.resize(2 * n_covariates, k + int(self.specs.target.enabled))

    def batch_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits (B, K), standardised target prediction (B,) or None)``."""
        outputs = self.net.outputs(self.all_features(batch))
        k = len(self.hparams.class_names)
        return outputs[:, :k], (outputs[:, k] if self.specs.target.enabled else None)

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
        if self.specs.target.class_weight > 0:
            best = None
            for w in weights:
                zw = weight_block(z, d_image, w)
                c, b, chosen, scores = fit_logistic_z(zw, labels, k, C, Cs, groups, hp.inner_folds)
                score = min(scores.values()) if scores else 0.0
                if best is None or score < best[0]:
                    best = (score, c, b, chosen, w)
            _, coef, intercept, info["C"], w = best
            coef = weight_block(coef, d_image, w)  # back to the unweighted standardised features
            if len(weights) > 1 or weights[0] != 1.0:
                info["image_weight"] = w
        if self.specs.target.enabled:
            y = self.scaler.transform(targets)
            known = ~np.isnan(y)
            best = None
            for w in weights:
                ridge = fit_ridge(
                    weight_block(z[known], d_image, w),
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
            coef = np.vstack([coef, weight_block(ridge.coef[None], d_image, w)])
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
