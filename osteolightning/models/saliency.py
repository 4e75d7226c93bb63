"""Class-activation maps of a classifier: where in the image the network found its answer.

The maps come from MONAI's ``monai.visualize``: Grad-CAM (Selvaraju et al. 2017) weights the
target layer's activations by the spatial mean of their gradients; Grad-CAM++ (Chattopadhay et
al. 2018) by a weighted sum of the positive gradients, which separates several instances of a
class better. The target layer is a fact of each backbone in the backbone registry
(:mod:`osteolightning.backbones`); a run config may override it (``backbone.cam_layer``), and
every checkpoint's run config carries the one it used.

Two details MONAI leaves to the caller are handled here:

* MONAI's score for a batch indexes the logits with the whole vector of predicted classes
  (``logits[:, class_idx]``), which mixes the classes of different images; the hooks used here
  take each image's own class (``logits.gather``).
* A vision transformer's blocks output tokens ``(B, N, C)``, not a map: the target layer's
  output is routed through a reshape (prefix tokens dropped, the rest laid on their square grid)
  so the same Grad-CAM applies, as ``pytorch-grad-cam``'s ViT recipe does.

The network is copied once (hooks are registered on the copy), so the trained model is left as
it was. Maps are the raw, non-negative CAM upsampled (bilinear) to the input size; they are not
min-max rescaled, so shares of saliency in a region are meaningful.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from osteolightning.backbones import facts_of
from osteolightning.errors import ConfigError

#: saliency methods: config name → MONAI class name in ``monai.visualize``.
METHODS: dict[str, str] = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp"}
#: the config key that names a backbone's target layer.
CAM_LAYER_KEY = "backbone.cam_layer"


def cam_layer_of(run_config: Mapping[str, Any] | None) -> str | None:
    """The target layer of the backbone a run config names: the registry's
    (:func:`~osteolightning.backbones.facts_of`), or the config's ``backbone.cam_layer`` where
    it sets one (it wins; for a network the registry does not know, it is all there is);
    ``None`` when neither names one."""
    facts = facts_of(run_config)
    backbone = (run_config or {}).get("backbone") or {}
    given = backbone.get("cam_layer") if isinstance(backbone, Mapping) else None
    layer = facts.cam_layer if facts is not None else given
    return str(layer) if layer else None


def check_method(method: str) -> str:
    """Raise a ConfigError for an unknown saliency method (with the closest name)."""
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Expected argument `saliency.method` to be one of {list(METHODS)}, but got "
            f"{method!r}.{hint}"
        )
    return method


class _TokenGrid(nn.Module):
    """Identity on ``(B, C, h, w)`` maps; tokens ``(B, N, C)`` are laid on their square grid
    (the ``N - g²`` leading prefix tokens, e.g. ViT's class token, set aside) so that ``site``
    sees a map, then put back. ``site`` is where the CAM hooks sit."""

    def __init__(self) -> None:
        super().__init__()
        self.site = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            return self.site(x)
        b, n, c = x.shape
        g = math.isqrt(n)
        prefix, tokens = x[:, : n - g * g], x[:, n - g * g :]
        grid = self.site(tokens.transpose(1, 2).reshape(b, c, g, g))  # (B, C, g, g)
        return torch.cat([prefix, grid.reshape(b, c, g * g).transpose(1, 2)], dim=1)


class _CamNet(nn.Module):
    """A copy of ``net`` whose ``layer`` output passes through a :class:`_TokenGrid`."""

    def __init__(self, net: nn.Module, layer: str) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval()
        self.grid = _TokenGrid()
        target = self.net.get_submodule(layer)
        if getattr(target, "inplace", False):
            target.inplace = False  # a full backward hook cannot follow an in-place op
        target.register_forward_hook(lambda _m, _i, out: self.grid(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _hooked(net: nn.Module) -> Any:
    """MONAI's ``ModelWithHooks`` on the grid site, scoring each image's own class."""
    from monai.visualize.class_activation_maps import ModelWithHooks

    class _OwnClassHooks(ModelWithHooks):
        # (B, 1, 1, 1): Grad-CAM++ multiplies the score's exp with the (B, C, h, w) gradients
        def class_score(self, logits: torch.Tensor, class_idx: Any) -> torch.Tensor:
            if not isinstance(class_idx, torch.Tensor):
                class_idx = torch.full((len(logits),), int(class_idx))
            return logits.gather(1, class_idx.view(-1, 1).to(logits.device)).view(-1, 1, 1, 1)

    return _OwnClassHooks(net, "grid.site", register_forward=True, register_backward=True)


class SaliencyExplainer:
    """Grad-CAM / Grad-CAM++ maps of a classification network.

    Args:
        net: the backbone, ``(B, C, H, W)`` → logits ``(B, K)`` (e.g. ``KneeClassifier.net``);
            it is copied, not changed.
        layer: the target layer's name in ``net.named_modules()`` (``backbone.cam_layer``).
        method: ``"gradcam"`` or ``"gradcampp"``.

    Raises:
        ConfigError: no layer configured, a layer the network does not have (with the closest
            names), or an unknown method.

    Example:
        >>> from osteolightning.models.components.backbone import create_backbone
        >>> explainer = SaliencyExplainer(create_backbone("resnet10t", 3), "layer4")
        >>> maps, classes = explainer(torch.rand(2, 1, 64, 64))
        >>> maps.shape, classes.shape
        (torch.Size([2, 64, 64]), torch.Size([2]))
    """

    def __init__(self, net: nn.Module, layer: str | None, method: str = "gradcam") -> None:
        import monai.visualize

        check_method(method)
        self.check_layer(net, layer)
        self.layer, self.method = layer, method
        with torch.inference_mode(False):  # a normal copy, also when built in a test loop
            self._net = _CamNet(net, layer)
        self._cam = getattr(monai.visualize, METHODS[method])(
            nn_module=_hooked(self._net), target_layers="grid.site", postprocessing=lambda x: x
        )

    @staticmethod
    def check_layer(net: nn.Module, layer: str | None) -> str:
        """Raise a ConfigError naming ``backbone.cam_layer`` unless ``layer`` is set and is a
        layer of ``net`` (with the closest names)."""
        if not layer:
            raise ConfigError(
                f"Saliency maps need the backbone's target layer, but `{CAM_LAYER_KEY}` is not "
                "set. Set it in osteolightning/conf/model/backbone/<name>.yaml (a name from "
                "net.named_modules(), e.g. layer4 for a ResNet), or pass it: "
                f"{CAM_LAYER_KEY}=<layer> (osteo-train), --cam-layer <layer> (osteo-predict)."
            )
        names = [n for n, _ in net.named_modules() if n]
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f" Did you mean {close}?" if close else f" Its last layers: {names[-5:]}."
            raise ConfigError(
                f"Expected `{CAM_LAYER_KEY}` to name a layer of the network, but got {layer!r}."
                f"{hint}"
            )
        return layer

    def to(self, device: torch.device | str) -> SaliencyExplainer:
        """Move the copied network to ``device``."""
        self._net.to(device)
        return self

    def __call__(
        self, images: torch.Tensor, class_idx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps of ``images`` for ``class_idx`` (default: each image's predicted class).

        Args:
            images: ``(B, C, H, W)`` normalised network input.
            class_idx: ``(B,)`` class per image, or ``None`` for the argmax of the logits.

        Returns:
            ``(maps (B, H, W) float32 >= 0 on the CPU, classes (B,) int64)``: the explained
            class of each image.
        """
        device = next(self._net.parameters()).device
        with torch.inference_mode(False), torch.enable_grad():
            # a fresh tensor: the caller may be inside inference mode (a test loop)
            x = images.detach().to(device).float().clone().requires_grad_(True)
            if class_idx is not None:
                class_idx = torch.as_tensor(class_idx).detach().to(device).long().clone()
            maps = self._cam(x, class_idx=class_idx)  # (B, 1, H, W)
        classes = self._cam.nn_module.class_idx
        if not isinstance(classes, torch.Tensor):
            classes = torch.full((len(images),), int(classes))
        maps = torch.nan_to_num(maps.detach().float()[:, 0], nan=0.0, posinf=0.0).clamp(min=0)
        return maps.cpu(), classes.detach().cpu().long()
