"""Choosing among recipes without peeking: nested, grouped cross-validation.

The outer folds estimate performance; inside each outer fold the inner folds choose the recipe
(a named list of overrides: a linear probe on some backbone and input size, the texture
baseline, fine-tuning, ...). Every run of an outer fold's selection is an *inner* run: the
outer test fold is left out of its data entirely (``data.inner_folds``; listed as
``excluded`` in its ``splits.csv``), its test split is one inner fold. The recipe whose pooled
inner out-of-fold predictions score best on ``select_by`` is then trained on the whole outer
training part (an *outer* run) and tested on the outer fold. The outer runs' predictions,
every image tested once, are the honest estimate of the whole procedure: its metrics with
cluster-bootstrap intervals, next to which recipe each fold chose.

:class:`NestedPlan` lists the jobs; :func:`choose` and :func:`report` read their run
directories (``predictions.csv``, ``metrics.json``) and write ``<sweep>/selection/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osteolightning.errors import ConfigError
from osteolightning.metrics.report import cluster_bootstrap_report, metric_table
from osteolightning.runs import rundir
from osteolightning.utils.files import atomic_write_json, atomic_write_text
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: the metrics of the report's table
SHOWN = ("balanced_acc", "f1_macro", "auroc_macro", "acc")


@dataclass(frozen=True)
class Job:
    """One run of the nested CV: its overrides and what it is for."""

    stage: str  # "inner" | "outer"
    outer: int
    recipe: str
    inner: int | None
    overrides: tuple[str, ...]


@dataclass
class NestedPlan:
    """The recipes and folds of a nested cross-validation.

    Args:
        recipes: name → overrides of each candidate.
        outer_folds: K of the outer, grouped, stratified K-fold.
        inner_folds: J of the inner K-fold on each outer training part.
        select_by: the metric of the pooled inner predictions that chooses (higher is better).
    """

    recipes: Mapping[str, Sequence[str]]
    outer_folds: int = 5
    inner_folds: int = 3
    select_by: str = "auroc_macro"

    def __post_init__(self) -> None:
        if len(self.recipes) < 1:
            raise ConfigError("Expected `recipes` to name at least one recipe (name: [overrides]).")
        if self.outer_folds < 2 or self.inner_folds < 2:
            raise ConfigError(
                f"Expected `outer_folds` and `inner_folds` >= 2, but got {self.outer_folds} and "
                f"{self.inner_folds}."
            )
        bad = [name for name in self.recipes if not name.replace("_", "").isalnum()]
        if bad:
            raise ConfigError(f"Recipe names must be letters, digits and _, but got {bad}.")

    def inner_jobs(self) -> list[Job]:
        """Every recipe on every inner fold of every outer fold."""
        return [
            Job(
                "inner",
                k,
                name,
                j,
                (
                    *self.recipes[name],
                    f"data.num_folds={self.outer_folds}",
                    f"data.fold={k}",
                    f"data.inner_folds={self.inner_folds}",
                    f"data.inner_fold={j}",
                ),
            )
            for k in range(self.outer_folds)
            for name in self.recipes
            for j in range(self.inner_folds)
        ]

    def outer_job(self, k: int, recipe: str, *extra: str) -> Job:
        """The chosen recipe on outer fold ``k`` (``extra``: e.g. a learning curve's share)."""
        return Job(
            "outer",
            k,
            recipe,
            None,
            (*self.recipes[recipe], f"data.num_folds={self.outer_folds}", f"data.fold={k}", *extra),
        )


# --------------------------------------------------------------------------- results


@dataclass
class Pool:
    """Predictions of several runs pooled: one row per (run, image)."""

    class_names: list[str] | None = None
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)

    def add_run(self, run_dir: Path) -> None:
        predictions = rundir.read_predictions(run_dir / rundir.PREDICTIONS)
        names = self.class_names = self.class_names or predictions.class_names
        order = [predictions.class_names.index(c) for c in names]
        for path, (label, probs) in predictions.rows.items():
            self.paths.append(path)
            self.labels.append(names.index(label))
            self.probs.append(probs[order])

    def metrics(self) -> dict[str, float]:
        """Point estimates of the pooled predictions (undefined ones left out)."""
        labels, probs = np.array(self.labels)[None], np.stack(self.probs)[None]
        table = metric_table(labels, probs, self.class_names or [])
        return {k: float(v[0]) for k, v in table.items() if math.isfinite(float(v[0]))}


def finished(run_dir: Path) -> bool:
    return (run_dir / rundir.METRICS).is_file() and (run_dir / rundir.PREDICTIONS).is_file()


def choose(
    plan: NestedPlan, inner_dirs: Mapping[Job, Path]
) -> tuple[dict[int, str], dict[int, dict[str, float | None]]]:
    """The recipe each outer fold chooses: the best ``select_by`` of its pooled inner
    predictions (ties: the earlier recipe). A recipe with a failed inner run is not chosen.

    Returns:
        ``(outer fold → recipe, outer fold → {recipe: score or None})``.

    Raises:
        ConfigError: an outer fold where every recipe failed.
    """
    chosen, scores = {}, {}
    for k in range(plan.outer_folds):
        scores[k] = {}
        for name in plan.recipes:
            runs = [d for job, d in inner_dirs.items() if job.outer == k and job.recipe == name]
            if len(runs) < plan.inner_folds or not all(map(finished, runs)):
                scores[k][name] = None
                continue
            pool = Pool()
            for run in runs:
                pool.add_run(run)
            scores[k][name] = pool.metrics().get(plan.select_by)
        valid = {n: s for n, s in scores[k].items() if s is not None}
        if not valid:
            raise ConfigError(
                f"Outer fold {k}: no recipe finished its inner runs; see the jobs' error.json."
            )
        chosen[k] = max(valid, key=lambda n: (valid[n], -list(plan.recipes).index(n)))
    return chosen, scores


def pooled_report(
    run_dirs: Sequence[Path], n_resamples: int = 1000, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any], Pool]:
    """The pooled test predictions of ``run_dirs`` (folds that test every image once): their
    metrics with 95 % cluster-bootstrap intervals, the majority-class guess's, and the pool."""
    pool = Pool()
    for run in run_dirs:
        pool.add_run(run)
    names = pool.class_names or []
    labels, probs = np.array(pool.labels), np.stack(pool.probs)
    pooled = cluster_bootstrap_report(
        labels, probs, pool.paths, names, n_resamples=n_resamples, seed=seed
    )
    majority = np.zeros_like(probs)
    majority[:, np.bincount(labels, minlength=len(names)).argmax()] = 1.0
    baseline = cluster_bootstrap_report(
        labels, majority, pool.paths, names, n_resamples=n_resamples, seed=seed
    )
    return pooled, baseline, pool


def report(
    plan: NestedPlan,
    chosen: Mapping[int, str],
    scores: Mapping[int, Mapping[str, float | None]],
    outer_dirs: Mapping[int, Path],
    out: Path,
    n_resamples: int = 1000,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``selection.json``, ``selection.md`` and the pooled ``predictions.csv`` into
    ``out`` (the sweep's ``selection/`` folder).

    Returns:
        ``selection.json``'s content: the pooled outer metrics with 95 % intervals (a cluster
        bootstrap over images), the majority-class baseline, the chosen recipes, the inner
        scores and the runs behind them.
    """
    pooled, baseline, pool = pooled_report(
        [outer_dirs[k] for k in range(plan.outer_folds)], n_resamples, seed
    )
    labels, probs = np.array(pool.labels), np.stack(pool.probs)
    rundir.write_predictions(
        out / rundir.PREDICTIONS, pool.paths, labels, probs, pool.class_names or []
    )
    result = {
        "select_by": plan.select_by,
        "outer_folds": plan.outer_folds,
        "inner_folds": plan.inner_folds,
        "recipes": {n: list(o) for n, o in plan.recipes.items()},
        "chosen": {str(k): r for k, r in chosen.items()},
        "inner_scores": {str(k): dict(v) for k, v in scores.items()},
        "outer_runs": {str(k): str(d) for k, d in outer_dirs.items()},
        "pooled": pooled,
        "majority_class": {k: v for k, v in baseline.items() if k.startswith("test/")},
        **(extra or {}),
    }
    atomic_write_json(out / "selection.json", result)
    atomic_write_text(out / "selection.md", markdown(result))
    return result


def _cell(report: Mapping[str, Any], metric: str) -> str:
    value, ci = report.get(f"test/{metric}"), report.get(f"test/{metric}_ci95")
    if value is None:
        return "undefined"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def markdown(result: Mapping[str, Any]) -> str:
    """The selection report: the estimate, the baseline, the choices, the null tests."""
    pooled, base = result["pooled"], result["majority_class"]
    lines = [
        f"Nested CV: {result['outer_folds']} outer × {result['inner_folds']} inner folds, "
        f"recipe chosen by pooled inner `{result['select_by']}`; "
        f"{pooled['test/n']} outer test predictions (95 % CI: cluster bootstrap over images).",
        "",
        "| | " + " | ".join(SHOWN) + " |",
        "|---|" + "---:|" * len(SHOWN),
        "| nested CV (the procedure) | " + " | ".join(_cell(pooled, m) for m in SHOWN) + " |",
        "| majority class | " + " | ".join(_cell(base, m) for m in SHOWN) + " |",
        "",
        "| outer fold | chosen | " + " | ".join(result["recipes"]) + " |",
        "|---|---|" + "---:|" * len(result["recipes"]),
    ]
    for k, recipe in result["chosen"].items():
        scores = result["inner_scores"][k]
        cells = ["failed" if scores[n] is None else f"{scores[n]:.3f}" for n in result["recipes"]]
        lines.append(f"| {k} | {recipe} | " + " | ".join(cells) + " |")
    if result.get("every_recipe"):
        lines += [
            "",
            "Every recipe on every outer fold (a comparison of recipes, each estimate "
            "optimistic by the choice among them; the nested CV above is the honest one):",
            "",
            "| recipe | " + " | ".join(SHOWN) + " | permutation p |",
            "|---|" + "---:|" * (len(SHOWN) + 1),
        ]
        for name, row in result["every_recipe"].items():
            if row.get("pooled") is None:
                lines.append(f"| {name} | " + " | ".join(["failed"] * len(SHOWN)) + " | |")
                continue
            test = row.get("permutation")
            p = f"{test['p_value']:.4f} ({test['n_permutations']})" if test else "not run"
            cells = " | ".join(_cell(row["pooled"], m) for m in SHOWN)
            lines.append(f"| {name} | {cells} | {p} |")
    if "permutation" in result:
        test = result["permutation"]
        lines += [
            "",
            f"Permutation test ({test['n_permutations']} label shuffles between image groups, "
            f"same folds): {test['metric']} {test['observed']:.3f} against a null mean of "
            f"{test['null_mean']:.3f} (95 % of the null ≤ {test['null_q95']:.3f}); "
            f"p = {test['p_value']:.4f}.",
        ]
    if "learning_curve" in result:
        lines += [
            "",
            "| training share | " + " | ".join(SHOWN) + " |",
            "|---|" + "---:|" * len(SHOWN),
        ]
        for point in result["learning_curve"]:
            lines.append(
                f"| {point['fraction']:.2f} | " + " | ".join(_cell(point, m) for m in SHOWN) + " |"
            )
    return "\n".join(lines) + "\n"
