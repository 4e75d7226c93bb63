"""The data plan (:func:`osteolightning.data.plan.plan_data`): one pure function from a source and
the options to plain values, read alike by the DataModule, ``osteo-data audit`` and
``osteo-eval``'s leakage check."""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteolightning.data.audit import audit
from osteolightning.data.cache import PreprocessedCache
from osteolightning.data.datamodule import KneeDataModule
from osteolightning.data.folders import FolderSource
from osteolightning.data.phantom import CLASS_NAMES, generate_knee
from osteolightning.data.plan import DataTask, plan_data
from osteolightning.data.sources import ManifestSource
from osteolightning.data.specs import HygieneSpec, InputSpec, SplitSpec
from osteolightning.data.splits import SPLIT_NAMES
from osteolightning.errors import ConfigError
from osteolightning.evaluate import warn_if_seen
from osteolightning.runs import rundir
from tests.data.test_audit import make_tree

SIZE = 128  # the audit's resolution; the DataModule's image_size where the two are compared
TASK = DataTask(tuple(CLASS_NAMES), tuple(CLASS_NAMES))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The audit's planted tree (a conflicting exact copy, a re-saved near copy, a truncated
    file) and twelve more knees, so that a hold-out split has every class in every split."""
    root = make_tree(tmp_path_factory.mktemp("plan") / "knees")
    for i in range(6, 18):
        image = generate_knee(seed=0, index=i, size=96).image
        path = root / CLASS_NAMES[i % 3] / f"k{i}.png"
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> PreprocessedCache:
    return PreprocessedCache(tmp_path_factory.mktemp("plan_cache"), SIZE, workers=2)


def _plan(tree: Path, cache: PreprocessedCache, **hygiene):
    spec = HygieneSpec(**{"on_bad_image": "skip", **hygiene})
    split = SplitSpec(val_fraction=0.3, test_fraction=0.3)
    return plan_data(FolderSource(tree), TASK, cache, spec, split, InputSpec(SIZE))


def _names(paths) -> list[str]:
    return sorted(Path(p).name for p in paths)


def _plain(plan) -> dict:
    """The plan's values, comparable with ``==`` (arrays as lists, findings as text)."""
    out = {}
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if f.name == "images":
            value = np.asarray(value).tobytes()
        elif f.name == "copies":
            value = (value.component.tolist(), value.groups, value.conflicts, value.near_pairs)
        elif f.name == "findings":
            value = [(x.kind, x.message) for x in value]
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[f.name] = value
    return out


def test_equal_inputs_give_an_equal_plan(tree, cache):
    first, second = _plan(tree, cache), _plan(tree, cache)
    assert _plain(first) == _plain(second)
    assert len(first.listed) == 21 and len(first.readable) == 20  # broken.png left out
    assert _names(p for p, _ in first.skipped) == ["broken.png"]


def test_copies_conflicts_and_groups_are_found_once(tree, cache):
    plan = _plan(tree, cache)
    readable = [s.path.name for s in plan.readable]
    groups = sorted(sorted(readable[i] for i in g) for g in plan.copies.groups)
    assert groups == [["k0.png", "k0_copy.png"], ["k2.png", "k2_resaved.jpg"]]
    [conflict] = plan.copies.conflicts  # the exact copy filed under two classes
    assert sorted(readable[i] for i in conflict) == ["k0.png", "k0_copy.png"]
    [(i, j, _)] = plan.copies.near_pairs
    assert {readable[i], readable[j]} == {"k2.png", "k2_resaved.jpg"}
    # drop (the default): both copies of the conflict are left out and listed
    kept = [s.path.name for s in plan.samples]
    assert "k0.png" not in kept and "k0_copy.png" not in kept and len(kept) == 18
    assert [(Path(p).name, a) for _, p, _, a in plan.conflicts] == [
        ("k0.png", "dropped"),
        ("k0_copy.png", "dropped"),
    ]
    # the near copies are one group, so they sit in one split
    near = [kept.index("k2.png"), kept.index("k2_resaved.jpg")]
    assert plan.groups[near[0]] == plan.groups[near[1]]
    assert plan.split_codes[near[0]] == plan.split_codes[near[1]]
    assert len(np.unique(plan.groups)) == 17
    assert {SPLIT_NAMES[c] for c in plan.split_codes} == set(SPLIT_NAMES)
    # keep: every copy stays, the conflict whole inside one split
    kept_plan = _plan(tree, cache, on_label_conflict="keep")
    paths = [s.path.name for s in kept_plan.samples]
    pair = [paths.index("k0.png"), paths.index("k0_copy.png")]
    assert len(paths) == 20 and kept_plan.split_codes[pair[0]] == kept_plan.split_codes[pair[1]]


def test_the_audit_and_the_datamodule_agree_on_the_plan(tree, cache):
    report = audit(FolderSource(tree), CLASS_NAMES, cache)
    dm = KneeDataModule(
        FolderSource(tree),
        CLASS_NAMES,
        image_size=SIZE,
        cache_dir=cache.root,
        on_bad_image="skip",
        on_label_conflict="keep",
        evaluate_all=True,
    )
    dm.setup("test")
    readable = [str(s.path) for s in dm.plan.readable]
    copy_groups = sorted(sorted(readable[i] for i in g) for g in dm.plan.copies.groups)
    audited = sorted(g.files for g in report.exact_duplicates + report.near_duplicates)
    assert copy_groups == audited
    assert [g.files for g in report.label_conflicts] == [
        sorted(readable[i] for i in g) for g in dm.plan.copies.conflicts
    ]
    assert [d["path"] for d in report.unreadable] == [p for p, _ in dm.skipped]
    assert [(f.kind, f.message) for f in report.findings] == [
        (f.kind, f.message) for f in dm.findings
    ]
    assert dm.samples == dm.plan.samples and dm.digests == dm.plan.digests


def test_osteo_eval_reads_the_plan_of_its_datamodule(tree, cache, tmp_path, caplog):
    dm = KneeDataModule(
        FolderSource(tree), CLASS_NAMES, image_size=SIZE, cache_dir=cache.root,
        on_bad_image="skip", evaluate_all=True,
    )  # fmt: skip
    dm.setup("test")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with (run / rundir.SPLITS).open("w", newline="") as fh:  # a run that trained on 12 of 18
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "label", "patient_id", "group", "sha1"])
        for i, digest in enumerate(dm.plan.digests):
            writer.writerow(["train" if i < 12 else "test", f"x{i}.png", "", "", i, digest])
    with caplog.at_level(logging.WARNING):
        share = warn_if_seen(run / "checkpoints" / "last.ckpt", dm)
    assert share == pytest.approx(12 / 18)
    assert "12 of the 18 evaluated images" in caplog.text


def test_data_root_makes_the_source_when_none_is_given(tree, tmp_path):
    dm = KneeDataModule(None, CLASS_NAMES, root=str(tree), cache_dir=tmp_path)
    assert isinstance(dm.source, FolderSource) and dm.source.root == tree
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\n")
    dm = KneeDataModule(None, CLASS_NAMES, root=str(manifest), cache_dir=tmp_path)
    assert isinstance(dm.source, ManifestSource) and dm.source.path == manifest
    # a given source is the configs' (data.source interpolates data.root): it is kept
    given = FolderSource(tree)
    assert KneeDataModule(given, CLASS_NAMES, root="elsewhere", cache_dir=tmp_path).source is given


def test_the_specs_check_their_values():
    with pytest.raises(ConfigError, match="`on_label_conflict` to be one of"):
        HygieneSpec(on_label_conflict="ignore")
    with pytest.raises(ConfigError, match="data.inner_folds"):
        SplitSpec(inner_folds=3)
    with pytest.raises(ConfigError, match="`mask_crop_from` >= image_size"):
        InputSpec(64, mask_input="crop", mask_crop_from=32)
    assert InputSpec(64, mask_input="crop").cache_size == 256
