"""A run killed mid-training continues with ``resume=auto`` in its own directory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osteolightning.errors import ConfigError
from osteolightning.runs import lifecycle

TRAIN = [sys.executable, "-m", "osteolightning.train", "debug=tiny", "trainer.max_epochs=4"]


def _csv_epochs(run_dir: Path, key: str = "train/loss") -> list[int]:
    """The epoch of every CSV row that logged ``key`` (test rows carry epoch = max_epochs)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle) if row.get(key)]


def _run_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "logs" / "train" / "runs").glob("*"))


def test_killed_run_resumes_in_its_directory_and_ends_at_max_epochs(
    tmp_path: Path, cache_dir: Path, phantom_dir: Path
) -> None:
    # phantom_dir: the tiny phantom is generated once per session, not in the subprocess
    start = time.monotonic()
    env = {**os.environ, "OSTEO_CACHE_DIR": str(cache_dir), "WANDB_MODE": "disabled"}
    first = subprocess.Popen(
        TRAIN, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300  # generous: CI machines may be loaded
        while time.monotonic() < deadline and first.poll() is None:
            dirs = _run_dirs(tmp_path)
            if (
                dirs
                and (dirs[0] / lifecycle.LAST_CKPT).is_file()
                and max(_csv_epochs(dirs[0]) or [0]) >= 1
            ):
                break
            time.sleep(0.1)
        assert first.poll() is None, "the run ended before it could be killed"
        killed_at = time.monotonic() - start
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    (run_dir,) = _run_dirs(tmp_path)
    assert not (run_dir / "metrics.json").exists()
    assert lifecycle.read_marker(run_dir)["state"] == "running"

    second = subprocess.run(
        [*TRAIN, "resume=auto"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    print(
        f"killed after {killed_at:.1f} s; resumed run took {time.monotonic() - start - killed_at:.1f} s"
    )
    assert "Resuming the run in" in second.stdout + second.stderr
    fresh = [d for d in _run_dirs(tmp_path) if d != run_dir]
    assert len(fresh) == 1 and lifecycle.read_marker(fresh[0])["resumed_in"] == str(run_dir)
    assert not (fresh[0] / "metrics.json").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["test/n"] > 0
    # history kept across the kill, each epoch validated once, max_epochs - 1 at the end
    assert _csv_epochs(run_dir, "val/loss") == [0, 1, 2, 3]
    assert _csv_epochs(run_dir)[0] == 0 and max(_csv_epochs(run_dir)) == 3
    marker = lifecycle.read_marker(run_dir)
    assert marker["state"] == "finished" and marker["resumes"] == 1


def test_config_hash_ignores_volatile_keys_and_names_changed_ones(make_cfg) -> None:
    a = lifecycle.hashed_config(make_cfg("train", ["debug=tiny"], run="a"))
    b = lifecycle.hashed_config(make_cfg("train", ["debug=tiny", "resume=auto"], run="b"))
    assert lifecycle.config_hash(a) == lifecycle.config_hash(b)
    cfg = make_cfg("train", ["debug=tiny", "model.optimizer.lr=0.5"], run="c")
    c = lifecycle.hashed_config(cfg)
    assert lifecycle.config_hash(a) != lifecycle.config_hash(c)
    assert lifecycle.config_diff(a, c) == ["model.optimizer.lr"]

    lifecycle.update_marker(cfg.paths.output_dir, state="running", config_hash="x", config=a)
    (Path(cfg.paths.output_dir) / lifecycle.LAST_CKPT).parent.mkdir()
    (Path(cfg.paths.output_dir) / lifecycle.LAST_CKPT).touch()
    with pytest.raises(ConfigError, match=r"model\.optimizer\.lr"):
        lifecycle.check_resumable(Path(cfg.paths.output_dir), c)


def test_resume_auto_without_a_candidate_starts_fresh(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("train", ["debug=tiny", "resume=auto"], run="fresh")
    assert lifecycle.start_run(cfg) == Path(cfg.paths.output_dir)
    assert lifecycle.read_marker(cfg.paths.output_dir)["state"] == "running"


def test_a_running_run_beats_and_stops_beating_when_it_finishes(make_cfg, monkeypatch) -> None:
    monkeypatch.setattr(lifecycle, "HEARTBEAT_S", 0.05)
    cfg = make_cfg("train", ["debug=tiny"], run="beating")
    run_dir = lifecycle.start_run(cfg)
    first = lifecycle.read_marker(run_dir)["heartbeat"]
    deadline = time.time() + 10
    while lifecycle.read_marker(run_dir)["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.05)
    assert lifecycle.read_marker(run_dir)["heartbeat"] > first
    lifecycle.finish_run(run_dir)
    last = lifecycle.read_marker(run_dir)
    time.sleep(0.3)  # no beat after the end, and none that writes back `running`
    assert lifecycle.read_marker(run_dir) == last and last["state"] == "finished"


def _claimed_elsewhere(make_cfg, beat_age_s: float):
    """A `running` run of this config, last.ckpt saved, whose marker says another host owns
    it with a heartbeat ``beat_age_s`` old."""
    cfg = make_cfg("train", ["debug=tiny"], run="this-node")
    run_dir = Path(cfg.paths.log_dir) / "train" / "runs" / "2026-11-24_03-00-00_000000"
    run_dir.mkdir(parents=True)
    flat = lifecycle.hashed_config(cfg)
    lifecycle.update_marker(
        run_dir,
        task_name="train",
        state="running",
        config_hash=lifecycle.config_hash(flat),
        config=flat,
        host="gpu-node-17",
        pid=4242,
        heartbeat=time.time() - beat_age_s,
    )
    (run_dir / lifecycle.LAST_CKPT).parent.mkdir()
    (run_dir / lifecycle.LAST_CKPT).touch()
    return cfg, run_dir, flat


def test_resume_leaves_a_run_alone_while_another_node_beats(make_cfg) -> None:
    cfg, run_dir, flat = _claimed_elsewhere(make_cfg, beat_age_s=5)
    log_dir = cfg.paths.log_dir
    assert lifecycle.find_resumable(log_dir, "train", lifecycle.config_hash(flat)) is None
    with pytest.raises(ConfigError, match=r"process 4242 on gpu-node-17, heartbeat \d+ s ago"):
        lifecycle.check_resumable(run_dir, flat)


def test_resume_takes_a_run_whose_node_stopped_beating(make_cfg) -> None:
    cfg, run_dir, flat = _claimed_elsewhere(make_cfg, beat_age_s=lifecycle.STALE_S + 5)
    assert (
        lifecycle.find_resumable(cfg.paths.log_dir, "train", lifecycle.config_hash(flat)) == run_dir
    )
    lifecycle.check_resumable(run_dir, flat)  # no error: the node is gone


def test_resume_refuses_a_run_whose_process_lives_on_this_host(make_cfg) -> None:
    cfg, run_dir, flat = _claimed_elsewhere(make_cfg, beat_age_s=lifecycle.STALE_S + 5)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lifecycle.update_marker(run_dir, host=lifecycle.socket.gethostname(), pid=owner.pid)
        assert (
            lifecycle.find_resumable(cfg.paths.log_dir, "train", lifecycle.config_hash(flat))
            is None
        )
        with pytest.raises(ConfigError, match=f"process {owner.pid}.*still running"):
            lifecycle.check_resumable(run_dir, flat)
    finally:
        owner.kill()
        owner.wait()
    lifecycle.check_resumable(run_dir, flat)  # its process is gone
