"""Writing a trained model as ONNX or TorchScript, and proving the file gives its answers.

The exported graph is the network with its output head, :class:`ProbabilityHead`: softmax
probabilities (a classifier's test-time flips averaged in, as ``predict_proba`` does; a
segmenter's main output per pixel), with a dynamic batch dimension. The metadata of
:func:`osteolightning.models.portable.export_metadata` goes into the file (ONNX
``metadata_props``; TorchScript ``_extra_files``).

ONNX uses PyTorch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``,
which needs ``onnxscript``): on torch 2.14 it exports every backbone of
``osteolightning/conf/model/backbone`` and every segmentation network, while the TorchScript-based
one is deprecated and fails on AlexNet's adaptive pooling at small inputs. TorchScript uses
``torch.jit.trace``.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.portable import (
    EXTRA_FILE,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    load_portable,
)
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: image dims flipped by each test-time augmentation (as ``KneeClassifier``'s ``TTA_FLIPS``)
FLIPS = {"hflip": (3,), "vflip": (2,)}
#: the packages each format's exporter needs, and what to install
EXPORTER_PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": ()}
FORMATS = tuple(EXPORTER_PACKAGES)


class ProbabilityHead(nn.Module):
    """``(B, C, S, S)`` images → probabilities: ``(B, K)`` (classification, mean over the
    original and each flipped view) or ``(B, K, S, S)`` (segmentation, main output)."""

    def __init__(self, net: nn.Module, task: str, tta: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        self.net, self.task = net, task
        self.flips = [FLIPS[t] for t in tta]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, list | tuple) else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self._logits(x).softmax(dim=1)
        if self.task == "segmentation" or not self.flips:
            return probs
        views = [probs] + [self._logits(x.flip(dims)).softmax(dim=1) for dims in self.flips]
        return torch.stack(views).mean(dim=0)


def probability_head(model: Any) -> ProbabilityHead:
    """The exportable head of a trained LightningModule, in eval mode.

    Raises:
        ConfigError: a segmenter with sliding-window inference (tiles and their Gaussian
            weights are not part of the network; export a model with ``model.inference=resize``),
            or a classifier with a regression head or covariates (the export holds the image
            network's class probabilities only).
    """
    spec = getattr(model, "spec", None)
    covariates = model.hparams.get("covariates") or []
    if (spec is not None and spec.enabled) or covariates:
        raise ConfigError(
            "The checkpoint has a regression head (model.t_score_weight > 0) or fuses "
            f"covariates {list(covariates)}; an export holds the image network's class "
            "probabilities only and would silently drop them. Use the checkpoint itself "
            "(osteo-predict CKPT ...), or export a model without them."
        )
    if hasattr(model, "predict_masks"):
        if model.hparams.inference != "resize":
            raise ConfigError(
                f"The checkpoint infers with model.inference={model.hparams.inference!r}; an "
                "export holds the network only, which osteo-predict runs on the whole "
                "letterboxed image (inference=resize). Export a model trained with "
                "model.inference=resize."
            )
        return ProbabilityHead(model.net, "segmentation").eval()
    return ProbabilityHead(model.net, "classification", model.hparams.get("tta", [])).eval()


def check_exporter(fmt: str) -> None:
    """Raise a ConfigError naming the packages to install when ``fmt``'s exporter is missing."""
    if fmt not in EXPORTER_PACKAGES:
        raise ConfigError(f"Expected argument `format` to be one of {list(FORMATS)}, got {fmt!r}.")
    import importlib.util

    missing = [p for p in EXPORTER_PACKAGES[fmt] if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(
            f"format={fmt} needs the package(s) {missing} (PyTorch's ONNX exporter and the "
            f"runtime of the parity check); install them: pip install {' '.join(missing)}"
        )


def write_onnx(head: ProbabilityHead, example: torch.Tensor, path: Path, meta: dict, opset: int):
    """Export ``head`` to ONNX with a dynamic batch dimension and the metadata."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    for name in ("onnx_ir", "onnxscript"):  # their graph passes log every step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        torch.onnx.export(
            head,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    onnx.save(proto, str(path))


def write_torchscript(head: ProbabilityHead, example: torch.Tensor, path: Path, meta: dict):
    """Trace ``head`` to TorchScript with the metadata as an extra file.

    ``torch.jit`` is deprecated from PyTorch 2.14 on (it still works; ONNX is the format to
    prefer): its FutureWarnings are collected into one log line.
    """
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", FutureWarning)
        traced = torch.jit.trace(head, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})
    if any(issubclass(w.category, FutureWarning) for w in caught):
        log.info("torch.jit is deprecated in this PyTorch; format=onnx is the one to prefer.")


def export_model(
    model: Any, fmt: str, path: str | Path, meta: dict[str, Any], example: torch.Tensor, opset=18
) -> Path:
    """Write ``model`` as ``fmt`` to ``path`` (parent folders created).

    Args:
        model: a ``KneeClassifier`` or ``KneeSegmenter`` with its trained weights.
        fmt: ``onnx`` or ``torchscript``.
        path: the file to write.
        meta: the metadata (:func:`~osteolightning.models.portable.export_metadata`).
        example: ``(B, C, S, S)`` real input to trace with.
        opset: the ONNX opset.

    Raises:
        ConfigError: an unknown format, a missing exporter package, or an export that fails.
    """
    check_exporter(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = probability_head(model).cpu()
    try:
        if fmt == "onnx":
            write_onnx(head, example.cpu(), path, meta, opset)
        else:
            write_torchscript(head, example.cpu(), path, meta)
    except Exception as err:  # the exporters raise many types; name the model and the cause
        raise ConfigError(
            f"Exporting the {meta.get('network')} model to {fmt} failed: "
            f"{type(err).__name__}: {str(err)[:600]}"
        ) from err
    return path


def parity(model: Any, path: str | Path, images: torch.Tensor) -> dict[str, Any]:
    """The largest absolute difference between the PyTorch model's probabilities and the
    exported file's, over ``images`` fed in batches of 1 and of 3 (and all at once).

    Args:
        model: the LightningModule the file was exported from.
        path: the exported file (read back as ``osteo-predict`` reads it).
        images: ``(N, C, S, S)`` prepared real images.

    Returns:
        ``{"max_abs_diff", "n_images", "batch_sizes", "argmax_agreement"}``.
    """
    exported = load_portable(path)
    head = probability_head(model).cpu()
    with torch.no_grad():
        reference = head(images.cpu()).numpy()
    worst, sizes = 0.0, sorted({1, min(3, len(images)), len(images)})
    for size in sizes:
        got = np.concatenate(
            [exported.probabilities(images[i : i + size]) for i in range(0, len(images), size)]
        )
        worst = max(worst, float(np.abs(got - reference).max()))
    agree = float((got.argmax(axis=1) == reference.argmax(axis=1)).mean())
    return {
        "max_abs_diff": worst,
        "n_images": len(images),
        "batch_sizes": sizes,
        "argmax_agreement": agree,
    }
