"""Pairwise comparison of models in a sweep leaderboard: is A better than B, or is it noise?

- :func:`paired_bootstrap` / :func:`paired_bootstrap_scores`: both models on the same images,
  one stratified cluster bootstrap (:func:`~osteolightning.metrics.report.cluster_resample_indices`)
  applied to both, so the interval and p-value of ``a - b`` keep their correlation.
- :func:`delong_test` / :func:`delong_ovr`: DeLong et al. (1988) for two correlated AUROCs.
- :func:`mcnemar_test`: McNemar (1947) on which images each classifier gets right.
- :func:`corrected_resampled_ttest`: Nadeau & Bengio (2003) over folds x seeds.
- :func:`holm`: Holm (1979) step-down adjustment of a family of p-values.
- :func:`friedman_critical_difference`: Demšar (2006), many methods over many blocks (data
  sets, folds): Friedman test and Nemenyi critical difference (its diagram:
  :func:`osteolightning.metrics.compare_figures.plot_critical_difference`).

Undefined quantities (AUROC of an absent class, a test without positives) are ``None``, never 0.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from osteolightning.errors import ConfigError
from osteolightning.metrics.report import (
    cluster_resample_indices,
    metric_table,
    percentile_interval,
)

#: Discordant pairs below which McNemar's test uses the exact binomial distribution.
MCNEMAR_EXACT_BELOW = 25
#: The values of :func:`delong_test` (besides the counts ``n_pos``, ``n_neg``).
DELONG_KEYS = ("auc_a", "auc_b", "diff", "var_a", "var_b", "cov", "se", "z", "p_value")


def _vector(x: object, name: str, dtype: type = np.float64, min_len: int = 2) -> np.ndarray:
    """``x`` as a finite 1-D array of at least ``min_len`` entries (integers for an integer
    ``dtype``), or a ConfigError naming it."""
    arr = np.asarray(x)
    if arr.ndim != 1 or len(arr) < min_len:
        raise ConfigError(
            f"Expected argument `{name}` to be 1-D with at least {min_len} entries, but got "
            f"shape {arr.shape}."
        )
    kinds, what = ("iub", "integers") if dtype is np.int64 else ("iubf", "numbers")
    if arr.dtype.kind not in kinds or not np.isfinite(arr.astype(np.float64)).all():
        raise ConfigError(
            f"Expected argument `{name}` to hold finite {what}, but got dtype {arr.dtype} with "
            f"values like {arr[:3].tolist()}."
        )
    return arr.astype(dtype)


def _same_length(n: int, **arrays: Sequence[object]) -> None:
    for name, arr in arrays.items():
        if len(arr) != n:
            raise ConfigError(
                f"Expected argument `{name}` to have one entry per row ({n}), but got {len(arr)}."
            )


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ConfigError(
            f"Expected argument `n_resamples` to be a positive integer, but got {n_resamples}."
        )
    if not 0 < confidence < 1:
        raise ConfigError(f"Expected argument `confidence` in (0, 1), but got {confidence}.")


def _probs(p: np.ndarray, name: str, n: int, k: int) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != (n, k) or not np.isfinite(arr).all():
        raise ConfigError(
            f"Expected argument `{name}` to be finite of shape ({n}, {k}) (a row per label, a "
            f"column per class), but got {arr.shape}."
        )
    return arr


def _undefined(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _ratio(num: float, se: float) -> float:
    """``num / se``; for ``se == 0``: 0 if ``num == 0``, else ``±inf`` (a degenerate test)."""
    if se > 0:
        return num / se
    return 0.0 if num == 0 else float(np.copysign(np.inf, num))


def _summarise(a: float, b: float, boot_diff: np.ndarray, confidence: float) -> dict:
    """Point values, percentile interval and two-sided bootstrap p-value of ``a - b``.

    ``p = min(1, 2 min((#{d* <= 0} + 1) / (R + 1), (#{d* >= 0} + 1) / (R + 1)))`` over the
    ``R`` resamples where the difference is defined: twice the smaller tail, about the
    smallest ``alpha`` whose ``1 - alpha`` percentile interval excludes 0, with the +1 of
    Davison & Hinkley (1997, ch. 4) so that a finite bootstrap never reports ``p = 0``.
    """
    diff = a - b
    d = boot_diff[np.isfinite(boot_diff)]
    defined = bool(np.isfinite(diff)) and len(d) > 0
    p = None
    if defined:
        tail = min((d <= 0).sum(), (d >= 0).sum())
        p = float(min(1.0, 2.0 * (tail + 1) / (len(d) + 1)))
    return {
        "a": _undefined(a),
        "b": _undefined(b),
        "diff": _undefined(diff),
        "ci": percentile_interval(d, confidence) if defined else None,
        "p_value": p,
        "n_defined": int(len(d)),
    }


def paired_bootstrap(
    labels: Sequence[int],
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    clusters: Sequence[object],
    class_names: Sequence[str],
    metrics: Sequence[str] = ("balanced_acc", "f1_macro", "auroc_macro"),
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    max_bytes: int = 64 << 20,
) -> dict[str, dict]:
    """Paired stratified cluster bootstrap of the difference of two classifiers' metrics.

    Both models are scored on the same rows; every resample (Efron & Tibshirani 1993; a
    cluster is one image, drawn with all its rows) is applied to both, so the spread of
    ``metric(a) - metric(b)`` reflects their correlation. Metrics are
    :func:`~osteolightning.metrics.report.metric_table`'s.

    Args:
        labels: ``(N,)`` true class indices.
        probs_a: ``(N, K)`` probabilities of model A on those rows.
        probs_b: ``(N, K)`` probabilities of model B on the same rows, in the same order.
        clusters: ``N`` cluster keys (image paths).
        class_names: ``K`` class names.
        metrics: metric_table keys to compare.
        n_resamples: bootstrap resamples ``R``.
        seed: bootstrap seed.
        confidence: interval coverage.
        max_bytes: resamples are evaluated in chunks of about this many bytes per model.

    Returns:
        metric → ``{"a", "b", "diff", "ci", "p_value", "n_defined"}``: both point values,
        ``diff = a - b``, the percentile interval ``[low, high]`` of the difference, its
        two-sided bootstrap p-value (see :func:`_summarise`) and the number of resamples where
        it is defined. Undefined entries (AUROC of an absent class) are ``None``.

    Raises:
        ConfigError: mismatched shapes, labels outside ``[0, K)``, unknown metrics, a cluster
            with two labels.
    """
    k = len(class_names)
    y = _vector(labels, "labels", np.int64)
    _same_length(len(y), clusters=clusters)
    probs = [_probs(probs_a, "probs_a", len(y), k), _probs(probs_b, "probs_b", len(y), k)]
    if y.min() < 0 or y.max() >= k:
        raise ConfigError(f"Expected argument `labels` in [0, {k}), but got {sorted(set(y))}.")
    _check_resampling(n_resamples, confidence)
    points = [metric_table(y[None], p[None], class_names) for p in probs]
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    for name in metrics:
        if name not in points[0]:
            close = difflib.get_close_matches(name, points[0], n=2)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
            raise ConfigError(f"Unknown metric '{name}'{hint} Accepted: {sorted(points[0])}.")
    resamples = cluster_resample_indices(y, clusters, n_resamples, seed)
    lengths = np.array([len(r) for r in resamples])
    boot = [{name: np.empty(n_resamples) for name in metrics} for _ in probs]
    for length in np.unique(lengths):
        which = np.flatnonzero(lengths == length)
        chunk = max(1, int(max_bytes // max(1, length * k * 8)))
        for start in range(0, len(which), chunk):
            sel = which[start : start + chunk]
            idx = np.stack([resamples[i] for i in sel])  # (r, length)
            for p, out in zip(probs, boot, strict=True):
                table = metric_table(y[idx], p[idx], class_names)
                for name in metrics:
                    out[name][sel] = table[name]
    return {
        name: _summarise(
            points[0][name][0], points[1][name][0], boot[0][name] - boot[1][name], confidence
        )
        for name in metrics
    }


def paired_bootstrap_scores(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    clusters: Sequence[object],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Paired cluster bootstrap of the difference of mean per-image scores (segmentation Dice).

    Each model's mean ignores its own NaN scores, as the segmentation report does (Dice is
    undefined where prediction and truth are both empty), so ``diff`` is the difference of
    the two reported means. Resamples draw clusters (images) with all their rows, one stratum.

    Args:
        scores_a: ``(N,)`` per-row scores of model A (NaN = undefined).
        scores_b: ``(N,)`` per-row scores of model B on the same rows.
        clusters: ``N`` cluster keys.
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.
        confidence: interval coverage.

    Returns:
        ``{"a", "b", "diff", "ci", "p_value", "n_defined"}`` as in :func:`paired_bootstrap`.

    Raises:
        ConfigError: mismatched lengths, fewer than 2 rows, infinite scores.
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    for name, s in (("scores_a", a), ("scores_b", b)):
        _vector(np.where(np.isnan(s), 0.0, s), name)  # NaN = undefined, inf = an error
    _same_length(len(a), scores_b=b, clusters=clusters)
    _check_resampling(n_resamples, confidence)
    idx = cluster_resample_indices(np.zeros(len(a), np.int64), clusters, n_resamples, seed)
    rows = np.concatenate(idx)
    which = np.repeat(np.arange(n_resamples), [len(i) for i in idx])  # resample of each row

    def means(s: np.ndarray) -> np.ndarray:  # (R,) NaN-ignoring means over each resample
        ok = np.isfinite(s[rows])
        total = np.bincount(which, np.where(ok, s[rows], 0.0), minlength=n_resamples)
        count = np.bincount(which, ok, minlength=n_resamples)
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count

    point = [np.nanmean(s) if np.isfinite(s).any() else np.nan for s in (a, b)]
    return _summarise(point[0], point[1], means(a) - means(b), confidence)


def _binary_input(y_true: object, name: str, n: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or len(y) != n or not np.isin(y, (0, 1)).all():
        raise ConfigError(
            f"Expected argument `{name}` to be {n} binary labels (0/1), but got shape {y.shape} "
            f"with values {sorted(set(np.unique(y).tolist()))[:5]}."
        )
    return y.astype(bool)


def _delong(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``(M,)`` and their covariance ``(M, M)`` for ``(M, N)`` scores of M models.

    The fast algorithm of Sun & Xu (2014): the structural components of DeLong et al. (1988)
    from midranks, ``V10_i = (Tz_i - Tx_i) / n`` over positives, ``V01_j = 1 - (Tz_j - Ty_j) / m``
    over negatives, where ``Tz``, ``Tx``, ``Ty`` are midranks among all, positive and
    negative rows; ``S = S10 / m + S01 / n``.
    """
    pos, neg = scores[:, positive], scores[:, ~positive]  # (M, m), (M, n)
    m, n = pos.shape[1], neg.shape[1]
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # (M, m + n), ties: mean
    tx, ty = stats.rankdata(pos, axis=1), stats.rankdata(neg, axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # (M, m)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # (M, n)
    return auc, np.cov(v10, ddof=1) / m + np.cov(v01, ddof=1) / n


def delong_test(
    y_true_binary: Sequence[int], scores_a: Sequence[float], scores_b: Sequence[float]
) -> dict[str, float | int]:
    """DeLong et al. (1988) test of two correlated AUROCs on the same rows.

    Computed with the O(N log N) algorithm of Sun & Xu (2014, IEEE Signal Process. Lett. 21(11)).
    ``z = (AUC_a - AUC_b) / se``, two-sided normal p-value. A zero standard error (both models
    rank every pair identically, or both are constant) gives ``z = 0, p = 1`` when the AUROCs are
    equal and ``z = ±inf, p = 0`` when they differ (the variance estimate is exactly zero).

    Args:
        y_true_binary: ``(N,)`` 0/1 labels (1 = positive).
        scores_a: ``(N,)`` scores of model A (higher = more positive).
        scores_b: ``(N,)`` scores of model B on the same rows.

    Returns:
        ``{"auc_a", "auc_b", "diff", "var_a", "var_b", "cov", "se", "z", "p_value", "n_pos",
        "n_neg"}``; ``diff = auc_a - auc_b``.

    Raises:
        ConfigError: mismatched lengths, non-binary labels, fewer than 2 positives or 2
            negatives (the variance needs two of each).
    """
    a, b = _vector(scores_a, "scores_a"), _vector(scores_b, "scores_b")
    _same_length(len(a), scores_b=b)
    y = _binary_input(y_true_binary, "y_true_binary", len(a))
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if min(n_pos, n_neg) < 2:
        raise ConfigError(
            "Expected argument `y_true_binary` to hold at least 2 positives and 2 negatives, "
            f"but got {n_pos} and {n_neg}; the AUROC or its variance is undefined."
        )
    auc, s = _delong(y, np.stack([a, b]))
    diff = float(auc[0] - auc[1])
    se = float(np.sqrt(max(s[0, 0] + s[1, 1] - 2 * s[0, 1], 0.0)))
    z = _ratio(diff, se)
    values = (auc[0], auc[1], diff, s[0, 0], s[1, 1], s[0, 1], se, z, 2 * stats.norm.sf(abs(z)))
    out: dict[str, float | int] = dict(zip(DELONG_KEYS, map(float, values), strict=True))
    return {**out, "n_pos": n_pos, "n_neg": n_neg}


def delong_ovr(
    labels: Sequence[int], probs_a: np.ndarray, probs_b: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict]:
    """:func:`delong_test` one class against the rest, per class.

    The macro-AUROC difference is not a single DeLong comparison (its classes share rows);
    compare it with :func:`paired_bootstrap` (``auroc_macro``) instead.

    Args:
        labels: ``(N,)`` class indices.
        probs_a: ``(N, K)`` probabilities of model A.
        probs_b: ``(N, K)`` probabilities of model B on the same rows.
        class_names: ``K`` class names.

    Returns:
        class name → :func:`delong_test`'s dict; a class with fewer than 2 positives or 2
        negatives gets every value ``None`` except ``n_pos`` and ``n_neg``.
    """
    y = _vector(labels, "labels", np.int64)
    k = len(class_names)
    pa, pb = _probs(probs_a, "probs_a", len(y), k), _probs(probs_b, "probs_b", len(y), k)
    out = {}
    for c, name in enumerate(class_names):
        n_pos = int((y == c).sum())
        if min(n_pos, len(y) - n_pos) < 2:
            out[name] = {**dict.fromkeys(DELONG_KEYS), "n_pos": n_pos, "n_neg": len(y) - n_pos}
        else:
            out[name] = delong_test((y == c).astype(int), pa[:, c], pb[:, c])
    return out


def mcnemar_test(
    labels: Sequence[int], preds_a: Sequence[int], preds_b: Sequence[int]
) -> dict[str, object]:
    """McNemar (1947) test: do two classifiers err on the same images at the same rate?

    Only discordant images count: ``a_only`` (A right, B wrong) and ``b_only``. With fewer
    than 25 of them the exact binomial test (statistic ``min(a_only, b_only)``), otherwise the
    chi-square ``(|a_only - b_only| - 1)^2 / (a_only + b_only)`` with Edwards' continuity
    correction, both from :func:`statsmodels.stats.contingency_tables.mcnemar`.

    Args:
        labels: ``(N,)`` true class indices.
        preds_a: ``(N,)`` predicted classes of model A.
        preds_b: ``(N,)`` predicted classes of model B on the same images.

    Returns:
        ``{"table", "a_only", "b_only", "statistic", "p_value", "exact"}``; ``table`` is
        ``[[both right, a_only], [b_only, both wrong]]``.
    """
    y = _vector(labels, "labels", np.int64, min_len=1)
    a, b = _vector(preds_a, "preds_a", np.int64, 1), _vector(preds_b, "preds_b", np.int64, 1)
    _same_length(len(y), preds_a=a, preds_b=b)
    ra, rb = a == y, b == y
    table = np.array([[(ra & rb).sum(), (ra & ~rb).sum()], [(~ra & rb).sum(), (~ra & ~rb).sum()]])
    exact = bool(table[0, 1] + table[1, 0] < MCNEMAR_EXACT_BELOW)
    result = mcnemar(table, exact=exact, correction=True)
    return {
        "table": table.tolist(),
        "a_only": int(table[0, 1]),
        "b_only": int(table[1, 0]),
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "exact": exact,
    }


def corrected_resampled_ttest(
    differences: Sequence[float] | np.ndarray, n_train: int, n_test: int
) -> dict[str, float | int]:
    """Nadeau & Bengio (2003, Mach. Learn. 52) corrected resampled t-test.

    ``differences`` are score differences ``a - b`` on the same ``J`` splits (folds x seeds,
    any shape, flattened). Training sets overlap, so the naive variance ``var / J`` is
    replaced by ``(1/J + n_test/n_train) var`` (``var`` with ddof 1); ``t`` has ``J - 1``
    degrees of freedom, two-sided p. Constant differences (zero variance): ``t = 0, p = 1``
    if they are all 0, otherwise ``t = ±inf, p = 0``.

    Args:
        differences: ``(J,)`` (or ``(seeds, folds)``) paired differences.
        n_train: training-set size of one split.
        n_test: test-set size of one split.

    Returns:
        ``{"mean", "std", "se", "t", "df", "p_value"}`` (``df = J - 1``).
    """
    d = _vector(np.ravel(np.asarray(differences, dtype=np.float64)), "differences")
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if int(value) != value or value < 1:
            raise ConfigError(
                f"Expected argument `{name}` to be a positive integer, but got {value}."
            )
    j = len(d)
    var = float(d.var(ddof=1)) if np.ptp(d) > 0 else 0.0
    se = float(np.sqrt((1 / j + n_test / n_train) * var))
    mean = float(d.mean())
    t = _ratio(mean, se)
    p = float(2 * stats.t.sf(abs(t), j - 1))
    return {"mean": mean, "std": float(np.sqrt(var)), "se": se, "t": t, "df": j - 1, "p_value": p}


def holm(
    pvalues: Sequence[float | None] | Mapping[str, float | None],
) -> list[float | None] | dict[str, float | None]:
    """Holm (1979) step-down adjusted p-values (statsmodels ``multipletests(method="holm")``).

    ``None`` entries (undefined tests) stay ``None`` and are not counted in the family.

    Args:
        pvalues: a list of p-values, or name → p-value.

    Returns:
        The adjusted p-values in the same container and order.
    """
    keys = list(pvalues) if isinstance(pvalues, Mapping) else None
    values = [pvalues[key] for key in keys] if keys is not None else list(pvalues)
    defined = [i for i, p in enumerate(values) if p is not None]
    for i in defined:
        if not 0 <= values[i] <= 1:
            raise ConfigError(
                f"Expected argument `pvalues` to hold p-values in [0, 1] or None, but got "
                f"{values[i]}."
            )
    out: list[float | None] = [None] * len(values)
    if defined:
        adjusted = multipletests([values[i] for i in defined], method="holm")[1]
        for i, p in zip(defined, adjusted, strict=True):
            out[i] = float(p)
    return dict(zip(keys, out, strict=True)) if keys is not None else out


def _nemenyi_groups(ranks: np.ndarray, names: Sequence[str], cd: float) -> list[list[str]]:
    """Maximal runs of rank-sorted methods whose extreme ranks differ by less than ``cd``."""
    order = np.argsort(ranks, kind="stable")
    r = ranks[order]
    groups, last = [], -1
    for i in range(len(r)):
        j = int(np.searchsorted(r, r[i] + cd, side="left")) - 1  # last rank < r_i + cd
        if j > i and j > last:
            groups.append([names[o] for o in order[i : j + 1]])
            last = j
    return groups


def friedman_critical_difference(
    scores: np.ndarray, names: Sequence[str], alpha: float = 0.05
) -> dict[str, object]:
    """Friedman test and Nemenyi critical difference of ``k`` methods over ``N`` blocks.

    Demšar (2006, JMLR 7): per block the methods are ranked, higher score = better = rank 1,
    ties averaged; the Friedman ``chi2`` (scipy, tie-corrected) and the Iman-Davenport
    ``F = (N-1) chi2 / (N(k-1) - chi2)`` with ``(k-1, (k-1)(N-1))`` degrees of freedom test
    that all methods are equivalent. Two methods differ (Nemenyi) when their average ranks
    differ by at least ``CD = q_alpha sqrt(k(k+1) / (6N))``, with ``q_alpha`` the studentized
    range quantile for ``k`` groups and infinite df over ``sqrt(2)``. When every block is a
    complete tie the statistics are 0 and the p-values 1.

    Args:
        scores: ``(N, k)`` scores (blocks x methods; e.g. data sets or folds x models).
        names: ``k`` method names.
        alpha: significance level of the critical difference.

    Returns:
        ``{"names", "avg_ranks", "statistic", "p_value", "iman_davenport_f",
        "iman_davenport_p", "q_alpha", "cd", "alpha", "n_blocks", "n_methods", "groups"}``;
        ``avg_ranks`` follows ``names``; ``groups`` lists the maximal sets of methods, best
        first, that are not significantly different (the bars of the CD diagram).
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 3 or not np.isfinite(x).all():
        raise ConfigError(
            "Expected argument `scores` to be finite of shape (n_blocks >= 2, n_methods >= 3), "
            f"but got {x.shape}; compare two methods with a paired test instead."
        )
    if len(names) != x.shape[1] or len(set(names)) != len(names):
        raise ConfigError(
            f"Expected argument `names` to hold {x.shape[1]} distinct names, but got {names}."
        )
    if not 0 < alpha < 1:
        raise ConfigError(f"Expected argument `alpha` in (0, 1), but got {alpha}.")
    n, k = x.shape
    ranks = stats.rankdata(-x, axis=1).mean(axis=0)  # (k,), rank 1 = best
    if (np.ptp(x, axis=1) == 0).all():
        chi2, p, f, pf = 0.0, 1.0, 0.0, 1.0
    else:
        chi2, p = (float(v) for v in stats.friedmanchisquare(*x.T))
        f = (n - 1) * chi2 / (n * (k - 1) - chi2) if n * (k - 1) > chi2 else np.inf
        pf = float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2))
    cd = q * np.sqrt(k * (k + 1) / (6 * n))
    return {
        "names": list(names),
        "avg_ranks": ranks.tolist(),
        "statistic": chi2,
        "p_value": p,
        "iman_davenport_f": float(f),
        "iman_davenport_p": pf,
        "q_alpha": q,
        "cd": float(cd),
        "alpha": alpha,
        "n_blocks": n,
        "n_methods": k,
        "groups": _nemenyi_groups(ranks, list(names), cd),
    }
