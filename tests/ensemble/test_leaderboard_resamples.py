"""``osteo-ensemble sweep=`` keeps the sweep's bootstrap: the leaderboard records its
``n_resamples`` and a rebuild without ``evaluation.n_resamples`` reuses it, so the intervals do
not silently change; an explicit other value rebuilds and says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from osteolightning.ensemble.cli import leaderboard as leaderboard_cli
from osteolightning.ensemble.leaderboard import LeaderboardCallback
from osteolightning.runs.rundir import LEADERBOARD_MARKER
from tests.ensemble.test_leaderboard import make_sweep


def _marker(sweep: Path) -> dict:
    return json.loads((sweep / "leaderboard" / LEADERBOARD_MARKER).read_text())


def _intervals(sweep: Path) -> list:
    rows = json.loads((sweep / "leaderboard" / "leaderboard.json").read_text())["rows"]
    return [row.get("pooled_ci95") for row in rows]


def test_a_rebuild_reuses_the_sweep_s_n_resamples(make_cfg, tmp_path, caplog):
    sweep = tmp_path / "sweep"
    make_sweep(sweep)
    config = OmegaConf.create(
        {
            "task_name": "train",
            "evaluation": {"n_resamples": 40, "seed": 0},
            "hydra": {"sweep": {"dir": str(sweep)}},
        }
    )
    LeaderboardCallback(methods=[]).on_multirun_end(config)  # what the multirun wrote
    assert _marker(sweep)["n_resamples"] == 40
    built = _intervals(sweep)
    with caplog.at_level(logging.INFO, logger="osteolightning.ensemble.cli"):
        leaderboard_cli(make_cfg("ensemble", [f"sweep={sweep}", "methods=[]"], run="a"))
    assert _marker(sweep)["n_resamples"] == 40 and _intervals(sweep) == built
    assert "the sweep's n_resamples=40" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="osteolightning.ensemble.cli"):
        overrides = [f"sweep={sweep}", "methods=[]", "evaluation.n_resamples=60"]
        leaderboard_cli(make_cfg("ensemble", overrides, run="b"))
    assert _marker(sweep)["n_resamples"] == 60 and _intervals(sweep) != built
    assert "n_resamples=60; it was built with 40" in caplog.text


def test_without_a_marker_the_multirun_s_value_is_used(make_cfg, tmp_path):
    sweep = tmp_path / "sweep"
    make_sweep(sweep)
    (sweep / "multirun.yaml").write_text("hydra: {}\nevaluation:\n  n_resamples: 30\n")
    leaderboard_cli(make_cfg("ensemble", [f"sweep={sweep}", "methods=[]"], run="a"))
    assert _marker(sweep)["n_resamples"] == 30
