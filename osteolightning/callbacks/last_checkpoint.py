"""``checkpoints/last.ckpt``: the full training state for ``resume``, at a cadence that suits a GPU.

The state of a large backbone (weights and Adam moments: > 1.5 GB for VGG-19) written every few
steps would dominate a GPU run's time, so :class:`LastCheckpoint` writes it by the clock (every
``every_minutes`` of training) and at the end of training epochs (after their validation): of
every epoch, or, with ``epoch_end_minutes``, of the first epoch that ends that long after the
last write (short epochs would otherwise write the state every few seconds); and at the end
of training when the state is to be kept (``keep_after_finish``) or more than
``epoch_end_minutes`` of training would otherwise be lost. ``every_n_train_steps`` adds a step
cadence where wanted. A kill loses at most the training since the newest write:
``every_minutes`` of it, or ``epoch_end_minutes`` plus the epoch in progress. (A short fit whose
state is removed once the run has finished writes none: its end-of-training write was the
largest fixed cost of a fit of a few seconds, and a kill while it is tested reruns under a
minute of training.)

Lightning's ``ModelCheckpoint`` takes a time interval, a step interval or an epoch interval, one
at a time, and at an epoch end writes ``last.ckpt`` only when it also wrote a top-k checkpoint;
hence this callback, which writes through ``Trainer.save_checkpoint`` (atomic: a temporary
file, then a rename) and nothing else.

Once the run has finished (trained, tested, marked ``finished``), the resumable state has
served its purpose: :func:`release_resume_state` removes ``last.ckpt`` unless
``keep_after_finish`` (nnU-Net's policy: the final and best weights stay, the optimiser state
goes). The best checkpoint (weights only) and every prediction file stay; a run that failed or
was killed keeps ``last.ckpt`` to be continued.

A SLURM job that reaches its time limit or is pre-empted gets a signal first; the launcher then
asks for the state now (:func:`osteolightning.runs.checkpoint_requests.request_checkpoint`,
which this callback answers while it fits) so the requeued job loses nothing (one process only:
under DDP the save is collective and a signal handler cannot wait for the other ranks, so there
the last periodic checkpoint is what the requeued job continues from).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from osteolightning.errors import ConfigError
from osteolightning.runs import checkpoint_requests, rundir
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def _now() -> float:
    """The training clock (monotonic seconds)."""
    return time.monotonic()


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` by the clock, at every epoch end and optionally every N steps.

    A Lightning ``Checkpoint``: the trainer runs it with the checkpoint callbacks, last and in
    the order given (the configs put the best checkpoint first), after early stopping, so the
    state written at an epoch end holds that epoch's best-checkpoint and early-stopping
    decisions (written before them, a run resumed from it lost the epoch's improvement).

    Args:
        dirpath: the run's checkpoint folder (``${paths.output_dir}/checkpoints``).
        every_minutes: minutes of training between two checkpoints (checked after each
            training step; the clock restarts at each write); ``None``: no time cadence.
        every_n_train_steps: also write every N optimizer steps; ``None`` or 0: off.
        on_epoch_end: also write at the end of training epochs (after their validation), and
            at the end of training.
        epoch_end_minutes: with ``on_epoch_end``, write at an epoch end only when at least this
            many minutes of training have passed since the last write (0: at every epoch end).
            The end of training writes when ``keep_after_finish`` or when that many minutes
            have passed.
        keep_after_finish: keep ``last.ckpt`` once the run has finished (to train it further
            with ``ckpt_path=<run>/checkpoints/last.ckpt``); by default it is removed then
            (:func:`release_resume_state`).

    Raises:
        ConfigError: a negative interval, or no cadence at all.

    Example:
        >>> cb = LastCheckpoint("/tmp/run/checkpoints", every_minutes=5)
        >>> cb.every_s, cb.every_n_train_steps, cb.on_epoch_end, cb.epoch_end_s
        (300.0, 0, True, 0.0)
    """

    #: under DDP the ranks agree on the clock (a collective) only every this many steps
    CLOCK_SYNC_STEPS = 20

    def __init__(
        self,
        dirpath: str | Path,
        every_minutes: float | None = 5.0,
        every_n_train_steps: int | None = None,
        on_epoch_end: bool = True,
        epoch_end_minutes: float = 0.0,
        keep_after_finish: bool = False,
    ) -> None:
        if every_minutes is not None and not float(every_minutes) >= 0:
            raise ConfigError(
                "Expected argument `every_minutes` to be a number of minutes >= 0 or null, "
                f"but got {every_minutes}."
            )
        if every_n_train_steps is not None and int(every_n_train_steps) < 0:
            raise ConfigError(
                "Expected argument `every_n_train_steps` to be an integer >= 0 or null, "
                f"but got {every_n_train_steps}."
            )
        if not float(epoch_end_minutes) >= 0:
            raise ConfigError(
                "Expected argument `epoch_end_minutes` to be a number of minutes >= 0, "
                f"but got {epoch_end_minutes}."
            )
        if every_minutes is None and not every_n_train_steps and not on_epoch_end:
            raise ConfigError(
                "LastCheckpoint has no cadence: expected `every_minutes`, `every_n_train_steps` "
                "or `on_epoch_end` to be set; without last.ckpt a killed run cannot continue "
                "(switch the callback off instead: callbacks.last_checkpoint=null)."
            )
        self.path = Path(dirpath) / Path(rundir.LAST_CKPT).name
        self.every_s = None if every_minutes is None else 60.0 * float(every_minutes)
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self.on_epoch_end = bool(on_epoch_end)
        self.epoch_end_s = 60.0 * float(epoch_end_minutes)
        self.keep_after_finish = bool(keep_after_finish)
        self._clock = _now()
        self._saved_step = -1
        self._saving = False

    # ------------------------------------------------------------------ hooks

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clock = _now()
        self._saved_step = trainer.global_step  # a resumed run does not rewrite its checkpoint
        save = functools.partial(self._save_on_request, trainer)
        checkpoint_requests.register(checkpoint_requests.CheckpointWriter(self.path, save))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self._skip(trainer):
            return
        step = trainer.global_step
        by_steps = self.every_n_train_steps > 0 and step % self.every_n_train_steps == 0
        due = by_steps
        if self.every_s is not None:
            due = by_steps or _now() - self._clock >= self.every_s
            if trainer.world_size > 1:
                # the ranks' clocks differ: rank zero decides, or a collective save would hang;
                # asked every CLOCK_SYNC_STEPS steps only (a collective waits for every rank)
                if step % self.CLOCK_SYNC_STEPS and not by_steps:
                    return
                due = trainer.strategy.broadcast(due)
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if due and not (self.on_epoch_end and last_batch):  # the epoch end writes it next
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.on_epoch_end or self._skip(trainer):
            return
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1
        elapsed = _now() - self._clock
        due = (
            self.epoch_end_s == 0
            or (last_epoch and self.keep_after_finish)
            or elapsed >= self.epoch_end_s
            or (self.every_s is not None and elapsed >= self.every_s)  # deferred to here
        )
        if trainer.world_size > 1 and self.epoch_end_s > 0:
            due = trainer.strategy.broadcast(due)  # rank zero's clock, as above
        if due:
            self.save(trainer, force=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # training stopped before max_epochs (early stopping, max_steps, max_time) after an
        # epoch end that did not write: the final state goes to disk too, when it is kept or
        # a kill would otherwise lose more than epoch_end_minutes of training
        if not self.on_epoch_end or self._skip(trainer):
            return
        due = self.keep_after_finish or _now() - self._clock >= self.epoch_end_s
        if trainer.world_size > 1:
            due = trainer.strategy.broadcast(due)  # rank zero's clock: the save is collective
        if due:
            self.save(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint_requests.unregister(self.path)

    def on_exception(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        checkpoint_requests.unregister(self.path)

    # ------------------------------------------------------------------ saving

    def _skip(self, trainer: L.Trainer) -> bool:
        return bool(
            trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING
        )

    def save(self, trainer: L.Trainer, force: bool = False) -> Path | None:
        """Write ``last.ckpt`` now (all ranks call it; rank zero writes), unless this step's
        state is already on disk (``force``: write anyway, e.g. the loops' epoch-end state).

        Returns:
            The file, or ``None`` when nothing was written.
        """
        if (trainer.global_step == self._saved_step and not force) or self._saving:
            return None
        self._saving = True
        try:
            # the full state (optimizer, loops, callbacks); atomic (fsspec transaction)
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self._saving = False
        self._saved_step, self._clock = trainer.global_step, _now()
        return self.path

    def _save_on_request(self, trainer: L.Trainer) -> Path | None:
        """Write ``last.ckpt`` now when the fit runs in one process (a requeue signal's handler
        asks: see the module docstring); a failed save warns and returns ``None``."""
        if trainer.world_size != 1:
            return None
        try:
            return self.save(trainer, force=True)
        except Exception as err:  # a failed save must not stop the requeue of the older state
            log.warning(f"Could not save {self.path} before the requeue: {err}")
            return None

    def release(self, trainer: L.Trainer) -> int:
        """The run has finished: remove ``last.ckpt`` (rank zero), unless ``keep_after_finish``.

        Returns:
            The bytes freed (0 when kept or absent).
        """
        if self.keep_after_finish or not trainer.is_global_zero or not self.path.is_file():
            return 0
        size = self.path.stat().st_size
        self.path.unlink()
        log.info(
            f"The run has finished: removed its resumable state {self.path} "
            f"({size / 2**20:.1f} MB; the best weights stay). Keep it with "
            "callbacks.last_checkpoint.keep_after_finish=true."
        )
        return size


def release_resume_state(trainer: L.Trainer) -> int:
    """After a run has finished: each :class:`LastCheckpoint` of ``trainer`` releases its file.

    Returns:
        The bytes freed.
    """
    return sum(cb.release(trainer) for cb in trainer.callbacks if isinstance(cb, LastCheckpoint))
