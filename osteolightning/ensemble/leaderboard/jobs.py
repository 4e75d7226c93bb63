"""A sweep's jobs, read from their files alone, and grouped into configurations.

A job is a run directory (an ``osteo-train`` run or a multirun job); its status is
``finished`` (``metrics.json``), ``failed`` (``error.json``) or ``incomplete`` (neither). A
configuration is the jobs whose overrides differ only in ``seed`` and ``data.fold``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from osteolightning.errors import DataSourceError
from osteolightning.runs import lifecycle, rundir
from osteolightning.runs.sweep import describe_error

FINISHED, FAILED, INCOMPLETE = "finished", "failed", "incomplete"
#: Override keys that tell the jobs of one configuration apart (never part of a configuration).
REPEAT_KEYS = ("seed", "data.fold")
#: Override keys (and prefixes) that are bookkeeping, not configuration (``resume=<job dir>``
#: is how a resumed sweep continues a killed job).
IGNORED_KEYS = ("hydra", "resume")
IGNORED_PREFIXES = ("hydra.", "hydra/", "paths.")


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
    """Overrides that define a configuration: all but ``seed``, ``data.fold``, ``resume``,
    ``hydra.*`` and ``paths.*`` (``+``/``~`` prefixes ignored), sorted.

    Example:
        >>> configuration_key(["seed=1", "model/backbone=vgg16", "data.fold=2", "paths.log_dir=x"])
        ('model/backbone=vgg16',)
    """
    kept = []
    for override in overrides:
        key = _override_key(override)
        if key in REPEAT_KEYS or key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES):
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
    config = _read_yaml(path / rundir.CONFIG) or {}
    data = config.get("data") if isinstance(config, dict) else None
    data = data if isinstance(data, dict) else {}
    seed = _as_int(given.get("seed", config.get("seed") if isinstance(config, dict) else None))
    folds = _as_int(given.get("data.num_folds", data.get("num_folds")))
    fold = _as_int(given.get("data.fold", data.get("fold"))) if folds else None
    return seed, fold


def _error_of(path: Path) -> str:
    record = _read_yaml(path / rundir.ERROR)  # JSON is YAML
    if not isinstance(record, dict):
        return f"unreadable {path / rundir.ERROR}"
    return describe_error(record)


def _incomplete_reason(path: Path) -> str:
    marker = lifecycle.read_marker(path)
    state = marker.get("state") if isinstance(marker, dict) else None
    if state:
        return f"no {rundir.METRICS} (run state: {state})"
    return f"no {rundir.METRICS} and no {rundir.ERROR} (never started, still running, or killed)"


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
    raw = _read_yaml(path / rundir.OVERRIDES)
    overrides = tuple(str(o) for o in raw) if isinstance(raw, list) else ()
    seed, fold = _seed_and_fold(path, overrides)
    if (path / rundir.ERROR).is_file():
        status, error = FAILED, _error_of(path)
    elif (path / rundir.METRICS).is_file():
        status, error = FINISHED, None
    else:
        status, error = INCOMPLETE, _incomplete_reason(path)
    return Job(path, name or path.name, overrides, status, seed, fold, error)


def _is_job_dir(path: Path) -> bool:
    return any(
        (path / f).exists() for f in (rundir.HYDRA_DIR, rundir.METRICS, rundir.ERROR, rundir.MARKER)
    )


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
                if p.is_dir() and not p.name.startswith((".", rundir.LEADERBOARD))
            ),
            key=_job_order,
        )
        runs = [p for p in subdirs if _is_job_dir(p)]
        if (path / rundir.MULTIRUN).is_file() or (runs and not _is_job_dir(path)):
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
