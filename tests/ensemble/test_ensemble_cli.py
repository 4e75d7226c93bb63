"""``osteo-ensemble``: fuses the predictions.csv of fake runs composed with the real config."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from osteolightning.ensemble.cli import ensemble
from osteolightning.errors import ConfigError, DataSourceError

CLASSES = ["normal", "osteopenia", "osteoporosis"]
FAST = ["evaluation.n_resamples=50"]


def write_predictions(path: Path, paths, labels, probs, class_names=CLASSES) -> Path:
    """A predictions.csv as EvaluationWriter writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", *[f"prob_{c}" for c in class_names], "prediction"])
        for p, y, row in zip(paths, labels, probs, strict=True):
            writer.writerow(
                [p, class_names[y], *[f"{v:.6f}" for v in row], class_names[row.argmax()]]
            )
    return path


def complementary_runs(root: Path, n: int = 45, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Three runs, each confidently right on two thirds of the knees and mildly wrong on its own
    third, so that any two of them outvote the third on every knee."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    paths = [f"/data/knees/{CLASSES[y]}/knee_{i:03d}.png" for i, y in enumerate(labels)]
    blocks = np.array_split(rng.permutation(n), 3)
    runs = []
    for m in range(3):
        probs = np.empty((n, 3))
        for i, y in enumerate(labels):
            other = (y + rng.integers(1, 3)) % 3
            rest = 3 - y - other
            if i in blocks[m]:  # wrong: a wrong class narrowly ahead of the true one
                top = rng.uniform(0.45, 0.55)
                probs[i, [other, y, rest]] = [top, (1 - top) * 0.7, (1 - top) * 0.3]
            else:
                top = rng.uniform(0.65, 0.9)
                probs[i, [y, other, rest]] = [top, (1 - top) * 0.6, (1 - top) * 0.4]
        run = root / f"run_{m}"
        write_predictions(run / "predictions.csv", paths, labels, probs)
        (run / "metrics.json").write_text("{}")
        runs.append(run)
    return runs, labels


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def overrides(runs, *extra: str) -> list[str]:
    return [f"runs=[{','.join(map(str, runs))}]", *FAST, *extra]


def test_fuzzy_ensemble_beats_each_member_and_writes_its_run(make_cfg, tmp_path):
    runs, labels = complementary_runs(tmp_path / "members")
    cfg = make_cfg("ensemble", overrides(runs, "method=fuzzy_rank"), run="ens")
    metrics = ensemble(cfg)
    out = tmp_path / "ens"

    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["path", "label", *[f"prob_{c}" for c in CLASSES], "prediction"]
    assert [r["path"] for r in rows] == [r["path"] for r in read_csv(runs[0] / "predictions.csv")]
    assert [r["label"] for r in rows] == [CLASSES[y] for y in labels]
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert r["prediction"] == CLASSES[int(np.argmax(probs))]

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["method"] == "fuzzy_rank" and saved["top_k"] is None
    # members.json and metrics.json name members the same way in every command (member, source)
    assert saved["sources"] == [str((r / "predictions.csv").resolve()) for r in runs]
    for key in ("acc", "f1_macro", "balanced_acc", "auroc_macro", "recall_osteoporosis"):
        low, high = saved[f"test/{key}_ci95"]
        assert low <= saved[f"test/{key}"] <= high
    assert saved["test/n"] == len(labels) and saved["test/bootstrap_resamples"] == 50

    members = json.loads((out / "members.json").read_text())
    assert [m["source"] for m in members] == saved["sources"]
    assert [m["member"] for m in members] == saved["members"]
    member_acc = [m["test/acc"] for m in members]
    assert all(0.6 < acc < 0.7 for acc in member_acc)  # each is wrong on its own third
    assert saved["test/acc"] == 1.0 > max(member_acc)


@pytest.mark.parametrize("extra", [["method=mean"], ["method=majority_vote"], ["top_k=2"]])
def test_other_methods_and_top_k(make_cfg, tmp_path, extra):
    runs, _ = complementary_runs(tmp_path / "members", n=30, seed=1)
    metrics = ensemble(make_cfg("ensemble", overrides(runs, *extra), run="ens"))
    assert metrics["test/acc"] == 1.0  # two of three always outvote the third
    assert len(read_csv(tmp_path / "ens" / "predictions.csv")) == 30


def test_runs_may_be_csv_files_with_columns_in_another_order(make_cfg, tmp_path):
    runs, _ = complementary_runs(tmp_path / "members", n=30)
    reference = ensemble(make_cfg("ensemble", overrides(runs), run="a"))
    rows = read_csv(runs[1] / "predictions.csv")
    order = ["osteoporosis", "normal", "osteopenia"]
    shuffled = write_predictions(
        tmp_path / "shuffled.csv",
        [r["path"] for r in rows],
        [order.index(r["label"]) for r in rows],
        np.array([[float(r[f"prob_{c}"]) for c in order] for r in rows]),
        class_names=order,
    )
    files = [runs[0] / "predictions.csv", shuffled, runs[2] / "predictions.csv"]
    metrics = ensemble(make_cfg("ensemble", overrides(files), run="b"))
    assert metrics["test/acc"] == reference["test/acc"]
    assert metrics["test/confusion_matrix"] == reference["test/confusion_matrix"]


def test_a_path_missing_from_one_run_is_named(make_cfg, tmp_path):
    runs, _ = complementary_runs(tmp_path / "members", n=30)
    csv_path = runs[2] / "predictions.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    dropped = lines.pop(7).split(",")[0]
    csv_path.write_text("".join(lines))
    with pytest.raises(DataSourceError, match="missing from") as err:
        ensemble(make_cfg("ensemble", overrides(runs), run="ens"))
    assert f"'{dropped}'" in str(err.value) and str(runs[2]) in str(err.value)
    assert not (tmp_path / "ens" / "metrics.json").exists()


def test_other_class_names_are_named(make_cfg, tmp_path):
    runs, labels = complementary_runs(tmp_path / "members", n=30)
    rows = read_csv(runs[1] / "predictions.csv")
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    write_predictions(
        runs[1] / "predictions.csv",
        [r["path"] for r in rows],
        labels,
        probs,
        class_names=["normal", "osteopenia", "osteoporotic"],
    )
    with pytest.raises(DataSourceError, match="has classes") as err:
        ensemble(make_cfg("ensemble", overrides(runs), run="ens"))
    assert str(runs[1]) in str(err.value) and "osteoporotic" in str(err.value)


def test_labels_that_disagree_are_named(make_cfg, tmp_path):
    runs, labels = complementary_runs(tmp_path / "members", n=30)
    rows = read_csv(runs[1] / "predictions.csv")
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    labels = labels.copy()
    labels[4] = (labels[4] + 1) % 3
    write_predictions(runs[1] / "predictions.csv", [r["path"] for r in rows], labels, probs)
    with pytest.raises(DataSourceError, match=rows[4]["path"]):
        ensemble(make_cfg("ensemble", overrides(runs), run="ens"))


def test_bad_arguments(make_cfg, tmp_path):
    runs, _ = complementary_runs(tmp_path / "members", n=30)
    with pytest.raises(ConfigError, match="`runs`"):
        ensemble(make_cfg("ensemble", FAST, run="a"))
    with pytest.raises(DataSourceError, match="Not a run directory holding predictions.csv"):
        ensemble(make_cfg("ensemble", overrides([runs[0], tmp_path / "nowhere"]), run="b"))
    with pytest.raises(ConfigError, match="Did you mean `majority_vote`"):
        ensemble(make_cfg("ensemble", overrides(runs, "method=majority"), run="c"))
    (runs[0] / "predictions.csv").write_text("image,label,p_normal\n")
    with pytest.raises(DataSourceError, match="not a predictions file"):
        ensemble(make_cfg("ensemble", overrides(runs), run="d"))


def test_weighted_mean_needs_validation_predictions(make_cfg, tmp_path):
    runs, _ = complementary_runs(tmp_path / "members", n=30)
    with pytest.raises(ConfigError, match="val_predictions.csv"):
        ensemble(make_cfg("ensemble", overrides(runs, "method=weighted_mean"), run="a"))
    val_runs, _ = complementary_runs(tmp_path / "val", n=30, seed=7)
    for run, val in zip(runs, val_runs, strict=True):
        (val / "predictions.csv").rename(run / "val_predictions.csv")
    metrics = ensemble(make_cfg("ensemble", overrides(runs, "method=weighted_mean"), run="b"))
    assert len(metrics["weights"]) == 3 and sum(metrics["weights"]) == pytest.approx(1.0)
    assert metrics["test/acc"] > 0.9


def test_console_script(tmp_path):
    runs, _ = complementary_runs(tmp_path / "members", n=30)
    script = Path(sys.executable).with_name("osteo-ensemble")
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [str(script), f"runs=[{runs[0]},{runs[1]}]", "method=mean", *FAST],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "ensemble" / "runs").iterdir()
    for name in ("predictions.csv", "metrics.json", "members.json", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text())["method"] == "mean"
    assert "test/acc" in result.stdout
