"""Distributed evaluation on CPU processes (ddp_spawn, gloo) equals a single process."""

import csv
import json
from pathlib import Path

import pytest

from osteolightning.evaluate import evaluate

TINY = ["common=tiny", "callbacks=tiny", "logger=tiny", "data=manifest"]


def test_two_process_test_metrics_equal_one_process(make_cfg, trained, phantom_dir):
    checkpoint = trained[0] / "checkpoints" / "last.ckpt"
    # 59 images: the two ranks get 30 and 29; a padding sampler would count one image twice.
    lines = (phantom_dir / "manifest.csv").read_text().splitlines()
    manifest = phantom_dir / "manifest59.csv"
    manifest.write_text("\n".join(lines[:60]) + "\n")
    common = [*TINY, f"data.root={manifest}", f"ckpt_path={checkpoint}", "data.batch_size=4"]
    one = make_cfg("eval", [*common, "trainer=tiny"], run="one")
    evaluate(one)
    two = make_cfg("eval", [*common, "trainer=ddp_cpu"], run="two")
    evaluate(two)
    single, double = (
        json.loads((Path(c.paths.output_dir) / "metrics.json").read_text()) for c in (one, two)
    )
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert double["test/n"] == single["test/n"] == 59
    assert double["test/confusion_matrix"] == single["test/confusion_matrix"]
    for key in ("test/acc", "test/f1_macro", "test/auroc_macro", "test/acc_ci95", "test/loss"):
        assert double[key] == pytest.approx(single[key], abs=1e-5), key
    one_rows, two_rows = (
        sorted(csv.reader((Path(c.paths.output_dir) / "predictions.csv").open()))
        for c in (one, two)
    )
    assert [r[0] for r in one_rows] == [r[0] for r in two_rows]  # same images, each once
    for a, b in zip(one_rows, two_rows, strict=True):
        assert a[1] == b[1] and a[-1] == b[-1]  # label and prediction
        if a[0] != "path":  # batch composition changes the float summation order (~1e-6)
            assert [float(x) for x in a[2:-1]] == pytest.approx(
                [float(x) for x in b[2:-1]], abs=1e-5
            )
