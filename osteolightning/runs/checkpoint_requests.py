"""Ask the run fitting in this process for its resumable checkpoint now.

A sweep plugin that is about to stop a job (a SLURM requeue signal, a pre-emption, an Optuna
study that requeues a trial) wants the job's full training state on disk first, so the job
continues from where it stopped rather than from the last periodic ``last.ckpt``. The writer of
that state (:class:`~osteolightning.callbacks.last_checkpoint.LastCheckpoint`) registers here
while it fits (:func:`register`); a plugin asks through :func:`request_checkpoint` and
:func:`active_checkpoint`, and needs to know nothing of the callback::

    from osteolightning.runs import checkpoint_requests

    saved = checkpoint_requests.request_checkpoint()  # Path, or None: nothing was written
    ckpt = checkpoint_requests.active_checkpoint()  # where the fitting run keeps last.ckpt

One fit per process: a second registration replaces the first. Under DDP the save is collective
and a signal handler cannot wait for the other ranks, so the writer declines there and the
requeued job continues from the last periodic checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckpointWriter:
    """What a fitting run offers: where its resumable checkpoint is, and how to write it now.

    Attributes:
        path: the run's ``checkpoints/last.ckpt``.
        save: writes it now; returns the file, or ``None`` when it wrote nothing (a save already
            under way, several processes, a failed write: it warns, it does not raise).
    """

    path: Path
    save: Callable[[], Path | None]


_writer: CheckpointWriter | None = None


def register(writer: CheckpointWriter) -> None:
    """Offer ``writer`` to the requests of this process (at the start of a fit)."""
    global _writer
    _writer = writer


def unregister(path: Path | None = None) -> None:
    """Withdraw the writer (at the end of a fit, or when it failed); with ``path``, only a
    writer of that checkpoint (a finished fit does not withdraw a newer one's)."""
    global _writer
    if path is None or (_writer is not None and _writer.path == path):
        _writer = None


def request_checkpoint() -> Path | None:
    """Write the fitting run's ``last.ckpt`` now.

    Returns:
        The checkpoint written, or ``None``: no fit in progress in this process, or its writer
        wrote nothing (see :class:`CheckpointWriter`).
    """
    return None if _writer is None else _writer.save()


def active_checkpoint() -> Path | None:
    """The ``last.ckpt`` path of the run fitting in this process (``None`` outside a fit)."""
    return None if _writer is None else _writer.path
