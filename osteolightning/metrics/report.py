"""The evaluation report: point estimates and stratified-bootstrap 95 % intervals.

Metrics are computed from ``(labels, probs)`` with vectorised numpy code so that a thousand
resamples take well under a second. Definitions follow scikit-learn (``zero_division=0``):
tests compare every point estimate with scikit-learn's.

A class without test images (absent from the true labels) has no recall, and its precision and
F1 say nothing about it: its per-class precision, recall, F1 and AUROC are undefined (``None``)
and it is left out of every macro average, as scikit-learn's ``labels=<the classes present>``
does, instead of entering them as zeros. The report names such classes
(``test/absent_classes``). The bootstrap resamples within classes, so every resample holds the
same classes.

Agreement: Cohen's kappa (unweighted) and the quadratic-weighted kappa. The classes are
ordinal (normal < osteopenia < osteoporosis, in ``class_names`` order), so the weighted kappa
penalises calling osteoporosis "normal" four times as much as calling it "osteopenia".
Calibration: the top-label expected calibration error with 15 equal-width confidence bins
(:func:`osteolightning.metrics.calibration.expected_calibration_error`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from osteolightning.errors import ConfigError
from osteolightning.metrics.calibration import expected_calibration_error

#: Confidence bins of the expected calibration error.
ECE_BINS = 15


def confusion_matrices(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """``(R, N)`` label/pred index arrays → ``(R, K, K)`` confusion matrices (rows: true class)."""
    r = labels.shape[0]
    flat = (np.arange(r)[:, None] * k * k + labels * k + preds).ravel()
    return np.bincount(flat, minlength=r * k * k).reshape(r, k, k)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN (undefined per-class AUROC); NaN for an all-NaN row."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=1)
    count = finite.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def auroc_ovr(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC per class via the rank-sum (Mann-Whitney) statistic, ties averaged.

    Args:
        labels: ``(R, N)`` class indices.
        probs: ``(R, N, K)`` scores.

    Returns:
        ``(R, K)``; NaN where a class has no positives or no negatives.
    """
    r, n, k = probs.shape
    out = np.full((r, k), np.nan)
    for c in range(k):
        scores = probs[:, :, c]
        order = np.argsort(scores, axis=1, kind="mergesort")
        sorted_scores = np.take_along_axis(scores, order, axis=1)
        ranks = np.empty_like(scores, dtype=float)
        for i in range(r):  # average ranks over ties, as the Mann-Whitney U statistic requires
            _, inverse, counts = np.unique(
                sorted_scores[i], return_inverse=True, return_counts=True
            )
            ends = np.cumsum(counts)
            avg = ends - (counts - 1) / 2.0
            ranks[i, order[i]] = avg[inverse]
        pos = labels == c
        n_pos = pos.sum(axis=1)
        n_neg = n - n_pos
        rank_sum = (ranks * pos).sum(axis=1)
        valid = (n_pos > 0) & (n_neg > 0)
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / np.where(valid, n_pos * n_neg, 1)
        out[valid, c] = auc[valid]
    return out


def cohen_kappa(cm: np.ndarray, weights: str | None = None) -> np.ndarray:
    """Cohen's kappa of ``(R, K, K)`` confusion matrices → ``(R,)``, as scikit-learn's
    ``cohen_kappa_score``: ``1 - sum(W * O) / sum(W * E)`` with ``E`` the outer product of the
    marginals; ``W`` is ``1 - I`` (unweighted) or ``(i - j)^2`` (``weights="quadratic"``).
    NaN where the expected disagreement is zero (one class only, in truth and prediction)."""
    k = cm.shape[1]
    i, j = np.indices((k, k))
    w = (i - j) ** 2 if weights == "quadratic" else (i != j)
    n = cm.sum(axis=(1, 2))
    expected = cm.sum(axis=2)[:, :, None] * cm.sum(axis=1)[:, None, :] / n[:, None, None]
    observed_dis = (w * cm).sum(axis=(1, 2))
    expected_dis = (w * expected).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected_dis > 0, 1 - observed_dis / expected_dis, np.nan)


def metric_table(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """All report metrics for ``R`` (re)samples at once.

    Args:
        labels: ``(R, N)`` class indices.
        probs: ``(R, N, K)`` class probabilities.
        class_names: ``K`` names for per-class keys.

    Returns:
        metric name → ``(R,)`` values.
    """
    k = len(class_names)
    preds = probs.argmax(axis=2)
    cm = confusion_matrices(labels, preds, k).astype(float)  # (R, K, K)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = support > 0
    # a class without true samples is undefined, not zero: out of the macro averages
    precision, recall, f1 = (np.where(present, v, np.nan) for v in (precision, recall, f1))
    auroc = auroc_ovr(labels, probs)
    out = {
        "acc": tp.sum(axis=1) / cm.sum(axis=(1, 2)),
        # sklearn's balanced accuracy averages recall over the classes present in y_true.
        "balanced_acc": _nanmean_rows(recall),
        "precision_macro": _nanmean_rows(precision),
        "recall_macro": _nanmean_rows(recall),
        "f1_macro": _nanmean_rows(f1),
        "auroc_macro": _nanmean_rows(auroc),
        "kappa": cohen_kappa(cm),
        "kappa_quadratic": cohen_kappa(cm, "quadratic"),
        # ordered classes (KL grades, WHO categories): how far off, in classes
        "grade_mae": np.abs(preds - labels).mean(axis=1),
        "acc_within1": (np.abs(preds - labels) <= 1).mean(axis=1),
        "ece": expected_calibration_error(labels, probs, ECE_BINS),
    }
    for c, name in enumerate(class_names):
        out[f"precision_{name}"] = precision[:, c]
        out[f"recall_{name}"] = recall[:, c]
        out[f"f1_{name}"] = f1[:, c]
        out[f"auroc_{name}"] = auroc[:, c]
    return out


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> list[float] | None:
    """The percentile-bootstrap interval of resampled ``values`` (NaN resamples ignored), or
    ``None`` when no resample is defined."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    alpha = (1 - confidence) / 2
    return [float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))]


def stratified_resample_indices(labels: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``(R, N)`` bootstrap indices that keep each class's count (resampling within classes)."""
    rng = np.random.default_rng(seed)
    idx = np.empty((n_resamples, len(labels)), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        idx[:, start : start + len(members)] = rng.choice(members, size=(n_resamples, len(members)))
        start += len(members)
    return idx


def _report_input(
    labels: Sequence[int], probs: np.ndarray, class_names: Sequence[str], confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` and ``probs`` as arrays, checked (shapes, non-empty, a valid confidence)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or len(y) != len(p) or p.shape[1] != len(class_names):
        raise ConfigError(
            f"Expected labels (N,) and probs (N, {len(class_names)}), but got "
            f"{y.shape} and {p.shape}."
        )
    if len(y) == 0:
        raise ConfigError("Cannot compute an evaluation report on zero samples.")
    if not 0 < confidence < 1:
        raise ConfigError(f"Expected argument `confidence` in (0, 1), but got {confidence}.")
    return y, p


def _assemble(
    report: dict[str, object],
    point: dict[str, np.ndarray],
    boot: dict[str, np.ndarray],
    y: np.ndarray,
    p: np.ndarray,
    class_names: Sequence[str],
    prefix: str,
    confidence: float,
    n_resamples: int,
) -> dict[str, object]:
    """Add each metric's point estimate and interval, the confusion matrix and the resample
    count to ``report``. Undefined point estimates are ``None``."""
    tag = f"ci{round(confidence * 100)}"
    for name, value in point.items():
        v = float(value[0])
        report[f"{prefix}{name}"] = None if np.isnan(v) else v
        report[f"{prefix}{name}_{tag}"] = percentile_interval(boot[name], confidence)
    cm = confusion_matrices(y[None], p.argmax(axis=1)[None], len(class_names))[0]
    report[f"{prefix}confusion_matrix"] = cm.tolist()
    absent = [str(name) for c, name in enumerate(class_names) if not (y == c).any()]
    if absent:  # left out of the macro averages above
        report[f"{prefix}absent_classes"] = absent
    report[f"{prefix}bootstrap_resamples"] = int(n_resamples)
    return report


def evaluation_report(
    labels: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    prefix: str = "test/",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, object]:
    """Point estimates, percentile-bootstrap intervals and the confusion matrix.

    Args:
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` predicted probabilities.
        class_names: ``K`` class names.
        prefix: key prefix (``"test/"``).
        n_resamples: bootstrap resamples (stratified by true class).
        confidence: interval coverage.
        seed: bootstrap seed.

    Returns:
        Flat dict: ``test/acc``, ``test/acc_ci95`` = ``[low, high]``, ..., ``test/kappa``,
        ``test/kappa_quadratic``, ``test/grade_mae`` (mean absolute error in classes, for
        ordered classes), ``test/acc_within1`` (off by at most one class), ``test/ece`` (each
        with its ``_ci95``),
        ``test/confusion_matrix``, ``test/n`` and, when some class has no test images,
        ``test/absent_classes`` (their names; they are left out of the macro averages).
        Undefined values (the per-class metrics of an absent class, kappa of a single-class
        sample) are ``None``.

    Raises:
        ConfigError: on empty input or mismatched shapes.
    """
    y, p = _report_input(labels, probs, class_names, confidence)
    point = metric_table(y[None], p[None], class_names)
    idx = stratified_resample_indices(y, n_resamples, seed)
    boot = metric_table(y[idx], p[idx], class_names)
    report: dict[str, object] = {f"{prefix}n": int(len(y))}
    return _assemble(report, point, boot, y, p, class_names, prefix, confidence, n_resamples)


def cluster_resample_indices(
    labels: np.ndarray, clusters: Sequence[object], n_resamples: int, seed: int
) -> list[np.ndarray]:
    """Stratified cluster bootstrap: row indices of ``n_resamples`` resamples.

    Each resample draws, within every class, as many clusters as the class has, with
    replacement, and takes *all* rows of each drawn cluster. A cluster is one image: pooled
    out-of-fold predictions hold an image once per seed (and per configuration), and those rows
    are not independent, so they are drawn together.

    Args:
        labels: ``(N,)`` class index per row; constant within a cluster.
        clusters: ``N`` cluster keys (e.g. image paths), one per row.
        n_resamples: number of resamples ``R``.
        seed: random seed.

    Returns:
        ``R`` int64 arrays of row indices; their lengths differ only when clusters differ in size.

    Raises:
        ConfigError: a cluster whose rows carry different labels, or mismatched lengths.
    """
    y = np.asarray(labels, dtype=np.int64)
    if y.ndim != 1 or len(clusters) != len(y):
        raise ConfigError(
            f"Expected one cluster key per label, but got {len(clusters)} keys for labels of "
            f"shape {y.shape}."
        )
    keys, inverse = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=len(keys))
    rows = np.split(order, np.cumsum(sizes)[:-1])  # rows of each cluster
    cluster_label = np.array([y[r[0]] for r in rows], dtype=np.int64)
    for c, r in enumerate(rows):
        if (y[r] != cluster_label[c]).any():
            raise ConfigError(
                f"Cluster '{keys[c]}' has rows with different labels {sorted(set(y[r]))}; an "
                "image must carry one label in every run."
            )
    rng = np.random.default_rng(seed)
    draws = np.empty((n_resamples, len(keys)), dtype=np.int64)
    start = 0
    for c in np.unique(cluster_label):
        members = np.flatnonzero(cluster_label == c)
        draws[:, start : start + len(members)] = rng.choice(
            members, size=(n_resamples, len(members))
        )
        start += len(members)
    if (sizes == sizes[0]).all():
        table = np.stack(rows)  # (C, size)
        return list(table[draws].reshape(n_resamples, -1))
    return [np.concatenate([rows[c] for c in draw]) for draw in draws]


def cluster_bootstrap_report(
    labels: Sequence[int],
    probs: np.ndarray,
    clusters: Sequence[object],
    class_names: Sequence[str],
    prefix: str = "test/",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_bytes: int = 64 << 20,
) -> dict[str, object]:
    """:func:`evaluation_report` for rows that come in clusters (an image under several seeds).

    Point estimates are :func:`metric_table` over all rows (pooled). Intervals are percentile
    intervals over a stratified *cluster* bootstrap (:func:`cluster_resample_indices`), so an
    image predicted by three seeds is drawn with its three rows and the interval is not
    narrowed by counting one image three times.

    Args:
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` predicted probabilities.
        clusters: ``N`` cluster keys (image paths).
        class_names: ``K`` class names.
        prefix: key prefix.
        n_resamples: bootstrap resamples.
        confidence: interval coverage.
        seed: bootstrap seed.
        max_bytes: resamples are evaluated in chunks of about this many bytes of probabilities.

    Returns:
        The keys of :func:`evaluation_report` plus ``{prefix}n_clusters``.

    Raises:
        ConfigError: empty or mismatched input, a cluster with two labels.
    """
    y, p = _report_input(labels, probs, class_names, confidence)
    point = metric_table(y[None], p[None], class_names)
    resamples = cluster_resample_indices(y, clusters, n_resamples, seed)
    lengths = np.array([len(r) for r in resamples])
    boot: dict[str, np.ndarray] = {name: np.empty(n_resamples) for name in point}
    for length in np.unique(lengths):
        which = np.flatnonzero(lengths == length)
        chunk = max(1, int(max_bytes // max(1, length * p.shape[1] * 8)))
        for start in range(0, len(which), chunk):
            sel = which[start : start + chunk]
            idx = np.stack([resamples[i] for i in sel])
            for name, values in metric_table(y[idx], p[idx], class_names).items():
                boot[name][sel] = values
    report: dict[str, object] = {
        f"{prefix}n": int(len(y)),
        f"{prefix}n_clusters": int(len({str(c) for c in clusters})),
    }
    return _assemble(report, point, boot, y, p, class_names, prefix, confidence, n_resamples)
