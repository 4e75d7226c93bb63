import csv
import json
import subprocess
import sys

import pytest

from osteolightning.predict import main, predict


def test_predict_agrees_with_evaluation(trained, class_tree, tmp_path):
    run_dir = trained[0]
    ckpt = json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]  # the tested one
    out = tmp_path / "p.csv"
    assert main([str(ckpt), str(class_tree), "--out", str(out)]) == 0
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list(class_tree.rglob("*.png")))
    # the test split's images get the probabilities osteo-train wrote for them
    with open(run_dir / "predictions.csv") as handle:
        tested = {r["path"].split("/")[-1]: r for r in csv.DictReader(handle)}
    assert sum(r["path"].split("/")[-1] in tested for r in rows) == len(tested)
    for row in rows:
        name = row["path"].split("/")[-1]
        if name in tested:
            assert float(row["prob_normal"]) == pytest.approx(
                float(tested[name]["prob_normal"]), abs=1e-4
            )
            assert row["prediction"] == tested[name]["prediction"]


def test_predict_cli_reports_missing_paths(trained, tmp_path):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "osteolightning.predict", str(ckpt), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1  # a framework error: status 1 (argparse usage errors: 2)
    assert "nope" in result.stderr and "does not exist" in result.stderr


def test_predict_single_file(trained, class_tree):
    image = sorted(class_tree.rglob("*.png"))[0]
    rows = predict(trained[0] / "checkpoints" / "last.ckpt", [image])
    assert rows[0][0] == str(image) and len(rows[0]) == 5
