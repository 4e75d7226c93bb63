"""Tests of the synthetic knee phantom: labels, masks, files, determinism, caching, no shortcut."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from osteolightning.data import phantom_files
from osteolightning.data.phantom import (
    CLASS_NAMES,
    MANIFEST_COLUMNS,
    MASK_LABELS,
    draw_cohort,
    generate_knee,
    who_class,
)
from osteolightning.data.phantom_files import ensure_phantom, generate_phantom
from osteolightning.errors import ConfigError


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of a small 8-bit phantom (16 knees, 64 px)."""
    return generate_phantom(
        tmp_path_factory.mktemp("phantom") / "set", n=16, seed=3, size=64, workers=1
    )


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("t_score", "expected"),
    [
        (2.0, 0),
        (-0.99, 0),
        (-1.0, 0),
        (-1.01, 1),
        (-2.0, 1),
        (-2.49, 1),
        (-2.5, 2),
        (-2.51, 2),
        (-5.0, 2),
    ],
)
def test_who_class_thresholds(t_score: float, expected: int) -> None:
    assert who_class(t_score) == expected


def test_manifest_rows_follow_the_label_rules(small_set: Path) -> None:
    with small_set.open(newline="") as fh:
        assert next(csv.reader(fh)) == list(MANIFEST_COLUMNS)
    assert ",".join(MANIFEST_COLUMNS) == "image,mask,label,t_score,bmd,patient_id,side,age,sex,bmi"
    for row in _rows(small_set):
        t_score = float(row["t_score"])
        assert row["label"] == CLASS_NAMES[who_class(t_score)]
        assert float(row["bmd"]) == pytest.approx(1.0 + 0.12 * t_score, abs=1e-4)
        assert re.fullmatch(r"images/K\d{5}\.png", row["image"])
        assert row["mask"] == row["image"].replace("images/", "masks/")
        assert (small_set.parent / row["image"]).is_file()
        assert re.fullmatch(r"P\d{5}", row["patient_id"])
        assert row["side"] in ("L", "R") and row["sex"] in ("F", "M")
        assert 40 <= int(row["age"]) <= 90 and 17.0 <= float(row["bmi"]) <= 45.0


def test_generate_knee_contract() -> None:
    knee = generate_knee(seed=5, index=2, size=64)
    subject = draw_cohort(3, seed=5)[2]
    assert knee.image.shape == knee.mask.shape == (64, 64)
    assert knee.image.dtype == np.float32 and knee.mask.dtype == np.uint8
    assert knee.image.min() >= 0.0 and knee.image.max() <= 1.0
    assert (knee.t_score, knee.side, knee.patient_id) == (
        subject.t_score,
        subject.side,
        subject.patient_id,
    )
    assert knee.label == who_class(knee.t_score)
    assert np.array_equal(knee.image, generate_knee(seed=5, index=2, size=64, person=subject).image)


# --------------------------------------------------------------------------- files


def test_same_seed_same_bytes_for_any_worker_count(tmp_path: Path) -> None:
    one = generate_phantom(tmp_path / "one", n=6, seed=11, size=64, workers=1).parent
    two = generate_phantom(tmp_path / "two", n=6, seed=11, size=64, workers=2).parent
    other = generate_phantom(tmp_path / "other", n=6, seed=12, size=64, workers=1).parent
    assert _files(one) == _files(two)
    assert len(_files(one)) == 2 * 6 + 2  # images, masks, manifest.csv, phantom.json
    assert (one / "images/K00000.png").read_bytes() != (other / "images/K00000.png").read_bytes()
    assert (one / "manifest.csv").read_bytes() != (other / "manifest.csv").read_bytes()
    # The written image is the in-memory knee, quantized.
    pixels = np.asarray(Image.open(one / "images/K00004.png"))
    assert np.array_equal(pixels, np.round(generate_knee(11, 4, 64).image * 255).astype(np.uint8))


def test_masks_cover_every_bone(small_set: Path) -> None:
    plausible = {
        "femur": (0.05, 0.3),
        "tibia": (0.04, 0.3),
        "fibula": (0.004, 0.05),
        "patella": (0.008, 0.06),
    }
    for row in _rows(small_set):
        image = Image.open(small_set.parent / row["image"])
        mask = np.asarray(Image.open(small_set.parent / row["mask"]))
        assert image.mode == "L" and mask.dtype == np.uint8
        assert mask.shape == (image.height, image.width)
        assert set(np.unique(mask)) <= set(MASK_LABELS.values())
        for name, (low, high) in plausible.items():
            assert low < np.mean(mask == MASK_LABELS[name]) < high, (row["image"], name)
        # The patella lies over the distal femur: femur surrounds it in projection.
        patella = mask == MASK_LABELS["patella"]
        ring = ndimage.binary_dilation(patella, iterations=2) & ~patella
        assert np.mean(mask[ring] == MASK_LABELS["femur"]) > 0.6


def test_16_bit_images_read_back_as_16_bit(tmp_path: Path) -> None:
    manifest = generate_phantom(tmp_path / "deep", n=2, seed=1, size=64, bit_depth=16, workers=1)
    for row in _rows(manifest):
        image = Image.open(manifest.parent / row["image"])
        assert image.mode in ("I;16", "I")
        pixels = np.asarray(image).astype(np.int64)
        assert pixels.max() > 255 and pixels.max() - pixels.min() > 30000
        assert len(np.unique(pixels)) > 1000


# --------------------------------------------------------------------------- cohort


def test_covariates_act_on_t_score_as_in_people() -> None:
    cohort = draw_cohort(3000, seed=0)
    t = np.array([k.t_score for k in cohort])
    age = np.array([k.age for k in cohort])
    bmi = np.array([k.bmi for k in cohort])
    female = np.array([k.sex == "F" for k in cohort])
    assert np.corrcoef(age, t)[0, 1] < -0.15
    assert np.corrcoef(bmi, t)[0, 1] > 0.1
    assert t[female].mean() < t[~female].mean()
    shares = np.bincount([who_class(v) for v in t], minlength=3) / len(t)
    assert np.allclose(shares, [0.40, 0.35, 0.25], atol=0.05)


def test_both_knees_of_a_person_share_covariates(small_set: Path) -> None:
    cohort = draw_cohort(600, seed=2)
    assert draw_cohort(40, seed=2)[:39] == cohort[:39]  # persons do not depend on n
    knees = defaultdict(list)
    for k in cohort:
        knees[k.patient_id].append(k)
    pairs = [v for v in knees.values() if len(v) == 2]
    assert all(len(v) <= 2 for v in knees.values())
    assert 0.2 < len(pairs) / len(knees) < 0.45  # about a third of the persons
    for left, right in pairs:
        assert {left.side, right.side} == {"L", "R"}
        assert (left.age, left.sex, left.bmi) == (right.age, right.sex, right.bmi)
        assert abs(left.t_score - right.t_score) < 0.8
    rows = defaultdict(list)
    for row in _rows(small_set):
        rows[row["patient_id"]].append(row)
    assert any(len(v) == 2 for v in rows.values())
    for group in rows.values():
        assert len({(r["age"], r["sex"], r["bmi"]) for r in group}) == 1


# --------------------------------------------------------------------------- no shortcut


def _texture_features(image: np.ndarray, mask: np.ndarray) -> list[float]:
    """High-pass statistics inside the femur and tibia, relative to soft tissue, at two scales."""
    bone = ndimage.binary_erosion(
        (mask == MASK_LABELS["femur"]) | (mask == MASK_LABELS["tibia"]), iterations=2
    )
    soft = (mask == 0) & (ndimage.gaussian_filter(image, 2.0) > np.percentile(image, 30))
    features = []
    for sigma in (0.7, 1.5):
        high = image - ndimage.gaussian_filter(image, sigma)
        inside, noise = high[bone], high[soft].std()
        features += [inside.std() / noise, np.mean(inside > inside.std()), stats.skew(inside)]
    return features


def test_global_statistics_do_not_give_away_the_class(tmp_path: Path) -> None:
    manifest = generate_phantom(tmp_path / "cv", n=300, seed=0, size=96, workers=2)
    rows = _rows(manifest)
    glob, texture = [], []
    for row in rows:
        image = np.asarray(Image.open(manifest.parent / row["image"]), np.float32) / 255.0
        mask = np.asarray(Image.open(manifest.parent / row["mask"]))
        glob.append([image.mean(), image.std()])
        texture.append(_texture_features(image, mask))
    labels = np.array([CLASS_NAMES.index(r["label"]) for r in rows])
    assert np.bincount(labels).min() >= 50

    def balanced_accuracy(features: list[list[float]]) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        return cross_val_score(
            model, np.array(features), labels, cv=folds, scoring="balanced_accuracy"
        ).mean()

    assert balanced_accuracy(glob) < 0.45  # chance is 1/3
    assert balanced_accuracy(texture) > 0.6


# --------------------------------------------------------------------------- caching and arguments


def test_ensure_phantom_reuses_a_matching_set(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "phantom"
    manifest = ensure_phantom(out, n=4, seed=2, size=64, workers=1)
    assert manifest == out / "manifest.csv" and len(_rows(manifest)) == 4
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert ensure_phantom(out, n=4, seed=2, size=64, workers=1) == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    assert [p.name for p in out.parent.iterdir()] == ["phantom"]  # no temporary folder left
    with pytest.raises(ConfigError, match=r"phantom.*'n': 4.*'n': 5"):
        ensure_phantom(out, n=5, seed=2, size=64, workers=1)


def test_ensure_phantom_fills_an_empty_folder(tmp_path: Path) -> None:
    manifest = ensure_phantom(tmp_path, n=2, seed=4, size=64, workers=1)
    assert manifest == tmp_path / "manifest.csv" and len(_rows(manifest)) == 2


def test_ensure_phantom_never_touches_foreign_folders(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        ensure_phantom(tmp_path, n=2, size=64, workers=1)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="not empty"):
        generate_phantom(tmp_path, n=2, size=64, workers=1)


def test_interrupted_generation_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_task = phantom_files._knee_task

    def failing_task(task: tuple) -> dict[str, str]:
        if task[1] == 2:
            raise KeyboardInterrupt
        return real_task(task)

    monkeypatch.setattr(phantom_files, "_knee_task", failing_task)
    with pytest.raises(KeyboardInterrupt):
        ensure_phantom(tmp_path / "set", n=4, size=64, workers=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"n": 0}, "`n`.*got 0"),
        ({"n": 2.5}, "`n`.*got 2.5"),
        ({"n": True}, "`n`.*got True"),
        ({"seed": -1}, "`seed`.*got -1"),
        ({"size": 32}, "`size`.*>= 64.*got 32"),
        ({"bit_depth": 12}, r"`bit_depth`.*\(8, 16\).*got 12"),
        ({"workers": 0}, "`workers`.*got 0"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict, shown: str) -> None:
    arguments = {"n": 2, "size": 64} | kwargs
    for function in (generate_phantom, ensure_phantom):
        with pytest.raises(ConfigError, match=f"Expected argument {shown}"):
            function(tmp_path / "set", **arguments)
    assert not (tmp_path / "set").exists()
    with pytest.raises(ConfigError, match="`size`"):
        generate_knee(0, 0, size=32)
