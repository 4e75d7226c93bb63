"""Broken links, unreadable files and folder loops follow on_bad_image in training, the audit
and osteo-predict; osteo-predict leaves nothing out without a line and never overwrites."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from osteolightning.data.audit import audit
from osteolightning.data.cache import PreprocessedCache
from osteolightning.data.folders import FolderSource
from osteolightning.data.inputs import find_inputs
from osteolightning.data.phantom import CLASS_NAMES
from osteolightning.errors import DataSourceError, ImageReadError
from osteolightning.predict import main as predict_main
from osteolightning.train import train


def _break_links(tree: Path) -> list[Path]:
    """A broken link (and nothing else changed)."""
    broken = tree / "normal" / "gone.png"
    broken.symlink_to(tree / "nowhere.png")
    return [broken]


def _lock(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable: no read permission, or for root (who reads anything) the
    PermissionError the system would raise."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    import osteolightning.data.io as io

    real = io._read_image_info

    def refuse(p):
        if Path(p) == path:
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(io, "_read_image_info", refuse)


def test_broken_links_stop_training_by_name_or_are_skipped_and_listed(make_cfg, class_tree):
    (broken,) = _break_links(class_tree)
    args = ["debug=tiny", "data=folder", f"data.root={class_tree}"]
    with pytest.raises(ImageReadError, match=r"gone.png.*broken symbolic link"):
        train(make_cfg("train", args, run="error"))
    cfg = make_cfg("train", [*args, "data.on_bad_image=skip"], run="skip")
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "skipped.csv") as handle:
        skipped = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert "broken symbolic link" in skipped[str(broken)]


def test_the_audit_lists_broken_links_as_unreadable(class_tree, tmp_path):
    (broken,) = _break_links(class_tree)
    report = audit(FolderSource(class_tree), CLASS_NAMES, PreprocessedCache(tmp_path, 64))
    unreadable = {bad["path"]: bad["reason"] for bad in report.to_dict()["unreadable"]}
    assert "broken symbolic link" in unreadable[str(broken)]


def test_a_folder_that_links_back_into_itself_is_read_once(class_tree):
    (class_tree / "normal" / "loop").symlink_to(class_tree, target_is_directory=True)
    inputs = find_inputs([class_tree])
    images = [image for _, image in inputs.pairs]
    assert len(images) == len(set(images)) == len(list(class_tree.rglob("*.png")))


def test_osteo_predict_lists_every_input_it_leaves_out(
    trained, class_tree, tmp_path, capsys, monkeypatch
):
    (broken,) = _break_links(class_tree)
    refused = class_tree / "osteopenia" / "locked.png"
    shutil.copy(next(class_tree.rglob("*.png")), refused)
    _lock(refused, monkeypatch)
    (class_tree / "notes.txt").write_text("not an image")
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    out = tmp_path / "preds.csv"
    assert (
        predict_main([str(ckpt), str(class_tree), "--out", str(out), "--on-bad-image", "skip"]) == 0
    )
    printed = capsys.readouterr().err
    for path in (broken, refused, class_tree / "notes.txt"):
        assert f"skipped '{path}'" in printed
    assert "Permission denied" in printed
    with open(out) as handle:
        written = list(csv.DictReader(handle))
    readable = len(list(class_tree.rglob("*.png"))) - 2  # the link and the locked file
    assert len(written) == readable
    assert f"wrote {readable} predictions to {out} (3 skipped, listed above)" in printed

    with pytest.raises(SystemExit) as stop:  # error: the first bad input, named, status 1
        predict_main([str(ckpt), str(class_tree), "--out", str(tmp_path / "other.csv")])
    assert stop.value.code == 1
    assert "gone.png" in capsys.readouterr().err


def test_osteo_predict_does_not_overwrite_without_overwrite(trained, class_tree, tmp_path, capsys):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    image = sorted(class_tree.rglob("*.png"))[0]
    out = tmp_path / "mine.csv"
    out.write_text("my own notes\n")
    with pytest.raises(SystemExit) as stop:
        predict_main([str(ckpt), str(image), "--out", str(out)])
    assert stop.value.code == 1 and out.read_text() == "my own notes\n"
    assert "--overwrite" in capsys.readouterr().err
    assert predict_main([str(ckpt), str(image), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("path,prob_normal")


def test_osteo_predict_error_has_no_traceback_and_status_1(trained, tmp_path):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run(
        [sys.executable, "-m", "osteolightning.predict", str(ckpt), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "nope" in done.stderr and "does not exist" in done.stderr


def test_a_manifest_row_naming_a_missing_file(tmp_path, phantom_dir):
    rows = (phantom_dir / "manifest.csv").read_text().splitlines()
    manifest = tmp_path / "m.csv"
    images = tmp_path / "images"
    shutil.copytree(phantom_dir / "images", images)
    (images / Path(rows[3].split(",")[0]).name).unlink()
    manifest.write_text("\n".join(rows[:6]) + "\n")
    with pytest.raises(DataSourceError, match="line 4"):
        find_inputs([manifest])
    found = find_inputs([manifest], on_bad_image="skip")
    assert len(found.pairs) == 4 and "line 4" in found.skipped[0][1]
