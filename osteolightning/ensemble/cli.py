"""``osteo-ensemble``: fuse finished runs, or build the leaderboard of a sweep.

``runs=[...]`` fuses the ``predictions.csv`` of finished runs and writes the fused
``predictions.csv``, ``metrics.json`` (with 95 % intervals) and ``members.json`` (each run's
report on the same bootstrap) into its own run directory. ``sweep=<multirun dir>`` writes the
sweep's leaderboard (:mod:`osteolightning.ensemble.leaderboard`), its pairwise comparisons and
its study report ``report.html`` into ``<sweep>/leaderboard/``.

Example:
    osteo-ensemble runs=[logs/eval/runs/A,logs/eval/runs/B,logs/eval/runs/C] method=fuzzy_rank
    osteo-ensemble sweep=logs/train/multiruns/2026-01-01_00-00-00_000000 methods=[fuzzy_rank]
    osteo-ensemble sweep=logs/train/multiruns/2026-01-01_00-00-00_000000 report=true alpha=0.01
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from osteolightning.ensemble.leaderboard import leaderboard_json, run_leaderboard
from osteolightning.ensemble.leaderboard.outputs import recorded_resamples
from osteolightning.ensemble.members import fuse_runs, member_name, write_fused
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.runs import lifecycle, rundir
from osteolightning.runs.failures import user_errors
from osteolightning.runs.rundir import predictions_file, read_predictions
from osteolightning.utils.config import CONFIG_DIR
from osteolightning.utils.console import print_metrics_table
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: Bootstrap resamples when ``evaluation.n_resamples`` is null and no sweep recorded its own.
DEFAULT_RESAMPLES = 1000


def _validation(sources: list[str]) -> list[rundir.RunPredictions]:
    """The runs' ``val_predictions.csv`` (what ``weighted_mean`` fits its weights on).

    Raises:
        ConfigError: a run without one.
    """
    files = [predictions_file(r, rundir.VAL_PREDICTIONS) for r in sources]
    if lacking := [str(f) for f in files if not f.is_file()]:
        raise ConfigError(
            f"method=weighted_mean fits its weights on validation predictions, but {lacking} do "
            f"not exist: put a {rundir.VAL_PREDICTIONS} (validation images, predictions.csv "
            "format) beside each run's predictions.csv, or use method=fuzzy_rank, mean or "
            "majority_vote."
        )
    return [read_predictions(f) for f in files]


def _run_config(source: str) -> dict[str, Any] | None:
    """The saved config of the run a predictions file belongs to, if it has one."""
    path = Path(source)
    run_dir = path if path.is_dir() else path.parent
    config = run_dir / rundir.CONFIG
    return OmegaConf.to_container(OmegaConf.load(config)) if config.is_file() else None


def ensemble(cfg: DictConfig) -> dict[str, Any]:
    """Fuse ``cfg.runs`` with ``cfg.method`` and write the results to its run directory.

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
    sources = [str(r) for r in (cfg.runs if isinstance(cfg.runs, ListConfig) else [cfg.runs])]
    if missing := [r for r in sources if not predictions_file(r).is_file()]:
        raise DataSourceError(
            f"Not a run directory holding {rundir.PREDICTIONS} nor a CSV file: {missing}."
        )
    if len(sources) == 1:
        log.warning("Only one run given: the ensemble reproduces it.")
    with lifecycle.session(cfg, loggers=False) as run:
        members = [read_predictions(predictions_file(r)) for r in sources]
        fused = fuse_runs(
            members,
            cfg.method,
            top_k=cfg.get("top_k"),
            validation=_validation(sources) if cfg.method == "weighted_mean" else None,
        )
        names = [member_name(i, _run_config(r)) for i, r in enumerate(sources)]
        ev = cfg.evaluation
        n_resamples = int(ev.n_resamples or DEFAULT_RESAMPLES)
        metrics = write_fused(
            run.dir, fused, names, [str(m.source) for m in members], n_resamples, ev.seed
        )
        print_metrics_table(metrics, title=f"Ensemble of {len(sources)} runs ({fused.label})")
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
    """Build and write the leaderboard of ``cfg.sweep`` with its comparisons and report
    (``osteo-ensemble sweep=DIR``).

    Returns:
        ``leaderboard.json``'s content.

    Raises:
        ConfigError: both ``runs`` and ``sweep``, an unknown method, member or sort metric, or a
            taken ``out`` folder.
        DataSourceError: no jobs, unreadable results, members tested on different images.
    """
    if cfg.get("runs"):
        raise ConfigError(
            "Pass either `runs` (fuse these runs) or `sweep` (the leaderboard of a sweep), not both."
        )
    sweep = _string_list(cfg, "sweep") or []
    ev = cfg.evaluation
    recorded = recorded_resamples(sweep, cfg.get("out"))
    n_resamples = int(ev.n_resamples or recorded or DEFAULT_RESAMPLES)
    if recorded and ev.n_resamples is None:
        log.info(
            f"Bootstrap: the sweep's n_resamples={recorded} (evaluation.n_resamples=N changes it)."
        )
    elif recorded and n_resamples != recorded:
        log.warning(
            f"Rebuilding the leaderboard with evaluation.n_resamples={n_resamples}; it was built "
            f"with {recorded}, so its intervals change."
        )
    with lifecycle.session(cfg, loggers=False):
        board, files = run_leaderboard(
            sweep[0] if len(sweep) == 1 else sweep,
            out=cfg.get("out")
            or (None if len(sweep) == 1 else Path(cfg.paths.output_dir) / rundir.LEADERBOARD),
            wandb=bool(cfg.get("wandb", False)),
            wandb_project=str(cfg.get("wandb_project") or "osteolightning"),
            wandb_offline=bool(cfg.get("wandb_offline", True)),
            methods=_string_list(cfg, "methods"),
            members=_string_list(cfg, "members"),
            sort_by=cfg.get("sort_by"),
            top_k=cfg.get("top_k"),
            n_resamples=n_resamples,
            seed=int(ev.seed),
            compare=bool(cfg.get("compare", True)),
            report=bool(cfg.get("report", True)),
            alpha=float(cfg.get("alpha", 0.05)),
        )
    return {**leaderboard_json(board), "files": {k: str(v) for k, v in files.items()}}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="ensemble")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: the leaderboard with ``sweep=...``, else the ensemble of ``runs``."""
    with user_errors("osteo-ensemble", cfg.paths.output_dir):
        if cfg.get("sweep"):
            leaderboard(cfg)
        else:
            ensemble(cfg)


if __name__ == "__main__":
    main()
