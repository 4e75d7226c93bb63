"""The config schemas of the plugins, stored in Hydra's ConfigStore (no ``from __future__
import annotations``: Hydra's plugin scan runs this module before it is in ``sys.modules``,
where dataclasses look string annotations up).

``osteolightning/conf/hydra/launcher/{local,slurm}.yaml`` and
``osteolightning/conf/hparams_search/*.yaml`` build on them.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    """``hydra/sweeper=osteo_optuna`` (see :mod:`hydra_plugins.osteo_sweeps.optuna_study`)."""

    _target_: str = "hydra_plugins.osteo_sweeps.sweepers.OsteoOptunaSweeper"
    # the sampler is instantiated per trial (with its seed offset), not once by Hydra
    _recursive_: bool = False
    # an Optuna sampler, instantiated per trial with seed + the study's trial count (if seeded)
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # minimize | maximize, or a list of them for several objectives
    direction: Any = "minimize"
    # null: a journal file in the study's folder (hydra.sweep.dir); a file path: a journal file
    # there; an RDB URL (sqlite:///..., postgresql://...): that database
    storage: str | None = None
    study_name: str = "study"
    # finished trials the study ends with (complete, pruned and failed; interrupted ones are retried)
    n_trials: int = 20
    # trials this worker keeps running at once; null: as many as the launcher runs in parallel
    n_jobs: int | None = None
    # stop asking for trials when more than this fraction of the finished ones failed
    max_failure_rate: float = 1.0
    # the search space: choice(...), interval(...), tag(log, interval(...)), range(...)
    params: dict[str, str] | None = None


@dataclass
class GridSweeperConf:
    """``hydra/sweeper=osteo_basic``: Hydra's basic (grid) sweeper with ``resume=auto``."""

    _target_: str = "hydra_plugins.osteo_sweeps.sweepers.OsteoBasicSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


@dataclass
class LocalLauncherConf:
    """``hydra/launcher=osteo_local`` (see :mod:`hydra_plugins.osteo_sweeps.launchers`)."""

    _target_: str = "hydra_plugins.osteo_sweeps.launchers.OsteoLocalLauncher"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    # GPUs per job; null: 1 when GPUs are visible, else 0 (CPU jobs)
    gpus_per_job: int | None = None
    # the GPUs to share out; null: CUDA_VISIBLE_DEVICES, else every GPU torch sees
    visible_gpus: list[Any] | None = None
    # jobs at once; null: one per gpus_per_job GPUs, or CPU cores // threads_per_job
    max_parallel: int | None = None
    # CPU threads per job (OMP_NUM_THREADS, torch); null: the cores shared out between the jobs
    threads_per_job: int | None = None
    # minutes per job before it is signalled, checkpointed and requeued
    timeout_min: int = 4320
    signal_delay_s: int = 60
    # requeues after a time limit (a pre-empted job is requeued regardless)
    max_num_timeout: int = 3
    # shell lines run before each job, e.g. ["source .venv/bin/activate"]
    setup: list[str] | None = None
    stderr_to_stdout: bool = False


ConfigStore.instance().store(
    group="hydra/sweeper", name="osteo_optuna", node=OptunaSweeperConf, provider="osteolightning"
)
ConfigStore.instance().store(
    group="hydra/sweeper", name="osteo_basic", node=GridSweeperConf, provider="osteolightning"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="osteo_local", node=LocalLauncherConf, provider="osteolightning"
)
