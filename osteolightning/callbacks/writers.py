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
