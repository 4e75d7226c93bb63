"""The launchers of hydra_plugins/osteo_sweeps: GPU/CPU slots, jobs that run at the same time,
each pinned to its own device, the SLURM executor's settings, and a job requeued after a
simulated time-limit signal that continues its run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from hydra_plugins.osteo_sweeps._launch import Slot, detect_gpus, plan_slots
from hydra_plugins.osteo_sweeps._requeue import requeue_arguments
from osteolightning.errors import ConfigError
from osteolightning.runs import lifecycle, rundir
from osteolightning.utils.config import CONFIG_DIR

# --------------------------------------------------------------------------- slots


def test_gpus_are_shared_out_one_group_per_job():
    slots = plan_slots(1, [0, 1, 2, 3], None, None, cpu_count=16)
    assert [s.gpus for s in slots] == [("0",), ("1",), ("2",), ("3",)]
    assert {s.threads for s in slots} == {4}  # the cores shared out
    pairs = plan_slots(2, ["0", "1", "2", "3", "4"], None, 3, cpu_count=16)
    assert [s.gpus for s in pairs] == [("0", "1"), ("2", "3")]  # the odd GPU stays idle
    assert [s.threads for s in pairs] == [3, 3]
    assert len(plan_slots(1, [0, 1, 2, 3], 2, None, cpu_count=8)) == 2  # max_parallel caps
    assert Slot(0, ("2",), 3).setup() == [
        "export CUDA_VISIBLE_DEVICES=2",
        "export OMP_NUM_THREADS=3 MKL_NUM_THREADS=3",
    ]


def test_cpu_jobs_get_a_set_number_of_threads():
    assert [(s.gpus, s.threads) for s in plan_slots(0, [], 2, None, cpu_count=8)] == [
        ((), 4),
        ((), 4),
    ]
    assert len(plan_slots(0, [], None, 2, cpu_count=8)) == 4  # cores // threads_per_job
    assert [s.threads for s in plan_slots(None, [], None, None, cpu_count=2)] == [2]
    assert Slot(0, (), 2).setup()[0] == "export CUDA_VISIBLE_DEVICES=''"  # GPUs hidden
    assert plan_slots(None, ["0", "1"], None, None, cpu_count=4)[1].gpus == ("1",)  # auto: 1


@pytest.mark.parametrize(
    "args, match",
    [
        ((2, [0], None, None), "at most the number of visible GPUs"),
        ((1, [], None, None), "at most the number of visible GPUs"),
        ((0, [], 0, None), "max_parallel"),
        ((0, [], None, -1), "threads_per_job"),
        ((-1, [], None, None), "gpus_per_job"),
    ],
)
def test_impossible_slots_are_refused(args, match):
    with pytest.raises(ConfigError, match=match):
        plan_slots(*args, cpu_count=4)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert detect_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f2e,GPU-77aa")  # UUIDs are kept as given
    assert detect_gpus() == ["GPU-5f2e", "GPU-77aa"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []


# --------------------------------------------------------------------------- two jobs at once

APP = """
import json, os, time
from pathlib import Path
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    start = time.time()
    time.sleep(cfg.sleep)
    record = {"job": cfg.job, "pid": os.getpid(), "start": start, "end": time.time(),
              "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "omp": os.environ.get("OMP_NUM_THREADS")}
    Path(cfg.out, f"{cfg.job}.json").write_text(json.dumps(record))
    return cfg.job

if __name__ == "__main__":
    main()
"""

APP_CONFIG = """
defaults:
  - override hydra/launcher: osteo_local
  - _self_
sleep: 4
job: 0
out: ???
hydra:
  sweep:
    dir: ${out}/multirun
    subdir: ${hydra.job.num}
  launcher:
    gpus_per_job: 1
    visible_gpus: [0, 1]
    threads_per_job: 1
"""


def test_the_local_launcher_runs_two_jobs_at_once_each_on_its_own_gpu(tmp_path):
    """Two jobs of a multirun in two processes whose run times overlap, pinned to GPU 0 and
    GPU 1 (CUDA_VISIBLE_DEVICES; no GPU is needed to see the pinning) with one thread each."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.yaml").write_text(APP_CONFIG)
    done = subprocess.run(
        [sys.executable, "app.py", "-m", "job=0,1", f"out={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"{j}.json").read_text()) for j in (0, 1))
    assert first["pid"] != second["pid"] and os.getpid() not in (first["pid"], second["pid"])
    assert first["start"] < second["end"] and second["start"] < first["end"]  # at the same time
    assert sorted([first["cuda"], second["cuda"]]) == ["0", "1"]
    assert first["omp"] == second["omp"] == "1"


# --------------------------------------------------------------------------- SLURM


def test_the_slurm_launcher_requeues_from_config(tmp_path, monkeypatch):
    """hydra/launcher=slurm: our requeue-aware launcher, and the sbatch script it would submit
    signals the job before its time limit (submitit then checkpoints and requeues it)."""
    from hydra_plugins.osteo_sweeps._launch import slurm_executor
    from hydra_plugins.osteo_sweeps.launchers import OsteoSlurmLauncher

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("OsteoSlurmLauncher")
    assert params["max_num_timeout"] >= 1 and params["signal_delay_s"] > 0
    launcher = OsteoSlurmLauncher(**params)
    launcher.config = cfg
    assert launcher.max_parallel == params["array_parallelism"]
    executor = slurm_executor(launcher)._executor
    assert executor.max_num_timeout == params["max_num_timeout"]
    script = executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    assert f"#SBATCH --signal=USR2@{params['signal_delay_s']}" in script
    assert f"#SBATCH --time={params['timeout_min']}" in script


# --------------------------------------------------------------------------- requeue


def _claimed_run(make_cfg, checkpoint: bool) -> Path:
    """A job's run directory, claimed by this process (HydraConfig: that job's)."""
    cfg = make_cfg("train", ["debug=tiny"], run="job")
    run_dir = Path(cfg.paths.output_dir)
    lifecycle.update_marker(run_dir, state="running", pid=os.getpid(), heartbeat=time.time())
    if checkpoint:
        (run_dir / rundir.LAST_CKPT).parent.mkdir()
        (run_dir / rundir.LAST_CKPT).write_bytes(b"state")
    return run_dir


def test_a_signalled_job_releases_its_run_and_is_requeued_into_it(make_cfg):
    run_dir = _claimed_run(make_cfg, checkpoint=True)
    arguments = requeue_arguments(["seed=1", "resume=auto"], "hydra.sweep.dir", 3, "id", {})
    overrides, *rest = arguments
    assert overrides == ["seed=1", f"resume='{run_dir}'"]
    assert rest == ["hydra.sweep.dir", 3, "id", {}]
    marker = lifecycle.read_marker(run_dir)
    assert marker["pid"] is None and marker["heartbeat"] is None and marker["requeued"]
    assert not lifecycle.alive_elsewhere(marker)  # the requeued job may take the run over at once


def test_a_signalled_job_without_a_checkpoint_is_not_requeued(make_cfg):
    run_dir = _claimed_run(make_cfg, checkpoint=False)
    assert requeue_arguments(["seed=1"], "hydra.sweep.dir", 0, "id", {}) is None
    assert lifecycle.read_marker(run_dir)["pid"] == os.getpid()  # untouched


def _csv_epochs(run_dir: Path, key: str) -> list[int]:
    import csv

    with open(run_dir / rundir.CSV_METRICS, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle) if row.get(key)]


@pytest.mark.slow
def test_a_requeue_after_a_time_limit_signal_continues_the_same_run_directory(
    tmp_path, cache_dir, phantom_dir
):
    """The local launcher's job gets USR2, the signal SLURM sends before ``--time`` runs out:
    it saves last.ckpt, is requeued (submitit restarts it) and finishes in its own folder."""
    env = {**os.environ, "OSTEO_CACHE_DIR": str(cache_dir), "WANDB_MODE": "disabled"}
    command = [
        sys.executable, "-m", "osteolightning.train", "-m", "debug=tiny", "seed=0",
        "trainer.max_epochs=3", "evaluation.n_resamples=20", f"paths.log_dir={tmp_path}",
        "hydra/launcher=local", "hydra.launcher.gpus_per_job=0", "hydra.launcher.max_parallel=1",
        "hydra.callbacks.leaderboard.methods=[]",
    ]  # fmt: skip
    sweep = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline, signalled = time.monotonic() + 300, None
        while time.monotonic() < deadline and sweep.poll() is None and signalled is None:
            jobs = list((tmp_path / "train" / "multiruns").glob("*/0"))
            marker = lifecycle.read_marker(jobs[0]) if jobs else None
            if marker and (jobs[0] / rundir.LAST_CKPT).is_file() and marker.get("pid"):
                os.kill(int(marker["pid"]), signal.SIGUSR2)
                signalled = int(marker["pid"])
            time.sleep(0.1)
        assert signalled is not None, "the job ended before it could be signalled"
        assert sweep.wait(timeout=300) == 0
    finally:
        if sweep.poll() is None:
            sweep.kill()
    (job,) = (tmp_path / "train" / "multiruns").glob("*/0")
    assert not list(job.parent.glob("1")) and not (job.parent / rundir.ATTEMPTS_DIR).exists()
    marker = lifecycle.read_marker(job)
    assert marker["state"] == "finished" and marker["resumes"] == 1 and marker["requeued"]
    assert marker["pid"] != signalled  # a new process finished it
    assert json.loads((job / rundir.METRICS).read_text())["test/n"] > 0
    assert _csv_epochs(job, "val/loss") == [0, 1, 2]  # each epoch validated once
    logs = "".join(p.read_text() for p in job.parent.glob(".submitit/*/*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "requeued" in logs.lower()
