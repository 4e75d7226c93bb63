"""Fine-tuning schedule: train the head on a frozen backbone, then the whole network slower."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim import Optimizer

from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import classifier_head
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def block_ids(net: nn.Module) -> dict[str, int]:
    """Parameter name → block depth (0 = stem, increasing towards the head).

    timm models: ``group_matcher(coarse=False)`` grouped by ``timm.models.group_parameters``
    (as ``timm.optim.param_groups_layer_decay`` does): the stem, then every block of every
    stage in order, the head last. Other networks: each top-level child module in definition
    order is one block.
    """
    if hasattr(net, "group_matcher"):
        from timm.models import group_parameters

        return group_parameters(net, net.group_matcher(coarse=False), reverse=True)
    names = [name for name, _ in net.named_children()]
    return {
        pname: names.index(pname.split(".")[0]) if pname.split(".")[0] in names else len(names)
        for pname, _ in net.named_parameters()
    }


class FreezeBackbone(BaseFinetuning):
    """Freeze the backbone for ``freeze_epochs``, then train it at ``backbone_lr_factor`` x LR.

    The module's network is ``pl_module.net``; its head is found by :func:`classifier_head` and
    stays trainable. Every other parameter (BatchNorm affine included; running statistics keep
    adapting in training mode) is frozen before training, so the module's optimiser (built from
    the trainable parameters only) sees the head alone. At epoch ``freeze_epochs`` the backbone
    joins the optimiser as new parameter group(s) at ``lr = head lr x backbone_lr_factor``; with
    ``layer_decay`` each block (see :func:`block_ids`) gets a further ``layer_decay ** d``, ``d``
    its distance below the head in blocks (BEiT-style layer-wise LR decay). A per-step
    ``LambdaLR`` schedule (the default ``cosine_with_warmup``) is extended to the new groups, so
    they follow the same schedule. Resuming restores the groups (``BaseFinetuning``).

    Args:
        freeze_epochs: epochs with the backbone frozen; 0 switches the callback off.
        backbone_lr_factor: backbone LR as a fraction of the head's, in (0, 1].
        layer_decay: per-block LR decay in (0, 1], or None (one backbone group).

    Raises:
        ConfigError: an argument out of range.

    Example:
        >>> FreezeBackbone(freeze_epochs=2, backbone_lr_factor=0.1, layer_decay=0.75)
        FreezeBackbone(freeze_epochs=2, backbone_lr_factor=0.1, layer_decay=0.75)
    """

    def __init__(
        self,
        freeze_epochs: int = 0,
        backbone_lr_factor: float = 0.1,
        layer_decay: float | None = None,
    ) -> None:
        super().__init__()
        if int(freeze_epochs) != freeze_epochs or freeze_epochs < 0:
            raise ConfigError(
                f"Expected argument `freeze_epochs` to be an integer >= 0, but got {freeze_epochs}."
            )
        if not 0 < backbone_lr_factor <= 1:
            raise ConfigError(
                f"Expected argument `backbone_lr_factor` in (0, 1], but got {backbone_lr_factor}."
            )
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ConfigError(
                f"Expected argument `layer_decay` in (0, 1] or null, but got {layer_decay}."
            )
        if freeze_epochs == 0 and layer_decay is not None:
            rank_zero_warn(
                "FreezeBackbone: freeze_epochs=0 switches it off; layer_decay is ignored."
            )
        self.freeze_epochs = int(freeze_epochs)
        self.backbone_lr_factor = float(backbone_lr_factor)
        self.layer_decay = layer_decay

    def __repr__(self) -> str:
        return (
            f"FreezeBackbone(freeze_epochs={self.freeze_epochs}, "
            f"backbone_lr_factor={self.backbone_lr_factor}, layer_decay={self.layer_decay})"
        )

    @staticmethod
    def backbone_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
        """Every parameter of ``net`` outside its classifier head, by name."""
        head = {id(p) for p in classifier_head(net).parameters()}
        return {n: p for n, p in net.named_parameters() if id(p) not in head}

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        if self.freeze_epochs == 0:
            return
        for p in self.backbone_parameters(pl_module.net).values():
            p.requires_grad_(False)

    def _groups(self, net: nn.Module, head_lr: float) -> list[dict[str, Any]]:
        """The backbone's parameter groups: one, or one per LR under layer decay."""
        params = self.backbone_parameters(net)
        if self.layer_decay is None:
            return [{"params": list(params.values()), "lr": head_lr * self.backbone_lr_factor}]
        depth = block_ids(net)
        top = max(depth.values()) if depth else 0
        by_lr: dict[float, list[nn.Parameter]] = {}
        for name, p in params.items():
            scale = self.layer_decay ** (top - depth.get(name, top))
            by_lr.setdefault(head_lr * self.backbone_lr_factor * scale, []).append(p)
        return [{"params": ps, "lr": lr} for lr, ps in sorted(by_lr.items(), reverse=True)]

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if self.freeze_epochs == 0 or epoch < self.freeze_epochs:
            return
        params = self.backbone_parameters(pl_module.net)
        for p in params.values():  # also after a resume, whose groups BaseFinetuning restored
            p.requires_grad_(True)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if all(id(p) in present for p in params.values()):
            return
        head_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
        for group in self._groups(pl_module.net, head_lr):
            group["initial_lr"] = group["lr"]
            optimizer.add_param_group(group)
        log.info(
            f"Epoch {epoch}: backbone unfrozen at {self.backbone_lr_factor} x the head's LR"
            + (f", layer decay {self.layer_decay}." if self.layer_decay else ".")
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._extend_schedulers(trainer)

    @staticmethod
    def _extend_schedulers(trainer: L.Trainer) -> None:
        """Give a ``LambdaLR`` the groups added since it was built (same lambda as group 0)."""
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            groups = scheduler.optimizer.param_groups
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if lambdas is None:
                if len(getattr(scheduler, "base_lrs", groups)) < len(groups):
                    rank_zero_warn(
                        f"FreezeBackbone: {type(scheduler).__name__} does not schedule the "
                        "backbone's parameter groups; they keep their LR."
                    )
                continue
            factor = lambdas[0](scheduler.last_epoch)
            for group in groups[len(lambdas) :]:
                lambdas.append(lambdas[0])
                if len(scheduler.base_lrs) < len(lambdas):
                    scheduler.base_lrs.append(group["initial_lr"])
                group["lr"] = group["initial_lr"] * factor
            scheduler._last_lr = [float(g["lr"]) for g in groups]  # what get_last_lr() reports
