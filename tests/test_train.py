"""End to end: fit + test on the tiny phantom, then osteo-eval on other sources."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from osteolightning.evaluate import evaluate
from osteolightning.train import train

TINY_EVAL = ["common=tiny", "data=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]


def test_run_directory_holds_what_produced_it(trained):
    run_dir, _, _ = trained
    for name in (
        "metrics.json",
        "predictions.csv",
        "splits.csv",
        "versions.json",
        "csv/metrics.csv",
    ):
        assert (run_dir / name).is_file(), name
    ckpts = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in ckpts) and len(ckpts) >= 2
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["osteo_config"]["model"]["net"]["name"] == "resnet10t"
    assert last["optimizer_states"], "last.ckpt must hold the full training state (resume)"
    # the best checkpoint: weights and run config, no optimiser state (a third of the disk)
    (best,) = [p for p in ckpts if p.name != "last.ckpt"]
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["osteo_config"] == last["osteo_config"]
    assert "optimizer_states" not in checkpoint and checkpoint["state_dict"]
    assert best.stat().st_size < 0.6 * (run_dir / "checkpoints" / "last.ckpt").stat().st_size


def test_metrics_json_has_intervals_and_agrees_with_logged_torchmetrics(trained):
    run_dir, metrics, objects = trained
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/acc", "test/balanced_acc", "test/f1_macro", "test/auroc_macro"):
        lo, hi = saved[f"{key}_ci95"]
        assert lo <= saved[key] <= hi
        assert saved[key] == pytest.approx(metrics[key])
    logged = objects["trainer"].callback_metrics
    for key in ("test/acc", "test/balanced_acc", "test/f1_macro", "test/auroc_macro"):
        assert saved[key] == pytest.approx(float(logged[key]), abs=1e-5), key
    assert saved["test/n"] == len(objects["datamodule"].datasets["test"])


def test_predictions_and_splits_cover_the_test_split_exactly(trained):
    run_dir, _, objects = trained
    with open(run_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    with open(run_dir / "splits.csv") as handle:
        splits = list(csv.DictReader(handle))
    test_paths = {r["path"] for r in splits if r["split"] == "test"}
    assert {r["path"] for r in rows} == test_paths
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in ("normal", "osteopenia", "osteoporosis")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    # leakage-free: no patient on two sides
    sides: dict[str, set[str]] = {}
    for r in splits:
        sides.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())


def test_eval_on_a_class_folder_tree(trained, make_cfg, class_tree):
    run_dir, _, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = make_cfg(
        "eval",
        [
            *TINY_EVAL,
            f"ckpt_path={ckpt}",
            "data=folder",
            f"data.root={class_tree}",
            "data.batch_size=8",
        ],
        run="eval",
    )
    metrics, _ = evaluate(cfg)
    out = Path(cfg.paths.output_dir)
    assert metrics["test/n"] == len(list(class_tree.rglob("*.png")))
    assert json.loads((out / "metrics.json").read_text())["test/n"] == metrics["test/n"]
    with open(out / "predictions.csv") as handle:
        assert len(list(csv.DictReader(handle))) == metrics["test/n"]


def test_eval_on_a_manifest_matches_the_same_images_as_folders(
    trained, make_cfg, phantom_dir, class_tree
):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    a, _ = evaluate(
        make_cfg(
            "eval",
            [
                *TINY_EVAL,
                f"ckpt_path={ckpt}",
                "data=manifest",
                f"data.root={phantom_dir / 'manifest.csv'}",
            ],
            run="m",
        )
    )
    b, _ = evaluate(
        make_cfg(
            "eval",
            [*TINY_EVAL, f"ckpt_path={ckpt}", "data=folder", f"data.root={class_tree}"],
            run="f",
        )
    )
    assert a["test/confusion_matrix"] == b["test/confusion_matrix"]
    for key in ("test/n", "test/acc", "test/auroc_macro"):
        assert a[key] == pytest.approx(b[key])


def test_wandb_logs_offline_into_the_run_directory(make_cfg):
    cfg = make_cfg(
        "train", ["debug=tiny", "logger=default", "trainer.max_epochs=1", "test=false"], run="wb"
    )
    train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
