"""The speed and memory benchmarks run in their short modes and report every row (no time or
memory figure is asserted: those are measured by running the benchmarks, see their README)."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import one another
    try:
        spec = importlib.util.spec_from_file_location(
            f"{name}_benchmark", BENCHMARKS / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_overhead_short_mode_times_both_loops_and_breaks_a_short_fit_down(tmp_path):
    overhead = _load("overhead")
    out = tmp_path / "overhead.json"
    args = ["--short", "--regimes", "fast,short", "--device", "cpu", "--override", "logger=csv"]
    result = overhead.main([*args, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    fast, short = result["rows"]
    assert fast["regime"] == "fast" and fast["backbone"] == "resnet10t" and fast["train_steps"] > 0
    for row in (fast, short):
        assert len(row["runs"]["plain"]) == len(row["runs"]["osteo-train"]) == 1
        assert row["ratio_cpu"] > 0 and row["ratio_wall"] > 0
        assert row["ratio_cpu_ci95"] == [None, None]  # one pair: no interval
        # each run's epochs (2 in the short mode), timed apart: the second is the steady state
        for run in (*row["runs"]["plain"], *row["runs"]["osteo-train"]):
            assert len(run["epoch_cpu_s"]) == len(run["epoch_wall_s"]) == row["epochs"] == 2
            assert all(s > 0 for s in run["epoch_cpu_s"])
            assert sum(run["epoch_wall_s"]) <= run["wall_s"] + 1e-6
        plain, fit = row["runs"]["plain"][0], row["runs"]["osteo-train"][0]
        steady = fit["epoch_cpu_s"][1] / plain["epoch_cpu_s"][1]
        assert row["steady_ratio_cpu"] == pytest.approx(steady)
        assert row["steady_ratio_cpu_ci95"] == [None, None]
    assert "breakdown_cpu_s" not in fast
    parts = short["breakdown_cpu_s"]
    assert {"sanity check", "checkpoint writes", "training loop (the rest)"} <= set(parts)
    assert "callback LastCheckpoint" in parts and "logger CSVLogger" in parts
    assert all(v >= 0 for k, v in parts.items() if k != "training loop (the rest)")
    (fit,) = short["runs"]["osteo-train"]
    assert sum(fit["by"].values()) == pytest.approx(fit["cpu_s"])


def test_the_paired_ratio_and_its_interval():
    overhead = _load("overhead")
    plain, fit = [10.0, 11.0, 9.0, 10.5], [10.2, 11.3, 9.1, 10.8]
    logs = [math.log(f / p) for p, f in zip(plain, fit, strict=True)]
    got = overhead.paired_ratio(plain, fit)
    assert got["ratio"] == pytest.approx(math.exp(statistics.fmean(logs)))
    half = 3.182446305284263 * statistics.stdev(logs) / 2  # t(0.975, 3) * s / sqrt(4)
    assert got["low"] == pytest.approx(math.exp(statistics.fmean(logs) - half))
    assert got["high"] == pytest.approx(math.exp(statistics.fmean(logs) + half))
    assert got["low"] < got["ratio"] < got["high"] and got["pairs"] == 4


def test_the_attribution_counts_each_cpu_second_once():
    overhead = _load("overhead")
    attribution = overhead.Attribution()

    def spin(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    start = time.process_time()
    with attribution("outer"):
        spin(0.05)
        with attribution("inner"):
            spin(0.05)
        spin(0.05)
    total = time.process_time() - start
    assert attribution.totals["inner"] == pytest.approx(0.05, abs=0.02)
    assert attribution.totals["outer"] == pytest.approx(0.10, abs=0.03)
    assert sum(attribution.totals.values()) <= total + 1e-6


def test_loader_short_mode_covers_presets_workers_and_variants(tmp_path):
    loader = _load("loader")
    result = loader.main(["--short", "--out", str(tmp_path / "loader.json")])
    rows = {(r["preset"], r["workers"], r["variant"]) for r in result["rows"]}
    assert {(p, w, "default") for p in loader.PRESETS for w in (0, 1)} <= rows
    variants = {v for _, _, v in rows} - {"default"}
    assert variants == {
        "in-RAM array",
        "no per-item seed",
        "on_device=normalize",
        "on_device=stream",
    }
    assert all(r["images_per_s"] > 0 and r["images"] > 0 for r in result["rows"])
    assert result["seeding"]["seed_augment_us"] > 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_memory_short_mode_reports_each_size(tmp_path):
    memory = _load("memory")
    result = memory.main(
        ["--short", "--work-dir", str(tmp_path), "--out", str(tmp_path / "m.json")]
    )
    assert [run["n"] for run in result["runs"]] == [60, 120]
    for run in result["runs"]:
        rank = run["processes"]["rank0"]
        assert rank["VmHWM"] >= rank["RssAnon"] > 0 and rank["Pss"] > 0
    assert set(result["growth"]) == {"rank0"}


def test_throughput_dry_run_times_every_option(tmp_path):
    throughput = _load("throughput")
    result = throughput.main(
        ["--dry-run", "--backbones", "resnet10t", "--out", str(tmp_path / "t.json")]
    )
    runs = [r["run"] for r in result["rows"]]
    assert runs == ["plain, synthetic", "plain, loader", *throughput.OPTIONS]
    assert all(r["images_per_s"] > 0 for r in result["rows"]) and not result["skipped"]


@pytest.mark.slow
def test_startup_times_the_floor_the_import_and_the_first_step(tmp_path):
    startup = _load("startup")
    out = tmp_path / "startup.json"
    result = startup.main(
        ["--repeats", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert set(rows) == {
        "import torch+lightning",
        "import osteolightning.train",
        "first step: tiny",
    }
    floor, first = rows["import torch+lightning"], rows["first step: tiny"]
    assert 0 < floor["cpu_s"] < first["cpu_s"] and first["wall_s"] > 0
    assert first["beyond_floor_cpu_s"] == pytest.approx(first["cpu_s"] - floor["cpu_s"])


@pytest.mark.slow
def test_sweeps_reruns_finished_sweeps_and_reports_their_disk(tmp_path):
    sweeps = _load("sweeps")
    out = tmp_path / "sweeps.json"
    result = sweeps.main(
        ["--sweeps", "optuna,nested", "--work", str(tmp_path / "w"), "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    optuna, nested = result["rows"]
    assert (optuna["jobs"], nested["jobs"]) == (2, 12)
    for row in (optuna, nested):
        assert row["rerun_said_complete"] and row["rerun_rebuilt"] == []
        assert row["resumable_checkpoints"] == 0 and row["disk_mb"] > 0
