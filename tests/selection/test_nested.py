"""Nested cross-validation, the permutation test and the learning curve."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from osteolightning.data.splits import (
    EXCLUDED,
    TEST,
    TRAIN,
    assign_nested_splits,
    assign_splits,
    permute_group_labels,
    subsample_training,
)
from osteolightning.errors import ConfigError
from osteolightning.models.components.features import FeatureHead, NoImageEmbedder
from osteolightning.models.fitted import FittedHeadClassifier
from osteolightning.selection.nested import NestedPlan
from osteolightning.selection.null import Fold, learning_curve, permutation_test
from tests.helpers import run_osteo


def _data(n: int = 90, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    groups = np.arange(n) // 2  # pairs of copies / knees
    labels = labels[groups * 2]  # a group holds one label
    return labels, groups, rng


def test_inner_runs_never_see_their_outer_test_fold():
    labels, groups, _ = _data()
    outer = assign_splits(labels, groups, num_folds=3, fold=1, seed=5)
    for j in range(3):
        codes = assign_nested_splits(labels, groups, 3, 1, 3, j, seed=5)
        assert np.array_equal(codes == EXCLUDED, outer == TEST)  # the same outer fold
        assert set(np.unique(codes)) == {0, 1, 2, EXCLUDED}
    tests = [assign_nested_splits(labels, groups, 3, 1, 3, j, seed=5) == TEST for j in range(3)]
    assert np.array_equal(np.sum(tests, axis=0), (outer != TEST).astype(int))  # a partition
    with pytest.raises(ConfigError, match="inner_fold"):
        assign_nested_splits(labels, groups, 3, 1, 3, 3)


def test_a_learning_curve_keeps_whole_groups_of_each_class():
    labels, groups, _ = _data()
    codes = assign_splits(labels, groups, num_folds=3, fold=0)
    half = subsample_training(codes, labels, groups, 0.5, seed=1)
    kept = (half == TRAIN).sum() / (codes == TRAIN).sum()
    assert 0.35 < kept < 0.65 and np.array_equal(half[codes != TRAIN], codes[codes != TRAIN])
    for g in np.unique(groups):  # a group is kept or dropped whole
        assert len(set(half[groups == g]) - {TEST, 1}) <= 1


def test_permuted_labels_keep_groups_and_counts():
    labels, groups, _ = _data()
    shuffled = permute_group_labels(labels, groups, seed=3)
    assert np.array_equal(np.bincount(shuffled), np.bincount(labels))
    assert not np.array_equal(shuffled, labels)
    for g in np.unique(groups):
        assert len(set(shuffled[groups == g])) == 1


def _folds(labels, groups, features, k: int = 3) -> list[Fold]:
    # a real fitted-head model over given features (an embedder of that width)
    net = FeatureHead(NoImageEmbedder(), 3, dim=features.shape[1])
    model = FittedHeadClassifier(net, ["a", "b", "c"], C=0.3, Cs=[0.3], inner_folds=3)
    return [
        Fold(
            paths=[f"img{i}" for i in range(len(labels))],
            features=features,
            labels=labels,
            groups=groups,
            codes=assign_splits(labels, groups, num_folds=k, fold=f),
            model=model,
        )
        for f in range(k)
    ]


def test_the_permutation_test_finds_a_planted_signal_and_no_other():
    labels, groups, rng = _data(120)
    features = rng.normal(size=(len(labels), 6))
    signal = features.copy()
    signal[:, 0] += 1.5 * labels  # the images carry their class
    found = permutation_test(_folds(labels, groups, signal), n_permutations=39)
    assert found["p_value"] == pytest.approx(1 / 40) and found["observed"] > 0.7
    nothing = permutation_test(_folds(labels, groups, features), n_permutations=39)
    assert nothing["p_value"] > 0.1 and 0.3 < nothing["observed"] < 0.7
    curve = learning_curve(_folds(labels, groups, signal), (0.3, 1.0), repeats=2, n_resamples=50)
    assert [p["fraction"] for p in curve] == [0.3, 1.0]
    assert curve[0]["n_train"] < curve[1]["n_train"]
    low, high = curve[1]["test/auroc_macro_ci95"]
    assert low <= curve[1]["test/auroc_macro"] <= high


def test_a_plan_lists_every_recipe_on_every_inner_fold():
    plan = NestedPlan({"a": ["model=texture"], "b": ["model=linear_probe"]}, 3, 2)
    jobs = plan.inner_jobs()
    assert len(jobs) == 3 * 2 * 2
    assert jobs[0].overrides[-4:] == (
        "data.num_folds=3",
        "data.fold=0",
        "data.inner_folds=2",
        "data.inner_fold=0",
    )
    assert plan.outer_job(2, "b").overrides == (
        "model=linear_probe",
        "data.num_folds=3",
        "data.fold=2",
    )
    with pytest.raises(ConfigError, match="outer_folds"):
        NestedPlan({"a": []}, 1, 2)


def _split_rows(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "splits.csv", newline="") as handle:
        return {row["path"]: row["split"] for row in csv.DictReader(handle)}


def test_knee_select_runs_end_to_end(tmp_path, cache_dir, phantom_dir):
    """Two recipes, 2 outer × 2 inner folds of the tiny phantom: the selection report, every
    recipe's row, no outer test image in any inner run of its fold (from the runs' own
    splits.csv); then killed and resumed."""
    args = [
        "experiment=knee_select_tiny",
        "hydra.sweeper.recipes=[{name:texture,overrides:['model=texture','model.C=0.1']},"
        "{name:strong,overrides:['model=texture','model.C=0.001']}]",
        "hydra.sweeper.permutations=9",
        "hydra.sweeper.learning_curve=[0.5,1.0]",
        "hydra.sweeper.every_recipe=true",
        "hydra.sweeper.recipe_permutations=4",
    ]
    done = run_osteo("train", args, tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    result = json.loads((sweep / "selection" / "selection.json").read_text())
    assert set(result["chosen"]) == {"0", "1"}
    assert set(result["chosen"].values()) <= {"texture", "strong"}
    assert result["pooled"]["test/n"] == 60  # every image tested once, by its outer fold
    assert 0 < result["permutation"]["p_value"] <= 1 and len(result["learning_curve"]) == 2
    report = (sweep / "selection" / "selection.md").read_text()
    assert "Nested CV" in report and "Every recipe on every outer fold" in report
    for name in ("texture", "strong"):
        row = result["every_recipe"][name]
        assert row["pooled"]["test/n"] == 60
        assert row["permutation"]["n_permutations"] == 4
        assert f"| {name} | " in report
        # the same outer folds as the nested estimate: run k tests outer fold k's images
        for k, run in enumerate(row["runs"]):
            chosen_run = Path(result["outer_runs"][str(k)])
            tested = {p for p, s in _split_rows(Path(run)).items() if s == "test"}
            assert tested == {p for p, s in _split_rows(chosen_run).items() if s == "test"}
    for k in ("0", "1"):
        outer = _split_rows(Path(result["outer_runs"][k]))
        held_out = {p for p, s in outer.items() if s == "test"}
        inner_runs = [
            d
            for d in sweep.iterdir()
            if (d / ".hydra" / "overrides.yaml").is_file()
            and f"data.fold={k}" in (d / ".hydra" / "overrides.yaml").read_text()
            and "data.inner_fold=" in (d / ".hydra" / "overrides.yaml").read_text()
        ]
        assert len(inner_runs) == 4  # 2 recipes x 2 inner folds
        for run in inner_runs:
            rows = _split_rows(run)
            assert all(rows[p] == "excluded" for p in held_out)
            assert not held_out & {p for p, s in rows.items() if s != "excluded"}

    # Killed: one inner job never finished and the report was not written. resume=auto continues
    # the same multirun, reruns that job only and writes the same report.
    inner_job = sweep / "1"
    for path in inner_job.iterdir():
        if path.name != ".hydra":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(sweep / "selection")
    # and outer job 8's folder holds a run of another recipe (its inner choice had differed)
    saved = sweep / "8" / ".hydra" / "overrides.yaml"
    saved.write_text(saved.read_text().replace("model=texture", "model=linear_probe"))
    again = run_osteo("train", [*args, "resume=auto"], tmp_path, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "continuing the nested cross-validation in" in output
    assert output.count("skip, finished") == 10 and output.count(": run, ") == 2  # of 8 + 4
    assert "Job 8 (outer" in output and "holds a run of other overrides" in output
    assert (sweep / ".attempts" / "8.1" / "metrics.json").is_file()
    assert [d.name for d in (tmp_path / "logs" / "train" / "multiruns").iterdir()] == [sweep.name]
    resumed = json.loads((sweep / "selection" / "selection.json").read_text())
    assert resumed["chosen"] == result["chosen"]
    assert resumed["pooled"] == result["pooled"]
    assert resumed["every_recipe"]["strong"]["pooled"] == result["every_recipe"]["strong"]["pooled"]

    # The finished sweep's command again: no job runs, the report is not rebuilt (its files are
    # untouched) but shown; without resume=auto, the sweep is refused once, before any job.
    report_files = sorted((sweep / "selection").iterdir())
    stamps = [f.stat().st_mtime_ns for f in report_files]
    done_again = run_osteo("train", [*args, "resume=auto"], tmp_path, cache_dir)
    assert done_again.returncode == 0, done_again.stderr[-3000:]
    output = done_again.stdout + done_again.stderr
    assert output.count("skip, finished") == 12 and ": run, " not in output
    assert "is complete and its report" in output and "not rebuilt" in output
    assert "Nested CV: 2 outer" in done_again.stdout
    assert sorted((sweep / "selection").iterdir()) == report_files
    assert [f.stat().st_mtime_ns for f in report_files] == stamps
    refused = run_osteo("train", [*args, f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert refused.returncode == 1
    assert "already holds results of 8 of this sweep's jobs" in refused.stderr
    assert "resume=auto" in refused.stderr and "Traceback" not in refused.stderr
    assert [f.stat().st_mtime_ns for f in report_files] == stamps


def test_a_sweep_can_leave_recipes_out_by_name():
    from hydra_plugins.osteo_selection.nested_cv import NestedCVSweeper

    recipes = [
        {"name": "probe", "overrides": ["model=linear_probe"]},
        {"name": "finetune", "overrides": ["model=classifier"]},
    ]
    sweeper = NestedCVSweeper(recipes, exclude=["finetune"])
    assert list(sweeper.plan.recipes) == ["probe"]
    with pytest.raises(
        ConfigError, match=r"\['fine_tune'\].*its recipes are \['finetune', 'probe'\]"
    ):
        NestedCVSweeper(recipes, exclude=["fine_tune"])
