"""Regression of a continuous target (the T-score): bootstrap report, WHO categories, split
conformal intervals and a target scaler.

The report follows :mod:`osteolightning.metrics.report`: vectorised numpy metrics over ``R``
resamples at once, percentile-bootstrap intervals (:func:`~.report.percentile_interval`), flat
keys (``test/t_score_mae``, ``test/t_score_mae_ci95``) and ``None`` for undefined values.
Definitions: MAE and RMSE as scikit-learn; Pearson's r and Spearman's rho (average ranks over
ties) as scipy; Lin's concordance correlation coefficient with the 1/N moments of Lin (1989),
"A concordance correlation coefficient to evaluate reproducibility", Biometrics 45:255-268;
Bland & Altman (1986) bias (mean of ``y_pred - y_true``) and 95 % limits of agreement
``bias -/+ 1.96 * SD`` (SD with N - 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real
from typing import Any

import numpy as np

from osteolightning.errors import ConfigError
from osteolightning.metrics.report import (
    cluster_resample_indices,
    percentile_interval,
    stratified_resample_indices,
)

#: WHO T-score cut-offs: osteoporosis at T <= -2.5, osteopenia for -2.5 < T < -1, normal at
#: T >= -1 (class indices 0 normal, 1 osteopenia, 2 osteoporosis).
WHO_CUTOFFS: tuple[float, float] = (-2.5, -1.0)
#: Normal quantile of the 95 % Bland-Altman limits of agreement.
LOA_Z = 1.96


def as_vector(values: Any, name: str, kind: str = "argument") -> np.ndarray:
    """``values`` as a non-empty 1-D float64 array of finite numbers, else a ConfigError that
    names the ``kind`` ("argument", "target column") and ``name``."""
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"Expected {kind} `{name}` to be numeric, but got {err}.") from None
    if v.ndim != 1 or len(v) == 0:
        raise ConfigError(
            f"Expected {kind} `{name}` to be a non-empty 1-D array, but got shape {v.shape}."
        )
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        raise ConfigError(
            f"Expected {kind} `{name}` to hold finite numbers, but got {len(bad)} non-finite "
            f"value(s), the first {v[bad[0]]} at index {int(bad[0])}."
        )
    return v


def as_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` checked by :func:`as_vector` and for equal length."""
    t, p = as_vector(y_true, "y_true"), as_vector(y_pred, "y_pred")
    if len(t) != len(p):
        raise ConfigError(
            f"Expected arguments `y_true` and `y_pred` of equal length, but got {len(t)} and "
            f"{len(p)}."
        )
    return t, p


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks ``1..N`` along the last axis, ties given their average rank (scipy's ``rankdata``).

    Args:
        values: ``(R, N)``.

    Returns:
        ``(R, N)`` float64 ranks.
    """
    r, n = values.shape
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)  # (R, N)
    pos = np.broadcast_to(np.arange(n), (r, n))
    starts = np.ones((r, n), dtype=bool)  # first element of a tie group
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones((r, n), dtype=bool)  # last element of a tie group
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((r, n))
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks


def _pearson(xc: np.ndarray, yc: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of centred ``(R, N)`` arrays; NaN where ``constant`` (either row)."""
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip((xc * yc).sum(axis=1) / den, -1.0, 1.0)
    return np.where(constant, np.nan, r)


def regression_table(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Every report metric for ``R`` (re)samples at once.

    Args:
        y_true: ``(R, N)`` reference values.
        y_pred: ``(R, N)`` predictions.

    Returns:
        metric name → ``(R,)``: ``mae``, ``rmse``, ``pearson_r``, ``spearman_rho``, ``ccc``,
        ``bias``, ``loa_low``, ``loa_high``. NaN where undefined: correlations of a constant
        row, the CCC of two identical constant rows, limits of agreement for ``N = 1``.
    """
    n = y_true.shape[1]
    diff = y_pred - y_true  # (R, N)
    const_t = y_true.max(axis=1) == y_true.min(axis=1)  # exact: no rounding of a mean involved
    const_p = y_pred.max(axis=1) == y_pred.min(axis=1)
    either = const_t | const_p
    mt, mp = y_true.mean(axis=1), y_pred.mean(axis=1)
    tc, pc = y_true - mt[:, None], y_pred - mp[:, None]
    cov = np.where(either, 0.0, (tc * pc).mean(axis=1))  # a constant row has zero covariance
    den = (tc * tc).mean(axis=1) + (pc * pc).mean(axis=1) + (mt - mp) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        ccc = 2.0 * cov / den
    # both constant and equal: 0/0 (perfect but degenerate agreement) is undefined
    ccc = np.where(const_t & const_p & (y_true[:, 0] == y_pred[:, 0]), np.nan, ccc)
    bias = diff.mean(axis=1)
    sd = diff.std(axis=1, ddof=1) if n > 1 else np.full(len(diff), np.nan)
    rank_t, rank_p = average_ranks(y_true), average_ranks(y_pred)
    mid = (n + 1) / 2.0  # the mean rank
    return {
        "mae": np.abs(diff).mean(axis=1),
        "rmse": np.sqrt((diff * diff).mean(axis=1)),
        "pearson_r": _pearson(tc, pc, either),
        "spearman_rho": _pearson(rank_t - mid, rank_p - mid, either),
        "ccc": ccc,
        "bias": bias,
        "loa_low": bias - LOA_Z * sd,
        "loa_high": bias + LOA_Z * sd,
    }


def _bootstrap(
    t: np.ndarray, p: np.ndarray, resamples: Sequence[np.ndarray], max_bytes: int
) -> dict[str, np.ndarray]:
    """:func:`regression_table` over resamples of row indices, evaluated in chunks of equal
    length of about ``max_bytes`` per array."""
    lengths = np.array([len(r) for r in resamples])
    boot: dict[str, np.ndarray] = {}
    for length in np.unique(lengths):
        which = np.flatnonzero(lengths == length)
        chunk = max(1, int(max_bytes // (8 * length)))
        for start in range(0, len(which), chunk):
            sel = which[start : start + chunk]
            idx = np.stack([resamples[i] for i in sel])  # (r, length)
            for name, values in regression_table(t[idx], p[idx]).items():
                boot.setdefault(name, np.empty(len(resamples)))[sel] = values
    return boot


def regression_report(
    y_true: Any,
    y_pred: Any,
    prefix: str = "test/t_score_",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: Sequence[object] | None = None,
    max_bytes: int = 64 << 20,
) -> dict[str, object]:
    """Point estimates and percentile-bootstrap intervals of a regression.

    Without ``clusters`` the bootstrap resamples rows (images). With ``clusters`` (e.g. image
    paths of pooled predictions, one row per image and seed) it resamples clusters and takes
    all rows of each drawn cluster, so repeated rows of one image do not narrow the interval.

    Args:
        y_true: ``(N,)`` reference values (T-scores).
        y_pred: ``(N,)`` predictions.
        prefix: key prefix.
        n_resamples: bootstrap resamples ``R``.
        seed: bootstrap seed.
        confidence: interval coverage, in (0, 1).
        clusters: ``N`` cluster keys, or ``None`` for independent rows.
        max_bytes: resamples are evaluated in chunks of about this many bytes per array.

    Returns:
        Flat dict: ``{prefix}n``, ``{prefix}n_clusters`` (with ``clusters`` only), then for each
        of ``mae``, ``rmse``, ``pearson_r``, ``spearman_rho``, ``ccc``, ``bias``, ``loa_low``,
        ``loa_high`` the point estimate ``{prefix}mae`` and ``{prefix}mae_ci95 = [low, high]``,
        and ``{prefix}bootstrap_resamples``. Undefined values are ``None``.

    Raises:
        ConfigError: empty, non-finite or mismatched input; a bad ``n_resamples``,
            ``confidence`` or ``clusters``.

    Example:
        >>> r = regression_report([-3.0, -2.0, -1.0, 0.5], [-2.6, -2.1, -1.4, 0.2], n_resamples=200)
        >>> round(r["test/t_score_mae"], 3), len(r["test/t_score_mae_ci95"])
        (0.3, 2)
    """
    t, p = as_pair(y_true, y_pred)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(
            f"Expected argument `n_resamples` to be a positive integer, but got {n_resamples!r}."
        )
    if not 0 < confidence < 1:
        raise ConfigError(f"Expected argument `confidence` in (0, 1), but got {confidence}.")
    report: dict[str, object] = {f"{prefix}n": len(t)}
    one_stratum = np.zeros(len(t), dtype=np.int64)  # plain, non-stratified resampling
    if clusters is None:
        resamples: Sequence[np.ndarray] = stratified_resample_indices(
            one_stratum, n_resamples, seed
        )
    else:
        if len(clusters) != len(t):
            raise ConfigError(
                f"Expected argument `clusters` to hold one key per row ({len(t)}), but got "
                f"{len(clusters)}."
            )
        resamples = cluster_resample_indices(one_stratum, clusters, n_resamples, seed)
        report[f"{prefix}n_clusters"] = len({str(c) for c in clusters})
    point = regression_table(t[None], p[None])
    boot = _bootstrap(t, p, resamples, max_bytes)
    tag = f"ci{round(confidence * 100)}"
    for name, value in point.items():
        v = float(value[0])
        report[f"{prefix}{name}"] = v if math.isfinite(v) else None
        report[f"{prefix}{name}_{tag}"] = percentile_interval(boot[name], confidence)
    report[f"{prefix}bootstrap_resamples"] = n_resamples
    return report


def _check_cutoffs(cutoffs: Any) -> tuple[float, float]:
    try:
        low, high = (float(c) for c in cutoffs)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(
            f"Expected argument `cutoffs` to be two increasing finite numbers (osteoporosis, "
            f"normal) such as {WHO_CUTOFFS}, but got {cutoffs!r}."
        )
    return low, high


def who_category(t_scores: Any, cutoffs: Sequence[float] = WHO_CUTOFFS) -> np.ndarray:
    """WHO category of T-scores: 0 normal (T >= -1), 1 osteopenia (-2.5 < T < -1),
    2 osteoporosis (T <= -2.5), indices into ``["normal", "osteopenia", "osteoporosis"]``.

    The comparison is exact: a T-score derived from BMD by floating-point arithmetic may land
    a hair off a cut-off (``-2.5000000000000004``); round it first (the phantom rounds T to 0.01).

    Args:
        t_scores: ``(N,)`` T-scores (any shape; the output has the same shape).
        cutoffs: ``(osteoporosis, normal)`` thresholds, increasing.

    Returns:
        ``(N,)`` int64 class indices.

    Raises:
        ConfigError: non-finite T-scores, or cut-offs that are not two increasing finite numbers.

    Example:
        >>> who_category([-2.5, -2.49, -1.0, -1.01]).tolist()
        [2, 1, 0, 1]
    """
    low, high = _check_cutoffs(cutoffs)
    t = np.asarray(t_scores, dtype=np.float64)
    if not np.isfinite(t).all():
        raise ConfigError(
            f"Expected argument `t_scores` to hold finite numbers, but got "
            f"{int((~np.isfinite(t)).sum())} non-finite value(s)."
        )
    return np.where(t <= low, 2, np.where(t < high, 1, 0)).astype(np.int64)


def who_one_hot(indices: Any, k: int = 3) -> np.ndarray:
    """Class indices ``(N,)`` → one-hot ``(N, K)`` float64 "probabilities", to feed a
    regressor's WHO categories to :func:`~.report.evaluation_report`.

    Raises:
        ConfigError: indices that are not integers in ``[0, k)``.
    """
    idx = np.asarray(indices)
    if (
        idx.ndim != 1
        or not np.issubdtype(idx.dtype, np.integer)
        or (idx < 0).any()
        or (idx >= k).any()
    ):
        raise ConfigError(
            f"Expected argument `indices` to be a 1-D array of integers in [0, {k}), but got "
            f"dtype {idx.dtype}, shape {idx.shape}."
        )
    return np.eye(k)[idx]


def _check_coverage(coverage: Any) -> Fraction:
    if isinstance(coverage, bool) or not isinstance(coverage, Real) or not 0 < coverage < 1:
        raise ConfigError(f"Expected argument `coverage` in (0, 1), but got {coverage!r}.")
    # 0.9 as 9/10, so that ceil((n + 1) * 0.9) carries no rounding error
    return Fraction(str(float(coverage)))


def conformal_rank(n: int, coverage: float) -> int:
    """The rank ``k = ceil((n + 1) * coverage)`` of the split-conformal quantile among ``n``
    sorted calibration scores (Lei et al. 2018, "Distribution-free predictive inference for
    regression", JASA 113:1094-1111), computed in exact arithmetic.

    Raises:
        ConfigError: ``k > n``, i.e. ``n < coverage / (1 - coverage)``: the interval would be
            infinite.
    """
    c = _check_coverage(coverage)
    k = math.ceil((n + 1) * c)
    if k > n:
        raise ConfigError(
            f"Expected at least {math.ceil(c / (1 - c))} calibration points for coverage "
            f"{coverage}, but got {n}: the split-conformal interval would be infinite."
        )
    return k


@dataclass(frozen=True)
class SplitConformal:
    """Split-conformal prediction intervals ``y_pred -/+ quantile`` from calibration residuals.

    ``quantile`` is the ``ceil((n + 1) * coverage)``-th smallest absolute residual
    ``|y - y_pred|`` of ``n`` calibration (validation) points, so a new exchangeable point is
    covered with probability at least ``coverage`` (Vovk et al. 2005; Lei et al. 2018). Plain
    fields, so ``dataclasses.asdict`` stores it in a checkpoint. ``crepes.ConformalRegressor``
    gives the same intervals (tested), but ranks in floating point and so returns an infinite
    interval at exact boundaries such as ``n = 9``, ``coverage = 0.9``.

    Example:
        >>> conformal = SplitConformal.fit([0.0, 1.0, 2.0, 3.0], [0.5, 1.0, 1.0, 3.5], 0.6)
        >>> conformal.quantile, conformal.interval([2.0])
        (0.5, (array([1.5]), array([2.5])))
    """

    coverage: float
    quantile: float
    n_calibration: int

    def __post_init__(self) -> None:
        conformal_rank(self.n_calibration, self.coverage)
        if not (math.isfinite(self.quantile) and self.quantile >= 0):
            raise ConfigError(
                f"Expected argument `quantile` to be finite and >= 0, but got {self.quantile}."
            )

    @classmethod
    def fit(cls, y_true: Any, y_pred: Any, coverage: float = 0.9) -> SplitConformal:
        """Calibrate on ``(N,)`` true values and predictions of a held-out split."""
        t, p = as_pair(y_true, y_pred)
        k = conformal_rank(len(t), coverage)
        quantile = np.partition(np.abs(t - p), k - 1)[k - 1]
        return cls(coverage=float(coverage), quantile=float(quantile), n_calibration=len(t))

    def interval(self, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` predictions → ``(low, high)``, each ``(N,)``."""
        p = np.asarray(y_pred, dtype=np.float64)
        return p - self.quantile, p + self.quantile


def empirical_coverage(y_true: Any, low: Any, high: Any) -> float:
    """Fraction of ``(N,)`` values inside their closed interval ``[low, high]``.

    Raises:
        ConfigError: arrays of different lengths or non-finite values.
    """
    t, lo, hi = (
        as_vector(v, name) for v, name in ((y_true, "y_true"), (low, "low"), (high, "high"))
    )
    if not len(t) == len(lo) == len(hi):
        raise ConfigError(
            f"Expected arguments `y_true`, `low` and `high` of equal length, but got {len(t)}, {len(lo)} "
            f"and {len(hi)}."
        )
    return float(((lo <= t) & (t <= hi)).mean())


@dataclass(frozen=True)
class TargetScaler:
    """Standardisation ``(y - mean) / std`` of a regression target with training-split
    statistics (population SD, as scikit-learn's ``StandardScaler``). Plain floats, so
    ``dataclasses.asdict`` stores it in a checkpoint and ``TargetScaler(**d)`` restores it.

    Example:
        >>> scaler = TargetScaler.fit([-3.0, -1.0, 1.0], name="t_score")
        >>> scaler.transform(np.array([1.0])), scaler.inverse(scaler.transform(-1.0))
        (array([1.22474487]), -1.0)
    """

    name: str
    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ConfigError(
                f"Expected target `{self.name}` to have a finite mean and a positive finite "
                f"standard deviation, but got mean {self.mean} and std {self.std}."
            )

    @classmethod
    def fit(cls, values: Any, name: str) -> TargetScaler:
        """Statistics of the ``(N,)`` training values of target column ``name``.

        Raises:
            ConfigError: empty or non-finite values, or a constant target (its SD is 0 and
                standardising it would turn the loss into NaN).
        """
        v = as_vector(values, name, kind="target column")
        if v.max() == v.min():
            raise ConfigError(
                f"Expected target column `{name}` to vary in the training split, but all "
                f"{len(v)} value(s) are {v[0]:g}; a constant target cannot be standardised."
            )
        return cls(name=name, mean=float(v.mean()), std=float(v.std()))

    def transform(self, values: Any) -> Any:
        """Standardise a float, numpy array or torch tensor (same type back)."""
        return (values - self.mean) / self.std

    def inverse(self, values: Any) -> Any:
        """Undo :meth:`transform` (model outputs → target units)."""
        return values * self.std + self.mean
