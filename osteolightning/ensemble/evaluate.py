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
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from osteolightning.callbacks.evaluation import EvaluationWriter, write_predictions_csv
from osteolightning.ensemble.cli import (
    PREDICTIONS,
    VAL_PREDICTIONS,
    RunPredictions,
    align,
    fit_validation_weights,
    read_predictions,
)
from osteolightning.ensemble.fusion import check_method, fuse
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.metrics.report import evaluation_report
from osteolightning.utils import runs
from osteolightning.utils.config import instantiate_list, to_container
from osteolightning.utils.files import atomic_write_json
from osteolightning.utils.logging import get_logger
from osteolightning.utils.run import close_loggers, print_metrics_table

log = get_logger(__name__)

#: The fusion used when ``ckpt_path`` lists several checkpoints and no ``ensemble=`` is given.
DEFAULT_METHOD = "fuzzy_rank"
#: Checkpoint facts that fix how a member's data is prepared (see ``osteolightning.evaluate``).
MEMBER_FACTS = ("class_names", "image_size", "in_chans", "mean", "std")


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


def _member_name(index: int, run_cfg: dict[str, Any]) -> str:
    """``<index>-<backbone>``, the backbone read from the checkpoint's run config."""
    net = (run_cfg.get("model") or {}).get("net") or {}
    name = str(net.get("name") or "model")
    return f"{index}-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}"


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
    from osteolightning.evaluate import load_checkpoint

    model, run_cfg = load_checkpoint(ckpt, cfg.get("allow_unsafe_pickle", False))
    name = _member_name(index, run_cfg)
    output_dir = members_dir / name
    log.info(f"Ensemble member {name}: {ckpt}")
    if not callable(getattr(model, "predict_proba", None)):
        raise ConfigError(
            f"'{ckpt}' holds a {type(model).__name__}, not a classifier: ensemble mode fuses "
            "class probabilities."
        )
    data_cfg = copy.deepcopy(cfg.data)
    with open_dict(data_cfg):
        for key in MEMBER_FACTS:
            data_cfg[key] = model.hparams[key]
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
    return name, read_predictions(output_dir / PREDICTIONS), writer.metrics


def _common_paths(members: list[RunPredictions]) -> list[RunPredictions]:
    """The members restricted to the images all of them predicted (a member whose data
    preparation left out a file, e.g. a copy group found at its input size, drops it for all)."""
    common = set(members[0].rows).intersection(*(m.rows for m in members[1:]))
    dropped = {p for m in members for p in m.rows} - common
    if not common:
        raise DataSourceError("The ensemble's members predicted no image in common.")
    if dropped:
        log.warning(
            f"{len(dropped)} images were predicted by some members only and are left out of "
            f"the ensemble, e.g. '{sorted(dropped)[0]}'."
        )
    return [replace(m, rows={p: r for p, r in m.rows.items() if p in common}) for m in members]


def validation_files(ckpts: list[Path]) -> list[Path]:
    """``<run>/val_predictions.csv`` for each ``<run>/checkpoints/<name>.ckpt``.

    Raises:
        ConfigError: a run directory without ``val_predictions.csv``.
    """
    files = [ckpt.resolve().parent.parent / VAL_PREDICTIONS for ckpt in ckpts]
    if lacking := [str(f) for f in files if not f.is_file()]:
        raise ConfigError(
            f"ensemble=weighted_mean fits its weights on the validation predictions of each "
            f"checkpoint's run, but {lacking} do not exist (osteo-train writes them after "
            "testing). Use ensemble=fuzzy_rank, mean or majority_vote."
        )
    return files


def validation_weights(ckpts: list[Path], class_names: list[str]) -> np.ndarray:
    """Fusion weights fitted on the members' ``val_predictions.csv`` (written by
    ``osteo-train`` into each checkpoint's run directory).

    Raises:
        ConfigError: a run directory without ``val_predictions.csv``.
    """
    members = [read_predictions(f) for f in validation_files(ckpts)]
    return fit_validation_weights(_common_paths(members), class_names)


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
    run_dir = runs.start_run(cfg)
    ckpts = checkpoint_paths(cfg.ckpt_path)
    settings = cfg.get("ensemble") or {}
    method = check_method(settings.get("method") or DEFAULT_METHOD)
    if not settings.get("method"):
        log.info(f"{len(ckpts)} checkpoints and no ensemble=...: fusing with {method}.")
    if len(ckpts) == 1:
        log.warning("ensemble mode with one checkpoint: the ensemble reproduces it.")
    top_k = settings.get("top_k") if method == "fuzzy_rank" else None
    if method == "weighted_mean":
        validation_files(ckpts)  # before the members are evaluated: fail fast
    loggers = instantiate_list(cfg.get("logger"), "logger")
    try:
        for logger in loggers:
            logger.log_hyperparams(to_container(cfg))
        members, member_metrics, names = [], [], []
        for i, ckpt in enumerate(ckpts):
            name, predictions, metrics = evaluate_member(cfg, ckpt, i, run_dir / "members")
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
        paths, labels, probs = align(_common_paths(members), class_names)
        weights = validation_weights(ckpts, class_names) if method == "weighted_mean" else None
        fused, preds = fuse(method, probs, top_k=top_k, weights=weights)

        ev = cfg.evaluation
        report = partial(
            evaluation_report,
            labels,
            class_names=class_names,
            n_resamples=ev.n_resamples,
            seed=ev.seed,
        )
        write_predictions_csv(run_dir / PREDICTIONS, paths, labels, fused, class_names)
        members_report = [
            {"member": name, "ckpt_path": str(ckpt.resolve()), **report(p)}
            for name, ckpt, p in zip(names, ckpts, probs, strict=True)
        ]
        atomic_write_json(run_dir / "members.json", members_report)
        metrics: dict[str, Any] = {
            "method": method,
            "top_k": top_k,
            "members": names,
            "ckpt_paths": [str(c.resolve()) for c in ckpts],
            **report(fused),
        }
        if weights is not None:
            metrics["weights"] = [float(w) for w in weights]
        atomic_write_json(run_dir / "metrics.json", metrics)  # last: the run is complete
        for m in members_report:
            log.info(f"member {m['member']}: acc {m['test/acc']:.4f}, f1 {m['test/f1_macro']:.4f}")
        log.info(f"Fused {len(paths)} predictions of {len(ckpts)} checkpoints ({method}).")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "top_k"}
        for logger in loggers:
            logger.log_metrics(scalars)
            logger.save()
        print_metrics_table(metrics, title=f"Ensemble of {len(ckpts)} checkpoints ({method})")
        runs.finish_run(run_dir)
    finally:
        runs.stop_heartbeat()  # a failed run stays `running`, resumable at once
        close_loggers(loggers)
    return metrics, {"members": member_metrics, "weights": weights}
