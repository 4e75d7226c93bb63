"""The leaderboard of a sweep: one row per configuration and per ensemble of configurations.

A *sweep* is a Hydra multirun directory (``logs/train/multiruns/<stamp>/``, one folder per
job) or any list of run directories. Each job is read from its files alone:

* ``.hydra/overrides.yaml`` (and ``.hydra/config.yaml`` for its seed and fold);
* its status: ``finished`` (``metrics.json``), ``failed`` (``error.json``, written by the
  multirun's failed-job handling) or ``incomplete`` (neither: still running, killed, or never
  started);
* ``metrics.json`` (flat ``test/*`` keys), ``predictions.csv`` (``path,label,prob_<class>...``)
  and, where present, ``val_predictions.csv``.

A *configuration* is a job's overrides minus ``seed``, ``data.fold``, ``hydra.*`` and
``paths.*``: the jobs of one configuration differ only in seed and fold. Its row holds

* mean ± standard deviation (``ddof=1``) over its finished jobs of every scalar ``test/*``
  metric of their ``metrics.json`` (classification and segmentation alike);
* for classifiers (``prob_`` columns), the *pooled out-of-fold* metrics: every test prediction of
  every fold and seed evaluated together, with 95 % intervals from a stratified *cluster*
  bootstrap that resamples images (an image tested under 3 seeds is drawn with its 3 rows,
  :func:`osteolightning.metrics.report.cluster_bootstrap_report`).

Ensemble rows fuse configurations (all, or ``members``) per (seed, fold) on that fold's test
split (rows matched by image path; members whose test sets differ are an error), with each
fusion method of :mod:`osteolightning.ensemble.fusion`; ``weighted_mean`` fits its weights on the
members' ``val_predictions.csv`` of the same (seed, fold) and is left out when a member lacks
one. Ensemble rows get the same statistics: mean ± std over (seed, fold) and pooled.

Failed and incomplete jobs are listed in every output and never stop the leaderboard.

Example:
    >>> board = build_leaderboard("logs/train/multiruns/2026-01-01_00-00-00_000000")  # doctest: +SKIP
    >>> write_leaderboard(board)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from osteolightning.ensemble.cli import (
    PREDICTIONS,
    VAL_PREDICTIONS,
    RunPredictions,
    align,
    fit_validation_weights,
    read_predictions,
)
from osteolightning.ensemble.fusion import FUSIONS, check_method, fuse
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.metrics.report import cluster_bootstrap_report, metric_table
from osteolightning.utils import runs
from osteolightning.utils.files import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)
from osteolightning.utils.logging import get_logger
from osteolightning.utils.sweep import ERROR_FILE as ERROR
from osteolightning.utils.sweep import describe_error

log = get_logger(__name__)

METRICS = "metrics.json"
#: Marks a folder written by the leaderboard (its sources and files): only such a folder is
#: written into again.
MARKER = ".osteo_leaderboard.json"
FINISHED, FAILED, INCOMPLETE = "finished", "failed", "incomplete"
#: Override keys that tell the jobs of one configuration apart (never part of a configuration).
REPEAT_KEYS = ("seed", "data.fold")
#: Override keys (and prefixes) that are bookkeeping, not configuration.
IGNORED_PREFIXES = ("hydra.", "hydra/", "paths.")
#: Scalar ``metrics.json`` keys that are counts, not metrics (left out of the mean ± std).
COUNT_KEYS = ("n", "bootstrap_resamples", "n_clusters")
#: Metric-name fragments for which lower is better (sorting).
LOWER_IS_BETTER = ("loss", "ece", "hausdorff", "hd95", "asd", "mae", "rmse", "error")
#: Metrics shown in the Markdown table and the figure after the sort metric, when present.
SHOWN = (
    "test/acc",
    "test/balanced_acc",
    "test/f1_macro",
    "test/auroc_macro",
    "test/kappa_quadratic",
    "test/dice",
)
#: Without `members`, ensembles fuse every configuration only up to this many (a hyperparameter
#: search's trials are not an ensemble); name the members to fuse more.
MAX_DEFAULT_MEMBERS = 8
#: The sort metric when none is given: the first of these that some row has.
DEFAULT_SORT = ("test/f1_macro", "test/dice", "test/acc")


class EnsembleMismatchError(DataSourceError):
    """Ensemble members were tested on different images (a swept split, another data set)."""


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One run directory of a sweep, read from its files.

    Attributes:
        path: the run directory.
        name: its name in tables (the job number in a multirun).
        overrides: its Hydra overrides (``.hydra/overrides.yaml``), as given.
        status: ``finished``, ``failed`` or ``incomplete``.
        seed: its ``seed`` (``None`` where unknown).
        fold: its ``data.fold`` under cross-validation, ``None`` for a hold-out split.
        error: why it is not finished (``error.json``'s type and message, or the marker state).
    """

    path: Path
    name: str
    overrides: tuple[str, ...]
    status: str
    seed: int | None
    fold: int | None
    error: str | None = None

    @property
    def key(self) -> tuple[str, ...]:
        """The job's configuration: overrides minus seed, fold and bookkeeping, sorted."""
        return configuration_key(self.overrides)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def configuration_key(overrides: Iterable[str]) -> tuple[str, ...]:
    """Overrides that define a configuration: all but ``seed``, ``data.fold``, ``hydra.*`` and
    ``paths.*`` (``+``/``~`` prefixes ignored), sorted.

    Example:
        >>> configuration_key(["seed=1", "model/backbone=vgg16", "data.fold=2", "paths.log_dir=x"])
        ('model/backbone=vgg16',)
    """
    kept = []
    for override in overrides:
        key = _override_key(override)
        if key in REPEAT_KEYS or key == "hydra" or key.startswith(IGNORED_PREFIXES):
            continue
        kept.append(override)
    return tuple(sorted(kept))


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _seed_and_fold(path: Path, overrides: Sequence[str]) -> tuple[int | None, int | None]:
    """Seed and fold from the overrides, else from the saved config (``.hydra/config.yaml``)."""
    given = {_override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    config = _read_yaml(path / ".hydra" / "config.yaml") or {}
    data = config.get("data") if isinstance(config, dict) else None
    data = data if isinstance(data, dict) else {}
    seed = _as_int(given.get("seed", config.get("seed") if isinstance(config, dict) else None))
    folds = _as_int(given.get("data.num_folds", data.get("num_folds")))
    fold = _as_int(given.get("data.fold", data.get("fold"))) if folds else None
    return seed, fold


def _error_of(path: Path) -> str:
    record = _read_yaml(path / ERROR)  # JSON is YAML
    if not isinstance(record, dict):
        return f"unreadable {path / ERROR}"
    return describe_error(record)


def _incomplete_reason(path: Path) -> str:
    marker = runs.read_marker(path)
    state = marker.get("state") if isinstance(marker, dict) else None
    if state:
        return f"no {METRICS} (run state: {state})"
    return f"no {METRICS} and no {ERROR} (never started, still running, or killed)"


def read_job(path: str | Path, name: str | None = None) -> Job:
    """Read one run directory.

    Args:
        path: a run directory (an ``osteo-train`` run or a multirun job).
        name: its name in tables; the folder name by default.

    Returns:
        The job; a job whose ``.hydra/overrides.yaml`` is missing has no overrides.

    Raises:
        DataSourceError: ``path`` is not a directory.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataSourceError(f"'{path}' is not a run directory.")
    raw = _read_yaml(path / ".hydra" / "overrides.yaml")
    overrides = tuple(str(o) for o in raw) if isinstance(raw, list) else ()
    seed, fold = _seed_and_fold(path, overrides)
    if (path / ERROR).is_file():
        status, error = FAILED, _error_of(path)
    elif (path / METRICS).is_file():
        status, error = FINISHED, None
    else:
        status, error = INCOMPLETE, _incomplete_reason(path)
    return Job(path, name or path.name, overrides, status, seed, fold, error)


def _is_job_dir(path: Path) -> bool:
    return any((path / f).exists() for f in (".hydra", METRICS, ERROR, runs.MARKER))


def _job_order(path: Path) -> tuple[int, int | str]:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def find_jobs(sources: str | Path | Sequence[str | Path]) -> list[Job]:
    """The jobs of multirun directories and/or run directories, in order.

    A multirun directory (``multirun.yaml``, or sub-folders that are runs) contributes each
    sub-folder that is a run (holds ``.hydra/``, ``metrics.json``, ``error.json`` or a run
    marker), by job number; the leaderboard's own folders are skipped. A run directory is one job.

    Raises:
        DataSourceError: a source that does not exist, is neither kind, or no jobs at all.
    """
    items = [sources] if isinstance(sources, str | Path) else list(sources)
    if not items:
        raise DataSourceError("Expected at least one multirun or run directory, but got none.")
    jobs: list[Job] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if not path.is_dir():
            raise DataSourceError(f"'{path}' is not a directory (a multirun or a run directory).")
        subdirs = sorted(
            (
                p
                for p in path.iterdir()
                if p.is_dir() and not p.name.startswith((".", "leaderboard"))
            ),
            key=_job_order,
        )
        runs = [p for p in subdirs if _is_job_dir(p)]
        if (path / "multirun.yaml").is_file() or (runs and not _is_job_dir(path)):
            prefix = f"{path.name}/" if len(items) > 1 else ""
            jobs += [read_job(p, f"{prefix}{p.name}") for p in runs]
        elif _is_job_dir(path):
            jobs.append(read_job(path, path.name))
        else:
            raise DataSourceError(
                f"'{path}' is neither a multirun directory (multirun.yaml, one folder per job) "
                "nor a run directory (.hydra/, metrics.json)."
            )
    if not jobs:
        raise DataSourceError(f"No jobs found in {[str(i) for i in items]}.")
    return jobs


# --------------------------------------------------------------------------- configurations


@dataclass
class Configuration:
    """The jobs of one configuration (equal overrides but for seed and fold)."""

    key: tuple[str, ...]
    name: str
    jobs: list[Job]

    @property
    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.status == FINISHED]


def _override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else override


def group_configurations(jobs: Sequence[Job]) -> list[Configuration]:
    """Group jobs by configuration (first-seen order) and name each by what sets it apart.

    The name is the value of the one override that varies between configurations
    (``model/backbone=xception`` → ``xception``), else the varying overrides
    (``key=value key=value``); a single configuration is named by all its overrides, or
    ``default`` when it has none.
    """
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.key, []).append(job)
    keys = list(groups)
    common = set(keys[0]).intersection(*map(set, keys[1:])) if len(keys) > 1 else set()
    varying_names = {_override_key(o) for k in keys for o in k if o not in common}
    configs = []
    for key in keys:
        differing = [o for o in key if o not in common] if len(keys) > 1 else list(key)
        if len(keys) > 1 and len(varying_names) == 1 and len(differing) == 1:
            name = _override_value(differing[0])
        else:
            name = " ".join(differing) or "default"
        configs.append(Configuration(key, name, groups[key]))
    names = [c.name for c in configs]
    for config in configs:  # never two rows with one name
        if names.count(config.name) > 1:
            config.name = " ".join(config.key) or "default"
    return configs


# --------------------------------------------------------------------------- statistics


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read_metrics(job: Job) -> dict[str, float]:
    """The scalar ``test/*`` metrics of a finished job (counts left out)."""
    try:
        metrics = json.loads((job.path / METRICS).read_text())
    except (OSError, ValueError) as err:
        raise DataSourceError(f"Cannot read '{job.path / METRICS}': {err}") from err
    if not isinstance(metrics, dict):
        raise DataSourceError(f"'{job.path / METRICS}' is not a JSON object of metrics.")
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith("test/") and _finite(v) and k.split("/", 1)[1] not in COUNT_KEYS
    }


def mean_std(values_per_job: Sequence[dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """``metric → {mean, std, n}`` over the jobs that have the metric; ``std`` uses ``ddof=1``
    and is ``None`` for fewer than two values."""
    keys: list[str] = []
    for values in values_per_job:
        keys += [k for k in values if k not in keys]
    out: dict[str, dict[str, float | None]] = {}
    for key in keys:
        v = np.array([m[key] for m in values_per_job if key in m], dtype=np.float64)
        out[key] = {
            "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v)),
        }
    return out


def _has_probabilities(path: Path) -> bool:
    try:
        with open(path, newline="") as handle:
            header = handle.readline().strip().split(",")
    except OSError:
        return False
    return sum(c.startswith("prob_") for c in header) >= 2


@dataclass
class Pooled:
    """Stacked test predictions: one row per (job, image)."""

    class_names: list[str]
    paths: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)

    def add(self, paths: Sequence[str], labels: np.ndarray, probs: np.ndarray) -> None:
        self.paths += list(paths)
        self.labels.append(np.asarray(labels, dtype=np.int64))
        self.probs.append(np.asarray(probs, dtype=np.float64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.labels), np.concatenate(self.probs)


def _labels_and_probs(run: RunPredictions, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    _, labels, probs = align([run], class_names)
    return labels, probs[0]


def _pooled_report(pooled: Pooled, n_resamples: int, confidence: float, seed: int):
    labels, probs = pooled.arrays()
    return cluster_bootstrap_report(
        labels,
        probs,
        pooled.paths,
        pooled.class_names,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )


def _split_report(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    values, intervals = {}, {}
    for key, value in report.items():
        if key.endswith("_ci95") or not key.startswith("test/"):
            continue
        if key.split("/", 1)[1] in COUNT_KEYS or not _finite(value):
            continue
        values[key] = float(value)
        if report.get(f"{key}_ci95"):
            intervals[key] = [float(x) for x in report[f"{key}_ci95"]]
    return values, intervals


def _point_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]):
    table = metric_table(labels[None], probs[None], class_names)
    return {f"test/{k}": float(v[0]) for k, v in table.items() if math.isfinite(float(v[0]))}


# --------------------------------------------------------------------------- the board


@dataclass
class Leaderboard:
    """A built leaderboard: rows (dicts, sorted), the jobs that did not finish, notes.

    Row keys: ``rank``, ``name``, ``kind`` (``configuration`` | ``ensemble``), ``method``,
    ``members``, ``overrides``, ``n_jobs``, ``n_finished``, ``n_failed``, ``n_incomplete``,
    ``seeds``, ``folds``, ``mean`` / ``std`` / ``n`` (metric → value), ``pooled`` (metric →
    value), ``pooled_ci95`` (metric → ``[low, high]``), ``pooled_rows``, ``pooled_images``.
    """

    sources: list[str]
    sort_by: str
    rows: list[dict[str, Any]]
    unfinished: list[Job]
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    fused: dict[str, list[list[Any]]] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        """Every metric some row has, the sort metric and the :data:`SHOWN` ones first."""
        seen: list[str] = []
        for row in self.rows:
            for key in [*row["mean"], *row["pooled"]]:
                if key not in seen:
                    seen.append(key)
        first = [m for m in (self.sort_by, *SHOWN) if m in seen]
        return list(dict.fromkeys([*first, *seen]))


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (losses, calibration error, distances)."""
    name = metric.rsplit("/", 1)[-1]
    return any(fragment in name for fragment in LOWER_IS_BETTER)


def _row_value(row: dict[str, Any], metric: str) -> float | None:
    value = row["mean"].get(metric, {}).get("mean") if metric in row["mean"] else None
    return value if value is not None else row["pooled"].get(metric)


def _resolve_sort(sort_by: str | None, rows: list[dict[str, Any]]) -> str:
    known = {k for r in rows for k in [*r["mean"], *r["pooled"]]}
    if sort_by is None:
        return next((m for m in DEFAULT_SORT if m in known), sorted(known)[0] if known else "")
    metric = sort_by if "/" in sort_by else f"test/{sort_by}"
    if rows and metric not in known:
        raise ConfigError(
            f"Expected argument `sort_by` to be a metric of the sweep, but got {sort_by!r} "
            f"({metric}); "
            f"its metrics are {sorted(known)}."
        )
    return metric


def _config_row(config: Configuration, n_resamples: int, confidence: float, seed: int):
    finished = config.finished
    row: dict[str, Any] = {
        "name": config.name,
        "kind": "configuration",
        "method": None,
        "members": None,
        "overrides": " ".join(config.key),
        "n_jobs": len(config.jobs),
        "n_finished": len(finished),
        "n_failed": sum(j.status == FAILED for j in config.jobs),
        "n_incomplete": sum(j.status == INCOMPLETE for j in config.jobs),
        "seeds": sorted({j.seed for j in finished if j.seed is not None}),
        "folds": sorted({j.fold for j in finished if j.fold is not None}),
        "mean": mean_std([_read_metrics(j) for j in finished]),
        "pooled": {},
        "pooled_ci95": {},
        "pooled_rows": None,
        "pooled_images": None,
    }
    files = [j.path / PREDICTIONS for j in finished]
    if files and all(_has_probabilities(f) for f in files):
        runs = [read_predictions(f) for f in files]
        pooled = Pooled(list(runs[0].class_names))
        for run in runs:
            labels, probs = _labels_and_probs(run, pooled.class_names)
            pooled.add(list(run.rows), labels, probs)
        _add_pooled(row, pooled, n_resamples, confidence, seed)
        return row, pooled.class_names
    return row, None


def _add_pooled(row: dict[str, Any], pooled: Pooled, n_resamples: int, confidence: float, seed):
    report = _pooled_report(pooled, n_resamples, confidence, seed)
    row["pooled"], row["pooled_ci95"] = _split_report(report)
    row["pooled_rows"], row["pooled_images"] = report["test/n"], report["test/n_clusters"]


def _select_members(configs: list[Configuration], members: Sequence[str] | None):
    if members is None:
        return configs
    chosen = []
    for member in members:
        found = [c for c in configs if member in (c.name, " ".join(c.key)) or member in c.key]
        if len(found) != 1:
            raise ConfigError(
                f"Expected each of `members` to name one configuration, but {member!r} matches "
                f"{len(found)}; the configurations are {[c.name for c in configs]}."
            )
        if found[0] not in chosen:
            chosen.append(found[0])
    if len(chosen) < 2:
        raise ConfigError(
            f"Expected `members` to name at least two configurations, but got {list(members)}."
        )
    return chosen


def _ensemble_rows(
    configs: list[Configuration],
    methods: Sequence[str],
    class_names: list[str],
    top_k: int | None,
    n_resamples: int,
    confidence: float,
    seed: int,
    notes: list[str],
    explicit: bool,
) -> tuple[list[dict[str, Any]], dict[str, list[list[Any]]]]:
    """Fuse ``configs`` per (seed, fold) with each method; pooled and mean ± std rows."""
    by_config: list[dict[tuple[int | None, int | None], Job]] = []
    for config in configs:
        seen: dict[tuple[int | None, int | None], Job] = {}
        for job in config.finished:
            unit = (job.seed, job.fold)
            if unit in seen:  # e.g. a sweep listed twice, or runs without a saved config
                notes.append(
                    f"{config.name!r} has two finished jobs at (seed, fold) {unit}: "
                    f"'{seen[unit].path}' and '{job.path}'; ensembles use the first."
                )
                continue
            seen[unit] = job
        by_config.append(seen)
    shared = set(by_config[0]).intersection(*map(set, by_config[1:]))
    missing = sorted(set().union(*map(set, by_config)) - shared, key=str)
    if missing:
        notes.append(
            f"Ensembles leave out (seed, fold) {missing}: not every member finished there."
        )
    if not shared:
        notes.append("No (seed, fold) where every member finished: no ensemble rows.")
        return [], {}
    units = sorted(shared, key=lambda u: (u[0] is None, u[0] or 0, u[1] is None, u[1] or 0))
    names = [c.name for c in configs]
    members = "+".join(names)
    aligned = []
    for unit in units:
        jobs = [m[unit] for m in by_config]
        try:
            aligned.append(
                align([read_predictions(j.path / PREDICTIONS) for j in jobs], class_names)
            )
        except DataSourceError as err:
            raise EnsembleMismatchError(
                f"Cannot ensemble {names} at seed {unit[0]}, fold {unit[1]}: their test sets "
                f"differ ({err}). Ensemble configurations tested on the same images "
                "(members=[...]) or leave ensembles out (methods=[])."
            ) from err
    has_val = all((m[u].path / VAL_PREDICTIONS).is_file() for m in by_config for u in units)
    rows, fused_csv = [], {}
    for method in methods:
        if method == "weighted_mean" and not has_val:
            note = (
                f"weighted_mean left out: not every member job has {VAL_PREDICTIONS} (its "
                "weights are fitted on the validation predictions)."
            )
            if explicit:
                log.warning(note)
            notes.append(note)
            continue
        pooled, per_unit, lines, fitted = Pooled(list(class_names)), [], [], []
        for unit, (paths, labels, probs) in zip(units, aligned, strict=True):
            weights = None
            if method == "weighted_mean":
                val = [read_predictions(m[unit].path / VAL_PREDICTIONS) for m in by_config]
                weights = fit_validation_weights(val, class_names)
                shown = {n: round(float(w), 4) for n, w in zip(names, weights, strict=True)}
                fitted.append({"seed": unit[0], "fold": unit[1], "weights": shown})
                log.info(f"weighted_mean at seed {unit[0]}, fold {unit[1]}: weights {shown}")
            fused, preds = fuse(
                method, probs, top_k=top_k if method == "fuzzy_rank" else None, weights=weights
            )
            pooled.add(paths, labels, fused)
            per_unit.append(_point_metrics(labels, fused, class_names))
            lines += [
                [
                    unit[0],
                    unit[1],
                    path,
                    class_names[y],
                    *[f"{v:.6f}" for v in row],
                    class_names[int(p)],
                ]
                for path, y, row, p in zip(paths, labels, fused, preds, strict=True)
            ]
        label = f"{method}_top{top_k}" if method == "fuzzy_rank" and top_k else method
        row: dict[str, Any] = {
            "name": f"ensemble:{label}({members})",
            "kind": "ensemble",
            "method": label,
            "members": names,
            "overrides": None,
            "n_jobs": len(units) * len(configs),
            "n_finished": len(units) * len(configs),
            "n_failed": 0,
            "n_incomplete": 0,
            "seeds": sorted({u[0] for u in units if u[0] is not None}),
            "folds": sorted({u[1] for u in units if u[1] is not None}),
            "mean": mean_std(per_unit),
        }
        if fitted:  # what produced the row: the weights fitted on each (seed, fold)'s validation
            row["weights"] = fitted
        _add_pooled(row, pooled, n_resamples, confidence, seed)
        rows.append(row)
        fused_csv[label] = lines
    return rows, fused_csv


def build_leaderboard(
    sources: str | Path | Sequence[str | Path],
    methods: Sequence[str] | None = None,
    members: Sequence[str] | None = None,
    sort_by: str | None = None,
    top_k: int | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Leaderboard:
    """Read a sweep and build its leaderboard (nothing is written; see :func:`write_leaderboard`).

    Args:
        sources: a multirun directory, a run directory, or a list of them.
        methods: fusion methods for ensemble rows; ``None``: every method of
            :data:`~osteolightning.ensemble.fusion.FUSIONS` that applies (``weighted_mean`` only
            where every member job has ``val_predictions.csv``); ``[]``: no ensembles.
        members: configurations to fuse (names as in the table, or overrides); ``None``: all
            classification configurations with finished jobs, when there are 2 to
            :data:`MAX_DEFAULT_MEMBERS` of them (more, e.g. a hyperparameter search's trials,
            give a note instead of ensemble rows).
        sort_by: the metric to sort by (``test/`` may be left out); ``None``: ``test/f1_macro``,
            or ``test/dice`` for segmentation sweeps. Larger is better except for losses,
            calibration errors and distances (:func:`lower_is_better`). Rows are sorted by the
            mean over jobs; rows without the metric come last.
        top_k: the fuzzy rank fusion's top-k option.
        n_resamples: cluster-bootstrap resamples of the pooled intervals.
        confidence: interval coverage.
        seed: bootstrap seed.

    Returns:
        The leaderboard.

    Raises:
        DataSourceError: no jobs, unreadable results, or ensemble members whose test sets differ.
        ConfigError: an unknown method, member or sort metric.
    """
    explicit = methods is not None
    methods = list(FUSIONS) if methods is None else [check_method(str(m)) for m in methods]
    jobs = find_jobs(sources)
    configs = group_configurations(jobs)
    notes: list[str] = []
    rows, class_names = [], None
    classifiers = []
    for config in configs:
        row, names = _config_row(config, n_resamples, confidence, seed)
        rows.append(row)
        if names is not None:
            if class_names is not None and sorted(names) != sorted(class_names):
                raise DataSourceError(
                    f"Configuration {config.name!r} has classes {names}, others {class_names}."
                )
            class_names = class_names or names
            classifiers.append(config)
    fused: dict[str, list[list[Any]]] = {}
    chosen = _select_members(configs, members) if members is not None else classifiers
    if members is not None and (bad := [c.name for c in chosen if c not in classifiers]):
        raise ConfigError(
            f"Expected `members` to be classification configurations with finished jobs, but "
            f"{bad} have none with probabilities in {PREDICTIONS}."
        )
    if methods and members is None and len(chosen) > MAX_DEFAULT_MEMBERS:
        notes.append(
            f"No ensemble rows: {len(chosen)} configurations are more than the "
            f"{MAX_DEFAULT_MEMBERS} fused by default; name them with members=[...]."
        )
    elif methods and len(chosen) >= 2 and class_names is not None:
        ensemble_rows, fused = _ensemble_rows(
            chosen, methods, class_names, top_k, n_resamples, confidence, seed, notes, explicit
        )
        rows += ensemble_rows
    elif methods and explicit and len(chosen) < 2:
        notes.append("No ensemble rows: fewer than two classification configurations finished.")
    metric = _resolve_sort(sort_by, rows)
    sign = 1.0 if lower_is_better(metric) else -1.0

    def order(row: dict[str, Any]) -> tuple[bool, float]:
        value = _row_value(row, metric)
        return (value is None, sign * value if value is not None else 0.0)

    rows.sort(key=order)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    unfinished = [j for j in jobs if j.status != FINISHED]
    items = [sources] if isinstance(sources, str | Path) else list(sources)
    return Leaderboard(
        sources=[str(Path(str(s)).expanduser().resolve()) for s in items],
        sort_by=metric,
        rows=rows,
        unfinished=unfinished,
        class_names=class_names,
        notes=notes,
        fused=fused,
    )


# --------------------------------------------------------------------------- outputs


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _mean_cell(row: dict[str, Any], metric: str) -> str:
    stats = row["mean"].get(metric)
    if not stats:
        return ""
    if stats["std"] is None:
        return f"{stats['mean']:.3f} (n=1)"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _pooled_cell(row: dict[str, Any], metric: str) -> str:
    value = row["pooled"].get(metric)
    if value is None:
        return ""
    ci = row["pooled_ci95"].get(metric)
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def shown_metrics(board: Leaderboard, limit: int = 5) -> list[str]:
    """The metrics of the Markdown table and the terminal: the sort metric first."""
    known = board.metrics
    shown = [m for m in (board.sort_by, *SHOWN) if m in known]
    shown += [m for m in known if m.startswith("test/dice") and m not in shown]
    return list(dict.fromkeys(shown))[:limit] or known[:limit]


def leaderboard_markdown(board: Leaderboard) -> str:
    """The leaderboard as Markdown: one table of rows, then the jobs that did not finish."""
    metrics = shown_metrics(board)
    pooled = any(row["pooled"] for row in board.rows)
    head = ["#", "name", "jobs", "seeds", "folds"]
    for m in metrics:
        short = m.removeprefix("test/")
        head.append(f"{short} (mean ± std)")
        if pooled:
            head.append(f"{short} (pooled [95 % CI])")
    lines = [
        f"Sorted by `{board.sort_by}` ({'lower' if lower_is_better(board.sort_by) else 'higher'}"
        " is better). mean ± std: over the finished jobs (seeds × folds); pooled: all their test "
        "predictions together, 95 % CI from a stratified bootstrap over images.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|",
    ]
    for row in board.rows:
        jobs = f"{row['n_finished']}/{row['n_jobs']}"
        cells = [
            str(row["rank"]),
            _md_escape(row["name"]),
            jobs,
            ",".join(map(str, row["seeds"])) or "-",
            ",".join(map(str, row["folds"])) or "-",
        ]
        for m in metrics:
            cells.append(_mean_cell(row, m))
            if pooled:
                cells.append(_pooled_cell(row, m))
        lines.append("| " + " | ".join(cells) + " |")
    if board.unfinished:
        lines += ["", f"Jobs that did not finish ({len(board.unfinished)}):", ""]
        lines += ["| job | status | overrides | reason |", "|---|---|---|---|"]
        for job in board.unfinished:
            lines.append(
                f"| {_md_escape(job.name)} | {job.status} | "
                f"{_md_escape(' '.join(job.overrides))} | {_md_escape(job.error or '')} |"
            )
    for note in board.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def leaderboard_table(board: Leaderboard) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)`` of ``leaderboard.csv`` (and the W&B table): per metric ``_mean``,
    ``_std``, ``_n``, ``_pooled``, ``_pooled_ci95_low``, ``_pooled_ci95_high``; missing values are
    ``None`` (empty in the CSV)."""
    header = [
        "rank",
        "name",
        "kind",
        "method",
        "members",
        "overrides",
        "n_jobs",
        "n_finished",
        "n_failed",
        "n_incomplete",
        "seeds",
        "folds",
        "pooled_rows",
        "pooled_images",
    ]
    metrics = board.metrics
    for m in metrics:
        header += [
            f"{m}_mean",
            f"{m}_std",
            f"{m}_n",
            f"{m}_pooled",
            f"{m}_pooled_ci95_low",
            f"{m}_pooled_ci95_high",
        ]
    out = []
    for row in board.rows:
        line: list[Any] = [
            row["rank"],
            row["name"],
            row["kind"],
            row["method"] or "",
            "+".join(row["members"] or []),
            row["overrides"] or "",
            row["n_jobs"],
            row["n_finished"],
            row["n_failed"],
            row["n_incomplete"],
            " ".join(map(str, row["seeds"])),
            " ".join(map(str, row["folds"])),
            row["pooled_rows"],
            row["pooled_images"],
        ]
        for m in metrics:
            stats = row["mean"].get(m) or {}
            ci = row["pooled_ci95"].get(m) or [None, None]
            line += [
                _num(stats.get("mean")),
                _num(stats.get("std")),
                stats.get("n"),
                _num(row["pooled"].get(m)),
                _num(ci[0]),
                _num(ci[1]),
            ]
        out.append(line)
    return header, out


def _num(value: float | None) -> float | None:
    return None if value is None else float(value)


def leaderboard_json(board: Leaderboard) -> dict[str, Any]:
    """Everything the leaderboard knows, as JSON-ready data."""
    return {
        "sources": board.sources,
        "sort_by": board.sort_by,
        "class_names": board.class_names,
        "rows": board.rows,
        "unfinished": [
            {
                "job": j.name,
                "path": str(j.path),
                "status": j.status,
                "overrides": list(j.overrides),
                "seed": j.seed,
                "fold": j.fold,
                "reason": j.error,
            }
            for j in board.unfinished
        ],
        "notes": board.notes,
    }


def plot_leaderboard(board: Leaderboard, path: str | Path) -> Path | None:
    """``leaderboard.png``: the sort metric per row, mean ± std (error bar) and, where there is
    one, the pooled value with its 95 % interval. ``None`` (nothing written) without values."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    metric = board.sort_by
    rows = [r for r in board.rows if _row_value(r, metric) is not None]
    if not rows:
        return None
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for i, row in zip(y, rows, strict=True):
        stats = row["mean"].get(metric)
        colour = "tab:orange" if row["kind"] == "ensemble" else "tab:blue"
        if stats:
            ax.errorbar(
                stats["mean"],
                i + 0.12,
                xerr=stats["std"] or 0.0,
                fmt="o",
                color=colour,
                capsize=3,
            )
        if metric in row["pooled"]:
            ci = row["pooled_ci95"].get(metric) or [row["pooled"][metric]] * 2
            value = row["pooled"][metric]
            ax.errorbar(
                value,
                i - 0.12,
                xerr=[[value - ci[0]], [ci[1] - value]],
                fmt="s",
                color=colour,
                alpha=0.55,
                capsize=3,
            )
    ax.set_yticks(y, [str(r["name"]) for r in rows])
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} per configuration ({Path(board.sources[0]).name})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    proxies = [
        Line2D([], [], marker="o", color="black", label="mean ± std over jobs"),
        Line2D([], [], marker="s", color="black", alpha=0.55, label="pooled, 95 % CI"),
        Line2D([], [], color="tab:blue", label="configuration"),
        Line2D([], [], color="tab:orange", label="ensemble"),
    ]
    fig.legend(handles=proxies, loc="outside lower center", ncols=4, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def default_output_dir(sources: str | Path | Sequence[str | Path]) -> Path | None:
    """``<multirun>/leaderboard`` for a single source directory, else ``None``."""
    items = [sources] if isinstance(sources, str | Path) else list(sources)
    return Path(str(items[0])).expanduser() / "leaderboard" if len(items) == 1 else None


def prepare_output_dir(out: str | Path, sources: Sequence[str], explicit: bool) -> Path:
    """The folder to write into: ``out`` when it is new, empty or a leaderboard of the same
    sources; otherwise ``out_1``, ``out_2``, ... (default folder) or an error (``explicit``).

    Raises:
        ConfigError: ``explicit`` and ``out`` holds files the leaderboard did not write (or
            the leaderboard of other sources).
    """
    out = Path(out)
    for i in range(1000):
        candidate = out if i == 0 else out.with_name(f"{out.name}_{i}")
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
        marker = _read_yaml(candidate / MARKER)
        if isinstance(marker, dict) and marker.get("sources") == list(sources):
            return candidate
        if explicit:
            what = "the leaderboard of other sources" if marker else "files it did not write"
            raise ConfigError(
                f"The output folder '{candidate}' holds {what}; refusing to write into it. "
                "Pass a new or empty folder as `out`, or leave `out` unset."
            )
    raise ConfigError(f"No free leaderboard folder next to '{out}' (tried 1000).")


def write_leaderboard(board: Leaderboard, out: str | Path | None = None) -> dict[str, Path]:
    """Write ``leaderboard.{csv,md,json,png}`` and ``ensemble_<method>_predictions.csv``.

    Args:
        board: from :func:`build_leaderboard`.
        out: the folder; ``None``: ``<multirun>/leaderboard`` (a folder already there that the
            leaderboard did not make, or made for other sources, gives ``leaderboard_1``, ...).
            A given ``out`` must be new, empty, or this leaderboard's own folder.

    Returns:
        Output name → path.

    Raises:
        ConfigError: ``out`` given and taken (see :func:`prepare_output_dir`), or no ``out`` for
            several sources.
    """
    explicit = out is not None
    target = Path(out) if out is not None else default_output_dir(board.sources)
    if target is None:
        raise ConfigError("Several sources: pass `out` (a folder for the leaderboard).")
    folder = prepare_output_dir(target, board.sources, explicit)
    folder.mkdir(parents=True, exist_ok=True)
    old = _read_yaml(folder / MARKER)
    files: dict[str, Path] = {}
    header, rows = leaderboard_table(board)
    files["csv"] = atomic_write_csv(folder / "leaderboard.csv", header, rows)
    files["md"] = atomic_write_text(folder / "leaderboard.md", leaderboard_markdown(board))
    files["json"] = atomic_write_json(folder / "leaderboard.json", leaderboard_json(board))
    if (png := plot_leaderboard(board, folder / "leaderboard.png")) is not None:
        files["png"] = png
    names = board.class_names or []
    for method, lines in board.fused.items():
        header = ["seed", "fold", "path", "label", *[f"prob_{c}" for c in names], "prediction"]
        path = folder / f"ensemble_{method}_predictions.csv"
        files[f"ensemble_{method}"] = atomic_write_csv(path, header, lines)
    if isinstance(old, dict):  # files of an earlier build of this leaderboard that are gone now
        for name in old.get("files", []):
            stale = folder / name
            if name not in {p.name for p in files.values()} and stale.is_file():
                stale.unlink()
    atomic_write_json(
        folder / MARKER, {"sources": board.sources, "files": [p.name for p in files.values()]}
    )
    return files


def log_leaderboard_to_wandb(
    board: Leaderboard,
    files: dict[str, Path],
    project: str = "osteolightning",
    group: str | None = None,
    offline: bool = True,
    save_dir: str | Path | None = None,
) -> bool:
    """Log the table (and figure) to a W&B run of its own in the sweep's group.

    Args:
        board: the leaderboard.
        files: from :func:`write_leaderboard` (the figure is logged when there is one).
        project: W&B project.
        group: W&B group; the multirun directory's name by default (the sweep's jobs' group).
        offline: log offline (``wandb sync`` later) instead of online.
        save_dir: where W&B writes (``<save_dir>/wandb``); the leaderboard folder by default.

    Returns:
        Whether anything was logged (``False`` when wandb is not installed).
    """
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed: the leaderboard is not logged to W&B.")
        return False
    group = group or Path(board.sources[0]).name
    save_dir = Path(save_dir or files["csv"].parent)
    header, rows = leaderboard_table(board)
    run = wandb.init(
        project=project,
        group=group,
        job_type="leaderboard",
        name=f"leaderboard-{group}",
        dir=str(save_dir),
        mode="offline" if offline else "online",
        config={"sources": board.sources, "sort_by": board.sort_by},
        reinit="finish_previous",
    )
    try:
        payload: dict[str, Any] = {"leaderboard": wandb.Table(columns=header, data=rows)}
        if "png" in files:
            payload["leaderboard_plot"] = wandb.Image(str(files["png"]))
        run.log(payload)
        run.summary["sort_by"] = board.sort_by
        if board.rows:
            run.summary["best"] = board.rows[0]["name"]
    finally:
        run.finish()
    return True


def print_leaderboard(board: Leaderboard) -> None:
    """Print the Markdown table (the terminal shows it as is)."""
    print(leaderboard_markdown(board), flush=True)


def run_leaderboard(
    sources: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    wandb: bool = False,
    wandb_project: str = "osteolightning",
    wandb_offline: bool = True,
    wandb_group: str | None = None,
    **options: Any,
) -> tuple[Leaderboard, dict[str, Path]]:
    """Build, write, print and (optionally) log a leaderboard: what ``osteo-ensemble sweep=...``
    and :class:`LeaderboardCallback` do.

    Args:
        sources: multirun or run directories.
        out: output folder (see :func:`write_leaderboard`).
        wandb: log the table and figure to W&B.
        wandb_project: W&B project.
        wandb_offline: W&B offline mode.
        wandb_group: W&B group; the multirun directory's name by default.
        **options: :func:`build_leaderboard`'s options.

    Returns:
        ``(board, files)``.
    """
    board = build_leaderboard(sources, **options)
    files = write_leaderboard(board, out)
    print_leaderboard(board)
    log.info(f"Leaderboard of {len(board.rows)} rows written to {files['csv'].parent}")
    if wandb:
        log_leaderboard_to_wandb(
            board, files, project=wandb_project, group=wandb_group, offline=wandb_offline
        )
    return board, files


# --------------------------------------------------------------------------- Hydra callback


class LeaderboardCallback(HydraCallback):
    """Hydra callback: when a multirun ends, build the leaderboard of its directory.

    Configured in ``conf/hydra/default.yaml`` under ``hydra.callbacks.leaderboard``, so every
    ``osteo-train -m`` sweep ends with ``<multirun>/leaderboard/`` and the Markdown table on the
    terminal. It logs and never raises: a leaderboard failure must not hide the sweep's results.

    Args:
        enabled: ``false`` switches it off (``hydra.callbacks.leaderboard.enabled=false``).
        tasks: the ``task_name`` values it runs for (``train``, ``segment``).
        methods, members, sort_by, top_k: as :func:`build_leaderboard`.
        n_resamples: bootstrap resamples; ``None``: the sweep's ``evaluation.n_resamples``.
        wandb: log to W&B; ``None``: when the sweep's jobs log to W&B (``logger.wandb``), with
            their project and offline setting.
    """

    def __init__(
        self,
        enabled: bool = True,
        tasks: Sequence[str] = ("train", "segment"),
        methods: Sequence[str] | None = None,
        members: Sequence[str] | None = None,
        sort_by: str | None = None,
        top_k: int | None = None,
        n_resamples: int | None = None,
        wandb: bool | None = None,
    ) -> None:
        self.enabled, self.tasks = bool(enabled), [str(t) for t in tasks]
        self.methods = None if methods is None else [str(m) for m in methods]
        self.members = None if members is None else [str(m) for m in members]
        self.sort_by, self.top_k, self.n_resamples, self.wandb = sort_by, top_k, n_resamples, wandb

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or str(config.get("task_name")) not in self.tasks:
            return
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            evaluation = config.get("evaluation") or {}
            wandb_cfg = OmegaConf.select(config, "logger.wandb", default=None)
            use_wandb = self.wandb if self.wandb is not None else wandb_cfg is not None
            options = dict(
                members=self.members,
                sort_by=self.sort_by,
                top_k=self.top_k,
                n_resamples=int(self.n_resamples or evaluation.get("n_resamples", 1000)),
                seed=int(evaluation.get("seed", 0)),
                wandb=bool(use_wandb),
                wandb_project=str((wandb_cfg or {}).get("project") or "osteolightning"),
                wandb_offline=bool((wandb_cfg or {}).get("offline", True)),
            )
            try:
                run_leaderboard(sweep_dir, methods=self.methods, **options)
            except EnsembleMismatchError as err:  # e.g. a sweep over the split: no ensembles
                log.warning(f"{err} The leaderboard is written without ensemble rows.")
                run_leaderboard(sweep_dir, methods=[], **options)
        except Exception as err:  # never hide the sweep's results behind a leaderboard error
            log.error(
                f"The leaderboard of the sweep failed ({type(err).__name__}: {err}); the jobs' "
                "results are intact. Build it again with `osteo-ensemble sweep=<multirun dir>`.",
                exc_info=err,
            )


__all__ = [
    "Configuration",
    "EnsembleMismatchError",
    "Job",
    "Leaderboard",
    "LeaderboardCallback",
    "build_leaderboard",
    "configuration_key",
    "find_jobs",
    "group_configurations",
    "leaderboard_markdown",
    "log_leaderboard_to_wandb",
    "mean_std",
    "plot_leaderboard",
    "read_job",
    "run_leaderboard",
    "write_leaderboard",
]
