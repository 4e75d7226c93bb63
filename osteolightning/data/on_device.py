"""The GPU data path (``data.on_device``): training batches augmented and normalised on the device.

On the CPU path every training image is augmented and normalised in DataLoader workers and
shipped as float32. A GPU can consume images faster than a few CPU workers augment them, so
with ``data.on_device``:

- ``stream``: the training loader ships the preprocessed uint8 images (a quarter of the bytes,
  no augmentation in the workers); :class:`~osteolightning.data.device_augment.DeviceAugment`
  augments the batch on the device, which then normalises it;
- ``resident``: the training split's uint8 images are copied to the device once, at the first
  training batch; the loader ships only the images' indices (no pixels at all);
- ``auto``: ``resident`` when the split takes under half of the device's free memory at that
  moment (a CUDA device), else ``stream``;
- ``normalize``: the workers augment as on the CPU path (albumentations, any preset) but ship
  uint8, and the device normalises: a quarter of the bytes between processes (a float32
  224-px image costs the workers and the main process about 0.3 ms of CPU to pass, measured
  in ``benchmarks/loader.py``).

Validation, test and prediction keep the CPU path (no augmentation; the writers and the
saliency report read those loaders). The random numbers of a training batch are drawn on the
host from ``(seed, epoch, the batch's image indices)``: a run is reproducible for a given
config, though not image-for-image equal to the CPU path, whose draws are per image.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from osteolightning.data.device_augment import DeviceAugment
from osteolightning.data.specs import DeviceSpec

log = logging.getLogger(__name__)

#: ``auto``: resident when the training images take less than this share of free device memory
RESIDENT_SHARE = 0.5


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    """An image as it is stored: ``(H, W)`` uint8, or a row number (resident mode)."""
    return torch.from_numpy(np.asarray(image))  # 0-d stays 0-d (np.ascontiguousarray: 1-d)


class _NoPixels:
    """A training split's images in resident mode: the loader reads no pixels."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return np.zeros((), np.uint8)


def transfer_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch dict's tensors moved to ``device``; its lists of file names and keys left as
    they are. Lightning's default walks every element of every list (about 1 ms a batch of 32
    with its paths and keys: per training step)."""
    non_blocking = device.type not in ("cpu", "mps")
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=non_blocking)
        elif isinstance(value, str | int | float | bool) or (
            isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        ):
            out[key] = value
        else:
            out[key] = move_data_to_device(value, device)
    return out


class DevicePath:
    """The device path of training batches (``data.on_device``): what the training loader
    ships, and what happens to a batch before and after it moves to the device.

    Args:
        spec: ``on_device``: ``None`` (the CPU path: every hook passes batches through),
            ``"stream"``, ``"resident"``, ``"auto"`` or ``"normalize"``.
        to_tensor: the normalisation of the CPU path (its mean, std and channels).
        train_augment: the training augmentation, reproduced on the device (refused now, not
            at the first batch, when it cannot be).
        seed: the run's seed; each batch's draws come from it, the epoch and its images.

    Attributes:
        mode: ``stream`` or ``resident`` once chosen (``auto``: by free device memory at the
            first training loader or batch), ``normalize``; ``None`` before.
    """

    def __init__(self, spec: DeviceSpec, to_tensor: Any, train_augment: Any, seed: int) -> None:
        self.on_device, self.to_tensor, self.seed = spec.on_device, to_tensor, int(seed)
        self.mode: str | None = "normalize" if spec.on_device == "normalize" else None
        self.augment = DeviceAugment(train_augment) if spec.augments else None
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._resident: torch.Tensor | None = None
        self._lookup: torch.Tensor | None = None
        self._train: Any = None  # the training dataset the loader was made from
        self._n_samples = 0

    def loader_dataset(self, dataset: Any, n_samples: int, device: torch.device | None) -> Any:
        """The training dataset the loader reads: items with the stored uint8 image (no
        augmentation, no normalisation; no pixels at all when resident), the other fields as
        the dataset makes them.

        Args:
            dataset: the training split's dataset.
            n_samples: the number of samples of the data set (its indices' range).
            device: the device the batches go to (``None``: decided at the first batch).
        """
        out = copy.copy(dataset)
        out.to_tensor = _as_tensor
        if self.on_device != "normalize":
            out.augment = None
        self._train, self._n_samples = dataset, n_samples
        mode = self.mode
        if mode is None and device is not None:
            mode = self._choose_mode(device)
        if mode == "resident":
            out.images = _NoPixels(len(dataset))
        return out

    def before_transfer(self, batch: Any, epoch: int) -> Any:
        """Draw the batch's augmentation (host) for a device-path training batch."""
        if self.on_device is None or not _device_batch(batch):
            return batch
        batch = dict(batch)  # the loader's batch stays as it was
        if self.augment is None:  # normalize: augmented in the workers
            batch["normalize_only"] = True
            return batch
        indices = batch["index"].tolist()
        state = np.random.SeedSequence([self.seed % 2**63, epoch, *indices]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]))
        batch["augment_u"] = torch.rand(len(indices), self.augment.draws, generator=generator)
        batch["augment_seed"] = int(state[1])  # the device's noise generator (a plain int)
        if batch["image"].ndim == 1:
            batch["image"] = batch["index"].clone()  # resident: the rows to gather
        return batch

    def after_transfer(self, batch: Any) -> Any:
        """Gather (resident), augment and normalise a device-path training batch."""
        if not isinstance(batch, dict):
            return batch
        if batch.get("normalize_only"):
            batch = {k: v for k, v in batch.items() if k != "normalize_only"}
            batch["image"] = self._normalise(batch["image"].float())
            return batch
        if "augment_u" not in batch:
            return batch
        batch = dict(batch)
        images = batch["image"]
        device = images.device
        if images.ndim == 1:  # sample indices → the resident training images
            resident, lookup = self._resident_images(device)
            images = resident[lookup[images]]
        elif self.mode is None:
            self._choose_mode(device)
        generator = torch.Generator(device=device).manual_seed(batch.pop("augment_seed"))
        x, masks = self.augment(images, batch.get("mask"), batch.pop("augment_u"), generator)
        batch["image"] = self._normalise(x)
        if masks is not None:
            batch["mask"] = masks
        return batch

    # -- helpers ----------------------------------------------------------------------------
    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` floats in [0, 255] → ``(B, C, H, W)`` normalised for the backbone."""
        device = x.device
        if device not in self._norm:
            self._norm[device] = (self.to_tensor.mean.to(device), self.to_tensor.std.to(device))
        mean, std = self._norm[device]
        x = x[:, None].expand(-1, self.to_tensor.in_chans, -1, -1) / 255.0
        return (x - mean) / std

    def _choose_mode(self, device: torch.device) -> str:
        """``stream`` or ``resident`` for ``on_device`` (``auto``: by free device memory)."""
        if self.mode is not None:
            return self.mode
        mode = self.on_device
        if mode == "auto":
            need = int(np.prod(self._train.images.shape))
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
            mode = "resident" if need < RESIDENT_SHARE * free else "stream"
            log.info(
                f"data.on_device=auto: {mode} (training images {need / 2**20:.0f} MiB, "
                f"{free / 2**20:.0f} MiB free on {device})."
            )
        self.mode = mode
        return mode

    def _resident_images(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split's uint8 images on ``device`` ``(n, H, W)`` and the map from
        sample index to their row ``(N,)``; copied once, in chunks."""
        if self._resident is None or self._resident.device != device:
            source = self._train.images
            n = len(source)
            out = torch.empty(tuple(source.shape), dtype=torch.uint8, device=device)
            for start in range(0, n, 1024):
                chunk = np.asarray(source[start : start + 1024])  # (≤1024, H, W) read once
                out[start : start + len(chunk)] = torch.from_numpy(chunk).to(device)
            lookup = torch.full((self._n_samples,), -1, dtype=torch.long)
            lookup[torch.as_tensor(self._train.indices)] = torch.arange(n)
            self._resident, self._lookup = out, lookup.to(device)
            log.info(f"Training images resident on {device}: {out.numel() / 2**20:.0f} MiB.")
        return self._resident, self._lookup  # type: ignore[return-value]


def _device_batch(batch: Any) -> bool:
    """A training batch of the device path: uint8 images, or one number per image."""
    if not isinstance(batch, dict) or not isinstance(batch.get("image"), torch.Tensor):
        return False
    image = batch["image"]
    return image.dtype == torch.uint8 and image.ndim in (1, 3)
