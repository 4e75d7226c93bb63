"""How the launchers run jobs: GPU/CPU slots on one machine, SLURM executors, job results that
survive a crashed process, and the requeue of a job signalled before its time limit.

Slots (``hydra/launcher=local``): the visible GPUs are cut into groups of ``gpus_per_job``, one
job per group at a time, each job's process pinned to its group through
``CUDA_VISIBLE_DEVICES``; on CPU, ``max_parallel`` jobs of ``threads_per_job`` threads each
(``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, which torch reads at start). A job is a fresh process
(submitit's LocalExecutor): a crash, an out-of-memory kill or leaked state stays in its job.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from osteolightning.errors import ConfigError
from osteolightning.runs import rundir

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- slots


@dataclass(frozen=True)
class Slot:
    """Where one job runs: its GPUs (``()`` on CPU) and CPU threads."""

    index: int
    gpus: tuple[str, ...]
    threads: int

    def setup(self) -> list[str]:
        """Shell lines that pin a job's process to this slot."""
        gpus = shlex.quote(",".join(self.gpus))
        return [
            f"export CUDA_VISIBLE_DEVICES={gpus}",
            f"export OMP_NUM_THREADS={self.threads} MKL_NUM_THREADS={self.threads}",
        ]


def detect_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set (ids or UUIDs), else
    every device torch counts."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _positive(name: str, value: Any, zero: bool = False) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ConfigError(
            f"Expected `hydra.launcher.{name}` to be null or an integer >= {0 if zero else 1}, "
            f"but got {value!r}."
        )
    return value


def plan_slots(
    gpus_per_job: int | None,
    visible_gpus: list[Any] | None,
    max_parallel: int | None,
    threads_per_job: int | None,
    cpu_count: int | None = None,
) -> list[Slot]:
    """Cut the machine into job slots (see the module docstring).

    Args:
        gpus_per_job: GPUs per job; ``None``: 1 when a GPU is visible, else 0.
        visible_gpus: the GPUs to share out; ``None``: :func:`detect_gpus`.
        max_parallel: at most this many jobs at once; ``None``: as many as the GPUs allow, or
            ``cpu_count // threads_per_job`` on CPU.
        threads_per_job: CPU threads per job; ``None``: the cores shared out between the jobs
            (on CPU without ``max_parallel``: 4 per job, at most the core count).
        cpu_count: cores; ``None``: ``os.cpu_count()``.

    Returns:
        One :class:`Slot` per job that may run at once.

    Raises:
        ConfigError: a negative or zero count, or more GPUs per job than are visible.

    Example:
        >>> [s.gpus for s in plan_slots(1, [0, 1, 2, 3], None, None, 16)]
        [('0',), ('1',), ('2',), ('3',)]
        >>> [(s.gpus, s.threads) for s in plan_slots(0, [], 2, None, 8)]
        [((), 4), ((), 4)]
    """
    max_parallel = _positive("max_parallel", max_parallel)
    threads_per_job = _positive("threads_per_job", threads_per_job)
    gpus_per_job = _positive("gpus_per_job", gpus_per_job, zero=True)
    cores = int(cpu_count or os.cpu_count() or 1)
    visible = [str(g) for g in (detect_gpus() if visible_gpus is None else visible_gpus)]
    if gpus_per_job is None:
        gpus_per_job = 1 if visible else 0
    if gpus_per_job:
        if gpus_per_job > len(visible):
            raise ConfigError(
                f"Expected `hydra.launcher.gpus_per_job` to be at most the number of visible GPUs "
                f"({visible or 'none'}), but got {gpus_per_job}. Set gpus_per_job=0 for CPU jobs."
            )
        groups = [
            tuple(visible[i : i + gpus_per_job]) for i in range(0, len(visible), gpus_per_job)
        ]
        groups = [g for g in groups if len(g) == gpus_per_job][: max_parallel or None]
        threads = threads_per_job or max(1, cores // len(groups))
        return [Slot(i, g, threads) for i, g in enumerate(groups)]
    if max_parallel is None:
        threads = threads_per_job or min(4, cores)
        max_parallel = max(1, cores // threads)
    threads = threads_per_job or max(1, cores // max_parallel)
    return [Slot(i, (), threads) for i in range(max_parallel)]


# --------------------------------------------------------------------------- results


def job_folder(config: Any, num: int) -> Path | None:
    """Job ``num``'s folder when the sweep names job folders by number (Hydra's default)."""
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    return Path(str(config.hydra.sweep.dir)) / str(num) if subdir == "${hydra.job.num}" else None


@dataclass
class Submitted:
    """A job handed to submitit: its job object, number, overrides and slot (local only)."""

    job: Any
    num: int
    overrides: list[str]
    slot: Slot | None = None
    started: float = field(default_factory=time.time)


def job_return(submitted: Submitted, config: Any) -> JobReturn:
    """The job's ``JobReturn``; a process that died without a result (killed, out of memory, a
    requeue refused) becomes a FAILED return and an ``error.json`` in its folder, unless the job
    had finished (its ``.osteo_job.json`` says so), e.g. a signal after the last write."""
    try:
        return submitted.job.results()[0]
    except Exception as err:  # submitit's UncompletedJobError / FailedJobError
        from osteolightning.runs import sweep_resume  # (torch: not in a launcher's import)

        folder = job_folder(config, submitted.num)
        record = sweep_resume.read_job_record(folder) if folder else None
        ret = JobReturn(overrides=list(submitted.overrides))
        if record and record.get("status") == "COMPLETED":
            ret.status, ret.return_value = JobStatus.COMPLETED, record.get("value")
            return ret
        log.error(
            f"Job {submitted.num} ({' '.join(submitted.overrides)}) ended without a result: {err}"
        )
        if folder is not None and not (folder / rundir.ERROR).exists():
            # (a job that died before Hydra made its folder gets one: the sweep lists it failed)
            folder.mkdir(parents=True, exist_ok=True)
            sweep_resume.record_crashed_job(folder, err, submitted.overrides, submitted.num)
        ret.status, ret.return_value = JobStatus.FAILED, err
        return ret


def job_arguments(overrides: list[str], num: int) -> tuple[Any, ...]:
    """The arguments of ``BaseSubmititLauncher.__call__`` for one job."""
    return (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())


# --------------------------------------------------------------------------- local pool


class LocalPool:
    """Runs jobs of one launcher in its slots, one job per slot at a time."""

    def __init__(self, launcher: Any, slots: list[Slot]) -> None:
        self.launcher, self.slots = launcher, slots
        self.busy: dict[int, Submitted] = {}

    def free(self) -> Slot | None:
        for slot in self.slots:
            if slot.index not in self.busy:
                return slot
        return None

    def submit(self, overrides: list[str], num: int) -> Submitted:
        import submitit

        slot = self.free()
        if slot is None:
            raise RuntimeError(f"No free slot for job {num}: all {len(self.slots)} are busy.")
        params = self.launcher.params
        executor = submitit.LocalExecutor(
            folder=params["submitit_folder"], max_num_timeout=int(params["max_num_timeout"])
        )
        executor.update_parameters(
            timeout_min=params["timeout_min"],
            signal_delay_s=params["signal_delay_s"],
            stderr_to_stdout=params["stderr_to_stdout"],
            setup=[*(params.get("setup") or []), *slot.setup()],
        )
        job = executor.submit(self.launcher, *job_arguments(overrides, num))
        devices = ",".join(slot.gpus) or "none"
        log.info(f"\t#{num} : {' '.join(overrides)}  [GPUs {devices}, {slot.threads} threads]")
        self.busy[slot.index] = submitted = Submitted(job, num, list(overrides), slot)
        return submitted

    def done(self, submitted: Submitted) -> bool:
        return submitted.job.done()

    def result(self, submitted: Submitted, config: Any) -> JobReturn:
        try:
            return job_return(submitted, config)
        finally:
            if submitted.slot is not None:
                self.busy.pop(submitted.slot.index, None)

    def run(self, jobs: list[tuple[list[str], int]], config: Any) -> list[JobReturn]:
        """Run all ``(overrides, number)`` jobs, as many at once as there are slots; the
        returns in the order given."""
        queue, running = list(jobs), []
        results: dict[int, JobReturn] = {}
        while queue or running:
            while queue and self.free() is not None:
                overrides, num = queue.pop(0)
                running.append(self.submit(overrides, num))
            finished = [s for s in running if self.done(s)]
            for submitted in finished:
                running.remove(submitted)
                results[submitted.num] = self.result(submitted, config)
            if not finished:
                time.sleep(0.5)
        return [results[num] for _, num in jobs]


# --------------------------------------------------------------------------- SLURM


def slurm_executor(launcher: Any) -> Any:
    """A submitit SLURM executor with the launcher's parameters (as hydra-submitit-launcher
    builds it: shared keys as they are, the others prefixed ``slurm_``)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(launcher.params)
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout", 0),
    )
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    return executor
