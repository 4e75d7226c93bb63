"""The best weights held in memory and written when they matter (callbacks/best_checkpoint)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from omegaconf import open_dict

from osteolightning.callbacks import BestCheckpoint, LastCheckpoint
from osteolightning.callbacks import best_checkpoint as module
from osteolightning.errors import ConfigError
from osteolightning.runs.checks import check_arguments
from osteolightning.utils.config import compose_config


class Scored(BoringModel):
    """A BoringModel whose validation logs ``score``: ``scores[epoch]``."""

    def __init__(self, scores: list[float], fail_at: int | None = None) -> None:
        super().__init__()
        self.scores, self.fail_at = scores, fail_at

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.fail_at:
            raise RuntimeError("boom")

    def on_validation_epoch_end(self) -> None:
        self.log("score", self.scores[self.current_epoch])


class Files(L.Callback):
    """The checkpoint files on disk as each epoch starts (what the epochs before it left)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seen = folder, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.seen.append(sorted(p.name for p in self.folder.glob("*.ckpt")))


def _fit(
    tmp_path: Path,
    checkpoint: ModelCheckpoint,
    *callbacks,
    scores=(0.1, 0.5, 0.2, 0.3),
    ckpt_path: Path | None = None,
    **kw,
):
    """Fit a :class:`Scored` model for ``len(scores)`` epochs of 3 steps (from ``ckpt_path``)."""
    L.seed_everything(0, verbose=False)
    model = Scored(list(scores), **kw)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=len(scores),
        callbacks=[checkpoint, *callbacks],
        logger=False,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, ckpt_path=ckpt_path, weights_only=False)
    return trainer, model


def _best(folder: Path, **kwargs) -> BestCheckpoint:
    return BestCheckpoint(
        dirpath=folder,
        filename="epoch_{epoch:03d}",
        monitor="score",
        mode="max",
        save_weights_only=True,
        auto_insert_metric_name=False,
        **kwargs,
    )


def test_the_best_waits_in_memory_and_is_written_at_the_end_as_modelcheckpoint_writes_it(
    tmp_path,
):
    held = tmp_path / "held"
    files = Files(held)
    _fit(held, _best(held), files)
    # nothing written while training, one file at the end: the best epoch's (1), not the last
    assert files.seen == [[], [], [], []]
    assert sorted(p.name for p in held.glob("*.ckpt")) == ["epoch_001.ckpt"]
    reference = tmp_path / "reference"
    plain = ModelCheckpoint(
        reference,
        "epoch_{epoch:03d}",
        "score",
        mode="max",
        save_weights_only=True,
        auto_insert_metric_name=False,
    )
    _fit(reference, plain)
    assert sorted(p.name for p in reference.glob("*.ckpt")) == ["epoch_001.ckpt"]
    got = torch.load(held / "epoch_001.ckpt", weights_only=True)
    want = torch.load(reference / "epoch_001.ckpt", weights_only=True)
    assert got["epoch"] == want["epoch"] == 1 and got["global_step"] == want["global_step"] == 6
    assert "optimizer_states" not in got
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for key, tensor in want["state_dict"].items():  # the weights of epoch 1, copied then
        assert torch.equal(got["state_dict"][key], tensor), key


def test_every_resumable_checkpoint_finds_the_best_it_names_on_disk(tmp_path):
    """last.ckpt at every epoch end, after the epoch's best-checkpoint decision (Lightning runs
    the checkpoint callbacks last, in their order): the held best is written before it and the
    file it replaces removed, so a kill at any moment leaves a consistent pair to resume from."""

    class Pair(L.Callback):
        def __init__(self) -> None:
            self.names: list[tuple[str, list[str]]] = []

        def _look(self) -> None:  # what the epochs so far left on disk
            last = torch.load(tmp_path / "last.ckpt", weights_only=False)
            (state,) = [v for k, v in last["callbacks"].items() if "BestCheckpoint" in k]
            on_disk = sorted(p.name for p in tmp_path.glob("epoch_*.ckpt"))
            self.names.append((Path(state["best_model_path"]).name, on_disk))

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch > 0:
                self._look()

        def on_train_end(self, trainer, pl_module) -> None:
            self._look()

    pair = Pair()
    last = LastCheckpoint(tmp_path, every_minutes=None, epoch_end_minutes=0)
    _fit(tmp_path, _best(tmp_path), last, pair, scores=(0.1, 0.5, 0.2, 0.7))
    assert pair.names == [
        ("epoch_000.ckpt", ["epoch_000.ckpt"]),
        ("epoch_001.ckpt", ["epoch_001.ckpt"]),
        ("epoch_001.ckpt", ["epoch_001.ckpt"]),
        ("epoch_003.ckpt", ["epoch_003.ckpt"]),
    ]


def test_a_failed_fit_keeps_its_best_weights(tmp_path):
    callback = _best(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, callback, scores=(0.1, 0.5, 0.2, 0.3), fail_at=2)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch_001.ckpt"]
    assert callback.pending == []


def test_zero_minutes_writes_each_improvement_at_once(tmp_path):
    files = Files(tmp_path)
    _fit(tmp_path, _best(tmp_path, write_every_minutes=0), files)
    assert files.seen == [[], ["epoch_000.ckpt"], ["epoch_001.ckpt"], ["epoch_001.ckpt"]]


def test_an_improvement_is_written_once_its_minutes_have_passed(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 200))  # each look at the clock: 200 s later
    monkeypatch.setattr(module, "_now", lambda: float(next(clock)))
    files = Files(tmp_path)
    # set-up at 0 s; improvements at epochs 0 (200 s: held), 1 (400 s: written), 3 (600 s:
    # 200 s after the write, held until the end of training)
    _fit(tmp_path, _best(tmp_path, write_every_minutes=5), files, scores=(0.1, 0.5, 0.2, 0.7))
    assert files.seen == [[], [], ["epoch_001.ckpt"], ["epoch_001.ckpt"]]
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch_003.ckpt"]


def test_bad_minutes_are_refused():
    with pytest.raises(ConfigError, match="write_every_minutes=-1.*minutes >= 0"):
        BestCheckpoint(write_every_minutes=-1)


def test_the_configs_use_it_and_its_keys_are_checked(tmp_path):
    cfg = compose_config("train", [], output_dir=tmp_path)
    node = cfg.callbacks.model_checkpoint
    assert node._target_ == "osteolightning.callbacks.BestCheckpoint"
    assert node.write_every_minutes == 5 and node.save_weights_only
    check_arguments(node, "callbacks.model_checkpoint")  # every key is an argument
    with open_dict(node):
        node.save_topk = 1
    with pytest.raises(ConfigError, match="Did you mean 'save_top_k'"):
        check_arguments(node, "callbacks.model_checkpoint")


def test_a_run_resumed_from_an_epoch_end_keeps_that_epochs_improvement(tmp_path):
    """last.ckpt written at an epoch end carries that epoch's checkpoint decision: a run
    stopped just after it and resumed ends with the best weights an uninterrupted run has."""

    class Stop(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 2:
                raise RuntimeError("killed")  # nothing after last.ckpt of epoch 1

    scores = (0.1, 0.5, 0.2, 0.3)
    whole = tmp_path / "whole"
    trainer, _ = _fit(
        whole, _best(whole), LastCheckpoint(whole, None, epoch_end_minutes=0), scores=scores
    )
    want = (
        Path(trainer.checkpoint_callback.best_model_path).name,
        float(trainer.checkpoint_callback.best_model_score),
    )
    assert want == ("epoch_001.ckpt", 0.5)

    cut = tmp_path / "cut"
    last = LastCheckpoint(cut, None, epoch_end_minutes=0)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(cut, _best(cut), last, Stop(), scores=scores)
    assert torch.load(last.path, weights_only=True)["epoch"] == 1
    best = _best(cut)
    last = LastCheckpoint(cut, None, epoch_end_minutes=0)
    _fit(cut, best, last, scores=scores, ckpt_path=last.path)
    assert (Path(best.best_model_path).name, float(best.best_model_score)) == want
    assert sorted(p.name for p in cut.glob("epoch_*.ckpt")) == ["epoch_001.ckpt"]
