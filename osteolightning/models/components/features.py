"""Fixed image descriptors for the fitted-head models: a frozen pretrained network's pooled
features, or classical texture statistics.

Every embedder maps ``(B, C, H, W)`` normalised images to ``(B, D)`` features and carries a
``key`` (a string naming everything its output depends on: backbone, weights, views, texture
settings), with which :class:`~osteolightning.models.components.feature_cache.FeatureCache`
stores the features of an image once, so a second run embeds nothing again.

* :class:`BackboneEmbedder`: any backbone of ``osteolightning/conf/model/backbone/`` with its
  classifier removed (timm's ``reset_classifier(0)``; torchvision's last linear layer), frozen, in
  eval mode; optionally averaged over several input scales, a horizontal flip and a grid of tiles
  (each tile at the network's resolution, so a large image keeps its texture).
* :class:`TextureEmbedder`: local binary pattern histograms and grey-level co-occurrence
  statistics (scikit-image) of the bone texture.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import create_backbone


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def strip_head(net: nn.Module, name: str) -> tuple[nn.Module, int]:
    """``net`` with its classifier replaced so it returns pooled features ``(B, D)``, and ``D``.

    Raises:
        ConfigError: a network without a classifier to remove (no pooled output).
    """
    if callable(getattr(net, "reset_classifier", None)):  # timm
        net.reset_classifier(0)
        return net, int(net.num_features)
    for attr in ("classifier", "fc", "heads", "head"):  # torchvision
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return net, int(head.in_features)
        if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            dim = int(head[-1].in_features)
            head[-1] = nn.Identity()
            return net, dim
    raise ConfigError(
        f"Cannot take features from backbone `{name}`: it has no classifier layer to remove "
        "(timm's reset_classifier or a final nn.Linear), so no pooled output. Use one of "
        "osteolightning/conf/model/backbone/ (model/backbone=<name>)."
    )


class BackboneEmbedder(nn.Module):
    """A frozen pretrained network's pooled features, averaged over views.

    Args:
        name: backbone registry name (``model.net.name``).
        in_chans: input channels.
        pretrained: the weights (see :func:`~osteolightning.models.components.backbone.create_backbone`).
        scales: input sides the image is resized to; the features are averaged over them
            (``None``: the input as given).
        hflip: also average over the horizontally flipped image.
        tiles: split the image into a ``tiles x tiles`` grid, embed each tile (resized to
            the first scale, or kept), and average: a large input keeps its fine texture.
        allow_unsafe_pickle: as for ``create_backbone``.
        checkpoint: an ``osteo-train`` classification checkpoint whose network to embed with
            (as for ``create_backbone``): knee-trained features.

    Example:
        >>> embed = BackboneEmbedder("resnet10t", pretrained=False)
        >>> embed(torch.zeros(2, 1, 64, 64)).shape[0]
        2
    """

    def __init__(
        self,
        name: str,
        in_chans: int = 1,
        pretrained: bool | str = False,
        scales: Sequence[int] | None = None,
        hflip: bool = False,
        tiles: int = 1,
        allow_unsafe_pickle: bool = False,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        if int(tiles) < 1:
            raise ConfigError(f"Expected argument `tiles` to be >= 1, but got {tiles}.")
        if scales is not None and (not len(scales) or min(int(s) for s in scales) < 32):
            raise ConfigError(
                f"Expected argument `scales` to list input sides >= 32, but got {list(scales)}."
            )
        net = create_backbone(
            name, 2, in_chans, pretrained, 0.0, allow_unsafe_pickle, checkpoint=checkpoint
        )
        net, self.dim = strip_head(net, name)
        self.net = net.eval().requires_grad_(False)
        self.scales = [int(s) for s in scales] if scales else None
        self.hflip, self.tiles = bool(hflip), int(tiles)
        self._settings = {
            "name": name,
            "in_chans": in_chans,
            "scales": self.scales,
            "hflip": self.hflip,
            "tiles": self.tiles,
        }
        self._key: str | None = None
        # loading other weights (a checkpoint) makes other features: the key follows them
        self.register_load_state_dict_post_hook(lambda module, keys: module._forget_key())

    def _forget_key(self) -> None:
        self._key = None

    @property
    def key(self) -> str:
        """The settings and a digest of the current weights (a changed weights file, package
        or a loaded checkpoint gives another key)."""
        if self._key is None:
            self._key = "backbone-" + _digest(
                {**self._settings, "weights": _weights_digest(self.net)}
            )
        return self._key

    def train(self, mode: bool = True) -> BackboneEmbedder:
        """Always in eval mode: batch statistics and dropout stay frozen."""
        super().train(False)
        return self

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        views = [x.flip(3)] if self.hflip else []
        return [x, *views]

    def _tiles(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.tiles == 1:
            return [x]
        b, c, h, w = x.shape  # (B, C, H, W)
        th, tw = h // self.tiles, w // self.tiles
        return [
            x[:, :, i * th : (i + 1) * th, j * tw : (j + 1) * tw]
            for i in range(self.tiles)
            for j in range(self.tiles)
        ]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, D)`` features averaged over tiles, scales and flips."""
        features = []
        for tile in self._tiles(x):
            for side in self.scales or [None]:
                view = (
                    tile
                    if side is None
                    else F.interpolate(
                        tile,
                        size=(side, side),
                        mode="bilinear",
                        align_corners=False,
                        antialias=True,
                    )
                )
                features += [self.net(v).flatten(1) for v in self._views(view)]
        return torch.stack(features).mean(dim=0)


def _weights_digest(net: nn.Module) -> str:
    """A digest of a network's weights (a sample of each tensor: cheap, and any other file of
    weights changes it)."""
    h = hashlib.sha1()
    for name, tensor in net.state_dict().items():
        flat = tensor.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 64)].float().numpy().tobytes())
    return h.hexdigest()[:16]


class TextureEmbedder(nn.Module):
    """Classical texture descriptors of each image: uniform local binary pattern histograms at
    several radii (Ojala et al. 2002) and grey-level co-occurrence statistics (Haralick et al.
    1973: contrast, dissimilarity, homogeneity, energy, correlation) at several distances,
    averaged over four angles; computed with scikit-image on the image's 8-bit grey levels.

    Args:
        mean: the normalisation mean of the inputs (to undo it).
        std: the normalisation standard deviation.
        radii: LBP radii in pixels (8 × radius neighbours each).
        distances: GLCM pixel distances.
        levels: grey levels of the GLCM (the image is quantised to them).
        tiles: compute on a ``tiles x tiles`` grid and average (as for the backbone embedder).
    """

    def __init__(
        self,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        radii: Sequence[int] = (1, 2, 3),
        distances: Sequence[int] = (1, 2, 4),
        levels: int = 32,
        tiles: int = 1,
    ) -> None:
        super().__init__()
        if not radii or min(radii) < 1 or not distances or min(distances) < 1:
            raise ConfigError(
                f"Expected `radii` and `distances` to list positive pixel counts, but got "
                f"{list(radii)} and {list(distances)}."
            )
        if not 2 <= int(levels) <= 256:
            raise ConfigError(f"Expected argument `levels` in [2, 256], but got {levels}.")
        self.mean, self.std = float(np.mean(mean)), float(np.mean(std))
        self.radii, self.distances = [int(r) for r in radii], [int(d) for d in distances]
        self.levels, self.tiles = int(levels), int(tiles)
        # LBP histograms (8r + 2 bins each), 5 GLCM statistics per distance, mean and std
        self.dim = sum(8 * r + 2 for r in self.radii) + 5 * len(self.distances) + 2
        self.key = "texture-" + _digest(
            {
                "radii": self.radii,
                "distances": self.distances,
                "levels": self.levels,
                "tiles": self.tiles,
                "mean": self.mean,
                "std": self.std,
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` normalised images → ``(B, D)`` texture features (float32)."""
        images = ((x[:, 0] * self.std + self.mean).clamp(0, 1) * 255).round().to(torch.uint8)
        rows = [self.describe(image.cpu().numpy()) for image in images]
        return torch.from_numpy(np.stack(rows)).to(x.device)

    def describe(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 → ``(D,)`` float32 features, averaged over the tile grid."""
        h, w = image.shape
        th, tw = h // self.tiles, w // self.tiles
        tiles = [
            image[i * th : (i + 1) * th, j * tw : (j + 1) * tw]
            for i in range(self.tiles)
            for j in range(self.tiles)
        ]
        return np.mean([self._describe(t) for t in tiles], axis=0).astype(np.float32)

    def _describe(self, image: np.ndarray) -> np.ndarray:
        from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

        parts = []
        for radius in self.radii:
            points = 8 * radius
            codes = local_binary_pattern(image, points, radius, method="uniform")
            hist, _ = np.histogram(codes, bins=points + 2, range=(0, points + 2))
            parts.append(hist / max(1, hist.sum()))
        quantised = (image.astype(np.int32) * self.levels // 256).astype(np.uint8)
        angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
        glcm = graycomatrix(
            quantised, self.distances, angles, levels=self.levels, symmetric=True, normed=True
        )
        for prop in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation"):
            values = np.nan_to_num(graycoprops(glcm, prop), nan=0.0)  # (distances, angles)
            parts.append(values.mean(axis=1))
        grey = image.astype(np.float64) / 255.0
        parts.append(np.array([grey.mean(), grey.std()]))
        return np.concatenate(parts)


class FeatureHead(nn.Module):
    """``embedder`` features, standardised, through a linear layer: ``(B, C, H, W)`` → logits
    ``(B, K)``. The standardisation and the layer are set by :meth:`set_head`.

    A model that appends further features to the image's (encoded covariates) or reads more
    outputs (a regression output after the ``K`` logits) widens the head with :meth:`resize`;
    :meth:`outputs` then takes the full ``(B, D + extra)`` features and gives every output,
    while :meth:`forward` (saliency, export) gives the ``K`` logits of the image with the extra
    features at 0 (an additive constant per output, which no image gradient sees).
    """

    def __init__(self, embedder: nn.Module, num_classes: int, dim: int | None = None) -> None:
        super().__init__()
        self.embedder = embedder
        self.num_classes = int(num_classes)
        self.image_dim = int(dim if dim is not None else embedder.dim)
        self.extra = 0
        self.resize(0, self.num_classes)

    def resize(self, extra: int, outputs: int) -> None:
        """``extra`` features after the image's and ``outputs`` outputs (``K`` logits first)."""
        dim = self.image_dim + int(extra)
        self.extra = int(extra)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        with warnings.catch_warnings():  # a head without inputs (no image, no covariates yet)
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.linear = nn.Linear(dim, int(outputs))
        self.linear.requires_grad_(False)

    @property
    def key(self) -> str:
        return str(self.embedder.key)

    def outputs(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D + extra)`` features → every output ``(B, K [+ 1])``."""
        return self.linear((features.float() - self.mean) / self.scale)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D + extra)`` features → ``(B, K)`` logits."""
        return self.outputs(features)[:, : self.num_classes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.embedder(x).float()
        if self.extra:
            features = torch.cat([features, features.new_zeros(len(features), self.extra)], 1)
        return self.head(features)

    def set_head(
        self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray
    ) -> None:
        """Set the standardisation ``(D,)`` and the layer ``(O, D)``, ``(O,)`` (a fitted
        logistic regression's coefficients, and a ridge regression's in a last row)."""
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean))
            self.scale.copy_(torch.as_tensor(scale))
            self.linear.weight.copy_(torch.as_tensor(coef))
            self.linear.bias.copy_(torch.as_tensor(intercept))


class NoImageEmbedder(nn.Module):
    """No image features at all (``D = 0``): the covariates-only baseline (``model=covariates``)
    is a fitted head on the covariates alone, through the same run contract as the image models.
    """

    dim = 0
    key = "no-image"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, 0)``."""
        return x.new_zeros(len(x), 0)


def covariates_net(num_classes: int) -> FeatureHead:
    """The covariates-only baseline's network: no image features; the model appends the
    encoded covariates (``model=covariates``)."""
    return FeatureHead(NoImageEmbedder(), num_classes)


def probe_net(
    name: str,
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool | str = False,
    scales: Sequence[int] | None = None,
    hflip: bool = False,
    tiles: int = 1,
    allow_unsafe_pickle: bool = False,
    checkpoint: str | None = None,
) -> FeatureHead:
    """The linear probe's network: a frozen backbone's features (:class:`BackboneEmbedder`) and
    a linear head (``model=linear_probe``; the backbone from ``model/backbone``)."""
    embedder = BackboneEmbedder(
        name, in_chans, pretrained, scales, hflip, tiles, allow_unsafe_pickle, checkpoint
    )
    return FeatureHead(embedder, num_classes)


def texture_net(
    num_classes: int,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    radii: Sequence[int] = (1, 2, 3),
    distances: Sequence[int] = (1, 2, 4),
    levels: int = 32,
    tiles: int = 1,
) -> FeatureHead:
    """The texture baseline's network: :class:`TextureEmbedder` features and a linear head
    (``model=texture``)."""
    return FeatureHead(TextureEmbedder(mean, std, radii, distances, levels, tiles), num_classes)
