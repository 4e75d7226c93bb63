"""The record-only models of models/tabular.py: boosted trees walked from their tensors
against scikit-learn, checkpoints of them, the OST rule against a direct computation, and a
tiny run of each through osteo-train (and osteo-eval, osteo-predict)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from osteolightning.data.splits import TEST
from osteolightning.errors import ConfigError
from osteolightning.evaluate import evaluate
from osteolightning.models.checkpointing import load_model
from osteolightning.models.components.features import covariates_net, texture_net
from osteolightning.models.components.trees import TreeForest
from osteolightning.models.tabular import (
    TIE_MARGIN,
    BoostedTreesClassifier,
    ClinicalRuleClassifier,
)
from osteolightning.predict import predict
from osteolightning.selection.null import load_fold
from osteolightning.train import train
from tests.helpers import write_manifest

CLASSES = ["normal", "osteopenia", "osteoporosis"]
NAMES = ["age", "sex", "bmi", "weight_kg"]


def _records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 4)`` covariates with unknown cells (the last column unknown only in the second
    half: training on the first half sees none), 3-class labels and T-scores."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.normal(65, 10, n), rng.integers(0, 2, n), rng.normal(26, 4, n), rng.normal(70, 12, n)]
    )
    t = -0.08 * (x[:, 0] - 65) + 0.05 * (x[:, 3] - 70) - 1.2 + rng.normal(0, 0.5, n)
    labels = np.digitize(-t, [1.0, 2.5])  # normal, osteopenia, osteoporosis
    x[rng.random(x.shape) < 0.15] = np.nan
    x[: n // 2, 3] = np.where(np.isnan(x[: n // 2, 3]), 70.0, x[: n // 2, 3])
    return x.astype(np.float32).astype(np.float64), labels, t  # the batches' float32 values


def _trees(k: int, x: np.ndarray | None = None, t: np.ndarray | None = None, **kwargs):
    names = CLASSES if k == 3 else ["normal", "osteoporosis"]
    return BoostedTreesClassifier(
        covariates_net(k),
        names,
        covariates=NAMES,
        covariates_train=None if x is None else x.tolist(),
        t_score_weight=1.0,
        target_train=None if t is None else t.tolist(),
        **{"min_samples_leaf": 5, "max_iter": 30, **kwargs},
    )


def _batch(x: np.ndarray) -> dict[str, torch.Tensor]:
    return {"image": torch.zeros(len(x), 1, 8, 8), "covariates": torch.as_tensor(x).float()}


@pytest.mark.parametrize("k", [2, 3])
def test_the_trees_tensors_predict_what_scikit_learn_does(k):
    x, labels, t = _records(240, seed=k)
    labels = labels if k == 3 else (labels > 0).astype(int)
    train_rows, test_rows = slice(0, 120), slice(120, None)
    model = _trees(k, x[train_rows], t[train_rows])
    fit = model.fit_head(x[train_rows], labels[train_rows], np.arange(120), t[train_rows])
    model.install_head(fit)
    args = model._tree_args()
    with threadpool_limits(limits=1):  # as the model grows them (a pool is slow on busy cores)
        classifier = HistGradientBoostingClassifier(**args, class_weight="balanced")
        classifier.fit(x[train_rows], labels[train_rows])
        z = model.scaler.transform(t[train_rows])
        regressor = HistGradientBoostingRegressor(**args).fit(x[train_rows], z)
    held_out = x[test_rows]
    assert np.isnan(held_out).any(axis=0).all()  # unknown values in every column
    # the arrays' outputs (the permutation tests' path): the same numbers
    outputs = fit.outputs(held_out)
    logits = outputs[:, :k] - outputs[:, :k].max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, classifier.predict_proba(held_out), atol=1e-12)
    np.testing.assert_allclose(outputs[:, k], regressor.predict(held_out), atol=1e-12)
    # the module's (every step, osteo-eval, osteo-predict): from the buffers, float32 out
    probs, predicted = model.predict_batch(_batch(held_out))
    np.testing.assert_allclose(probs.numpy(), classifier.predict_proba(held_out), atol=1e-6)
    expected = model.scaler.inverse(regressor.predict(held_out))
    np.testing.assert_allclose(predicted.numpy(), expected, atol=1e-5)
    assert fit.info["n_trees"] == 30 * ((k if k > 2 else 1) + 1) == model.forest.n_trees


def test_a_class_the_training_split_lacks_gets_probability_zero():
    x, labels, t = _records(160, seed=5)
    keep = labels != 1  # no osteopenia: a binary problem among 3 classes
    model = _trees(3, x[keep], t[keep])
    model.install_head(model.fit_head(x[keep], labels[keep], np.arange(keep.sum()), t[keep]))
    reference = HistGradientBoostingClassifier(**model._tree_args(), class_weight="balanced")
    with threadpool_limits(limits=1):
        reference.fit(x[keep], labels[keep])
    probs = model.predict_batch(_batch(x[~keep]))[0].numpy()
    assert np.all(probs[:, 1] == 0)
    np.testing.assert_allclose(probs[:, [0, 2]], reference.predict_proba(x[~keep]), atol=1e-6)


def test_a_saved_forest_loads_into_a_freshly_built_model(tmp_path):
    x, labels, t = _records(200, seed=0)
    model = _trees(3, x[:150], t[:150])
    model.install_head(model.fit_head(x[:150], labels[:150], np.arange(150), t[:150]))
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = _trees(3)  # as load_checkpoint builds it: no training values, an empty forest
    assert fresh.forest.n_trees == 0 and len(fresh.forest.value) == 0
    uniform = fresh.predict_batch(_batch(x[150:]))[0]
    assert torch.allclose(uniform, torch.full_like(uniform, 1 / 3))
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # strict
    for name, buffer in fresh.forest.state_dict().items():
        assert torch.equal(buffer, model.forest.state_dict()[name]), name
    before, after = model.predict_batch(_batch(x[150:])), fresh.predict_batch(_batch(x[150:]))
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    # an image alone tells a record-only model nothing (saliency, export): uniform
    assert torch.equal(fresh(torch.zeros(2, 1, 8, 8)), torch.zeros(2, 3))
    # moved with the module, never rounded: half precision keeps the float64 thresholds
    half = fresh.forest.half()
    assert half.threshold.dtype == torch.float64 and torch.equal(half.value, model.forest.value)
    # another fit's forest (another size) loads over one already filled
    smaller = _trees(3, x[:150], t[:150], max_iter=4)
    smaller.install_head(smaller.fit_head(x[:150], labels[:150], np.arange(150), t[:150]))
    fresh.load_state_dict(smaller.state_dict())
    assert fresh.forest.n_trees == 4 * 4 and torch.equal(
        fresh.predict_batch(_batch(x[150:]))[0], smaller.predict_batch(_batch(x[150:]))[0]
    )
    assert TreeForest(4)(torch.zeros(2, 3)).tolist() == [[0.0] * 4] * 2  # empty: the baseline


def test_bad_tree_settings_are_config_errors():
    with pytest.raises(ConfigError, match="`max_iter` to be an integer >= 1, but got 0"):
        BoostedTreesClassifier(covariates_net(3), CLASSES, covariates=NAMES, max_iter=0)
    with pytest.raises(ConfigError, match="`learning_rate` to be a positive number"):
        BoostedTreesClassifier(covariates_net(3), CLASSES, covariates=NAMES, learning_rate=-1)
    with pytest.raises(ConfigError, match="at least one clinical column"):
        BoostedTreesClassifier(covariates_net(3), CLASSES)
    with pytest.raises(ConfigError, match="covariates_net"):
        BoostedTreesClassifier(texture_net(3), CLASSES, covariates=NAMES)
    model = _trees(3)
    x, _, t = _records(40, seed=1)
    with pytest.raises(ConfigError, match="one class only"):
        model.fit_head(x, np.zeros(40, dtype=int), np.arange(40), t)


# -- the OST rule -------------------------------------------------------------------------
def _rule(class_names=CLASSES, **kwargs) -> ClinicalRuleClassifier:
    kwargs.setdefault("covariates", ["age", "weight_kg"])
    return ClinicalRuleClassifier(covariates_net(len(class_names)), class_names, **kwargs)


def _ost_reference(weight: np.ndarray, age: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published rule, written out: categories (0 low, 1 moderate, 2 high; -1 unknown)
    and the adjacent-category probabilities in (low, moderate, high) order."""
    ost = 0.2 * (weight - age)
    category = np.where(ost < -4, 2, np.where(ost <= -1, 1, 0))
    category = np.where(np.isnan(ost), -1, category)
    logits = np.column_stack([ost + 1, np.zeros_like(ost), -4 - ost])
    logits[np.arange(len(ost)), category.clip(0)] += TIE_MARGIN
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[category < 0] = 1 / 3
    return category, probs


def test_the_ost_rule_scores_hand_made_rows_as_published():
    # (age, weight): OST -8, -4 (a cut-off), -3.2, -1 (a cut-off), -0.8, +4, unknown weight/age
    rows = np.array(
        [[80, 40], [70, 50], [66, 50], [65, 60], [64, 60], [40, 60], [60, np.nan], [np.nan, 60]]
    )
    model = _rule()
    probs = model.predict_batch(_batch(rows))[0].numpy()
    category, expected = _ost_reference(rows[:, 1], rows[:, 0])
    assert category.tolist() == [2, 1, 1, 1, 0, 0, -1, -1]
    np.testing.assert_allclose(probs, expected, atol=1e-6)  # (normal, osteopenia, osteoporosis)
    assert probs.argmax(1)[:6].tolist() == category[:6].tolist()
    # the same in another class order, and with the run's own names of the three categories
    shuffled = _rule(["osteoporosis", "normal", "osteopenia"])
    np.testing.assert_allclose(shuffled.predict_batch(_batch(rows))[0], probs[:, [2, 0, 1]])
    named = _rule(["low", "mid", "high"], class_order=["low", "mid", "high"])
    np.testing.assert_allclose(named.predict_batch(_batch(rows))[0], probs)


def test_the_rules_probabilities_are_monotone_and_their_argmax_is_its_category():
    # OST from -10 to 4 by 0.1, the cut-offs themselves and a hair either side of them
    ost = np.concatenate([np.arange(-100, 41) / 10, [-4 - 2**-10, -4 + 2**-10, -1 - 2**-10]])
    ost = np.sort(np.concatenate([ost, [-1 + 2**-10]]))
    rows = np.column_stack([60 - 5 * ost, np.full_like(ost, 60.0)])  # (age, weight)
    rows = rows.astype(np.float32).astype(np.float64)  # as a batch carries them
    category, expected = _ost_reference(rows[:, 1], rows[:, 0])
    assert {-4.0, -1.0} <= set(0.2 * (rows[:, 1] - rows[:, 0]))
    model = _rule()
    assert model.rule.category(torch.as_tensor(rows)).tolist() == category.tolist()
    probs = model.predict_batch(_batch(rows))[0].numpy().astype(np.float64)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert probs.argmax(1).tolist() == category.tolist()
    # P(osteoporosis) falls and P(normal) rises with OST
    assert np.all(np.diff(probs[:, 2]) <= 1e-7) and np.all(np.diff(probs[:, 0]) >= -1e-7)
    # so its scores rank osteoporosis against the rest as -OST does
    truth = category == 2
    assert roc_auc_score(truth, probs[:, 2]) == roc_auc_score(truth, -ost) == 1.0


def test_unknown_weight_or_age_is_counted_at_the_fit():
    model = _rule()
    rows = np.array([[70.0, 60.0], [np.nan, 60.0], [70.0, np.nan]])
    fit = model.fit_head(rows, np.zeros(3, dtype=int), np.arange(3), np.full(3, np.nan))
    assert fit.info == {"ost_unknown": 2.0}
    expected = _ost_reference(rows[:, 1], rows[:, 0])[1]
    logits = fit.outputs(rows)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-12)


def test_bad_rule_settings_are_config_errors():
    with pytest.raises(ConfigError, match="`t_score_weight` to be 0 for the OST rule"):
        _rule(t_score_weight=1.0)
    with pytest.raises(ConfigError, match=r"'weight_kg', 'age'\], but got \['age', 'sex'\]"):
        _rule(covariates=["age", "sex"])
    with pytest.raises(ConfigError, match="three risk categories"):
        _rule(["a", "b", "c"])
    with pytest.raises(ConfigError, match="two ascending OST cut-offs"):
        _rule(cutoffs=[-1.0, -4.0])
    with pytest.raises(ConfigError, match="`slope` to be a positive number"):
        _rule(slope=0)


# -- tiny runs through osteo-train --------------------------------------------------------
def _clinical_manifest(phantom_dir: Path, out: Path) -> Path:
    """The tiny phantom's manifest with a weight column (some cells unknown)."""

    def edit(i: int, row: dict[str, str]) -> None:
        row["weight_kg"] = "" if i % 7 == 3 else str(48 + (i * 11) % 45)

    return write_manifest(phantom_dir, out, edit)


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def _number(cell: str) -> float:
    return float(cell) if cell else np.nan


def _data(manifest: Path) -> list[str]:
    return ["debug=tiny", "data=manifest", f"data.root={manifest}"]


def test_a_boosting_run_keeps_its_trees_for_osteo_eval_and_osteo_predict(
    make_cfg, phantom_dir, tmp_path
):
    manifest = _clinical_manifest(phantom_dir, tmp_path / "clinical.csv")
    overrides = [*_data(manifest), "model=boosting", f"model.covariates={NAMES}".replace(" ", "")]
    cfg = make_cfg("train", overrides, run="boosting")
    metrics, objects = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test/n"] > 0 and "test/t_score_mae" in saved
    rows = _rows(run_dir / "predictions.csv")
    assert len(rows) == saved["test/n"]
    # the checkpoint (weights_only) rebuilds the trees
    ckpt = saved["ckpt_path"]
    model = load_model(ckpt)
    assert model.forest.n_trees == objects["model"].forest.n_trees > 0
    # osteo-eval on the same manifest: every image, the run's test images as the run scored them
    eval_cfg = make_cfg("eval", [*_data(manifest)[1:], "common=tiny", "callbacks=tiny",
                                 "logger=tiny", "trainer=tiny", f"ckpt_path={ckpt}"], run="eval")  # fmt: skip
    evaluate(eval_cfg)
    again = _rows(Path(eval_cfg.paths.output_dir) / "predictions.csv")
    assert set(rows) < set(again)
    for path, row in rows.items():
        for key in ("prob_normal", "prob_osteopenia", "prob_osteoporosis", "t_score_pred"):
            assert float(again[path][key]) == pytest.approx(float(row[key]), abs=2e-6), key
    # the permutation tests refit the run's trees from its own files (fit_head on arrays)
    fold = load_fold(run_dir)
    test = [p for p, code in zip(fold.paths, fold.codes, strict=True) if code == TEST]
    expected = [[float(rows[p][f"prob_{c}"]) for c in CLASSES] for p in test]
    np.testing.assert_allclose(fold.fit_and_predict(fold.labels), expected, atol=2e-6)
    # osteo-predict reads the covariates from the manifest's columns
    predicted = {r[0]: r for r in predict(ckpt, [manifest])}
    for path, row in rows.items():
        assert [float(v) for v in predicted[path][1:4]] == pytest.approx(
            [float(row[f"prob_{c}"]) for c in CLASSES], abs=2e-6
        )


def test_an_ost_rule_run_scores_each_image_by_the_rule(make_cfg, phantom_dir, tmp_path):
    manifest = _clinical_manifest(phantom_dir, tmp_path / "clinical.csv")
    cfg = make_cfg("train", [*_data(manifest), "model=ost_rule"], run="ost")
    _, objects = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert Path(saved["ckpt_path"]).is_file() and "test/auroc_macro" in saved
    rows = _rows(run_dir / "predictions.csv")
    with open(manifest, newline="") as handle:
        record = {r["image"]: r for r in csv.DictReader(handle)}
    weight = np.array([_number(record[p]["weight_kg"]) for p in rows])
    age = np.array([_number(record[p]["age"]) for p in rows])
    category, expected = _ost_reference(weight, age)
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows.values()])
    np.testing.assert_allclose(probs, expected, atol=2e-6)
    known = category >= 0
    assert 0 < known.sum() < len(rows)  # the unknown weights: uniform probabilities
    predicted = [r["prediction"] for r in rows.values()]
    assert [p for p, k in zip(predicted, known, strict=True) if k] == [
        CLASSES[c] for c in category[known]
    ]
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        counted = [
            float(r["test/ost_unknown"])
            for r in csv.DictReader(handle)
            if r.get("test/ost_unknown")
        ]
    assert counted == [float((~known).sum())]
    # its checkpoint (weights_only) rebuilds the same rule
    assert load_model(saved["ckpt_path"]).rule == objects["model"].rule
