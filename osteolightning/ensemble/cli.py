"""``osteo-ensemble``: fuse finished runs, or build the leaderboard of a sweep.

``runs=[...]`` fuses the ``predictions.csv`` of finished runs and writes the fused
``predictions.csv``, ``metrics.json`` (with 95 % intervals) and ``members.json`` (each run's
report on the same bootstrap) into its own run directory. ``sweep=<multirun dir>`` writes the
sweep's leaderboard (:mod:`osteolightning.ensemble.leaderboard`) into ``<sweep>/leaderboard/``.

Example:
    osteo-ensemble runs=[logs/eval/runs/A,logs/eval/runs/B,logs/eval/runs/C] method=fuzzy_rank
    osteo-ensemble sweep=logs/train/multiruns/2026-01-01_00-00-00_000000 methods=[fuzzy_rank]
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from osteolightning.ensemble.fusion import check_method, fit_fusion_weights, fuse
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.metrics.report import evaluation_report
from osteolightning.utils.config import CONFIG_DIR
from osteolightning.utils.files import atomic_write_csv, atomic_write_json
from osteolightning.utils.logging import get_logger
from osteolightning.utils.run import print_metrics_table

log = get_logger(__name__)

PREDICTIONS, VAL_PREDICTIONS = "predictions.csv", "val_predictions.csv"


@dataclass(frozen=True)
class RunPredictions:
    """One ``path,label,prob_<class>...,prediction`` file: ``rows`` maps path → (label, probs)."""

    source: Path
    class_names: list[str]
    rows: dict[str, tuple[str, np.ndarray]]


def read_predictions(path: Path) -> RunPredictions:
    """Read a predictions CSV (class names from its ``prob_`` columns).

    Raises:
        DataSourceError: a wrong header, a non-numeric probability, a repeated path or no rows.
    """
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        names = [c.removeprefix("prob_") for c in header if c.startswith("prob_")]
        if "path" not in header or "label" not in header or len(names) < 2:
            raise DataSourceError(
                f"'{path}' is not a predictions file: expected the header "
                f"path,label,prob_<class>...,prediction, but got {header}."
            )
        rows: dict[str, tuple[str, np.ndarray]] = {}
        for line, row in enumerate(reader, start=2):
            if row["path"] in rows:
                raise DataSourceError(f"'{path}' line {line}: '{row['path']}' appears twice.")
            try:
                rows[row["path"]] = (
                    row["label"],
                    np.array([float(row[f"prob_{c}"]) for c in names]),
                )
            except (TypeError, ValueError) as err:
                raise DataSourceError(
                    f"'{path}' line {line}: expected a number in every prob_ column, but got {row}."
                ) from err
    if not rows:
        raise DataSourceError(f"'{path}' holds no predictions.")
    return RunPredictions(path.resolve(), names, rows)


def align(
    runs: list[RunPredictions], class_names: list[str] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rows of every run matched by path (the first run's order), columns by class name.

    Args:
        runs: M runs' predictions.
        class_names: the column order; the first run's by default.

    Returns:
        ``(paths, labels (N,), probs (M, N, K))``.

    Raises:
        DataSourceError: other class names, a path missing from a run, labels that disagree or
            a label that is not a class.
    """
    names, first = list(class_names or runs[0].class_names), runs[0]
    for run in runs:
        if sorted(run.class_names) != sorted(names):
            raise DataSourceError(
                f"'{run.source}' has classes {run.class_names}, expected {names}."
            )
        for a, b in ((first, run), (run, first)):
            missing = [p for p in a.rows if p not in b.rows]
            if missing:
                raise DataSourceError(
                    f"'{missing[0]}' is in '{a.source}' but missing from '{b.source}' "
                    f"({len(missing)} such paths); fuse runs tested on the same images."
                )
    paths = list(first.rows)
    for path in paths:
        label = first.rows[path][0]
        if label not in names or any(r.rows[path][0] != label for r in runs):
            found = {str(r.source): r.rows[path][0] for r in runs}
            raise DataSourceError(f"'{path}' has labels {found}; expected one of {names} in all.")
    labels = np.array([names.index(first.rows[p][0]) for p in paths])
    matrices = [np.stack([r.rows[p][1] for p in paths]) for r in runs]  # M × (N, K)
    probs = np.stack(
        [m[:, [r.class_names.index(c) for c in names]] for m, r in zip(matrices, runs, strict=True)]
    )
    return paths, labels, probs


def run_file(run: str, name: str = PREDICTIONS) -> Path:
    """``RUN/name`` for a run directory; for a CSV file, the file itself or ``name`` beside it."""
    path = Path(run)
    return path / name if path.is_dir() else path if name == PREDICTIONS else path.with_name(name)


def fit_validation_weights(members: Sequence[RunPredictions], class_names: list[str]) -> np.ndarray:
    """The weighted-mean fusion's weights, fitted on the members' validation predictions
    (aligned image by image; see :func:`~osteolightning.ensemble.fusion.fit_fusion_weights`)."""
    _, labels, probs = align(list(members), class_names)
    return fit_fusion_weights(probs, labels)


def _fit_weights(runs: list[str], class_names: list[str]) -> np.ndarray:
    files = [run_file(r, VAL_PREDICTIONS) for r in runs]
    if lacking := [str(f) for f in files if not f.is_file()]:
        raise ConfigError(
            f"method=weighted_mean fits its weights on validation predictions, but {lacking} do "
            f"not exist: put a {VAL_PREDICTIONS} (validation images, predictions.csv format) beside "
            f"each run's predictions.csv, or use method=fuzzy_rank, mean or majority_vote."
        )
    return fit_validation_weights([read_predictions(f) for f in files], class_names)


def ensemble(cfg: DictConfig) -> dict[str, Any]:
    """Fuse ``cfg.runs`` with ``cfg.method`` and write the results to ``cfg.paths.output_dir``.

    Returns:
        The fused run's metrics (also in ``metrics.json``).

    Raises:
        ConfigError: no runs, an unknown method, weighted_mean without validation predictions.
        DataSourceError: a missing or malformed predictions file, or runs that do not match.
    """
    if OmegaConf.is_missing(cfg, "runs") or not cfg.runs:
        raise ConfigError(
            "Expected argument `runs` to list run directories, e.g. runs=[RUN,RUN] (or `sweep` "
            "to be a multirun directory, for its leaderboard)."
        )
    runs = [str(r) for r in (cfg.runs if isinstance(cfg.runs, ListConfig) else [cfg.runs])]
    method = check_method(cfg.method)
    if missing := [r for r in runs if not run_file(r).is_file()]:
        raise DataSourceError(
            f"Not a run directory holding {PREDICTIONS} nor a CSV file: {missing}."
        )
    if len(runs) == 1:
        log.warning("Only one run given: the ensemble reproduces it.")
    members = [read_predictions(run_file(r)) for r in runs]
    class_names = members[0].class_names
    paths, labels, probs = align(members)
    weights = _fit_weights(runs, class_names) if method == "weighted_mean" else None
    fused, preds = fuse(method, probs, top_k=cfg.get("top_k"), weights=weights)

    ev = cfg.evaluation
    report = partial(
        evaluation_report, labels, class_names=class_names, n_resamples=ev.n_resamples, seed=ev.seed
    )
    sources = [str(m.source) for m in members]
    metrics = {"method": method, "runs": sources, "top_k": cfg.get("top_k"), **report(fused)}
    if weights is not None:
        metrics["weights"] = weights.tolist()
    out = Path(cfg.paths.output_dir)
    header = ["path", "label", *[f"prob_{c}" for c in class_names], "prediction"]
    rows = zip(paths, labels, fused, preds, strict=True)
    atomic_write_csv(
        out / PREDICTIONS,
        header,
        [
            [path, class_names[y], *[f"{v:.6f}" for v in row], class_names[int(p)]]
            for path, y, row, p in rows
        ],
    )
    members_report = [{"run": s, **report(p)} for s, p in zip(sources, probs, strict=True)]
    atomic_write_json(out / "members.json", members_report)
    atomic_write_json(out / "metrics.json", metrics)  # last: its presence means the run finished
    for m in members_report:
        log.info(f"member {m['run']}: acc {m['test/acc']:.4f}, f1_macro {m['test/f1_macro']:.4f}")
    log.info(f"Fused {len(paths)} predictions of {len(runs)} runs ({method}) into {out}")
    print_metrics_table(metrics, title=f"Ensemble of {len(runs)} runs ({method})")
    return metrics


def _string_list(cfg: DictConfig, key: str) -> list[str] | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, ListConfig):
        return [str(v) for v in value]
    if isinstance(value, str):
        return [value]
    raise ConfigError(
        f"Expected argument `{key}` to be a list, e.g. {key}=[a,b], but got {value!r}."
    )


def leaderboard(cfg: DictConfig) -> dict[str, Any]:
    """Build and write the leaderboard of ``cfg.sweep`` (``osteo-ensemble sweep=DIR``).

    Returns:
        ``leaderboard.json``'s content.

    Raises:
        ConfigError: both ``runs`` and ``sweep``, an unknown method, member or sort metric, or a
            taken ``out`` folder.
        DataSourceError: no jobs, unreadable results, members tested on different images.
    """
    from osteolightning.ensemble.leaderboard import leaderboard_json, run_leaderboard

    if cfg.get("runs"):
        raise ConfigError(
            "Pass either `runs` (fuse these runs) or `sweep` (the leaderboard of a sweep), not both."
        )
    sweep = _string_list(cfg, "sweep") or []
    ev = cfg.evaluation
    board, files = run_leaderboard(
        sweep[0] if len(sweep) == 1 else sweep,
        out=cfg.get("out")
        or (None if len(sweep) == 1 else Path(cfg.paths.output_dir) / "leaderboard"),
        wandb=bool(cfg.get("wandb", False)),
        wandb_project=str(cfg.get("wandb_project") or "osteolightning"),
        wandb_offline=bool(cfg.get("wandb_offline", True)),
        methods=_string_list(cfg, "methods"),
        members=_string_list(cfg, "members"),
        sort_by=cfg.get("sort_by"),
        top_k=cfg.get("top_k"),
        n_resamples=int(ev.n_resamples),
        seed=int(ev.seed),
    )
    return {**leaderboard_json(board), "files": {k: str(v) for k, v in files.items()}}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="ensemble")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: the leaderboard with ``sweep=...``, else the ensemble of ``runs``."""
    if cfg.get("sweep"):
        leaderboard(cfg)
    else:
        ensemble(cfg)


if __name__ == "__main__":
    main()
