"""Multirun jobs that fail without stopping the sweep, and W&B runs that never outlive their job.

In a Hydra multirun (``osteo-train -m ...``, the Optuna sweeper, the SLURM launcher) every job
is its own run directory. A job that raises is recorded by :func:`record_failed_job`: its
exception and traceback go to the log and to ``error.json`` in the job's directory, so a
leaderboard (or a person) can list the failed jobs from the files alone, and
:class:`FailedJobsExitStatus` makes the multirun exit with status 1 once all jobs have run::

    {"error": "...", "type": "osteolightning.errors.ConfigError", "traceback": "...",
     "overrides": ["model/backbone=xception", "seed=1"], "job_num": 3, "run_dir": "...", ...}
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from osteolightning.runs import lifecycle, rundir
from osteolightning.runs.failures import log_failure
from osteolightning.utils.files import atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def record_failed_job(error: BaseException, cfg: DictConfig | None = None) -> dict[str, Any]:
    """Log a failed multirun job and write its ``error.json`` (atomically, rank zero only).

    The file goes into the job's Hydra directory (``hydra.runtime.output_dir``); when the job
    had continued another run (``resume=...``), a copy also goes into that run directory, and
    that run's marker records the error (its state stays ``running``, so ``resume=auto`` can
    still continue it once the cause is fixed).

    Args:
        error: the exception the job raised.
        cfg: the job's config (for the run directory); optional.

    Returns:
        The record written to ``error.json``.
    """
    lifecycle.stop_heartbeat()  # the failed run is over: resume may take it at once
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    job_dir = Path(hydra_cfg.runtime.output_dir)
    run_dir = Path(cfg.paths.output_dir) if cfg is not None and "paths" in cfg else job_dir
    record = {
        "error": str(error),
        "type": f"{type(error).__module__}.{type(error).__qualname__}",
        "traceback": "".join(traceback.format_exception(error)),
        "overrides": overrides,
        "job_num": hydra_cfg.job.get("num"),
        "job_dir": str(job_dir),
        "run_dir": str(run_dir),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if rank_zero_only.rank != 0:
        return record
    message = (
        f"Job {record['job_num']} ({' '.join(overrides) or 'no overrides'}) failed: "
        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
        f"[{job_dir / rundir.ERROR}]; the sweep goes on."
    )
    log_failure(log, error, message)
    atomic_write_json(job_dir / rundir.ERROR, record)
    if run_dir.resolve() != job_dir.resolve() and run_dir.is_dir():
        atomic_write_json(run_dir / rundir.ERROR, record)
    if lifecycle.read_marker(run_dir) is not None:
        lifecycle.update_marker(run_dir, last_error=f"{record['type']}: {record['error']}"[:500])
    return record


def describe_error(record: dict[str, Any], message: bool = True) -> str:
    """``"ValueError: <first line of the message>"`` (``message=False``: the type alone) of
    an ``error.json`` record."""
    kind = str(record.get("type") or "error").rsplit(".", 1)[-1]
    lines = str(record.get("error") or "").strip().splitlines()
    return f"{kind}: {lines[0] if lines else ''}".strip() if message else kind


def failed_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The ``error.json`` records of a multirun directory's jobs, in job order.

    Args:
        sweep_dir: the multirun directory (``hydra.sweep.dir``), holding one folder per job.

    Returns:
        One record per failed job (see :func:`record_failed_job`); an unreadable file gives a
        record with its ``error`` saying so.
    """
    records = []
    for path in sorted(Path(sweep_dir).glob(f"*/{rundir.ERROR}")):
        record = rundir.read_json(path)
        if not isinstance(record, dict):
            record = {"error": f"unreadable {path}", "job_dir": str(path.parent)}
        records.append(record)
    return sorted(records, key=lambda r: (r.get("job_num") is None, r.get("job_num") or 0))


class FailedJobsExitStatus(HydraCallback):
    """Hydra callback: a multirun in which a job failed exits with ``exit_code`` at the very
    end, after every job has run and the leaderboard is written, so a script, a CI step or a
    SLURM dependency (``afterok``) sees the failure; a job's failure never stops the others.

    Configured first under ``hydra.callbacks`` in ``osteolightning/conf/hydra/default.yaml``:
    Hydra calls ``on_multirun_end`` in reverse order, so this one runs last.

    Args:
        exit_code: the status of a multirun with failed jobs; 0 exits as if all had finished
            (``hydra.callbacks.failed_jobs.exit_code=0``).
    """

    def __init__(self, exit_code: int = 1) -> None:
        self.exit_code = int(exit_code)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = failed_jobs(str(config.hydra.sweep.dir))
        if not failed:
            return
        jobs = ", ".join(f"{r.get('job_num', '?')} ({describe_error(r, False)})" for r in failed)
        log.error(
            f"{len(failed)} job(s) of the sweep in {config.hydra.sweep.dir} failed: {jobs}; "
            f"each job's error.json holds its error and overrides, the other jobs' results are "
            f"intact. Exit status {self.exit_code}."
        )
        if self.exit_code:
            # Hydra turns a callback's exceptions into warnings; SystemExit gets through
            raise SystemExit(self.exit_code)
