"""torchmetrics collections logged per split during training (DDP-synchronised).

A class absent from an epoch's labels (a small validation split, a test fold without
osteoporosis) has no recall, and its precision, F1 and AUROC say nothing about it: they are
NaN in the logs (CSV, W&B) and it is left out of every macro average, as in ``metrics.json``
(see :mod:`osteolightning.metrics.report`), instead of entering them as zeros.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassStatScores,
)

#: The split-wide metrics :func:`epoch_metrics` returns (and ``auroc_<class>`` per class).
EPOCH_METRICS = (
    "acc",
    "balanced_acc",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "auroc_macro",
    # ordered classes (KL grades, WHO categories): monitorable, e.g. monitor=val/kappa_quadratic
    "kappa_quadratic",
    "grade_mae",
)


def classification_metrics(class_names: Sequence[str], prefix: str) -> MetricCollection:
    """The state of the logged metrics: accuracy, per-class counts and per-class AUROC.

    Args:
        class_names: class names in label-index order.
        prefix: split prefix, e.g. ``"val/"``; :func:`epoch_metrics` names its keys with it
            (``val/f1_macro``, ``val/auroc_normal``).

    Returns:
        A collection updated with ``(probs (B, K), target (B,))``. The inputs are not
        validated at each update (``validate_args=False``: the checks read device values,
        a wait for the GPU every step); the model's softmax and the DataModule's class
        indices are valid by construction. Metrics with the same state share one update
        (``compute_groups``).
    """
    k = len(class_names)
    checks = {"validate_args": False}
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(k, average="micro", **checks),
            # (K, 5): true positives, false positives, true negatives, false negatives, support
            "stats": MulticlassStatScores(k, average=None, **checks),
            "auroc": MulticlassAUROC(k, average=None, **checks),
            # (K, K) counts (rows: true class): the quadratic kappa and the grade error
            "confmat": MulticlassConfusionMatrix(k, **checks),
        },
        prefix=prefix,
        compute_groups=True,
    )


def logged_keys(class_names: Sequence[str], prefix: str) -> list[str]:
    """The keys :func:`epoch_metrics` returns, in order."""
    return [f"{prefix}{name}" for name in EPOCH_METRICS] + [
        f"{prefix}auroc_{c}" for c in class_names
    ]


def epoch_metrics(metrics: MetricCollection, class_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """An epoch's values of a :func:`classification_metrics` collection, as logged.

    Definitions follow scikit-learn (``zero_division=0``). Balanced accuracy and the macro
    averages are taken over the classes present in the labels; a class's AUROC is NaN where
    it has no positive or no negative image.

    Args:
        metrics: the collection, updated over the epoch.
        class_names: class names in label-index order.

    Returns:
        ``prefix + name`` → 0-d tensor for :data:`EPOCH_METRICS` and ``auroc_<class>``.
    """
    prefix = metrics.prefix or ""
    with warnings.catch_warnings():  # "No positive samples in targets": an absent class, NaN below
        warnings.filterwarnings("ignore", message="No positive samples", category=UserWarning)
        values = metrics.compute()
    tp, fp, _, fn, support = values[f"{prefix}stats"].float().unbind(-1)  # (K,) each
    present = support > 0
    nan = torch.full_like(tp, float("nan"))
    recall = torch.where(present, tp / support.clamp(min=1), nan)
    precision = torch.where(present, tp / (tp + fp).clamp(min=1), nan)
    f1 = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)
    both_sides = present & (support < support.sum())
    auroc = torch.where(both_sides, values[f"{prefix}auroc"].float(), nan)
    out = {
        f"{prefix}acc": values[f"{prefix}acc"],
        f"{prefix}balanced_acc": torch.nanmean(recall),
        f"{prefix}precision_macro": torch.nanmean(precision),
        f"{prefix}recall_macro": torch.nanmean(recall),
        f"{prefix}f1_macro": torch.nanmean(f1),
        f"{prefix}auroc_macro": torch.nanmean(auroc),
    }
    out.update(ordinal_metrics(values[f"{prefix}confmat"].double(), prefix))
    out.update({f"{prefix}auroc_{c}": auroc[i] for i, c in enumerate(class_names)})
    return out


def ordinal_metrics(cm: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    """Cohen's quadratic-weighted kappa and the mean absolute error in classes of a ``(K, K)``
    confusion matrix (rows: true class; as scikit-learn's ``cohen_kappa_score(...,
    weights="quadratic")`` and ``mean_absolute_error`` of the class indices); NaN when
    undefined."""
    k = cm.shape[0]
    idx = torch.arange(k, dtype=cm.dtype, device=cm.device)
    distance = (idx[:, None] - idx[None, :]).abs()
    n = cm.sum()
    expected = cm.sum(1)[:, None] * cm.sum(0)[None, :] / n.clamp(min=1)
    disagreement = (distance**2 * expected).sum()
    nan = torch.tensor(float("nan"), dtype=cm.dtype, device=cm.device)
    kappa = torch.where(
        disagreement > 0, 1 - (distance**2 * cm).sum() / disagreement.clamp(min=1e-12), nan
    )
    mae = torch.where(n > 0, (distance * cm).sum() / n.clamp(min=1), nan)
    return {f"{prefix}kappa_quadratic": kappa.float(), f"{prefix}grade_mae": mae.float()}
