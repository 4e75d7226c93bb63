"""A grid multirun killed mid-way continues with ``resume=auto``: each job planned from its
folder (runs/sweep_resume), the multirun found from its overrides (hydra_plugins/osteo_sweeps/
_grid), and end to end: killed, resumed, every job finished once, one leaderboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.osteo_sweeps._grid import previous_sweep
from osteolightning.errors import ConfigError
from osteolightning.runs import lifecycle, rundir, sweep_resume
from osteolightning.runs.sweep_disk import DISK

# --------------------------------------------------------------------------- overrides


def test_resume_is_taken_out_of_overrides_and_quoted_paths_parse_back(tmp_path):
    assert sweep_resume.strip_resume(["seed=1", "resume=auto", "+x=2"]) == (
        ["seed=1", "+x=2"],
        "auto",
    )
    assert sweep_resume.strip_resume(["seed=1"]) == (["seed=1"], None)
    odd = tmp_path / "it's a (sweep), = dir" / "3"
    (parsed,) = OverridesParser.create().parse_overrides([sweep_resume.resume_override(odd)])
    assert parsed.key_or_group == "resume" and parsed.value() == str(odd)


def _multirun(root: Path, name: str, task: list[str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / rundir.MULTIRUN).write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    return folder


def test_the_newest_multirun_of_the_same_overrides_is_found(tmp_path):
    _multirun(tmp_path, "2026-01-01_00-00-00_000000", ["seed=0,1", "model/backbone=a,b"])
    newest = _multirun(tmp_path, "2026-01-02_00-00-00_000000", ["model/backbone=a,b", "seed=0,1"])
    _multirun(tmp_path, "2026-01-03_00-00-00_000000", ["model/backbone=a,b", "seed=0,1,2"])
    resumed = _multirun(tmp_path, "2026-01-01_12-00-00_000000", ["seed=0", "resume=auto"])
    wanted = ["seed=0,1", "model/backbone=a,b", "resume=auto"]
    assert sweep_resume.find_multirun(tmp_path, wanted) == newest  # order and resume ignored
    assert sweep_resume.find_multirun(tmp_path, ["seed=0"]) == resumed
    assert sweep_resume.find_multirun(tmp_path, ["seed=5"]) is None


def _config(sweep_dir: Path, task: list[str], given: bool) -> OmegaConf:
    hydra = [f"hydra.sweep.dir={sweep_dir}"] if given else []
    return OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": task, "hydra": hydra}}}
    )


def test_a_given_sweep_dir_must_hold_a_multirun_of_the_same_overrides(tmp_path):
    old = _multirun(tmp_path, "old", ["seed=0,1"])
    assert previous_sweep(_config(old, ["seed=0,1", "resume=auto"], given=True)) == old
    assert previous_sweep(_config(tmp_path / "new", ["seed=0,1"], given=True)) is None
    with pytest.raises(ConfigError, match=r"started with the overrides \['seed=0,1'\]"):
        previous_sweep(_config(old, ["seed=0,1,2", "resume=auto"], given=True))
    # not given: the newest sibling of the (new, timestamped) sweep dir
    assert previous_sweep(_config(tmp_path / "2099", ["seed=0,1"], given=False)) == old


# --------------------------------------------------------------------------- planning a job


def _job(root: Path, name: str, state: str | None, ckpt: bool = False, **marker) -> Path:
    job = root / name
    (job / rundir.HYDRA_DIR).mkdir(parents=True)
    if state is not None:
        lifecycle.update_marker(
            job, state=state, host=marker.pop("host", os.uname().nodename), **marker
        )
    if ckpt:
        (job / rundir.CHECKPOINTS).mkdir()
        (job / rundir.LAST_CKPT).write_bytes(b"state")
    return job


def test_each_job_is_planned_from_its_folder(tmp_path):
    dead = 2**22 + 12345  # no such pid
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        plans = {
            name: sweep_resume.plan_job(job)
            for name, job in {
                "missing": tmp_path / "missing",
                "finished": _job(tmp_path, "finished", "finished", ckpt=True),
                "killed": _job(tmp_path, "killed", "running", ckpt=True, pid=dead),
                "early": _job(tmp_path, "early", "running", pid=dead),
                "alive": _job(tmp_path, "alive", "running", ckpt=True, pid=sleeper.pid),
                "beating": _job(
                    tmp_path, "beating", "running", ckpt=True, host="other", heartbeat=time.time()
                ),
                "stale": _job(
                    tmp_path,
                    "stale",
                    "running",
                    ckpt=True,
                    host="other",
                    heartbeat=time.time() - 900,
                ),
                "no_run": _job(tmp_path, "no_run", None),
            }.items()
        }
    finally:
        sleeper.kill()
    actions = {name: (plan.action, plan.set_aside) for name, plan in plans.items()}
    assert actions == {
        "missing": ("run", False),
        "finished": ("skip", False),
        "killed": ("continue", False),
        "early": ("run", True),
        "alive": ("busy", False),
        "beating": ("busy", False),
        "stale": ("continue", False),
        "no_run": ("run", True),
    }


def test_prepared_jobs_continue_in_place_or_start_clean(tmp_path):
    killed = _job(tmp_path, "1", "running", ckpt=True, pid=2**22 + 1)
    (killed / rundir.ERROR).write_text("{}")  # the killed attempt had failed before
    overrides = ["seed=1", "resume=auto"]
    prepared = sweep_resume.prepare_job(sweep_resume.plan_job(killed), overrides)
    assert prepared == ["seed=1", sweep_resume.resume_override(killed)]
    assert not (killed / rundir.ERROR).exists()  # set aside: not this attempt's failure
    assert (tmp_path / rundir.ATTEMPTS_DIR / f"1.{rundir.ERROR}.1").is_file()
    early = _job(tmp_path, "2", "running", pid=2**22 + 1)
    assert sweep_resume.prepare_job(sweep_resume.plan_job(early), overrides) == ["seed=1"]
    assert not early.exists() and (tmp_path / rundir.ATTEMPTS_DIR / "2.1" / rundir.MARKER).is_file()
    finished = _job(tmp_path, "3", "finished")
    assert sweep_resume.prepare_job(sweep_resume.plan_job(finished), overrides) is None


# --------------------------------------------------------------------------- end to end


def _epochs(run_dir: Path, key: str) -> list[int]:
    import csv

    with open(run_dir / rundir.CSV_METRICS, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle) if row.get(key)]


def test_a_killed_grid_resumes_with_every_job_finished_once(tmp_path, cache_dir, phantom_dir):
    """3 jobs; killed once job 0 has finished and job 1 has a last.ckpt; the same command
    continues it: job 0 skipped, job 1 continued in its folder, job 2 run, one leaderboard."""
    env = {**os.environ, "OSTEO_CACHE_DIR": str(cache_dir), "WANDB_MODE": "disabled"}
    command = [
        sys.executable, "-m", "osteolightning.train", "-m", "debug=tiny", "seed=0,1,2",
        "trainer.max_epochs=1", "evaluation.n_resamples=20", f"paths.log_dir={tmp_path}",
        "hydra.callbacks.leaderboard.methods=[]", "resume=auto",
    ]  # fmt: skip
    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            sweeps = list((tmp_path / "train" / "multiruns").glob("*"))
            done = sweeps and (sweeps[0] / "0" / rundir.METRICS).is_file()
            if done and (sweeps[0] / "1" / rundir.LAST_CKPT).is_file():
                break
            time.sleep(0.05)
        assert first.poll() is None, "the sweep ended before it could be killed"
        first.send_signal(signal.SIGKILL)
        log = first.communicate(timeout=30)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert "no multirun of these overrides" in log  # the first resume=auto started fresh
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert not (sweep / "2").exists() and not (sweep / rundir.LEADERBOARD).exists()
    finished_at = (sweep / "0" / rundir.METRICS).stat().st_mtime_ns

    second = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert f"continuing the multirun in {sweep}" in second.stdout + second.stderr
    assert [p.name for p in (tmp_path / "train" / "multiruns").iterdir()] == [sweep.name]
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == [
        "0",
        "1",
        "2",
        DISK,
        rundir.LEADERBOARD,
        rundir.MULTIRUN,
    ]  # fmt: skip (disk.json: the sweep's disk use, written at its end)
    markers = [lifecycle.read_marker(sweep / str(n)) for n in range(3)]
    assert [m["state"] for m in markers] == ["finished"] * 3
    assert [m.get("resumes", 0) for m in markers] == [0, 1, 0]
    assert (sweep / "0" / rundir.METRICS).stat().st_mtime_ns == finished_at  # not run again
    assert _epochs(sweep / "1", "val/loss") == [0]  # continued, the epoch validated once
    board = json.loads((sweep / rundir.LEADERBOARD / "leaderboard.json").read_text())
    (row,) = board["rows"]
    assert row["n_jobs"] == row["n_finished"] == 3 and not board["unfinished"]
