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
        A collection updated with ``(probs (B, K), target (B,))``. The inputs are not
        validated at each update (``validate_args=False``: the checks read device values,
        a wait for the GPU every step); the model's softmax and the DataModule's class
        indices are valid by construction. Metrics with the same state share one update
        (``compute_groups``): the five confusion-matrix metrics one, the two AUROCs one
        list of predictions.
    """
    k = len(class_names)
    names = [str(c) for c in class_names]
    checks = {"validate_args": False}
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(k, average="micro", **checks),
            # Balanced accuracy is the macro average of per-class recall.
            "balanced_acc": MulticlassRecall(k, average="macro", **checks),
            "precision_macro": MulticlassPrecision(k, average="macro", **checks),
            "recall_macro": MulticlassRecall(k, average="macro", **checks),
            "f1_macro": MulticlassF1Score(k, average="macro", **checks),
            "auroc_macro": MulticlassAUROC(k, average="macro", **checks),
            "auroc": ClasswiseWrapper(
                MulticlassAUROC(k, average=None, **checks), labels=names, prefix="auroc_"
            ),
        },
        prefix=prefix,
        compute_groups=True,
    )
