"""The segmentation LightningModule: knee radiograph → label map of the bones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric

from osteolightning.errors import ConfigError
from osteolightning.metrics.running import RunningMean
from osteolightning.metrics.segmentation import dice_iou, overlap_counts, per_image_scores
from osteolightning.models.acceleration import Accelerated
from osteolightning.models.checkpointing import StoresRunConfig
from osteolightning.models.schedulers import configure_optimizers
from osteolightning.models.specs import FlatSignature, SegmenterSpec, resolve_spec
from osteolightning.models.step_logging import StepLosses, batch_files

Batch = dict[str, Any]


def side_output_weights(n_side: int, weights: Sequence[float] | None) -> list[float]:
    """Loss weights of ``[main, side_1, ..., side_n]``, normalised to sum 1.

    The default halves the weight at each coarser scale (1, 1/2, 1/4, ...), as nnU-Net does.

    Raises:
        ConfigError: the number of weights does not match the outputs, or a weight is negative.
    """
    if weights is None:
        weights = [0.5**i for i in range(n_side + 1)]
    weights = [float(w) for w in weights]
    if len(weights) != n_side + 1 or min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError(
            f"Expected `deep_supervision_weights` to hold {n_side + 1} non-negative weights (the "
            f"main output and {n_side} side outputs), but got {weights}."
        )
    total = sum(weights)
    return [w / total for w in weights]


class KneeSegmenter(Accelerated, StoresRunConfig, L.LightningModule):
    """Bone segmentation with a Dice + cross-entropy loss and per-class Dice / IoU / HD95.

    The network comes from config (``model=unet | attention_unet | attention_unet_ds | unetr |
    swin_unetr | encoder_unet``; see :mod:`osteolightning.models.components.segnets`). A network
    with deep supervision returns ``[main, side_1, ...]`` in training (all at the input size);
    each output's loss is weighted by ``deep_supervision_weights``. Validation and test use the
    main output only.

    Args:
        net: ``(B, C, H, W)`` → logits ``(B, K, H, W)`` (a list in training with side outputs).
        class_names: ``K`` mask classes, background first.
        spec: all the options at once (:class:`~osteolightning.models.specs.SegmenterSpec`),
            instead of ``class_names`` and ``**options``.
        **options: the flat options of ``model:`` in config (and of a checkpoint's
            hyper-parameters), each read by one group of
            :class:`~osteolightning.models.specs.SegmenterSpec`, where each is documented:
            ``inputs`` (:class:`~osteolightning.models.checkpointing.Preprocessing`:
            ``image_size``, ``in_chans``, ``mean``, ``std``, kept in the checkpoint);
            ``optimization`` (``optimizer``, ``scheduler``); ``loss`` (``dice_weight``,
            ``ce_weight``, ``include_background``, ``deep_supervision_weights``);
            ``inference`` (``inference``, ``roi_size``, ``sw_overlap``, ``sw_batch_size``,
            ``hd95_on_test``, ``monitor``); ``acceleration`` (``compile``, ``channels_last``;
            not kept in the checkpoint).

    Raises:
        ConfigError: an unknown option, fewer than two classes, an unknown inference mode, bad
            weights.
    """

    #: the flat options in the signature: config checks and help list them (models/specs.py)
    __signature__ = FlatSignature(("net", "class_names", "spec"), SegmenterSpec.BUILDERS)

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str] | None = None,
        spec: SegmenterSpec | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        spec = resolve_spec(type(self).__name__, SegmenterSpec, class_names, spec, options)
        self.specs = spec
        n_side = int(getattr(net, "deep_supervision", 0) or 0)
        self.ds_weights = side_output_weights(n_side, spec.loss.deep_supervision_weights)
        inference = spec.inference
        self.save_hyperparameters(
            {
                **spec.inputs.hparams(),
                "dice_weight": spec.loss.dice_weight,
                "ce_weight": spec.loss.ce_weight,
                "include_background": spec.loss.include_background,
                "deep_supervision_weights": [float(w) for w in self.ds_weights],
                "inference": inference.inference,
                "roi_size": inference.roi_size,
                "sw_overlap": inference.sw_overlap,
                "sw_batch_size": inference.sw_batch_size,
                "hd95_on_test": inference.hd95_on_test,
                "monitor": inference.monitor,
            }
        )
        self.net = net
        self.optimizer_factory = spec.optimization.optimizer
        self.scheduler_factory = spec.optimization.scheduler
        # Batch Dice (nnU-Net): the Dice term pools the batch, stable for small structures.
        self.loss_fn = DiceCELoss(
            include_background=spec.loss.include_background,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            lambda_dice=spec.loss.dice_weight,
            lambda_ce=spec.loss.ce_weight,
        )
        k = len(spec.inputs.class_names)
        self.num_classes = k
        # per-class mean Dice / IoU over images, per split (NaN: a class absent from both masks)
        self.trackers = nn.ModuleDict(
            {
                f"{split}_{metric}": nn.ModuleList([RunningMean(ignore_nan=True) for _ in range(k)])
                for split in ("train", "val")
                for metric in ("dice", "iou")
            }
        )
        # per-step updates that never wait for the GPU (see metrics/running.py)
        self.train_loss, self.val_loss, self.test_loss = RunningMean(), RunningMean(), RunningMean()
        self.val_best = MaxMetric()
        self.step_losses = StepLosses("Check those images and masks, or lower the learning rate.")
        acceleration = spec.acceleration  # see models/acceleration.py
        self._init_acceleration(acceleration.compile, acceleration.channels_last)

    # -- inference ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, C, H, W)`` images → logits ``(B, K, H, W)`` (a list in training with sides)."""
        return self.net(self._as_input(x))

    def infer_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Main-output logits ``(B, K, H, W)`` by the configured inference mode (eval mode)."""
        if self.hparams.inference == "sliding_window":
            from monai.inferers import sliding_window_inference

            roi = self.hparams.roi_size
            return sliding_window_inference(
                images,
                roi_size=(roi, roi),
                sw_batch_size=self.hparams.sw_batch_size,
                predictor=self._main_output,
                overlap=self.hparams.sw_overlap,
                mode="gaussian",
            )
        return self._main_output(images)

    def _main_output(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self._as_input(x))
        return out[0] if isinstance(out, list | tuple) else out

    @torch.no_grad()
    def predict_masks(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` → ``(label maps (B, H, W) uint8, probabilities (B, K, H, W))``."""
        probs = self.infer_logits(images).softmax(dim=1)
        return probs.argmax(dim=1).to(torch.uint8), probs

    # -- loss -----------------------------------------------------------------------------
    def compute_loss(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], masks: torch.Tensor
    ) -> torch.Tensor:
        """Dice + CE of the main output, plus the weighted side outputs (deep supervision)."""
        target = masks.long().unsqueeze(1)
        if not isinstance(outputs, list | tuple):
            return self.loss_fn(outputs, target)
        if len(outputs) != len(self.ds_weights):
            raise ConfigError(
                f"The network returned {len(outputs)} outputs but {len(self.ds_weights)} loss "
                "weights were set (model.deep_supervision_weights)."
            )
        total = outputs[0].new_zeros(())
        for weight, out in zip(self.ds_weights, outputs, strict=True):
            if out.shape[-2:] != masks.shape[-2:]:
                out = F.interpolate(
                    out, size=masks.shape[-2:], mode="bilinear", align_corners=False
                )
            total = total + weight * self.loss_fn(out, target)
        return total

    # -- steps ----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.val_best.reset()

    def _track(self, split: str, pred: torch.Tensor, masks: torch.Tensor) -> None:
        # on the batch's device: no copy to the host and back at every step
        dice, iou = dice_iou(overlap_counts(pred, masks, self.num_classes))
        for metric, scores in (("dice", dice), ("iou", iou)):
            for c, tracker in enumerate(self.trackers[f"{split}_{metric}"]):
                tracker.update(scores[:, c])

    def _log_tracked(self, split: str) -> dict[str, torch.Tensor]:
        """Log ``<split>/dice``, ``<split>/iou`` (foreground mean) and per class; reset."""
        names = self.hparams.class_names
        values: dict[str, torch.Tensor] = {}
        for metric in ("dice", "iou"):
            trackers = self.trackers[f"{split}_{metric}"]
            per_class = []
            for c in range(1, self.num_classes):
                v = trackers[c].compute()
                values[f"{split}/{metric}_{names[c]}"] = v
                per_class.append(v)
            for tracker in trackers:
                tracker.reset()
            stacked = torch.stack(per_class)
            values[f"{split}/{metric}"] = stacked[torch.isfinite(stacked)].mean()
        self.log_dict(values)
        return values

    @property
    def monitorable(self) -> list[str]:
        """The keys logged once per validation epoch, which callbacks and sweepers may monitor."""
        names = self.hparams.class_names
        keys = ["val/loss", "val/dice", "val/iou"]
        keys += [f"val/{m}_{names[c]}" for m in ("dice", "iou") for c in range(1, len(names))]
        return [*keys, f"{self.hparams.monitor}_best"]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        outputs = self(batch["image"])
        loss = self.compute_loss(outputs, batch["mask"])
        # NaN check and on-step logging on logging steps only (no per-step wait for the GPU)
        self.step_losses(self, loss, batch_idx, batch_files(batch))
        n = batch["image"].shape[0]
        self.train_loss.update(loss.detach(), weight=n)
        main = outputs[0] if isinstance(outputs, list | tuple) else outputs
        self._track("train", main.detach().argmax(dim=1), batch["mask"])
        return loss

    def on_train_epoch_end(self) -> None:
        self.step_losses.check()
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self._log_tracked("train")

    def _eval_step(self, batch: Batch, tracker: RunningMean) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.infer_logits(batch["image"])
        loss = self.loss_fn(logits, batch["mask"].long().unsqueeze(1))
        tracker.update(loss.detach(), weight=batch["image"].shape[0])
        return logits, logits.argmax(dim=1)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        _, pred = self._eval_step(batch, self.val_loss)
        self._track("val", pred, batch["mask"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        values = self._log_tracked("val")
        monitored = values.get(self.hparams.monitor)
        if monitored is not None and torch.isfinite(monitored):
            self.val_best(monitored)
            self.log(f"{self.hparams.monitor}_best", self.val_best.compute(), prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        _, pred = self._eval_step(batch, self.test_loss)
        scores = per_image_scores(
            pred, batch["mask"], self.num_classes, with_hd95=self.hparams.hd95_on_test
        )
        # Returned for the segmentation writer (per-image table, bootstrap report, masks).
        return {"scores": scores, "pred": pred.to(torch.uint8).cpu(), "index": batch["index"]}

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss, on_epoch=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        masks, _ = self.predict_masks(batch["image"])
        return {"pred": masks, "index": batch["index"]}

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory)
