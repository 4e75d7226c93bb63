"""The classification LightningModule: knee radiograph → normal / osteopenia / osteoporosis."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanAbsoluteError

from osteolightning.data.columns import coded_names, plain_coding
from osteolightning.errors import ConfigError
from osteolightning.metrics.classification import (
    classification_metrics,
    epoch_metrics,
    logged_keys,
)
from osteolightning.metrics.regression import WHO_CUTOFFS, TargetScaler
from osteolightning.metrics.running import RunningMean
from osteolightning.models.acceleration import Accelerated
from osteolightning.models.checkpointing import Preprocessing, StoresRunConfig
from osteolightning.models.components.covariates import CovariateEncoder, PooledFeatures
from osteolightning.models.losses import MixupCutmix, cross_entropy, sample_weights
from osteolightning.models.schedulers import configure_optimizers
from osteolightning.models.step_logging import StepLosses, batch_files
from osteolightning.models.targets import TargetSpec, who_index

Batch = dict[str, torch.Tensor]
Loss = Callable[..., torch.Tensor]

#: test-time augmentations: name → the image dims it flips (``(B, C, H, W)``).
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (3,), "vflip": (2,)}


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
        optimizer: partial optimiser taking the parameters (``_partial_: true`` in config).
        scheduler: partial ``(optimizer, total_steps) -> LRScheduler`` stepped per step, or None.
        class_weighting: ``"balanced"`` (inverse training frequency, normalised to mean 1) or
            ``"none"``.
        class_counts: images per class in the training split (label-index order), passed by
            the entry point from the data; ``"balanced"`` weighting needs them (``None``: all
            weights 1, e.g. a model rebuilt from a checkpoint, whose weights come with it).
        label_smoothing: label smoothing in [0, 1), passed to the loss.
        loss: ``loss(logits, targets, weight=, label_smoothing=) -> scalar`` (``_partial_: true``
            in config; see :mod:`osteolightning.models.losses`); None: weighted cross-entropy.
            The per-sample normaliser is :func:`~osteolightning.models.losses.sample_weights`.
        mixup: :class:`~osteolightning.models.losses.MixupCutmix` arguments (``mixup_alpha``,
            ``cutmix_alpha``, ``prob``, ``switch_prob``); None or both alphas 0: off.
        tta: test-time augmentations, a subset of ``["hflip", "vflip"]``; ``[]``: off.
        monitor: the validation metric the best checkpoint is chosen on (for ``*_best``).
        image_size: input side the network was trained at (kept in the checkpoint).
        in_chans: input channels (kept in the checkpoint).
        mean: normalisation mean (kept in the checkpoint).
        std: normalisation std (kept in the checkpoint).
        target: the regression target column (``t_score``, ``bmd``, ...).
        t_score_weight: weight of the regression loss; 0: no regression head.
        class_weight: weight of the class loss; 0: regression only (the class output is the
            WHO category of the predicted T-score).
        bmd_reference: ``[mean, sd]`` turning a BMD target into a T-score, or None.
        who_cutoffs: the WHO T-score cut-offs ``[osteoporosis, normal]``.
        covariates: covariate columns fused with the image (``[age, sex, bmi]``); ``[]``: none.
        target_train: the training split's target values (NaN unknown), passed by the entry
            point from the data; the scaler is fitted on the known ones (``None``: restored
            from a checkpoint).
        covariates_train: the training split's ``(N, P')`` encoded covariates (NaN unknown),
            likewise.
        covariate_coding: how each covariate's cells become numbers (numbers, yes/no, sex,
            category levels: :func:`~osteolightning.data.columns.infer_coding`), passed by the
            entry point from the data; kept in the checkpoint so new data is encoded alike.
        compile: ``torch.compile`` the network (true, or a mapping of its arguments); see
            :mod:`osteolightning.models.acceleration`. Not kept in the checkpoint.
        channels_last: the channels-last memory layout for weights and inputs.

    Raises:
        ConfigError: an unknown ``class_weighting`` or ``tta`` name, a smoothing outside
            [0, 1), bad ``mixup`` arguments, a ``loss`` that rejects its arguments, bad target
            settings (:meth:`TargetSpec.of`), a regression head without any known training
            target or with a constant one, mixup together with a target or covariates.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        class_weighting: str = "balanced",
        label_smoothing: float = 0.0,
        monitor: str = "val/f1_macro",
        image_size: int = 224,
        in_chans: int = 1,
        mean: Sequence[float] = (0.449,),
        std: Sequence[float] = (0.226,),
        loss: Loss | None = None,
        mixup: Mapping[str, float] | None = None,
        tta: Sequence[str] = (),
        class_counts: Sequence[int] | None = None,
        target: str = "t_score",
        t_score_weight: float = 0.0,
        class_weight: float = 1.0,
        bmd_reference: Sequence[float] | None = None,
        who_cutoffs: Sequence[float] = WHO_CUTOFFS,
        covariates: Sequence[str] = (),
        target_train: Sequence[float] | None = None,
        covariates_train: Sequence[Sequence[float]] | None = None,
        covariate_coding: Mapping[str, Any] | None = None,
        compile: bool | Mapping[str, Any] | None = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if class_weighting not in ("balanced", "none"):
            raise ConfigError(
                f"Expected argument `class_weighting` to be one of ['balanced', 'none'], "
                f"but got {class_weighting!r}."
            )
        if not 0 <= label_smoothing < 1:
            raise ConfigError(
                f"Expected argument `label_smoothing` in [0, 1), but got {label_smoothing}."
            )
        tta = [str(t) for t in tta]
        for name in tta:
            if name not in TTA_FLIPS:
                close = difflib.get_close_matches(name, TTA_FLIPS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"Expected argument `tta` to hold names from {list(TTA_FLIPS)}, "
                    f"but got {name!r}.{hint}"
                )
        self.mixup = MixupCutmix(**(mixup or {}))
        self.spec = TargetSpec.of(
            target, t_score_weight, class_weight, bmd_reference, who_cutoffs, class_names
        )
        covariates = [str(c) for c in covariates or ()]
        if self.mixup.enabled and (self.spec.enabled or covariates):
            raise ConfigError(
                "Mixup / cutmix mixes images and their labels, not their T-scores or "
                "covariates: turn it off (model.mixup.mixup_alpha=0 model.mixup.cutmix_alpha=0) "
                "for a model with a regression head or covariates."
            )
        # Plain Python types only, so checkpoints load with torch.load(weights_only=True).
        preprocessing = Preprocessing.of(class_names, image_size, in_chans, mean, std)
        self.save_hyperparameters(
            {
                **preprocessing.hparams(),
                "class_weighting": class_weighting,
                "label_smoothing": float(label_smoothing),
                "monitor": str(monitor),
                "tta": tta,
                "target": self.spec.target,
                "t_score_weight": self.spec.weight,
                "class_weight": self.spec.class_weight,
                "bmd_reference": list(self.spec.reference) if self.spec.reference else None,
                "who_cutoffs": list(self.spec.cutoffs),
                "covariates": covariates,
                "covariate_coding": plain_coding(covariate_coding),
            }
        )
        self.net = net
        self._init_acceleration(compile, channels_last)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        k = len(class_names)
        self.register_buffer("class_weights", balanced_weights(class_counts, k, class_weighting))
        self.loss_fn = loss if loss is not None else cross_entropy
        # A dry call, so a bad loss argument (e.g. gamma < 0) fails now, not at the first step.
        self.loss_fn(torch.zeros(1, k), torch.zeros(1, dtype=torch.long), weight=self.class_weights)
        self.loss_fn = plain_partial(self.loss_fn)  # checked once; no per-step policy check
        self.train_metrics = classification_metrics(class_names, "train/")
        self.val_metrics = classification_metrics(class_names, "val/")
        self.test_metrics = classification_metrics(class_names, "test/")
        # per-step updates that never wait for the GPU (see metrics/running.py)
        self.train_loss, self.val_loss, self.test_loss = RunningMean(), RunningMean(), RunningMean()
        self.val_best = MaxMetric()
        self.step_losses = StepLosses("Check those images, or lower the learning rate.")
        self._build_target(target_train)
        self.covariate_encoder = (
            CovariateEncoder(
                coded_names(covariates, self.hparams.covariate_coding), covariates_train
            )
            if covariates
            else None
        )
        self._build_heads(len(self.covariate_encoder.names) if self.covariate_encoder else 0)

    # -- the regression head and the covariates ----------------------------------------------
    def _build_target(self, target_train: Sequence[float] | None) -> None:
        """With a regression head: the target's training statistics (buffer
        ``target_stats = [mean, std]``), its counts and the per-split MAE metrics."""
        #: ``(known, unknown)`` target values in the training split (None: not known here)
        self.target_counts: tuple[int, int] | None = None
        if not self.spec.enabled:
            return  # no new state: a classifier's checkpoint keeps its keys
        self.register_buffer("target_stats", torch.tensor([0.0, 1.0]))
        if target_train is not None:
            values = np.asarray(target_train, dtype=np.float64).reshape(-1)
            known = values[~np.isnan(values)]
            if not len(known):
                raise ConfigError(
                    f"The regression head (model.t_score_weight={self.spec.weight}) needs "
                    f"values of target column `{self.spec.target}`, but none of the "
                    f"{len(values)} training images has one. Fill the column, or choose "
                    "another one (model.target=t_score|bmd)."
                )
            scaler = TargetScaler.fit(known, name=self.spec.target)
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
        return TargetScaler(self.spec.target, mean, std)

    def _build_heads(self, n_covariates: int) -> None:
        """The regression head on the pooled image features and the covariates' layer (hook:
        a fitted-head model fits its own)."""
        k = len(self.hparams.class_names)
        r = int(self.spec.enabled)
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
        if not self.spec.regression_only or value is None:
            return logits.softmax(dim=1)
        t = self.spec.t_scores(self.scaler.inverse(value.float()))
        return nn.functional.one_hot(who_index(t, self.spec.cutoffs), logits.shape[1]).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images → ``(B, K)`` logits."""
        return self.net(self._as_input(x))

    @property
    def monitorable(self) -> list[str]:
        """The keys logged once per validation epoch, which callbacks and sweepers may monitor."""
        keys = [*logged_keys(self.hparams.class_names, "val/"), "val/loss"]
        keys += [f"val/{self.spec.target}_mae"] if self.spec.enabled else []
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
        if self.spec.class_weight > 0:
            loss = loss + self.spec.class_weight * self.loss_fn(
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
            loss = loss + self.spec.weight * mse
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
        self.log(f"{split}/{self.spec.target}_mae", metric, on_step=False, on_epoch=True)

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
