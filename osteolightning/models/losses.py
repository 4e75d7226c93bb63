"""Classification losses for hard or soft targets, and the mixup / cutmix that make soft ones.

Every loss has one signature, ``loss(logits, targets, weight=None, label_smoothing=0.0)``, so
the classifier takes any of them from config (``model/loss=focal``) and calls it with its
class-weight buffer and label smoothing:

- ``logits``: ``(B, K)``;
- ``targets``: hard labels ``(B,)`` (int64) or soft targets ``(B, K)`` (rows summing to 1, e.g.
  from :class:`MixupCutmix`);
- ``weight``: ``(K,)`` class weights (``None``: all 1).

The batch loss is always the *weighted mean* ``sum_i l_i / sum_i s_i`` where ``s_i`` is the
sample weight :func:`sample_weights` (``weight[y_i]`` for a hard label, ``targets_i @ weight`` for
a soft one) and ``l_i`` already carries it. So ``loss * sum_i s_i`` is the batch's weighted sum,
and an epoch average weighted by ``sum_i s_i`` is exact however batches are cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from osteolightning.errors import ConfigError


def sample_weights(targets: torch.Tensor, weight: torch.Tensor | None, k: int) -> torch.Tensor:
    """Per-sample weight ``(B,)``: ``weight[y]`` for hard targets, ``targets @ weight`` for soft."""
    if weight is None:
        return torch.ones(targets.shape[0], device=targets.device)
    if targets.ndim == 1:
        return weight[targets]
    return targets.to(weight.dtype) @ weight


def _soft_focal(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None,
    label_smoothing: float,
    gamma: float,
) -> torch.Tensor:
    """``sum_i sum_c -w_c y'_ic (1 - p_ic)^gamma log p_ic / sum_i s_i`` with smoothed ``y'``."""
    k = logits.shape[1]
    soft = targets if targets.ndim == 2 else F.one_hot(targets, k)
    soft = soft.to(logits.dtype)  # (B, K)
    smoothed = soft * (1 - label_smoothing) + label_smoothing / k  # (B, K)
    log_p = logits.float().log_softmax(dim=1)  # (B, K)
    focal = (1 - log_p.exp()).pow(gamma) if gamma else torch.ones_like(log_p)
    w = weight.to(log_p.dtype) if weight is not None else torch.ones(k, device=logits.device)
    per_sample = -(w * smoothed * focal * log_p).sum(dim=1)  # (B,)
    return per_sample.sum() / sample_weights(soft, w, k).sum()


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Class-weighted cross-entropy for hard ``(B,)`` or soft ``(B, K)`` targets.

    Hard targets go to :func:`torch.nn.functional.cross_entropy` unchanged (the classifier's
    original loss). Soft targets use the same formula with the one-hot replaced by the soft row,
    normalised by ``sum_i targets_i @ weight`` (PyTorch's own soft-target mode divides by ``B``
    instead), so a one-hot soft target gives exactly the hard-target value.

    Args:
        logits: ``(B, K)`` unnormalised scores.
        targets: ``(B,)`` class indices or ``(B, K)`` class probabilities.
        weight: ``(K,)`` class weights, or None.
        label_smoothing: in [0, 1).

    Example:
        >>> round(cross_entropy(torch.zeros(2, 3), torch.tensor([0, 2])).item(), 4)  # log(3)
        1.0986
    """
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)
    return _soft_focal(logits, targets, weight, label_smoothing, gamma=0.0)


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    ``FL = -alpha_y (1 - p_y)^gamma log p_y``, with the class weights as ``alpha``; for soft or
    smoothed targets every class term is weighted by its target mass:
    ``-sum_c alpha_c y_c (1 - p_c)^gamma log p_c``. The batch value is normalised by the summed
    sample weights, so ``gamma=0`` equals :func:`cross_entropy` exactly (weights and smoothing
    included).

    Args:
        logits: ``(B, K)`` unnormalised scores.
        targets: ``(B,)`` class indices or ``(B, K)`` class probabilities.
        weight: ``(K,)`` class weights ``alpha``, or None.
        label_smoothing: in [0, 1).
        gamma: focusing parameter >= 0 (2 in the paper).

    Raises:
        ConfigError: ``gamma`` is negative.
    """
    if gamma < 0:
        raise ConfigError(f"Expected argument `gamma` to be a float >= 0, but got {gamma}.")
    return _soft_focal(logits, targets, weight, label_smoothing, gamma=float(gamma))


class MixupCutmix:
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a batch with its reversal.

    With probability ``prob`` a batch is mixed: CutMix if only ``cutmix_alpha > 0``, mixup if
    only ``mixup_alpha > 0``, and with both, CutMix with probability ``switch_prob``. The mixing
    ratio ``lam ~ Beta(alpha, alpha)``; CutMix pastes a box of area ``1 - lam`` (clipped to the
    image, ``lam`` then recomputed from the real box). Unlike ``timm.data.Mixup`` any batch size
    works (odd ones too). Random draws use torch's global RNG (seeded by ``seed``).

    Args:
        mixup_alpha: Beta parameter of mixup (0: off).
        cutmix_alpha: Beta parameter of CutMix (0: off).
        prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix rather than mixup when both are on.

    Raises:
        ConfigError: a negative alpha, or a probability outside [0, 1].
    """

    def __init__(
        self,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ConfigError(f"Expected argument `{name}` to be >= 0, but got {value}.")
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0 <= value <= 1:
                raise ConfigError(f"Expected argument `{name}` in [0, 1], but got {value}.")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` images, ``(B,)`` labels → mixed images and ``(B, K)`` soft targets."""
        soft = F.one_hot(labels, k).to(images.dtype)  # (B, K)
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return images, soft
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha == 0 or torch.rand(()).item() < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other = images.flip(0)  # pair sample i with sample B-1-i
        if use_cutmix:
            h, w = images.shape[-2:]
            cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            mixed = images.clone()
            mixed[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            mixed = lam * images + (1 - lam) * other
        return mixed, lam * soft + (1 - lam) * soft.flip(0)
