"""Checkpoints: what they carry besides the weights, and how they are loaded safely.

Every checkpoint an osteolightning module writes holds the fully resolved run config
(:data:`RUN_CONFIG_KEY`) and, in its hyper-parameters, the :class:`Preprocessing` facts the
network was trained with. From those alone :func:`load_checkpoint` rebuilds the model, and
``osteo-eval``, ``osteo-predict`` and the ensembles prepare new images the same way.

Checkpoints and weight files load with ``torch.load(weights_only=True)``; a file that needs
arbitrary unpickling is refused unless an explicit ``allow_unsafe_pickle`` flag is set, since
unpickling runs code stored in the file.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import tarfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch

from osteolightning.errors import ConfigError
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: the checkpoint key holding the fully resolved run config (read by ``osteo-eval``,
#: ``osteo-predict`` and the ensembles to rebuild the network and its preprocessing).
RUN_CONFIG_KEY = "osteo_config"
#: the checkpoint key holding the process's random states (Python, NumPy, torch, CUDA)
RNG_KEY = "osteo_rng"


def rng_states() -> dict[str, Any]:
    """The global random states, as tensors and plain types (``weights_only``-loadable)."""
    numpy_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` saved (the parts present)."""
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state(
            {
                "bit_generator": n["bit_generator"],
                "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                "has_gauss": n["has_gauss"],
                "gauss": n["gauss"],
            }
        )
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a network: fixed by the checkpoint, followed by every
    command that feeds it new images.

    Attributes:
        class_names: the ``K`` output classes in label-index order (mask classes for a
            segmenter, background first).
        image_size: side of the square, letterboxed network input.
        in_chans: input channels (a grayscale image is repeated to fill them).
        mean: normalisation mean per channel (length 1 or ``in_chans``).
        std: normalisation standard deviation per channel.
    """

    class_names: tuple[str, ...]
    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(
        cls,
        class_names: Sequence[str],
        image_size: int,
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> Preprocessing:
        """The facts with plain Python types (so checkpoints load with ``weights_only``)."""
        return cls(
            tuple(str(c) for c in class_names),
            int(image_size),
            int(in_chans),
            tuple(float(m) for m in mean),
            tuple(float(s) for s in std),
        )

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> Preprocessing:
        """The facts a module saved in its hyper-parameters (see :meth:`hparams`)."""
        return cls.of(*(hparams[key] for key in cls.fields()))

    @staticmethod
    def fields() -> tuple[str, ...]:
        """The field names, which are also the data config's keys for them."""
        return ("class_names", "image_size", "in_chans", "mean", "std")

    def hparams(self) -> dict[str, Any]:
        """As plain lists and numbers, for ``save_hyperparameters`` and a data config."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class StoresRunConfig:
    """LightningModule mixin: the resolved run config goes into every checkpoint the module
    writes, weights-only ones included (Lightning calls no callback hook for those, so the
    config cannot come from a callback). :class:`~osteolightning.callbacks.RunArtifacts` sets
    ``run_config`` when a run starts. ``preprocessing`` reads the facts back.

    The process's random states go in too and are restored when training continues from the
    checkpoint (``resume``, ``ckpt_path``), so dropout and mixup draw what an uninterrupted
    run would have drawn (the data order and augmentation depend on the seed and epoch only;
    see :mod:`osteolightning.data.sampling`).
    """

    run_config: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config:
            checkpoint[RUN_CONFIG_KEY] = self.run_config
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = getattr(self, "_trainer", None)
        if RNG_KEY in checkpoint and trainer is not None and trainer.training:
            set_rng_states(checkpoint[RNG_KEY])

    @property
    def preprocessing(self) -> Preprocessing:
        """How the network's inputs are prepared (:class:`Preprocessing`)."""
        return Preprocessing.from_hparams(self.hparams)


#: What a file given as a checkpoint or weights file must be (the end of a damaged file's error).
ACCEPTED_FILES = (
    "Expected a complete checkpoint written by osteo-train or osteo-segment "
    "(<run>/checkpoints/<name>.ckpt) or a PyTorch file of tensors (torch.save); a file cut "
    "short (an interrupted copy or download, a full disk) must be copied again."
)
#: torch.load's failures on a file that is damaged or not a PyTorch file at all
_DAMAGED = (RuntimeError, EOFError, KeyError, ValueError, OSError, pickle.UnpicklingError)


def _weights_only_refusal(err: BaseException, path: str | Path) -> bool:
    """Whether ``err`` is torch's refusal to load the file under ``weights_only=True`` (pickled
    objects, or torch's legacy ``.tar`` format), not a damaged file."""
    text = str(err).lower()
    if isinstance(err, pickle.UnpicklingError):  # an unknown opcode: bytes that are no pickle
        return "weights only" in text and "unsupported operand" not in text
    if isinstance(err, RuntimeError) and "weights_only" in text and "legacy" in text:
        try:  # torch takes any file of zero blocks for a tar; a real one holds its pickle
            with tarfile.open(path) as archive:
                return "pickle" in archive.getnames()
        except (OSError, tarfile.TarError):
            return False
    return False


def damaged_file_error(path: str | Path, err: BaseException) -> ConfigError:
    """The error for a file torch cannot read: it names the file, its size and what is wrong."""
    path = Path(path)
    try:
        size = f"{path.stat().st_size} bytes"
    except OSError as stat_err:
        size = stat_err.strerror or "unreadable"
    text = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    if isinstance(err, EOFError) or "central directory" in text:
        reason = "it ends before its data: the file is cut short, or it is not a PyTorch file"
    elif isinstance(err, OSError) and not isinstance(err, EOFError):
        reason = f"it cannot be opened ({err.strerror or text})"
    else:
        reason = f"it is damaged or not a PyTorch file ({type(err).__name__}: {text})"
    return ConfigError(f"Cannot read '{path}' ({size}): {reason}. {ACCEPTED_FILES}")


def torch_load(
    path: str | Path, allow_unsafe_pickle: bool = False, flag: str = "allow_unsafe_pickle"
) -> Any:
    """``torch.load(path, weights_only=True)``; a file that needs arbitrary unpickling is
    refused with a ConfigError naming ``flag``, or (with the flag) loaded with a warning.

    Raises:
        ConfigError: the file holds pickled Python objects and ``allow_unsafe_pickle`` is false,
            or it is damaged (truncated, not a PyTorch file): named, with what is accepted.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _DAMAGED as err:
        if not _weights_only_refusal(err, path):
            raise damaged_file_error(path, err) from err
        if not allow_unsafe_pickle:
            reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else ""
            raise ConfigError(
                f"'{path}' holds pickled Python objects beyond tensors and plain types, so it "
                f"cannot be loaded with weights_only=True ({reason}). Unpickling runs arbitrary "
                "code stored in the file: only for a file you trust, pass "
                f"{flag}=true to load it anyway."
            ) from err
    log.warning(f"Loading '{path}' with weights_only=False ({flag}=true): it may run code.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except _DAMAGED as err:
        raise damaged_file_error(path, err) from err


def check_checkpoint_file(path: str | Path, allow_unsafe_pickle: bool = False) -> None:
    """Raise before a trainer loads ``path`` (``ckpt_path=``) when it is missing or damaged.

    A checkpoint is a zip archive; a complete one is recognised from its end alone (no load).
    Any other file is loaded once with :func:`torch_load`, which names what is wrong with it.

    Raises:
        ConfigError: the file is missing, cut short or not a PyTorch file (or, see
            :func:`torch_load`, needs arbitrary unpickling).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Checkpoint '{path}' does not exist. Pass ckpt_path=<run>/checkpoints/<name>.ckpt."
        )
    if not zipfile.is_zipfile(path):
        torch_load(path, allow_unsafe_pickle)


@contextlib.contextmanager
def explain_unpickling(flag: str = "allow_unsafe_pickle") -> Iterator[None]:
    """Turn Lightning's weights_only failure on ``ckpt_path`` into a ConfigError naming ``flag``."""
    try:
        yield
    except pickle.UnpicklingError as err:
        raise ConfigError(
            "The checkpoint holds pickled Python objects beyond tensors and plain types and "
            "cannot be loaded with weights_only=True. Unpickling runs arbitrary code: only for "
            f"a checkpoint you trust, pass {flag}=true."
        ) from err


#: model arguments the data resolves at training time, restored from a checkpoint's hparams
DATA_RESOLVED = ("covariates", "covariate_coding")


def load_checkpoint(ckpt_path: str | Path, allow_unsafe_pickle: bool = False) -> tuple[Any, dict]:
    """Rebuild a trained model (classifier or segmenter) from its checkpoint alone
    (``weights_only`` loading): the run config stored in the checkpoint names the module.

    Returns:
        ``(model, run_config)``: the LightningModule with its trained weights, and the resolved
        config of the run that wrote the checkpoint (its ``evaluation`` names the report
        writer).

    Raises:
        ConfigError: a missing file, a checkpoint not written by ``osteo-train`` /
            ``osteo-segment``, or one that needs arbitrary unpickling while
            ``allow_unsafe_pickle`` is false.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"Checkpoint '{path}' does not exist. Pass ckpt_path=<run>/checkpoints/<name>.ckpt."
        )
    checkpoint = torch_load(path, allow_unsafe_pickle)
    run_cfg = checkpoint.get(RUN_CONFIG_KEY) if isinstance(checkpoint, dict) else None
    if not run_cfg or "model" not in run_cfg:
        raise ConfigError(
            f"'{path}' holds no osteolightning run config; was it written by osteo-train?"
        )
    net_cfg = dict(run_cfg["model"]["net"])
    if "pretrained" in net_cfg:
        net_cfg["pretrained"] = False  # the checkpoint's weights replace any initialisation
    model_cfg = {
        k: v for k, v in run_cfg["model"].items() if k not in ("net", "optimizer", "scheduler")
    }
    # what the data resolved at training (covariates=all spelled out, their coding): the
    # checkpoint's hyperparameters, so the rebuilt model has the trained one's shapes
    hparams = checkpoint.get("hyper_parameters") or {}
    model_cfg.update({k: hparams[k] for k in DATA_RESOLVED if k in hparams})
    model = hydra.utils.instantiate(model_cfg, net=hydra.utils.instantiate(net_cfg))
    model.load_state_dict(checkpoint["state_dict"])
    model.run_config = run_cfg  # e.g. the saliency target layer (backbone.cam_layer)
    return model, run_cfg


def load_model(ckpt_path: str | Path, allow_unsafe_pickle: bool = False) -> Any:
    """The trained model of a checkpoint (see :func:`load_checkpoint`)."""
    return load_checkpoint(ckpt_path, allow_unsafe_pickle)[0]
