"""``checkpoints/epoch_NNN.ckpt``: the best weights, held in memory and written when they matter.

Lightning's ``ModelCheckpoint`` writes the weights every time the monitored value improves: in
the first epochs of a fit that is nearly every epoch, and each write (20 MB for ResNet-10-T,
43 MB for ResNet-18, 550 MB for VGG-19) costs more CPU time than the rest of an epoch's
bookkeeping together (measured: 70 ms of a fast CPU epoch's 7 s, on a cluster's network file
system seconds). :class:`BestCheckpoint` is that callback, with one change: an improvement
copies the weights-only checkpoint it would have written into host memory, and the file is
written

- when training ends (before anything reads ``best_model_path``: the test, the sweep's
  best-K policy),
- whenever a resumable checkpoint is written (``last.ckpt``, a SLURM requeue), before it, so
  the best file on disk is always the one the resumable state names: a run killed and resumed
  continues from a consistent pair,
- when the run fails (an exception, Ctrl-C), so a failed run keeps its best weights as before,
- and at the first improvement ``write_every_minutes`` or more after the last write (0: at
  every improvement, Lightning's behaviour).

The file a newer best replaces is removed only once the newer one is on disk. What is written
is exactly what ``ModelCheckpoint`` would have written at the improvement (the same
``Trainer`` dump, its tensors copied at that moment). A process killed outright (``SIGKILL``,
out of memory) loses the improvements since the last write, as it loses the training since
``last.ckpt``: ``resume`` re-trains both.

Only weights-only top-k checkpoints of a strategy that writes one file from rank 0 (one device,
DDP) are held; anything else (``save_last``, full-state top-k files, sharded strategies, which
write from the live model) is written at once, as by ``ModelCheckpoint``.
"""

from __future__ import annotations

import inspect
import time
from typing import Any
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning_utilities.core.apply_func import apply_to_collection

from osteolightning.errors import ConfigError


def _now() -> float:
    """The clock of ``write_every_minutes`` (monotonic seconds)."""
    return time.monotonic()


def best_checkpoint_of(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The trainer's first ``ModelCheckpoint`` (the best weights), or ``None``. Not
    ``trainer.checkpoint_callback``: that is the first ``Checkpoint``, which may be
    :class:`~osteolightning.callbacks.LastCheckpoint`."""
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` in host memory that later training steps cannot change."""
    return tensor.detach().to("cpu", copy=True)


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose improvements are written at the moments that need the file.

    Args:
        write_every_minutes: write an improvement at once when this many minutes or more have
            passed since the last write (0: every improvement is written at once); otherwise it
            waits in memory for the end of training, a resumable checkpoint or a failure.
        **kwargs: ``ModelCheckpoint``'s arguments.

    Raises:
        ConfigError: a negative ``write_every_minutes``.

    Example:
        >>> cb = BestCheckpoint(dirpath="/tmp/run/checkpoints", monitor="val/f1_macro",
        ...                     mode="max", save_weights_only=True, write_every_minutes=5)
        >>> cb.write_every_s, cb.pending
        (300.0, [])
    """

    def __init__(self, *args: Any, write_every_minutes: float = 5.0, **kwargs: Any) -> None:
        if write_every_minutes is None or float(write_every_minutes) < 0:
            raise ConfigError(
                f"callbacks.model_checkpoint.write_every_minutes={write_every_minutes!r}: "
                "expected minutes >= 0 (0: write every improvement at once)."
            )
        super().__init__(*args, **kwargs)
        self.write_every_s = 60.0 * float(write_every_minutes)
        self._held: dict[str, dict[str, Any] | None] = {}  # path -> checkpoint (rank 0)
        self._superseded: list[str] = []  # written files to remove once the held are written
        self._last_write = _now()
        self._trainer: L.Trainer | None = None

    @property
    def pending(self) -> list[str]:
        """The checkpoint paths held in memory, not yet written."""
        return list(self._held)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer
        self._last_write = _now()

    def _holds(self, trainer: L.Trainer) -> bool:
        """Whether this callback's saves may wait in memory."""
        return (
            self.write_every_s > 0
            and self.save_weights_only
            and not self.save_last
            and type(trainer.strategy) in (SingleDeviceStrategy, DDPStrategy)
            and hasattr(trainer, "_checkpoint_connector")
        )

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not self._holds(trainer):
            super()._save_checkpoint(trainer, filepath)
            return
        # what Trainer.save_checkpoint(filepath, weights_only=True) writes, copied now
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=True)
        self._held[filepath] = (
            apply_to_collection(checkpoint, torch.Tensor, _host_copy)
            if trainer.is_global_zero
            else None
        )
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if _now() - self._last_write >= self.write_every_s:
            self.write_pending(trainer)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if filepath in self._held:  # never written: forget it
            del self._held[filepath]
        elif self._held:  # written: removed once its successor is on disk
            self._superseded.append(filepath)
        else:
            super()._remove_checkpoint(trainer, filepath)

    def write_pending(self, trainer: L.Trainer, barrier: bool = True) -> None:
        """Write the held checkpoints, then remove the files they replace.

        Args:
            trainer: the fitting trainer.
            barrier: wait for every rank afterwards (off where the ranks may not all call it:
                a failure, or inside another checkpoint's dump, which has its own barrier).
        """
        if not self._held and not self._superseded:
            return
        for filepath, checkpoint in list(self._held.items()):
            if checkpoint is not None:  # rank 0 (the strategy writes from rank 0 only)
                trainer.strategy.save_checkpoint(checkpoint, filepath)
            del self._held[filepath]
        for filepath in self._superseded:
            super()._remove_checkpoint(trainer, filepath)
        self._superseded.clear()
        self._last_write = _now()
        if barrier:
            trainer.strategy.barrier("BestCheckpoint.write_pending")
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def state_dict(self) -> dict[str, Any]:
        # a resumable checkpoint is being written: the best file it names goes to disk first
        if self._trainer is not None:
            self.write_pending(self._trainer, barrier=False)
        return super().state_dict()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write_pending(trainer)
        super().on_train_end(trainer, pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.write_pending(trainer, barrier=False)
        super().on_exception(trainer, pl_module, exception)


# the config check (and help) see every key: ModelCheckpoint's arguments and this one
BestCheckpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        *inspect.signature(ModelCheckpoint).parameters.values(),
        inspect.Parameter("write_every_minutes", inspect.Parameter.KEYWORD_ONLY, default=5.0),
    ]
)
