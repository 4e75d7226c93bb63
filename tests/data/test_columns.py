"""Target and covariate columns: numbers, unknowns, sex codes, and bad cells named by their CSV
line; the DataModule carries them in every item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteolightning.data.columns import column_values
from osteolightning.data.sources import ManifestSource
from osteolightning.errors import DataSourceError
from tests.helpers import write_manifest

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def _samples(phantom_dir, tmp_path, edit):
    path = write_manifest(phantom_dir, tmp_path / "m.csv", edit, n=6)
    return path, ManifestSource(path).samples(CLASSES)


def test_numbers_unknowns_and_sex_codes(phantom_dir, tmp_path):
    def edit(i, row):
        row["bmd"] = ["0.91", "", "NaN", "na", " 1.2 ", "0.5"][i]
        row["sex"] = ["F", "m", "Female", "MALE", "", "w"][i]

    _, samples = _samples(phantom_dir, tmp_path, edit)
    values = column_values(samples, ["bmd", "sex", "age", "t_score"], "test")
    np.testing.assert_array_equal(np.isnan(values[:, 0]), [False, True, True, True, False, False])
    assert values[0, 0] == 0.91 and values[4, 0] == 1.2
    np.testing.assert_array_equal(values[[0, 1, 2, 3, 5], 1], [1, 0, 1, 0, 1])
    assert np.isnan(values[4, 1])
    assert np.all(np.isfinite(values[:, 2:]))  # age and the T-score of every phantom knee


@pytest.mark.parametrize(
    ("column", "cell", "message"),
    [("bmd", "abc", "bmd 'abc' is not a finite number"), ("bmd", "inf", "bmd 'inf'"),
     ("age", "-inf", "age '-inf'"), ("sex", "X", "sex 'X' is not one of")],
)  # fmt: skip
def test_a_bad_cell_names_the_csv_line(phantom_dir, tmp_path, column, cell, message):
    def edit(i, row):
        if i == 3:
            row[column] = cell

    path, samples = _samples(phantom_dir, tmp_path, edit)
    with pytest.raises(DataSourceError, match="line 5") as err:  # header is line 1
        column_values(samples, [column], "manifest")
    assert message in str(err.value) and str(path) in str(err.value)


def test_an_absent_column_names_the_columns_that_exist(phantom_dir, tmp_path):
    _, samples = _samples(phantom_dir, tmp_path, None)
    with pytest.raises(DataSourceError, match="weight") as err:
        column_values(samples, ["age", "weight"], "the manifest")
    for column in ("age", "bmd", "bmi", "sex", "side", "t_score"):
        assert column in str(err.value)


def test_the_datamodule_carries_targets_covariates_and_masks(make_cfg, phantom_dir, tmp_path):
    import hydra

    def edit(i, row):
        if i % 5 == 0:
            row["bmd"], row["age"] = "", "NA"

    manifest = write_manifest(phantom_dir, tmp_path / "m.csv", edit)
    cfg = make_cfg(
        "train",
        ["debug=tiny", "data=manifest", f"data.root={manifest}", "data.target=bmd",
         "data.covariates=[age,sex]", "data.mask_input=provide", "data.batch_size=60"],
    )  # fmt: skip
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    targets, covariates = dm.split_values("train")
    batch = next(iter(dm.train_dataloader()))
    assert batch["target"].dtype.is_floating_point and batch["covariates"].shape[1] == 2
    assert batch["mask"].shape == batch["image"].shape[:1] + batch["image"].shape[2:]
    assert set(np.unique(batch["mask"].numpy())) <= {0, 1}
    # unknown values are NaN, never zeros, and the summary counts them per split
    assert np.isnan(targets).sum() == np.isnan(covariates[:, 0]).sum() > 0
    assert not np.isnan(covariates[:, 1]).any()
    assert "unknown values" in dm.summary() and "bmd=" in dm.summary()


def test_an_absent_covariate_column_stops_the_run(make_cfg, phantom_dir, tmp_path):
    from osteolightning.train import train

    manifest = write_manifest(phantom_dir, tmp_path / "m.csv")
    cfg = make_cfg(
        "train",
        ["debug=tiny", "data=manifest", f"data.root={manifest}", "model.covariates=[age,height]"],
    )
    with pytest.raises(DataSourceError, match="height") as err:
        train(cfg)
    assert "bmi" in str(err.value)  # the columns that exist
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
