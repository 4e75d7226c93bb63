"""What a study report tells beyond the numbers, read from the jobs' own files: the data audit
(``splits.csv``, ``skipped.csv``, ``label_conflicts.csv``), how the rows' configurations differ
(``.hydra/config.yaml``), and the command that reproduces each row."""

from __future__ import annotations

import csv
import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from osteolightning.ensemble.leaderboard.board import Leaderboard
from osteolightning.ensemble.leaderboard.jobs import FINISHED, Job, find_jobs
from osteolightning.errors import DataSourceError
from osteolightning.runs import rundir
from osteolightning.utils.config import flatten_config

#: Config keys that tell the jobs of one row apart or only say where files go.
NOT_CONFIGURATION = ("seed", "data.fold", "paths.", "hydra.", "resume", "reproduce", "ckpt_path")
#: Rows of a listing shown in the report before it says "and N more".
MAX_LISTED = 20


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []


def _spread(rows: list[dict[str, str]], column: str) -> int:
    """How many values of ``column`` (a copy group, a patient) occur in more than one split."""
    splits: dict[str, set[str]] = {}
    for row in rows:
        if row.get(column):
            splits.setdefault(row[column], set()).add(row["split"])
    return sum(len(s) > 1 for s in splits.values())


def audit_summary(jobs: Sequence[Job]) -> dict[str, Any]:
    """The data audit of a sweep, from every job's ``splits.csv``, ``skipped.csv`` and
    ``label_conflicts.csv``.

    Returns:
        ``jobs`` (one dict per job: ``job``, ``status``, ``seed``, ``fold``, the image count per
        split, ``classes`` (test split's class counts), ``leaking_groups`` and
        ``leaking_patients`` (copy groups / patients found in more than one split),
        ``skipped``, ``label_conflicts``), ``retested`` (images tested in more than one fold of
        one configuration and seed: 0 for a clean cross-validation), ``skipped`` and
        ``label_conflicts`` (distinct files with reasons / actions), ``missing`` (jobs without
        a ``splits.csv``).
    """
    rows, skipped, conflicts, missing = [], {}, {}, []
    tested: dict[tuple[tuple[str, ...], int | None], Counter] = {}
    for job in jobs:
        try:
            _, split = rundir.read_splits(job.path)
        except DataSourceError:
            missing.append(job.name)
            continue
        counts = Counter(r["split"] for r in split)
        test = [r for r in split if r["split"] == "test"]
        if job.status == FINISHED:
            tested.setdefault((job.key, job.seed), Counter()).update(r["path"] for r in test)
        for r in _read_csv(job.path / rundir.SKIPPED):
            skipped.setdefault(r.get("path", ""), r.get("reason", ""))
        job_conflicts = _read_csv(job.path / rundir.LABEL_CONFLICTS)
        for r in job_conflicts:
            conflicts.setdefault(
                r.get("path", ""), (r.get("group", ""), r.get("label", ""), r.get("action", ""))
            )
        rows.append(
            {
                "job": job.name,
                "status": job.status,
                "seed": job.seed,
                "fold": job.fold,
                **{s: counts.get(s, 0) for s in ("train", "val", "test")},
                "classes": dict(sorted(Counter(r.get("label", "") for r in test).items())),
                "leaking_groups": _spread(split, "group"),
                "leaking_patients": _spread(split, "patient_id"),
                "skipped": len(_read_csv(job.path / rundir.SKIPPED)),
                "label_conflicts": len(job_conflicts),
            }
        )
    retested = sum(1 for c in tested.values() for n in c.values() if n > 1)
    return {
        "jobs": rows,
        "retested": retested,
        "skipped": sorted(skipped.items()),
        "label_conflicts": [(p, *v) for p, v in sorted(conflicts.items())],
        "missing": missing,
    }


def _config(job: Job) -> dict[str, Any]:
    try:
        raw = yaml.safe_load((job.path / rundir.CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    flat = flatten_config(raw) if isinstance(raw, dict) else {}
    return {
        k: v
        for k, v in flat.items()
        if not any(k == p or k.startswith(p) for p in NOT_CONFIGURATION) and "${now:" not in str(v)
    }


def config_differences(board: Leaderboard) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The saved config keys whose values differ between the configuration rows (each row's
    first finished job's ``.hydra/config.yaml``; seeds, folds and paths left out).

    Returns:
        ``(keys, row → key → value)``; a key a row's config lacks is ``"<absent>"``.
    """
    configs = {name: _config(jobs[0]) for name, jobs in board.jobs.items() if jobs}
    configs = {name: c for name, c in configs.items() if c}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({repr(c.get(k, "<absent>")) for c in configs.values()}) > 1]
    return differing, {
        name: {k: c.get(k, "<absent>") for k in differing} for name, c in configs.items()
    }


def _hydra_string(value: str) -> str:
    """``value`` as a Hydra list element: quoted where it holds more than a plain name."""
    if all(c.isalnum() or c in "_-./" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sweep_value(board: Leaderboard) -> str:
    """The ``sweep=`` value that rebuilds ``board``: its directory, or a list of them."""
    if len(board.sources) == 1:
        return board.sources[0]
    return "[" + ",".join(_hydra_string(s) for s in board.sources) + "]"


def command(job: Job) -> str:
    """The ``osteo-train`` command that runs ``job`` again from its overrides (``hydra.mode=RUN``
    makes it one run even where the overrides name an experiment that sweeps)."""
    overrides = [o for o in job.overrides if not o.startswith("hydra.mode=")]
    return " ".join(["osteo-train", "hydra.mode=RUN", *map(shlex.quote, overrides)])


def reproduction(board: Leaderboard) -> list[dict[str, Any]]:
    """How to reproduce each row: per job, the ``osteo-train`` command from its overrides and
    ``osteo-train reproduce=<job>`` (from its saved config); ensemble rows: their members' jobs
    and the ``osteo-ensemble`` command that fuses them."""
    sweep = sweep_value(board)
    out = []
    for row in board.rows:
        if row["kind"] == "ensemble":
            method, top_k = row["method"], None
            if "_top" in method:  # fuzzy_rank_top2: the fuzzy rank fusion with top_k=2
                method, top_k = method.rsplit("_top", 1)
            members = ",".join(_hydra_string(m) for m in row["members"] or [])
            words = ["osteo-ensemble", f"sweep={sweep}", f"methods=[{method}]"]
            words += [f"members=[{members}]"] + ([f"top_k={top_k}"] if top_k else [])
            out.append(
                {
                    "row": row["name"],
                    "commands": [" ".join(map(shlex.quote, words))],
                    "note": "fuses the jobs of its member rows (reproduce those first)",
                }
            )
            continue
        jobs = board.jobs.get(row["name"], [])
        out.append(
            {
                "row": row["name"],
                "commands": [command(j) for j in jobs],
                "reproduce": [f"osteo-train reproduce={shlex.quote(str(j.path))}" for j in jobs],
                "note": None if jobs else "no finished job (see the jobs that did not finish)",
            }
        )
    return out


def failed_jobs(board: Leaderboard) -> list[dict[str, Any]]:
    """The jobs that did not finish, with the reason and the command that runs them again."""
    return [
        {
            "job": j.name,
            "status": j.status,
            "seed": j.seed,
            "fold": j.fold,
            "reason": j.error,
            "command": command(j),
        }
        for j in board.unfinished
    ]


def sweep_jobs(board: Leaderboard) -> list[Job]:
    """Every job of the board's sources (finished, failed and incomplete)."""
    try:
        return find_jobs(board.sources)
    except DataSourceError:
        return []
