"""The Optuna study of ``hydra/sweeper=osteo_optuna``: ask, launch, tell, over a shared storage.

One study, any number of workers: each worker (an ``osteo-train -m hparams_search=...``
process: on a laptop, on one node per GPU, or one per SLURM array task) asks the study for the
next trial, launches it, tells its value and asks again, so no worker waits for a batch. A
worker with a parallel launcher (``hydra/launcher=local|slurm``) keeps ``n_jobs`` trials in
flight at once. The workers take a lock file in the study's folder to ask, so the study ends
with exactly ``n_trials`` finished trials however many workers share it.

Started again with the same command, the study continues:

* finished trials (complete, pruned, failed) are kept and count towards ``n_trials``;
* a trial left ``RUNNING`` by a worker that is gone (on this host its pid, elsewhere a trial
  heartbeat older than 5 minutes) is *interrupted*: if its job finished meanwhile, its value is
  told; otherwise it is marked failed with ``osteo_interrupted`` (not counted) and the same
  parameters are enqueued again, to run in the same job folder: from its ``last.ckpt`` when
  it has one, else from the start (the killed attempt set aside into ``.attempts/``).

Counting: unlike Optuna's ``MaxTrialsCallback`` (complete trials only), failed and pruned trials
count towards ``n_trials`` (a failing configuration would fail again, and the search must end),
interrupted ones do not (their retry counts). A job that raised is a failed trial; the trial's
job folder holds its ``error.json``.

Trial user attributes: ``osteo_job`` (the job folder's name in the study folder),
``osteo_worker`` (host, pid), ``osteo_heartbeat`` (epoch seconds), ``osteo_retry_of``,
``osteo_interrupted``. Study user attributes: ``osteo_space`` (the search space and the fixed
overrides; a sweep with another one is refused, naming the differences).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import TrialState

from hydra_plugins.osteo_sweeps._space import (
    SearchSpace,
    grid_values,
    parse_search_space,
    space_differences,
)
from hydra_plugins.osteo_sweeps._storage import make_study_folder, open_storage
from osteolightning.errors import ConfigError
from osteolightning.runs import lifecycle, rundir, sweep_resume

log = logging.getLogger(__name__)

JOB, WORKER, BEAT = "osteo_job", "osteo_worker", "osteo_heartbeat"
RETRY_OF, INTERRUPTED, SPACE = "osteo_retry_of", "osteo_interrupted", "osteo_space"
#: seconds between two waits for a finished trial of this worker
POLL_S = 0.5


@dataclass(frozen=True)
class Tally:
    """A study's trials by what they mean for the budget."""

    complete: int
    failed: int
    pruned: int
    interrupted: int
    running: int
    waiting: int

    @property
    def done(self) -> int:
        return self.complete + self.failed + self.pruned


def tally(trials: list[optuna.trial.FrozenTrial]) -> Tally:
    """Count trials: complete, failed (not interrupted), pruned, interrupted, running, waiting."""
    states = [t.state for t in trials]
    interrupted = sum(
        t.state == TrialState.FAIL and bool(t.user_attrs.get(INTERRUPTED)) for t in trials
    )
    return Tally(
        complete=states.count(TrialState.COMPLETE),
        failed=states.count(TrialState.FAIL) - interrupted,
        pruned=states.count(TrialState.PRUNED),
        interrupted=interrupted,
        running=states.count(TrialState.RUNNING),
        waiting=states.count(TrialState.WAITING),
    )


def _worker_alive(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the worker that runs ``trial`` still does (the run marker's rule, lifecycle.py)."""
    worker = trial.user_attrs.get(WORKER) or {}
    marker = {
        "host": worker.get("host"),
        "pid": worker.get("pid"),
        "heartbeat": trial.user_attrs.get(BEAT),
    }
    return lifecycle.alive_elsewhere(marker)


def tell(
    study: optuna.Study, number: int, values: Any = None, state: TrialState | None = None
) -> bool:
    """``study.tell``; ``False`` when the sampler has run out of its space (a grid or
    brute-force sampler calls ``Study.stop``, which outside ``optimize`` raises after the
    trial is stored)."""
    try:
        study.tell(number, values, state=state, skip_if_finished=True)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise
        return False
    return True


class _Heartbeat:
    """Rewrites ``osteo_heartbeat`` of this worker's running trials every ``lifecycle.HEARTBEAT_S``."""

    def __init__(self, storage: Any) -> None:
        self.storage, self.trial_ids, self._stop = storage, set(), threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._beat, name="osteo-trial-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(lifecycle.HEARTBEAT_S):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.set_trial_user_attr(trial_id, BEAT, time.time())
                except Exception as err:  # finished meanwhile, or a storage hiccup
                    log.debug(f"Trial heartbeat skipped: {err}")

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class _InFlight:
    trial: optuna.trial.Trial
    job: int
    overrides: list[str]
    handle: Any = None


class OptunaStudySweeper:
    """The implementation behind :class:`hydra_plugins.osteo_sweeps.sweepers.OsteoOptunaSweeper`
    (arguments: :class:`hydra_plugins.osteo_sweeps.config.OptunaSweeperConf`)."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str,
        n_trials: int,
        n_jobs: int | None,
        max_failure_rate: float,
        params: Any,
    ) -> None:
        if not isinstance(n_trials, int) or n_trials < 0:
            raise ConfigError(
                f"Expected `hydra.sweeper.n_trials` to be an integer >= 0, but got {n_trials}."
            )
        if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs < 1):
            raise ConfigError(
                f"Expected `hydra.sweeper.n_jobs` to be null or an integer >= 1, but got {n_jobs}."
            )
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise ConfigError(
                f"Expected `hydra.sweeper.max_failure_rate` to be in [0, 1], but got {max_failure_rate}."
            )
        if not study_name or not str(study_name).strip():
            raise ConfigError(
                "Expected `hydra.sweeper.study_name` to be a non-empty name, but got none."
            )
        self.sampler_cfg = (
            OmegaConf.to_container(sampler, resolve=True)
            if OmegaConf.is_config(sampler)
            else sampler
        )
        directions = (
            direction
            if isinstance(direction, list | tuple) or OmegaConf.is_list(direction)
            else [direction]
        )
        self.directions = [str(getattr(d, "name", d)) for d in directions]
        if any(d not in ("minimize", "maximize") for d in self.directions):
            raise ConfigError(
                f"Expected `hydra.sweeper.direction` to be minimize or maximize (or a list of them), but got {direction}."
            )
        self.storage_cfg, self.study_name = storage, str(study_name)
        self.n_trials, self.n_jobs, self.max_failure_rate = (
            n_trials,
            n_jobs,
            float(max_failure_rate),
        )
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.storage: Any = None
        self.exhausted = False  # the sampler has tried its whole space

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # ------------------------------------------------------------------ the study

    def _space(self, arguments: list[str]) -> SearchSpace:
        arguments, resume = sweep_resume.strip_resume(arguments)
        if resume is not None:
            log.info(
                f"resume={resume}: an Optuna study continues by itself when started again with "
                "the same command (same study name and storage); the option is not passed to trials."
            )
        return parse_search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])

    def _study(self, storage: Any, where: str, space: SearchSpace) -> optuna.Study:
        try:
            study = optuna.create_study(
                study_name=self.study_name,
                storage=storage,
                directions=self.directions,
                load_if_exists=True,
            )
        except ValueError as err:  # e.g. another number of objectives
            raise ConfigError(
                f"Cannot continue the study '{self.study_name}' in {where}: {err}"
            ) from err
        stored_directions = [d.name.lower() for d in study.directions]
        if stored_directions != self.directions:
            raise ConfigError(
                f"The study '{self.study_name}' in {where} was created to {stored_directions}, this sweep "
                f"asks to {self.directions}. Pick another hydra.sweeper.study_name for a new study."
            )
        wanted, stored = space.describe(), study.user_attrs.get(SPACE)
        if stored is None:
            study.set_user_attr(SPACE, wanted)
        elif space_differences(stored, wanted):
            differences = "; ".join(space_differences(stored, wanted))
            raise ConfigError(
                f"The study '{self.study_name}' in {where} was started with another search space or "
                f"other fixed overrides: {differences}. A study continues only with the ones it "
                "began with; for a new search pick another hydra.sweeper.study_name (its folder "
                "and journal follow the name)."
            )
        return study

    def _sampler(self, seed_offset: int, space: SearchSpace) -> Any:
        cfg = dict(self.sampler_cfg or {"_target_": "optuna.samplers.TPESampler"})
        if cfg.get("seed") is not None:
            # each trial gets its own seed: workers sharing the study, or a study started again,
            # do not draw the same startup trials
            cfg["seed"] = int(cfg["seed"]) + seed_offset
        if str(cfg.get("_target_", "")).endswith("GridSampler"):
            cfg.setdefault("search_space", grid_values(space))
        return instantiate(cfg)

    @contextmanager
    def _locked(self, lock: JournalFileOpenLock):
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------ recovery

    def _job_dir(self, job: int) -> Path:
        return Path(str(self.config.hydra.sweep.dir)) / str(job)

    def _recover(self, study: optuna.Study, mine: set[int]) -> None:
        """Settle the trials left running by workers that are gone (see the module docstring)."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number in mine or _worker_alive(trial):
                continue
            job = int(trial.user_attrs.get(JOB, trial.number))
            job_dir = self._job_dir(job)
            record = sweep_resume.read_job_record(job_dir) or {}
            if record.get("ended") is not None:  # the job outlived its worker and finished
                value = record.get("value")
                state = TrialState.COMPLETE if value is not None else TrialState.FAIL
                self.exhausted |= not tell(study, trial.number, value, state)
                log.info(
                    f"Trial {trial.number}: its job in {job_dir} finished after its worker was gone; recorded ({state.name}, {value})."
                )
                continue
            if sweep_resume.plan_job(job_dir).action == sweep_resume.BUSY:
                log.info(
                    f"Trial {trial.number}: its worker is gone but its job in {job_dir} still runs; left running."
                )
                continue
            self.storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            tell(study, trial.number, state=TrialState.FAIL)
            study.enqueue_trial(dict(trial.params), user_attrs={JOB: job, RETRY_OF: trial.number})
            log.warning(
                f"Trial {trial.number} was interrupted (its worker {trial.user_attrs.get(WORKER)} is gone); "
                f"marked failed (not counted) and enqueued again with the same parameters, in {job_dir}."
            )

    # ------------------------------------------------------------------ the loop

    def _parallel(self) -> int:
        capacity = int(getattr(self.launcher, "max_parallel", 1) or 1)
        if not hasattr(self.launcher, "submit"):
            if (self.n_jobs or 1) > 1:
                log.warning(
                    f"hydra.sweeper.n_jobs={self.n_jobs}, but {type(self.launcher).__name__} runs one "
                    "job at a time: trials run one after another. For parallel trials use "
                    "hydra/launcher=local or slurm, or start more workers on the same study."
                )
            return 1
        if self.n_jobs and self.n_jobs > capacity:
            log.warning(
                f"hydra.sweeper.n_jobs={self.n_jobs}, but {type(self.launcher).__name__} runs at "
                f"most {capacity} jobs at once (hydra.launcher.max_parallel / array_parallelism): "
                f"{capacity} trials at a time."
            )
        return min(self.n_jobs or capacity, capacity)

    def _start(self, study: optuna.Study, space: SearchSpace, beat: _Heartbeat) -> _InFlight | None:
        """Ask for a trial (holding the lock), prepare its job folder; ``None`` if the budget is spent."""
        trials = study.get_trials(deepcopy=False)
        count = tally(trials)
        if count.waiting == 0 and (self.exhausted or count.done + count.running >= self.n_trials):
            return None
        study.sampler = self._sampler(len(trials), space)
        trial = study.ask(fixed_distributions=space.distributions)
        job = int(trial.user_attrs.get(JOB, trial.number))
        trial.set_user_attr(JOB, job)
        trial.set_user_attr(WORKER, {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr(BEAT, time.time())
        beat.add(trial._trial_id)
        overrides = space.overrides(trial.params)
        job_dir = self._job_dir(job)
        if RETRY_OF in trial.user_attrs:
            plan = sweep_resume.plan_job(job_dir)
            if plan.action == sweep_resume.SKIP:  # finished without a record: run it afresh
                plan = sweep_resume.JobPlan(sweep_resume.RUN, job_dir, "rerun", set_aside=True)
            overrides = sweep_resume.prepare_job(plan, overrides) or overrides
            log.info(
                f"Trial {trial.number} retries trial {trial.user_attrs[RETRY_OF]} in {job_dir}: {plan.reason}."
            )
        elif job_dir.exists():
            self.storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            tell(study, trial.number, state=TrialState.FAIL)
            raise ConfigError(
                f"The job folder of trial {trial.number}, {job_dir}, exists already: two studies "
                "share hydra.sweep.dir. Give each study its own folder (the default follows "
                "hydra.sweeper.study_name)."
            )
        return _InFlight(trial, job, list(overrides))

    def _tell(self, study: optuna.Study, item: _InFlight, ret: JobReturn, beat: _Heartbeat) -> None:
        beat.discard(item.trial._trial_id)
        values, error = None, None
        if ret.status == JobStatus.COMPLETED:
            raw = ret._return_value
            try:
                values = [float(v) for v in (raw if isinstance(raw, list | tuple) else [raw])]
            except (TypeError, ValueError):
                error = f"the job returned {raw!r}, not a number"
            else:
                if len(values) != len(self.directions) or not all(map(math.isfinite, values)):
                    error, values = f"the job returned {raw!r}", None
        else:
            error = f"{type(ret._return_value).__name__}: {ret._return_value}"
        state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        if not tell(study, item.trial.number, values, state):
            self.exhausted = True
            log.info("The sampler has tried its whole search space: no further trials.")
        if state == TrialState.FAIL:
            log.warning(
                f"Trial {item.trial.number} failed ({error}; see {self._job_dir(item.job)}); "
                "recorded as a failed trial, the study goes on."
            )
        else:
            log.info(
                f"Trial {item.trial.number} (job {item.job}): {values if len(values) > 1 else values[0]}"
            )

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        space = self._space(list(arguments))
        if "${now:" in str(OmegaConf.to_container(self.config.hydra.sweep, resolve=False)["dir"]):
            log.warning(
                "hydra.sweep.dir changes with every start (${now:...}): this study cannot be "
                "continued by the same command, nor shared by workers started at other times. "
                "Name its folder after the study, as "
                "osteolightning/conf/hparams_search/knee_optuna.yaml does."
            )
        folder = make_study_folder(str(self.config.hydra.sweep.dir))
        storage, where = open_storage(self.storage_cfg, folder)
        self.storage = storage
        study = self._study(storage, where, space)
        sweep_resume.save_multirun(folder, self.config)
        lock = JournalFileOpenLock(str(folder / rundir.STUDY_LOCK))
        parallel = self._parallel()
        with self._locked(lock):
            count = tally(study.get_trials(deepcopy=False))
        log.info(
            f"Study '{self.study_name}' ({where}): {count.done} of {self.n_trials} trials finished "
            f"({count.complete} complete, {count.failed} failed, {count.pruned} pruned; "
            f"{count.interrupted} interrupted, {count.running} running elsewhere); up to {parallel} "
            f"at once in this worker ({type(self.launcher).__name__})."
        )
        if count.done >= self.n_trials and not (count.running or count.waiting):
            log.info(f"Study '{self.study_name}' is complete: no trial to run.")
        beat = _Heartbeat(storage)
        in_flight: dict[int, _InFlight] = {}
        try:
            self._loop(study, space, lock, beat, in_flight, parallel)
        finally:
            beat.stop()
        self._write_results(study, folder)

    def _loop(
        self, study, space, lock, beat, in_flight: dict[int, _InFlight], parallel: int
    ) -> None:
        stopping = False
        while True:
            item = None
            if not stopping and len(in_flight) < parallel:
                with self._locked(lock):
                    self._recover(study, set(in_flight))
                    item = self._start(study, space, beat)
            if item is not None:
                if hasattr(self.launcher, "submit"):
                    item.handle = self.launcher.submit(item.overrides, item.job)
                    in_flight[item.trial.number] = item
                else:
                    (ret,) = self.launcher.launch([item.overrides], initial_job_idx=item.job)
                    self._tell(study, item, ret, beat)
                    stopping = self._too_many_failures(study)
                continue
            if not in_flight:
                break
            done = [n for n, f in in_flight.items() if self.launcher.done(f.handle)]
            for number in done:
                finished = in_flight.pop(number)
                self._tell(study, finished, self.launcher.result(finished.handle), beat)
            stopping = stopping or self._too_many_failures(study)
            if not done:
                time.sleep(POLL_S)

    def _too_many_failures(self, study: optuna.Study) -> bool:
        count = tally(study.get_trials(deepcopy=False))
        if count.done and count.failed / count.done > self.max_failure_rate:
            log.error(
                f"{count.failed} of {count.done} finished trials failed, more than "
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: no further trials from this "
                "worker (the running ones finish). Each failed job's error.json says why."
            )
            return True
        return False

    def _write_results(self, study: optuna.Study, folder: Path) -> None:
        trials = study.get_trials(deepcopy=False)
        count = tally(trials)
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": self.study_name,
            "n_trials": {
                "complete": count.complete,
                "failed": count.failed,
                "pruned": count.pruned,
                "interrupted": count.interrupted,
                "running": count.running,
            },
        }
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete and len(self.directions) == 1:
            best = study.best_trial
            results.update(
                best_params=dict(best.params),
                best_value=best.value,
                best_trial=best.number,
                best_job_dir=str(self._job_dir(int(best.user_attrs.get(JOB, best.number)))),
            )
            log.info(f"Best trial {best.number}: {best.value} with {best.params}")
        elif complete:
            results["solutions"] = [
                {"params": dict(t.params), "values": t.values} for t in study.best_trials
            ]
        if count.running:
            log.info(f"{count.running} trial(s) still running in other workers.")
        from osteolightning.utils.files import atomic_write_text

        atomic_write_text(
            folder / rundir.OPTIMIZATION_RESULTS, OmegaConf.to_yaml(OmegaConf.create(results))
        )
