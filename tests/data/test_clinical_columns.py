"""Clinical tables as they come: yes/no answers, categories, missing and implausible cells,
``covariates=all``, the leakage guard, copies filed under two records, and a record-only run
that decodes no pixels."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from osteolightning.data.audit import audit
from osteolightning.data.cache import PreprocessedCache
from osteolightning.data.columns import (
    coded_names,
    column_values,
    covariate_candidates,
    infer_coding,
    separating_columns,
)
from osteolightning.data.sources import ManifestSource
from osteolightning.errors import DataSourceError
from osteolightning.train import train
from tests.helpers import run_osteo, write_manifest

CLASSES = ["normal", "osteopenia", "osteoporosis"]
SITES = ["North", "south", "EAST"]


def _clinical(i: int, row: dict) -> None:
    """The phantom's record plus a yes/no answer, a category and a blank or two."""
    row["smoker"] = ["yes", "No", "", "Y", "n", "TRUE"][i % 6]
    row["site"] = SITES[i % 3] if i % 7 else ""
    row["weight_kg"] = f"{60 + i % 25}"


def test_yes_no_categories_and_missing_cells_are_encoded(phantom_dir, tmp_path):
    path = write_manifest(phantom_dir, tmp_path / "m.csv", _clinical, n=12)
    samples = ManifestSource(path).samples(CLASSES)
    coding = infer_coding(samples, ["smoker", "site", "sex", "age"], "m")
    assert coding == {
        "smoker": "binary",
        "site": ["east", "north", "south"],
        "sex": "sex",
        "age": "number",
    }
    names = coded_names(["smoker", "site", "age"], coding)
    assert names == ["smoker", "site=east", "site=north", "site=south", "age"]
    values = column_values(samples, ["smoker", "site", "age"], "m", coding)
    assert values.shape == (12, 5)
    np.testing.assert_array_equal(values[:6, 0], [1, 0, np.nan, 1, 0, 1])
    np.testing.assert_array_equal(values[1, 1:4], [0, 0, 1])  # "south"
    assert np.isnan(values[0, 1:4]).all()  # row 0: a blank site, unknown in every column
    # a level the coding does not know (new data) is unknown, not an error
    only_two = {**coding, "site": ["north", "south"]}
    assert np.isnan(column_values(samples, ["site"], "m", only_two)[2]).all()  # "EAST"


@pytest.mark.parametrize(
    ("column", "cell", "message"),
    [("age", "-3", "age -3 is not a plausible value (expected 0 to 120"),
     ("bmi", "270", "bmi 270 is not a plausible value"),
     ("smoker", "maybe", "smoker 'maybe' is not a yes/no answer")],
)  # fmt: skip
def test_impossible_values_are_named_by_file_and_line(phantom_dir, tmp_path, column, cell, message):
    def edit(i, row):
        _clinical(i, row)
        if i == 4:
            row[column] = cell

    path = write_manifest(phantom_dir, tmp_path / "m.csv", edit, n=12)
    samples = ManifestSource(path).samples(CLASSES)
    coding = {"smoker": "binary"}
    with pytest.raises(DataSourceError, match="line 6") as err:  # the header is line 1
        column_values(samples, [column], "the manifest", coding)
    assert message in str(err.value) and str(path) in str(err.value)


def test_all_means_every_clinical_column(phantom_dir, tmp_path):
    path = write_manifest(phantom_dir, tmp_path / "m.csv", _clinical, n=6)
    samples = ManifestSource(path).samples(CLASSES)
    got = covariate_candidates(samples, exclude=["bmd"])
    # not the image, label, mask, patient id, target or T-score (the label's source)
    assert got == ["side", "age", "sex", "bmi", "smoker", "site", "weight_kg"]


def test_the_guard_flags_a_label_in_disguise_only(phantom_dir, tmp_path):
    def edit(i, row):
        _clinical(i, row)
        row["diagnosis"] = {"normal": "healthy", "osteopenia": "low", "osteoporosis": "OP"}[
            row["label"]
        ]

    path = write_manifest(phantom_dir, tmp_path / "m.csv", edit)
    samples = ManifestSource(path).samples(CLASSES)
    columns = ["diagnosis", "bmd", "age", "smoker", "site"]
    coding = infer_coding(samples, columns, "m")
    labels = np.array([s.label for s in samples])
    flagged = dict(separating_columns(samples, labels, columns, coding, 0.95))
    # the diagnosis and the BMD the T-score is computed from; not the risk factors
    assert set(flagged) == {"diagnosis", "bmd"} and flagged["diagnosis"] == 1.0


def _base(manifest: Path) -> list[str]:
    return ["debug=tiny", "data=manifest", f"data.root={manifest}", "model=covariates"]


def test_a_leaky_covariate_stops_the_run_before_training(make_cfg, phantom_dir, tmp_path):
    path = write_manifest(phantom_dir, tmp_path / "m.csv", _clinical)
    cfg = make_cfg("train", [*_base(path), "model.covariates=all"], run="a")
    with pytest.raises(DataSourceError, match=r"`bmd` \(balanced accuracy") as err:
        train(cfg)
    assert "data.allow_separating=[bmd]" in str(err.value)
    assert not (tmp_path / "a" / "checkpoints").exists()  # nothing trained
    # said to be intended: it trains, and the coding of every column is in the checkpoint
    allowed = [*_base(path), "model.covariates=all", "data.allow_separating=[bmd]"]
    metrics, objects = train(make_cfg("train", allowed, run="b"))
    hp = objects["model"].hparams
    assert hp.covariates == ["bmd", "side", "age", "sex", "bmi", "smoker", "site", "weight_kg"]
    assert hp.covariate_coding["site"] == ["east", "north", "south"]
    assert hp.covariate_coding["smoker"] == "binary"
    assert objects["model"].covariate_encoder.names[-4:-1] == [
        "site=east",
        "site=north",
        "site=south",
    ]
    assert metrics["test/balanced_acc"] > 0.8  # the BMD is the answer (chance: 1/3)


def test_a_record_only_run_decodes_no_pixels_and_osteo_eval_encodes_alike(
    make_cfg, phantom_dir, tmp_path, cache_dir, caplog
):
    path = write_manifest(phantom_dir, tmp_path / "m.csv", _clinical)
    covariates = "model.covariates=[age,sex,bmi,smoker,site,weight_kg]"
    cfg = make_cfg("train", [*_base(path), covariates, "paths.cache_dir=" + str(tmp_path / "c")])
    metrics, objects = train(cfg)
    assert objects["datamodule"].images is False
    assert not list((tmp_path / "c").rglob("*.npy")) and not list((tmp_path / "c").rglob("arrays"))
    # no image network: no image-model warnings
    assert not [r for r in caplog.records if "saliency" in r.getMessage().lower()]
    ckpt = metrics.get("ckpt_path") or str(next((tmp_path / "run").rglob("epoch_*.ckpt")))
    done = run_osteo(
        "evaluate",
        [f"ckpt_path={ckpt}", "data=manifest", f"data.root={path}", "logger=csv"],
        tmp_path,
        cache_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = _probs(next(tmp_path.glob("logs/eval/runs/*/predictions.csv")))
    tested = _probs(tmp_path / "run" / "predictions.csv")
    assert tested and set(tested) <= set(evaluated)
    for image, probs in tested.items():
        np.testing.assert_allclose(evaluated[image], probs, atol=1e-5)


def _probs(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as handle:
        return {r["path"]: [float(r[f"prob_{c}"]) for c in CLASSES] for r in csv.DictReader(handle)}


def _twins(phantom_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A manifest where one radiograph is filed twice, one class, two people's records."""
    twin = tmp_path / "twin.png"
    with open(phantom_dir / "manifest.csv", newline="") as handle:
        row0 = next(csv.DictReader(handle))

    def edit(i, row):
        if i == 0:
            shutil.copyfile(row["image"], twin)
        if i == 1:  # the same radiograph, the same class, another person's record
            row["image"], row["label"] = str(twin), row0["label"]
            row["age"], row["patient_id"] = "33", "someone-else"

    return write_manifest(phantom_dir, tmp_path / "m.csv", edit), twin


def test_the_audit_names_copies_filed_under_two_records(phantom_dir, tmp_path):
    path, twin = _twins(phantom_dir, tmp_path)
    cache = PreprocessedCache(tmp_path / "cache", image_size=64, workers=1)
    report = audit(ManifestSource(path), CLASSES, cache, near_duplicates=False)
    (group,) = report.record_conflicts
    assert str(twin) in group.files and group.records == 2 and not group.conflict
    assert any("record-conflict" in p for p in report.problems())
    assert report.to_dict()["exact_duplicates"][0]["records"] == 2


@pytest.mark.parametrize("policy", ["drop", "keep", "error"])
def test_copies_filed_under_two_records(make_cfg, phantom_dir, tmp_path, policy):
    """Two byte-identical images under two people's records: neither can be trusted."""
    path, twin = _twins(phantom_dir, tmp_path)
    cfg = make_cfg("train", [*_base(path), f"data.on_record_conflict={policy}"])
    if policy == "error":
        with pytest.raises(DataSourceError, match="different records") as err:
            train(cfg)
        assert str(twin) in str(err.value)
        return
    _, objects = train(cfg)
    kept = {str(s.path) for s in objects["datamodule"].samples}
    assert (str(twin) in kept) == (policy == "keep")
    with open(tmp_path / "run" / "label_conflicts.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if str(twin) in r.values()]
    assert rows and all(policy == ("drop" if "dropped" in r.values() else "keep") for r in rows)
    summary = json.dumps(objects["datamodule"].conflicts)
    assert str(twin) in summary
