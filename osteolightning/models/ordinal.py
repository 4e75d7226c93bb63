"""Ordinal losses for ordered classes (Kellgren–Lawrence grades 0–4, the WHO categories): soft
ordinal labels, from dlordinal (Vargas et al., the ``dlordinal`` library).

A grade-3 knee read as grade 4 is a smaller error than one read as grade 0; plain cross-entropy
does not know that. With soft ordinal labels the target of a knee of grade ``y`` is not the
one-hot vector but a unimodal distribution over the grades peaked at ``y`` (exponential,
triangular, beta, binomial or Poisson; dlordinal's ``soft_labelling``), mixed with the one-hot
by ``eta``: ``(1 - eta) * onehot(y) + eta * P[y]``; the loss is the cross-entropy against it.
So the network keeps ``K`` outputs and a softmax, every metric and ensemble of the framework
applies unchanged, and the prediction rule is the usual one: the most probable grade (its
argmax), the probabilities of the report. The loss has the signature of
:mod:`osteolightning.models.losses` (class weights, label smoothing, soft targets from mixup
pass through), tested against dlordinal's own losses.

The other ordinal model is a head, not a loss: ``model.net.head=clm`` puts a cumulative link
model (dlordinal's ``CLM``; :mod:`osteolightning.models.components.heads`) in place of the
linear classification layer, with the same output contract (its softmax is the CLM's
probabilities, its prediction the most probable class), so it combines with this loss or with
plain cross-entropy (then the CLM's likelihood).
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from osteolightning.errors import ConfigError
from osteolightning.models.losses import cross_entropy

#: dlordinal's soft-label distributions (``get_<name>_soft_labels``)
DISTRIBUTIONS = ("exponential", "triangular", "beta", "binomial", "poisson", "geometric")


@functools.lru_cache(maxsize=32)
def _soft_label_matrix(distribution: str, k: int, params: tuple) -> np.ndarray:
    from dlordinal import soft_labelling

    maker = getattr(soft_labelling, f"get_{distribution}_soft_labels")
    try:
        matrix = np.asarray(maker(k, **dict(params)), dtype=np.float64)
    except TypeError as err:
        raise ConfigError(
            f"dlordinal's {distribution} soft labels reject the arguments {dict(params)}: {err}."
        ) from err
    if matrix.shape != (k, k) or not np.allclose(matrix.sum(axis=1), 1.0, atol=1e-4):
        raise ConfigError(
            f"dlordinal's {distribution} soft labels for {k} classes are not a ({k}, {k}) matrix "
            f"of distributions (got shape {matrix.shape}); choose another distribution."
        )
    return matrix / matrix.sum(axis=1, keepdims=True)


def soft_label_matrix(distribution: str, k: int, **params: Any) -> torch.Tensor:
    """``(K, K)`` soft labels: row ``y`` is the target distribution of a sample of class ``y``.

    Raises:
        ConfigError: an unknown distribution (with "did you mean"), bad parameters.
    """
    if distribution not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(distribution), DISTRIBUTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Expected argument `distribution` to be one of {list(DISTRIBUTIONS)}, but got "
            f"{distribution!r}.{hint}"
        )
    key = tuple(sorted((str(n), float(v)) for n, v in params.items()))
    return torch.as_tensor(_soft_label_matrix(distribution, int(k), key), dtype=torch.float32)


def soft_ordinal_targets(
    labels: torch.Tensor, k: int, distribution: str = "exponential", eta: float = 1.0, **params: Any
) -> torch.Tensor:
    """``(B,)`` class indices → ``(B, K)`` targets ``(1 - eta) * onehot + eta * P[y]``."""
    if not 0.0 <= float(eta) <= 1.0:
        raise ConfigError(
            f"Expected argument `eta` to be a float in the [0, 1] range, but got {eta}."
        )
    matrix = soft_label_matrix(distribution, k, **params).to(labels.device)
    onehot = F.one_hot(labels, k).to(matrix.dtype)
    return (1.0 - float(eta)) * onehot + float(eta) * matrix[labels]


def soft_ordinal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    distribution: str = "exponential",
    eta: float = 1.0,
    **params: Any,
) -> torch.Tensor:
    """Cross-entropy against soft ordinal labels (see the module).

    Args:
        logits: ``(B, K)``.
        targets: ``(B,)`` class indices, or ``(B, K)`` soft targets (mixup's: used as given).
        weight: ``(K,)`` class weights.
        label_smoothing: as in :func:`~osteolightning.models.losses.cross_entropy`.
        distribution: one of :data:`DISTRIBUTIONS`.
        eta: the share of the soft label in the target (0: one-hot cross-entropy).
        **params: the distribution's parameters (``p``, ``tau`` for ``exponential``;
            ``alpha2`` for ``triangular``; ...), as dlordinal names them.

    Returns:
        The weighted mean loss.

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0, -1.0, -2.0]])
        >>> float(soft_ordinal_loss(logits, torch.tensor([0]))) > 0
        True
    """
    if targets.ndim == 1:
        targets = soft_ordinal_targets(targets, logits.shape[1], distribution, eta, **params)
    return cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)
