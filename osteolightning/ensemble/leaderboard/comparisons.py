"""Pairwise comparisons of a leaderboard's rows, and Demšar's critical-difference test.

For every pair of rows (configurations and ensembles), on the test rows both were tested on
(:mod:`.rowdata`; rows tested on different images are compared on the common ones and the pair
says so):

* **paired bootstrap** of the difference of each headline metric (balanced accuracy, macro F1,
  macro AUROC; Dice for segmentation): one stratified cluster bootstrap over images applied to
  both rows (:func:`~osteolightning.metrics.compare.paired_bootstrap`), 95 % interval and p-value;
* **DeLong** per class, one vs rest, for the AUROC and **McNemar** for accuracy (classifiers),
  on one row per image (probabilities averaged over the seeds an image was tested under);
* the **Nadeau–Bengio corrected resampled t-test** over the (seed, fold) units both rows have,
  each unit's metric on its common images, ``n_train`` / ``n_test`` from the jobs' ``splits.csv``.

Every family (one test of one metric over all pairs) is Holm-adjusted. A metric undefined for a
row (one class only in a fold) is undefined (``None``), never 0. The **Friedman test and Nemenyi
critical difference** rank the rows in every (seed, fold) unit where all of them have the sort
metric: with at least :data:`CD_MIN_ROWS` rows and :data:`CD_MIN_BLOCKS` units.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from osteolightning.ensemble.leaderboard.board import Leaderboard
from osteolightning.ensemble.leaderboard.rowdata import (
    Pair,
    RowData,
    pair_rows,
    per_image,
    row_data,
    split_sizes,
    unit_metric,
    unit_order,
)
from osteolightning.ensemble.leaderboard.stats import lower_is_better
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.metrics.compare import (
    corrected_resampled_ttest,
    delong_ovr,
    friedman_critical_difference,
    holm,
    mcnemar_test,
    paired_bootstrap,
    paired_bootstrap_scores,
)
from osteolightning.metrics.report import metric_table

#: The metrics compared for classifiers and for segmentation sweeps.
HEADLINE = ("test/balanced_acc", "test/f1_macro", "test/auroc_macro")
SEG_HEADLINE = ("test/dice",)
#: Readable names of the headline metrics.
LABELS = {
    "test/balanced_acc": "balanced accuracy",
    "test/f1_macro": "macro F1",
    "test/auroc_macro": "macro AUROC",
    "test/dice": "Dice",
    "test/acc": "accuracy",
}
#: The critical-difference diagram needs this many rows and (seed, fold) blocks.
CD_MIN_ROWS, CD_MIN_BLOCKS = 3, 5
#: The paired bootstrap draws at least ``RESOLUTION * pairs / alpha`` resamples: its p-value is
#: at least ``2 / (R + 1)``, and Holm multiplies the smallest by the number of pairs, so with
#: fewer resamples no difference could be significant however large (with 4: at most alpha / 2).
RESOLUTION = 4
#: Test names (the ``test`` column of comparisons.csv).
BOOTSTRAP, DELONG, MCNEMAR, TTEST = "paired_bootstrap", "delong", "mcnemar", "corrected_t"


@dataclass
class Comparisons:
    """Every pair's tests, the summary lines and the critical-difference result.

    Attributes:
        metrics: the compared metrics (``test/...``).
        summary_metric: the metric of the summary lines and the CD diagram.
        alpha: significance level (after Holm).
        pairs: one dict per pair of rows (see :func:`compare_leaderboard`).
        summary: one line per row ("A is better than 2 of 4 rows ...").
        critical_difference: :func:`friedman_critical_difference`'s dict plus ``metric`` and
            ``blocks``, or ``None`` (see ``notes``).
        per_unit: row → metric → ``[[seed, fold, value], ...]`` on the row's own test rows.
        notes: what was left out and why.
    """

    metrics: list[str]
    summary_metric: str
    alpha: float
    confidence: float
    n_resamples: int
    seed: int
    pairs: list[dict[str, Any]]
    summary: list[str]
    critical_difference: dict[str, Any] | None
    per_unit: dict[str, dict[str, list[list[Any]]]]
    notes: list[str] = field(default_factory=list)
    data: dict[str, RowData] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Everything but the predictions, JSON-ready (an infinite statistic, e.g. ``t`` of
        constant non-zero differences, as the string ``"inf"`` / ``"-inf"``)."""
        return _finite_json(
            {
                "metrics": self.metrics,
                "summary_metric": self.summary_metric,
                "alpha": self.alpha,
                "confidence": self.confidence,
                "n_resamples": self.n_resamples,
                "seed": self.seed,
                "holm": "over all pairs, per metric and test",
                "pairs": self.pairs,
                "summary": self.summary,
                "critical_difference": self.critical_difference,
                "per_unit": self.per_unit,
                "notes": self.notes,
            }
        )


def _finite_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_json(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return "nan" if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _bootstrap(pair: Pair, metrics, class_names, n_resamples, seed, confidence) -> dict:
    if pair.labels is None:
        result = paired_bootstrap_scores(
            pair.a, pair.b, pair.paths, n_resamples=n_resamples, seed=seed, confidence=confidence
        )
        return {metrics[0]: result}
    names = [m.removeprefix("test/") for m in metrics]
    result = paired_bootstrap(
        pair.labels,
        pair.a,
        pair.b,
        pair.paths,
        class_names,
        metrics=names,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )
    return {m: result[n] for m, n in zip(metrics, names, strict=True)}


def _unit_values(labels, values, idx, metrics, class_names) -> dict[str, float]:
    """Each metric on the rows ``idx`` (NaN where undefined)."""
    if labels is None:
        scores = values[idx]
        mean = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
        return dict.fromkeys(metrics, mean)
    table = metric_table(labels[idx][None], values[idx][None], class_names)
    return {m: float(table[m.removeprefix("test/")][0]) for m in metrics}


def _ttests(pair: Pair, metrics, class_names, data_a: RowData) -> tuple[dict, str | None]:
    """The corrected t-test of each metric over the pair's (seed, fold) units."""
    units = pair.units()
    if len(units) < 2:
        return {}, f"{len(units)} (seed, fold) unit in common: no corrected t-test"
    sizes = [s for u in units if (s := split_sizes(data_a.units[u].job)) is not None]
    if not sizes:
        return {}, "no splits.csv in the jobs (n_train, n_test unknown): no corrected t-test"
    n_train = int(round(np.mean([s[0] for s in sizes])))
    n_test = int(round(np.mean([s[1] for s in sizes])))
    per_unit = [
        (
            _unit_values(pair.labels, pair.a, idx, metrics, class_names),
            _unit_values(pair.labels, pair.b, idx, metrics, class_names),
        )
        for idx in units.values()
    ]
    out: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        diffs = [a[metric] - b[metric] for a, b in per_unit]
        diffs = [d for d in diffs if np.isfinite(d)]  # units where both rows define it
        base = {"n_units": len(diffs), "n_train": n_train, "n_test": n_test}
        if len(diffs) < 2 or n_train < 1 or n_test < 1:
            out[metric] = {**base, "mean": None, "t": None, "df": None, "p_value": None}
        else:
            out[metric] = {**base, **corrected_resampled_ttest(diffs, n_train, n_test)}
    return out, None


def _classifier_tests(pair: Pair, class_names: Sequence[str]) -> tuple[dict, dict]:
    _, labels, pa, pb = per_image(pair)
    delong = {}
    for name, result in delong_ovr(labels, pa, pb, class_names).items():
        delong[name] = {
            k: result[k] for k in ("auc_a", "auc_b", "diff", "z", "p_value", "n_pos", "n_neg")
        }
    mcnemar = mcnemar_test(labels, pa.argmax(1), pb.argmax(1))
    mcnemar["acc_a"] = float((pa.argmax(1) == labels).mean())
    mcnemar["acc_b"] = float((pb.argmax(1) == labels).mean())
    mcnemar["n_images"] = len(labels)
    return delong, mcnemar


def _compare_pair(a, b, data, metrics, class_names, n_resamples, seed, confidence) -> dict:
    entry: dict[str, Any] = {"a": a, "b": b, "status": "compared", "notes": []}
    try:
        pair = pair_rows(data[a], data[b])
        if len(pair.keys) < 2:
            raise DataSourceError(f"{a!r} and {b!r} share only {len(pair.keys)} test row.")
        entry["bootstrap"] = _bootstrap(pair, metrics, class_names, n_resamples, seed, confidence)
    except (DataSourceError, ConfigError) as err:
        return {**entry, "status": "not comparable", "notes": [str(err)], "note": str(err)}
    entry["n_rows"], entry["n_images"] = len(pair.keys), len(set(pair.paths))
    entry["n_units"] = len(pair.units())
    if (restriction := pair.restriction(a, b)) is not None:
        entry["status"] = "restricted"
        entry["notes"].append(restriction)
    entry["ttest"], why = _ttests(pair, metrics, class_names, data[a])
    if why:
        entry["notes"].append(why)
    if pair.labels is not None:
        entry["delong"], entry["mcnemar"] = _classifier_tests(pair, class_names)
    entry["note"] = "; ".join(entry["notes"]) or None
    return entry


def _adjust(pairs: list[dict[str, Any]]) -> None:
    """Holm over all pairs for each family (test, metric), written as ``p_holm``."""
    families: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pair in pairs:
        for test in ("bootstrap", "ttest", "delong"):
            for metric, result in (pair.get(test) or {}).items():
                families.setdefault((test, metric), []).append(result)
        if pair.get("mcnemar"):
            families.setdefault(("mcnemar", "acc"), []).append(pair["mcnemar"])
    # statsmodels' Holm ends with gc.collect(), which takes ~0.4 s in a process holding torch;
    # frozen objects are not scanned, so the ten families take milliseconds
    gc.freeze()
    try:
        for results in families.values():
            adjusted = holm([r.get("p_value") for r in results])
            for result, p in zip(results, adjusted, strict=True):
                result["p_holm"] = p
    finally:
        gc.unfreeze()


def verdict(pair: dict[str, Any], metric: str, alpha: float) -> str | None:
    """``"a"`` or ``"b"`` (the better row, significant after Holm), ``"tie"``, or ``None``
    (not comparable or the metric undefined)."""
    result = (pair.get("bootstrap") or {}).get(metric)
    if not result or result.get("p_holm") is None or result.get("diff") is None:
        return None
    if result["p_holm"] >= alpha:
        return "tie"
    better_a = (result["diff"] < 0) if lower_is_better(metric) else (result["diff"] > 0)
    return "a" if better_a else "b"


def summary_lines(names: list[str], pairs: list[dict[str, Any]], metric: str, alpha: float):
    """One line per row: better than / worse than / indistinguishable from / not compared."""
    lines = [
        f"{LABELS.get(metric, metric)}: paired bootstrap over images, Holm over the "
        f"{len(pairs)} pairs, α = {alpha:g}."
    ]
    for name in names:
        better, worse, ties, other = [], [], [], []
        for pair in pairs:
            if name not in (pair["a"], pair["b"]):
                continue
            rival = pair["b"] if pair["a"] == name else pair["a"]
            v = verdict(pair, metric, alpha)
            if v is None:
                other.append(rival)
            elif v == "tie":
                ties.append(rival)
            elif (v == "a") == (pair["a"] == name):
                better.append(rival)
            else:
                worse.append(rival)
        total = len(better) + len(worse) + len(ties) + len(other)
        line = (
            f"{name} is better than {len(better)} of {total} rows at α = {alpha:g} after Holm"
            + (f" ({', '.join(better)})" if better else "")
        )
        if worse:
            line += f"; worse than {', '.join(worse)}"
        if ties:
            line += f"; indistinguishable from {', '.join(ties)}"
        if other:
            line += f"; not compared (undefined or different images) with {', '.join(other)}"
        lines.append(line + ".")
    return lines


def _per_unit(data: dict[str, RowData], metrics, class_names) -> dict:
    return {
        name: {
            m: [
                [u[0], u[1], _none(unit_metric(rows, m, class_names))]
                for u, rows in sorted(row.units.items(), key=lambda x: unit_order(x[0]))
            ]
            for m in metrics
        }
        for name, row in data.items()
    }


def _none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def critical_difference(
    per_unit: dict[str, dict[str, list[list[Any]]]], metric: str, alpha: float
) -> tuple[dict[str, Any] | None, str | None]:
    """Friedman / Nemenyi over the (seed, fold) blocks where every row has ``metric``.

    Returns:
        ``(result, None)`` or ``(None, why not)``.
    """
    names = list(per_unit)
    if len(names) < CD_MIN_ROWS:
        return None, (
            f"No critical-difference diagram: it needs at least {CD_MIN_ROWS} rows, "
            f"got {len(names)}."
        )
    values = {n: {(s, f): v for s, f, v in per_unit[n][metric]} for n in names}
    blocks = [u for u in values[names[0]] if all(values[n].get(u) is not None for n in names)]
    if len(blocks) < CD_MIN_BLOCKS:
        return None, (
            f"No critical-difference diagram: it needs at least {CD_MIN_BLOCKS} (seed, fold) "
            f"units where every row has {metric}, got {len(blocks)}."
        )
    sign = -1.0 if lower_is_better(metric) else 1.0  # rank 1 = best
    scores = np.array([[sign * values[n][u] for n in names] for u in blocks])
    result = friedman_critical_difference(scores, names, alpha=alpha)
    return {**result, "metric": metric, "blocks": [list(u) for u in blocks]}, None


def resamples_for(n_pairs: int, alpha: float, n_resamples: int) -> int:
    """The paired bootstrap's resamples: ``n_resamples``, raised to
    ``ceil(RESOLUTION * n_pairs / alpha)`` so that Holm over ``n_pairs`` bootstrap p-values can
    reach ``alpha / 2`` (21 pairs at alpha 0.05: 1680)."""
    return max(int(n_resamples), int(np.ceil(RESOLUTION * n_pairs / alpha)))


def compare_leaderboard(
    board: Leaderboard,
    alpha: float = 0.05,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
) -> Comparisons:
    """Compare every pair of the leaderboard's rows (see the module docstring).

    Args:
        board: from :func:`~osteolightning.ensemble.leaderboard.build_leaderboard`.
        alpha: significance level of the summary and the critical difference.
        n_resamples: paired-bootstrap resamples, raised where needed (:func:`resamples_for`).
        confidence: interval coverage.
        seed: bootstrap seed.
        metrics: metrics to compare; ``None``: :data:`HEADLINE` (:data:`SEG_HEADLINE` for a
            segmentation sweep), those some row has.

    Returns:
        The comparisons. Each pair dict: ``a``, ``b`` (``a`` ranks higher), ``status``
        (``compared``, ``restricted``, ``not comparable``), ``note``, ``n_rows``, ``n_images``,
        ``n_units``, ``bootstrap`` (metric → ``a, b, diff, ci, p_value, p_holm, n_defined``),
        ``ttest`` (metric → ``mean, std, se, t, df, p_value, p_holm, n_units, n_train,
        n_test``) and for classifiers ``delong`` (class → ``auc_a, auc_b, diff, z, p_value,
        p_holm, n_pos, n_neg``) and ``mcnemar`` (``table, a_only, b_only, statistic, p_value,
        p_holm, exact, acc_a, acc_b, n_images``).

    Raises:
        ConfigError: ``alpha`` outside (0, 1), or an unknown metric.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"Expected argument `alpha` in (0, 1), but got {alpha}.")
    data, notes = row_data(board)
    classification = board.class_names is not None
    known = set(board.metrics)
    if metrics is None:
        metrics = [m for m in (HEADLINE if classification else SEG_HEADLINE) if m in known]
    else:
        metrics = [m if "/" in m else f"test/{m}" for m in metrics]
        if unknown := [m for m in metrics if m not in known]:
            raise ConfigError(
                f"Expected the compared metrics to be metrics of the sweep, but got {unknown}; "
                f"its metrics are {sorted(known)}."
            )
    if not classification and metrics not in ([], list(SEG_HEADLINE)):
        raise ConfigError(
            f"Expected the compared metrics of a segmentation sweep to be {list(SEG_HEADLINE)} "
            f"(the per-image scores predictions.csv holds), but got {metrics}."
        )
    metrics = list(metrics) or [board.sort_by]
    summary_metric = board.sort_by if board.sort_by in metrics else metrics[0]
    names = list(data)
    n_resamples = resamples_for(len(names) * (len(names) - 1) // 2, alpha, n_resamples)
    pairs = [
        _compare_pair(a, b, data, metrics, board.class_names, n_resamples, seed, confidence)
        for a, b in combinations(names, 2)
    ]
    _adjust(pairs)
    per_unit = _per_unit(data, metrics, board.class_names)
    cd, why = critical_difference(per_unit, summary_metric, alpha)
    if why:
        notes.append(why)
    return Comparisons(
        metrics=list(metrics),
        summary_metric=summary_metric,
        alpha=alpha,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        pairs=pairs,
        summary=summary_lines(names, pairs, summary_metric, alpha) if pairs else [],
        critical_difference=cd,
        per_unit=per_unit,
        notes=notes,
        data=data,
    )
