"""``osteo-train reproduce=<run dir>``: a finished run again, from its saved config, in a new run
directory, with a metric-by-metric comparison (end to end, as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from osteolightning.errors import ConfigError
from osteolightning.reproduce import (
    compare_metrics,
    ignored_overrides,
    reproduce_run,
    reproduction_config,
)
from osteolightning.train import run_job, train


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "osteolightning.train", *args],
        cwd=cwd,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_a_run_reproduces_identical_metrics_in_process(make_cfg, tmp_path):
    """The default suite's version: both runs in this process (the first one's config saved as
    Hydra saves it); the slow test below runs both as a user does."""
    cfg = make_cfg(
        "train",
        ["debug=tiny", "trainer.deterministic=true", "data/augment=none", "trainer.max_epochs=1"],
        run="old",
    )
    (tmp_path / "old" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / "old" / ".hydra" / "config.yaml")  # what Hydra writes
    train(cfg)
    again = make_cfg("train", [f"reproduce={tmp_path / 'old'}"], run="new")
    reproduce_run(again, run_job)
    report = json.loads((tmp_path / "new" / "reproduction.json").read_text())
    assert report["identical"] is True, [r for r in report["metrics"] if not r["identical"]]
    assert {r["metric"] for r in report["metrics"]} >= {"test/f1_macro", "test/auroc_macro"}


@pytest.mark.slow
def test_a_deterministic_cpu_run_reproduces_identical_metrics(tmp_path, cache_dir):
    old, new = tmp_path / "old", tmp_path / "new"
    where = [f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={cache_dir}"]
    # augment=none: the strictest case, no random draw at all (runs with augmentation reproduce
    # too: each image's draws are a function of (seed, epoch, index), tests/test_reproducibility.py)
    _train(
        ["debug=tiny", "trainer.deterministic=true", "data/augment=none", f"hydra.run.dir={old}"]
        + where,
        tmp_path,
    )
    recorded = (old / "metrics.json").read_bytes()
    result = _train([f"reproduce={old}", f"hydra.run.dir={new}", *where], tmp_path)
    report = json.loads((new / "reproduction.json").read_text())
    assert report["reproduced"] == str(old.resolve()) and report["identical"] is True
    rows = {r["metric"]: r for r in report["metrics"]}
    assert rows["test/f1_macro"]["difference"] == 0.0 and rows["test/loss"]["identical"]
    assert rows["test/confusion_matrix"]["identical"] and "test/acc_ci95" in rows
    assert (old / "metrics.json").read_bytes() == recorded  # the old run is left alone
    assert (new / "predictions.csv").read_bytes() == (old / "predictions.csv").read_bytes()
    assert "metrics identical" in result.stdout and "differing" not in result.stdout
    saved = yaml.safe_load((new / ".hydra" / "config.yaml").read_text())
    old_config = yaml.safe_load((old / ".hydra" / "config.yaml").read_text())
    assert saved["model"] == old_config["model"] and saved["reproduce"] is None
    assert saved["paths"]["output_dir"] == str(new)  # the config it ran, in its new directory


def test_reproduce_refuses_what_it_cannot_reproduce(make_cfg, tmp_path):
    run = tmp_path / "done"
    (run / ".hydra").mkdir(parents=True)
    with pytest.raises(ConfigError, match="config.yaml"):
        reproduction_config(make_cfg("train", [f"reproduce={run}"], run="a"))
    (run / ".hydra" / "config.yaml").write_text("seed: 1\npaths: {output_dir: x}\n")
    with pytest.raises(ConfigError, match="finished run"):
        reproduction_config(make_cfg("train", [f"reproduce={run}"], run="b"))
    (run / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="new directory"):
        reproduction_config(make_cfg("train", [f"reproduce={run}"], run="done"))
    cfg, old = reproduction_config(make_cfg("train", [f"reproduce={run}", "seed=7"], run="c"))
    assert old == run.resolve() and cfg.seed == 1 and cfg.paths.output_dir == str(tmp_path / "c")
    assert ignored_overrides() == ["seed=7"]  # warned about: the saved config decides


def test_metric_comparison_names_each_difference():
    rows = compare_metrics(
        {"test/acc": 0.5, "test/acc_ci95": [0.4, 0.6], "checkpoint": "old/x.ckpt", "test/n": 10},
        {"test/acc": 0.75, "test/acc_ci95": [0.4, 0.7], "checkpoint": "new/x.ckpt", "val/x": 1.0},
    )
    got = {r["metric"]: (r["difference"], r["identical"]) for r in rows}
    assert got["test/acc"] == (0.25, False) and got["test/acc_ci95"][1] is False
    assert got["test/acc_ci95"][0] == pytest.approx(0.1)
    assert got["test/n"] == (None, False) and got["val/x"] == (None, False)
    assert "checkpoint" not in got  # text (a path naming the run) is not a metric
