"""The classification LightningModule: knee radiograph → normal / osteopenia / osteoporosis."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanAbsoluteError

from osteolightning.data.columns import coded_names
from osteolightning.errors import ConfigError
from osteolightning.metrics.classification import (
    classification_metrics,
    epoch_metrics,
    logged_keys,
)
from osteolightning.metrics.regression import TargetScaler
from osteolightning.metrics.running import RunningMean
from osteolightning.models.acceleration import Accelerated
from osteolightning.models.checkpointing import StoresRunConfig
from osteolightning.models.components.covariates import CovariateEncoder, PooledFeatures
from osteolightning.models.losses import MixupCutmix, cross_entropy, sample_weights
from osteolightning.models.schedulers import configure_optimizers
from osteolightning.models.specs import TTA_FLIPS, ClassifierSpec, FlatSignature, resolve_spec
from osteolightning.models.step_logging import StepLosses, batch_files
from osteolightning.models.targets import TargetSpec, who_index

Batch = dict[str, torch.Tensor]
Loss = Callable[..., torch.Tensor]


def plain_partial(fn: Loss) -> Loss:
    """A ``functools.partial`` made by ``hydra.utils.instantiate`` (``_partial_: true``) as a
    plain partial of the same function and arguments. Hydra's re-checks its target against the
    instantiation policy at every call (about 1 ms: per training step, for the loss) although
    neither the target nor its bound arguments change after the first, checked, call."""
    if isinstance(fn, functools.partial) and type(fn) is not functools.partial:
        return functools.partial(fn.func, *fn.args, **fn.keywords)
    return fn


def balanced_weights(counts: Sequence[int] | None, k: int, weighting: str) -> torch.Tensor:
    """Class weights of the loss: inverse training frequency normalised to mean 1 over the
    classes present (an absent class gets 0: it is never a target), or ones.

    Raises:
        ConfigError: ``counts`` does not have ``k`` non-negative entries.
    """
    if weighting != "balanced" or counts is None:
        return torch.ones(k)
    counts = torch.tensor([int(c) for c in counts], dtype=torch.float)
    if counts.numel() != k or (counts < 0).any() or counts.sum() == 0:
        raise ConfigError(
            f"Expected argument `class_counts` to hold {k} non-negative counts, not all zero, "
            f"but got {counts.tolist()}."
        )
    weights = torch.where(counts > 0, counts.sum() / (k * counts.clamp(min=1)), 0.0)
    return weights / weights[counts > 0].mean()


class KneeClassifier(Accelerated, StoresRunConfig, L.LightningModule):
    """Transfer-learned classifier with a class-weighted loss and per-split torchmetrics,
    optionally with a regression head (T-score or BMD) and clinical covariates.

    Training options (all from config): the loss (``model/loss=cross_entropy|focal``), class
    weighting, label smoothing, mixup / cutmix on training batches (``model.mixup``) and
    test-time augmentation (``model.tta``). Under mixup / cutmix the loss uses the soft targets,
    while the ``train/`` metrics compare the predictions on the *mixed* images with the images'
    original hard labels (a rough guide only; ``val/`` is never mixed). With TTA, ``test_step``
    and ``predict_step`` average the softmax over the original and each flipped image; the test
    loss and validation stay on the original image only.

    The regression head (``t_score_weight > 0``; see :mod:`osteolightning.models.targets`) is a
    linear layer on the backbone's pooled features (the input of its classification layer),
    trained with the mean squared error of the target standardised with the training split's
    statistics (:class:`~osteolightning.metrics.regression.TargetScaler`); images without a
    target value are left out of that loss. Covariates (``covariates=[age, sex, bmi]``) are
    fused late: standardised and imputed with the training split's statistics, with
    missing-indicators (:class:`~osteolightning.models.components.covariates.CovariateEncoder`),
    they enter the class logits and the regression output through one more linear layer, so
    each output is linear in ``[image features, covariates]``. ``self.net`` stays the image
    network, ``(B, C, H, W)`` → ``(B, K)`` logits, for saliency and export.

    Args:
        net: backbone mapping ``(B, C, H, W)`` to logits ``(B, K)``.
        class_names: ``K`` class names in label-index order.
        spec: all the options at once (:class:`~osteolightning.models.specs.ClassifierSpec`),
            instead of ``class_names`` and ``**options``.
        **options: the flat options of ``model:`` in config (and of a checkpoint's
            hyper-parameters), each read by one group of
            :class:`~osteolightning.models.specs.ClassifierSpec`, where each is documented:
            ``inputs`` (:class:`~osteolightning.models.checkpointing.Preprocessing`:
            ``image_size``, ``in_chans``, ``mean``, ``std``, kept in the checkpoint);
            ``optimization`` (``optimizer``, ``scheduler``); ``loss`` (``loss``,
            ``class_weighting``, ``label_smoothing``, ``mixup``); ``target``
            (:class:`~osteolightning.models.targets.TargetSpec`: ``target``,
            ``t_score_weight``, ``class_weight``, ``bmd_reference``, ``who_cutoffs``);
            ``covariates`` (``covariates``, ``covariate_coding``, ``covariates_train``);
            ``data`` (``class_counts``, ``target_train``: filled in by the entry point from
            the training split); ``evaluation`` (``monitor``, ``tta``); ``acceleration``
            (``compile``, ``channels_last``; not kept in the checkpoint).

    Raises:
        ConfigError: an unknown option, an unknown ``class_weighting`` or ``tta`` name, a
            smoothing outside [0, 1), bad ``mixup`` arguments, a ``loss`` that rejects its arguments, bad target
            settings (:meth:`TargetSpec.of`), a regression head without any known training
            target or with a constant one, mixup together with a target or covariates.
    """

    #: the flat options in the signature: config checks and help list them (models/specs.py)
    __signature__ = FlatSignature(("net", "class_names", "spec"), ClassifierSpec.BUILDERS)

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str] | None = None,
        spec: ClassifierSpec | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        spec = resolve_spec(type(self).__name__, ClassifierSpec, class_names, spec, options)
        self.specs = spec
        self.mixup = MixupCutmix(**spec.loss.mixup)
        # Plain Python types only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(spec.hparams())
        self.net = net
        self._init_acceleration(spec.acceleration.compile, spec.acceleration.channels_last)
        self.optimizer_factory = spec.optimization.optimizer
        self.scheduler_factory = spec.optimization.scheduler
        names = spec.inputs.class_names
        k = len(names)
        weights = balanced_weights(spec.data.class_counts, k, spec.loss.class_weighting)
        self.register_buffer("class_weights", weights)
        self.loss_fn = spec.loss.loss if spec.loss.loss is not None else cross_entropy
        # A dry call, so a bad loss argument (e.g. gamma < 0) fails now, not at the first step.
        self.loss_fn(torch.zeros(1, k), torch.zeros(1, dtype=torch.long), weight=self.class_weights)
        self.loss_fn = plain_partial(self.loss_fn)  # checked once; no per-step policy check
        self.train_metrics = classification_metrics(names, "train/")
        self.val_metrics = classification_metrics(names, "val/")
        self.test_metrics = classification_metrics(names, "test/")
        # per-step updates that never wait for the GPU (see metrics/running.py)
        self.train_loss, self.val_loss, self.test_loss = RunningMean(), RunningMean(), RunningMean()
        self.val_best = MaxMetric()
        self.step_losses = StepLosses("Check those images, or lower the learning rate.")
        self._build_target(spec.data.target_train)
        covariates = spec.covariates
        self.covariate_encoder = (
            CovariateEncoder(coded_names(covariates.names, covariates.coding), covariates.train)
            if covariates.names
            else None
        )
        self._build_heads(len(self.covariate_encoder.names) if self.covariate_encoder else 0)

    @property
    def spec(self) -> TargetSpec:
        """The regression head's settings (read by the callbacks, predict and export)."""
        return self.specs.target

    # -- the regression head and the covariates ----------------------------------------------
    def _build_target(self, target_train: Sequence[float] | None) -> None:
        """With a regression head: the target's training statistics (buffer
        ``target_stats = [mean, std]``), its counts and the per-split MAE metrics."""
        #: ``(known, unknown)`` target values in the training split (None: not known here)
        self.target_counts: tuple[int, int] | None = None
        if not self.specs.target.enabled:
            return  # no new state: a classifier's checkpoint keeps its keys
        self.register_buffer("target_stats", torch.tensor([0.0, 1.0]))
        if target_train is not None:
            values = np.asarray(target_train, dtype=np.float64).reshape(-1)
            known = values[~np.isnan(values)]
            if not len(known):
                raise ConfigError(
                    f"The regression head (model.t_score_weight={self.specs.target.weight}) needs "
                    f"values of target column `{self.specs.target.target}`, but none of the "
                    f"{len(values)} training images has one. Fill the column, or choose "
                    "another one (model.target=t_score|bmd)."
                )
            scaler = TargetScaler.fit(known, name=self.specs.target.target)
            self.target_stats.copy_(torch.tensor([scaler.mean, scaler.std]))
            self.target_counts = (len(known), len(values) - len(known))
        self.train_mae, self.val_mae, self.test_mae = (
            MeanAbsoluteError(),
            MeanAbsoluteError(),
            MeanAbsoluteError(),
        )

    @property
    def scaler(self) -> TargetScaler:
        """The target's standardisation (training-split mean and SD)."""
        mean, std = self.target_stats.tolist()
        return TargetScaler(self.specs.target.target, mean, std)

    def _build_heads(self, n_covariates: int) -> None:
        """The regression head on the pooled image features and the covariates' layer (hook:
        a fitted-head model fits its own)."""
        k = len(self.hparams.class_names)
        r = int(self.specs.target.enabled)
        self.pooled = None
        self.target_head: nn.Module | None = None
        self.covariate_head: nn.Module | None = None
        if r:
            pre = self.preprocessing
            self.pooled = PooledFeatures(self.net, pre.in_chans, pre.image_size)
            self.target_head = nn.Linear(self.pooled.dim, 1)
        if n_covariates:
            self.covariate_head = nn.Linear(2 * n_covariates, k + r, bias=False)
            nn.init.zeros_(self.covariate_head.weight)  # start from the image model

    def batch_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits (B, K), standardised target prediction (B,) or None)`` of a batch."""
        logits = self.net(batch["image"])
        value = None
        if self.target_head is not None:
            value = self.target_head(self.pooled.pop())[:, 0]
        if self.covariate_head is not None:
            extra = self.covariate_head(self.covariate_encoder(self._covariates(batch)))
            k = logits.shape[1]
            logits = logits + extra[:, :k]
            value = value + extra[:, k] if value is not None else None
        return logits, value

    def _covariates(self, batch: Batch) -> torch.Tensor:
        covariates = batch.get("covariates")
        if covariates is None:
            raise ConfigError(
                f"The model fuses covariates {self.covariate_encoder.names}, but the batch has "
                "none: the data must carry them (data.covariates, set from model.covariates)."
            )
        return covariates

    def class_probs(self, logits: torch.Tensor, value: torch.Tensor | None) -> torch.Tensor:
        """``(B, K)`` class probabilities: the softmax, or for a regression-only model the
        one-hot WHO category of the predicted T-score."""
        if not self.specs.target.regression_only or value is None:
            return logits.softmax(dim=1)
        t = self.specs.target.t_scores(self.scaler.inverse(value.float()))
        return nn.functional.one_hot(
            who_index(t, self.specs.target.cutoffs), logits.shape[1]
        ).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images → ``(B, K)`` logits."""
        return self.net(self._as_input(x))

    @property
    def monitorable(self) -> list[str]:
        """The keys logged once per validation epoch, which callbacks and sweepers may monitor."""
        keys = [*logged_keys(self.hparams.class_names, "val/"), "val/loss"]
        keys += [f"val/{self.specs.target.target}_mae"] if self.specs.target.enabled else []
        return [*keys, f"{self.hparams.monitor}_best"]

    def model_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, probs (B, K), targets (B,))`` (see :meth:`step`)."""
        loss, probs, _ = self.step(batch)
        return loss, probs, batch["label"]

    def step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns ``(loss, probs (B, K), predicted target (B,) in target units or None)``.

        The class loss takes ``batch["soft_label"]`` ``(B, K)`` when present (mixup / cutmix),
        else the hard ``batch["label"]``. The regression loss is the mean squared error of the
        standardised target over the images whose ``batch["target"]`` is known (0 when none
        is), weighted by ``t_score_weight``.
        """
        logits, value = self.batch_outputs(batch)
        loss = logits.sum() * 0.0  # a graph-connected zero (class_weight = 0)
        if self.specs.target.class_weight > 0:
            loss = loss + self.specs.target.class_weight * self.loss_fn(
                logits,
                batch.get("soft_label", batch["label"]),
                weight=self.class_weights,
                label_smoothing=self.hparams.label_smoothing,
            )
        predicted = None
        if value is not None:
            truth = self.scaler.transform(batch["target"].float())
            known = ~torch.isnan(truth)
            error = torch.where(known, value - truth, torch.zeros_like(value))
            mse = (error * error).sum() / known.sum().clamp(min=1)
            loss = loss + self.specs.target.weight * mse
            predicted = self.scaler.inverse(value.detach().float())
        return loss, self.class_probs(logits, value), predicted

    def _track_target(self, metric: Any, predicted: torch.Tensor | None, batch: Batch) -> None:
        """Update a split's target MAE with the images whose target is known."""
        if predicted is None:
            return
        truth = batch["target"].float()
        known = ~torch.isnan(truth)
        metric.update(predicted[known], truth[known])  # (none known: adds nothing)

    def _track_loss(self, tracker: RunningMean, loss: torch.Tensor, targets: torch.Tensor) -> None:
        # The batch loss is sum(w_i * l_i) / sum(w_i); weighting it by sum(w_i) makes the epoch
        # value the exact weighted mean over all images, however batches and ranks cut them.
        # targets: (B,) hard labels (w_i = weight[y_i]) or (B, K) soft ones (w_i = y_i @ weight).
        k = self.class_weights.numel()
        tracker.update(loss.detach(), weight=sample_weights(targets, self.class_weights, k).sum())

    def _tta(
        self, batch: Batch, probs: torch.Tensor, predicted: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean probabilities ``(B, K)`` and predicted target ``(B,)`` over the original (its
        ``probs``, ``predicted``) and each ``tta`` flip of the image."""
        views, values = [probs], [predicted]
        for name in self.hparams.tta:
            flipped = {**batch, "image": batch["image"].flip(TTA_FLIPS[name]), "key": None}
            logits, value = self.batch_outputs(flipped)
            views.append(self.class_probs(logits, value))
            values.append(None if value is None else self.scaler.inverse(value.float()))
        mean = None if predicted is None else torch.stack(values).mean(dim=0)
        return torch.stack(views).mean(dim=0), mean

    def on_train_start(self) -> None:
        self.val_best.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.mixup.enabled:
            k = self.class_weights.numel()
            images, soft = self.mixup(batch["image"], batch["label"], k)
            batch = {**batch, "image": images, "soft_label": soft}
        loss, probs, predicted = self.step(batch)
        targets = batch["label"]
        # NaN check and on-step logging on logging steps only (no per-step wait for the GPU)
        self.step_losses(self, loss, batch_idx, batch_files(batch))
        self._track_loss(self.train_loss, loss, batch.get("soft_label", targets))
        self.train_metrics.update(probs.detach(), targets)
        self._log_target("train", predicted, batch)
        return loss

    def _log_target(self, split: str, predicted: torch.Tensor | None, batch: Batch) -> None:
        if predicted is None:
            return
        metric = getattr(self, f"{split}_mae")
        self._track_target(metric, predicted, batch)
        # logged by every rank (DDP syncs it); NaN when no image of the epoch had a target
        self.log(f"{split}/{self.specs.target.target}_mae", metric, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self.step_losses.check()
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log_dict(epoch_metrics(self.train_metrics, self.hparams.class_names))
        self.train_metrics.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, probs, predicted = self.step(batch)
        targets = batch["label"]
        self._track_loss(self.val_loss, loss, targets)
        self.val_metrics.update(probs, targets)
        self._log_target("val", predicted, batch)

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        values = epoch_metrics(self.val_metrics, self.hparams.class_names)
        self.val_metrics.reset()
        self.log_dict(values)
        monitored = values.get(self.hparams.monitor)
        if monitored is not None:
            self.val_best(monitored)
            self.log(f"{self.hparams.monitor}_best", self.val_best.compute(), prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, probs, predicted = self.step(batch)
        targets = batch["label"]
        probs, predicted = self._tta(batch, probs, predicted)
        self._track_loss(self.test_loss, loss, targets)
        self.test_metrics.update(probs, targets)
        self._log_target("test", predicted, batch)
        # Returned for the prediction writer (predictions.csv, bootstrap report).
        out = {"probs": probs.detach(), "labels": targets, "index": batch["index"]}
        if predicted is not None:
            out.update(target_pred=predicted.detach(), target=batch["target"].float())
        return out

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss, on_epoch=True)
        self.log_dict(epoch_metrics(self.test_metrics, self.hparams.class_names))
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        probs, predicted = self.predict_batch(batch)
        out = {"probs": probs, "index": batch["index"]}
        return out if predicted is None else {**out, "target_pred": predicted}

    def predict_batch(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(probs (B, K), predicted target (B,) or None)`` of a batch (``image``, and
        ``covariates`` for a model that fuses them), averaged over the ``tta`` views."""
        logits, value = self.batch_outputs(batch)
        predicted = None if value is None else self.scaler.inverse(value.float())
        return self._tta(batch, self.class_probs(logits, value), predicted)

    def predict_proba(
        self, images: torch.Tensor, covariates: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, C, H, W)`` images (and ``(B, P)`` covariates, NaN unknown, for a model that
        fuses them) → ``(B, K)`` probabilities, averaged over the ``tta`` views."""
        batch = {"image": images}
        if covariates is not None:
            batch["covariates"] = covariates
        elif self.covariate_encoder is not None:  # all unknown: imputed
            n = len(self.covariate_encoder.names)
            batch["covariates"] = torch.full((len(images), n), float("nan"), device=images.device)
        return self.predict_batch(batch)[0]

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory)
