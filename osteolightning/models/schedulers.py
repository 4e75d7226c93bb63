"""Learning-rate schedules stepped per optimiser step."""

from __future__ import annotations

import math

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
