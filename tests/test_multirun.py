"""Multiruns: a failed job does not stop the sweep, W&B groups a sweep's jobs and closes each
job's run, the SLURM / local submitit launcher configs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from osteolightning.errors import DataSourceError
from osteolightning.runs import lifecycle
from osteolightning.runs.lifecycle import finish_wandb
from osteolightning.runs.rundir import ERROR as ERROR_FILE
from osteolightning.runs.sweep import failed_jobs
from osteolightning.train import optimized_value, run_job
from osteolightning.utils.config import CONFIG_DIR, sweep_group, sweep_job_name

REPO = Path(__file__).resolve().parents[1]


def compose_job(
    tmp_path: Path,
    cache_dir: Path,
    overrides: list[str],
    mode: RunMode = RunMode.MULTIRUN,
    num: int = 3,
) -> DictConfig:
    """A job's config as Hydra hands it to the task function, in ``mode``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    sweep_dir = tmp_path / "multiruns" / "2026-11-24_01-00-00_000001"
    job_dir = sweep_dir / str(num)
    with open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.sweep.dir = str(sweep_dir)
        cfg.hydra.job.num = num
        cfg.hydra.overrides.task = overrides
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(job_dir)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.paths.log_dir = str(tmp_path / "logs")
    job_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_sweep_group_and_job_name_resolvers(tmp_path, cache_dir, clear_hydra):
    cfg = compose_job(tmp_path, cache_dir, ["debug=tiny", "logger=default", "seed=1"])
    assert sweep_group("train") == "2026-11-24_01-00-00_000001"
    assert sweep_job_name("x") == "3-debug=tiny,logger=default,seed=1"
    assert cfg.logger.wandb.group == "2026-11-24_01-00-00_000001"
    assert cfg.logger.wandb.name == "3-debug=tiny,logger=default,seed=1"
    single = compose_job(tmp_path, cache_dir, ["debug=tiny", "logger=default"], RunMode.RUN)
    assert single.logger.wandb.group == "train"  # a single run keeps its group
    assert single.logger.wandb.name.startswith("train-2")


def test_sweep_group_does_not_change_the_config_hash(tmp_path, cache_dir, clear_hydra):
    """A sweep started again (another timestamp, so another group) still finds its killed jobs
    with resume=auto: the group is left out of the config hash, like the run name."""
    # resolved while each job's HydraConfig is the current one
    sweep = compose_job(tmp_path, cache_dir, ["debug=tiny", "logger=default"])
    sweep_group_name, sweep_hash = (
        sweep.logger.wandb.group,
        lifecycle.config_hash(lifecycle.hashed_config(sweep)),
    )
    single = compose_job(tmp_path, cache_dir, ["debug=tiny", "logger=default"], RunMode.RUN)
    assert single.logger.wandb.group == "train" != sweep_group_name
    assert lifecycle.config_hash(lifecycle.hashed_config(single)) == sweep_hash


def test_failed_multirun_job_writes_error_json_and_returns_none(tmp_path, cache_dir, clear_hydra):
    empty = tmp_path / "no-images"
    empty.mkdir()
    overrides = ["debug=tiny", "data=folder", f"data.root={empty}"]
    cfg = compose_job(tmp_path, cache_dir, overrides)
    assert run_job(cfg) is None
    job_dir = Path(cfg.paths.output_dir)
    record = json.loads((job_dir / ERROR_FILE).read_text())
    assert record["type"] == "osteolightning.errors.DataSourceError"
    assert str(empty) in record["error"]
    assert record["overrides"] == overrides and record["job_num"] == 3
    assert "Traceback" in record["traceback"] and "DataSourceError" in record["traceback"]
    marker = lifecycle.read_marker(job_dir)
    # failed before its first checkpoint: nothing to continue, so not left `running` (issue 11)
    assert marker["state"] == "failed"
    assert "DataSourceError" in marker["last_error"]
    assert [r["job_num"] for r in failed_jobs(job_dir.parent)] == [3]


def test_single_run_raises_as_before(tmp_path, cache_dir, clear_hydra):
    empty = tmp_path / "no-images"
    empty.mkdir()
    cfg = compose_job(
        tmp_path, cache_dir, ["debug=tiny", "data=folder", f"data.root={empty}"], RunMode.RUN
    )
    with pytest.raises(DataSourceError):
        run_job(cfg)
    assert not (Path(cfg.paths.output_dir) / ERROR_FILE).exists()


def test_optimized_value():
    metrics = {"val/f1_macro_best": 0.5, "test/acc": float("nan"), "method": "x"}
    assert optimized_value(metrics, "val/f1_macro_best") == 0.5
    assert optimized_value(metrics, "test/acc") is None  # Optuna: a failed trial
    assert optimized_value(metrics, "val/nope") is None
    assert optimized_value(metrics, None) is None


def test_finish_wandb_is_safe_without_a_run():
    finish_wandb(exit_code=1)  # no run open (or wandb never imported): nothing happens


def test_slurm_launcher_config_matches_the_trainer(clear_hydra):
    from hydra_plugins.osteo_sweeps.launchers import OsteoSlurmLauncher

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.devices=8",
                "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
        default = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("osteo_sweeps.launchers.OsteoSlurmLauncher")
    # one task per GPU: Lightning's SLURMEnvironment requires devices == ntasks-per-node
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert launcher.partition == "gpu" and launcher.timeout_min > 0
    assert (default.hydra.launcher.nodes, default.hydra.launcher.tasks_per_node) == (1, 1)
    params = OmegaConf.to_container(launcher, resolve=True)
    instance = OsteoSlurmLauncher(**{k: v for k, v in params.items() if k != "_target_"})
    assert instance.params["partition"] == "gpu"


# --------------------------------------------------------------------------- end to end


def _wandb_records(path: Path):
    """The records of an offline W&B run file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, buffer = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        buffer += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(buffer)
            buffer = b""
            yield record


def _offline_run(job_dir: Path) -> dict:
    (run_file,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    out: dict = {"exit": None}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(
                id=record.run.run_id, group=record.run.run_group, name=record.run.display_name
            )
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out


def _osteo_train(tmp_path: Path, cache_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OSTEO_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_SILENT": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "osteolightning.train", "-m", *args, f"paths.log_dir={tmp_path}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_multirun_survives_a_failed_job_and_groups_wandb_runs(tmp_path, cache_dir):
    # job 0 fails inside fit (a learning rate of 1e20: the loss is NaN at the second step;
    # a negative one is refused before the run starts), job 1 trains
    done = _osteo_train(
        tmp_path, cache_dir, "debug=tiny", "logger=default", "model.optimizer.lr=1e20,0.001"
    )
    # both jobs ran and the leaderboard was written; then the sweep exits with status 1
    assert done.returncode == 1, done.stderr[-3000:]
    assert "1 job(s) of the sweep" in done.stdout + done.stderr
    (sweep_dir,) = (tmp_path / "train" / "multiruns").iterdir()
    assert (sweep_dir / "leaderboard" / "leaderboard.csv").is_file()
    failed, ok = sweep_dir / "0", sweep_dir / "1"
    record = json.loads((failed / ERROR_FILE).read_text())
    assert record["type"] == "builtins.FloatingPointError"
    assert "training loss became nan" in record["error"]
    assert "model.optimizer.lr=1e+20" in record["overrides"]  # as Hydra renders it
    output = done.stdout + done.stderr
    assert "Job 0 (" in output and "failed: FloatingPointError" in output
    assert (ok / "metrics.json").is_file() and not (ok / ERROR_FILE).exists()
    assert (ok / "val_predictions.csv").is_file()
    assert lifecycle.read_marker(ok)["state"] == "finished"
    first, second = _offline_run(failed), _offline_run(ok)
    assert first["id"] != second["id"]  # the second job's run is not the first's
    assert first["group"] == second["group"] == sweep_dir.name
    assert first["name"].startswith("0-") and second["name"].startswith("1-")
    assert "model.optimizer.lr=0.001" in second["name"]
    assert (first["exit"], second["exit"]) == (1, 0)  # both runs closed; the failed one failed


@pytest.mark.slow
def test_multirun_on_the_local_submitit_launcher(tmp_path, cache_dir):
    done = _osteo_train(tmp_path, cache_dir, "debug=tiny", "hydra/launcher=local", "seed=0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "train" / "multiruns").iterdir()
    for job in ("0", "1"):
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert "val/f1_macro_best" in metrics and metrics["test/n"] > 0
    assert list((sweep_dir / ".submitit").iterdir())  # submitit's per-job folders


def test_a_sweep_keeps_the_best_jobs_weights_says_its_disk_use_and_rebuilds_only_on_change(
    tmp_path, cache_dir
):
    """Two finished jobs, keep_best_k=1: the job with the better validation value (the one its
    checkpoint was chosen on) keeps its best weights, the other none; no job keeps last.ckpt;
    the leaderboard, which reads predictions, has both; disk.json says what is left."""
    done = _osteo_train(
        tmp_path, cache_dir, "debug=tiny", "seed=0,1", "hydra.callbacks.checkpoints.keep_best_k=1"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "train" / "multiruns").iterdir()
    key = "val/f1_macro_best"  # debug=tiny's monitor, val/f1_macro
    scores = {j: json.loads((sweep_dir / j / "metrics.json").read_text())[key] for j in "01"}
    best = max(scores, key=scores.get)
    for job in "01":
        ckpts = sorted(p.name for p in (sweep_dir / job / "checkpoints").iterdir())
        if job == best:
            assert len(ckpts) == 1 and ckpts[0].startswith("epoch_"), ckpts
        else:
            assert ckpts == [], ckpts
        assert (sweep_dir / job / "predictions.csv").is_file()
    disk = json.loads((sweep_dir / "disk.json").read_text())
    assert disk["kept"] == [best] and disk["removed"] == [str(1 - int(best))]
    assert disk["after"]["checkpoints"] == 1 and disk["after"]["resumable_checkpoints"] == 0
    assert disk["after"]["bytes"] < disk["before"]["bytes"]
    rows = (sweep_dir / "leaderboard" / "leaderboard.csv").read_text()
    assert "2/2" in rows or ",2," in rows
    assert "Sweep disk use:" in done.stdout + done.stderr
    # the finished sweep's end run again: nothing changed, nothing rebuilt; a job's
    # predictions changed, the leaderboard follows
    import hydra as _hydra

    config = OmegaConf.load(sweep_dir / "multirun.yaml")
    with open_dict(config):
        config.hydra.sweep.dir = str(sweep_dir)
    callback = _hydra.utils.instantiate(config.hydra.callbacks.leaderboard)
    board = sweep_dir / "leaderboard" / "leaderboard.csv"
    built = board.stat().st_mtime_ns
    callback.on_multirun_end(config)
    assert board.stat().st_mtime_ns == built
    # ... and the whole command again (resume=auto): no job runs, it says the sweep is complete
    again = _osteo_train(
        tmp_path,
        cache_dir,
        "debug=tiny",
        "seed=0,1",
        "hydra.callbacks.checkpoints.keep_best_k=1",
        "resume=auto",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "is complete: all 2 jobs had finished; none ran" in output and "not rebuilt" in output
    assert board.stat().st_mtime_ns == built
    assert [p.name for p in (tmp_path / "train" / "multiruns").iterdir()] == [sweep_dir.name]
    predictions = sweep_dir / "0" / "predictions.csv"
    predictions.write_text(predictions.read_text().replace("\n", "\r\n", 1))
    callback.on_multirun_end(config)
    assert board.stat().st_mtime_ns > built
