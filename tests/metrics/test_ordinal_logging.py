"""The logged ordinal metrics (quadratic kappa, grade MAE) of the torchmetrics collection,
accumulated over batches, against scikit-learn on the whole epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, mean_absolute_error

from osteolightning.metrics.classification import (
    classification_metrics,
    epoch_metrics,
    ordinal_metrics,
)

GRADES = [f"KL{g}" for g in range(5)]


def test_logged_kappa_and_grade_error_equal_scikit_learn():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (300,), generator=g)
    logits = torch.randn(300, 5, generator=g)
    logits[torch.arange(300), (labels + torch.randint(-1, 2, (300,), generator=g)).clamp(0, 4)] += 2
    probs = logits.softmax(1)
    metrics = classification_metrics(GRADES, "val/")
    for start in range(0, 300, 64):  # accumulated over batches, as in an epoch
        metrics.update(probs[start : start + 64], labels[start : start + 64])
    values = epoch_metrics(metrics, GRADES)
    preds = probs.argmax(1).numpy()
    assert float(values["val/kappa_quadratic"]) == pytest.approx(
        cohen_kappa_score(labels.numpy(), preds, weights="quadratic"), abs=1e-6
    )
    assert float(values["val/grade_mae"]) == pytest.approx(
        mean_absolute_error(labels.numpy(), preds), abs=1e-6
    )


def test_a_single_class_has_no_kappa():
    cm = torch.zeros(3, 3, dtype=torch.float64)
    cm[1, 1] = 4.0
    out = ordinal_metrics(cm)
    assert np.isnan(float(out["kappa_quadratic"])) and float(out["grade_mae"]) == 0.0
