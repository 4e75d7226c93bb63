"""Copies never straddle a split; label conflicts follow the configured policy."""

from __future__ import annotations

import shutil

import hydra
import numpy as np
import pytest

from osteolightning.data.hygiene import apply_conflict_policy, conflict_rows, find_copies
from osteolightning.errors import ConfigError, DataSourceError

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def test_exact_copies_and_conflicts_are_found():
    digests = ["a", "b", "a", "c", "b", "d"]
    labels = np.array([0, 1, 0, 2, 2, 1])
    copies = find_copies(digests, labels)
    assert sorted(map(sorted, copies.groups)) == [[0, 2], [1, 4]]
    assert copies.conflicts == [[1, 4]]
    assert copies.component[0] == copies.component[2] != copies.component[1]


@pytest.mark.parametrize(("policy", "kept"), [("drop", [0, 2, 3, 5]), ("keep", [0, 1, 2, 3, 4, 5])])
def test_policies(policy, kept):
    labels = np.array([0, 1, 0, 2, 2, 1])
    copies = find_copies(["a", "b", "a", "c", "b", "d"], labels)
    names = [f"f{i}.png" for i in range(6)]
    keep = apply_conflict_policy(copies, policy, names, CLASSES, labels)
    assert np.flatnonzero(keep).tolist() == kept
    rows = conflict_rows(copies, policy, names, CLASSES, labels)
    assert {r[1] for r in rows} == {"f1.png", "f4.png"}


def test_error_policy_names_the_files_and_the_options():
    labels = np.array([0, 1])
    copies = find_copies(["a", "a"], labels)
    with pytest.raises(DataSourceError, match=r"f0\.png.*f1\.png.*on_label_conflict=drop"):
        apply_conflict_policy(copies, "error", ["f0.png", "f1.png"], CLASSES, labels)
    with pytest.raises(ConfigError, match="on_label_conflict"):
        apply_conflict_policy(copies, "ignore", ["f0.png", "f1.png"], CLASSES, labels)


def _tree_with_copies(class_tree):
    """Plant a conflicting copy (normal image also under osteoporosis) and a same-label copy."""
    normal = sorted((class_tree / "normal").glob("*.png"))
    conflict = class_tree / "osteoporosis" / "copy_of_normal.png"
    shutil.copy(normal[0], conflict)
    same = class_tree / "normal" / "again.png"
    shutil.copy(normal[1], same)
    return normal[0], conflict, normal[1], same


def _datamodule(make_cfg, root, *overrides):
    cfg = make_cfg("train", ["debug=tiny", "data=folder", f"data.root={root}", *overrides])
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _split_of(dm, path):
    return [r[0] for r in dm.split_rows() if r[1] == str(path)]


def test_datamodule_drops_conflicts_and_keeps_copies_together(make_cfg, class_tree):
    original, conflict, twin_a, twin_b = _tree_with_copies(class_tree)
    dm = _datamodule(make_cfg, class_tree)
    assert _split_of(dm, original) == [] and _split_of(dm, conflict) == []  # dropped
    assert {r[1] for r in dm.conflicts} == {str(original), str(conflict)}
    assert len(_split_of(dm, twin_a)) == 1 and _split_of(dm, twin_a) == _split_of(dm, twin_b)
    assert "conflicting labels" in dm.summary()


def test_datamodule_keep_policy_keeps_conflicts_in_one_split(make_cfg, class_tree):
    original, conflict, _, _ = _tree_with_copies(class_tree)
    dm = _datamodule(make_cfg, class_tree, "data.on_label_conflict=keep")
    assert len(_split_of(dm, original)) == 1
    assert _split_of(dm, original) == _split_of(dm, conflict)


def test_datamodule_error_policy_stops(make_cfg, class_tree):
    _, conflict, _, _ = _tree_with_copies(class_tree)
    with pytest.raises(DataSourceError, match=conflict.name):
        _datamodule(make_cfg, class_tree, "data.on_label_conflict=error")
