"""Calibration: expected calibration error, reliability bins and temperature scaling.

The ECE is the top-label ECE of Guo et al. 2017 ("On Calibration of Modern Neural Networks",
ICML): the confidence of a prediction is its largest class probability; predictions are put
in ``n_bins`` (15) equal-width confidence bins ``((m-1)/M, m/M]``, and

    ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|

Temperature scaling divides the logits by one scalar ``T`` fitted on held-out data by
minimising the negative log-likelihood; it changes no prediction (the arg max is unchanged),
only the confidences.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from osteolightning.errors import ConfigError

#: Bounds of the temperature search.
T_MIN, T_MAX = 0.05, 20.0


def _bin_sums(
    labels: np.ndarray, probs: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(R, N)`` labels, ``(R, N, K)`` probs → per-bin count, confidence sum, correct sum ``(R, M)``."""
    r = labels.shape[0]
    conf = probs.max(axis=2)  # (R, N)
    correct = (probs.argmax(axis=2) == labels).astype(float)
    # bin m holds (m/M, (m+1)/M]; a confidence of exactly 0 (impossible for K probabilities
    # summing to 1) would land in bin 0.
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    flat = (np.arange(r)[:, None] * n_bins + bins).ravel()
    size = r * n_bins
    count = np.bincount(flat, minlength=size).reshape(r, n_bins)
    conf_sum = np.bincount(flat, weights=conf.ravel(), minlength=size).reshape(r, n_bins)
    correct_sum = np.bincount(flat, weights=correct.ravel(), minlength=size).reshape(r, n_bins)
    return count, conf_sum, correct_sum


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> np.ndarray | float:
    """Top-label ECE with ``n_bins`` equal-width confidence bins.

    Args:
        labels: ``(N,)`` or ``(R, N)`` class indices.
        probs: ``(N, K)`` or ``(R, N, K)`` probabilities.
        n_bins: number of bins on ``[0, 1]``.

    Returns:
        A float for one sample set, ``(R,)`` for ``R`` (re)samples.

    Example:
        >>> expected_calibration_error(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]]))
        0.35
    """
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    single = y.ndim == 1
    if single:
        y, p = y[None], p[None]
    count, conf_sum, correct_sum = _bin_sums(y, p, n_bins)
    # |B|/N * |acc - conf| = |sum(correct) - sum(conf)| / N
    ece = np.abs(correct_sum - conf_sum).sum(axis=1) / y.shape[1]
    return float(ece[0]) if single else ece


def reliability_bins(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Per-bin ``count``, mean ``confidence`` and ``accuracy`` (NaN for empty bins) and bin
    ``edges`` ``(n_bins + 1,)`` of one sample set (``labels (N,)``, ``probs (N, K)``)."""
    count, conf_sum, correct_sum = (
        a[0] for a in _bin_sums(np.asarray(labels)[None], np.asarray(probs, float)[None], n_bins)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": count,
            "confidence": np.where(count > 0, conf_sum / count, np.nan),
            "accuracy": np.where(count > 0, correct_sum / count, np.nan),
            "edges": np.linspace(0.0, 1.0, n_bins + 1),
        }


def probs_to_logits(probs: np.ndarray) -> np.ndarray:
    """``log(probs)``: logits up to a per-sample constant, which softmax ignores.

    ``softmax(z)_k = exp(z_k - logsumexp(z))``, so ``log softmax(z) = z - c`` with one ``c``
    per sample, and ``softmax((z - c) / T) = softmax(z / T)``: temperature scaling of
    ``log(probs)`` equals temperature scaling of the network's logits. Probabilities that
    underflowed to 0 are clipped to the smallest positive float32.
    """
    return np.log(np.clip(np.asarray(probs, dtype=float), np.finfo(np.float32).tiny, None))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels (N,)`` under ``softmax(logits (N, K) / T)``."""
    logp = log_softmax(np.asarray(logits, float) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / T)``, ``(N, K)``."""
    return softmax(np.asarray(logits, float) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the ``T`` in ``[0.05, 20]`` minimising the NLL.

    A bounded 1-D search (Brent) over ``log T``; the NLL is convex in ``1/T``, so the
    minimum is unique.

    Args:
        logits: ``(N, K)`` held-out (validation) logits, or ``log(probs)``
            (see :func:`probs_to_logits`).
        labels: ``(N,)`` true class indices.

    Returns:
        The fitted temperature (``> 1`` softens over-confident predictions).

    Raises:
        ConfigError: on empty input or mismatched shapes.
    """
    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (len(z),) or len(z) == 0:
        raise ConfigError(
            f"Expected non-empty logits (N, K) and labels (N,), but got {z.shape} and {y.shape}."
        )
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ConfigError(f"Expected labels in [0, {z.shape[1]}), but got {sorted(set(y))}.")
    result = minimize_scalar(
        lambda log_t: nll(z, y, float(np.exp(log_t))),
        bounds=(np.log(T_MIN), np.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))
