"""The test report of a regression head: agreement of the predicted target (T-score or BMD)
with the truth, the coverage of its prediction intervals, and the class metrics of the WHO
categories of the predicted T-score.

Everything here is numpy on finished predictions; :class:`~osteolightning.callbacks.evaluation.
EvaluationWriter` calls :func:`target_report` beside the class head's
:func:`~osteolightning.metrics.report.evaluation_report`. Keys (``test/`` prefix, target
``t_score``): ``test/t_score_n``, ``test/t_score_n_missing`` (test images without a value,
left out), ``test/t_score_mae``, ``_rmse``, ``_r`` (Pearson), ``_rho`` (Spearman), ``_ccc``
(Lin), ``_bias``, ``_loa_low``, ``_loa_high`` (Bland-Altman), each with ``_ci95``;
``test/t_score_interval_coverage`` (with its interval), ``_interval_halfwidth``,
``_interval_nominal``, ``_interval_n_calibration``; and ``test/who_acc``, ``test/who_f1_macro``,
... (:func:`~osteolightning.metrics.report.evaluation_report` of the WHO categories). A BMD
target with a reference adds the same ``test/t_score_*`` keys for the T-scores derived from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from osteolightning.metrics.regression import (
    WHO_CUTOFFS,
    SplitConformal,
    empirical_coverage,
    regression_report,
    who_category,
    who_one_hot,
)
from osteolightning.metrics.report import (
    evaluation_report,
    percentile_interval,
    stratified_resample_indices,
)

#: the WHO categories' key prefix after the split's (``test/who_acc``)
WHO_PREFIX = "who_"


def bootstrap_mean(
    values: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> list[float] | None:
    """The 95 % percentile-bootstrap interval of the mean of ``(N,)`` values."""
    one_stratum = np.zeros(len(values), dtype=np.int64)
    idx = stratified_resample_indices(one_stratum, n_resamples, seed)
    return percentile_interval(np.asarray(values, dtype=np.float64)[idx].mean(axis=1))


def agreement(
    truth: np.ndarray,
    predicted: np.ndarray,
    name: str,
    prefix: str,
    n_resamples: int,
    seed: int,
) -> dict[str, object]:
    """:func:`~osteolightning.metrics.regression.regression_report` of the known values (NaN in
    ``truth``: unknown, counted as ``<name>_n_missing``), keys ``r`` / ``rho`` for Pearson and
    Spearman."""
    known = ~np.isnan(truth)
    out: dict[str, object] = {f"{prefix}{name}_n_missing": int((~known).sum())}
    if known.sum() == 0:
        out[f"{prefix}{name}_n"] = 0
        return out
    report = regression_report(
        truth[known], predicted[known], f"{prefix}{name}_", n_resamples, seed
    )
    renames = {"pearson_r": "r", "spearman_rho": "rho"}
    for key, value in report.items():
        for old, new in renames.items():
            key = key.replace(f"_{old}", f"_{new}")
        out[key] = value
    return out


def interval_report(
    truth: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    conformal: SplitConformal,
    name: str,
    prefix: str,
    n_resamples: int,
    seed: int,
) -> dict[str, object]:
    """Empirical coverage of the intervals on the known values, with its bootstrap interval,
    next to the nominal coverage, the half-width and the calibration size."""
    known = ~np.isnan(truth)
    out: dict[str, object] = {
        f"{prefix}{name}_interval_nominal": conformal.coverage,
        f"{prefix}{name}_interval_halfwidth": conformal.quantile,
        f"{prefix}{name}_interval_n_calibration": conformal.n_calibration,
    }
    if known.any():
        t, lo, hi = truth[known], low[known], high[known]
        covered = ((lo <= t) & (t <= hi)).astype(np.float64)
        out[f"{prefix}{name}_interval_coverage"] = empirical_coverage(t, lo, hi)
        out[f"{prefix}{name}_interval_coverage_ci95"] = bootstrap_mean(covered, n_resamples, seed)
    return out


def target_report(
    name: str,
    truth: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    t_truth: np.ndarray | None = None,
    t_predicted: np.ndarray | None = None,
    who: bool = True,
    cutoffs: Sequence[float] = WHO_CUTOFFS,
    conformal: SplitConformal | None = None,
    prefix: str = "test/",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """The regression head's report (see the module for the keys).

    Args:
        name: the target column (``t_score``, ``bmd``).
        truth: ``(N,)`` true target values, NaN where unknown.
        predicted: ``(N,)`` predictions.
        labels: ``(N,)`` true class indices (what the class head is scored against).
        class_names: the ``K`` classes.
        t_truth: ``(N,)`` true T-scores of a non-T-score target (NaN unknown), or None.
        t_predicted: ``(N,)`` T-scores derived from the predictions, or None (no T-score).
        who: the classes are the WHO categories: report the predicted T-score's.
        cutoffs: the WHO cut-offs.
        conformal: the calibrated intervals (on the target's scale), or None.
        prefix: key prefix.
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.
    """
    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    out = agreement(truth, predicted, name, prefix, n_resamples, seed)
    if conformal is not None:
        low, high = conformal.interval(predicted)
        out.update(interval_report(truth, low, high, conformal, name, prefix, n_resamples, seed))
    if name == "t_score":
        t_predicted = predicted
    elif t_predicted is not None and t_truth is not None:
        out.update(
            agreement(
                np.asarray(t_truth, dtype=np.float64),
                t_predicted,
                "t_score",
                prefix,
                n_resamples,
                seed,
            )  # fmt: skip
        )
    if who and t_predicted is not None:
        categories = who_category(np.round(np.asarray(t_predicted, dtype=np.float64), 6), cutoffs)
        out.update(
            evaluation_report(
                labels,
                who_one_hot(categories, len(class_names)),
                class_names,
                prefix=f"{prefix}{WHO_PREFIX}",
                n_resamples=n_resamples,
                seed=seed,
            )
        )
    return out
