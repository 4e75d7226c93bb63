"""The shortcut check catches a model that learned a label-carrying marker in the image corner,
and passes one that learned from the bone; both images keep the phantom's own side marker,
which carries no label."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteolightning.train import train

CLASSES = ["normal", "osteopenia", "osteoporosis"]
#: the planted marker's corner per class: (top?, left?)
CORNERS = {0: (True, True), 1: (True, False), 2: (False, True)}


def _planted(phantom_dir: Path, out: Path, cue: str) -> Path:
    """The tiny phantom with a class cue: ``marker`` (a white square in a class-specific corner)
    or ``bone`` (the bone darkened by a class-specific factor; no planted marker)."""
    out.mkdir(parents=True)
    rows = []
    with open(phantom_dir / "manifest.csv") as handle:
        for row in csv.DictReader(handle):
            image = np.asarray(Image.open(phantom_dir / row["image"])).copy()
            c, n = CLASSES.index(row["label"]), image.shape[0]
            if cue == "marker":
                side, margin = n // 6, n // 40
                top, left = CORNERS[c]
                r0 = margin if top else n - margin - side
                c0 = margin if left else n - margin - side
                image[r0 : r0 + side, c0 : c0 + side] = 255
            else:
                bone = np.asarray(Image.open(phantom_dir / row["mask"])) > 0
                image[bone] = (image[bone] * (0.55 + 0.2 * c)).astype(np.uint8)
            name = Path(row["image"]).name
            Image.fromarray(image).save(out / name)
            rows.append([name, row["label"], str(phantom_dir / row["mask"]), row["patient_id"]])
    with open(out / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image", "label", "mask", "patient_id"], *rows])
    return out / "manifest.csv"


def _fit(make_cfg, manifest: Path, run: str) -> dict:
    overrides = [
        "debug=tiny",
        "data=manifest",
        f"data.root={manifest}",
        "data.batch_size=8",
        "data/augment=none",  # flips would move the marker to another class's corner
        "image_size=96",
        "backbone.cam_layer=layer3",  # a 6 x 6 grid at 96 px (layer4's is 3 x 3)
        "trainer.max_epochs=10",
    ]
    cfg = make_cfg("train", overrides, run=run)
    train(cfg)
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


@pytest.mark.slow
def test_the_check_flags_the_marker_model_and_passes_the_bone_model(
    make_cfg, phantom_dir, tmp_path, caplog
):
    marker = _fit(make_cfg, _planted(phantom_dir, tmp_path / "marker", "marker"), "m")
    assert marker["test/saliency_shortcut_warning"] is True
    assert marker["test/saliency_border_share"] > 0.6
    assert marker["test/saliency_bone_share"] < 0.2  # bone: ~28 % of the pixels
    assert "Shortcut check" in caplog.text and "border band" in caplog.text
    bone = _fit(make_cfg, _planted(phantom_dir, tmp_path / "bone", "bone"), "b")
    assert bone["test/saliency_shortcut_warning"] is False
    assert bone["test/saliency_border_share"] < 0.5
    assert bone["test/saliency_bone_share"] > marker["test/saliency_bone_share"] + 0.2
