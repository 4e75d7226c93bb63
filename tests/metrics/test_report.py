import time

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    mean_absolute_error,
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


def test_an_absent_class_is_left_out_of_the_macro_averages():
    """A class without test images does not enter the macro averages as zero: they equal
    scikit-learn's with ``labels=`` the classes present, and the report names the absent one."""
    labels, probs = _predictions(200)
    keep = labels != 2
    labels, probs = labels[keep], probs[keep]
    preds = probs.argmax(1)
    assert (preds == 2).any()  # predictions into the absent class count as errors
    report = evaluation_report(labels, probs, CLASSES, n_resamples=50)
    p, r, f, _ = precision_recall_fscore_support(
        labels, preds, labels=[0, 1], average="macro", zero_division=0
    )
    assert report["test/precision_macro"] == pytest.approx(p)
    assert report["test/recall_macro"] == pytest.approx(r)
    assert report["test/f1_macro"] == pytest.approx(f)
    _, _, with_zero, _ = precision_recall_fscore_support(
        labels, preds, labels=[0, 1, 2], average="macro", zero_division=0
    )
    assert report["test/f1_macro"] > with_zero  # what counting it as zero would give
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        balanced = balanced_accuracy_score(labels, preds)
    assert report["test/balanced_acc"] == pytest.approx(balanced)
    assert report["test/absent_classes"] == ["osteoporosis"]
    for metric in ("precision", "recall", "f1", "auroc"):
        assert report[f"test/{metric}_osteoporosis"] is None
        assert report[f"test/{metric}_osteoporosis_ci95"] is None
    lo, hi = report["test/f1_macro_ci95"]
    assert lo <= report["test/f1_macro"] <= hi
    assert "test/absent_classes" not in evaluation_report(*_predictions(), CLASSES, n_resamples=5)


def test_bad_shapes_raise():
    with pytest.raises(ConfigError, match="Expected labels"):
        evaluation_report([0, 1], np.zeros((3, 3)), CLASSES)


def test_kappas_equal_scikit_learn_and_intervals_contain_them():
    labels, probs = _predictions(200)
    report = evaluation_report(labels, probs, CLASSES, n_resamples=300)
    preds = probs.argmax(1)
    assert report["test/kappa"] == pytest.approx(cohen_kappa_score(labels, preds, labels=[0, 1, 2]))
    assert report["test/kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(labels, preds, labels=[0, 1, 2], weights="quadratic")
    )
    for key in ("kappa", "kappa_quadratic", "ece"):
        lo, hi = report[f"test/{key}_ci95"]
        assert lo <= report[f"test/{key}"] <= hi, key


def test_grade_errors_equal_scikit_learn_on_five_grades():
    """Ordered classes (KL 0-4): the mean absolute error in grades and the share off by at
    most one grade, against scikit-learn, with intervals around them."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5))
    logits[np.arange(300), np.clip(labels + rng.integers(-2, 3, 300), 0, 4)] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = evaluation_report(labels, probs, [f"KL{g}" for g in range(5)], n_resamples=300)
    preds = probs.argmax(1)
    assert report["test/grade_mae"] == pytest.approx(mean_absolute_error(labels, preds))
    assert report["test/acc_within1"] == pytest.approx(np.mean(np.abs(preds - labels) <= 1))
    assert report["test/kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(labels, preds, weights="quadratic")
    )
    for key in ("grade_mae", "acc_within1"):
        lo, hi = report[f"test/{key}_ci95"]
        assert lo <= report[f"test/{key}"] <= hi, key


def _loop_ece(labels, probs, n_bins=15):
    """Guo et al. 2017, written out: bins ((m-1)/M, m/M], sum |B|/N |acc(B) - conf(B)|."""
    conf, preds = probs.max(1), probs.argmax(1)
    ece = 0.0
    for m in range(1, n_bins + 1):
        lo, hi = (m - 1) / n_bins, m / n_bins
        in_bin = [i for i in range(len(labels)) if lo < conf[i] <= hi]
        if in_bin:
            acc = np.mean([preds[i] == labels[i] for i in in_bin])
            ece += len(in_bin) / len(labels) * abs(acc - np.mean(conf[in_bin]))
    return ece


@pytest.mark.parametrize("quantise", [False, True])
def test_ece_equals_a_loop_implementation(quantise):
    labels, probs = _predictions(quantise=quantise)  # quantised: confidences on bin edges
    report = evaluation_report(labels, probs, CLASSES, n_resamples=20)
    assert report["test/ece"] == pytest.approx(_loop_ece(labels, probs))


def test_bootstrap_of_1000_resamples_is_fast():
    labels, probs = _predictions(200)
    start = time.perf_counter()
    evaluation_report(labels, probs, CLASSES, n_resamples=1000)
    assert time.perf_counter() - start < 1.0  # typically ~0.2 s; generous for a shared CPU


def test_single_class_kappa_is_undefined():
    labels = np.zeros(10, dtype=int)
    probs = np.tile([0.8, 0.1, 0.1], (10, 1))
    report = evaluation_report(labels, probs, CLASSES, n_resamples=10)
    assert report["test/kappa"] is None and report["test/kappa_ci95"] is None
