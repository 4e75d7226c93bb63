"""Distributed evaluation on CPU processes (ddp_spawn, gloo) equals a single process."""

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
    predictions = [
        sorted((Path(c.paths.output_dir) / "predictions.csv").read_text().splitlines())
        for c in (one, two)
    ]
    assert predictions[0] == predictions[1]
