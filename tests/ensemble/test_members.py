"""One fusion everywhere: ``osteo-ensemble``, ``osteo-eval`` ensemble mode and the leaderboard
fuse the same members into byte-identical predictions, and name members the same way."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from osteolightning.ensemble.cli import ensemble
from osteolightning.ensemble.evaluate import evaluate_ensemble
from osteolightning.ensemble.leaderboard import build_leaderboard, write_leaderboard
from osteolightning.ensemble.members import fuse_runs, member_name
from osteolightning.errors import ConfigError
from osteolightning.runs.rundir import read_predictions, write_predictions
from tests.ensemble.test_ensemble_cli import complementary_runs

CLASSES = ["normal", "osteopenia", "osteoporosis"]
TINY_EVAL = ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]


def _without_leading_columns(text: str, n: int) -> bytes:
    rows = list(csv.reader(io.StringIO(text)))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([row[n:] for row in rows])
    return out.getvalue().encode()


@pytest.mark.parametrize("method", ["fuzzy_rank", "mean", "majority_vote"])
def test_osteo_ensemble_and_the_leaderboard_write_the_same_fused_predictions(
    make_cfg, tmp_path, method
):
    runs, _ = complementary_runs(tmp_path / "members", n=30)
    for i, run in enumerate(runs):  # three configurations of one sweep
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model/backbone=b{i}"]))
    fused = ensemble(
        make_cfg(
            "ensemble",
            [f"runs=[{','.join(map(str, runs))}]", f"method={method}", "evaluation.n_resamples=20"],
            run="ens",
        )
    )
    board = build_leaderboard(runs, methods=[method], n_resamples=20)
    files = write_leaderboard(board, tmp_path / "board")
    from_board = files[f"ensemble_{method}"].read_text()
    assert from_board.startswith("seed,fold,path,label,")
    assert (tmp_path / "ens" / "predictions.csv").read_bytes() == _without_leading_columns(
        from_board, 2
    )
    row = next(r for r in board.rows if r["kind"] == "ensemble")
    assert row["pooled"]["test/acc"] == pytest.approx(fused["test/acc"])


def test_osteo_eval_ensemble_and_osteo_ensemble_write_the_same_fused_predictions(
    trained, make_cfg, class_tree, tmp_path
):
    run_dir = trained[0]
    best = next((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    ckpts = [best, run_dir / "checkpoints" / "last.ckpt"]
    cfg = make_cfg(
        "eval",
        [
            *TINY_EVAL,
            "data=folder",
            f"data.root={class_tree}",
            f"ckpt_path=[{ckpts[0]},{ckpts[1]}]",
            "ensemble=mean",
        ],
        run="eval-ens",
    )
    metrics, _ = evaluate_ensemble(cfg)
    out = Path(cfg.paths.output_dir)
    members = [out / "members" / name for name in metrics["members"]]
    again = ensemble(make_cfg("ensemble", [f"runs=[{members[0]},{members[1]}]", "method=mean"]))
    assert (out / "predictions.csv").read_bytes() == (
        tmp_path / "run" / "predictions.csv"
    ).read_bytes()
    assert again["test/acc"] == metrics["test/acc"]
    # members.json means the same in both: one report per member, named and sourced
    for report in (json.loads((out / "members.json").read_text()),):
        assert [m["member"] for m in report] == metrics["members"] == ["0-resnet10t", "1-resnet10t"]
        assert [m["source"] for m in report] == [str(c.resolve()) for c in ckpts]
    report = json.loads((tmp_path / "run" / "members.json").read_text())
    assert [m["source"] for m in report] == [
        str((m / "predictions.csv").resolve()) for m in members
    ]
    assert {"member", "source", "test/acc", "test/acc_ci95"} <= set(report[0])


def test_fuzzy_rank_predictions_are_its_own_not_the_argmax(tmp_path):
    """The fused prediction column is the fusion's prediction (fuzzy rank: the argmin of the
    fused score), written by the one predictions writer."""
    labels = np.array([0, 1, 2, 0])
    paths = [f"k{i}.png" for i in range(4)]
    rng = np.random.default_rng(3)
    members = []
    for m in range(3):
        probs = rng.dirichlet(np.ones(3), size=4)
        write_predictions(tmp_path / f"m{m}.csv", paths, labels, probs, CLASSES)
        members.append(read_predictions(tmp_path / f"m{m}.csv"))
    fused = fuse_runs(members, "fuzzy_rank")
    write_predictions(
        tmp_path / "f.csv", fused.paths, fused.labels, fused.probs, CLASSES, fused.preds
    )
    rows = list(csv.DictReader(io.StringIO((tmp_path / "f.csv").read_text())))
    assert [CLASSES.index(r["prediction"]) for r in rows] == fused.preds.tolist()


def test_weighted_mean_needs_validation_predictions(tmp_path):
    runs, _ = complementary_runs(tmp_path, n=9)
    members = [read_predictions(r / "predictions.csv") for r in runs]
    with pytest.raises(ConfigError, match="val_predictions.csv"):
        fuse_runs(members, "weighted_mean")


def test_member_names_come_from_the_run_config():
    assert member_name(2, {"model": {"net": {"name": "tf_efficientnet_lite0"}}}) == (
        "2-tf_efficientnet_lite0"
    )
    assert member_name(0, None) == "0-model"
    assert member_name(1, {"model": {"net": {"name": "a/b c"}}}) == "1-a_b_c"
