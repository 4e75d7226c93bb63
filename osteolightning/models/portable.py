"""Exported models (``osteo-export``): the metadata they carry, and running them without Lightning.

An exported file holds the network with its output head (softmax probabilities; a classifier's
test-time augmentation included) and, in its metadata, everything needed to prepare an image
for it, so it can be used outside this Python environment:

* ONNX (``.onnx``): the model's ``metadata_props`` key :data:`METADATA_KEY`, read here with
  ``onnxruntime`` alone (no ``onnx`` package, no Lightning, no Hydra);
* TorchScript (``.pt``): the extra file :data:`EXTRA_FILE` (``torch.jit.load(...,
  _extra_files=...)``).

The metadata is one JSON object (:func:`export_metadata`): ``format_version``, ``task``
(``classification`` | ``segmentation``), the :class:`Preprocessing` facts (``class_names``,
``image_size``, ``in_chans``, ``mean``, ``std``), ``letterbox`` (how the square input is made),
``input`` / ``output`` (names, shapes, what the values are), ``tta``, ``inference``, the
network and, for a registered backbone, its registry facts (``backbone``: name, paper, native
input size, saliency layer; :mod:`osteolightning.backbones`), and where the model came from. A file without it, or with a ``format_version`` this version does not
know, is refused (:func:`read_metadata`).

:func:`load_portable` runs such a file with the interface ``osteo-predict`` uses for a
checkpoint (``preprocessing``, ``predict_proba`` / ``predict_masks``), so the same images give
the same answers (within the export's parity tolerance).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from osteolightning.backbones import facts_of
from osteolightning.errors import ConfigError
from osteolightning.models.checkpointing import Preprocessing, load_model

#: the metadata key (ONNX ``metadata_props``) and the TorchScript extra file holding it
METADATA_KEY = "osteolightning"
EXTRA_FILE = "osteolightning.json"
#: the metadata format this version writes, and the ones it reads
FORMAT_VERSION = 1
KNOWN_VERSIONS = (1,)
#: file suffixes of exported models, by format
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript")}
#: the input and output names in an exported graph
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
#: how every osteolightning input is prepared (``osteolightning.data.cache.letterbox_resize``
#: and ``osteolightning.data.transforms.ToNormalizedTensor``), for users of the file elsewhere
LETTERBOX = {
    "pad": "centred to a square of side max(H, W), filled with 0 (black)",
    "resize": "to image_size x image_size; cv2 INTER_AREA when shrinking, INTER_LINEAR else",
    "intensity": "grayscale in [0, 1] (16-bit and DICOM rescaled; MONOCHROME1 inverted), "
    "rounded to uint8 after resizing",
    "normalise": "x = (uint8 / 255 - mean) / std, the gray channel repeated to in_chans",
}


def format_of(path: str | Path) -> str | None:
    """``"onnx"`` or ``"torchscript"`` by the file's suffix, else ``None`` (a checkpoint)."""
    suffix = Path(path).suffix.lower()
    return next((fmt for fmt, ends in SUFFIXES.items() if suffix in ends), None)


def _backbone(run_config: dict[str, Any]) -> dict[str, Any] | None:
    """The backbone registry's facts of the run's network (with the run's overrides)."""
    facts = facts_of(run_config)
    if facts is None:
        return None
    keys = ("name", "library_name", "paper", "input_size", "cam_layer")
    return {k: getattr(facts, k) for k in keys}


def export_metadata(
    model: Any, run_config: dict[str, Any], source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The metadata of an exported model.

    Args:
        model: the LightningModule (``KneeClassifier`` or ``KneeSegmenter``).
        run_config: the checkpoint's run config (its backbone / network name).
        source: where it came from (checkpoint path and SHA-256, package version, time).

    Returns:
        A JSON-ready dict (see the module docstring).
    """
    pre = model.preprocessing
    task = "segmentation" if hasattr(model, "predict_masks") else "classification"
    k, s = len(pre.class_names), pre.image_size
    out_shape = ["batch", k, s, s] if task == "segmentation" else ["batch", k]
    net = (run_config.get("model") or {}).get("net") or {}
    return {
        "format_version": FORMAT_VERSION,
        "task": task,
        **pre.hparams(),
        "letterbox": LETTERBOX,
        "input": {"name": INPUT_NAME, "shape": ["batch", pre.in_chans, s, s], "dtype": "float32"},
        "output": {
            "name": OUTPUT_NAME,
            "shape": out_shape,
            "values": "softmax probabilities over class_names"
            + (" per pixel (argmax: the label map)" if task == "segmentation" else ""),
        },
        "tta": [str(t) for t in model.hparams.get("tta", [])],
        "inference": str(model.hparams.get("inference", "resize")),
        "network": str(net.get("name") or net.get("_target_", "")),
        "backbone": _backbone(run_config),
        "source": source or {},
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The osteolightning metadata of an exported ``.onnx`` / ``.pt`` file.

    Raises:
        ConfigError: the file is missing or unreadable, carries no osteolightning metadata, or
            metadata of an unknown ``format_version``.
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise ConfigError(f"Exported model '{path}' does not exist.")
    try:
        if fmt == "onnx":
            session = _onnx_session(path)
            raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        else:
            extra = {EXTRA_FILE: ""}
            _jit_load(path, extra)
            raw = extra[EXTRA_FILE] or None
    except ConfigError:
        raise
    except Exception as err:  # onnxruntime and torch.jit raise many unrelated types
        raise ConfigError(
            f"Cannot read '{path}' as an exported {fmt} model ({type(err).__name__}: {err}). "
            "Pass a file written by osteo-export, or a checkpoint (.ckpt)."
        ) from err
    return _parse_metadata(path, raw)


def _parse_metadata(path: Path, raw: str | bytes | None) -> dict[str, Any]:
    if not raw:
        raise ConfigError(
            f"'{path}' carries no osteolightning metadata (`{METADATA_KEY}`): its input size, "
            "normalisation and class names are unknown, so osteo-predict refuses it. Export "
            "the checkpoint with `osteo-export ckpt_path=CKPT format=onnx|torchscript`."
        )
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise ConfigError(f"'{path}': its osteolightning metadata is not JSON ({err}).") from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version not in KNOWN_VERSIONS:
        raise ConfigError(
            f"'{path}' carries osteolightning metadata of format_version {version!r}; this "
            f"version of osteolightning reads {list(KNOWN_VERSIONS)}. Export the checkpoint "
            "again with this version, or use the osteolightning version that wrote it."
        )
    missing = [k for k in ("task", *Preprocessing.fields()) if k not in meta]
    if missing:
        raise ConfigError(f"'{path}': its osteolightning metadata lacks {missing}.")
    return meta


def _jit_load(path: Path, extra: dict[str, Any] | None = None) -> Any:
    """``torch.jit.load`` without its deprecation warning (PyTorch 2.14; it still works)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra or {})


def _onnx_session(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError(
            "Running an .onnx model needs the package `onnxruntime`: pip install onnxruntime"
        ) from err
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class PortableModel:
    """An exported model with the interface ``osteo-predict`` uses for a checkpoint
    (:class:`PortableClassifier` or :class:`PortableSegmenter`; :func:`load_portable` picks).

    ONNX files run on onnxruntime (CPU), TorchScript files on ``torch.jit``; neither needs
    Lightning. Inputs are torch tensors ``(B, C, S, S)`` prepared as the metadata says.

    Args:
        path: an ``.onnx`` or ``.pt`` file written by ``osteo-export``.
        metadata: its metadata (:func:`read_metadata`), when already read.

    Raises:
        ConfigError: see :func:`read_metadata`.
    """

    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.metadata = metadata or read_metadata(self.path)
        self.format = format_of(self.path)
        self.preprocessing = Preprocessing.from_hparams(self.metadata)
        self.hparams = SimpleNamespace(inference=self.metadata.get("inference", "resize"))
        if self.format == "onnx":
            self._session = _onnx_session(self.path)
        else:
            self._module = _jit_load(self.path).eval()

    def eval(self) -> PortableModel:
        """The model is always in inference mode (for the checkpoint's interface)."""
        return self

    def probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(B, C, S, S)`` → the exported output: ``(B, K)`` (or ``(B, K, S, S)``) float32."""
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.format == "onnx":
            return self._session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            return self._module(torch.from_numpy(x)).numpy()


class PortableClassifier(PortableModel):
    """An exported classifier."""

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` → ``(B, K)`` class probabilities (test-time augmentation included)."""
        return torch.from_numpy(self.probabilities(images))


class PortableSegmenter(PortableModel):
    """An exported segmenter."""

    def predict_masks(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, S, S)`` → ``(label maps (B, S, S) uint8, probabilities (B, K, S, S))``."""
        probs = torch.from_numpy(self.probabilities(images))
        return probs.argmax(dim=1).to(torch.uint8), probs


def load_portable(path: str | Path) -> PortableModel:
    """An exported model, as a :class:`PortableClassifier` or :class:`PortableSegmenter`.

    Raises:
        ConfigError: see :func:`read_metadata`.
    """
    metadata = read_metadata(path)
    if metadata["task"] == "segmentation":
        return PortableSegmenter(path, metadata)
    if metadata["task"] == "classification":
        return PortableClassifier(path, metadata)
    raise ConfigError(
        f"'{path}': expected the metadata's task to be classification or segmentation, but got "
        f"{metadata['task']!r}."
    )


def load_predictor(path: str | Path, allow_unsafe_pickle: bool = False) -> Any:
    """A checkpoint's model, or an exported model (``.onnx`` / ``.pt``) as a
    :class:`PortableModel`, by the file's suffix."""
    if format_of(path) is not None:
        return load_portable(path)
    return load_model(path, allow_unsafe_pickle)
