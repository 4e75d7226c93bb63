"""Late fusion of several classifiers' probabilities: the fuzzy rank-based ensemble and baselines.

Every fusion takes ``probs`` shaped ``(M, N, K)`` (M models, N samples, K classes) as a numpy
array or a torch tensor and returns the same kind: a torch input gives torch outputs on its
device (float outputs in its floating dtype, predictions as ``int64``). The arithmetic is done in
float64 numpy.

References:
    Manna A., Kundu R., Kaplun D., Sinitca A., Sarkar R. "A fuzzy rank-based ensemble of CNN
    models for classification of cervical cytology." Scientific Reports 11:14538 (2021).
    Kundu R., Basak H., Singh P. K., Ahmadian A., Ferrara M., Sarkar R. "Fuzzy rank-based fusion
    of CNN models using Gompertz function for screening COVID-19 CT-scans." Scientific Reports
    11:14133 (2021) (the top-k penalty).
    Kumar, Goswami & Batra (2023) apply the fuzzy rank fusion to 3-class knee osteoporosis.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from scipy.optimize import minimize

from osteolightning.errors import ConfigError
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: Tolerance on "each model's probabilities sum to 1 for every sample".
SUM_TOLERANCE = 1e-3
#: Rank score of a class given confidence 0: the largest (worst) value, also the top-k penalty.
PENALTY = (1.0 - math.exp(-0.5)) * (1.0 - math.tanh(0.5))


def rank_score(p: np.ndarray) -> np.ndarray:
    """Manna et al.'s fuzzy rank score ``R1 * R2`` of confidences ``p`` (any shape; lower is better).

    ``R1 = 1 - exp(-(p - 1)^2 / 2)`` and ``R2 = 1 - tanh((p - 1)^2 / 2)``; both fall from their
    maximum at ``p = 0`` to 0 at ``p = 1``.
    """
    d = (np.asarray(p, dtype=np.float64) - 1.0) ** 2 / 2.0
    return (1.0 - np.exp(-d)) * (1.0 - np.tanh(d))


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"Expected `{name}` to be a numeric array, but got {type(x).__name__}."
        ) from err


def _like(value: np.ndarray, reference: Any) -> Any:
    """``value`` as the same kind as ``reference`` (numpy stays numpy; torch keeps device/dtype)."""
    if not isinstance(reference, torch.Tensor):
        return value
    out = torch.from_numpy(np.ascontiguousarray(value))
    if out.is_floating_point() and reference.is_floating_point():
        out = out.to(reference.dtype)
    return out.to(reference.device)


def check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    """Validate ``(M, N, K)`` probabilities and return them as float64 numpy.

    Raises:
        ConfigError: not 3-D, empty, non-finite, outside [0, 1], or a model's probabilities for
            a sample not summing to 1 (within ``SUM_TOLERANCE``); the message names the model,
            sample and class.
    """
    p = _as_numpy(probs, name)
    if p.ndim != 3 or 0 in p.shape:
        raise ConfigError(
            f"Expected `{name}` to be a non-empty 3-D array (models, samples, classes), "
            f"but got shape {tuple(p.shape)}."
        )
    for bad, what in ((~np.isfinite(p), "to be finite"), ((p < 0) | (p > 1), "to lie in [0, 1]")):
        if bad.any():
            m, n, k = np.argwhere(bad)[0]
            raise ConfigError(
                f"Expected `{name}` {what}, but model {m}, sample {n}, class {k} is {p[m, n, k]}."
            )
    sums = p.sum(axis=2)  # (M, N)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        m, n = np.argwhere(off)[0]
        raise ConfigError(
            f"Expected the probabilities of each model and sample in `{name}` to sum "
            f"to 1 (tolerance {SUM_TOLERANCE}), but model {m}, sample {n} sums to "
            f"{sums[m, n]:.6g}."
        )
    return p


def _check_top_k(top_k: Any, k: int) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 1 <= top_k <= k:
        raise ConfigError(
            f"Expected argument `top_k` to be an integer in [1, {k}], but got {top_k}."
        )
    return int(top_k)


def fuzzy_rank_fusion(probs: ArrayT, top_k: int | None = None) -> tuple[ArrayT, ArrayT]:
    """Fuzzy rank-based fusion (Manna et al. 2021): the predicted class minimises the fused score.

    For model ``i``, sample ``n`` and class ``c`` with confidence ``p``, the rank score is
    ``RS = (1 - exp(-(p - 1)^2 / 2)) * (1 - tanh((p - 1)^2 / 2))``, which is small for a
    confident class. The fused score of a class is the sum of its rank scores over the models.
    With ``top_k`` (Kundu et al. 2021), a class outside a model's ``k`` most probable classes
    gets the fixed penalty ``RS(0) = (1 - exp(-1/2)) * (1 - tanh(1/2)) ≈ 0.2116`` from that
    model instead (ties at the k-th place go to the lower class index).

    Ties: the rank scores are summed in sorted order, so classes whose scores are the same
    multiset over the models get bit-identical fused scores, and the lowest class index wins.

    Args:
        probs: ``(M, N, K)`` probabilities of M models for N samples and K classes; each model's
            row sums to 1. A numpy array or a torch tensor.
        top_k: keep the rank scores of each model's ``k`` most probable classes only; ``None``
            (default) keeps all, as does ``top_k=K``.

    Returns:
        ``(fused_scores, predictions)``: ``(N, K)`` fused scores (lower is better, in
        ``[0, M * RS(0)]``) and ``(N,)`` predicted class indices; the same kind as ``probs``.

    Raises:
        ConfigError: invalid ``probs`` (see :func:`check_probs`) or ``top_k``.

    Example:
        >>> import numpy as np
        >>> probs = np.array([[[0.7, 0.2, 0.1]], [[0.3, 0.6, 0.1]], [[0.6, 0.3, 0.1]]])
        >>> scores, preds = fuzzy_rank_fusion(probs)
        >>> scores.shape, preds.tolist()
        ((1, 3), [0])
    """
    p = check_probs(probs)
    k = _check_top_k(top_k, p.shape[2])
    rs = rank_score(p)  # (M, N, K)
    if k is not None:
        # order: (M, N, K) class indices by falling probability, stable → lower index first.
        order = np.argsort(-p, axis=2, kind="stable")
        outside = np.ones_like(p, dtype=bool)
        np.put_along_axis(outside, order[:, :, :k], False, axis=2)
        rs = np.where(outside, PENALTY, rs)
    fused = np.sort(rs, axis=0).sum(axis=0)  # (N, K); sorted: order-independent sums
    return _like(fused, probs), _like(fused.argmin(axis=1), probs)


def fuzzy_scores_to_probs(fused: ArrayT, n_models: int) -> ArrayT:
    """Turn fuzzy fused scores into class confidences that sum to 1 (for AUROC and CSV output).

    ``confidence = clip(1 - fused / (n_models * RS(0)), 0, 1)``, normalised over the classes (a
    row of zeros becomes uniform). The transform is monotone decreasing **within a sample**: a
    lower fused score never gets a lower confidence, so the argmax of the result is the fuzzy
    argmin (up to floating-point resolution). It is not a calibrated probability, and values are
    not comparable across different numbers of models.

    Args:
        fused: ``(..., K)`` fused scores from :func:`fuzzy_rank_fusion`.
        n_models: M, the number of fused models.

    Returns:
        ``(..., K)`` confidences summing to 1 over the last axis; the same kind as ``fused``.

    Raises:
        ConfigError: ``n_models`` not a positive integer.

    Example:
        >>> import numpy as np
        >>> fuzzy_scores_to_probs(np.array([[0.0, PENALTY]]), n_models=1).tolist()
        [[1.0, 0.0]]
    """
    if isinstance(n_models, bool) or not isinstance(n_models, int | np.integer) or n_models < 1:
        raise ConfigError(
            f"Expected argument `n_models` to be a positive integer, but got {n_models}."
        )
    f = _as_numpy(fused, "fused")
    conf = np.clip(1.0 - f / (n_models * PENALTY), 0.0, 1.0)
    total = conf.sum(axis=-1, keepdims=True)
    uniform = np.full_like(conf, 1.0 / conf.shape[-1])
    out = np.divide(conf, total, out=uniform, where=total > 0)
    return _like(out, fused)


def mean_probability_fusion(probs: ArrayT) -> tuple[ArrayT, ArrayT]:
    """Average the models' probabilities (soft voting); ties go to the lowest class index.

    Args:
        probs: ``(M, N, K)`` probabilities.

    Returns:
        ``(fused_probs (N, K), predictions (N,))``, the same kind as ``probs``.

    Example:
        >>> import numpy as np
        >>> fused, preds = mean_probability_fusion(np.array([[[0.9, 0.1]], [[0.2, 0.8]]]))
        >>> fused.round(2).tolist(), preds.tolist()
        ([[0.55, 0.45]], [0])
    """
    fused = check_probs(probs).mean(axis=0)  # (N, K)
    return _like(fused, probs), _like(fused.argmax(axis=1), probs)


def majority_vote_fusion(probs: ArrayT) -> tuple[ArrayT, ArrayT]:
    """Hard voting: each model votes for its most probable class; ties by the mean probability.

    The fused "probabilities" are ``(votes + mean_probability) / (M + 1)``: they sum to 1, their
    argmax is the majority class (a vote outweighs any difference in mean probability), a tied
    vote goes to the class with the higher mean probability, then to the lowest index, and the
    mean probability gives AUROC a finer ranking than vote counts alone.

    Args:
        probs: ``(M, N, K)`` probabilities.

    Returns:
        ``(fused_probs (N, K), predictions (N,))``, the same kind as ``probs``.

    Example:
        >>> import numpy as np
        >>> probs = np.array([[[0.6, 0.4]], [[0.6, 0.4]], [[0.0, 1.0]]])
        >>> majority_vote_fusion(probs)[1].tolist()  # two votes for class 0 beat mean 0.6 for 1
        [0]
    """
    p = check_probs(probs)
    m, _, k = p.shape
    votes = np.eye(k)[p.argmax(axis=2)].sum(axis=0)  # (N, K)
    fused = (votes + p.mean(axis=0)) / (m + 1)
    return _like(fused, probs), _like(fused.argmax(axis=1), probs)


def _check_weights(weights: Any, m: int) -> np.ndarray:
    w = _as_numpy(weights, "weights")
    if w.shape != (m,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(
            f"Expected argument `weights` to be {m} finite non-negative numbers with a "
            f"positive sum (one per model), but got {w.tolist()}."
        )
    return w / w.sum()


def weighted_mean_fusion(probs: ArrayT, weights: Any) -> tuple[ArrayT, ArrayT]:
    """Weighted average of the models' probabilities (weights are normalised to sum to 1).

    Args:
        probs: ``(M, N, K)`` probabilities.
        weights: ``(M,)`` non-negative weights, e.g. from :func:`fit_fusion_weights`.

    Returns:
        ``(fused_probs (N, K), predictions (N,))``, the same kind as ``probs``.

    Raises:
        ConfigError: invalid ``probs`` or weights of the wrong length, negative or all zero.

    Example:
        >>> import numpy as np
        >>> probs = np.array([[[0.9, 0.1]], [[0.2, 0.8]]])
        >>> weighted_mean_fusion(probs, [1, 3])[1].tolist()
        [1]
    """
    p = check_probs(probs)
    w = _check_weights(weights, p.shape[0])
    fused = np.einsum("m,mnk->nk", w, p)
    return _like(fused, probs), _like(fused.argmax(axis=1), probs)


def fit_fusion_weights(val_probs: ArrayT, val_labels: Any) -> ArrayT:
    """Weights on the simplex that minimise the validation log-loss of the weighted mean.

    The log-loss of a convex combination is convex in the weights, so SLSQP from the uniform
    start finds the global minimum. Fit on validation predictions, never on the test set.

    Args:
        val_probs: ``(M, N, K)`` validation probabilities.
        val_labels: ``(N,)`` true class indices.

    Returns:
        ``(M,)`` non-negative weights summing to 1; the same kind as ``val_probs``.

    Raises:
        ConfigError: invalid probabilities or labels.

    Example:
        >>> import numpy as np
        >>> good = np.array([[0.9, 0.1], [0.1, 0.9]])
        >>> bad = np.array([[0.5, 0.5], [0.5, 0.5]])
        >>> w = fit_fusion_weights(np.stack([good, bad]), [0, 1])
        >>> bool(w[0] > w[1])
        True
    """
    p = check_probs(val_probs, "val_probs")
    m, n, k = p.shape
    y = np.asarray(val_labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or ((y < 0) | (y >= k)).any():
        raise ConfigError(
            f"Expected `val_labels` to be {n} class indices in [0, {k - 1}], but got "
            f"shape {y.shape} with values {np.unique(y).tolist()[:10]}."
        )
    p_true = p[:, np.arange(n), y]  # (M, N): each model's probability of the true class

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.clip(w @ p_true, 1e-12, None)  # (N,)
        return float(-np.log(q).mean()), -(p_true / q).mean(axis=1)

    result = minimize(
        loss,
        np.full(m, 1.0 / m),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0},),
    )
    w = np.clip(result.x, 0.0, None)
    return _like(w / w.sum(), val_probs)


#: Fusion methods by name (the ``method`` of ``osteo-ensemble``). ``fuzzy_rank`` returns fused
#: scores (lower is better); the others return fused probabilities.
FUSIONS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "fuzzy_rank": fuzzy_rank_fusion,
    "mean": mean_probability_fusion,
    "majority_vote": majority_vote_fusion,
    "weighted_mean": weighted_mean_fusion,
}
#: The option each method takes besides ``probs``.
METHOD_OPTIONS: dict[str, str] = {"fuzzy_rank": "top_k", "weighted_mean": "weights"}


def check_method(method: str) -> str:
    """Return ``method`` if it is a key of :data:`FUSIONS`; else raise with a suggestion.

    Raises:
        ConfigError: an unknown name ("did you mean ...?").
    """
    if method in FUSIONS:
        return method
    close = difflib.get_close_matches(str(method), list(FUSIONS), n=1)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    raise ConfigError(
        f"Expected argument `method` to be one of {list(FUSIONS)}, but got {method!r}.{hint}"
    )


def fuse(
    method: str, probs: ArrayT, *, top_k: int | None = None, weights: Any = None
) -> tuple[ArrayT, ArrayT]:
    """Fuse with the named method and return probabilities whatever the method.

    ``fuzzy_rank`` scores go through :func:`fuzzy_scores_to_probs`; its predictions stay the
    fuzzy argmin. ``top_k`` applies to ``fuzzy_rank`` only and ``weights`` to ``weighted_mean``
    only; an option the method does not take is ignored with a warning.

    Args:
        method: a key of :data:`FUSIONS`.
        probs: ``(M, N, K)`` probabilities.
        top_k: the fuzzy top-k option.
        weights: ``(M,)`` weights for ``weighted_mean``.

    Returns:
        ``(fused_probs (N, K), predictions (N,))``, the same kind as ``probs``.

    Raises:
        ConfigError: an unknown method, or ``weighted_mean`` without ``weights``.

    Example:
        >>> import numpy as np
        >>> fused, preds = fuse("fuzzy_rank", np.array([[[0.7, 0.3]], [[0.4, 0.6]]]))
        >>> preds.tolist(), bool(np.allclose(fused.sum(axis=1), 1))
        ([0], True)
    """
    method = check_method(method)
    options = {"top_k": top_k, "weights": weights}
    takes = METHOD_OPTIONS.get(method)
    for name, value in options.items():
        if value is not None and name != takes:
            log.warning(f"Ignoring `{name}={value}`: method `{method}` does not use it.")
    if method == "weighted_mean" and weights is None:
        raise ConfigError("Method `weighted_mean` needs `weights` (see fit_fusion_weights).")
    fused, preds = FUSIONS[method](probs, **({takes: options[takes]} if takes else {}))
    if method == "fuzzy_rank":
        fused = fuzzy_scores_to_probs(fused, len(probs))
    return fused, preds
