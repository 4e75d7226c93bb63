"""Multiruns that continue where they were killed: plan each job from its folder's files.

A multirun job is a folder of the multirun directory (``<sweep>/<n>/``) holding a run (its
``.osteo_run.json`` marker, :mod:`osteolightning.runs.lifecycle`). When a sweep is started again
(``osteo-train -m ... resume=auto``, a retried Optuna trial, a requeued SLURM job), each job is
planned from that folder alone (:func:`plan_job`):

* ``skip``: the run has ``finished``;
* ``busy``: a live process still runs it (on this host its pid, elsewhere its heartbeat);
* ``continue``: it was killed after its first ``checkpoints/last.ckpt``: it runs again with
  ``resume=<job folder>``, into the same folder and W&B run;
* ``run``: nothing there yet, or a killed attempt without a checkpoint, which is set aside into
  ``<sweep>/.attempts/`` so the job starts clean.

:func:`find_multirun` finds the multirun directory a ``resume=auto`` sweep continues (the newest
with the same overrides). :class:`JobRecorder` (a Hydra callback) writes ``.osteo_job.json`` in
every multirun job: host, pid, ``CUDA_VISIBLE_DEVICES``, threads, start and end times and the
value the job returned, so a sweep started again knows what a job returned even when the process
that launched it is gone.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from osteolightning.runs import lifecycle, rundir
from osteolightning.utils.files import atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

RUN, CONTINUE, SKIP, BUSY = "run", "continue", "skip", "busy"


# --------------------------------------------------------------------------- overrides


def override_key(override: str) -> str:
    """The key of ``[+|++|~]key=value`` (``model/backbone=x`` → ``model/backbone``)."""
    return override.split("=", 1)[0].lstrip("+~")


def strip_resume(overrides: Sequence[str]) -> tuple[list[str], str | None]:
    """``overrides`` without ``resume=...``, and the value it had (``None`` if absent)."""
    kept, value = [], None
    for override in overrides:
        if override_key(override) == "resume":
            value = override.split("=", 1)[1] if "=" in override else None
        else:
            kept.append(override)
    return kept, value


def resume_override(run_dir: str | Path) -> str:
    """``resume='<run dir>'`` in Hydra's override grammar (quoted, so any path parses)."""
    text = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    return f"resume='{text}'"


# --------------------------------------------------------------------------- finding a sweep


def save_multirun(sweep_dir: str | Path, config: DictConfig) -> Path:
    """Write the sweep's ``multirun.yaml`` (the config with its ``hydra`` node, as Hydra's own
    sweepers do) unless it is there: a continued sweep keeps the record of its start.

    Returns:
        The file.
    """
    path = Path(sweep_dir) / rundir.MULTIRUN
    if not path.exists():
        OmegaConf.save(config, path)
    return path


def multirun_overrides(multirun_yaml: str | Path) -> list[str] | None:
    """The task overrides a multirun was started with (its ``multirun.yaml``), or ``None``."""
    try:
        saved = yaml.safe_load(Path(multirun_yaml).read_text())
        task = saved["hydra"]["overrides"]["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return [str(o) for o in task] if isinstance(task, list) else None


def find_multirun(root: str | Path, overrides: Sequence[str]) -> Path | None:
    """The newest multirun directory under ``root`` started with the same overrides.

    Args:
        root: the folder holding multirun directories (``logs/<task>/multiruns``).
        overrides: this sweep's task overrides; ``resume=...`` is ignored on both sides, and
            so is their order.

    Returns:
        The directory (holding ``multirun.yaml``), or ``None``.
    """
    wanted = sorted(strip_resume(overrides)[0])
    found = []
    for path in Path(root).glob(f"*/{rundir.MULTIRUN}"):
        task = multirun_overrides(path)
        if task is not None and sorted(strip_resume(task)[0]) == wanted:
            found.append((path.parent.name, path.parent))
    return max(found)[1] if found else None


# --------------------------------------------------------------------------- planning a job


@dataclass(frozen=True)
class JobPlan:
    """What to do with one job folder of a sweep that starts again.

    Attributes:
        action: ``run``, ``continue``, ``skip`` or ``busy`` (see the module docstring).
        job_dir: the job's folder.
        reason: why, in words (for the log).
        set_aside: ``run`` over a killed attempt: that attempt is moved out of the way first.
    """

    action: str
    job_dir: Path
    reason: str
    set_aside: bool = False


def plan_job(job_dir: str | Path, overrides: Sequence[str] | None = None) -> JobPlan:
    """Plan one job of a sweep that starts again, from its folder's files (see module docstring).

    With ``overrides`` (the job's planned overrides), a folder whose run was launched with other
    overrides (``.hydra/overrides.yaml``, ``resume`` aside) is not this job's: it is set aside and
    the job runs. A nested cross-validation plans its outer jobs from its inner results, so a
    rerun inner job can change an outer job's recipe.
    """
    job_dir = Path(job_dir)
    if not job_dir.exists():
        return JobPlan(RUN, job_dir, "not started yet")
    saved = job_dir / ".hydra" / "overrides.yaml"
    if overrides is not None and saved.is_file():
        before = strip_resume([str(o) for o in yaml.safe_load(saved.read_text()) or []])[0]
        if sorted(before) != sorted(strip_resume(overrides)[0]):
            return JobPlan(
                RUN,
                job_dir,
                f"its folder holds a run of other overrides ({' '.join(before)}); "
                "that run is set aside",
                set_aside=True,
            )
    marker = lifecycle.read_marker(job_dir)
    state = (marker or {}).get("state")
    if state == "finished":
        return JobPlan(SKIP, job_dir, "finished")
    if state == "running" and lifecycle.alive_elsewhere(marker):  # the resume rule of lifecycle.py
        return JobPlan(BUSY, job_dir, f"still running ({lifecycle._owner(marker)})")
    if state == "running" and (job_dir / rundir.LAST_CKPT).is_file():
        return JobPlan(CONTINUE, job_dir, f"killed; continues from {rundir.LAST_CKPT}")
    if not any(job_dir.iterdir()):
        return JobPlan(RUN, job_dir, "empty folder")
    why = "killed before its first checkpoint" if state == "running" else "no run in it"
    return JobPlan(RUN, job_dir, f"{why}; the attempt is set aside", set_aside=True)


def set_aside(path: str | Path) -> Path:
    """Move a job folder (or one of its files) into ``<sweep>/.attempts/<name>.<k>``."""
    path = Path(path)
    job_dir = path if path.is_dir() else path.parent
    attempts = job_dir.parent / rundir.ATTEMPTS_DIR
    attempts.mkdir(exist_ok=True)
    stem = job_dir.name if path.is_dir() else f"{job_dir.name}.{path.name}"
    k = 1
    while (attempts / f"{stem}.{k}").exists():
        k += 1
    target = attempts / f"{stem}.{k}"
    shutil.move(str(path), str(target))
    return target


def prepare_job(plan: JobPlan, overrides: Sequence[str]) -> list[str] | None:
    """Carry out ``plan`` for a job about to be launched with ``overrides``.

    Returns:
        The job's overrides (``resume`` dropped; ``resume=<job folder>`` added to continue), or
        ``None`` for a job not to launch (``skip``, ``busy``).
    """
    kept = strip_resume(overrides)[0]
    if plan.action in (SKIP, BUSY):
        return None
    if plan.action == CONTINUE:
        error = plan.job_dir / rundir.ERROR
        if error.is_file():  # the earlier attempt's failure: not this attempt's
            set_aside(error)
        return [*kept, resume_override(plan.job_dir)]
    if plan.set_aside:
        log.info(f"Setting the killed attempt in {plan.job_dir} aside: {set_aside(plan.job_dir)}")
    return kept


# --------------------------------------------------------------------------- job records


def read_job_record(job_dir: str | Path) -> dict[str, Any] | None:
    """A job folder's ``.osteo_job.json`` (see :class:`JobRecorder`), or ``None``."""
    record = rundir.read_json(Path(job_dir) / rundir.JOB_RECORD)
    return record if isinstance(record, dict) else None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class JobRecorder(HydraCallback):
    """Hydra callback: every multirun job writes ``.osteo_job.json`` into its folder.

    At the start: job number, overrides, host, pid, ``CUDA_VISIBLE_DEVICES``, the number of
    torch threads and ``started`` (epoch seconds); at the end also ``ended``, ``status``
    (``COMPLETED``/``FAILED``) and ``value`` (what the task returned, a finite float or
    ``null``). Configured in ``osteolightning/conf/hydra/default.yaml``
    (``hydra.callbacks.job_record``).
    """

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._active(config):
            return
        import torch

        self._write(
            config,
            fresh=True,  # an earlier attempt's end and value do not describe this one
            job_num=config.hydra.job.get("num"),
            overrides=list(config.hydra.overrides.task),
            host=socket.gethostname(),
            pid=os.getpid(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            threads=torch.get_num_threads(),
            started=time.time(),
        )

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if not self._active(config) or job_return is None:
            return
        status = getattr(job_return.status, "name", str(job_return.status))
        value = job_return._return_value if status == "COMPLETED" else None
        self._write(config, ended=time.time(), status=status, value=_finite(value))

    @staticmethod
    def _active(config: DictConfig) -> bool:
        from hydra.types import RunMode

        return config.hydra.get("mode") == RunMode.MULTIRUN and rank_zero_only.rank == 0

    @staticmethod
    def _write(config: DictConfig, fresh: bool = False, **fields: Any) -> None:
        job_dir = Path(str(config.hydra.runtime.output_dir))
        try:
            record = {} if fresh else read_job_record(job_dir) or {}
            atomic_write_json(job_dir / rundir.JOB_RECORD, {**record, **fields})
        except OSError as err:  # bookkeeping must never fail a job
            log.warning(f"Could not write {job_dir / rundir.JOB_RECORD}: {err}")


def record_crashed_job(
    job_dir: str | Path, error: BaseException, overrides: Sequence[str], job_num: int
) -> None:
    """``error.json`` for a job whose process died without writing its own (killed, out of
    memory, a segfault): the same fields as :func:`osteolightning.runs.sweep.record_failed_job`
    writes, from the launcher's side."""
    job_dir = Path(job_dir)
    record = {
        "error": str(error),
        "type": f"{type(error).__module__}.{type(error).__qualname__}",
        "traceback": str(error),
        "overrides": list(overrides),
        "job_num": job_num,
        "job_dir": str(job_dir),
        "run_dir": str(job_dir),
        "host": socket.gethostname(),
        "pid": None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        atomic_write_json(job_dir / rundir.ERROR, record)
    except OSError as err:
        log.warning(f"Could not write {job_dir / rundir.ERROR}: {err}")
