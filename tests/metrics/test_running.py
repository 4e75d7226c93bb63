"""The per-step metric updates that never wait for the GPU equal torchmetrics' own."""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score, MulticlassRecall

from osteolightning.metrics.classification import classification_metrics
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


def test_grouped_unvalidated_collection_equals_validated_metrics():
    """Shared states and no input checks change no value, also with a class never seen."""
    names = ["normal", "osteopenia", "osteoporosis"]
    ours = classification_metrics(names, "val/")
    reference = MetricCollection(
        {
            "balanced_acc": MulticlassRecall(3, average="macro"),
            "f1_macro": MulticlassF1Score(3, average="macro"),
            "auroc_macro": MulticlassAUROC(3, average="macro"),
            "auroc": MulticlassAUROC(3, average=None),
        },
        prefix="val/",
        compute_groups=False,
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        probs = torch.randn(16, 3, generator=gen).softmax(1)
        labels = torch.randint(0, 2, (16,), generator=gen)  # class 2 absent
        ours.update(probs, labels)
        reference.update(probs, labels)
    got, want = ours.compute(), reference.compute()
    for key in ("val/balanced_acc", "val/f1_macro", "val/auroc_macro"):
        torch.testing.assert_close(got[key], want[key])
    for c, name in enumerate(names):
        torch.testing.assert_close(got[f"val/auroc_{name}"], want["val/auroc"][c])
    assert len(ours.compute_groups) == 3  # stat scores, AUROCs, micro accuracy
