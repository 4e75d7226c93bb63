"""Closed-form heads on fixed features: a class-balanced multinomial logistic regression and a
ridge regression (scikit-learn), their strengths chosen by grouped inner cross-validation, on
standardised features. :class:`~osteolightning.models.fitted.FittedHeadClassifier` fits them on
a run's training split; the permutation tests refit them on shuffled labels or features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from osteolightning.errors import ConfigError

#: the strengths ``C = "auto"`` chooses among (inverse L2 penalty; log-spaced)
DEFAULT_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
#: the logit of a class the training split does not have (probability 0)
ABSENT_LOGIT = -1.0e4
#: the ridge strengths ``alpha = "auto"`` chooses among (on standardised features and target)
DEFAULT_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training means and standard deviations ``(D,)`` of ``(N, D)`` features (1 where
    constant)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return mean, scale


@dataclass(frozen=True)
class LogisticFit:
    """A fitted head: ``logits = coef @ ((x - mean) / scale) + intercept``.

    Attributes:
        coef: ``(K, D)``; rows of classes absent from the training data are 0.
        intercept: ``(K,)``; absent classes get :data:`ABSENT_LOGIT`.
        mean: ``(D,)`` training means.
        scale: ``(D,)`` training standard deviations (1 where constant).
        C: the strength used.
        inner_scores: ``C`` → mean inner-CV log-loss (``C = "auto"`` only).
    """

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    C: float
    inner_scores: dict[float, float]


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    C: float | str = "auto",
    Cs: Sequence[float] = DEFAULT_CS,
    groups: np.ndarray | None = None,
    inner_folds: int = 5,
    seed: int = 0,
) -> LogisticFit:
    """Fit a class-balanced multinomial logistic regression (L2, lbfgs) on standardised features.

    Args:
        features: ``(N, D)`` training features.
        labels: ``(N,)`` class indices in ``[0, k)``.
        k: the number of classes.
        C: the inverse regularisation strength, or ``"auto"``: the one of ``Cs`` with the best
            mean log-loss over ``inner_folds`` stratified, grouped folds of these images.
        Cs: the candidates of ``"auto"``.
        groups: ``(N,)`` group ids (patient or copy groups: never split across inner folds).
        inner_folds: folds of the inner search (fewer when a class has fewer groups).
        seed: the inner folds' seed.

    Returns:
        The fit, with the coefficients of every class (absent ones: :data:`ABSENT_LOGIT`).

    Raises:
        ConfigError: fewer than two classes in the training data, a bad ``C``.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    mean, scale = standardisation(x)
    coef, intercept, chosen, scores = fit_logistic_z(
        (x - mean) / scale, y, k, C, Cs, groups, inner_folds, seed
    )
    return LogisticFit(coef, intercept, mean, scale, chosen, scores)


def fit_logistic_z(
    z: np.ndarray,
    y: np.ndarray,
    k: int,
    C: float | str = "auto",
    Cs: Sequence[float] = DEFAULT_CS,
    groups: np.ndarray | None = None,
    inner_folds: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float, dict[float, float]]:
    """:func:`fit_logistic` on features already standardised (or scaled on purpose, e.g. a
    block weighted down): ``(coef (K, D), intercept (K,), C, inner scores)``, logits
    ``z @ coef.T + intercept``."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    if len(present) < 2:
        raise ConfigError(
            f"The training split holds images of one class only ({present.tolist()}): a "
            "classifier needs at least two. Check the data's labels and split fractions."
        )
    d = z.shape[1]
    # Wider than tall (an embedding of 1280 numbers, ~100 training images): fit in the span of
    # the training rows. The L2-penalised solution lies there (the representer theorem; the
    # intercept is not penalised), and the penalty's norm is kept by the orthonormal basis, so
    # the fit is the same problem in N instead of D dimensions (inner folds' rows lie in the
    # span too): several times faster for the permutation test's thousands of fits.
    basis = _row_space(z)
    if basis is not None:
        z = z @ basis
    scores: dict[float, float] = {}
    if C == "auto":
        scores = _inner_search(z, y, Cs, groups, inner_folds, seed)
        chosen = min(scores, key=lambda c: (scores[c], -c))
    else:
        try:
            chosen = float(C)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"Expected `C` to be a positive number or 'auto', but got {C!r}."
            ) from err
        if not chosen > 0:
            raise ConfigError(f"Expected `C` to be a positive number or 'auto', but got {C!r}.")
    model = LogisticRegression(C=chosen, class_weight="balanced", max_iter=5000)
    model.fit(z, y)
    if basis is not None:  # back to the D standardised features
        model.coef_ = model.coef_ @ basis.T
    coef = np.zeros((k, d))
    intercept = np.full(k, ABSENT_LOGIT)
    if len(model.classes_) == 2:  # sklearn's binary form: logit of the second class only
        coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
        intercept[model.classes_[0]] = 0.0
    else:
        coef[model.classes_] = model.coef_
        intercept[model.classes_] = model.intercept_
    return coef, intercept, chosen, scores


def _row_space(z: np.ndarray) -> np.ndarray | None:
    """An orthonormal ``(D, r)`` basis of the span of the rows of ``z`` (``None`` when ``z`` is
    not wider than tall: nothing to gain)."""
    n, d = z.shape
    if d <= n:
        return None
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    rank = int(np.sum(singular > singular[0] * max(n, d) * np.finfo(np.float64).eps))
    return vt[:rank].T if rank else None


def _inner_search(
    z: np.ndarray,
    y: np.ndarray,
    Cs: Sequence[float],
    groups: np.ndarray | None,
    inner_folds: int,
    seed: int,
) -> dict[float, float]:
    """Mean inner-CV log-loss of each ``C`` (folds stratified by class, grouped)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    smallest = min(len(np.unique(groups[y == c])) for c in np.unique(y))
    n_splits = max(2, min(int(inner_folds), smallest))
    if smallest < 2:
        return {float(c): 0.0 for c in Cs[len(Cs) // 2 : len(Cs) // 2 + 1]}  # nothing to search
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    labels = np.unique(y)
    splits = list(folds.split(z, y, groups))  # once: the same folds for every C
    scores = {}
    for c in Cs:
        losses = []
        for train, test in splits:
            if len(np.unique(y[train])) < 2:
                continue
            model = LogisticRegression(C=float(c), class_weight="balanced", max_iter=5000)
            model.fit(z[train], y[train])
            probs = np.full((len(test), len(labels)), 1e-9)
            probs[:, np.searchsorted(labels, model.classes_)] = model.predict_proba(z[test])
            losses.append(log_loss(y[test], probs / probs.sum(1, keepdims=True), labels=labels))
        scores[float(c)] = float(np.mean(losses)) if losses else float("inf")
    return scores


@dataclass(frozen=True)
class RidgeFit:
    """A fitted linear regression on standardised features: ``y = coef @ z + intercept``.

    Attributes:
        coef: ``(D,)``.
        intercept: the intercept.
        alpha: the strength used.
        inner_scores: ``alpha`` → mean inner-CV squared error (``alpha = "auto"`` only).
    """

    coef: np.ndarray
    intercept: float
    alpha: float
    inner_scores: dict[float, float]


def fit_ridge(
    z: np.ndarray,
    y: np.ndarray,
    alpha: float | str = "auto",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    groups: np.ndarray | None = None,
    inner_folds: int = 5,
) -> RidgeFit:
    """Fit a ridge regression (scikit-learn) on standardised features.

    Args:
        z: ``(N, D)`` standardised training features.
        y: ``(N,)`` targets (standardised), all known.
        alpha: the L2 strength, or ``"auto"``: the one of ``alphas`` with the smallest mean
            squared error over ``inner_folds`` grouped folds (``GroupKFold``).
        alphas: the candidates of ``"auto"``.
        groups: ``(N,)`` group ids (never split across inner folds).
        inner_folds: folds of the inner search (fewer when there are fewer groups).

    Raises:
        ConfigError: fewer than two training values, a bad ``alpha``.
    """
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold

    if len(y) < 2:
        raise ConfigError(
            f"The regression head needs at least 2 training images with a known target, but "
            f"got {len(y)}."
        )
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    scores: dict[float, float] = {}
    if alpha == "auto":
        n_splits = min(int(inner_folds), len(np.unique(groups)))
        if n_splits >= 2:
            for a in alphas:
                errors = []
                for train, test in GroupKFold(n_splits=n_splits).split(z, y, groups):
                    model = Ridge(alpha=float(a)).fit(z[train], y[train])
                    errors.append(float(np.mean((model.predict(z[test]) - y[test]) ** 2)))
                scores[float(a)] = float(np.mean(errors))
            chosen = min(scores, key=lambda a: (scores[a], -a))
        else:
            chosen = float(alphas[len(alphas) // 2])
    else:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
            raise ConfigError(
                f"Expected argument `alpha` to be a positive number or 'auto', but got {alpha!r}."
            )
        chosen = float(alpha)
    model = Ridge(alpha=chosen).fit(z, y)
    return RidgeFit(
        np.asarray(model.coef_, dtype=np.float64), float(model.intercept_), chosen, scores
    )


@dataclass(frozen=True)
class HeadFit:
    """A fitted linear head: ``outputs = ((x - mean) / scale) @ coef.T + intercept``, the ``K``
    logits then (with a regression head) the standardised target prediction.

    Attributes:
        mean: ``(D,)`` training means.
        scale: ``(D,)`` training standard deviations (1 where constant).
        coef: ``(O, D)``.
        intercept: ``(O,)``.
        info: what the fit chose (``C``, ``alpha``, ``image_weight``), logged as ``train/*``.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    info: dict[str, float]

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """``(M, D)`` features → ``(M, O)`` outputs."""
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept


def weight_block(z: np.ndarray, d_image: int, w: float) -> np.ndarray:
    """``z`` with its first ``d_image`` columns (the image block) times ``w``. An L2 penalty on
    the weighted features is a penalty ``1 / w²`` times as strong on the image's coefficients
    as on the covariates': the two blocks regularised separately with one solver; ``w = 0`` is
    the covariates alone."""
    if w == 1.0:
        return z
    out = np.array(z, dtype=np.float64, copy=True)
    out[:, :d_image] *= w
    return out
