"""BMD from the segmented bone (experiment=fathima2020): the region statistics, and the whole
run on the tiny phantom with its own masks and with a segmentation checkpoint's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from osteolightning.errors import ConfigError
from osteolightning.models.checkpointing import load_model
from osteolightning.models.components.bone_region import BoneRegionEmbedder, region_features
from osteolightning.predict import predict, target_header
from osteolightning.train import train

FATHIMA = ["experiment=fathima2020_tiny"]


def _disk(density: float, cortex: float = 0.0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A bright disk (the bone) in soft tissue; ``cortex`` adds a brighter rim 2 px wide."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    bone = r < size / 4
    image = np.full((size, size), 0.3) + 0.02 * np.random.default_rng(0).standard_normal(
        (size, size)
    )
    image[bone] += density
    image[bone & (r > size / 4 - 2)] += cortex
    return np.clip(image, 0, 1), bone


def test_region_statistics_follow_density_and_cortex():
    low, high = (region_features(*_disk(d)) for d in (0.1, 0.3))
    # the bone's contrast against the soft-tissue ring (in the ring's SD) rises with density
    assert high[9] > low[9] + 5 and high[10] > low[10] + 5
    # exposure and windowing (an affine grey-level change) leave the relative statistics alone
    image, bone = _disk(0.2, cortex=0.1)
    relative = np.r_[0:7, 8:22]  # all but the ring's own mean and the 8-bit LBP histogram
    np.testing.assert_allclose(
        region_features(0.5 * image + 0.2, bone)[relative],
        region_features(image, bone)[relative],
        rtol=1e-3,
        atol=1e-3,
    )
    plain, rimmed = region_features(*_disk(0.2)), region_features(*_disk(0.2, cortex=0.3))
    profile = slice(11, 18)  # the depth profile: the rim stands out when there is a cortex
    assert rimmed[profile][0] - rimmed[profile][-1] > plain[profile][0] - plain[profile][-1] + 0.5
    empty = region_features(np.zeros((16, 16)), np.zeros((16, 16), dtype=bool))
    assert empty.shape == low.shape and not empty.any()


def test_the_embedder_needs_masks_or_a_segmenter(tmp_path):
    embedder = BoneRegionEmbedder()
    with pytest.raises(ConfigError, match="mask_input=provide"):
        embedder(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="does not exist"):
        BoneRegionEmbedder(segmenter=str(tmp_path / "none.ckpt"))


def test_fathima2020_runs_end_to_end_on_the_phantoms_masks(make_cfg):
    cfg = make_cfg("train", FATHIMA)
    metrics, _ = train(cfg)
    for key in ("bmd_mae", "bmd_r", "bmd_loa_low", "t_score_mae", "t_score_ccc", "who_acc", "acc"):
        assert f"test/{key}_ci95" in metrics and metrics[f"test/{key}"] is not None, key
    assert "test/bmd_interval_coverage" in metrics
    with open(Path(cfg.paths.output_dir) / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # T from the predicted BMD by the reference: T = (BMD - 1.0) / 0.12
        assert float(row["t_score_pred"]) == pytest.approx(
            (float(row["bmd_pred"]) - 1.0) / 0.12, abs=2e-3
        )
        assert row["who_prediction"] in ("normal", "osteopenia", "osteoporosis")
    # osteo-predict has no masks for it, and says what to do instead
    with pytest.raises(ConfigError, match="segmenter"):
        predict(metrics["ckpt_path"], [Path(rows[0]["path"])])


#: the columns osteo-predict prints for a bone-density checkpoint (its run has a calibration)
HEADER = ["prob_normal", "prob_osteopenia", "prob_osteoporosis", "prediction", "bmd_pred",
          "bmd_low", "bmd_high", "t_score_pred", "t_score_low", "t_score_high", "who_prediction"]  # fmt: skip


def test_fathima2020_with_a_segmentation_checkpoint(make_cfg, segmented, phantom_dir):
    run_dir, _, _ = segmented
    ckpt = json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]
    cfg = make_cfg("train", [*FATHIMA, f"model.net.segmenter={ckpt}"])
    metrics, _ = train(cfg)
    # the segmenter's bone against the phantom's masks on this run's test images
    assert 0 <= metrics["test/segmentation_dice"] <= 1
    assert metrics["test/segmentation_dice_n"] == metrics["test/n"]
    # the same 60 knees and split as osteo-segment debug=seg_tiny: no test image was seen
    assert metrics["test/segmenter_trained_on"] == 0.0
    assert "test/t_score_mae" in metrics
    # the whole cascade on a new image: segment, measure, BMD, T-score, WHO category
    image = phantom_dir / "images" / "K00000.png"
    model = load_model(metrics["ckpt_path"])
    assert target_header(model, metrics["ckpt_path"]) == HEADER[4:]
    row = dict(
        zip(["path", *HEADER], predict(metrics["ckpt_path"], [image], model=model)[0], strict=True)
    )
    assert float(row["t_score_pred"]) == pytest.approx(
        (float(row["bmd_pred"]) - 1.0) / 0.12, abs=2e-3
    )
    assert row["who_prediction"] in ("normal", "osteopenia", "osteoporosis")


def test_exported_masks_carry_the_manifests_columns(segmented, phantom_dir, tmp_path):
    from osteolightning.predict import export_masks

    run_dir, _, _ = segmented
    ckpt = json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]
    manifest = export_masks(ckpt, [phantom_dir / "manifest.csv"], tmp_path / "out", overlays=False)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(phantom_dir / "manifest.csv", newline="") as handle:
        source = {Path(r["image"]).name: r for r in csv.DictReader(handle)}
    assert len(rows) == 60
    for row in rows:  # the target, the covariates and the patient go on with the new mask
        original = source[Path(row["image"]).name]
        for column in ("label", "t_score", "bmd", "patient_id", "age", "sex", "bmi"):
            assert row[column] == original[column]
        assert row["mask"].startswith("masks/")
