"""Learning-rate schedules stepped per optimiser step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from osteolightning.errors import ConfigError


def cosine_with_warmup(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to ``min_lr_ratio`` of it.

    Args:
        optimizer: the optimiser whose LR is scaled.
        total_steps: optimiser steps of the whole run (``trainer.estimated_stepping_batches``).
        warmup_fraction: share of ``total_steps`` spent warming up.
        min_lr_ratio: final LR as a fraction of the base LR.
    """
    if not 0 <= warmup_fraction < 1:
        raise ConfigError(
            f"Expected argument `warmup_fraction` in [0, 1), but got {warmup_fraction}."
        )
    total = max(1, int(total_steps))
    warmup = int(round(warmup_fraction * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def configure_optimizers(
    module: L.LightningModule,
    optimizer: Callable[..., Optimizer] | None,
    scheduler: Callable[..., Any] | None,
) -> Any:
    """A LightningModule's ``configure_optimizers``: the partial ``optimizer`` over the
    trainable parameters and the partial ``scheduler(optimizer, total_steps)`` stepped per step.

    Frozen parameters (``callbacks.finetune``) join the optimiser later, as their own group.

    Raises:
        ConfigError: no optimizer was configured.
    """
    if optimizer is None:
        raise ConfigError(
            f"{type(module).__name__} needs an `optimizer` to train (model.optimizer in config)."
        )
    opt = optimizer(params=[p for p in module.parameters() if p.requires_grad])
    if scheduler is None:
        return opt
    schedule = scheduler(optimizer=opt, total_steps=module.trainer.estimated_stepping_batches)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
