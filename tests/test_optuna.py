"""The Optuna search (hydra/sweeper=osteo_optuna, osteolightning/conf/hparams_search): its config,
the search space grammar, the study's storage, a study killed and started again, two workers on
one study, refused input, a failing trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from hydra_plugins.osteo_sweeps._space import grid_values, parse_search_space, space_differences
from hydra_plugins.osteo_sweeps._storage import make_study_folder, open_storage
from hydra_plugins.osteo_sweeps._study import OptunaStudySweeper, tally
from osteolightning.errors import ConfigError
from osteolightning.runs import lifecycle, rundir
from osteolightning.utils.config import CONFIG_DIR


@pytest.fixture
def knee_optuna():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield compose("train", overrides=["hparams_search=knee_optuna"], return_hydra_config=True)
    GlobalHydra.instance().clear()


def _choices(spec: str) -> list[str]:
    assert spec.startswith("choice(") and spec.endswith(")"), spec
    return [c.strip() for c in spec[len("choice(") : -1].split(",")]


def test_knee_optuna_config(knee_optuna, trained):
    sweeper = knee_optuna.hydra.sweeper
    assert sweeper._target_.endswith("OsteoOptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.n_trials > 2
    assert sweeper.storage is None  # the journal file in the study's folder
    assert knee_optuna.hydra.sweep.dir.endswith(f"/train/studies/{sweeper.study_name}")
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.seed is not None
    # the optimised metric is one osteo-train returns (metrics of the session's tiny run)
    assert knee_optuna.optimized_metric == "val/f1_macro_best"
    assert knee_optuna.optimized_metric in trained[1]
    params = sweeper.params
    assert params["model.optimizer.lr"].startswith("tag(log, interval(")
    assert params["model.optimizer.weight_decay"].startswith("tag(log, interval(")
    # every choice is a config of its group
    for group in ("data/augment", "model/backbone"):
        for name in _choices(params[group]):
            assert (Path(CONFIG_DIR) / group / f"{name}.yaml").is_file(), (group, name)
    assert {"none", "light", "strong"} <= set(_choices(params["data/augment"]))
    assert len(_choices(params["model/backbone"])) >= 3


# --------------------------------------------------------------------------- search space


def test_the_search_space_grammar_of_hparams_search(knee_optuna):
    params = [f"{k}={v}" for k, v in knee_optuna.hydra.sweeper.params.items()]
    space = parse_search_space([*params, "trainer.max_epochs=5", "x=range(1, 10, 3)"])
    d = space.distributions
    assert d["model.optimizer.lr"] == FloatDistribution(1e-5, 3e-3, log=True)
    assert d["data/augment"] == CategoricalDistribution(["none", "light", "strong"])
    assert d["x"] == IntDistribution(1, 7, step=3)  # what a grid would run: 1, 4, 7
    assert space.fixed == {"trainer.max_epochs": "5"}
    trial = space.overrides({"x": 4, "data/augment": "light"})
    assert trial == ["x=4", "data/augment=light", "trainer.max_epochs=5"]
    # the command line replaces a key of the config's params
    assert "data/augment" in parse_search_space([*params, "data/augment=none"]).fixed
    for bad in ("lr=interval(3, 1)", "lr=tag(log, interval(0, 1))"):
        with pytest.raises(ConfigError, match="low < high"):
            parse_search_space([bad])


def test_a_grid_sampler_gets_the_discrete_values():
    space = parse_search_space(["a=choice(x, y)", "b=range(1, 7, 2)", "c=range(0.5, 1.0, 0.25)"])
    assert grid_values(space) == {"a": ["x", "y"], "b": [1, 3, 5], "c": [0.5, 0.75]}
    with pytest.raises(ConfigError, match="`lr` is interval"):
        grid_values(parse_search_space(["lr=interval(0.1, 1)"]))


def test_a_second_sweep_with_another_space_is_refused_naming_the_differences(tmp_path):
    sweeper = OptunaStudySweeper(
        sampler=None, direction="maximize", storage=None, study_name="knee", n_trials=4,
        n_jobs=None, max_failure_rate=1.0, params=None,
    )  # fmt: skip
    storage, where = open_storage(None, tmp_path)
    first = parse_search_space(["lr=tag(log, interval(1e-5, 1e-2))", "aug=choice(a, b)", "e=3"])
    sweeper._study(storage, where, first)
    # the same space, written another way: accepted
    sweeper._study(
        storage,
        where,
        parse_search_space(["aug=choice(a,b)", "lr=tag(log, interval(0.00001, 0.01))", "e=3"]),
    )
    other = parse_search_space(
        ["lr=interval(1e-5, 1e-2)", "aug=choice(a, b)", "bs=choice(8, 16)", "e=4"]
    )
    with pytest.raises(ConfigError) as refused:
        sweeper._study(storage, where, other)
    message = str(refused.value)
    assert "'knee'" in message and where in message
    assert "lr: tag(log, interval(1e-5, 1e-2)) in the study, interval(1e-5, 1e-2) here" in message
    assert "bs: choice(8, 16) (only in this sweep)" in message
    assert "e=3 in the study, e=4 here" in message and "study_name" in message
    assert "aug" not in space_differences(first.describe(), other.describe())[0]
    sweeper.directions = ["minimize"]
    with pytest.raises(ConfigError, match="created to \\['maximize'\\]"):
        sweeper._study(storage, where, first)


def test_a_storage_in_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        open_storage(str(tmp_path / "no" / "such" / "journal.log"), tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path}/no/knee.db", tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="Cannot create the study's folder"):
        make_study_folder(tmp_path / "file" / "study")
    with pytest.raises(ConfigError, match="Cannot open the study's database"):
        open_storage("nosuchdriver://host/db", tmp_path)
    storage, where = open_storage(f"sqlite:///{tmp_path}/knee.db", tmp_path)  # a database works
    assert optuna.create_study(storage=storage, study_name="s").study_name == "s"


def test_a_storage_in_a_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root ignores the mode: sysfs refuses new files to anyone
        folder = Path("/sys")
        if not folder.is_dir():
            pytest.skip("no read-only folder to try (root, no /sys)")
    try:
        with pytest.raises(ConfigError, match="not writable"):
            open_storage(None, folder)
        with pytest.raises(ConfigError, match="not writable"):
            open_storage(str(folder / "journal.log"), tmp_path)
    finally:
        (tmp_path / "ro").chmod(0o700)


# --------------------------------------------------------------------------- workers (toy task)

TOY = """
import json, os, time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path=".", config_name="toy")
def main(cfg):
    num, start = HydraConfig.get().job.num, time.time()
    time.sleep(cfg.sleep * (cfg.slow_factor if num == cfg.slow_job else 1))
    Path(cfg.out, "trials").mkdir(exist_ok=True)
    record = {"x": cfg.x, "job": num, "pid": os.getpid(), "start": start, "end": time.time()}
    Path(cfg.out, "trials", f"{os.getpid()}-{time.time()}.json").write_text(json.dumps(record))
    return (cfg.x - 1.0) ** 2

if __name__ == "__main__":
    main()
"""

TOY_CONFIG = """
defaults:
  - override hydra/sweeper: osteo_optuna
  - _self_
x: 0.0
sleep: 0.5
slow_job: -1
slow_factor: 1
out: ???
hydra:
  sweep:
    dir: ${out}/study
    subdir: ${hydra.job.num}
  sweeper:
    study_name: toy
    direction: minimize
    n_trials: 6
    sampler:
      _target_: optuna.samplers.RandomSampler
      seed: 0
    params:
      x: interval(-2.0, 2.0)
"""


def _toy(tmp_path: Path, *args: str) -> list[str]:
    (tmp_path / "toy.py").write_text(TOY)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG)
    return [sys.executable, "toy.py", "-m", f"out={tmp_path}", *args]


def _study(folder: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / rundir.STUDY_JOURNAL)))
    return optuna.load_study(study_name=name, storage=storage)


def test_two_workers_share_one_study(tmp_path):
    """Two processes on one study ask for trials as they go: 6 trials in all, no trial number
    or job folder twice, both workers busy."""
    command = _toy(tmp_path, "sleep=1.0")
    workers = [
        subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    trials = _study(tmp_path / "study", "toy").trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["osteo_job"] for t in trials) == list(range(6))
    assert sorted(p.name for p in (tmp_path / "study").iterdir() if p.name.isdigit()) == [
        str(n) for n in range(6)
    ]
    assert len({t.user_attrs["osteo_worker"]["pid"] for t in trials}) == 2
    assert len(list((tmp_path / "trials").iterdir())) == 6  # each trial ran once


def test_a_worker_keeps_n_jobs_trials_running_without_batches(tmp_path):
    """Through the local launcher (two CPU slots), two trials run at once, and a new trial
    starts as soon as one ends, while the slow trial 0 still runs (no batch waits for it)."""
    command = _toy(
        tmp_path, "sleep=1.0", "slow_job=0", "slow_factor=6", "hydra.sweeper.n_trials=3",
        "hydra/launcher=osteo_local", "hydra.launcher.gpus_per_job=0",
        "hydra.launcher.max_parallel=2", "hydra.launcher.threads_per_job=1",
    )  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert tally(_study(tmp_path / "study", "toy").trials).complete == 3
    jobs = {
        r["job"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "trials").iterdir())
    }
    assert sorted(jobs) == [0, 1, 2] and len({r["pid"] for r in jobs.values()}) == 3
    assert jobs[0]["start"] < jobs[1]["end"] and jobs[1]["start"] < jobs[0]["end"]  # at once
    # no batch: trial 2 was launched as soon as trial 1 was told, trial 0 still running
    log = done.stdout if "Trial 0 (job 0)" in done.stdout else done.stderr
    assert log.index("Trial 1 (job 1)") < log.index("\t#2 : ") < log.index("Trial 0 (job 0)")


def test_a_killed_study_started_again_ends_with_exactly_n_trials(tmp_path):
    command = _toy(tmp_path, "sleep=1.0", "hydra.sweeper.n_trials=4")
    first = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (tmp_path / "study" / "2").exists():
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # trial 2 is running
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    assert tally(_study(tmp_path / "study", "toy").trials).running == 1
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = _study(tmp_path / "study", "toy").trials
    count = tally(trials)
    assert (count.complete, count.interrupted, count.running) == (4, 1, 0)
    (interrupted,) = [t for t in trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in trials if t.user_attrs.get("osteo_retry_of") == interrupted.number]
    assert (
        retry.params == interrupted.params and retry.user_attrs["osteo_job"] == interrupted.number
    )
    assert "was interrupted" in second.stderr + second.stdout
    # the killed attempt's folder was set aside; the retry ran in the trial's own folder
    assert (tmp_path / "study" / rundir.ATTEMPTS_DIR / f"{interrupted.number}.1").is_dir()
    results = yaml.safe_load((tmp_path / "study" / rundir.OPTIMIZATION_RESULTS).read_text())
    assert results["n_trials"]["complete"] == 4 and results["best_value"] == min(
        t.value for t in trials if t.value is not None
    )
    # started once more: the study is complete, nothing runs
    third = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and len(_study(tmp_path / "study", "toy").trials) == 5


# --------------------------------------------------------------------------- osteo-train trials


def _sweep(tmp_path: Path, cache_dir: Path, *args: str, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "OSTEO_CACHE_DIR": str(cache_dir), "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "osteolightning.train", *args, f"paths.log_dir={tmp_path}"]
    if popen:
        return subprocess.Popen(command, cwd=tmp_path, env=env, **popen)
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


TINY_STUDY = [
    "-m", "hparams_search=knee_optuna_tiny", "debug=tiny", "hydra.sweeper.n_trials=3",
    "trainer.max_epochs=1", "evaluation.n_resamples=20", "hydra.callbacks.leaderboard.methods=[]",
]  # fmt: skip


def test_a_killed_osteo_train_study_continues_its_trial_from_last_ckpt(
    tmp_path, cache_dir, phantom_dir
):
    """Killed while trial 1 trains (after its first last.ckpt); the same command continues the
    study: trial 1 is retried in its own folder from last.ckpt, and the study ends with its 2
    trials complete."""
    args = [
        *TINY_STUDY,
        "hydra.sweeper.n_trials=2",
        "test=false",
        "hydra.callbacks.leaderboard.enabled=false",
    ]
    first = _sweep(tmp_path, cache_dir, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study_dir = tmp_path / "train" / "studies" / "knee_classifier_tiny"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            finished = (lifecycle.read_marker(study_dir / "0") or {}).get("state") == "finished"
            if finished and (study_dir / "1" / rundir.LAST_CKPT).is_file():
                break
            time.sleep(0.05)
        assert first.poll() is None, "the study ended before it could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    second = _sweep(tmp_path, cache_dir, *args)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    trials = _study(study_dir, "knee_classifier_tiny").trials
    count = tally(trials)
    assert (count.complete, count.interrupted, count.running) == (2, 1, 0)
    complete = [t.user_attrs["osteo_job"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == [0, 1] and not (study_dir / "2").exists()
    marker = lifecycle.read_marker(study_dir / "1")
    assert marker["state"] == "finished" and marker["resumes"] == 1  # continued, not restarted
    record = json.loads((study_dir / "1" / rundir.JOB_RECORD).read_text())
    (retry,) = [t for t in trials if t.user_attrs.get("osteo_retry_of") == 1]
    assert record["value"] == pytest.approx(retry.value)


@pytest.mark.slow
def test_tiny_optuna_study_writes_its_results(tmp_path, cache_dir):
    done = _sweep(tmp_path, cache_dir, "-m", "hparams_search=knee_optuna_tiny", "debug=tiny")
    assert done.returncode == 0, done.stderr[-3000:]
    study_dir = tmp_path / "train" / "studies" / "knee_classifier_tiny"
    results = yaml.safe_load((study_dir / rundir.OPTIMIZATION_RESULTS).read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "data/augment",
        "model/backbone",
    }
    assert 0.0 <= results["best_value"] <= 1.0
    assert all((study_dir / job / "metrics.json").is_file() for job in ("0", "1"))
    assert not (study_dir / "2").exists()
    # the finished study's command again: no trial, and its leaderboard is not rebuilt
    board = sorted((study_dir / "leaderboard").iterdir())
    stamps = [f.stat().st_mtime_ns for f in board]
    again = _sweep(tmp_path, cache_dir, "-m", "hparams_search=knee_optuna_tiny", "debug=tiny")
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "is complete: no trial to run" in output and "not rebuilt" in output
    assert not (study_dir / "2").exists()
    assert [f.stat().st_mtime_ns for f in sorted((study_dir / "leaderboard").iterdir())] == stamps


@pytest.mark.slow
def test_two_osteo_train_workers_share_one_study(tmp_path, cache_dir, phantom_dir):
    args = [*TINY_STUDY[:3], "hydra.sweeper.n_trials=4", *TINY_STUDY[4:]]
    workers = [
        _sweep(
            tmp_path, cache_dir, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    study_dir = tmp_path / "train" / "studies" / "knee_classifier_tiny"
    trials = _study(study_dir, "knee_classifier_tiny").trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["osteo_worker"]["pid"] for t in trials}) == 2
    for job in range(4):
        assert lifecycle.read_marker(study_dir / str(job))["state"] == "finished"


# Two learning rates, one of which AdamW refuses; the brute-force sampler tries both.
FAILING_SEARCH = """\
# @package _global_
defaults:
  - override /hydra/sweeper: osteo_optuna
optimized_metric: val/f1_macro_best
hydra:
  mode: MULTIRUN
  sweep:
    dir: ${paths.log_dir}/${task_name}/studies/failing
  sweeper:
    study_name: failing
    direction: maximize
    n_trials: 2
    sampler:
      _target_: optuna.samplers.BruteForceSampler
      seed: 10
    params:
      model.optimizer.lr: choice(-1.0, 0.001)
"""


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, cache_dir):
    extra = tmp_path / "conf"
    (extra / "hparams_search").mkdir(parents=True)
    (extra / "hparams_search" / "failing.yaml").write_text(FAILING_SEARCH)
    done = _sweep(
        tmp_path,
        cache_dir,
        "hparams_search=failing",
        "debug=tiny",
        f"hydra.searchpath=[file://{extra}]",
        "hydra.callbacks.failed_jobs.exit_code=0",  # a failed trial is part of a search
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study_dir = tmp_path / "train" / "studies" / "failing"
    trials = _study(study_dir, "failing").trials
    by_lr = {t.params["model.optimizer.lr"]: t for t in trials}
    assert by_lr[-1.0].state == TrialState.FAIL and by_lr[0.001].state == TrialState.COMPLETE
    failed, finished = (study_dir / str(by_lr[lr].user_attrs["osteo_job"]) for lr in (-1.0, 0.001))
    assert (failed / rundir.ERROR).is_file() and not (failed / "metrics.json").exists()
    assert (finished / "metrics.json").is_file() and not (finished / rundir.ERROR).exists()
    results = yaml.safe_load((study_dir / rundir.OPTIMIZATION_RESULTS).read_text())
    assert results["best_params"] == {"model.optimizer.lr": 0.001}
    assert results["n_trials"]["failed"] == 1
    assert "recorded as a failed trial" in done.stdout + done.stderr
