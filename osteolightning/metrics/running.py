"""Running means updated every step without waiting for the GPU.

torchmetrics' ``MeanMetric`` checks each update for NaN with ``if nans.any(): ...``: a Python
branch on a device tensor, so every update copies a flag to the host and waits for the GPU to
finish the step's work first. Updated every training step (the epoch's loss, the per-class
Dice of a segmenter), that stalls the GPU once per step. :class:`RunningMean` keeps the same
states, reduction and result, and handles NaN with tensor operations only.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric


class RunningMean(MeanMetric):
    """A weighted mean (``sum(w * x) / sum(w)``, summed across DDP ranks) whose update never
    synchronises with the device.

    Args:
        ignore_nan: leave NaN values (and their weights) out, like
            ``MeanMetric(nan_strategy="ignore")``; ``False``: a NaN propagates into the mean
            (the training loop checks the loss for NaN itself).

    Example:
        >>> m = RunningMean(ignore_nan=True)
        >>> m.update(torch.tensor([1.0, float("nan"), 3.0]))
        >>> float(m.compute())
        2.0
    """

    def __init__(self, ignore_nan: bool = False, **kwargs: object) -> None:
        super().__init__(nan_strategy="ignore" if ignore_nan else "disable", **kwargs)
        self.ignore_nan = bool(ignore_nan)

    def update(self, value: float | Tensor, weight: float | Tensor | None = None) -> None:
        """Add ``value`` (any shape, flattened) with ``weight`` (broadcast to it; default 1)."""
        value = torch.as_tensor(value, dtype=self.dtype, device=self.device)
        if weight is None:
            weight = torch.ones_like(value)
        weight = torch.broadcast_to(
            torch.as_tensor(weight, dtype=self.dtype, device=self.device), value.shape
        )
        if self.ignore_nan:
            keep = ~(torch.isnan(value) | torch.isnan(weight))
            value = torch.where(keep, value, torch.zeros_like(value))
            weight = torch.where(keep, weight, torch.zeros_like(weight))
        self.mean_value += (value * weight).sum()
        self.weight += weight.sum()
