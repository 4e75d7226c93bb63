"""Clinical covariates (age, sex, BMI, ...) as model inputs, and the pooled image features a
second head reads.

:class:`CovariateEncoder` standardises each covariate with its training-split mean and
standard deviation, imputes a missing value with the training mean (0 after standardising) and
adds a missing-indicator per covariate, so a model can tell "average" from "unknown". Its
statistics are buffers: they travel in the checkpoint. :class:`PooledFeatures` captures the
input of a network's classification layer (its pooled features) on every forward, so a
regression head and covariates can be fused with the image at the output layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import classifier_head


class CovariateEncoder(nn.Module):
    """``(B, P)`` raw covariates (NaN where unknown) → ``(B, 2P)``: standardised values (the
    training mean where unknown) then missing-indicators (1 where unknown).

    Args:
        names: the ``P`` covariate names (for messages and the report).
        train_values: ``(N, P)`` training-split values, NaN where unknown; ``None``: identity
            statistics, to be replaced by a checkpoint's.

    Attributes:
        n_imputed: ``(P,)`` unknown values per covariate in ``train_values`` (imputed there).
        fitted: whether the statistics were fitted here (not restored from a checkpoint).

    Raises:
        ConfigError: ``train_values`` of the wrong shape, or a covariate without a single known
            training value (nothing to impute from).

    Example:
        >>> enc = CovariateEncoder(["age", "sex"], np.array([[60.0, 1.0], [70.0, np.nan]]))
        >>> enc(torch.tensor([[65.0, float("nan")]])).tolist()
        [[0.0, 0.0, 0.0, 1.0]]
    """

    def __init__(
        self, names: Sequence[str], train_values: np.ndarray | Sequence | None = None
    ) -> None:
        super().__init__()
        self.names = [str(n) for n in names]
        p = len(self.names)
        self.register_buffer("mean", torch.zeros(p))
        self.register_buffer("std", torch.ones(p))
        self.n_imputed = np.zeros(p, dtype=np.int64)
        self.fitted = False  # statistics from training values here (else a checkpoint's)
        if train_values is not None:
            self.fit(np.asarray(train_values, dtype=np.float64))

    @property
    def dim(self) -> int:
        """Output width ``2P``."""
        return 2 * len(self.names)

    def fit(self, values: np.ndarray) -> None:
        """Set the statistics from ``(N, P)`` training values (NaN unknown)."""
        p = len(self.names)
        if values.ndim != 2 or values.shape[1] != p:
            raise ConfigError(
                f"Expected training covariates of shape (N, {p}) for {self.names}, but got "
                f"{values.shape}."
            )
        known = ~np.isnan(values)
        empty = [n for n, k in zip(self.names, known.any(axis=0), strict=True) if not k]
        if empty:
            raise ConfigError(
                f"Covariate(s) {', '.join(empty)} have no known value in the {len(values)} "
                "training images: there is nothing to standardise or impute from. Fill the "
                "column, or leave it out of model.covariates."
            )
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        std[~(std > 1e-12)] = 1.0  # a constant covariate: centred only
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean))
            self.std.copy_(torch.as_tensor(std))
        self.n_imputed = (~known).sum(axis=0)
        self.fitted = True

    def forward(self, covariates: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` → ``(B, 2P)`` float32."""
        x = covariates.float()
        missing = torch.isnan(x)
        z = torch.where(missing, torch.zeros_like(x), (x - self.mean) / self.std)
        return torch.cat([z, missing.float()], dim=1)


class PooledFeatures:
    """Captures the input of ``net``'s classification layer (timm's ``get_classifier()``, else
    its last ``nn.Linear``) on every forward: the pooled image features ``(B, D)``.

    The hook is a plain closure writing into a dict, so a deep copy of ``net`` (the saliency
    explainer makes one) shares it harmlessly instead of copying its owner.

    Args:
        net: the network.
        in_chans: its input channels (for the dry run that measures ``D`` when the layer does
            not say it).
        image_size: its input side (same).
    """

    def __init__(self, net: nn.Module, in_chans: int, image_size: int) -> None:
        layer = classifier_head(net)
        store: dict[str, torch.Tensor] = {}
        self._store = store

        def capture(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            store["features"] = args[0]

        layer.register_forward_pre_hook(capture)
        if isinstance(layer, nn.Linear):
            self.dim = int(layer.in_features)
        else:  # measure it once
            was_training = net.training
            with torch.no_grad():
                net.eval()(torch.zeros(1, in_chans, image_size, image_size))
            net.train(was_training)
            self.dim = int(self.pop().shape[1])

    def pop(self) -> torch.Tensor:
        """The features of the last forward, ``(B, D)``; each forward's are read once."""
        return self._store.pop("features").flatten(1)
