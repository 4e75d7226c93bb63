"""Batch augmentation on the accelerator, drawn like the albumentations presets.

The CPU path augments each image in DataLoader workers (albumentations on uint8). On a GPU that
can train faster than the workers augment, :class:`DeviceAugment` applies the *same configured
transforms* to a whole batch on the device instead: it reads each transform's parameters
(ranges, probabilities) from the albumentations objects of ``data.train_transforms``, so the
presets stay the single definition, and follows albumentations' formulas:

========================== ===============================================================
transform                  on the device, per image, with the transform's probability ``p``
========================== ===============================================================
``Affine``                 rotation, per-axis scale, translation (``translate_percent``:
                           whole pixels, as albumentations; or ``translate_px``) and shear
                           about the image centre (albumentations' matrix), bilinear for the
                           image, nearest for the mask, constant ``fill`` / ``fill_mask``
``HorizontalFlip``         ``VerticalFlip`` likewise
``RandomBrightnessContrast`` ``x * (1 + c) + b * 255``, ``c``, ``b`` uniform in the limits
``RandomGamma``            ``255 * (x / 255) ** (g / 100)``, ``g`` uniform in ``gamma_limit``
``GaussNoise``             ``N(mean, std)`` per pixel, ``std`` uniform in ``std_range`` × 255
========================== ===============================================================

Values stay floats in ``[0, 255]`` between steps (albumentations rounds to uint8 after each
transform: a difference of under one grey level). Any other transform is refused with a
:class:`ConfigError` naming it (switch it off with ``data.train_transforms.<name>=null``, or
keep the CPU path). The random numbers of a batch come from a generator seeded by the
DataModule from ``(seed, epoch, the batch's image indices)``; see :mod:`.on_device`.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

from osteolightning.errors import ConfigError

#: transforms the device path reproduces
SUPPORTED = (
    A.Affine,
    A.HorizontalFlip,
    A.VerticalFlip,
    A.RandomBrightnessContrast,
    A.RandomGamma,
    A.GaussNoise,
)


@dataclass(frozen=True)
class _Step:
    """One configured transform: its kind, probability and parameter ranges."""

    kind: str
    p: float
    ranges: dict[str, tuple[float, float]]
    fill: float = 0.0
    fill_mask: float = 0.0
    pixels: bool = False  # Affine: translation in pixels (translate_px), not a fraction


def _pair(value: object) -> tuple[float, float]:
    lo, hi = value  # type: ignore[misc]
    return float(lo), float(hi)


def _affine(t: A.Affine) -> _Step:
    bad = []
    if t.interpolation != cv2.INTER_LINEAR or t.mask_interpolation != cv2.INTER_NEAREST:
        bad.append("interpolation other than linear (nearest for masks)")
    if t.border_mode != cv2.BORDER_CONSTANT:
        bad.append("border_mode other than BORDER_CONSTANT")
    if t.fit_output or t.balanced_scale or t.keep_ratio:
        bad.append("fit_output / balanced_scale / keep_ratio")
    if bad:
        raise ConfigError(
            f"The device path reproduces albumentations.Affine without {'; '.join(bad)}, but "
            f"got {t!r}. Use the CPU path (data.on_device=null) for it."
        )
    pixels = t.translate_percent is None
    translate = t.translate_px if pixels else t.translate_percent
    ranges = {
        "rotate": _pair(t.rotate),
        "scale_x": _pair(t.scale["x"]),
        "scale_y": _pair(t.scale["y"]),
        "translate_x": _pair(translate["x"]),
        "translate_y": _pair(translate["y"]),
        "shear_x": _pair(t.shear["x"]),
        "shear_y": _pair(t.shear["y"]),
    }
    fill = t.fill if isinstance(t.fill, int | float) else t.fill[0]
    fill_mask = t.fill_mask if isinstance(t.fill_mask, int | float) else t.fill_mask[0]
    return _Step("affine", float(t.p), ranges, float(fill), float(fill_mask), pixels)


def _step(t: A.BasicTransform) -> _Step:
    if isinstance(t, A.Affine):
        return _affine(t)
    if isinstance(t, A.HorizontalFlip):
        return _Step("hflip", float(t.p), {})
    if isinstance(t, A.VerticalFlip):
        return _Step("vflip", float(t.p), {})
    if isinstance(t, A.RandomBrightnessContrast):
        if not t.brightness_by_max or t.ensure_safe_range:
            raise ConfigError(
                "The device path reproduces albumentations.RandomBrightnessContrast with "
                f"brightness_by_max=True and ensure_safe_range=False, but got {t!r}."
            )
        return _Step(
            "brightness_contrast",
            float(t.p),
            {"contrast": _pair(t.contrast_limit), "brightness": _pair(t.brightness_limit)},
        )
    if isinstance(t, A.RandomGamma):
        return _Step("gamma", float(t.p), {"gamma": _pair(t.gamma_limit)})
    if isinstance(t, A.GaussNoise):
        if t.noise_scale_factor != 1:
            raise ConfigError(
                f"The device path reproduces albumentations.GaussNoise with noise_scale_factor=1, "
                f"but got {t!r}."
            )
        return _Step("noise", float(t.p), {"std": _pair(t.std_range), "mean": _pair(t.mean_range)})
    raise AssertionError(t)  # filtered by DeviceAugment


#: uniform numbers each kind of step draws per image (the first decides whether it applies)
_DRAWS = {"affine": 8, "hflip": 1, "vflip": 1, "brightness_contrast": 3, "gamma": 2, "noise": 3}


class DeviceAugment:
    """The albumentations pipeline ``augment``, applied to whole batches on their device.

    Args:
        augment: the training pipeline (``A.Compose`` of ``data.train_transforms``), or None.

    Raises:
        ConfigError: a transform the device path does not reproduce (named, with the
            supported ones), or an option of a supported one that it does not.

    Example:
        >>> aug = DeviceAugment(A.Compose([A.HorizontalFlip(p=0.5)]))
        >>> images = torch.zeros(4, 32, 32, dtype=torch.uint8)
        >>> u = torch.rand(4, aug.draws)
        >>> out, _ = aug(images, None, u, torch.Generator())
        >>> out.shape, out.dtype
        (torch.Size([4, 32, 32]), torch.float32)
    """

    def __init__(self, augment: A.Compose | None) -> None:
        transforms = list(augment.transforms) if augment is not None else []
        bad = [type(t).__name__ for t in transforms if not isinstance(t, SUPPORTED)]
        if bad:
            raise ConfigError(
                f"Expected the training transforms of data.on_device to be among "
                f"{[c.__name__ for c in SUPPORTED]}, but got {bad}. Switch those off "
                "(data.train_transforms.<name>=null), pick a preset without them "
                "(data/augment=light), or keep the CPU path (data.on_device=null)."
            )
        self.steps = [_step(t) for t in transforms]
        self.draws = sum(_DRAWS[s.kind] for s in self.steps)

    def params(self, u: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Each step's parameters from the uniform numbers ``u`` ``(B, draws)``: ``apply``
        ``(B,)`` bool and the values drawn from the step's ranges, ``(B,)`` each."""
        out, col = [], 0
        for step in self.steps:
            block = u[:, col : col + _DRAWS[step.kind]]
            col += _DRAWS[step.kind]
            values = {"apply": block[:, 0] < step.p}
            for k, (name, (lo, hi)) in enumerate(step.ranges.items()):
                if step.pixels and name.startswith("translate"):  # randint(lo, hi), inclusive
                    values[name] = torch.floor(lo + (hi - lo + 1) * block[:, 1 + k]).clamp(max=hi)
                else:
                    values[name] = lo + (hi - lo) * block[:, 1 + k]
            out.append(values)
        return out

    def __call__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None,
        u: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch.

        Args:
            images: ``(B, H, W)`` uint8 (or float in ``[0, 255]``) on the device.
            masks: ``(B, H, W)`` integer class indices, moved with the images, or None.
            u: ``(B, draws)`` uniform numbers in ``[0, 1)`` (any device).
            generator: the device's generator for the noise (None: the global one).

        Returns:
            ``(B, H, W)`` float32 images in ``[0, 255]`` and the masks (same dtype as given).
        """
        x = images.float()
        u = u.to(x.device, torch.float32)
        for step, p in zip(self.steps, self.params(u), strict=True):
            apply = p["apply"]
            if step.kind == "affine":
                x, masks = _warp(x, masks, step, p, apply)
            elif step.kind in ("hflip", "vflip"):
                dim = -1 if step.kind == "hflip" else -2
                x = torch.where(apply[:, None, None], x.flip(dim), x)
                if masks is not None:
                    masks = torch.where(apply[:, None, None], masks.flip(dim), masks)
            elif step.kind == "brightness_contrast":
                alpha = 1 + p["contrast"][:, None, None]
                beta = 255 * p["brightness"][:, None, None]
                x = torch.where(apply[:, None, None], (x * alpha + beta).clamp(0, 255), x)
            elif step.kind == "gamma":
                gamma = (p["gamma"] / 100)[:, None, None]
                x = torch.where(apply[:, None, None], 255 * (x / 255).pow(gamma), x)
            elif step.kind == "noise":
                sigma, mean = 255 * p["std"][:, None, None], 255 * p["mean"][:, None, None]
                noise = torch.randn(x.shape, device=x.device, generator=generator)
                x = torch.where(apply[:, None, None], (x + mean + sigma * noise).clamp(0, 255), x)
        return x, masks


def affine_matrices(
    p: dict[str, torch.Tensor], height: int, width: int, pixels: bool = False
) -> torch.Tensor:
    """albumentations' forward matrices (source → output pixel coordinates), ``(B, 3, 3)``:
    centre, scale, rotate, shear, translate, shift back (``create_affine_transformation_matrix``).

    Args:
        p: ``rotate`` (degrees), ``scale_x``, ``scale_y``, ``translate_x``, ``translate_y``
            (fractions of the side, or pixels with ``pixels``), ``shear_x``, ``shear_y``
            (degrees, as drawn: albumentations negates them), ``(B,)`` each.
        height: image rows.
        width: image columns.
        pixels: the translations are in pixels (``translate_px``).
    """
    b = p["rotate"].shape[0]
    device = p["rotate"].device
    cx, cy = width / 2 - 0.5, height / 2 - 0.5
    rad = torch.deg2rad(torch.remainder(p["rotate"], 360))
    cos, sin = torch.cos(rad), torch.sin(rad)
    tx, ty = p["translate_x"], p["translate_y"]
    if not pixels:
        tx, ty = torch.trunc(tx * width), torch.trunc(ty * height)  # int() of albumentations
    shx, shy = torch.tan(torch.deg2rad(-p["shear_x"])), torch.tan(torch.deg2rad(-p["shear_y"]))

    def mat(*rows: list) -> torch.Tensor:
        m = torch.zeros(b, 3, 3, device=device)
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                m[:, i, j] = v
        return m

    one, zero = torch.ones(b, device=device), torch.zeros(b, device=device)
    to_corner = mat([one, zero, -cx * one], [zero, one, -cy * one], [zero, zero, one])
    scale = mat([p["scale_x"], zero, zero], [zero, p["scale_y"], zero], [zero, zero, one])
    rotate = mat([cos, sin, zero], [-sin, cos, zero], [zero, zero, one])
    shear = mat([one, shx, zero], [shy, one, zero], [zero, zero, one])
    translate = mat([one, zero, tx], [zero, one, ty], [zero, zero, one])
    back = mat([one, zero, cx * one], [zero, one, cy * one], [zero, zero, one])
    return back @ translate @ shear @ rotate @ scale @ to_corner


def _warp(
    x: torch.Tensor,
    masks: torch.Tensor | None,
    step: _Step,
    p: dict[str, torch.Tensor],
    apply: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Warp the images (bilinear) and masks (nearest) where ``apply``; others pass through."""
    b, h, w = x.shape
    forward = affine_matrices(p, h, w, step.pixels)
    eye = torch.eye(3, device=x.device).expand(b, 3, 3)
    forward = torch.where(apply[:, None, None], forward, eye)
    inverse = torch.linalg.inv(forward)  # output pixel → source pixel
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=torch.float32),
        torch.arange(w, device=x.device, dtype=torch.float32),
        indexing="ij",
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, h * w, 3)  # (1, HW, 3)
    src = points @ inverse.transpose(1, 2)  # (B, HW, 3)
    # pixel centres → grid_sample's [-1, 1] (align_corners=False)
    grid = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], dim=-1)
    grid = grid.reshape(b, h, w, 2)
    warped = (
        F.grid_sample(
            (x - step.fill)[:, None],
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )[:, 0]
        + step.fill
    )
    x = torch.where(apply[:, None, None], warped, x)
    if masks is not None:
        m = (
            F.grid_sample(
                (masks.float() - step.fill_mask)[:, None],
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )[:, 0]
            + step.fill_mask
        )
        masks = torch.where(apply[:, None, None], m.round().to(masks.dtype), masks)
    return x, masks
