"""Input sizes of the segmentation networks: checked at build time and at every forward call,
with messages that name the accepted sizes; and the attributes the training code reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from osteolightning.errors import ConfigError


def size_examples(value: int, multiple: int) -> str:
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
    # the batch dimension stays as it is (symbolic under torch.export: a dynamic batch)
    shape = (shape[0], *(int(s) for s in shape[1:])) if len(shape) else tuple(shape)
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
            f"{shape} (e.g. {size_examples(height, size_multiple)} would fit). {reason}".rstrip()
        )


def check_image_size(network: str, image_size: Any, multiple: int, reason: str) -> int:
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
            f"{size_examples(image_size, multiple)}); got image_size={image_size} for {network}."
        )
    return image_size


class InputSizeCheck:
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


def mark_network(
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
