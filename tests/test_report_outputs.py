"""The report's files in a real run: figures/, csv/test_metrics.csv, calibration, W&B."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from osteolightning.callbacks.evaluation import (
    SplitPredictions,
    fit_validation_temperature,
    log_to_wandb,
    recorded_temperature,
)
from osteolightning.ensemble.members import align
from osteolightning.evaluate import evaluate
from osteolightning.metrics.calibration import apply_temperature, probs_to_logits
from osteolightning.metrics.figures import write_figures
from osteolightning.metrics.report import evaluation_report
from osteolightning.runs.rundir import VAL_PREDICTIONS, read_predictions
from osteolightning.train import train

TINY_EVAL = ["common=tiny", "data=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]
CLASSES = ["normal", "osteopenia", "osteoporosis"]


def test_run_directory_holds_figures_and_the_metrics_table(trained):
    run_dir, _, _ = trained
    for name in ("confusion_matrix", "roc", "reliability"):
        assert (run_dir / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/kappa", "test/kappa_quadratic", "test/ece"):
        assert key in saved and f"{key}_ci95" in saved
    with open(run_dir / "csv" / "test_metrics.csv") as handle:
        rows = {r["metric"]: r for r in csv.DictReader(handle)}
    assert list(next(iter(rows.values()))) == ["metric", "value", "ci_low", "ci_high"]
    for key in ("test/acc", "test/kappa_quadratic", "test/ece"):
        assert float(rows[key]["value"]) == pytest.approx(saved[key])
        assert float(rows[key]["ci_low"]) == pytest.approx(saved[f"{key}_ci95"][0])
    assert "temperature" not in saved  # evaluation.temperature_scaling is off by default


def test_validation_temperature_of_the_trained_run(trained):
    run_dir, _, _ = trained
    # the writer's validation pass of the tested checkpoint (uncalibrated: scaling is off)
    val = read_predictions(run_dir / VAL_PREDICTIONS)
    paths, labels, probs = align([val])
    t = fit_validation_temperature(SplitPredictions(np.arange(len(paths)), paths, labels, probs[0]))
    assert 0.05 <= t <= 20


def test_train_fits_the_temperature_on_the_validation_split(make_cfg):
    cfg = make_cfg("train", ["debug=tiny", "evaluation.temperature_scaling=true"], run="temp")
    metrics, objects = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert 0.05 <= saved["temperature"] <= 20 and "test/ece_uncalibrated" in saved
    assert saved["ckpt_path"] == objects["trainer"].checkpoint_callback.best_model_path
    # val_predictions.csv: the tested checkpoint on the validation split, calibrated with T
    val = read_predictions(run_dir / VAL_PREDICTIONS)
    model, dataset = objects["model"].eval(), objects["datamodule"].datasets["val"]
    assert len(val.rows) == len(dataset)
    with torch.no_grad():  # the model holds the tested (best) weights after trainer.test
        for i in range(len(dataset)):
            item = dataset[i]
            raw = model(item["image"][None]).softmax(1).numpy()
            expected = apply_temperature(probs_to_logits(raw), saved["temperature"])[0]
            np.testing.assert_allclose(val.rows[item["path"]][1], expected, atol=2e-6)


def test_eval_applies_a_fixed_temperature(trained, make_cfg, class_tree):
    run_dir, _, _ = trained
    cfg = make_cfg(
        "eval",
        [
            *TINY_EVAL,
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            "data=folder",
            f"data.root={class_tree}",
            "evaluation.temperature=2.0",
        ],
        run="eval-t",
    )
    metrics, _ = evaluate(cfg)
    assert metrics["temperature"] == 2.0
    assert "test/ece_uncalibrated" in metrics and "test/ece" in metrics
    with open(Path(cfg.paths.output_dir) / "predictions.csv") as handle:
        row = next(csv.DictReader(handle))
    assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)


def test_recorded_temperature_only_for_the_same_checkpoint(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.touch()
    assert recorded_temperature(ckpt) is None  # no metrics.json
    metrics = tmp_path / "run" / "metrics.json"
    metrics.write_text(json.dumps({"temperature": 1.7, "ckpt_path": str(ckpt)}))
    assert recorded_temperature(ckpt) == 1.7
    assert recorded_temperature(ckpt.parent / "last.ckpt") is None


@pytest.mark.slow
def test_wandb_offline_logging(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rng = np.random.default_rng(0)
    labels, probs = rng.choice(3, 60), rng.dirichlet([1, 1, 1], 60)
    figures = write_figures(labels, probs, CLASSES, tmp_path / "figures")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="osteolightning-test")
    try:
        report = evaluation_report(labels, probs, CLASSES, n_resamples=50)
        log_to_wandb(run, report, labels, probs, CLASSES, figures)
    finally:
        run.finish()
        wandb.teardown()  # later runs (WandbLogger) must not inherit this one's settings
    media = {p.name.split("_table")[0] for p in tmp_path.rglob("*.table.json")}
    assert {"metrics", "confusion_matrix", "roc"} <= media
    assert len(list(tmp_path.rglob("media/images/**/*.png"))) == 3
