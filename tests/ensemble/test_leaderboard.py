"""The leaderboard of a sweep, on multirun directories written by hand (fast; the real multirun
is in tests/test_sweep.py): statistics recomputed here from the files, ensembles from the
formulas, failed / incomplete jobs, outputs and their safety, the CLI and the Hydra callback."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from sklearn.metrics import accuracy_score, f1_score

from osteolightning.ensemble.cli import leaderboard as leaderboard_cli
from osteolightning.ensemble.leaderboard import (
    LeaderboardCallback,
    build_leaderboard,
    configuration_key,
    find_jobs,
    write_leaderboard,
)
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.runs.rundir import LEADERBOARD_MARKER as MARKER

CLASSES = ["normal", "osteopenia", "osteoporosis"]
N_IMAGES = 24  # 8 per class, 2 folds of 12


def _images():
    labels = np.repeat(np.arange(3), N_IMAGES // 3)
    paths = [f"/data/knee_{i:03d}.png" for i in range(N_IMAGES)]
    folds = np.tile([0, 1], N_IMAGES // 2)  # stratified: 4 per class per fold
    return paths, labels, folds


def _write_predictions(path: Path, paths, labels, probs, class_names=CLASSES):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", *[f"prob_{c}" for c in class_names], "prediction"])
        for p, y, row in zip(paths, labels, probs, strict=True):
            writer.writerow(
                [p, class_names[y], *[f"{v:.6f}" for v in row], class_names[int(np.argmax(row))]]
            )


def _job(
    root: Path,
    num: int,
    overrides: list[str],
    seed: int,
    fold: int | None,
    probs=None,
    labels=None,
    paths=None,
    metrics=None,
    val=None,
) -> Path:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    data = {"num_folds": 2 if fold is not None else None, "fold": fold or 0}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "data": data}))
    if probs is not None:
        _write_predictions(job / "predictions.csv", paths, labels, probs)
        if val is not None:
            _write_predictions(job / "val_predictions.csv", *val)
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def _probs(rng, labels, skill):
    """Probabilities that put ``skill`` extra mass on the true class, rows summing to 1."""
    raw = rng.dirichlet(np.ones(3), size=len(labels))
    raw[np.arange(len(labels)), labels] += skill
    raw = raw / raw.sum(axis=1, keepdims=True)
    return np.round(raw, 6) / np.round(raw, 6).sum(axis=1, keepdims=True)


def make_sweep(root: Path, seeds=(0, 1), backbones=("alexnet", "resnet18"), val=True):
    """A multirun: backbones x seeds x 2 folds, metrics.json from the predictions."""
    paths, labels, folds = _images()
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    truth, num = {}, 0
    for b, backbone in enumerate(backbones):
        for seed in seeds:
            for fold in (0, 1):
                sel = np.flatnonzero(folds == fold)
                probs = _probs(rng, labels[sel], skill=0.3 + 0.4 * b)
                val_sel = np.flatnonzero(folds != fold)[:9]
                val_files = (
                    (
                        [paths[i] for i in val_sel],
                        labels[val_sel],
                        _probs(rng, labels[val_sel], 0.5),
                    )
                    if val
                    else None
                )
                metrics = {
                    "test/n": len(sel),
                    "test/acc": float(accuracy_score(labels[sel], probs.argmax(1))),
                    "test/f1_macro": float(f1_score(labels[sel], probs.argmax(1), average="macro")),
                    "test/loss": float(rng.uniform(0.5, 1.0)),
                    "test/acc_ci95": [0.0, 1.0],
                    "test/confusion_matrix": [[1]],
                    "val/f1_macro_best": 0.5,
                }
                overrides = [
                    f"model/backbone={backbone}",
                    f"seed={seed}",
                    f"data.fold={fold}",
                    "data.num_folds=2",
                    "paths.log_dir=/tmp/x",
                ]
                _job(
                    root,
                    num,
                    overrides,
                    seed,
                    fold,
                    probs,
                    labels[sel],
                    [paths[i] for i in sel],
                    metrics,
                    val_files,
                )
                truth[(backbone, seed, fold)] = (sel, probs, metrics)
                num += 1
    return truth, paths, labels


def _rank_score(p):
    return (1 - np.exp(-((p - 1) ** 2) / 2)) * (1 - np.tanh((p - 1) ** 2 / 2))


def _row(board, name):
    (row,) = [r for r in board.rows if r["name"] == name]
    return row


def test_configuration_key_drops_seed_fold_and_bookkeeping():
    key = configuration_key(
        [
            "seed=3",
            "+data.fold=1",
            "model/backbone=vgg16",
            "hydra.job.chdir=false",
            "paths.log_dir=/x",
            "data.num_folds=5",
            "hydra/launcher=slurm",
        ]
    )
    assert key == ("data.num_folds=5", "model/backbone=vgg16")


def test_rows_match_statistics_computed_from_the_files(tmp_path):
    truth, paths, labels = make_sweep(tmp_path / "sweep")
    board = build_leaderboard(tmp_path / "sweep", n_resamples=300)
    names = [r["name"] for r in board.rows]
    assert set(names) >= {
        "alexnet",
        "resnet18",
        "ensemble:fuzzy_rank(alexnet+resnet18)",
        "ensemble:mean(alexnet+resnet18)",
        "ensemble:majority_vote(alexnet+resnet18)",
        "ensemble:weighted_mean(alexnet+resnet18)",
    }
    for backbone in ("alexnet", "resnet18"):
        row = _row(board, backbone)
        jobs = [v for k, v in truth.items() if k[0] == backbone]
        assert row["n_jobs"] == row["n_finished"] == 4 and row["seeds"] == [0, 1]
        assert (
            row["folds"] == [0, 1]
            and row["overrides"] == "data.num_folds=2 model/backbone=" + backbone
        )
        for key in ("test/acc", "test/f1_macro", "test/loss"):
            values = [m[key] for _, _, m in jobs]
            assert row["mean"][key]["mean"] == pytest.approx(np.mean(values))
            assert row["mean"][key]["std"] == pytest.approx(np.std(values, ddof=1))
            assert row["mean"][key]["n"] == 4
        assert "test/n" not in row["mean"] and "test/acc_ci95" not in row["mean"]
        # pooled: every test prediction of every fold and seed (probabilities as written: 6 digits)
        y = np.concatenate([labels[sel] for sel, _, _ in jobs])
        p = np.concatenate([np.round(probs, 6) for _, probs, _ in jobs])
        assert row["pooled"]["test/acc"] == pytest.approx(accuracy_score(y, p.argmax(1)))
        assert row["pooled"]["test/f1_macro"] == pytest.approx(
            f1_score(y, p.argmax(1), average="macro")
        )
        assert row["pooled_rows"] == 2 * N_IMAGES and row["pooled_images"] == N_IMAGES
        for key, value in row["pooled"].items():
            low, high = row["pooled_ci95"][key]
            assert low <= value <= high, key


def test_weighted_mean_row_records_the_weights_that_produced_it(tmp_path):
    truth, paths, labels = make_sweep(tmp_path / "sweep")
    board = build_leaderboard(tmp_path / "sweep", methods=["weighted_mean"], n_resamples=100)
    row = _row(board, "ensemble:weighted_mean(alexnet+resnet18)")
    units = {(u["seed"], u["fold"]): u["weights"] for u in row["weights"]}
    assert set(units) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    y, preds = [], []
    for (seed, fold), weights in units.items():
        assert set(weights) == {"alexnet", "resnet18"}
        assert sum(weights.values()) == pytest.approx(1, abs=1e-3)
        assert min(weights.values()) >= 0
        sel, pa, _ = truth[("alexnet", seed, fold)]
        _, pb, _ = truth[("resnet18", seed, fold)]
        fused = weights["alexnet"] * np.round(pa, 6) + weights["resnet18"] * np.round(pb, 6)
        y.append(labels[sel])
        preds.append(fused.argmax(axis=1))
    # the recorded (rounded) weights reproduce the row's pooled accuracy
    acc = accuracy_score(np.concatenate(y), np.concatenate(preds))
    assert row["pooled"]["test/acc"] == pytest.approx(acc)


def test_fuzzy_ensemble_row_from_the_formula(tmp_path):
    truth, paths, labels = make_sweep(tmp_path / "sweep")
    board = build_leaderboard(tmp_path / "sweep", methods=["fuzzy_rank"], n_resamples=100)
    row = _row(board, "ensemble:fuzzy_rank(alexnet+resnet18)")
    correct, per_unit = 0, []
    for seed in (0, 1):
        for fold in (0, 1):
            sel, pa, _ = truth[("alexnet", seed, fold)]
            _, pb, _ = truth[("resnet18", seed, fold)]
            fused = _rank_score(np.round(pa, 6)) + _rank_score(np.round(pb, 6))
            hits = fused.argmin(axis=1) == labels[sel]
            correct += hits.sum()
            per_unit.append(hits.mean())
    assert row["pooled"]["test/acc"] == pytest.approx(correct / (4 * len(sel)))
    assert row["mean"]["test/acc"]["mean"] == pytest.approx(np.mean(per_unit))
    assert row["mean"]["test/acc"]["std"] == pytest.approx(np.std(per_unit, ddof=1))
    assert row["members"] == ["alexnet", "resnet18"] and row["seeds"] == [0, 1]
    assert [r["name"] for r in board.rows if r["kind"] == "ensemble"] == [row["name"]]


def test_failed_and_incomplete_jobs_are_listed_and_do_not_stop_it(tmp_path):
    make_sweep(tmp_path / "sweep")
    failed = tmp_path / "sweep" / "2"
    (failed / "metrics.json").unlink()
    (failed / "error.json").write_text(
        json.dumps(
            {
                "error": "CUDA out of memory\nmore",
                "type": "torch.OutOfMemoryError",
                "traceback": "...",
            }
        )
    )
    (tmp_path / "sweep" / "5" / "metrics.json").unlink()  # killed
    board = build_leaderboard(tmp_path / "sweep", n_resamples=50)
    assert [(j.name, j.status) for j in board.unfinished] == [("2", "failed"), ("5", "incomplete")]
    assert board.unfinished[0].error == "OutOfMemoryError: CUDA out of memory"
    alexnet, resnet = _row(board, "alexnet"), _row(board, "resnet18")
    assert (alexnet["n_jobs"], alexnet["n_finished"], alexnet["n_failed"]) == (4, 3, 1)
    assert (resnet["n_finished"], resnet["n_incomplete"]) == (3, 1)
    fuzzy = _row(board, "ensemble:fuzzy_rank(alexnet+resnet18)")
    assert fuzzy["mean"]["test/acc"]["n"] == 2  # (seed 0, fold 0) and (seed 1, fold 1) remain
    assert any("leave out" in note for note in board.notes)
    files = write_leaderboard(board)
    text = files["md"].read_text()
    assert "| 2 | failed |" in text and "OutOfMemoryError" in text and "| 5 | incomplete |" in text
    saved = json.loads(files["json"].read_text())
    assert [j["status"] for j in saved["unfinished"]] == ["failed", "incomplete"]


def test_outputs_and_their_folder_safety(tmp_path):
    make_sweep(tmp_path / "sweep", val=False)
    board = build_leaderboard(tmp_path / "sweep", n_resamples=50, sort_by="acc")
    assert board.sort_by == "test/acc"
    means = [r["mean"]["test/acc"]["mean"] for r in board.rows]
    assert means == sorted(means, reverse=True) and [r["rank"] for r in board.rows] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert not any("weighted_mean" in r["name"] for r in board.rows)  # no val_predictions.csv
    files = write_leaderboard(board)
    out = tmp_path / "sweep" / "leaderboard"
    assert {p.name for p in out.iterdir()} == {
        "leaderboard.csv",
        "leaderboard.md",
        "leaderboard.json",
        "leaderboard.png",
        MARKER,
        "ensemble_fuzzy_rank_predictions.csv",
        "ensemble_mean_predictions.csv",
        "ensemble_majority_vote_predictions.csv",
    }
    with open(files["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == [r["name"] for r in board.rows]
    first = board.rows[0]
    assert float(rows[0]["test/acc_mean"]) == first["mean"]["test/acc"]["mean"]
    assert float(rows[0]["test/acc_pooled_ci95_low"]) == first["pooled_ci95"]["test/acc"][0]
    with open(files["ensemble_fuzzy_rank"], newline="") as handle:
        fused = list(csv.DictReader(handle))
    assert len(fused) == 2 * N_IMAGES and set(fused[0]) >= {"seed", "fold", "path", "prob_normal"}
    assert files["png"].read_bytes()[:4] == b"\x89PNG"
    # rebuilding with fewer methods rewrites its own folder and removes what is gone
    again = write_leaderboard(build_leaderboard(tmp_path / "sweep", methods=[], n_resamples=50))
    assert again["csv"].parent == out and not (out / "ensemble_mean_predictions.csv").exists()
    # a folder the leaderboard did not make is kept: the default goes next to it, `out` refuses
    foreign = tmp_path / "other"
    make_sweep(foreign)
    (foreign / "leaderboard").mkdir()
    (foreign / "leaderboard" / "notes.txt").write_text("mine")
    board2 = build_leaderboard(foreign, methods=[], n_resamples=50)
    assert write_leaderboard(board2)["csv"].parent == foreign / "leaderboard_1"
    assert (foreign / "leaderboard" / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="refusing to write"):
        write_leaderboard(board2, out=foreign / "leaderboard")
    with pytest.raises(ConfigError, match="other sources"):
        write_leaderboard(board2, out=out)  # the first sweep's leaderboard


def test_members_methods_and_bad_arguments(tmp_path):
    make_sweep(tmp_path / "sweep", backbones=("alexnet", "resnet18", "vgg16"))
    board = build_leaderboard(
        tmp_path / "sweep",
        methods=["mean"],
        members=["alexnet", "model/backbone=vgg16"],
        n_resamples=50,
    )
    assert [r["name"] for r in board.rows if r["kind"] == "ensemble"] == [
        "ensemble:mean(alexnet+vgg16)"
    ]
    with pytest.raises(ConfigError, match="'densenet121' matches 0"):
        build_leaderboard(tmp_path / "sweep", members=["alexnet", "densenet121"])
    with pytest.raises(ConfigError, match="at least two"):
        build_leaderboard(tmp_path / "sweep", members=["alexnet"])
    with pytest.raises(ConfigError, match="Did you mean `majority_vote`"):
        build_leaderboard(tmp_path / "sweep", methods=["majority"])
    with pytest.raises(ConfigError, match=r"`sort_by`.*'dice' \(test/dice\)"):
        build_leaderboard(tmp_path / "sweep", methods=[], sort_by="dice")
    with pytest.raises(DataSourceError, match="neither a multirun"):
        find_jobs(tmp_path / "sweep" / "0" / ".hydra")
    with pytest.raises(DataSourceError, match="not a directory"):
        find_jobs(tmp_path / "nowhere")


def test_members_tested_on_different_images_are_an_error(tmp_path):
    make_sweep(tmp_path / "sweep")
    pred = tmp_path / "sweep" / "0" / "predictions.csv"
    pred.write_text(pred.read_text().replace("knee_000", "knee_999"))
    with pytest.raises(DataSourceError, match="test sets differ.*knee_999"):
        build_leaderboard(tmp_path / "sweep", n_resamples=50)
    board = build_leaderboard(tmp_path / "sweep", methods=[], n_resamples=50)
    assert all(r["kind"] == "configuration" for r in board.rows)


def test_runs_without_probabilities_get_mean_and_std_only(tmp_path):
    """Segmentation runs: metrics.json with dice, per-image predictions without prob_ columns."""
    root = tmp_path / "seg"
    root.mkdir()
    (root / "multirun.yaml").write_text("{}\n")
    dice = {"unet": [0.8, 0.9], "attention_unet": [0.85, 0.95]}
    num = 0
    for net, values in dice.items():
        for seed, value in enumerate(values):
            job = _job(
                root,
                num,
                [f"model/net={net}", f"seed={seed}"],
                seed,
                None,
                metrics={"test/dice": value, "test/dice_femur": value - 0.1, "test/n": 5},
            )
            (job / "predictions.csv").write_text("path,dice\n/a.png,0.9\n")
            num += 1
    board = build_leaderboard(root, n_resamples=50)
    assert board.sort_by == "test/dice" and [r["name"] for r in board.rows] == [
        "attention_unet",
        "unet",
    ]
    assert _row(board, "unet")["mean"]["test/dice"]["mean"] == pytest.approx(0.85)
    assert all(not r["pooled"] for r in board.rows) and board.class_names is None
    files = write_leaderboard(board)
    assert (
        "dice (mean ± std)" in files["md"].read_text()
        and "pooled" not in files["md"].read_text().split("\n")[2]
    )


def test_lower_is_better_metrics_sort_ascending(tmp_path):
    make_sweep(tmp_path / "sweep")
    board = build_leaderboard(tmp_path / "sweep", methods=[], sort_by="test/loss", n_resamples=50)
    losses = [r["mean"]["test/loss"]["mean"] for r in board.rows]
    assert losses == sorted(losses)


def test_list_of_run_directories(tmp_path):
    make_sweep(tmp_path / "sweep")
    runs = [tmp_path / "sweep" / str(i) for i in range(8)]
    board = build_leaderboard(runs, methods=["fuzzy_rank"], n_resamples=50)
    assert {r["name"] for r in board.rows} == {
        "alexnet",
        "resnet18",
        "ensemble:fuzzy_rank(alexnet+resnet18)",
    }
    with pytest.raises(ConfigError, match="pass `out`"):
        write_leaderboard(board)
    assert write_leaderboard(board, out=tmp_path / "lb")["md"].is_file()


def test_cli_sweep_mode(make_cfg, tmp_path):
    make_sweep(tmp_path / "sweep")
    cfg = make_cfg(
        "ensemble",
        [
            f"sweep={tmp_path / 'sweep'}",
            "methods=[fuzzy_rank,majority_vote]",
            "sort_by=test/acc",
            "evaluation.n_resamples=50",
        ],
        run="ens",
    )
    result = leaderboard_cli(cfg)
    assert result["sort_by"] == "test/acc"
    assert {r["method"] for r in result["rows"]} == {None, "fuzzy_rank", "majority_vote"}
    assert Path(result["files"]["csv"]).parent == tmp_path / "sweep" / "leaderboard"
    with pytest.raises(ConfigError, match="not both"):
        leaderboard_cli(make_cfg("ensemble", [f"sweep={tmp_path / 'sweep'}", "runs=[a]"], run="b"))


def test_callback_writes_the_leaderboard_and_never_raises(tmp_path, caplog):
    make_sweep(tmp_path / "sweep")
    config = OmegaConf.create(
        {
            "task_name": "train",
            "evaluation": {"n_resamples": 50, "seed": 0},
            "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}},
        }
    )
    LeaderboardCallback(methods=["fuzzy_rank"]).on_multirun_end(config)
    saved = json.loads((tmp_path / "sweep" / "leaderboard" / "leaderboard.json").read_text())
    assert len(saved["rows"]) == 3 and not math.isnan(saved["rows"][0]["mean"]["test/acc"]["mean"])
    broken = OmegaConf.create(
        {**OmegaConf.to_container(config), "hydra": {"sweep": {"dir": str(tmp_path / "nowhere")}}}
    )
    LeaderboardCallback().on_multirun_end(broken)  # logs, does not raise
    assert "leaderboard of the sweep failed" in caplog.text
    other = OmegaConf.create({**OmegaConf.to_container(broken), "task_name": "eval"})
    LeaderboardCallback().on_multirun_end(other)  # not a task it runs for: nothing happens
    LeaderboardCallback(enabled=False).on_multirun_end(broken)
    assert caplog.text.count("leaderboard of the sweep failed") == 1


def test_wandb_offline_run_in_the_sweeps_group(tmp_path):
    wandb = pytest.importorskip("wandb")
    from osteolightning.ensemble.leaderboard import run_leaderboard

    make_sweep(tmp_path / "sweep")
    try:
        board, files = run_leaderboard(
            tmp_path / "sweep", methods=["mean"], n_resamples=50, wandb=True, wandb_offline=True
        )
    finally:
        wandb.teardown()  # later runs (WandbLogger) must not inherit this one's settings
    runs = list((files["csv"].parent / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    media = runs[0] / "files" / "media"  # the comparisons' table and the report go with it
    assert any(media.glob("table/comparisons_*.table.json"))
    assert any(media.glob("html/report_*.html"))
    assert wandb.run is None  # finished


def test_a_sweep_listed_twice_is_noted_not_double_counted_in_ensembles(tmp_path):
    make_sweep(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    board = build_leaderboard([tmp_path / "a", tmp_path / "b"], methods=["mean"], n_resamples=50)
    assert _row(board, "alexnet")["n_finished"] == 8  # every job is a row source
    assert _row(board, "ensemble:mean(alexnet+resnet18)")["mean"]["test/acc"]["n"] == 4
    assert any("two finished jobs" in note for note in board.notes)


def test_callback_leaves_out_ensembles_of_members_tested_on_different_images(tmp_path, caplog):
    make_sweep(tmp_path / "sweep")
    pred = tmp_path / "sweep" / "0" / "predictions.csv"
    pred.write_text(pred.read_text().replace("knee_000", "knee_999"))
    config = OmegaConf.create(
        {"task_name": "train", "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}
    )
    LeaderboardCallback(n_resamples=50).on_multirun_end(config)
    saved = json.loads((tmp_path / "sweep" / "leaderboard" / "leaderboard.json").read_text())
    assert [r["kind"] for r in saved["rows"]] == ["configuration", "configuration"]
    assert "test sets differ" in caplog.text and "without ensemble rows" in caplog.text


def test_many_configurations_are_not_fused_unless_named(tmp_path):
    backbones = tuple(f"net{i}" for i in range(9))  # e.g. the trials of a hyperparameter search
    make_sweep(tmp_path / "sweep", seeds=(0,), backbones=backbones, val=False)
    board = build_leaderboard(tmp_path / "sweep", n_resamples=20)
    assert [r["kind"] for r in board.rows] == ["configuration"] * 9
    assert any("members=[...]" in note for note in board.notes)
    named = build_leaderboard(
        tmp_path / "sweep", methods=["mean"], members=["net0", "net8"], n_resamples=20
    )
    assert "ensemble:mean(net0+net8)" in [r["name"] for r in named.rows]
