"""Images that are technically valid but wrong: each is warned about in the data summary (naming
the files) and handled, or, where nothing can be learnt, an error naming the files."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import hydra
import numpy as np
import pytest
from PIL import Image

from osteolightning.data.datamodule import KneeDataModule
from osteolightning.data.phantom import CLASS_NAMES, generate_knee
from osteolightning.data.seg_datamodule import SegmentationDataModule
from osteolightning.data.seg_sources import SegmentationTreeSource
from osteolightning.data.sources import ManifestSource
from osteolightning.errors import DataSourceError

FAST = dict(image_size=64, batch_size=8, near_duplicate_distance=None)


def _rows(phantom_dir: Path) -> list[dict[str, str]]:
    with open(phantom_dir / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_summary_warns_about_partial_bit_depth_and_extreme_aspect(make_cfg, class_tree, caplog):
    knee = generate_knee(seed=7, index=0, size=96).image  # (96, 96) in [0, 1]
    deep = class_tree / "normal" / "deep12.png"  # 12-bit data in a 16-bit PNG
    Image.fromarray(np.rint(knee * 4095).astype(np.uint16)).save(deep)
    strip = class_tree / "osteopenia" / "strip.png"  # 40 x 800: 20 times as wide as high
    Image.fromarray(np.tile(np.arange(800) % 256, (40, 1)).astype(np.uint8)).save(strip)
    cfg = make_cfg("train", ["debug=tiny", "data=folder", f"data.root={class_tree}"])
    dm = hydra.utils.instantiate(cfg.data)
    with caplog.at_level(logging.WARNING, logger="osteolightning.data.datamodule"):
        dm.setup("fit")
    kinds = {f.kind: f for f in dm.findings}
    assert set(kinds) == {"partial_bit_depth", "extreme_aspect_ratio"}
    assert kinds["partial_bit_depth"].files == [str(deep)]
    assert "12-bit by range: 1" in kinds["partial_bit_depth"].message
    assert kinds["extreme_aspect_ratio"].files == [str(strip)]
    assert "(40x800 pixels, height x width, 20:1)" in kinds["extreme_aspect_ratio"].message
    summary = dm.summary()
    assert "WARNING" in summary and "deep12.png" in summary and "strip.png" in summary
    assert "deep12.png" in caplog.text  # the summary is logged as a warning
    # handled: the 12-bit image keeps its gray levels (4095 / 65535 would leave about 16)
    assert len(np.unique(dm.cache.load([deep])[0])) > 150


def _binary_tree(phantom_dir: Path, root: Path, n: int = 16) -> Path:
    """images/*.png from the phantom, masks/*.png as 0/255 gray PNGs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for row in _rows(phantom_dir)[:n]:
        name = Path(row["image"]).name
        shutil.copy(phantom_dir / row["image"], root / "images" / name)
        bone = np.asarray(Image.open(phantom_dir / row["mask"])) > 0
        Image.fromarray(bone.astype(np.uint8) * 255).save(root / "masks" / name)
    return root


def _seg(root: Path, cache: Path, **kwargs) -> SegmentationDataModule:
    source = SegmentationTreeSource(root)
    return SegmentationDataModule(
        source, ["background", "bone"], mask_format="binary", cache_dir=cache, **FAST, **kwargs
    )


def test_empty_and_many_level_binary_masks_are_warned_about(phantom_dir, tmp_path):
    root = _binary_tree(phantom_dir, tmp_path / "tree")
    masks = sorted((root / "masks").iterdir())
    empty, grey = masks[2], masks[5]
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(empty)
    bone = np.asarray(Image.open(grey)) > 0  # anti-aliased: a ring of mid-gray levels
    ring = bone & ~np.roll(bone, 1, axis=0)
    Image.fromarray(np.where(ring, 100, bone * 255).astype(np.uint8)).save(grey)
    dm = _seg(root, tmp_path / "cache")
    dm.setup()
    kinds = {f.kind: f for f in dm.findings}
    assert set(kinds) == {"empty_mask", "binary_mask_levels"}
    assert kinds["empty_mask"].files == [str(empty)]
    assert "mask_format=label" in kinds["empty_mask"].message  # the likely cause
    assert kinds["binary_mask_levels"].files == [str(grey)]
    assert "up to 3" in kinds["binary_mask_levels"].message
    assert "gray level > 127" in kinds["binary_mask_levels"].message
    assert empty.name in dm.summary() and grey.name in dm.summary()


def test_all_masks_empty_is_an_error_naming_them(phantom_dir, tmp_path):
    root = _binary_tree(phantom_dir, tmp_path / "tree", n=12)
    for mask in (root / "masks").iterdir():  # 0/1 masks read as binary: all below 127
        bone = np.asarray(Image.open(mask)) > 0
        Image.fromarray(bone.astype(np.uint8)).save(mask)
    with pytest.raises(DataSourceError) as info:
        _seg(root, tmp_path / "cache").setup()
    message = str(info.value)
    assert "All 12 masks are all background" in message and "mask_format=label" in message
    assert "K00000.png" in message and len(info.value.details) == 12


def _masked_manifest(phantom_dir: Path, tmp_path: Path, empty_at: int) -> tuple[Path, Path]:
    path, empty = tmp_path / "with_masks.csv", tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(empty)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "mask"])
        for i, row in enumerate(_rows(phantom_dir)):
            mask = empty if i == empty_at else phantom_dir / row["mask"]
            writer.writerow([str(phantom_dir / row["image"]), row["label"], str(mask)])
    return path, empty


def test_an_empty_mask_as_classifier_input_follows_on_bad_image(phantom_dir, tmp_path):
    manifest, empty = _masked_manifest(phantom_dir, tmp_path, empty_at=4)
    args = dict(mask_input="apply", cache_dir=tmp_path / "cache", **FAST)
    with pytest.raises(DataSourceError, match=rf"'{empty}'.*all background.*blank the whole"):
        KneeDataModule(ManifestSource(manifest), list(CLASS_NAMES), **args).setup()
    dm = KneeDataModule(ManifestSource(manifest), list(CLASS_NAMES), on_bad_image="skip", **args)
    dm.setup()
    assert [path for path, _ in dm.skipped] == [str(empty)]
    assert len(dm.samples) == 59
