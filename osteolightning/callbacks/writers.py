"""The test-report writer of a run, chosen by config (classification or segmentation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from osteolightning.callbacks.evaluation import EvaluationWriter


def build_writer(
    evaluation: DictConfig | dict[str, Any] | None, output_dir: str | Path, **extra: Any
) -> L.Callback:
    """Instantiate the ``evaluation`` config as the run's report writer.

    ``evaluation`` without a ``_target_`` configures the classification
    :class:`~osteolightning.callbacks.evaluation.EvaluationWriter`; with one (the segmentation
    configs set :class:`~osteolightning.callbacks.seg_evaluation.SegmentationEvaluationWriter`)
    that class is built. ``output_dir`` and ``extra`` (e.g. ``ckpt_path``) are passed on.
    """
    options = (
        OmegaConf.to_container(evaluation, resolve=True)
        if isinstance(evaluation, DictConfig)
        else dict(evaluation or {})
    )
    if "_target_" in options:
        return hydra.utils.instantiate(options, output_dir=str(output_dir), **extra)
    return EvaluationWriter(output_dir, **options, **extra)


def build_saliency(
    saliency: DictConfig | dict[str, Any] | None,
    cam_layer: str | None,
    output_dir: str | Path,
) -> list[L.Callback]:
    """The saliency report of a classifier's test (``[]`` when ``saliency`` is unset or
    ``saliency.enabled`` is false, e.g. a segmentation run).

    Args:
        saliency: the ``saliency`` config (method, max_images, border_fraction,
            max_border_share, grid_per_cell, batch_size, n_resamples, seed, enabled).
        cam_layer: the backbone's target layer, from the run config of the model that is
            tested (``backbone.cam_layer``; for ``osteo-eval``, the checkpoint's).
        output_dir: the run directory.
    """
    from osteolightning.callbacks.saliency import SaliencyWriter

    options = (
        OmegaConf.to_container(saliency, resolve=True)
        if isinstance(saliency, DictConfig)
        else dict(saliency or {})
    )
    if not options or not options.pop("enabled", True):
        return []
    return [SaliencyWriter(output_dir, cam_layer, **options)]
