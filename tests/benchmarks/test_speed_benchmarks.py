"""The speed and memory benchmarks run in their short modes and report every row (no time or
memory figure is asserted: those are measured by running the benchmarks, see their README)."""

from __future__ import annotations

import importlib.util
import json
import sys
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


def test_overhead_short_mode_times_both_loops(tmp_path):
    overhead = _load("overhead")
    out = tmp_path / "overhead.json"
    args = ["--short", "--regimes", "fast", "--device", "cpu", "--override", "logger=csv"]
    result = overhead.main([*args, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (row,) = result["rows"]
    assert row["regime"] == "fast" and row["backbone"] == "resnet10t" and row["train_steps"] > 0
    assert len(row["runs"]["plain"]) == len(row["runs"]["osteo-train"]) == 1
    assert row["ratio_cpu"] > 0 and row["ratio_wall"] > 0


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
