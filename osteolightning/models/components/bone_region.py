"""Bone density from the segmented bone (Nazia Fathima et al. 2020): intensity, cortical and
texture statistics measured inside each image's bone mask, the features of the fitted BMD
regression of ``experiment=fathima2020``.

A radiograph's grey level inside the bone grows with the mineral it crosses, but exposure,
windowing and soft tissue change it from image to image. The statistics are therefore taken
relative to the soft tissue just around the bone (a ring outside the mask) and to the image's
own spread: the bone's intensity distribution (percentiles), its contrast against the ring,
the mean intensity at each depth below the bone's edge (the cortex is the bright rim; its
width is where the profile falls half-way to the trabecular interior), and the trabecular
texture (high-pass residuals, gradient magnitude, a uniform local binary pattern histogram)
inside the interior. The mask is the data's (``data.mask_input=provide``: the phantom's bone
masks, or a manifest's ``mask`` column such as the masks ``osteo-predict`` exports), or the
prediction of a segmentation checkpoint (``segmenter``): then the segmentation runs here on
every image, and :meth:`BoneRegionEmbedder.segmentation_dice` scores it against the data's
masks. Images in which the segmenter finds no bone get all-zero statistics; the embedder
counts them (``empty_bone`` of ``segmented``) and warns, naming how many.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.checkpointing import load_model
from osteolightning.models.components.features import _digest, _weights_digest
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: depth bands (pixels below the bone's edge) of the intensity profile; the last is the interior
DEPTH_BANDS = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 6), (6, 9), (9, 10**6))
PERCENTILES = (10, 25, 50, 75, 90)
#: width in pixels of the soft-tissue ring around the bone
RING = 6
#: a mask with fewer bone pixels is empty: its statistics are all zeros
MIN_BONE_PIXELS = 4


def region_features(image: np.ndarray, bone: np.ndarray) -> np.ndarray:
    """Statistics of one image inside its bone mask.

    Args:
        image: ``(H, W)`` float grey levels in ``[0, 1]``.
        bone: ``(H, W)`` bool, the bone.

    Returns:
        ``(D,)`` float32: bone percentiles, mean and SD, ring mean and SD, two contrasts, the
        depth profile, the cortical width, three texture statistics, an 10-bin LBP histogram of
        the interior and the bone's area fraction (zeros where the mask is empty).
    """
    from skimage.feature import local_binary_pattern

    dim = len(PERCENTILES) + 2 + 2 + 2 + len(DEPTH_BANDS) + 1 + 3 + 10 + 1
    if bone.sum() < MIN_BONE_PIXELS:
        return np.zeros(dim, dtype=np.float32)
    spread = float(image.std()) + 1e-6
    ring = ndimage.binary_dilation(bone, iterations=RING) & ~bone
    # the soft tissue around the bone (a mask that covers everything: the whole image)
    tissue = image[ring] if ring.any() else image[~bone] if (~bone).any() else image.ravel()
    t_mean, t_sd = float(tissue.mean()), float(tissue.std()) + 1e-6
    values = image[bone]
    depth = ndimage.distance_transform_edt(bone)  # 1 at the edge pixels
    profile = []
    for lo, hi in DEPTH_BANDS:
        band = bone & (depth > lo) & (depth <= hi)
        level = image[band].mean() if band.any() else values.mean()
        profile.append((float(level) - t_mean) / spread)
    interior = profile[-1]
    rim = max(profile[:-1])
    half = interior + 0.5 * (rim - interior)
    widths = [hi for (_, hi), level in zip(DEPTH_BANDS[:-1], profile[:-1], strict=True)]
    below = [w for w, level in zip(widths, profile[:-1], strict=True) if level <= half]
    cortical_width = float(below[0]) if below else float(widths[-1])
    inner = bone & (depth > 3)
    if inner.sum() < 4:
        inner = bone
    fine = image - ndimage.gaussian_filter(image, 1.0)
    coarse = image - ndimage.gaussian_filter(image, 2.0)
    gradient = np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1))
    codes = local_binary_pattern((image * 255).astype(np.uint8), 8, 1, method="uniform")
    hist = np.bincount(codes[inner].astype(np.int64), minlength=10)[:10].astype(np.float64)
    parts = [
        (np.percentile(values, PERCENTILES) - t_mean) / spread,
        [(values.mean() - t_mean) / spread, values.std() / spread],
        [t_mean, t_sd / spread],
        [(values.mean() - t_mean) / t_sd, (np.median(values) - t_mean) / t_sd],
        profile,
        [cortical_width],
        [fine[inner].std() / spread, coarse[inner].std() / spread, gradient[inner].mean() / spread],
        hist / max(1.0, hist.sum()),
        [bone.mean()],
    ]
    return np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in parts]).astype(
        np.float32
    )


def segmenter_training_images(ckpt_path: str | Path) -> set[str]:
    """The content hashes (SHA-1) of the training images of a checkpoint's run (its
    ``splits.csv``; empty when it has none)."""
    from osteolightning.errors import DataSourceError
    from osteolightning.runs import rundir

    try:
        _, rows = rundir.read_splits(rundir.run_of_checkpoint(ckpt_path))
    except DataSourceError:
        return set()
    return {row["sha1"] for row in rows if row.get("split") == "train" and row.get("sha1")}


class BoneRegionEmbedder(nn.Module):
    """``(B, C, H, W)`` normalised images and ``(B, H, W)`` masks → ``(B, D)`` bone-region
    statistics (:func:`region_features`), the bone being the mask's foreground or, with a
    ``segmenter``, the foreground that checkpoint predicts.

    Args:
        mean: the inputs' normalisation mean (to recover grey levels).
        std: the inputs' normalisation SD.
        segmenter: a segmentation checkpoint (``osteo-segment``) that segments every image;
            ``None``: the data's masks.
        allow_unsafe_pickle: see :func:`~osteolightning.models.checkpointing.torch_load`.

    Raises:
        ConfigError: a ``segmenter`` that is not a segmentation checkpoint.
    """

    def __init__(
        self,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        segmenter: str | None = None,
        allow_unsafe_pickle: bool = False,
    ) -> None:
        super().__init__()
        self.mean, self.std = float(np.mean(mean)), float(np.mean(std))
        self.dim = len(region_features(np.zeros((8, 8)), np.zeros((8, 8), dtype=bool)))
        self.segmenter_path = str(Path(segmenter).resolve()) if segmenter else None
        # kept out of the module tree: its weights come from its own checkpoint, not ours
        self.__dict__["segmenter"] = None
        #: content hashes of the segmenter's training images (its run's splits.csv)
        self.segmenter_train: set[str] = set()
        settings: dict[str, object] = {"mean": self.mean, "std": self.std, "v": 1}
        if segmenter:
            model = load_model(segmenter, allow_unsafe_pickle)
            if not hasattr(model, "predict_masks"):
                raise ConfigError(
                    f"model.net.segmenter='{segmenter}' is a classification checkpoint; the bone "
                    "must come from a segmentation checkpoint (osteo-segment)."
                )
            self.__dict__["segmenter"] = model.eval().requires_grad_(False)
            settings["segmenter"] = _weights_digest(model.net)
            self.segmenter_train = segmenter_training_images(segmenter)
        self.key = "bone-region-" + _digest(settings)
        #: images the segmenter segmented, and those in which it found no bone (so far)
        self.segmented, self.empty_bone = 0, 0
        self._warned_at = 0

    @property
    def needs_mask(self) -> bool:
        """Whether each image's mask must come with it (no segmenter of its own)."""
        return self.segmenter is None

    def train(self, mode: bool = True) -> BoneRegionEmbedder:
        """Always in eval mode (the segmenter is frozen)."""
        super().train(False)
        return self

    def grey(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` normalised → ``(B, H, W)`` grey levels in ``[0, 1]``."""
        return (images[:, 0].float() * self.std + self.mean).clamp(0, 1)

    @torch.no_grad()
    def predict_bone(self, images: torch.Tensor) -> torch.Tensor:
        """The segmenter's bone (any foreground class) ``(B, H, W)`` bool at the input size."""
        pre = self.segmenter.preprocessing
        grey = self.grey(images)[:, None]  # (B, 1, H, W)
        x = F.interpolate(grey, size=(pre.image_size,) * 2, mode="bilinear", align_corners=False)
        x = (x - torch.tensor(pre.mean).mean()) / torch.tensor(pre.std).mean()
        x = x.expand(-1, pre.in_chans, -1, -1)
        labels, _ = self.segmenter.predict_masks(x.to(next(self.segmenter.parameters()).device))
        labels = F.interpolate(labels[:, None].float(), size=images.shape[-2:], mode="nearest")
        return labels[:, 0].to(images.device) > 0

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)``, ``(B, H, W)`` → ``(B, D)`` float32."""
        if self.segmenter is not None:
            bone = self.predict_bone(images)
            self._count_empty(bone)
        elif masks is None:
            raise ConfigError("BoneRegionEmbedder needs masks (data.mask_input=provide).")
        else:
            bone = masks > 0
        grey = self.grey(images).cpu().numpy()
        rows = [region_features(g, b) for g, b in zip(grey, bone.cpu().numpy(), strict=True)]
        return torch.from_numpy(np.stack(rows)).to(images.device)

    def _count_empty(self, bone: torch.Tensor) -> None:
        """Count the images of ``bone`` ``(B, H, W)`` in which the segmenter found no bone, and
        warn: at the first, then each time the count doubles (a few lines however many)."""
        empty = int((bone.flatten(1).sum(1) < MIN_BONE_PIXELS).sum())
        self.segmented += len(bone)
        self.empty_bone += empty
        if empty and self.empty_bone >= 2 * self._warned_at:
            self._warned_at = self.empty_bone
            log.warning(
                f"The segmenter '{self.segmenter_path}' found no bone in {self.empty_bone} of "
                f"the {self.segmented} images it has segmented so far ({empty} of {len(bone)} "
                "in this batch): their bone statistics are all zeros, the same input for "
                "every one of them. Look at its masks (osteo-predict <segmenter> <images> "
                "--out DIR writes them), or measure the data's masks instead "
                "(model.net.segmenter=null, data.mask_input=provide)."
            )

    @torch.no_grad()
    def segmentation_dice(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``(B,)`` Dice of the segmenter's bone against the masks' foreground (NaN where both
        are empty)."""
        predicted, truth = self.predict_bone(images), masks > 0
        inter = (predicted & truth).flatten(1).sum(1).float()
        total = (predicted.flatten(1).sum(1) + truth.flatten(1).sum(1)).float()
        return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.nan)


def bone_density_net(
    num_classes: int,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    segmenter: str | None = None,
    allow_unsafe_pickle: bool = False,
) -> nn.Module:
    """The network of ``model=bone_density``: bone-region statistics and a fitted linear head."""
    from osteolightning.models.components.features import FeatureHead

    embedder = BoneRegionEmbedder(mean, std, segmenter, allow_unsafe_pickle)
    return FeatureHead(embedder, num_classes)
