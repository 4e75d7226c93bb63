"""The sweepers: ``hydra/sweeper=osteo_optuna`` and ``hydra/sweeper=osteo_basic``.

Thin classes Hydra finds by scanning this module; the work is done in ``_study.py`` and
``_grid.py``, imported when a sweep starts (Optuna is not imported by every ``osteo-train``).
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OsteoOptunaSweeper(Sweeper):
    """An Optuna study that many workers share and that continues when started again.

    Arguments as :class:`hydra_plugins.osteo_sweeps.config.OptunaSweeperConf`; the behaviour is
    described in :mod:`hydra_plugins.osteo_sweeps._study`.
    """

    def __init__(self, **params: Any) -> None:
        from hydra_plugins.osteo_sweeps._study import OptunaStudySweeper

        self.impl = OptunaStudySweeper(**params)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.impl.sweep(arguments)


class OsteoBasicSweeper(BasicSweeper):
    """Hydra's grid sweeper, plus ``resume=auto``: continue the multirun of the same overrides
    (finished jobs skipped, killed ones continued from ``last.ckpt``, the rest run; see
    :mod:`hydra_plugins.osteo_sweeps._grid`). Jobs that fail never stop the sweep."""

    def sweep(self, arguments: list[str]) -> Any:
        from hydra_plugins.osteo_sweeps._grid import run_grid
        from osteolightning.runs.failures import user_errors

        # a refused sweep (a resume that does not fit, job folders of another sweep) ends with
        # its message alone and exit status 1, as a refused run does
        with user_errors(f"osteo-{self.config.get('task_name', 'train')}"):
            return run_grid(self, list(arguments))
