"""osteo-eval ensemble mode and the val_predictions.csv that osteo-train writes for it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from osteolightning.callbacks.evaluation import (
    SplitPredictions,
    write_validation_predictions,
)
from osteolightning.ensemble.evaluate import evaluate_ensemble, is_ensemble
from osteolightning.ensemble.fusion import fit_fusion_weights, fuse
from osteolightning.ensemble.members import align
from osteolightning.errors import ConfigError
from osteolightning.evaluate import evaluate
from osteolightning.metrics.calibration import apply_temperature, probs_to_logits
from osteolightning.runs.rundir import VAL_PREDICTIONS, read_predictions
from osteolightning.utils.config import compose_config

TINY_EVAL = ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _best(run_dir: Path) -> Path:
    return next((run_dir / "checkpoints").glob("epoch_*.ckpt"))


@pytest.fixture(scope="module")
def second_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """Another tiny run: another backbone at another input size (72 px, the first has 64)."""
    from osteolightning.train import train

    run_dir = tmp_path_factory.mktemp("train-b") / "run"
    overrides = ["debug=tiny", "model/backbone=resnet18", "image_size=72"]
    train(compose_config("train", overrides, run_dir, cache_dir))
    GlobalHydra.instance().clear()
    return run_dir


def test_train_writes_validation_predictions(trained):
    run_dir, _, objects = trained
    datamodule = objects["datamodule"]
    val, test = _rows(run_dir / VAL_PREDICTIONS), _rows(run_dir / "predictions.csv")
    assert list(val[0]) == list(test[0])  # path,label,prob_<class>...,prediction
    assert len(val) == len(datamodule.datasets["val"])
    assert not {r["path"] for r in val} & {r["path"] for r in test}  # another split
    names = datamodule.class_names
    for row in val:
        probs = [float(row[f"prob_{c}"]) for c in names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["prediction"] == names[int(np.argmax(probs))]


def test_validation_predictions_carry_the_test_temperature(tmp_path):
    raw = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    split = SplitPredictions(np.array([4, 9]), ["a.png", "b.png"], np.array([0, 2]), raw)
    names = ["normal", "osteopenia", "osteoporosis"]
    write_validation_predictions(tmp_path, split, names, temperature=2.0)
    written = read_predictions(tmp_path / VAL_PREDICTIONS)
    expected = apply_temperature(probs_to_logits(raw), 2.0)
    assert written.rows["b.png"][0] == "osteoporosis"
    np.testing.assert_allclose(written.rows["a.png"][1], expected[0], atol=1e-6)
    assert not np.allclose(written.rows["a.png"][1], raw[0], atol=1e-3)  # T=2 flattens


def test_mean_ensemble_of_two_checkpoints_of_one_run(trained, make_cfg, class_tree):
    run_dir = trained[0]
    ckpts = [_best(run_dir), run_dir / "checkpoints" / "last.ckpt"]
    cfg = make_cfg(
        "eval",
        [
            *TINY_EVAL,
            "data=folder",
            f"data.root={class_tree}",
            f"ckpt_path=[{ckpts[0]},{ckpts[1]}]",
            "ensemble=mean",
        ],
        "mean",
    )
    metrics, _ = evaluate_ensemble(cfg)
    out = Path(cfg.paths.output_dir)
    members = [
        read_predictions(out / "members" / m / "predictions.csv") for m in metrics["members"]
    ]
    assert metrics["members"] == ["0-resnet10t", "1-resnet10t"]
    paths, _, probs = align(members)
    fused = read_predictions(out / "predictions.csv")
    for i, path in enumerate(paths):
        np.testing.assert_allclose(fused.rows[path][1], probs[:, i].mean(axis=0), atol=2e-6)
    assert {"test/acc", "test/acc_ci95", "test/auroc_macro"} <= set(metrics)
    assert (out / "members.json").is_file() and (out / ".osteo_run.json").is_file()


@pytest.mark.slow
def test_ensemble_of_two_checkpoints_of_different_input_size(
    trained, second_run, make_cfg, class_tree
):
    first, _, _ = trained
    ckpts = [_best(first), _best(second_run)]
    common = [*TINY_EVAL, "data=folder", f"data.root={class_tree}"]
    cfg = make_cfg(
        "eval", [*common, f"ckpt_path=[{ckpts[0]},{ckpts[1]}]", "ensemble=fuzzy_rank"], "ens"
    )
    assert is_ensemble(cfg)
    metrics, objects = evaluate_ensemble(cfg)
    out = Path(cfg.paths.output_dir)
    member_dirs = [out / "members" / "0-resnet10t", out / "members" / "1-resnet18"]
    assert all((d / "predictions.csv").is_file() for d in member_dirs)
    # The 72-px member equals a plain osteo-eval of its checkpoint: it was prepared its own way.
    single = make_cfg("eval", [*common, f"ckpt_path={ckpts[1]}"], "single")
    evaluate(single)
    alone = read_predictions(Path(single.paths.output_dir) / "predictions.csv")
    member = read_predictions(member_dirs[1] / "predictions.csv")
    assert alone.rows.keys() == member.rows.keys()
    for path, (label, probs) in alone.rows.items():
        assert member.rows[path][0] == label
        np.testing.assert_allclose(member.rows[path][1], probs, atol=1e-5)
    # The fused file is the fuzzy rank fusion of the members, aligned by path.
    paths, labels, probs = align([read_predictions(d / "predictions.csv") for d in member_dirs])
    fused = read_predictions(out / "predictions.csv")
    expected, predictions = fuse("fuzzy_rank", probs)
    assert list(fused.rows) == paths
    names = fused.class_names
    for i, path in enumerate(paths):
        np.testing.assert_allclose(fused.rows[path][1], expected[i], atol=1e-5)
    prediction_column = [r["prediction"] for r in _rows(out / "predictions.csv")]
    assert prediction_column == [names[p] for p in predictions]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "fuzzy_rank" and saved["members"] == ["0-resnet10t", "1-resnet18"]
    assert saved["test/n"] == len(paths) > 0
    assert len(saved["test/f1_macro_ci95"]) == 2
    assert saved["test/acc"] == pytest.approx(float(np.mean(predictions == labels)))
    report = json.loads((out / "members.json").read_text())
    assert [m["member"] for m in report] == ["0-resnet10t", "1-resnet18"]
    assert all("test/auroc_macro_ci95" in m for m in report)
    assert metrics["test/acc"] == saved["test/acc"] and objects["weights"] is None


def test_weighted_mean_fits_weights_on_validation_predictions(trained, make_cfg, class_tree):
    ckpts = [_best(trained[0]), trained[0] / "checkpoints" / "last.ckpt"]
    cfg = make_cfg(
        "eval",
        [
            *TINY_EVAL,
            "data=folder",
            f"data.root={class_tree}",
            f"ckpt_path=[{ckpts[0]},{ckpts[1]}]",
            "ensemble=weighted_mean",
        ],
        "weighted",
    )
    metrics, objects = evaluate_ensemble(cfg)
    _, labels, probs = align([read_predictions(c.parent.parent / VAL_PREDICTIONS) for c in ckpts])
    np.testing.assert_allclose(metrics["weights"], fit_fusion_weights(probs, labels), atol=1e-6)
    assert sum(metrics["weights"]) == pytest.approx(1.0)


def test_weighted_mean_without_validation_predictions_fails_early(
    trained, make_cfg, class_tree, tmp_path
):
    bare = tmp_path / "bare" / "checkpoints"
    bare.mkdir(parents=True)
    ckpt = shutil.copy(_best(trained[0]), bare / "model.ckpt")
    cfg = make_cfg(
        "eval",
        [
            *TINY_EVAL,
            "data=folder",
            f"data.root={class_tree}",
            f"ckpt_path=[{_best(trained[0])},{ckpt}]",
            "ensemble=weighted_mean",
        ],
        "no-val",
    )
    with pytest.raises(ConfigError, match=r"val_predictions\.csv"):
        evaluate_ensemble(cfg)
    assert not (Path(cfg.paths.output_dir) / "members").exists()  # failed before evaluating


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ckpt_path=[/nowhere/a.ckpt,/nowhere/b.ckpt]"], "do not exist"),
        (["ckpt_path=[]", "ensemble=mean"], r"got \[\]"),
    ],
)
def test_ensemble_mode_rejects_bad_checkpoint_lists(make_cfg, overrides, message):
    cfg = make_cfg("eval", [*TINY_EVAL, *overrides], "bad")
    assert is_ensemble(cfg)
    with pytest.raises(ConfigError, match=message):
        evaluate_ensemble(cfg)


def test_unknown_fusion_method_is_named(trained, make_cfg):
    ckpt = _best(trained[0])
    cfg = make_cfg(
        "eval", [*TINY_EVAL, f"ckpt_path=[{ckpt},{ckpt}]", "ensemble=mean", "ensemble.method=fuzzy"]
    )
    with pytest.raises(ConfigError, match="fuzzy_rank"):
        evaluate_ensemble(cfg)
