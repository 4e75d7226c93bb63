"""A job signalled before its time limit (or pre-empted) is requeued and continues its run.

SLURM signals a submitit job ``signal_delay_s`` seconds before ``--time`` runs out, or when the
job is pre-empted (USR2); submitit then calls the job's ``checkpoint`` method, saves the
submission it returns and requeues it (``scontrol requeue``; the local executor restarts the
process). :func:`requeue_arguments` makes that submission continue the run:

1. ``last.ckpt`` is written now when the run trains in one process (under DDP the periodic one
   is used: a signal handler cannot wait for the other ranks);
2. the run's marker is released (heartbeat stopped, pid and heartbeat cleared), so the
   requeued job may take the run over at once, on any node;
3. the job's overrides get ``resume=<run dir>``: the requeued job writes into the same run
   directory and W&B run and continues from ``last.ckpt``.

Without a ``last.ckpt`` to continue from, the job is not requeued (submitit records it as not
finished; ``resume=auto`` on the sweep, or the Optuna study started again, runs it later).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from osteolightning.runs import checkpoint_requests, lifecycle, rundir, sweep_resume

log = logging.getLogger(__name__)


def _run_dir() -> Path | None:
    ckpt = checkpoint_requests.active_checkpoint()
    if ckpt is not None:
        return rundir.run_of_checkpoint(ckpt)
    if HydraConfig.initialized():
        job_dir = Path(str(HydraConfig.get().runtime.output_dir))
        marker = lifecycle.read_marker(job_dir) or {}
        return Path(marker["resumed_in"]) if marker.get("resumed_in") else job_dir
    return None


def requeue_arguments(overrides: list[str], *rest: Any) -> tuple[Any, ...] | None:
    """The arguments of the requeued job (see the module docstring), or ``None`` not to requeue.

    Args:
        overrides: the job's overrides; the rest of ``BaseSubmititLauncher.__call__``'s arguments
            follow unchanged.
    """
    run_dir = _run_dir()
    saved = checkpoint_requests.request_checkpoint()
    if run_dir is None or not (run_dir / rundir.LAST_CKPT).is_file():
        log.warning(
            f"Signalled before its time limit, but the run in {run_dir} has no "
            f"{rundir.LAST_CKPT} to continue from: not requeued."
        )
        return None
    lifecycle.stop_heartbeat()
    lifecycle.update_marker(
        run_dir, pid=None, heartbeat=None, requeued=time.strftime("%Y-%m-%dT%H:%M:%S%z")
    )
    log.warning(
        f"Signalled before its time limit: {'saved ' + str(saved) if saved else 'last.ckpt kept'}; "
        f"the job is requeued and continues the run in {run_dir}."
    )
    kept = sweep_resume.strip_resume(overrides)[0]
    return ([*kept, sweep_resume.resume_override(run_dir)], *rest)
