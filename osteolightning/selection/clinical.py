"""Does the image add anything to the record? The recipes of a study side by side on the same
knees: pooled out-of-fold class and T-score metrics with intervals, and paired comparisons of
every recipe against one baseline recipe (the record alone).

Every recipe of a nested cross-validation's ``every_recipe`` table was tested on the same outer
folds, so each image has one out-of-fold prediction per recipe and two recipes are compared
image by image:

* the **paired bootstrap** of the difference in balanced accuracy, macro F1 and macro AUROC
  (one cluster bootstrap over images applied to both:
  :func:`~osteolightning.metrics.compare.paired_bootstrap`) and of the T-score MAE
  (:func:`~osteolightning.metrics.compare.paired_bootstrap_scores` of absolute errors);
* **DeLong** per class, one vs rest (:func:`~osteolightning.metrics.compare.delong_ovr`);
* **Holm** over the recipes compared with the baseline, per test and metric.

The T-score rows (:func:`target_report`) give the MAE, RMSE, Pearson r, Spearman rho,
concordance (Lin's CCC), Bland–Altman bias and limits of agreement, each with a cluster
bootstrap interval, and the split-conformal intervals' empirical coverage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from osteolightning.metrics.compare import (
    delong_ovr,
    holm,
    paired_bootstrap,
    paired_bootstrap_scores,
)
from osteolightning.metrics.regression import empirical_coverage, regression_report
from osteolightning.runs import rundir
from osteolightning.selection.nested import Pool

#: the class metrics compared
COMPARED = ("balanced_acc", "f1_macro", "auroc_macro")


def _target_rows(run_dirs: Sequence[Path], target: str) -> dict[str, np.ndarray]:
    rows: dict[str, np.ndarray] = {}
    for run in run_dirs:
        rows.update(rundir.read_target_predictions(Path(run) / rundir.PREDICTIONS, target))
    return rows


def target_report(
    run_dirs: Sequence[Path], target: str = "t_score", n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any] | None:
    """The pooled regression metrics of ``run_dirs``' test predictions (their
    ``<target>_pred`` column), with 95 % cluster-bootstrap intervals, and the conformal
    intervals' coverage (``test/<target>_coverage``); ``None`` for a model without a regression
    head."""
    rows = _target_rows(run_dirs, target)
    values = np.array(list(rows.values())).reshape(-1, 4)
    known = ~np.isnan(values[:, 0]) & ~np.isnan(values[:, 1])
    if known.sum() < 2:
        return None
    paths = [p for p, k in zip(rows, known, strict=True) if k]
    truth, pred, low, high = values[known].T
    report = regression_report(
        truth, pred, f"test/{target}_", n_resamples=n_resamples, seed=seed, clusters=paths
    )
    bounded = ~np.isnan(low) & ~np.isnan(high)
    if bounded.any():
        report[f"test/{target}_coverage"] = empirical_coverage(
            truth[bounded], low[bounded], high[bounded]
        )
        report[f"test/{target}_coverage_n"] = int(bounded.sum())
    return report


def _aligned(a: Pool, b: Pool) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The images both pools tested once: paths, labels, probabilities of A and of B."""
    index_b = {p: i for i, p in enumerate(b.paths)}
    paths = [p for p in a.paths if p in index_b]
    ia = [a.paths.index(p) for p in paths]
    ib = [index_b[p] for p in paths]
    labels = np.array(a.labels)[ia]
    return paths, labels, np.stack(a.probs)[ia], np.stack(b.probs)[ib]


def _abs_errors(rows: Mapping[str, np.ndarray], paths: Sequence[str]) -> np.ndarray:
    return np.array([abs(rows[p][1] - rows[p][0]) if p in rows else np.nan for p in paths])


def compare_with(
    recipes: Mapping[str, Sequence[Path]],
    baseline: str,
    target: str = "t_score",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every recipe against ``baseline`` on the images both tested (see the module).

    Args:
        recipes: recipe name → its outer runs (each image tested once across them).
        baseline: the recipe the others are compared with (the record alone).
        target: the regression target compared by MAE where both recipes predict it.
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        recipe → ``{"n", "bootstrap": {metric: paired result}, "delong": {class: result},
        "t_mae": paired result or None}``; Holm-adjusted p-values under ``"holm"`` keys of each
        result (family: the recipes compared, per test and metric).
    """
    pools = {}
    for name, runs in recipes.items():
        pool = Pool()
        for run in runs:
            pool.add_run(Path(run))
        pools[name] = pool
    base = pools[baseline]
    base_targets = _target_rows(recipes[baseline], target)
    out: dict[str, Any] = {}
    for name, pool in pools.items():
        if name == baseline:
            continue
        paths, labels, probs, probs_base = _aligned(pool, base)
        names = pool.class_names or []
        result: dict[str, Any] = {
            "n": len(paths),
            "bootstrap": paired_bootstrap(
                labels, probs, probs_base, paths, names, COMPARED, n_resamples, seed
            ),
            "delong": delong_ovr(labels, probs, probs_base, names),
            "t_mae": None,
        }
        targets = _target_rows(recipes[name], target)
        if targets and base_targets:
            errors, errors_base = _abs_errors(targets, paths), _abs_errors(base_targets, paths)
            if np.isfinite(errors).sum() >= 2 and np.isfinite(errors_base).sum() >= 2:
                result["t_mae"] = paired_bootstrap_scores(
                    errors, errors_base, paths, n_resamples, seed
                )
        out[name] = result
    _holm(out)
    return out


def _holm(results: dict[str, Any]) -> None:
    """Holm over the recipes, per metric of the bootstrap, per class of DeLong, and the MAE."""
    families: dict[tuple[str, str], dict[str, dict]] = {}
    for name, result in results.items():
        for metric, r in result["bootstrap"].items():
            families.setdefault(("bootstrap", metric), {})[name] = r
        for cls, r in result["delong"].items():
            families.setdefault(("delong", cls), {})[name] = r
        if result["t_mae"] is not None:
            families.setdefault(("t_mae", ""), {})[name] = result["t_mae"]
    for members in families.values():
        adjusted = holm({n: r.get("p_value") for n, r in members.items()})
        for n, r in members.items():
            r["holm"] = adjusted[n]


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_ci(report: Mapping[str, Any] | None, key: str) -> str:
    if not report or report.get(key) is None:
        return "–"
    ci = report.get(f"{key}_ci95")
    return f"{report[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{report[key]:.3f}"


def markdown(result: Mapping[str, Any], target: str = "t_score") -> str:
    """The study's tables: one row per recipe (class metrics, T-score MAE, permutation p), the
    T-score agreement, and the paired differences against the baseline."""
    rows = result["every_recipe"]
    base = result.get("majority_class") or {}
    lines = [
        "| recipe | balanced accuracy | macro F1 | macro AUROC | T-score MAE | p (labels) "
        "| p (image given record) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| majority class | {_with_ci(base, 'test/balanced_acc')} | "
        f"{_with_ci(base, 'test/f1_macro')} | {_with_ci(base, 'test/auroc_macro')} | – | – | – |",
    ]
    for name, row in rows.items():
        pooled = row.get("pooled")
        if pooled is None:
            lines.append(f"| {name} | failed | | | | | |")
            continue
        perm, image = row.get("permutation"), row.get("image_permutation")
        lines.append(
            f"| {name} | {_with_ci(pooled, 'test/balanced_acc')} | "
            f"{_with_ci(pooled, 'test/f1_macro')} | {_with_ci(pooled, 'test/auroc_macro')} | "
            f"{_with_ci(row.get('target'), f'test/{target}_mae')} | "
            f"{_fmt(perm and perm['p_value'], 4)} | {_fmt(image and image['p_value'], 4)} |"
        )
    agreement = [(n, r["target"]) for n, r in rows.items() if r.get("target")]
    if agreement:
        lines += [
            "",
            f"{target} agreement (pooled out-of-fold; 95 % cluster-bootstrap intervals):",
            "",
            "| recipe | n | MAE | Pearson r | CCC | bias | limits of agreement | coverage |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        p = f"test/{target}_"
        for name, t in agreement:
            loa = f"{_fmt(t.get(p + 'loa_low'), 2)} to {_fmt(t.get(p + 'loa_high'), 2)}"
            lines.append(
                f"| {name} | {t[p + 'n']} | {_with_ci(t, p + 'mae')} | "
                f"{_with_ci(t, p + 'pearson_r')} | {_with_ci(t, p + 'ccc')} | "
                f"{_with_ci(t, p + 'bias')} | {loa} | {_fmt(t.get(p + 'coverage'), 3)} |"
            )
    paired = result.get("paired")
    if paired:
        lines += [
            "",
            f"Paired against `{paired['baseline']}` on the same knees (difference = recipe − "
            "baseline, 95 % paired cluster bootstrap; p and Holm over the recipes):",
            "",
            "| recipe | n | Δ balanced acc. | Δ macro F1 | Δ macro AUROC | Δ T-score MAE "
            "| DeLong p (Holm) per class |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for name, r in paired["recipes"].items():
            cells = [_diff(r["bootstrap"][m]) for m in COMPARED]
            delong = ", ".join(
                f"{c} {_fmt(d.get('p_value'), 3)} ({_fmt(d.get('holm'), 3)})"
                for c, d in r["delong"].items()
            )
            lines.append(
                f"| {name} | {r['n']} | " + " | ".join(cells) + f" | {_diff(r['t_mae'])} | "
                f"{delong} |"
            )
    return "\n".join(lines) + "\n"


def _diff(r: Mapping[str, Any] | None) -> str:
    if not r or r.get("diff") is None:
        return "–"
    ci = r.get("ci") or [None, None]
    return (
        f"{r['diff']:+.3f} [{_fmt(ci[0])}, {_fmt(ci[1])}], p {_fmt(r.get('p_value'))} "
        f"(Holm {_fmt(r.get('holm'))})"
    )
