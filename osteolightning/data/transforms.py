"""Image → tensor: albumentations augmentations on uint8, then scaling and normalisation.

The training augmentation presets live in ``osteolightning/conf/data/augment/`` (``none``,
``light``, ``radiograph`` (default), ``strong``), each a mapping ``name -> transform`` mounted at
``data.train_transforms``; ``osteo-train data/augment=strong`` switches preset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
        # own copies, not views of the tensors: pickling for spawned processes moves a
        # tensor's storage into shared memory and frees the old one under a NumPy view
        self._mean = np.array(list(mean), dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.array(list(std), dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        # NumPy, one thread: torch would spread one image's arithmetic over its intra-op
        # threads, which in a process without DataLoader workers costs tens of times more
        # CPU than the arithmetic (measured in benchmarks/loader.py); same float32 values.
        x = np.asarray(image, dtype=np.float32)[None] / np.float32(255.0)  # (1, H, W)
        x = (x - self._mean) / self._std  # (C or 1, H, W)
        return torch.from_numpy(x).expand(self.in_chans, -1, -1)  # (C, H, W)


def compose(
    transforms: Mapping[str, A.BasicTransform | None] | Sequence[A.BasicTransform] | None,
) -> A.Compose | None:
    """Wrap albumentations transforms (instantiated from config) in ``A.Compose``.

    Args:
        transforms: a mapping ``name -> transform`` (a ``data/augment`` preset; applied in order,
            ``None`` entries skipped so ``data.train_transforms.<name>=null`` switches one off), a
            list of transforms, or None.

    Returns:
        The composed pipeline (uint8 ``(H, W)`` in, uint8 ``(H, W)`` out), or None when empty.

    Raises:
        ConfigError: an entry is not an albumentations transform.
    """
    if isinstance(transforms, Mapping):
        named = [(str(k), t) for k, t in transforms.items() if t is not None]
    else:
        named = [(f"[{i}]", t) for i, t in enumerate(transforms or [])]
    for name, t in named:
        if not isinstance(t, A.BasicTransform | A.BaseCompose):
            raise ConfigError(
                f"Expected transform `{name}` to be an albumentations transform (a `_target_` such "
                f"as albumentations.HorizontalFlip), but got {t!r}."
            )
    if not named:
        return None
    return A.Compose([t for _, t in named])
