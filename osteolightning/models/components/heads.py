"""Classification heads other than a linear layer: the cumulative link model for ordered classes.

A cumulative link model (CLM; McCullagh 1980, as a network layer by Vargas et al. 2020) maps the
pooled features to one number ``f(x)`` and reads the classes off ``K - 1`` ordered thresholds:
``P(y <= k) = F(theta_k - f(x))`` with ``F`` the link (logit, probit, complementary log-log), so
``P(y = k) = F(theta_k - f(x)) - F(theta_{k-1} - f(x))``. One direction in feature space, the
grades in order along it: the head cannot predict KL 4 more likely than KL 3 for a knee it
finds between KL 0 and KL 1. The layer is dlordinal's ``CLM`` (thresholds kept ordered by
squared increments); this module gives it the framework's output contract: ``(B, K)``
log-probabilities, so the softmax of the output is the CLM's probabilities, every loss
(cross-entropy = the CLM's negative log-likelihood, soft ordinal labels, class weights, mixup)
and every metric, ensemble and export applies unchanged, and the prediction rule is the CLM's
own: the most probable class.
"""

from __future__ import annotations

import torch
from torch import nn

from osteolightning.errors import ConfigError, did_you_mean

#: the link functions of dlordinal's CLM
LINKS = ("logit", "probit", "cloglog")
#: the heads :func:`~osteolightning.models.components.backbone.create_backbone` builds
HEADS = ("linear", "clm")
#: the smallest probability kept before the log (a saturated link gives exact zeros)
_FLOOR = 1e-7


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"Expected argument `{name}` to be one of {list(allowed)}, but got {value!r}."
            + did_you_mean(value, allowed)
        )


class CumulativeLinkHead(nn.Module):
    """``(B, D)`` features → ``(B, K)`` log-probabilities of a cumulative link model.

    Args:
        in_features: ``D``.
        num_classes: ``K`` (at least 3: two classes make it a logistic regression).
        link: ``logit`` | ``probit`` | ``cloglog``.

    Example:
        >>> head = CumulativeLinkHead(8, 5)
        >>> head(torch.randn(4, 8)).softmax(1).sum(1).allclose(torch.ones(4))
        True
    """

    def __init__(self, in_features: int, num_classes: int, link: str = "logit") -> None:
        super().__init__()
        _check_choice("link", link, LINKS)
        if num_classes < 3:
            raise ConfigError(
                f"Expected at least 3 ordered classes for the cumulative link head, but got "
                f"{num_classes}; with two, use the linear head (model.net.head=linear)."
            )
        from dlordinal.output_layers import CLM

        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.proj = nn.Linear(in_features, 1)
        self.clm = CLM(num_classes, link_function=link)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` class probabilities (dlordinal's CLM, float32 under autocast)."""
        with torch.autocast(features.device.type, enabled=False):
            return self.clm(self.proj(features.float()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.probabilities(features).clamp_min(_FLOOR).log()


def ordinal_head(layer: nn.Module, kind: str, num_classes: int, link: str) -> nn.Module | None:
    """The head of ``kind`` that replaces the classification ``layer`` (a ``Linear``), or
    ``None`` for ``linear`` (the layer stays).

    Raises:
        ConfigError: an unknown kind or link; a layer that is not a ``Linear``.
    """
    _check_choice("head", kind, HEADS)
    if kind == "linear":
        return None
    if not isinstance(layer, nn.Linear):
        raise ConfigError(
            f"The cumulative link head replaces a linear classification layer, but this "
            f"network's is a {type(layer).__name__}; choose a backbone with a linear head "
            "(the timm and torchvision classifiers of osteolightning/conf/model/backbone) or "
            "model.net.head=linear."
        )
    return CumulativeLinkHead(layer.in_features, num_classes, link)
