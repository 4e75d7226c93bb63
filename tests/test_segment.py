"""End to end: osteo-segment on the tiny phantom, osteo-eval on a segmentation tree, mask export
into the classifier's DataModule, and every network config through a real Trainer."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osteolightning.data.datamodule import KneeDataModule
from osteolightning.data.sources import ManifestSource
from osteolightning.evaluate import evaluate
from osteolightning.predict import export_masks, main
from osteolightning.train import train

BONES = ["femur", "tibia", "fibula", "patella"]
TINY_SEG_EVAL = ["callbacks=tiny", "logger=tiny", "trainer=tiny"]


def _tested_ckpt(run_dir: Path) -> str:
    return json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]


def test_segment_run_writes_report_masks_and_figures(segmented):
    run_dir, metrics, objects = segmented
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ["test/dice", "test/iou", "test/hd95", *[f"test/dice_{b}" for b in BONES]]:
        assert key in saved, key
    lo, hi = saved["test/dice_ci95"]
    assert 0.0 <= lo <= saved["test/dice"] <= hi <= 1.0
    assert saved["test/dice"] == pytest.approx(metrics["test/dice"])
    assert "val/dice_best" in saved
    with open(run_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    n_test = len(objects["datamodule"].datasets["test"])
    assert len(rows) == saved["test/n"] == n_test
    # the per-image table reproduces the reported per-class mean
    femur = [float(r["dice_femur"]) for r in rows if r["dice_femur"]]
    assert np.mean(femur) == pytest.approx(saved["test/dice_femur"], abs=1e-5)
    for row in rows:
        mask = np.asarray(Image.open(run_dir / row["predicted_mask"]))
        assert mask.shape == (64, 64) and mask.max() <= 4
    assert (run_dir / "figures" / "overlays.png").is_file()
    with open(run_dir / "csv" / "metrics.csv") as handle:
        logged = next(csv.reader(handle))
    for split in ("train", "val"):  # Dice and IoU logged per split, per bone
        assert {f"{split}/dice", f"{split}/iou", f"{split}/dice_fibula"} <= set(logged), split
    with open(run_dir / "splits.csv") as handle:
        splits = list(csv.DictReader(handle))
    assert sum(r["split"] == "test" for r in splits) == n_test
    ckpt = torch.load(_tested_ckpt(run_dir), weights_only=True)
    assert ckpt["osteo_config"]["model"]["net"]["name"] == "attention_unet_ds"


def test_segment_eval_on_a_segmentation_tree(segmented, phantom_dir, make_cfg, tmp_path):
    tree = tmp_path / "tree"
    (tree / "images").mkdir(parents=True)
    (tree / "masks").mkdir()
    with open(phantom_dir / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))[:12]
    for row in rows:
        shutil.copy(phantom_dir / row["image"], tree / "images")
        shutil.copy(phantom_dir / row["mask"], tree / "masks")
    cfg = make_cfg(
        "eval",
        [
            f"ckpt_path={_tested_ckpt(segmented[0])}",
            "data=seg_folder",
            f"data.root={tree}",
            "data.mask_format=label",
            *TINY_SEG_EVAL,
        ],
        run="eval",
    )
    metrics, _ = evaluate(cfg)
    assert metrics["test/n"] == 12
    assert 0.0 <= metrics["test/dice"] <= 1.0 and metrics["test/dice_ci95"] is not None
    with open(tmp_path / "eval" / "predictions.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 12


def test_mask_export_round_trips_into_the_classifier(segmented, class_tree, tmp_path):
    out = tmp_path / "masks_out"
    manifest = export_masks(_tested_ckpt(segmented[0]), [class_tree], out, label_from_folder=True)
    with open(manifest) as handle:
        rows = list(csv.DictReader(handle))
    images = sorted(class_tree.rglob("*.png"))
    assert len(rows) == len(images)
    for row in rows[:5]:
        image = Image.open(row["image"])
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.shape == (image.height, image.width)  # the original size
        assert set(np.unique(mask)) <= set(range(5))
        assert (out / "overlays" / Path(row["mask"]).relative_to("masks")).is_file()
        assert row["label"] == Path(row["image"]).parent.name
    # the classifier's DataModule reads the manifest, masks applied to its images
    dm = KneeDataModule(
        ManifestSource(manifest),
        ["normal", "osteopenia", "osteoporosis"],
        image_size=64,
        batch_size=4,
        cache_dir=tmp_path / "cache",
        mask_input="apply",
        near_duplicate_distance=None,
    )
    dm.setup("fit")
    assert len(dm.samples) == len(images)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[1:] == (1, 64, 64)
    # never a second export into the same folder
    with pytest.raises(Exception, match="not an empty folder"):
        export_masks(_tested_ckpt(segmented[0]), [class_tree], out)


def test_predict_cli_needs_an_output_folder_for_masks(segmented, class_tree, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([_tested_ckpt(segmented[0]), str(class_tree)])
    assert exit_info.value.code == 1  # a framework error: status 1
    assert "--out DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("unet", ["model.net.channels=[8,16,32,64]", "model.net.strides=[2,2,2]"]),
        ("attention_unet", ["model.net.channels=[8,16,32,64]", "model.net.strides=[2,2,2]"]),
        ("attention_unet_ds", ["model.net.channels=[8,16,32,64]", "model.net.deep_supervision=2"]),
        ("unetr", ["model.net.hidden_size=96", "model.net.mlp_dim=192", "model.net.num_heads=4"]),
        ("swin_unetr", ["model.net.feature_size=12"]),
        ("encoder_unet", []),
    ],
)
def test_every_network_config_trains_and_tests(model, extra, make_cfg):
    cfg = make_cfg(
        "segment",
        [
            "debug=seg_tiny",
            f"model={model}",
            *extra,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
        ],
    )
    assert cfg.model.net.name == model
    metrics, objects = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


def test_mask_export_reads_a_manifest_and_carries_its_labels(segmented, phantom_dir, tmp_path):
    manifest = tmp_path / "in.csv"
    with open(phantom_dir / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))[:4]
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        writer.writerows([[str(phantom_dir / r["image"]), r["label"]] for r in rows])
    written = export_masks(_tested_ckpt(segmented[0]), [manifest], tmp_path / "out", overlays=False)
    with open(written) as handle:
        out = list(csv.DictReader(handle))
    assert [r["label"] for r in out] == [r["label"] for r in rows]
    assert not (tmp_path / "out" / "overlays").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.png,normal\n")
    with pytest.raises(Exception, match="no `image` column"):
        export_masks(_tested_ckpt(segmented[0]), [bad], tmp_path / "out2")


def test_crop_training_with_sliding_window_inference(make_cfg):
    cfg = make_cfg(
        "segment",
        [
            "debug=seg_tiny",
            "image_size=96",
            "data.train_crop=64",
            "model.net.image_size=64",
            "model.inference=sliding_window",
            "model.roi_size=64",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
        ],
    )
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[-2:] == (64, 64) and batch["mask"].shape[-2:] == (64, 64)
    assert next(iter(dm.test_dataloader()))["image"].shape[-2:] == (96, 96)
    run_dir = Path(cfg.paths.output_dir)
    mask = np.asarray(Image.open(next((run_dir / "test_masks").iterdir())))
    assert mask.shape == (96, 96)  # the whole image, tiled by 64-pixel windows
    assert 0.0 <= metrics["test/dice"] <= 1.0
