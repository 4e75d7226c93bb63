"""The leaderboard itself: one row per configuration and per ensemble of configurations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osteolightning.ensemble.fusion import FUSIONS, check_method
from osteolightning.ensemble.leaderboard.jobs import (
    FAILED,
    FINISHED,
    INCOMPLETE,
    Configuration,
    Job,
    find_jobs,
    group_configurations,
)
from osteolightning.ensemble.leaderboard.stats import (
    Pooled,
    lower_is_better,
    mean_std,
    point_metrics,
    pooled_report,
    read_job_metrics,
)
from osteolightning.ensemble.members import Fused, align, fuse_runs
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.runs import rundir
from osteolightning.runs.rundir import has_probabilities, read_predictions
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

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


#: One ensemble's fusions: ``(seed, fold)`` → the fusion on that fold's test split.
Fusions = list[tuple[tuple[int | None, int | None], Fused]]


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
    fused: dict[str, Fusions] = field(default_factory=dict)
    #: each configuration row's finished jobs, by row name (ensemble rows: see ``fused``)
    jobs: dict[str, list[Job]] = field(default_factory=dict)

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


def row_value(row: dict[str, Any], metric: str) -> float | None:
    """A row's value of ``metric``: the mean over jobs, else the pooled value."""
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
        "mean": mean_std([read_job_metrics(j) for j in finished]),
        "pooled": {},
        "pooled_ci95": {},
        "pooled_rows": None,
        "pooled_images": None,
    }
    files = [j.path / rundir.PREDICTIONS for j in finished]
    if files and all(has_probabilities(f) for f in files):
        runs = [read_predictions(f) for f in files]
        pooled = Pooled(list(runs[0].class_names))
        for run in runs:
            pooled.add_run(run)
        _add_pooled(row, pooled, n_resamples, confidence, seed)
        return row, pooled.class_names
    return row, None


def _add_pooled(row: dict[str, Any], pooled: Pooled, n_resamples: int, confidence: float, seed):
    values, intervals, rows, images = pooled_report(pooled, n_resamples, confidence, seed)
    row["pooled"], row["pooled_ci95"] = values, intervals
    row["pooled_rows"], row["pooled_images"] = rows, images


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


Unit = tuple[int | None, int | None]


def _jobs_per_unit(configs: list[Configuration], notes: list[str]) -> list[dict[Unit, Job]]:
    """Each configuration's finished job per (seed, fold); a repeated unit keeps the first."""
    by_config: list[dict[Unit, Job]] = []
    for config in configs:
        seen: dict[Unit, Job] = {}
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
    return by_config


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
) -> tuple[list[dict[str, Any]], dict[str, Fusions]]:
    """Fuse ``configs`` per (seed, fold) with each method; pooled and mean ± std rows."""
    by_config = _jobs_per_unit(configs, notes)
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
    tests = {
        u: [read_predictions(m[u].path / rundir.PREDICTIONS) for m in by_config] for u in units
    }
    for unit, members in tests.items():
        try:
            align(members, class_names)
        except DataSourceError as err:
            raise EnsembleMismatchError(
                f"Cannot ensemble {names} at seed {unit[0]}, fold {unit[1]}: their test sets "
                f"differ ({err}). Ensemble configurations tested on the same images "
                "(members=[...]) or leave ensembles out (methods=[])."
            ) from err
    has_val = all((m[u].path / rundir.VAL_PREDICTIONS).is_file() for m in by_config for u in units)
    rows, fusions = [], {}
    for method in methods:
        if method == "weighted_mean" and not has_val:
            note = (
                f"weighted_mean left out: not every member job has {rundir.VAL_PREDICTIONS} (its "
                "weights are fitted on the validation predictions)."
            )
            if explicit:
                log.warning(note)
            notes.append(note)
            continue
        pooled, per_unit, fitted, done = Pooled(list(class_names)), [], [], []
        for unit in units:
            validation = None
            if method == "weighted_mean":
                validation = [
                    read_predictions(m[unit].path / rundir.VAL_PREDICTIONS) for m in by_config
                ]
            fused = fuse_runs(tests[unit], method, top_k, validation, class_names)
            if fused.weights is not None:  # what produced the row: each unit's fitted weights
                shown = {n: round(float(w), 4) for n, w in zip(names, fused.weights, strict=True)}
                fitted.append({"seed": unit[0], "fold": unit[1], "weights": shown})
                log.info(f"weighted_mean at seed {unit[0]}, fold {unit[1]}: weights {shown}")
            pooled.add(fused.paths, fused.labels, fused.probs)
            per_unit.append(point_metrics(fused.labels, fused.probs, class_names))
            done.append((unit, fused))
        label = done[0][1].label
        row: dict[str, Any] = {
            "name": f"ensemble:{label}({'+'.join(names)})",
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
        if fitted:
            row["weights"] = fitted
        _add_pooled(row, pooled, n_resamples, confidence, seed)
        rows.append(row)
        fusions[label] = done
    return rows, fusions


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
    fused: dict[str, Fusions] = {}
    chosen = _select_members(configs, members) if members is not None else classifiers
    if members is not None and (bad := [c.name for c in chosen if c not in classifiers]):
        raise ConfigError(
            f"Expected `members` to be classification configurations with finished jobs, but "
            f"{bad} have none with probabilities in {rundir.PREDICTIONS}."
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
        value = row_value(row, metric)
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
        jobs={c.name: c.finished for c in configs},
    )
