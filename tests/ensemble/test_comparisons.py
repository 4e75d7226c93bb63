"""Pairwise comparisons of a leaderboard's rows, on sweeps written by hand (fast; the real
multirun is in tests/test_sweep.py): every statistic recomputed here from the jobs' files with
the reference functions, rows tested on different images, undefined metrics, the critical
difference, segmentation sweeps, the outputs and the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from osteolightning.ensemble.cli import leaderboard as leaderboard_cli
from osteolightning.ensemble.leaderboard import build_leaderboard, run_leaderboard
from osteolightning.ensemble.leaderboard.comparisons import (
    compare_leaderboard,
    resamples_for,
    verdict,
)
from osteolightning.metrics.compare import (
    corrected_resampled_ttest,
    delong_ovr,
    friedman_critical_difference,
    holm,
    mcnemar_test,
    paired_bootstrap,
    paired_bootstrap_scores,
)
from osteolightning.metrics.report import metric_table

CLASSES = ["normal", "osteopenia", "osteoporosis"]
N_IMAGES = 30  # 10 per class; 5 folds of 6 (2 per class)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _probs(rng: np.random.Generator, labels: np.ndarray, skill: float) -> np.ndarray:
    raw = rng.dirichlet(np.ones(3), size=len(labels))
    raw[np.arange(len(labels)), labels] += skill
    return np.round(raw / raw.sum(axis=1, keepdims=True), 6)


def make_study(
    root: Path,
    backbones: dict[str, float] | None = None,
    folds: int = 5,
    seeds: tuple[int, ...] = (0,),
    fold_of=None,
) -> dict:
    """A multirun of ``backbones`` (name → skill) x seeds x folds, with everything a job
    writes: overrides and config, predictions, metrics.json, splits.csv, skipped.csv and
    label_conflicts.csv. Returns ``(backbone, seed, fold) → (job dir, paths, labels, probs)``."""
    backbones = backbones or {"strong": 3.0, "middle": 0.6, "weak": 0.0}
    labels = np.repeat(np.arange(3), N_IMAGES // 3)
    paths = [f"/data/knee_{i:03d}.png" for i in range(N_IMAGES)]
    fold_of = (
        np.tile(np.arange(folds), N_IMAGES // folds + 1)[:N_IMAGES] if fold_of is None else fold_of
    )
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    jobs, num = {}, 0
    for name, skill in backbones.items():
        for seed in seeds:
            for fold in range(folds):
                job = root / str(num)
                (job / ".hydra").mkdir(parents=True)
                overrides = [f"model/backbone={name}", f"seed={seed}", f"data.fold={fold}"]
                (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
                config = {
                    "seed": seed,
                    "data": {"num_folds": folds, "fold": fold, "batch_size": 8},
                    "model": {"net": {"name": name}, "optimizer": {"lr": 0.001}},
                    "paths": {"output_dir": str(job)},
                }
                (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
                sel = np.flatnonzero(fold_of == fold)
                probs = _probs(rng, labels[sel], skill)
                _write_csv(
                    job / "predictions.csv",
                    ["path", "label", *[f"prob_{c}" for c in CLASSES], "prediction"],
                    [
                        [paths[i], CLASSES[labels[i]], *p, CLASSES[int(np.argmax(p))]]
                        for i, p in zip(sel, probs, strict=True)
                    ],
                )
                table = metric_table(labels[sel][None], probs[None], CLASSES)
                metrics = {f"test/{k}": float(v[0]) for k, v in table.items() if np.isfinite(v[0])}
                (job / "metrics.json").write_text(json.dumps({**metrics, "test/n": len(sel)}))
                rest = [i for i in range(N_IMAGES) if fold_of[i] != fold]
                split = {i: "test" for i in sel} | {i: "val" for i in rest[:3]}
                _write_csv(
                    job / "splits.csv",
                    ["split", "path", "label", "patient_id", "group", "sha1"],
                    [
                        [
                            split.get(i, "train"),
                            paths[i],
                            CLASSES[labels[i]],
                            f"P-{i}",
                            f"g{i}",
                            "0",
                        ]
                        for i in range(N_IMAGES)
                    ],
                )
                _write_csv(
                    job / "skipped.csv", ["path", "reason"], [["/data/.DS_Store", "system file"]]
                )
                _write_csv(job / "label_conflicts.csv", ["group", "path", "label", "action"], [])
                jobs[(name, seed, fold)] = (job, [paths[i] for i in sel], labels[sel], probs)
                num += 1
    return jobs


def _pooled(jobs: dict, name: str):
    keys = sorted(k for k in jobs if k[0] == name)
    paths = [p for k in keys for p in jobs[k][1]]
    return (
        paths,
        np.concatenate([jobs[k][2] for k in keys]),
        np.concatenate([jobs[k][3] for k in keys]),
    )


def _pair(comparisons, a: str, b: str) -> dict:
    (pair,) = [p for p in comparisons.pairs if {p["a"], p["b"]} == {a, b}]
    return pair


def test_every_statistic_equals_the_reference_on_the_jobs_files(tmp_path):
    jobs = make_study(tmp_path / "sweep")
    board = build_leaderboard(tmp_path / "sweep", methods=["mean"], n_resamples=50)
    result = compare_leaderboard(board, n_resamples=50, seed=3)
    names = [r["name"] for r in board.rows]
    assert len(result.pairs) == len(names) * (len(names) - 1) // 2 == 6
    r = resamples_for(6, 0.05, 50)
    assert r == 480 and result.n_resamples == r  # raised so Holm over 6 pairs can reach 0.025
    pair = _pair(result, "strong", "weak")
    assert (pair["a"], pair["b"], pair["status"]) == ("strong", "weak", "compared")
    paths, labels, strong = _pooled(jobs, "strong")
    _, _, weak = _pooled(jobs, "weak")
    reference = paired_bootstrap(
        labels, strong, weak, paths, CLASSES, ("balanced_acc", "f1_macro", "auroc_macro"), r, 3
    )
    for metric, expected in reference.items():
        got = pair["bootstrap"][f"test/{metric}"]
        assert {k: got[k] for k in expected} == expected
    assert (
        pair["mcnemar"]["p_value"]
        == mcnemar_test(labels, strong.argmax(1), weak.argmax(1))["p_value"]
    )
    delong = delong_ovr(labels, strong, weak, CLASSES)
    assert {c: pair["delong"][c]["p_value"] for c in CLASSES} == {
        c: delong[c]["p_value"] for c in CLASSES
    }
    # the corrected t-test over the 5 folds, n_train / n_test from splits.csv (21 / 6)
    per_fold = [
        metric_table(jobs[(b, 0, f)][2][None], jobs[(b, 0, f)][3][None], CLASSES)["f1_macro"][0]
        for f in range(5)
        for b in ("strong", "weak")
    ]
    diffs = np.array(per_fold[0::2]) - np.array(per_fold[1::2])
    expected_t = corrected_resampled_ttest(diffs, 21, 6)
    got_t = pair["ttest"]["test/f1_macro"]
    assert (got_t["n_train"], got_t["n_test"], got_t["n_units"]) == (21, 6, 5)
    assert got_t["p_value"] == pytest.approx(expected_t["p_value"])
    # Holm over the 6 pairs, per metric and test
    for metric in result.metrics:
        family = [p["bootstrap"][metric] for p in result.pairs]
        assert [f["p_holm"] for f in family] == holm([f["p_value"] for f in family])
        family = [p["ttest"][metric] for p in result.pairs]
        assert [f["p_holm"] for f in family] == holm([f["p_value"] for f in family])
    assert pair["bootstrap"]["test/f1_macro"]["p_holm"] < 0.05
    (line,) = [s for s in result.summary if s.startswith("strong is")]
    assert "better than" in line and "weak" in line.split("better than")[1].split(";")[0]
    assert result.summary_metric == "test/f1_macro"


def test_ordered_classes_compare_on_kappa_and_grade_error(tmp_path):
    """κ and the grade MAE as compared metrics: the paired bootstrap equals the reference, and
    the MAE's verdict counts lower as better."""
    jobs = make_study(tmp_path / "sweep")
    board = build_leaderboard(tmp_path / "sweep", methods=[], n_resamples=50)
    result = compare_leaderboard(
        board, n_resamples=50, seed=3, metrics=["kappa_quadratic", "grade_mae"]
    )
    assert result.metrics == ["test/kappa_quadratic", "test/grade_mae"]
    pair = _pair(result, "strong", "weak")
    paths, labels, strong = _pooled(jobs, "strong")
    _, _, weak = _pooled(jobs, "weak")
    r = result.n_resamples
    reference = paired_bootstrap(
        labels, strong, weak, paths, CLASSES, ("kappa_quadratic", "grade_mae"), r, 3
    )
    for metric, expected in reference.items():
        got = pair["bootstrap"][f"test/{metric}"]
        assert {k: got[k] for k in expected} == expected
    mae = pair["bootstrap"]["test/grade_mae"]
    assert mae["diff"] < 0  # the strong row errs by fewer grades
    if mae["p_holm"] < 0.05:
        assert verdict(pair, "test/grade_mae", 0.05) == ("a" if pair["a"] == "strong" else "b")


def test_outputs_leaderboard_summary_and_critical_difference(tmp_path):
    jobs = make_study(tmp_path / "sweep")
    board, files = run_leaderboard(tmp_path / "sweep", methods=["mean"], n_resamples=50)
    folder = files["csv"].parent
    for name in (
        "comparisons.csv",
        "comparisons.md",
        "comparisons.json",
        "critical_difference.png",
    ):
        assert (folder / name).is_file(), name
    md = (folder / "leaderboard.md").read_text()
    assert "Comparisons (macro F1" in md and "- strong is better than" in md
    cd = json.loads((folder / "comparisons.json").read_text())["critical_difference"]
    names = [r["name"] for r in board.rows]  # 3 configurations and the mean ensemble

    def f1(name: str, fold: int) -> float:
        if name.startswith("ensemble"):  # the mean fusion: the members' mean probabilities
            probs = np.mean([jobs[(b, 0, fold)][3] for b in ("strong", "middle", "weak")], axis=0)
        else:
            probs = jobs[(name, 0, fold)][3]
        return metric_table(jobs[("strong", 0, fold)][2][None], probs[None], CLASSES)["f1_macro"][0]

    scores = np.array([[f1(n, f) for n in names] for f in range(5)])
    expected = friedman_critical_difference(scores, names)
    assert cd["blocks"] == [[0, f] for f in range(5)] and cd["metric"] == "test/f1_macro"
    assert cd["avg_ranks"] == pytest.approx(expected["avg_ranks"])
    assert cd["cd"] == pytest.approx(expected["cd"]) and cd["groups"] == expected["groups"]
    with open(folder / "comparisons.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    tests = {r["test"] for r in rows}
    assert tests == {"paired_bootstrap", "corrected_t", "delong", "mcnemar"}
    boot = [r for r in rows if r["test"] == "paired_bootstrap" and r["metric"] == "test/f1_macro"]
    assert len(boot) == 6 and all(
        float(r["ci95_low"]) <= float(r["difference"]) <= float(r["ci95_high"]) for r in boot
    )
    assert "## Critical difference" in (folder / "comparisons.md").read_text()


def test_critical_difference_needs_three_rows_and_five_blocks(tmp_path):
    make_study(tmp_path / "four", folds=4)
    board = build_leaderboard(tmp_path / "four", methods=[], n_resamples=20)
    result = compare_leaderboard(board, n_resamples=20)
    assert result.critical_difference is None
    assert any("at least 5 (seed, fold) units" in n and "got 4" in n for n in result.notes)
    make_study(tmp_path / "two", backbones={"a": 1.0, "b": 0.0})
    board = build_leaderboard(tmp_path / "two", methods=[], n_resamples=20)
    result = compare_leaderboard(board, n_resamples=20)
    assert result.critical_difference is None and any("at least 3 rows" in n for n in result.notes)
    assert len(result.pairs) == 1 and len(result.summary) == 3  # the header and one line per row


def test_rows_tested_on_different_images_are_restricted_or_not_compared(tmp_path):
    jobs = make_study(tmp_path / "sweep", backbones={"a": 2.0, "b": 0.5, "c": 0.0})
    failed = jobs[("b", 0, 4)][0]  # b's fold 4 failed: its 6 images are not b's
    (failed / "metrics.json").unlink()
    (failed / "predictions.csv").unlink()
    (failed / "error.json").write_text(json.dumps({"error": "boom", "type": "RuntimeError"}))
    moved = jobs[("c", 0, 0)][0] / "predictions.csv"  # c was tested on other images altogether
    for key in [k for k in jobs if k[0] == "c"]:
        pred = jobs[key][0] / "predictions.csv"
        pred.write_text(pred.read_text().replace("/data/knee_", "/other/knee_"))
    assert moved.is_file()
    board = build_leaderboard(tmp_path / "sweep", methods=[], n_resamples=20)
    result = compare_leaderboard(board, n_resamples=20)
    ab = _pair(result, "a", "b")
    assert ab["status"] == "restricted" and ab["n_images"] == 24
    assert "6 of 'a'" in ab["note"] and "(seed 0, fold 4)" in ab["note"] and "knee_" in ab["note"]
    paths, labels, probs_a = _pooled({k: v for k, v in jobs.items() if k[2] != 4}, "a")
    _, _, probs_b = _pooled({k: v for k, v in jobs.items() if k[2] != 4}, "b")
    expected = paired_bootstrap(
        labels, probs_a, probs_b, paths, CLASSES, ("f1_macro",), result.n_resamples
    )
    assert ab["bootstrap"]["test/f1_macro"]["diff"] == expected["f1_macro"]["diff"]
    assert ab["ttest"]["test/f1_macro"]["n_units"] == 4
    for other in ("a", "b"):
        pair = _pair(result, other, "c")
        assert pair["status"] == "not comparable" and "bootstrap" not in pair
        assert f"'{other}' and 'c' were tested on different images" in pair["note"]
        assert "/other/" not in pair["note"] and "knee_" in pair["note"]
    assert any("not compared (undefined or different images) with c" in s for s in result.summary)
    text = (
        run_leaderboard(tmp_path / "sweep", methods=[], n_resamples=20)[1]["comparisons_md"]
    ).read_text()
    assert "not comparable" in text and "restricted" in text


def test_an_undefined_metric_is_reported_as_undefined_never_zero(tmp_path):
    """Each fold holds one class only: no per-fold AUROC exists, so the t-test of macro AUROC
    over folds is undefined (pooled over the folds the AUROC is defined)."""
    fold_of = np.repeat(np.arange(3), N_IMAGES // 3)  # fold k = the images of class k
    make_study(tmp_path / "sweep", backbones={"a": 1.0, "b": 0.0}, folds=3, fold_of=fold_of)
    board, files = run_leaderboard(tmp_path / "sweep", methods=[], n_resamples=20)
    pair = json.loads(files["comparisons_json"].read_text())["pairs"][0]
    auroc = pair["ttest"]["test/auroc_macro"]
    assert auroc["n_units"] == 0 and auroc["p_value"] is None and auroc["p_holm"] is None
    assert pair["ttest"]["test/balanced_acc"]["p_value"] is not None
    assert pair["bootstrap"]["test/auroc_macro"]["diff"] is not None  # defined when pooled
    assert "undefined (0 units defined)" in files["comparisons_md"].read_text()
    with open(files["comparisons_csv"], newline="") as handle:
        (row,) = [
            r
            for r in csv.DictReader(handle)
            if r["test"] == "corrected_t" and r["metric"] == "test/auroc_macro"
        ]
    assert row["p_value"] == row["difference"] == "" and row["n_units"] == "0"


def test_segmentation_sweep_compares_dice_per_image(tmp_path):
    root = tmp_path / "seg"
    root.mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    rng = np.random.default_rng(1)
    truth = {}
    for num, (model, quality) in enumerate((m, f) for m in ("unet", "swin") for f in (0, 1)):
        job = root / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"model={model}", f"data.fold={quality}"])
        )
        (job / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump({"seed": 0, "data": {"num_folds": 2, "fold": quality}})
        )
        paths = [f"/seg/img_{i:02d}.png" for i in range(quality * 10, quality * 10 + 10)]
        dice = np.round(
            np.clip(rng.normal(0.9 if model == "unet" else 0.7, 0.05, (10, 2)), 0, 1), 6
        )
        dice[0, 1] = np.nan  # the tibia absent from truth and prediction: undefined
        rows = [
            [p, "", *["" if np.isnan(v) else f"{v:.6f}" for v in d]]
            for p, d in zip(paths, dice, strict=True)
        ]
        _write_csv(job / "predictions.csv", ["path", "mask", "dice_femur", "dice_tibia"], rows)
        (job / "metrics.json").write_text(
            json.dumps({"test/dice": float(np.nanmean(dice)), "test/n": 10})
        )
        truth[(model, quality)] = (paths, np.nanmean(dice, axis=1))
    board = build_leaderboard(root, n_resamples=20)
    result = compare_leaderboard(board, n_resamples=20)
    (pair,) = result.pairs
    assert result.metrics == ["test/dice"] and "delong" not in pair and "mcnemar" not in pair
    paths = truth[("unet", 0)][0] + truth[("unet", 1)][0]
    a = np.concatenate([truth[(pair["a"], f)][1] for f in (0, 1)])
    b = np.concatenate([truth[(pair["b"], f)][1] for f in (0, 1)])
    expected = paired_bootstrap_scores(a, b, paths, n_resamples=result.n_resamples)
    got = pair["bootstrap"]["test/dice"]
    assert {k: got[k] for k in expected} == expected and pair["a"] == "unet"
    assert pair["ttest"] == {} and "no splits.csv" in pair["note"]
    _, files = run_leaderboard(root, n_resamples=20)  # the report of a segmentation sweep
    html = files["report"].read_text()
    assert "Classification sweeps only." in html and "Per-fold spread" in html


def test_cli_recomputes_comparisons_for_an_existing_sweep(make_cfg, tmp_path):
    make_study(tmp_path / "sweep", folds=5)
    folder = tmp_path / "sweep" / "leaderboard"
    cfg = make_cfg(
        "ensemble",
        [f"sweep={tmp_path / 'sweep'}", "methods=[]", "evaluation.n_resamples=20"],
        run="a",
    )
    leaderboard_cli(cfg)
    for name in (
        "comparisons.csv",
        "comparisons.md",
        "comparisons.json",
        "critical_difference.png",
        "report.html",
    ):
        assert (folder / name).is_file(), name
    first = json.loads((folder / "comparisons.json").read_text())
    assert first["alpha"] == 0.05
    cfg = make_cfg(
        "ensemble",
        [
            f"sweep={tmp_path / 'sweep'}",
            "methods=[]",
            "alpha=0.01",
            "report=false",
            "evaluation.n_resamples=20",
        ],
        run="b",
    )
    leaderboard_cli(cfg)
    assert json.loads((folder / "comparisons.json").read_text())["alpha"] == 0.01
    assert not (folder / "report.html").exists()  # a stale report is not left behind
    cfg = make_cfg(
        "ensemble", [f"sweep={tmp_path / 'sweep'}", "methods=[]", "compare=false"], run="c"
    )
    leaderboard_cli(cfg)
    assert not (folder / "comparisons.json").exists() and (folder / "report.html").is_file()
    assert "Comparisons" not in (folder / "leaderboard.md").read_text()
    shutil.rmtree(folder)
