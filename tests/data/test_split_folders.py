"""A data set published with its split (the KL grades' layout): ROOT/<split>/<grade>/<patient
id><side>.png. The given split is kept, grade folders map to class names, patients come from
file names and never straddle two folders, and the reserved test folder is never read."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from osteolightning.data.folders import FolderSource, SplitFolderSource
from osteolightning.data.splits import SPLIT_NAMES
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.train import train
from tests.helpers import run_osteo, write_graded_tree

CLASSES = ["normal", "osteopenia", "osteoporosis"]
GRADES = {"0": "normal", "1": "osteopenia", "2": "osteoporosis"}


def _overrides(root: Path) -> list[str]:
    return [
        "debug=tiny",
        "data=kl_grades",
        f"data.root={root}",
        "class_names=[KL0,KL1,KL2]",  # the grade folders 0..2 as data=kl_grades maps them
    ]


def test_the_given_split_is_kept_and_the_test_folder_never_read(make_cfg, phantom_dir, tmp_path):
    root = write_graded_tree(phantom_dir, tmp_path / "kl")
    (root / "test" / "0" / "broken.png").write_bytes(b"not a png")  # never read
    _, objects = train(make_cfg("train", _overrides(root)))
    dm = objects["datamodule"]
    where = {str(s.path): SPLIT_NAMES[c] for s, c in zip(dm.samples, dm.split_codes, strict=True)}
    assert not [p for p in where if "/test/" in p]
    assert {p for p, s in where.items() if s == "test"} == {p for p in where if "/val/" in p}
    assert {s for p, s in where.items() if "/train/" in p} == {"train", "val"}
    # patients from the file names: both knees of a patient on one side of the carved split
    by_patient: dict[str, set[str]] = {}
    for s, c in zip(dm.samples, dm.split_codes, strict=True):
        by_patient.setdefault(s.patient_id, set()).add(SPLIT_NAMES[c])
    assert all(len(v) == 1 for v in by_patient.values())
    labels = {str(s.path): dm.class_names[s.label] for s in dm.samples}
    assert all(labels[p] == f"KL{Path(p).parent.name}" for p in labels)


def test_a_patient_in_two_given_splits_stops_the_run(make_cfg, phantom_dir, tmp_path):
    root = write_graded_tree(phantom_dir, tmp_path / "kl", leak=True)
    with pytest.raises(DataSourceError, match="two of the data set's given splits") as err:
        train(make_cfg("train", _overrides(root)))
    assert "9000000" in str(err.value)


def test_patient_patterns_and_folders_are_checked(phantom_dir, tmp_path):
    root = write_graded_tree(phantom_dir, tmp_path / "kl")
    any_png = next((root / "train").rglob("*.png"))
    shutil.copyfile(any_png, root / "train" / "1" / "no_number.png")
    source = FolderSource(root / "train", class_map=GRADES, patient_pattern=r"^(\d+)")
    with pytest.raises(
        DataSourceError, match="'no_number.png'.*does not match the patient pattern"
    ):
        source.samples(CLASSES)
    with pytest.raises(ConfigError, match="to have a group"):
        FolderSource(root, patient_pattern=r"^\d+")
    with pytest.raises(ConfigError, match="one of \\['train', 'test'\\]"):
        SplitFolderSource(root, folders={"train": "validation"})
    with pytest.raises(DataSourceError, match="not found under") as err:
        SplitFolderSource(root, folders={"training": "train"}).samples(CLASSES)
    assert "test, train, val" in str(err.value)


def test_osteo_eval_scores_the_reserved_test_folder(make_cfg, phantom_dir, tmp_path, cache_dir):
    root = write_graded_tree(phantom_dir, tmp_path / "kl")
    metrics, _ = train(make_cfg("train", _overrides(root)))
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    done = run_osteo(
        "evaluate",
        [
            f"ckpt_path={ckpt}",
            "data=grade_folders",
            f"data.root={root / 'test'}",
            "logger=csv",
        ],
        tmp_path,
        cache_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(next(tmp_path.glob("logs/eval/runs/*/predictions.csv")), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all("/test/" in r["path"] for r in rows)
    assert len(rows) == len(list((root / "test").rglob("*.png")))
    assert np.isfinite([float(r["prob_KL0"]) for r in rows]).all()
    assert {r["label"] for r in rows} == {"KL0", "KL1", "KL2"}
