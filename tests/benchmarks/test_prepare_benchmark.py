"""benchmarks/prepare.py runs in its short mode and reports every stage (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "prepare.py"


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("prepare_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_mode_reports_every_stage_and_finds_the_planted_pairs(prepare, tmp_path):
    out = tmp_path / "prepare.json"
    returned = prepare.main(["--short", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["n"] == 2000 and result["short"] is True
    assert [r["stage"] for r in result["stages"]] == list(prepare.STAGES)
    for r in result["stages"]:
        assert r["n"] == 2000 and r["measured_s"] >= 0 and r["seconds_at_n"] >= 0
    search = result["search"]
    assert search["planted_pairs"] == 20 and search["planted_found"] == 20
    assert search["blank_pairs_found"] == search["blank_pairs_expected"] > 0
    assert search["equal_to_baseline"] is True  # the baseline scan ran on all 2000 hashes
    assert result["total_s"] > 0


def test_planted_pairs_are_within_the_distance(prepare):
    words, planted, blank = prepare.synthetic_hashes(1000, max_distance=6, seed=1)
    assert len(planted) == 10 and blank == 2 and words[-1] == words[-2]
    for i, j in planted:
        assert bin(int(words[i] ^ words[j])).count("1") <= 6


def test_bad_sizes_are_refused(prepare):
    with pytest.raises(SystemExit):
        prepare.parse_args(["--n", "10"])
    with pytest.raises(SystemExit):
        prepare.parse_args(["--max-distance", "65"])
