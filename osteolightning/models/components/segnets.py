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

from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.components.sizes import (
    InputSizeCheck,
    check_image_size,
    check_input_size,
    mark_network,
)
from osteolightning.models.components.unets import UNET_CHANNELS, AttentionUNetDS, EncoderUNet

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
    net.register_forward_pre_hook(InputSizeCheck(name, in_chans, multiple, fixed_size, reason))
    return mark_network(net, 0, multiple, fixed_size)


def _build_unet(in_chans: int, num_classes: int, image_size: Any, opts: dict) -> nn.Module:
    from monai.networks.nets import UNet

    channels, strides, multiple = _unet_sizes("unet", opts)
    reason = f"U-Net downsamples by strides {list(strides)} (x{multiple} in all)"
    check_image_size("unet", image_size, multiple, reason)
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
    check_image_size("attention_unet", image_size, multiple, reason)
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
    check_image_size(name, image_size, multiple, reason)
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
    image_size = check_image_size(name, image_size, UNETR_PATCH, reason)
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
    check_image_size(name, image_size, SWIN_MULTIPLE, reason)
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
    check_image_size(
        name,
        image_size,
        net.size_multiple,
        f"The encoder `{encoder}` reduces the image by {net.size_multiple}",
    )
    return net
