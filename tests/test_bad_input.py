"""Bad input stops a run before training, with an error naming the file or row; nothing is
half-written into the run directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from osteolightning.errors import DataSourceError, ImageReadError
from osteolightning.train import train


def _train_on(make_cfg, data: str, root: Path):
    cfg = make_cfg("train", ["debug=tiny", f"data={data}", f"data.root={root}"], run="bad")
    return cfg, Path(cfg.paths.output_dir)


def _assert_nothing_written(run_dir: Path) -> None:
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "predictions.csv").exists()


def test_folder_without_images(make_cfg, tmp_path):
    (tmp_path / "empty" / "normal").mkdir(parents=True)
    cfg, run_dir = _train_on(make_cfg, "folder", tmp_path / "empty")
    with pytest.raises(DataSourceError, match="empty"):
        train(cfg)
    _assert_nothing_written(run_dir)


def test_unknown_class_folder(make_cfg, class_tree):
    (class_tree / "osteopetrosis").mkdir()
    shutil.copy(next(class_tree.rglob("*.png")), class_tree / "osteopetrosis" / "x.png")
    cfg, run_dir = _train_on(make_cfg, "folder", class_tree)
    with pytest.raises(DataSourceError, match="osteopetrosis"):
        train(cfg)
    _assert_nothing_written(run_dir)


def test_truncated_image_is_named(make_cfg, class_tree):
    victim = sorted(class_tree.rglob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    cfg, run_dir = _train_on(make_cfg, "folder", class_tree)
    with pytest.raises(ImageReadError, match=victim.name):
        train(cfg)
    _assert_nothing_written(run_dir)


def test_manifest_with_missing_columns(make_cfg, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("file,diagnosis\na.png,normal\n")
    cfg, run_dir = _train_on(make_cfg, "manifest", csv)
    with pytest.raises(DataSourceError, match="image"):
        train(cfg)
    _assert_nothing_written(run_dir)


def test_manifest_with_missing_file_names_the_row(make_cfg, phantom_dir):
    lines = (phantom_dir / "manifest.csv").read_text().splitlines()
    lines[5] = lines[5].replace("images/", "images/missing_")
    csv = phantom_dir / "manifest_bad.csv"
    csv.write_text("\n".join(lines) + "\n")
    cfg, run_dir = _train_on(make_cfg, "manifest", csv)
    with pytest.raises(DataSourceError, match="line 6"):
        train(cfg)
    _assert_nothing_written(run_dir)
