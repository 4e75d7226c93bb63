"""``osteo-export``: a checkpoint as a portable ONNX or TorchScript model.

The file holds the network with its softmax head (and the classifier's test-time flips), a
dynamic batch dimension, and in its metadata the preprocessing facts (input size, channels,
normalisation, class names, letterboxing, the task). Before the file is kept, the checkpoint
and the file predict the same real images in batches of 1 and 3; the largest difference of
the probabilities is printed, and above ``parity.atol`` the export stops. Beside the file:
``export.json`` (the metadata and the parity check) and the checkpoint run's ``MODEL_CARD.md``
with an export section.

Example:
    osteo-export ckpt_path=logs/train/runs/<run>/checkpoints/epoch_007.ckpt format=onnx
    osteo-predict logs/export/runs/<stamp>/model.onnx knees/      # same answers, onnxruntime
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from osteolightning import __version__
from osteolightning.data.cache import letterbox_resize
from osteolightning.data.inputs import find_inputs
from osteolightning.data.io import read_image
from osteolightning.data.transforms import ToNormalizedTensor
from osteolightning.errors import ConfigError
from osteolightning.models.checkpointing import load_checkpoint
from osteolightning.models.exporting import check_exporter, export_model, parity
from osteolightning.models.portable import export_metadata
from osteolightning.runs import lifecycle, rundir
from osteolightning.runs.checks import check_output_location
from osteolightning.runs.failures import user_errors
from osteolightning.runs.model_card import export_section
from osteolightning.utils.config import CONFIG_DIR
from osteolightning.utils.files import atomic_write_json, atomic_write_text, file_sha256
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def parity_images(ckpt_path: str | Path, given: Any, n: int) -> list[Path]:
    """The real images of the parity check: ``given`` files / folders, else the checkpoint
    run's test images (``predictions.csv``, else ``splits.csv``) that still exist.

    Raises:
        ConfigError: none found (``parity.images`` is named).
    """
    if given:
        paths = [given] if isinstance(given, str) else list(given)
        return [image for _, image in find_inputs(paths).pairs][:n]
    run = rundir.run_of_checkpoint(ckpt_path)
    for table in (run / rundir.PREDICTIONS, rundir.find_splits(run)):
        if table is not None and table.is_file():
            found = [p for p in rundir.read_image_paths(table) if p.is_file()][:n]
            if found:
                return found
    raise ConfigError(
        f"The parity check needs real images, and the checkpoint's run '{run}' lists none that "
        "exist. Pass parity.images=<image files or a folder>."
    )


def prepared(model: Any, paths: list[Path]) -> torch.Tensor:
    """``(N, C, S, S)``: the images letterboxed and normalised as the checkpoint wants."""
    pre = model.preprocessing
    to_tensor = ToNormalizedTensor(pre.mean, pre.std, pre.in_chans)
    return torch.stack([to_tensor(letterbox_resize(read_image(p), pre.image_size)) for p in paths])


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` as ``cfg.format``; returns the export report (``export.json``).

    Raises:
        ConfigError: a missing exporter (the package is named), no parity images, or a parity
            difference above ``parity.atol`` (the file is then removed).
    """
    check_exporter(cfg.format)
    check_output_location(cfg.paths.output_dir, "paths.output_dir")
    if cfg.out:
        check_output_location(cfg.out, "out", file=True)
    with lifecycle.session(cfg, loggers=False, model_card=False) as run:
        model, run_cfg = load_checkpoint(cfg.ckpt_path, cfg.get("allow_unsafe_pickle", False))
        model = model.eval().cpu()
        out = Path(cfg.out or run.dir / f"model{SUFFIX[cfg.format]}")
        taken = [p for p in (out, out.parent / rundir.EXPORT_REPORT) if p.exists()]
        if taken:
            raise ConfigError(
                f"'{taken[0]}' exists; osteo-export never writes over a file. Pass a new out=."
            )
        images = prepared(
            model, parity_images(cfg.ckpt_path, cfg.parity.images, cfg.parity.n_images)
        )
        source = {
            "checkpoint": str(Path(cfg.ckpt_path).resolve()),
            "checkpoint_sha256": file_sha256(cfg.ckpt_path),
            "osteolightning": __version__,
            "torch": torch.__version__,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        meta = export_metadata(model, run_cfg, source)
        export_model(model, cfg.format, out, meta, images[: min(3, len(images))], cfg.opset)
        check = parity(model, out, images)
        print(
            f"Parity on {check['n_images']} images (batch sizes {check['batch_sizes']}): max |Δp| "
            f"= {check['max_abs_diff']:.2e} (atol {cfg.parity.atol:g}); same class on "
            f"{check['argmax_agreement']:.0%}"
        )
        if not check["max_abs_diff"] <= cfg.parity.atol:
            out.unlink()
            raise ConfigError(
                f"The {cfg.format} export differs from the checkpoint by up to "
                f"{check['max_abs_diff']:.3g} in probability (parity.atol={cfg.parity.atol}); "
                "the file was removed. Raise parity.atol only if that difference is acceptable."
            )
        report = {"file": str(out.resolve()), "format": cfg.format, "sha256": file_sha256(out),
                  "parity": {**check, "atol": float(cfg.parity.atol)}, "metadata": meta}  # fmt: skip
        atomic_write_json(out.parent / rundir.EXPORT_REPORT, report)
        card = rundir.run_of_checkpoint(cfg.ckpt_path) / rundir.MODEL_CARD
        text = card.read_text() if card.is_file() else ""
        atomic_write_text(out.parent / rundir.MODEL_CARD, text + export_section(report))
        print(f"Wrote {out} ({out.stat().st_size / 1e6:.1f} MB), {rundir.EXPORT_REPORT} and "
              f"{rundir.MODEL_CARD} in {out.parent}")  # fmt: skip
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point. A framework error ends it with its message and exit status 1
    (:func:`~osteolightning.runs.failures.user_errors`)."""
    with user_errors("osteo-export", cfg.paths.output_dir):
        export(cfg)


if __name__ == "__main__":
    main()
