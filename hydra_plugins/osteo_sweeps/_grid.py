"""A grid multirun that continues where it was killed: ``osteo-train -m ... resume=auto``.

``resume=auto`` on a multirun means *this sweep*: the newest multirun directory under
``hydra.sweep.dir``'s parent (``logs/<task>/multiruns/``) started with the same overrides
(``resume`` aside, in any order), or the one ``hydra.sweep.dir=...`` names. Its jobs keep their
numbers and folders; each is planned from its folder (:func:`osteolightning.runs.sweep_resume.plan_job`):
finished jobs are skipped, jobs still running elsewhere are left alone, killed ones continue from
their ``last.ckpt`` (``resume=<job folder>``), the rest run. The leaderboard callback then
rebuilds ``<multirun>/leaderboard/`` over all of them. With no such multirun, the sweep starts
fresh in a new directory (logged) and its jobs start fresh (``resume`` is not passed on).

A sweep that does not resume never starts over another sweep's jobs: when a job's folder
(``hydra.sweep.dir=<an earlier sweep>``) already holds a run's results, the sweep is refused
before any job, so Hydra writes neither that job's ``.hydra/`` nor its log, and nothing of the
earlier sweep (its markers, ``error.json``, leaderboard) changes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from osteolightning.errors import ConfigError, shorten
from osteolightning.runs import rundir, sweep_resume

log = logging.getLogger(__name__)


def redirect_sweep_dir(config: DictConfig, sweep_dir: str | Path, launcher: Any = None) -> None:
    """Point a multirun at ``sweep_dir``: the config the callbacks read (leaderboard, exit
    status), the hydra overrides each job's config is composed from, and a submitit
    launcher's log folder (resolved from the old sweep dir when the launcher was made)."""
    old = str(config.hydra.sweep.dir)
    params = getattr(launcher, "params", None)
    if isinstance(params, dict) and str(params.get("submitit_folder", "")).startswith(old):
        params["submitit_folder"] = str(sweep_dir) + params["submitit_folder"][len(old) :]
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = str(sweep_dir)
        text = str(sweep_dir).replace("\\", "\\\\").replace("'", "\\'")
        config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{text}'")


def _given_sweep_dir(config: DictConfig) -> bool:
    return any(
        sweep_resume.override_key(str(o)) == "hydra.sweep.dir" for o in config.hydra.overrides.hydra
    )


def previous_sweep(config: DictConfig) -> Path | None:
    """The multirun directory a ``resume=auto`` grid continues, or ``None`` (see module docstring).

    Raises:
        ConfigError: ``hydra.sweep.dir`` names a multirun started with other overrides.
    """
    sweep_dir = Path(str(config.hydra.sweep.dir))
    task = [str(o) for o in config.hydra.overrides.task]
    if not _given_sweep_dir(config):
        return sweep_resume.find_multirun(sweep_dir.parent, task)
    if not (sweep_dir / rundir.MULTIRUN).is_file():
        return None
    if sweep_resume.find_multirun(sweep_dir.parent, task) != sweep_dir:
        saved = sweep_resume.multirun_overrides(sweep_dir / rundir.MULTIRUN) or []
        raise ConfigError(
            f"Cannot resume the multirun in {sweep_dir}: it was started with the overrides "
            f"{sweep_resume.strip_resume(saved)[0]}, this sweep has "
            f"{sweep_resume.strip_resume(task)[0]}. Resume it with its own overrides, or leave "
            "hydra.sweep.dir unset to start a new sweep."
        )
    return sweep_dir


def job_dir(sweeper: Any, overrides: Sequence[str], num: int) -> Path:
    """The folder job ``num`` of the sweep writes into (``hydra.sweep.dir``/``hydra.sweep.subdir``)."""
    config = sweeper.config
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if subdir == "${hydra.job.num}":
        return Path(str(config.hydra.sweep.dir)) / str(num)
    job_cfg = sweeper.hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_cfg):
        job_cfg.hydra.job.num, job_cfg.hydra.job.id = num, num
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job_cfg)  # a subdir may read ${hydra:job.override_dirname}
    try:
        return Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
    finally:
        HydraConfig.instance().cfg = previous


def check_fresh_jobs(sweep_dir: str | Path, folders: Iterable[Path]) -> None:
    """Raise when one of ``folders`` (the job folders of a sweep that does not resume) holds a
    run's results.

    Raises:
        ConfigError: naming the sweep, the taken job folders and what they hold.
    """
    taken = []
    for folder in folders:
        held = [name for name in rundir.RESULTS if (folder / name).exists()]
        if held:
            taken.append(f"{folder} ({', '.join(held)})")
    if taken:
        raise ConfigError(
            f"The multirun directory '{sweep_dir}' already holds results of "
            f"{len(taken)} of this sweep's jobs: {shorten(taken, quote=False)}; refusing to start "
            "jobs over them. "
            "Continue that sweep with resume=auto (and its own overrides), or leave "
            "hydra.sweep.dir unset to start a new sweep.",
            details=taken,
        )


def _grid_folders(sweeper: Any) -> Iterator[Path]:
    num = 0
    for batch in sweeper.overrides:
        for overrides in batch:
            yield job_dir(sweeper, overrides, num)
            num += 1


def launch(launcher: Any, jobs: list[tuple[list[str], int]]) -> list[JobReturn]:
    """Launch ``(overrides, job number)`` pairs whose numbers may have gaps (skipped jobs)."""
    if not jobs:
        return []
    if hasattr(launcher, "launch_numbered"):
        return list(launcher.launch_numbered(jobs))
    results: list[JobReturn] = []
    start = 0
    for end in range(1, len(jobs) + 1):  # one launch per run of consecutive numbers
        if end == len(jobs) or jobs[end][1] != jobs[end - 1][1] + 1:
            group = jobs[start:end]
            results += launcher.launch([o for o, _ in group], initial_job_idx=group[0][1])
            start = end
    return results


def run_grid(sweeper: Any, arguments: list[str]) -> list[Sequence[JobReturn]]:
    """:class:`hydra_plugins.osteo_sweeps.sweepers.OsteoBasicSweeper`'s sweep (module docstring)."""
    config = sweeper.config
    arguments, resume = sweep_resume.strip_resume(arguments)
    resuming = False
    if resume == "auto":
        previous = previous_sweep(config)
        if previous is None:
            log.info(
                f"resume=auto: no multirun of these overrides in {Path(str(config.hydra.sweep.dir)).parent}; "
                f"a fresh sweep starts in {config.hydra.sweep.dir} (its jobs start fresh)."
            )
        else:
            redirect_sweep_dir(config, previous, sweeper.launcher)
            resuming = True
            log.info(f"resume=auto: continuing the multirun in {previous}.")
    elif resume is not None:
        arguments.append(f"resume={resume}")  # a run directory: passed to every job, as given
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    parsed = parser.parse_overrides([*sweeper._parse_config(), *arguments])
    sweeper.overrides = sweeper.split_arguments(parsed, sweeper.max_batch_size)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not resuming and sweep_dir.exists():  # a new folder (the default) holds no job yet
        # before anything is written into the sweep's folder
        check_fresh_jobs(sweep_dir, _grid_folders(sweeper))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep_resume.save_multirun(sweep_dir, config)
    returns: list[Sequence[JobReturn]] = []
    plans: Counter[str] = Counter()
    first = 0
    while not sweeper.is_done():
        batch = sweeper.get_job_batch()
        if not resuming:
            sweeper.validate_batch_is_legal(batch)
        jobs = []
        for num, overrides in enumerate(batch, start=first):
            if resuming:
                plan = sweep_resume.plan_job(job_dir(sweeper, overrides, num))
                plans[plan.action] += 1
                log.info(f"Job {num} ({' '.join(overrides)}): {plan.action}, {plan.reason}.")
                overrides = sweep_resume.prepare_job(plan, overrides)
                if overrides is None:
                    continue
            jobs.append((list(overrides), num))
        if resuming and jobs:  # only the jobs that run (composing each costs about a second)
            sweeper.validate_batch_is_legal([overrides for overrides, _ in jobs])
        results = launch(sweeper.launcher, jobs)
        for ret in results:
            if ret.status == JobStatus.FAILED:
                log.error(f"A job failed outside the task: {ret._return_value!r}")
        returns.append(results)
        first += len(batch)
    if resuming:
        summary = ", ".join(f"{n} {action}" for action, n in sorted(plans.items()))
        log.info(f"resume=auto in {sweep_dir}: {summary}.")
        if set(plans) == {sweep_resume.SKIP}:
            log.info(
                f"The multirun in {sweep_dir} is complete: all {plans[sweep_resume.SKIP]} jobs had finished; none ran."
            )
    return returns
