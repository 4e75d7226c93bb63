"""Statistics of a leaderboard's rows: mean ± std over jobs, and pooled out-of-fold metrics
with intervals from a stratified cluster bootstrap over images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from osteolightning.ensemble.leaderboard.jobs import Job
from osteolightning.ensemble.members import align
from osteolightning.metrics.report import cluster_bootstrap_report, metric_table
from osteolightning.runs import rundir
from osteolightning.runs.rundir import RunPredictions

#: Scalar ``metrics.json`` keys that are counts, not metrics (left out of the mean ± std).
COUNT_KEYS = ("n", "bootstrap_resamples", "n_clusters")
#: Metric-name fragments for which lower is better (sorting).
LOWER_IS_BETTER = ("loss", "ece", "hausdorff", "hd95", "asd", "mae", "rmse", "error")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_job_metrics(job: Job) -> dict[str, float]:
    """The scalar ``test/*`` metrics of a finished job (counts left out).

    Raises:
        DataSourceError: an unreadable ``metrics.json``.
    """
    metrics = rundir.read_metrics(job.path)
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


@dataclass
class Pooled:
    """Stacked test predictions: one row per (job, image)."""

    class_names: list[str]
    paths: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)

    def add_run(self, run: RunPredictions) -> None:
        """Add one job's test predictions (columns in this pool's class order)."""
        paths, labels, probs = align([run], self.class_names)
        self.add(paths, labels, probs[0])

    def add(self, paths: Sequence[str], labels: np.ndarray, probs: np.ndarray) -> None:
        self.paths += list(paths)
        self.labels.append(np.asarray(labels, dtype=np.int64))
        self.probs.append(np.asarray(probs, dtype=np.float64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.labels), np.concatenate(self.probs)


def pooled_report(
    pooled: Pooled, n_resamples: int, confidence: float, seed: int
) -> tuple[dict[str, float], dict[str, list[float]], int, int]:
    """The pooled metrics of ``pooled`` with cluster-bootstrap intervals (an image is a cluster).

    Returns:
        ``(values, intervals, rows, images)``: metric → value, metric → ``[low, high]``, and the
        counts of pooled rows and distinct images.
    """
    labels, probs = pooled.arrays()
    report = cluster_bootstrap_report(
        labels,
        probs,
        pooled.paths,
        pooled.class_names,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )
    values, intervals = {}, {}
    for key, value in report.items():
        if key.endswith("_ci95") or not key.startswith("test/"):
            continue
        if key.split("/", 1)[1] in COUNT_KEYS or not _finite(value):
            continue
        values[key] = float(value)
        if report.get(f"{key}_ci95"):
            intervals[key] = [float(x) for x in report[f"{key}_ci95"]]
    return values, intervals, int(report["test/n"]), int(report["test/n_clusters"])


def point_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """The metrics of one set of predictions (no intervals), undefined ones left out."""
    table = metric_table(labels[None], probs[None], class_names)
    return {f"test/{k}": float(v[0]) for k, v in table.items() if math.isfinite(float(v[0]))}


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (losses, calibration error, distances)."""
    name = metric.rsplit("/", 1)[-1]
    return any(fragment in name for fragment in LOWER_IS_BETTER)
