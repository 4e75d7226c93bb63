"""Sweeps end to end: a real tiny multirun (2 backbones x 2 folds) ends with its leaderboard and
ensemble rows; the numbers are recomputed here from the jobs' files; a failed job is listed
without breaking the rest; cross-validation folds through the KneeDataModule; the published
set-ups compose as sweeps."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from hydra.utils import instantiate
from sklearn.metrics import accuracy_score, f1_score

from osteolightning.ensemble.leaderboard import build_leaderboard, write_leaderboard
from osteolightning.utils.config import CONFIG_DIR

CLASSES = ["normal", "osteopenia", "osteoporosis"]
BACKBONES = ["resnet10t", "resnet18"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "osteolightning.train", *args],
        cwd=cwd,
        env={**__import__("os").environ, "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """``osteo-train -m`` over 2 backbones x 2 folds, one short epoch each (tiny phantom)."""
    root = tmp_path_factory.mktemp("sweep")
    result = _run(
        [
            "-m",
            "debug=tiny",
            f"model/backbone={','.join(BACKBONES)}",
            "data.num_folds=2",
            "data.fold=0,1",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            "+trainer.limit_val_batches=1",
            "evaluation.n_resamples=100",
            # no paths.log_dir: the sweep dir resolves from the launch folder, as a user's does
            f"paths.cache_dir={cache_dir}",
        ],
        root,
    )
    (sweep_dir,) = (root / "logs" / "train" / "multiruns").iterdir()
    return sweep_dir, result.stdout


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _probs(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])


def _labels(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([CLASSES.index(r["label"]) for r in rows])


def _jobs(sweep_dir: Path) -> dict[tuple[str, int], Path]:
    """(backbone, fold) → job directory, from each job's overrides."""
    import yaml

    jobs = {}
    for job in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        overrides = dict(
            o.split("=", 1) for o in yaml.safe_load((job / ".hydra/overrides.yaml").read_text())
        )
        jobs[(overrides["model/backbone"], int(overrides["data.fold"]))] = job
    return jobs


def test_multirun_ends_with_its_leaderboard(sweep):
    sweep_dir, stdout = sweep
    out = sweep_dir / "leaderboard"
    board = json.loads((out / "leaderboard.json").read_text())
    names = [r["name"] for r in board["rows"]]
    expected = {
        *BACKBONES,
        *[f"ensemble:{m}(resnet10t+resnet18)" for m in ("fuzzy_rank", "mean", "majority_vote")],
    }
    assert expected <= set(names)
    jobs = _jobs(sweep_dir)
    with_val = all((job / "val_predictions.csv").is_file() for job in jobs.values())
    assert ("ensemble:weighted_mean(resnet10t+resnet18)" in names) == with_val
    assert board["unfinished"] == [] and board["sort_by"] == "test/f1_macro"
    for name in (
        "leaderboard.csv",
        "leaderboard.md",
        "leaderboard.png",
        "ensemble_fuzzy_rank_predictions.csv",
    ):
        assert (out / name).is_file(), name
    assert "| ensemble:fuzzy_rank(resnet10t+resnet18) |" in stdout  # the table on the terminal


def test_multirun_ends_with_its_comparisons_and_report(sweep):
    sweep_dir, stdout = sweep
    out = sweep_dir / "leaderboard"
    for name in ("comparisons.csv", "comparisons.md", "comparisons.json", "report.html"):
        assert (out / name).is_file(), name
    assert not (out / "critical_difference.png").exists()  # 2 folds: fewer than 5 blocks
    saved = json.loads((out / "comparisons.json").read_text())
    assert any("at least 5 (seed, fold) units" in note for note in saved["notes"])
    rows = {r["name"]: r for r in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert len(saved["pairs"]) == len(rows) * (len(rows) - 1) // 2
    (pair,) = [p for p in saved["pairs"] if {p["a"], p["b"]} == set(BACKBONES)]
    for side in ("a", "b"):  # both were tested on every image: the leaderboard's pooled values
        f1 = pair["bootstrap"]["test/f1_macro"][side]
        assert f1 == pytest.approx(rows[pair[side]]["pooled"]["test/f1_macro"])
    splits = [_read(_jobs(sweep_dir)[(pair["a"], fold)] / "splits.csv") for fold in (0, 1)]
    sizes = {
        s: np.mean([sum(r["split"] == s for r in rows) for rows in splits])
        for s in ("train", "test")
    }
    ttest = pair["ttest"]["test/f1_macro"]  # n_train, n_test: the mean over the folds
    assert ttest["n_units"] == 2 and ttest["n_test"] == round(sizes["test"])
    assert ttest["n_train"] == round(sizes["train"])
    assert pair["mcnemar"]["n_images"] == 60 and set(pair["delong"]) == set(CLASSES)
    assert "Comparisons (macro F1" in stdout and " is better than " in stdout  # the terminal
    assert "is better than" in (out / "leaderboard.md").read_text()


def test_leaderboard_numbers_match_the_jobs_files(sweep):
    sweep_dir, _ = sweep
    rows = {
        r["name"]: r
        for r in json.loads((sweep_dir / "leaderboard" / "leaderboard.json").read_text())["rows"]
    }
    jobs = _jobs(sweep_dir)
    all_paths = set()
    for backbone in BACKBONES:
        row = rows[backbone]
        preds = [_read(jobs[(backbone, fold)] / "predictions.csv") for fold in (0, 1)]
        folds = [{r["path"] for r in p} for p in preds]
        assert not folds[0] & folds[1]  # out-of-fold: each image tested once
        all_paths |= folds[0] | folds[1]
        y = np.concatenate([_labels(p) for p in preds])
        pred = np.concatenate([_probs(p).argmax(1) for p in preds])
        assert row["pooled"]["test/acc"] == pytest.approx(accuracy_score(y, pred))
        assert row["pooled"]["test/f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert row["pooled_rows"] == row["pooled_images"] == len(y)
        f1s = [
            json.loads((jobs[(backbone, f)] / "metrics.json").read_text())["test/f1_macro"]
            for f in (0, 1)
        ]
        assert row["mean"]["test/f1_macro"]["mean"] == pytest.approx(np.mean(f1s))
        assert row["mean"]["test/f1_macro"]["std"] == pytest.approx(np.std(f1s, ddof=1))
        assert row["folds"] == [0, 1] and row["n_finished"] == 2
        for key in ("test/acc", "test/f1_macro", "test/balanced_acc"):
            low, high = row["pooled_ci95"][key]
            assert low <= row["pooled"][key] <= high
    assert len(all_paths) == 60  # the two folds cover the tiny phantom
    # the fuzzy rank ensemble, from the formula, per fold, pooled
    hits = []
    for fold in (0, 1):
        a, b = (_read(jobs[(bb, fold)] / "predictions.csv") for bb in BACKBONES)
        order = {r["path"]: i for i, r in enumerate(b)}
        pb = _probs(b)[[order[r["path"]] for r in a]]

        def score(p):
            return (1 - np.exp(-((p - 1) ** 2) / 2)) * (1 - np.tanh((p - 1) ** 2 / 2))

        fused = score(_probs(a)) + score(pb)
        hits.append(fused.argmin(1) == _labels(a))
    fuzzy = rows["ensemble:fuzzy_rank(resnet10t+resnet18)"]
    assert fuzzy["pooled"]["test/acc"] == pytest.approx(np.concatenate(hits).mean())
    assert fuzzy["mean"]["test/acc"]["mean"] == pytest.approx(np.mean([h.mean() for h in hits]))
    low, high = fuzzy["pooled_ci95"]["test/acc"]
    assert low <= fuzzy["pooled"]["test/acc"] <= high


def test_a_failed_job_is_listed_and_the_others_stay(sweep, tmp_path):
    sweep_dir, _ = sweep
    copy = tmp_path / sweep_dir.name
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("leaderboard*", "checkpoints"))
    failed = _jobs(copy)[("resnet18", 1)]
    (failed / "metrics.json").unlink()
    (failed / "error.json").write_text(
        json.dumps({"error": "boom", "type": "builtins.RuntimeError", "traceback": "Traceback ..."})
    )
    board = build_leaderboard(copy, n_resamples=50)
    assert [(j.path, j.status, j.error) for j in board.unfinished] == [
        (failed, "failed", "RuntimeError: boom")
    ]
    rows = {r["name"]: r for r in board.rows}
    assert rows["resnet10t"]["n_finished"] == 2
    assert (rows["resnet18"]["n_finished"], rows["resnet18"]["n_failed"]) == (1, 1)
    assert rows["resnet18"]["folds"] == [0]
    assert rows["ensemble:fuzzy_rank(resnet10t+resnet18)"]["folds"] == [0]
    text = write_leaderboard(board)["md"].read_text()
    assert "| failed |" in text and "RuntimeError: boom" in text


@pytest.mark.parametrize("num_folds", [2, 3])
def test_folds_through_the_datamodule_are_disjoint_covering_stratified_and_grouped(
    make_cfg, phantom_dir, tmp_path, num_folds
):
    """A manifest with two knees per patient and byte-identical copies under other names."""
    rows = _read(phantom_dir / "manifest.csv")
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    lines = ["image,label,patient_id"]
    for i, row in enumerate(rows):
        name = f"images/{Path(row['image']).name}"
        shutil.copy(phantom_dir / row["image"], root / name)
        lines.append(f"{name},{row['label']},patient{i // 2}")
    for i in range(0, 12, 3):  # copies of images 0, 3, 6, 9 under new names and new patients
        copy = f"images/copy_{i}.png"
        shutil.copy(phantom_dir / rows[i]["image"], root / copy)
        lines.append(f"{copy},{rows[i]['label']},other{i}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    tests = []
    for fold in range(num_folds):
        cfg = make_cfg(
            "train",
            [
                "debug=tiny",
                "data=manifest",
                f"data.root={root / 'manifest.csv'}",
                f"data.num_folds={num_folds}",
                f"data.fold={fold}",
                "data.near_duplicate_distance=null",
            ],
            run=f"fold{fold}",
        )
        dm = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup()
        split = dm.split_rows()  # split, path, label, patient, group, sha1
        for column in (3, 5):  # a patient, an image's copies: never in two splits
            owners: dict[str, set[str]] = {}
            for r in split:
                owners.setdefault(r[column], set()).add(r[0])
            assert all(len(s) == 1 for s in owners.values())
        tests.append({r[1]: r[2] for r in split if r[0] == "test"})
    paths = [p for t in tests for p in t]
    assert len(paths) == len(set(paths)) == len(rows) + 4  # disjoint and covering
    overall = np.bincount([CLASSES.index(r["label"]) for r in rows], minlength=3) / len(rows)
    for test in tests:
        share = np.bincount([CLASSES.index(v) for v in test.values()], minlength=3) / len(test)
        assert np.abs(share - overall).max() < 0.12  # stratified


def _hydra_compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("name", "params", "single"),
    [
        (
            "kumar2023",
            {"model/backbone": "inception_v3,xception,resnet18", "data.fold": "0,1,2,3,4"},
            "resnet18",
        ),
        (
            "kumar2023_tiny",
            {"model/backbone": "inception_v3,xception,resnet18", "data.fold": "0,1,2,3,4"},
            "resnet18",
        ),
        (
            "wani_arora2023",
            {"model/backbone": "alexnet,vgg16,vgg19,resnet18", "seed": "0,1,2"},
            "alexnet",
        ),
        ("wani_arora2023_tiny", {"model/backbone": "alexnet,resnet18", "seed": "0,1"}, "alexnet"),
    ],
)
def test_published_setups_compose_as_sweeps(name, params, single):
    cfg = _hydra_compose([f"experiment={name}"])
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert dict(cfg.hydra.sweeper.params) == params
    assert cfg.model.net.name == single  # a single run (hydra.mode=RUN) trains one of them
    assert cfg.hydra.callbacks.leaderboard.enabled
    # the smoke-test study keeps its best 3 jobs' weights; the full studies keep every job's
    assert cfg.hydra.callbacks.checkpoints.keep_best_k == (3 if name == "kumar2023_tiny" else None)
    kumar = name.startswith("kumar")
    assert cfg.data.num_folds == (5 if kumar else None)
    if name.endswith("_tiny"):
        assert cfg.image_size == 96 and cfg.data.source.n == 60 and cfg.trainer.accelerator == "cpu"
    # every swept backbone composes, and Inception v3 keeps its 299 px in the full set-up
    for backbone in params["model/backbone"].split(","):
        job = _hydra_compose([f"experiment={name}", f"model/backbone={backbone}"])
        expected = (
            299
            if (backbone == "inception_v3" and name == "kumar2023")
            else (96 if name.endswith("_tiny") else job.image_size)
        )
        assert job.image_size == expected
    on_folder = _hydra_compose([f"experiment={name}", "data=folder", "data.root=/data/knees"])
    assert on_folder.data.source._target_.endswith("FolderSource")
    assert on_folder.data.num_folds == cfg.data.num_folds


@pytest.mark.slow
def test_kumar_tiny_ends_with_comparisons_a_critical_difference_and_a_report(tmp_path, cache_dir):
    """``osteo-train experiment=kumar2023_tiny`` alone: 15 jobs, 5 folds, 7 rows."""
    _run(
        [
            "experiment=kumar2023_tiny",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.cache_dir={cache_dir}",
            "evaluation.n_resamples=100",
        ],
        tmp_path,
    )
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    out = sweep_dir / "leaderboard"
    for name in ("comparisons.md", "critical_difference.png", "report.html"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    cd = json.loads((out / "comparisons.json").read_text())["critical_difference"]
    assert cd["n_blocks"] == 5 and cd["n_methods"] == len(rows) >= 6
    assert "data:image/png;base64," in (out / "report.html").read_text()
    disk = json.loads((sweep_dir / "disk.json").read_text())
    assert len(disk["kept"]) == 3 and len(disk["removed"]) == 12
    assert disk["after"]["checkpoints"] == 3 and disk["after"]["resumable_checkpoints"] == 0
    assert disk["after"]["bytes"] < 0.5 * 2**30


@pytest.mark.slow
def test_wani_arora_tiny_runs_the_whole_sweep(tmp_path, cache_dir):
    """``osteo-train experiment=wani_arora2023_tiny`` alone: 4 jobs, leaderboard, ensembles."""
    _run(
        [
            "experiment=wani_arora2023_tiny",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.cache_dir={cache_dir}",
            "evaluation.n_resamples=50",
        ],
        tmp_path,
    )
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    board = json.loads((sweep_dir / "leaderboard" / "leaderboard.json").read_text())
    names = {r["name"] for r in board["rows"]}
    assert {"alexnet", "resnet18", "ensemble:fuzzy_rank(alexnet+resnet18)"} <= names
    assert {r["seeds"] == [0, 1] for r in board["rows"]} == {True}
