"""``osteo-eval`` in ensemble mode: evaluate several checkpoints on one data source and fuse them.

Example:
    osteo-eval ckpt_path=[A.ckpt,B.ckpt,C.ckpt] ensemble=fuzzy_rank \\
        data=folder data.root=/data/knees
    osteo-eval ckpt_path=[A.ckpt,B.ckpt] ensemble=fuzzy_rank ensemble.top_k=2
    osteo-eval ckpt_path=[A.ckpt,B.ckpt] ensemble=weighted_mean   # needs val_predictions.csv

Each checkpoint is evaluated with its own input size, channels and normalisation (an
Inception v3 at 299 px beside a ResNet-18 at 224 px), its predictions and report written to
``members/<i>-<backbone>/``; then the members' probabilities are matched by image path and
fused. The eval run directory gets the fused ``predictions.csv``, ``metrics.json`` (bootstrap
95 % intervals) and ``members.json`` (each member's report on the same bootstrap).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from osteolightning.callbacks.evaluation import EvaluationWriter
from osteolightning.ensemble.fusion import check_method
from osteolightning.ensemble.members import common_images, fuse_runs, member_name, write_fused
from osteolightning.errors import ConfigError
from osteolightning.models.checkpointing import load_checkpoint
from osteolightning.runs import lifecycle, rundir
from osteolightning.runs.rundir import RunPredictions, read_predictions
from osteolightning.utils.console import print_metrics_table
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: The fusion used when ``ckpt_path`` lists several checkpoints and no ``ensemble=`` is given.
DEFAULT_METHOD = "fuzzy_rank"


def checkpoint_paths(ckpt_path: Any) -> list[Path]:
    """``ckpt_path`` (one path or a list) as a list of paths.

    Raises:
        ConfigError: an empty list, or a path that is not a file.
    """
    items = list(ckpt_path) if isinstance(ckpt_path, ListConfig | list | tuple) else [ckpt_path]
    if not items:
        raise ConfigError("Expected argument `ckpt_path` to list checkpoints, but got [].")
    paths = [Path(str(p)).expanduser() for p in items]
    if missing := [str(p) for p in paths if not p.is_file()]:
        raise ConfigError(
            f"Checkpoints do not exist: {missing}. Pass ckpt_path=[<run>/checkpoints/<name>.ckpt,"
            " ...]."
        )
    return paths


def is_ensemble(cfg: DictConfig) -> bool:
    """Whether ``cfg`` asks for ensemble mode: ``ckpt_path`` is a list, or ``ensemble`` is set."""
    return isinstance(cfg.get("ckpt_path"), ListConfig) or cfg.get("ensemble") is not None


def evaluate_member(
    cfg: DictConfig, ckpt: Path, index: int, members_dir: Path
) -> tuple[str, RunPredictions, dict[str, Any]]:
    """Evaluate one checkpoint on ``cfg.data`` prepared the checkpoint's way; the member's
    ``predictions.csv``, ``metrics.json`` and figures go to ``members_dir/<name>``.

    Returns:
        The member's name (``<index>-<backbone>``), predictions and metrics.

    Raises:
        ConfigError: the checkpoint is not a classifier written by ``osteo-train``.
    """
    model, run_cfg = load_checkpoint(ckpt, cfg.get("allow_unsafe_pickle", False))
    name = member_name(index, run_cfg)
    output_dir = members_dir / name
    log.info(f"Ensemble member {name}: {ckpt}")
    if not callable(getattr(model, "predict_proba", None)):
        raise ConfigError(
            f"'{ckpt}' holds a {type(model).__name__}, not a classifier: ensemble mode fuses "
            "class probabilities."
        )
    data_cfg = copy.deepcopy(cfg.data)
    with open_dict(data_cfg):
        data_cfg.update(model.preprocessing.hparams())
    datamodule: L.LightningDataModule = hydra.utils.instantiate(data_cfg)
    options = OmegaConf.to_container(cfg.evaluation, resolve=True)
    options = {k: v for k, v in options.items() if k != "temperature_scaling"}
    writer = EvaluationWriter(output_dir, **options, ckpt_path=str(ckpt))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[writer],
        logger=False,
        default_root_dir=str(output_dir),
        enable_checkpointing=False,
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    return name, read_predictions(output_dir / rundir.PREDICTIONS), writer.metrics


def validation_files(ckpts: list[Path]) -> list[Path]:
    """``<run>/val_predictions.csv`` for each checkpoint's run.

    Raises:
        ConfigError: a run directory without ``val_predictions.csv``.
    """
    files = [rundir.run_of_checkpoint(ckpt) / rundir.VAL_PREDICTIONS for ckpt in ckpts]
    if lacking := [str(f) for f in files if not f.is_file()]:
        raise ConfigError(
            f"ensemble=weighted_mean fits its weights on the validation predictions of each "
            f"checkpoint's run, but {lacking} do not exist (osteo-train writes them after "
            "testing). Use ensemble=fuzzy_rank, mean or majority_vote."
        )
    return files


def evaluate_ensemble(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate every checkpoint of ``cfg.ckpt_path`` on ``cfg.data`` and fuse them with
    ``cfg.ensemble.method`` (``fuzzy_rank`` by default; ``cfg.ensemble.top_k`` for it).

    Returns:
        ``(metrics, objects)``: the fused metrics (also in ``metrics.json``) and
        ``{"members": [per-member metrics], "weights": fitted weights or None}``.

    Raises:
        ConfigError: missing checkpoints, an unknown method, a checkpoint that is not a
            classifier, members with different classes, weighted_mean without validation
            predictions.
        DataSourceError: members that predicted no image in common.
    """
    with lifecycle.session(cfg) as run:
        ckpts = checkpoint_paths(cfg.ckpt_path)
        settings = cfg.get("ensemble") or {}
        method = check_method(settings.get("method") or DEFAULT_METHOD)
        if not settings.get("method"):
            log.info(f"{len(ckpts)} checkpoints and no ensemble=...: fusing with {method}.")
        if len(ckpts) == 1:
            log.warning("ensemble mode with one checkpoint: the ensemble reproduces it.")
        if method == "weighted_mean":
            validation_files(ckpts)  # before the members are evaluated: fail fast
        members, member_metrics, names = [], [], []
        for i, ckpt in enumerate(ckpts):
            name, predictions, metrics = evaluate_member(cfg, ckpt, i, run.dir / rundir.MEMBERS_DIR)
            members.append(predictions)
            member_metrics.append(metrics)
            names.append(name)
        class_names = members[0].class_names
        for name, member in zip(names, members, strict=True):
            if member.class_names != class_names:
                raise ConfigError(
                    f"Member {name} has classes {member.class_names}, member {names[0]} has "
                    f"{class_names}: only models of the same classes can be fused."
                )
        validation = None
        if method == "weighted_mean":
            validation = common_images([read_predictions(f) for f in validation_files(ckpts)])
        fused = fuse_runs(
            common_images(members),
            method,
            top_k=settings.get("top_k"),
            validation=validation,
            class_names=class_names,
        )
        ev = cfg.evaluation
        sources = [str(c.resolve()) for c in ckpts]
        metrics = write_fused(run.dir, fused, names, sources, ev.n_resamples, ev.seed)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "top_k"}
        for logger in run.loggers:
            logger.log_metrics(scalars)
            logger.save()
        print_metrics_table(metrics, title=f"Ensemble of {len(ckpts)} checkpoints ({fused.label})")
    return metrics, {"members": member_metrics, "weights": fused.weights}
