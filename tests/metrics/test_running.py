"""The per-step metric updates that never wait for the GPU equal torchmetrics' own."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from torchmetrics import MeanMetric

from osteolightning.metrics.classification import classification_metrics, epoch_metrics
from osteolightning.metrics.running import RunningMean


def test_running_mean_equals_mean_metric():
    gen = torch.Generator().manual_seed(0)
    ours, ref = RunningMean(), MeanMetric()
    for _ in range(5):
        value, weight = torch.rand(8, generator=gen), torch.rand(8, generator=gen)
        ours.update(value, weight=weight)
        ref.update(value, weight=weight)
    ours.update(torch.tensor(0.7))
    ref.update(torch.tensor(0.7))
    torch.testing.assert_close(ours.compute(), ref.compute())


def test_running_mean_ignores_nan_like_mean_metric():
    values = torch.tensor([[1.0, float("nan"), 3.0], [float("nan"), 2.0, 2.0]])
    ours, ref = RunningMean(ignore_nan=True), MeanMetric(nan_strategy="ignore")
    for row in values:
        ours.update(row, weight=torch.tensor([1.0, 2.0, 3.0]))
        ref.update(row, weight=torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(ours.compute(), ref.compute())
    propagate = RunningMean()
    propagate.update(values[0])
    assert torch.isnan(propagate.compute())  # the training loop checks the loss itself


def test_grouped_unvalidated_collection_equals_scikit_learn():
    """Shared states and no input checks change no value, also with a class never seen: the
    logged values equal scikit-learn's over the classes present (an absent class is NaN and
    out of the macro averages, as in metrics.json)."""
    names = ["normal", "osteopenia", "osteoporosis"]
    ours = classification_metrics(names, "val/")
    gen = torch.Generator().manual_seed(1)
    probs, labels = [], []
    for _ in range(6):
        p = torch.randn(16, 3, generator=gen).softmax(1)
        y = torch.randint(0, 2, (16,), generator=gen)  # class 2 absent
        ours.update(p, y)
        probs.append(p)
        labels.append(y)
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    got = {k: float(v) for k, v in epoch_metrics(ours, names).items()}
    preds = p.argmax(1)
    assert got["val/balanced_acc"] == pytest.approx(balanced_accuracy_score(y, preds))
    assert got["val/f1_macro"] == pytest.approx(f1_score(y, preds, labels=[0, 1], average="macro"))
    for c in (0, 1):
        assert got[f"val/auroc_{names[c]}"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
    assert math.isnan(got["val/auroc_osteoporosis"])
    assert got["val/auroc_macro"] == pytest.approx(
        np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1)])
    )
    # stat scores, AUROCs, micro accuracy, the confusion matrix of the ordinal metrics
    assert len(ours.compute_groups) == 4
