"""osteolightning's Hydra plugins (found by Hydra in the ``hydra_plugins`` namespace package).

* ``hydra/sweeper=osteo_optuna``: an Optuna study on a persistent storage (a journal file in the
  study's folder by default), asked and told by any number of workers; resumable.
* ``hydra/sweeper=osteo_basic``: Hydra's grid sweeper, plus ``resume=auto`` (continue the
  multirun of the same overrides: skip finished jobs, continue killed ones).
* ``hydra/launcher=osteo_local``: jobs in parallel processes on one machine, each pinned to its
  own GPU(s) or given a number of CPU threads.
* ``hydra/launcher=osteo_slurm``: hydra-submitit-launcher's SLURM launcher, whose jobs are
  requeued at a time limit or pre-emption and continue from ``last.ckpt``.

The plugin classes import their heavy parts (Optuna, submitit, torch) only when they run, so
Hydra's plugin scan stays fast.
"""
