"""The saliency report of a run (osteo-train, osteo-eval), osteo-predict --explain, and the
model card every run directory holds."""

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from osteolightning.evaluate import evaluate
from osteolightning.predict import main


def test_a_training_run_reports_the_shortcut_check(trained):
    run_dir = trained[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/saliency_border_share", "test/saliency_bone_share"):
        low, high = metrics[f"{key}_ci95"]
        assert 0 <= low <= metrics[key] <= high <= 1
    assert metrics["saliency/cam_layer"] == "layer4" and metrics["saliency/method"] == "gradcam"
    assert isinstance(metrics["test/saliency_shortcut_warning"], bool)
    with open(run_dir / "saliency.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["test/n"] == metrics["test/saliency_n_images"]
    assert all(0 <= float(r["border_share"]) <= 1 for r in rows if r["border_share"])
    grid = Image.open(run_dir / "figures" / "saliency_grid.png")
    assert grid.width > 400 and grid.height > 400


def test_the_model_card_names_the_runs_real_metrics(trained, segmented):
    for run_dir in (trained[0], segmented[0]):
        card = (run_dir / "MODEL_CARD.md").read_text()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for section in ("Task and intended use", "Data", "Splits", "Architecture",
                        "Test metrics", "Training configuration", "Known limitations"):  # fmt: skip
            assert f"## {section}" in card
        headline = "test/f1_macro" if "test/f1_macro" in metrics else "test/dice"
        low, high = metrics[f"{headline}_ci95"]
        row = re.search(rf"\| `{re.escape(headline)}` \| ([0-9.]+) \| \[([0-9.]+), ([0-9.]+)\] \|",
                        card)  # fmt: skip
        assert row, card
        assert [float(v) for v in row.groups()] == pytest.approx(
            [metrics[headline], low, high], abs=5e-4
        )
        with open(run_dir / "splits.csv") as handle:
            n_test = sum(r["split"] == "test" for r in csv.DictReader(handle))
        assert f"| test | {n_test} |" in card
    card = (trained[0] / "MODEL_CARD.md").read_text()
    assert "## Calibration" in card and "## Shortcut check" in card and "resnet10t" in card


def test_eval_writes_the_saliency_grid_and_a_card(trained, make_cfg, class_tree):
    ckpt = json.loads((trained[0] / "metrics.json").read_text())["ckpt_path"]
    tiny = ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]
    cfg = make_cfg("eval", [*tiny, f"ckpt_path={ckpt}", "data=folder", f"data.root={class_tree}",
                            "saliency.method=gradcampp"])  # fmt: skip
    metrics, _ = evaluate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert metrics["saliency/method"] == "gradcampp" and metrics["saliency/cam_layer"] == "layer4"
    assert metrics["test/saliency_bone_share"] is None  # a class-folder tree has no masks
    assert (run_dir / "figures" / "saliency_grid.png").is_file()
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert ckpt in card and f"| `test/acc` | {metrics['test/acc']:.3f} |" in card


def test_predict_explain_writes_an_overlay_per_image(trained, class_tree, tmp_path):
    ckpt = json.loads((trained[0] / "metrics.json").read_text())["ckpt_path"]
    out = tmp_path / "p.csv"
    assert main([ckpt, str(class_tree), "--out", str(out), "--explain"]) == 0
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list(class_tree.rglob("*.png")))
    for row in rows[:5]:
        overlay = Image.open(row["saliency"])
        assert overlay.mode == "RGB" and overlay.size == Image.open(row["path"]).size
        assert row["saliency"].startswith(str(tmp_path / "p_saliency"))


def test_predict_explain_takes_relative_paths(trained, class_tree, tmp_path, monkeypatch):
    """As a user types it, from the data's parent folder: a relative folder and output."""
    ckpt = json.loads((trained[0] / "metrics.json").read_text())["ckpt_path"]
    monkeypatch.chdir(class_tree.parent)
    args = [ckpt, class_tree.name, "--out", "rel.csv", "--explain", "--explain-dir", "sal"]
    assert main(args) == 0
    with open(class_tree.parent / "rel.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list(class_tree.rglob("*.png")))
    assert all(Path(r["saliency"]).is_file() for r in rows)
    assert len(list((class_tree.parent / "sal").rglob("*.png"))) == len(rows)


def test_explain_errors_name_the_option(trained, class_tree, tmp_path, capsys):
    ckpt = json.loads((trained[0] / "metrics.json").read_text())["ckpt_path"]
    with pytest.raises(SystemExit) as stop:
        main([ckpt, str(class_tree), "--explain", "--cam-layer", "layer9",
              "--explain-dir", str(tmp_path / "x")])  # fmt: skip
    assert stop.value.code == 1  # a framework error: status 1
    assert "backbone.cam_layer" in capsys.readouterr().err
