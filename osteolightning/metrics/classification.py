"""torchmetrics collections logged per split during training (DDP-synchronised)."""

from __future__ import annotations

from collections.abc import Sequence

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.wrappers import ClasswiseWrapper


def classification_metrics(class_names: Sequence[str], prefix: str) -> MetricCollection:
    """Accuracy, balanced accuracy, macro P/R/F1, macro and per-class one-vs-rest AUROC.

    Args:
        class_names: class names in label-index order.
        prefix: split prefix, e.g. ``"val/"``; keys read ``val/f1_macro``, ``val/auroc_normal``.

    Returns:
        A collection updated with ``(probs (B, K), target (B,))``.
    """
    k = len(class_names)
    names = [str(c) for c in class_names]
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(k, average="micro"),
            # Balanced accuracy is the macro average of per-class recall.
            "balanced_acc": MulticlassRecall(k, average="macro"),
            "precision_macro": MulticlassPrecision(k, average="macro"),
            "recall_macro": MulticlassRecall(k, average="macro"),
            "f1_macro": MulticlassF1Score(k, average="macro"),
            "auroc_macro": MulticlassAUROC(k, average="macro"),
            "auroc": ClasswiseWrapper(
                MulticlassAUROC(k, average=None), labels=names, prefix="auroc_"
            ),
        },
        prefix=prefix,
        compute_groups=False,
    )
