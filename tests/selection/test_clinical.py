"""Does the image add anything to the record? The conditional permutation test of the image,
the fusion that keeps what the record knows, the study's paired comparisons and T-score rows,
and experiment=knee_clinical end to end on the tiny phantom."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error

from osteolightning.data.splits import assign_splits
from osteolightning.errors import ConfigError
from osteolightning.metrics.compare import delong_ovr, paired_bootstrap
from osteolightning.models.components.features import FeatureHead, NoImageEmbedder
from osteolightning.models.fitted import FittedHeadClassifier
from osteolightning.runs import rundir
from osteolightning.selection.clinical import compare_with, target_report
from osteolightning.selection.null import Fold, image_permutation_test
from tests.helpers import run_osteo

CLASSES = ["a", "b", "c"]


def _study(n: int = 150, image_signal: float = 0.0, seed: int = 0):
    """A record that carries part of the class, and 8 image features that carry
    ``image_signal`` more of it (independent of the record)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    record = rng.normal(size=(n, 2))
    record[:, 0] += 0.8 * labels
    image = rng.normal(size=(n, 8))
    image[:, 0] += image_signal * labels
    return labels, np.arange(n), np.hstack([image, record])


def _folds(labels, groups, features, image_weight="auto", k: int = 3) -> list[Fold]:
    net = FeatureHead(NoImageEmbedder(), 3, dim=8)  # 8 image features, the rest covariates
    model = FittedHeadClassifier(
        net, CLASSES, C=0.3, Cs=[0.3], inner_folds=3, image_weight=image_weight,
        image_weights=[0.0, 0.3, 1.0],
    )  # fmt: skip
    return [
        Fold(
            paths=[f"img{i}" for i in range(len(labels))],
            features=features,
            labels=labels,
            groups=groups,
            codes=assign_splits(labels, groups, num_folds=k, fold=f),
            model=model,
        )
        for f in range(k)
    ]


def test_the_image_permutation_test_finds_what_the_image_adds_and_nothing_else():
    labels, groups, planted = _study(image_signal=1.5)
    found = image_permutation_test(_folds(labels, groups, planted), n_permutations=19)
    assert found["p_value"] == pytest.approx(1 / 20) and found["observed"] > found["null_q95"]
    labels, groups, nothing = _study(image_signal=0.0, seed=1)
    test = image_permutation_test(_folds(labels, groups, nothing), n_permutations=19)
    assert test["p_value"] > 0.1
    # the null keeps the record: its mean is the record's own skill, well above chance
    assert test["null_mean"] > 0.6


def test_the_image_weight_keeps_what_the_record_knows():
    """Many noise image features beside an informative record: one penalty for both blocks
    drowns the record; the chosen image weight (0 included) does not."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 40)
    record = rng.normal(size=(120, 2))
    record[:, 0] += 1.2 * labels
    x = np.hstack([rng.normal(size=(120, 300)), record])
    net = FeatureHead(NoImageEmbedder(), 3, dim=300)
    scores = {}
    for weight in (1.0, "auto"):
        model = FittedHeadClassifier(net, CLASSES, inner_folds=3, image_weight=weight)
        train, test = np.arange(120) % 3 != 0, np.arange(120) % 3 == 0
        fit = model.fit_head(x[train], labels[train], np.arange(120)[train], np.full(80, np.nan))
        scores[weight] = float((fit.outputs(x[test])[:, :3].argmax(1) == labels[test]).mean())
        if weight == "auto":
            assert fit.info["image_weight"] < 1.0
    assert scores["auto"] > scores[1.0] + 0.1, scores


def test_the_image_test_needs_a_model_that_fuses():
    labels, groups, x = _study()
    folds = _folds(labels, groups, x[:, :8])  # image features only
    with pytest.raises(ConfigError, match="fuses image features with covariates"):
        image_permutation_test(folds, n_permutations=3)


def _write_run(run: Path, paths, labels, probs, truth=None, pred=None) -> Path:
    run.mkdir(parents=True)
    extra = None
    if truth is not None:
        extra = {
            "t_score": list(truth),
            "t_score_pred": list(pred),
            "t_score_low": list(pred - 1.0),
            "t_score_high": list(pred + 1.0),
        }
    rundir.write_predictions(
        run / rundir.PREDICTIONS, paths, labels, probs, CLASSES, trailing=extra
    )
    return run


def test_paired_comparisons_and_t_score_rows_match_their_references(tmp_path):
    rng = np.random.default_rng(0)
    n = 90
    labels = np.repeat(np.arange(3), n // 3)
    paths = [f"/k/{i}.png" for i in range(n)]
    truth = rng.normal(-1.8, 0.7, n)

    def model(noise: float) -> tuple[np.ndarray, np.ndarray]:
        logits = rng.normal(size=(n, 3)) * noise
        logits[np.arange(n), labels] += 1.0
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return probs, truth + rng.normal(0, noise, n)

    runs = {}
    for name, noise in (("record", 0.8), ("fusion", 0.5), ("image", 2.0)):
        probs, pred = model(noise)
        half = n // 2  # two outer folds, each image tested once
        runs[name] = [
            _write_run(tmp_path / name / str(f), paths[s], labels[s], probs[s], truth[s], pred[s])
            for f, s in enumerate((slice(0, half), slice(half, n)))
        ]
    report = target_report(runs["fusion"], n_resamples=200)
    probs_f, pred_f, truth = _read(runs["fusion"])
    assert report["test/t_score_mae"] == pytest.approx(mean_absolute_error(truth, pred_f))
    inside = np.mean(np.abs(pred_f - truth) <= 1.0)
    assert report["test/t_score_coverage"] == pytest.approx(inside)
    low, high = report["test/t_score_mae_ci95"]
    assert low <= report["test/t_score_mae"] <= high

    paired = compare_with(runs, "record", n_resamples=200)
    assert set(paired) == {"fusion", "image"}
    probs_r, pred_r, _ = _read(runs["record"])
    expected = paired_bootstrap(labels, probs_f, probs_r, paths, CLASSES, n_resamples=200)
    assert paired["fusion"]["bootstrap"]["auroc_macro"]["diff"] == pytest.approx(
        expected["auroc_macro"]["diff"]
    )
    delong = delong_ovr(labels, probs_f, probs_r, CLASSES)
    assert paired["fusion"]["delong"]["a"]["p_value"] == pytest.approx(delong["a"]["p_value"])
    mae_diff = np.mean(np.abs(pred_f - truth)) - np.mean(np.abs(pred_r - truth))
    assert paired["fusion"]["t_mae"]["diff"] == pytest.approx(mae_diff)
    # Holm over the two recipes: adjusted >= raw, and the smaller p doubled (two tests)
    ps = {n: paired[n]["bootstrap"]["auroc_macro"]["p_value"] for n in paired}
    adjusted = {n: paired[n]["bootstrap"]["auroc_macro"]["holm"] for n in paired}
    smallest = min(ps, key=ps.get)
    assert adjusted[smallest] == pytest.approx(min(1.0, 2 * ps[smallest]))
    assert all(adjusted[n] >= ps[n] for n in ps)
    # a model without a regression head has no T-score row
    no_head = [
        _write_run(tmp_path / "rule" / "0", paths, labels, np.full((n, 3), 1 / 3)),
    ]
    assert target_report(no_head) is None


def _read(runs: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, T-score predictions and truths as written (rounded) in the files."""
    probs, pred, truth = [], [], []
    for run in runs:
        with open(run / rundir.PREDICTIONS, newline="") as handle:
            for row in csv.DictReader(handle):
                probs.append([float(row[f"prob_{c}"]) for c in CLASSES])
                pred.append(float(row["t_score_pred"]))
                truth.append(float(row["t_score"]))
    return np.array(probs), np.array(pred), np.array(truth)


def test_knee_clinical_runs_end_to_end(tmp_path, cache_dir, phantom_dir):
    """The record, the image and their fusion in one nested CV of the tiny phantom: every
    recipe's class and T-score rows, the paired comparisons with the record, the image test
    for the fusion only, and study.md."""
    done = run_osteo("train", ["experiment=knee_clinical_tiny"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    result = json.loads((sweep / "selection" / "selection.json").read_text())
    rows = result["every_recipe"]
    assert set(rows) == {"record", "image", "fusion"}
    for row in rows.values():
        assert row["pooled"]["test/n"] == 60 and row["target"]["test/t_score_n"] == 60
        assert row["permutation"]["n_permutations"] == 9
    assert "image_permutation" in rows["fusion"]
    assert "image_permutation" not in rows["record"] and "image_permutation" not in rows["image"]
    assert result["paired"]["baseline"] == "record"
    assert set(result["paired"]["recipes"]) == {"image", "fusion"}
    study = (sweep / "selection" / "study.md").read_text()
    assert "| majority class |" in study and "Paired against `record`" in study
    assert "t_score agreement" in study and "| fusion |" in study
    # every recipe tested the same knees: the paired comparisons use all of them
    assert all(r["n"] == 60 for r in result["paired"]["recipes"].values())


def test_the_recommended_recipe_scores_unseen_knees(tmp_path, cache_dir, phantom_dir):
    """experiment=knee_clinical_best trains on one manifest; osteo-eval scores a manifest of
    other knees with the same columns (the commands the README states)."""
    with open(phantom_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    seen = {r["patient_id"] for r in rows[:40]}
    for name, part in (
        ("train.csv", [r for r in rows if r["patient_id"] in seen]),
        ("unseen.csv", kept := [r for r in rows if r["patient_id"] not in seen]),
    ):
        with open(tmp_path / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in part:
                writer.writerow({**r, "image": str(phantom_dir / r["image"]),
                                 "mask": str(phantom_dir / r["mask"])})  # fmt: skip
    train_csv = tmp_path / "train.csv"
    common = ["logger=csv", "data.allow_separating=[bmd]"]  # the phantom's BMD is its T-score
    done = run_osteo(
        "train", ["experiment=knee_clinical_best", f"data.root={train_csv}", *common],
        tmp_path, cache_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    ckpt = run / "checkpoints" / "epoch_000.ckpt"
    assert ckpt.is_file()
    done = run_osteo(
        "evaluate", [f"ckpt_path={ckpt}", "data=manifest", f"data.root={tmp_path / 'unseen.csv'}",
                     "logger=csv"], tmp_path, cache_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (evaluated,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["test/n"] == len(kept) and "test/t_score_mae" in metrics
