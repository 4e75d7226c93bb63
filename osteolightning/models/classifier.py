"""The classification LightningModule: knee radiograph → normal / osteopenia / osteoporosis."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric

from osteolightning.errors import ConfigError
from osteolightning.metrics.classification import classification_metrics
from osteolightning.metrics.running import RunningMean
from osteolightning.models.acceleration import Accelerated
from osteolightning.models.checkpointing import Preprocessing, StoresRunConfig
from osteolightning.models.losses import MixupCutmix, cross_entropy, sample_weights
from osteolightning.models.schedulers import configure_optimizers
from osteolightning.models.step_logging import StepLosses, batch_files

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
    """Transfer-learned classifier with a class-weighted loss and per-split torchmetrics.

    Training options (all from config): the loss (``model/loss=cross_entropy|focal``), class
    weighting, label smoothing, mixup / cutmix on training batches (``model.mixup``) and
    test-time augmentation (``model.tta``). Under mixup / cutmix the loss uses the soft targets,
    while the ``train/`` metrics compare the predictions on the *mixed* images with the images'
    original hard labels (a rough guide only; ``val/`` is never mixed). With TTA, ``test_step``
    and ``predict_step`` average the softmax over the original and each flipped image; the test
    loss and validation stay on the original image only.

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
        compile: ``torch.compile`` the network (true, or a mapping of its arguments); see
            :mod:`osteolightning.models.acceleration`. Not kept in the checkpoint.
        channels_last: the channels-last memory layout for weights and inputs.

    Raises:
        ConfigError: an unknown ``class_weighting`` or ``tta`` name, a smoothing outside
            [0, 1), bad ``mixup`` arguments, or a ``loss`` that rejects its arguments.
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
        # Plain Python types only, so checkpoints load with torch.load(weights_only=True).
        preprocessing = Preprocessing.of(class_names, image_size, in_chans, mean, std)
        self.save_hyperparameters(
            {
                **preprocessing.hparams(),
                "class_weighting": class_weighting,
                "label_smoothing": float(label_smoothing),
                "monitor": str(monitor),
                "tta": tta,
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images → ``(B, K)`` logits."""
        return self.net(self._as_input(x))

    @property
    def monitorable(self) -> list[str]:
        """The keys logged once per validation epoch, which callbacks and sweepers may monitor."""
        keys = [*self.val_metrics.keys(), "val/loss"]
        keys += [f"val/auroc_{c}" for c in self.hparams.class_names]
        return [k for k in keys if k != "val/auroc"] + [f"{self.hparams.monitor}_best"]

    def model_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, probs (B, K), targets (B,))``.

        The loss takes ``batch["soft_label"]`` ``(B, K)`` when present (mixup / cutmix), else
        the hard ``batch["label"]``; the returned targets are always the hard labels.
        """
        logits = self(batch["image"])
        loss = self.loss_fn(
            logits,
            batch.get("soft_label", batch["label"]),
            weight=self.class_weights,
            label_smoothing=self.hparams.label_smoothing,
        )
        return loss, logits.softmax(dim=1), batch["label"]

    def _track_loss(self, tracker: RunningMean, loss: torch.Tensor, targets: torch.Tensor) -> None:
        # The batch loss is sum(w_i * l_i) / sum(w_i); weighting it by sum(w_i) makes the epoch
        # value the exact weighted mean over all images, however batches and ranks cut them.
        # targets: (B,) hard labels (w_i = weight[y_i]) or (B, K) soft ones (w_i = y_i @ weight).
        k = self.class_weights.numel()
        tracker.update(loss.detach(), weight=sample_weights(targets, self.class_weights, k).sum())

    def _tta_probs(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Mean softmax over the original (its ``probs``) and each ``tta`` flip: ``(B, K)``."""
        views = [probs] + [self(images.flip(TTA_FLIPS[t])).softmax(1) for t in self.hparams.tta]
        return torch.stack(views).mean(dim=0)

    def on_train_start(self) -> None:
        self.val_best.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.mixup.enabled:
            k = self.class_weights.numel()
            images, soft = self.mixup(batch["image"], batch["label"], k)
            batch = {**batch, "image": images, "soft_label": soft}
        loss, probs, targets = self.model_step(batch)
        # NaN check and on-step logging on logging steps only (no per-step wait for the GPU)
        self.step_losses(self, loss, batch_idx, batch_files(batch))
        self._track_loss(self.train_loss, loss, batch.get("soft_label", targets))
        self.train_metrics.update(probs.detach(), targets)
        return loss

    def on_train_epoch_end(self) -> None:
        self.step_losses.check()
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, probs, targets = self.model_step(batch)
        self._track_loss(self.val_loss, loss, targets)
        self.val_metrics.update(probs, targets)

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(values)
        monitored = values.get(self.hparams.monitor)
        if monitored is not None:
            self.val_best(monitored)
            self.log(f"{self.hparams.monitor}_best", self.val_best.compute(), prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, probs, targets = self.model_step(batch)
        probs = self._tta_probs(batch["image"], probs)
        self._track_loss(self.test_loss, loss, targets)
        self.test_metrics.update(probs, targets)
        # Returned for the prediction writer (predictions.csv, bootstrap report).
        return {"probs": probs.detach(), "labels": targets, "index": batch["index"]}

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss, on_epoch=True)
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"probs": self.predict_proba(batch["image"]), "index": batch["index"]}

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images → ``(B, K)`` probabilities, averaged over the ``tta`` views."""
        return self._tta_probs(images, self(images).softmax(dim=1))

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory)
