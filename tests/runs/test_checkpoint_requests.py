"""A sweep plugin asks the fitting run for its checkpoint now (runs/checkpoint_requests)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from osteolightning.callbacks import LastCheckpoint
from osteolightning.runs import checkpoint_requests
from tests.helpers import fit_boring_model


class AskAtStep(L.Callback):
    """Asks for a checkpoint after training step ``step``, as a requeue signal's handler would."""

    def __init__(self, step: int) -> None:
        self.step, self.saved, self.active = step, None, None

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            self.active = checkpoint_requests.active_checkpoint()
            self.saved = checkpoint_requests.request_checkpoint()


def _fit(tmp_path: Path, *callbacks: L.Callback) -> L.Trainer:
    return fit_boring_model(tmp_path, list(callbacks), max_epochs=1)


def test_the_fitting_run_writes_its_checkpoint_when_asked(tmp_path):
    last = LastCheckpoint(tmp_path / "checkpoints", every_minutes=None, on_epoch_end=True)
    ask = AskAtStep(2)
    _fit(tmp_path, last, ask)
    assert ask.active == last.path
    assert ask.saved == last.path
    # written at step 2, then again at the epoch end (step 4)
    assert torch.load(last.path, weights_only=True)["global_step"] == 4
    # the fit is over: nothing answers any more
    assert checkpoint_requests.request_checkpoint() is None
    assert checkpoint_requests.active_checkpoint() is None


def test_the_request_is_answered_with_the_asked_steps_state(tmp_path):
    last = LastCheckpoint(tmp_path / "checkpoints", every_minutes=60.0, on_epoch_end=False)
    ask = AskAtStep(3)
    seen: list[int] = []

    class Look(L.Callback):
        def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
            if trainer.global_step == 3:
                seen.append(torch.load(last.path, weights_only=True)["global_step"])

    _fit(tmp_path, last, ask, Look())
    assert ask.saved == last.path and seen == [3]


def test_without_a_fit_nothing_is_written(tmp_path):
    assert checkpoint_requests.request_checkpoint() is None
    assert checkpoint_requests.active_checkpoint() is None


def test_a_writer_that_declines_is_passed_through(tmp_path):
    calls: list[str] = []

    def save() -> Path | None:
        calls.append("save")
        return None  # e.g. several processes: the periodic checkpoint serves

    writer = checkpoint_requests.CheckpointWriter(tmp_path / "last.ckpt", save)
    checkpoint_requests.register(writer)
    try:
        assert checkpoint_requests.request_checkpoint() is None and calls == ["save"]
        assert checkpoint_requests.active_checkpoint() == tmp_path / "last.ckpt"
        checkpoint_requests.unregister(tmp_path / "other.ckpt")  # another fit's: kept
        assert checkpoint_requests.active_checkpoint() == tmp_path / "last.ckpt"
    finally:
        checkpoint_requests.unregister()
    assert checkpoint_requests.active_checkpoint() is None
