"""The launchers: ``hydra/launcher=osteo_local`` (conf: ``hydra/launcher=local``) and
``hydra/launcher=slurm`` (hydra-submitit-launcher's SLURM launcher, requeue-aware).

Both run each job through submitit in its own process and add, for the Optuna sweeper, an
asynchronous interface (``submit``/``done``/``result``, ``max_parallel``), so a study keeps
``n_jobs`` trials running with no batches; and a ``checkpoint`` that requeues a job signalled
before its time limit into the same run (``_requeue.py``). Thin classes Hydra finds by
scanning; submitit and the rest are imported when a sweep launches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    SlurmLauncher,
)

log = logging.getLogger(__name__)


class _Requeueable:
    """submitit calls ``checkpoint`` in a job signalled before its time limit (or pre-empted)."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        from hydra_plugins.osteo_sweeps._requeue import requeue_arguments

        arguments = requeue_arguments(*args)
        if arguments is None:
            return None
        return submitit.helpers.DelayedSubmission(self, *arguments, **kwargs)


class OsteoLocalLauncher(_Requeueable, BaseSubmititLauncher):
    """Jobs in parallel processes on this machine, each in its own GPU/CPU slot.

    Arguments as :class:`hydra_plugins.osteo_sweeps.config.LocalLauncherConf`; slots are
    described in :mod:`hydra_plugins.osteo_sweeps._launch`.
    """

    _EXECUTOR = "local"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._pool: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"] = None  # each job gets the launcher, not the pool of running jobs
        return state

    @property
    def pool(self) -> Any:
        if self._pool is None:
            from hydra_plugins.osteo_sweeps._launch import LocalPool, plan_slots

            p = self.params
            slots = plan_slots(
                p.get("gpus_per_job"), p.get("visible_gpus"), p.get("max_parallel"),
                p.get("threads_per_job"),
            )  # fmt: skip
            self._pool = LocalPool(self, slots)
        return self._pool

    @property
    def max_parallel(self) -> int:
        return len(self.pool.slots)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.launch_numbered(
            [(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
        )

    def launch_numbered(self, jobs: list[tuple[list[str], int]]) -> list[JobReturn]:
        return self.pool.run(jobs, self.config)

    def submit(self, overrides: list[str], num: int) -> Any:
        return self.pool.submit(overrides, num)

    def done(self, submitted: Any) -> bool:
        return self.pool.done(submitted)

    def result(self, submitted: Any) -> JobReturn:
        return self.pool.result(submitted, self.config)


class OsteoSlurmLauncher(_Requeueable, SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher (same config, ``submitit_slurm``), whose jobs
    continue their run when requeued after a time limit or a pre-emption
    (``max_num_timeout``), whose crashed jobs do not stop the sweep, and which the Optuna
    sweeper can keep ``n_jobs`` trials running on (one SLURM job per trial)."""

    @property
    def max_parallel(self) -> int:
        return int(self.params.get("array_parallelism") or 1)

    def _executor(self) -> Any:
        from hydra_plugins.osteo_sweeps._launch import slurm_executor

        return slurm_executor(self)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.launch_numbered(
            [(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
        )

    def launch_numbered(self, jobs: list[tuple[list[str], int]]) -> list[JobReturn]:
        from hydra_plugins.osteo_sweeps._launch import Submitted, job_arguments, job_return

        arguments = [job_arguments(o, n) for o, n in jobs]
        executor = self._executor()
        log.info(f"Submitit 'slurm' sweep output dir : {self.config.hydra.sweep.dir}")
        for overrides, num in jobs:
            log.info(f"\t#{num} : {' '.join(overrides)}")
        submitted = executor.map_array(self, *zip(*arguments, strict=True))
        return [
            job_return(Submitted(job, n, o), self.config)
            for job, (o, n) in zip(submitted, jobs, strict=True)
        ]

    def submit(self, overrides: list[str], num: int) -> Any:
        from hydra_plugins.osteo_sweeps._launch import Submitted, job_arguments

        job = self._executor().submit(self, *job_arguments(overrides, num))
        return Submitted(job, num, list(overrides))

    def done(self, submitted: Any) -> bool:
        return submitted.job.done()

    def result(self, submitted: Any) -> JobReturn:
        from hydra_plugins.osteo_sweeps._launch import job_return

        return job_return(submitted, self.config)
