import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from osteolightning.errors import ConfigError
from osteolightning.metrics.report import evaluation_report

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def _predictions(n=120, seed=0, quantise=False):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if quantise:  # many tied scores: AUROC must average ranks over ties like sklearn
        probs = np.round(probs, 1)
    return labels, probs


@pytest.mark.parametrize("quantise", [False, True])
def test_point_estimates_equal_scikit_learn(quantise):
    labels, probs = _predictions(quantise=quantise)
    preds = probs.argmax(1)
    report = evaluation_report(labels, probs, CLASSES, n_resamples=50)
    assert report["test/acc"] == pytest.approx(accuracy_score(labels, preds))
    assert report["test/balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, preds))
    p, r, f, _ = precision_recall_fscore_support(labels, preds, labels=[0, 1, 2], zero_division=0)
    assert report["test/precision_macro"] == pytest.approx(p.mean())
    assert report["test/recall_macro"] == pytest.approx(r.mean())
    assert report["test/f1_macro"] == pytest.approx(f.mean())
    for c, name in enumerate(CLASSES):
        assert report[f"test/f1_{name}"] == pytest.approx(f[c])
        assert report[f"test/auroc_{name}"] == pytest.approx(
            roc_auc_score(labels == c, probs[:, c])
        )
    # macro one-vs-rest AUROC is the mean of the per-class AUROCs (sklearn's multi_class="ovr")
    per_class = [roc_auc_score(labels == c, probs[:, c]) for c in range(3)]
    assert report["test/auroc_macro"] == pytest.approx(np.mean(per_class))
    if not quantise:
        assert report["test/auroc_macro"] == pytest.approx(
            roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        )
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (labels, preds), 1)
    assert report["test/confusion_matrix"] == cm.tolist()


def test_intervals_contain_the_point_estimate_and_shrink_with_n():
    small = evaluation_report(*_predictions(60), CLASSES, n_resamples=500)
    large = evaluation_report(*_predictions(2000), CLASSES, n_resamples=500)
    for key in ("acc", "balanced_acc", "f1_macro", "auroc_macro", "auroc_osteoporosis"):
        lo, hi = small[f"test/{key}_ci95"]
        assert lo <= small[f"test/{key}"] <= hi
        assert hi - lo > large[f"test/{key}_ci95"][1] - large[f"test/{key}_ci95"][0]


def test_report_is_deterministic_for_a_seed():
    labels, probs = _predictions()
    assert evaluation_report(labels, probs, CLASSES, seed=1) == evaluation_report(
        labels, probs, CLASSES, seed=1
    )


def test_absent_class_has_undefined_auroc():
    labels, probs = _predictions()
    keep = labels != 2
    report = evaluation_report(labels[keep], probs[keep], CLASSES, n_resamples=20)
    assert report["test/auroc_osteoporosis"] is None
    assert report["test/auroc_normal"] is not None


def test_bad_shapes_raise():
    with pytest.raises(ConfigError, match="Expected labels"):
        evaluation_report([0, 1], np.zeros((3, 3)), CLASSES)
