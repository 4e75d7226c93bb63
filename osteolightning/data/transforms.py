"""Image → tensor: albumentations augmentations on uint8, then scaling and normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch

from osteolightning.errors import ConfigError


class ToNormalizedTensor:
    """Scale a uint8 image to [0, 1], normalise it for the backbone and make it a tensor.

    Args:
        mean: per-channel mean of the backbone's pretraining data (length 1 or ``in_chans``).
        std: per-channel standard deviation, same length.
        in_chans: channels the network expects; a grayscale image is repeated to fill them.

    Example:
        >>> to_tensor = ToNormalizedTensor([0.449], [0.226], in_chans=1)
        >>> to_tensor(np.zeros((8, 8), np.uint8)).shape
        torch.Size([1, 8, 8])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_chans: int = 1) -> None:
        if len(mean) != len(std) or len(mean) not in (1, in_chans):
            raise ConfigError(
                f"Expected `mean` and `std` to have 1 or in_chans={in_chans} entries each, "
                f"but got {len(mean)} and {len(std)}."
            )
        if min(std) <= 0:
            raise ConfigError(f"Expected every `std` entry to be > 0, but got {list(std)}.")
        self.in_chans = in_chans
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)  # (H, W)
        x = x.unsqueeze(0).expand(self.in_chans, -1, -1)  # (C, H, W)
        return (x - self.mean) / self.std


def compose(transforms: Sequence[A.BasicTransform] | None) -> A.Compose | None:
    """Wrap a list of albumentations transforms (instantiated from config) in ``A.Compose``."""
    if not transforms:
        return None
    return A.Compose(list(transforms))
