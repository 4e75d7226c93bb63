"""checkpoints/last.ckpt by the clock, at each epoch end, or every N steps (callbacks/last_checkpoint)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from osteolightning.callbacks import LastCheckpoint
from osteolightning.callbacks import last_checkpoint as module
from osteolightning.errors import ConfigError
from osteolightning.runs import checkpoint_requests
from osteolightning.utils.config import CONFIG_DIR
from tests.helpers import fit_boring_model


class Recorder(L.Callback):
    """The global step of every write of ``path`` (seen after each batch and epoch, and at the
    end of training)."""

    def __init__(self, path: Path) -> None:
        self.path, self.steps, self._mtime = path, [], None

    def _check(self, trainer: L.Trainer) -> None:
        if self.path.is_file() and self.path.stat().st_mtime_ns != self._mtime:
            self._mtime = self.path.stat().st_mtime_ns
            self.steps.append(torch.load(self.path, weights_only=True)["global_step"])

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer, *args, **kwargs) -> None:
        self._check(trainer)

    def on_train_end(self, trainer, *args, **kwargs) -> None:
        self._check(trainer)  # the last epoch end's write (checkpoint callbacks run last)


def _fit(tmp_path: Path, **kwargs) -> tuple[list[int], dict]:
    """Fit a BoringModel for 2 epochs of 4 steps; the steps at which last.ckpt was written."""
    callback = LastCheckpoint(tmp_path / "checkpoints", **kwargs)
    # reads each write after it: at the next batch or epoch end, or the end of training
    recorder = Recorder(callback.path)
    fit_boring_model(tmp_path, [callback, recorder], max_epochs=2)
    return recorder.steps, torch.load(callback.path, weights_only=True)


def test_at_each_epoch_end_only(tmp_path):
    steps, last = _fit(tmp_path, every_minutes=None, every_n_train_steps=None, on_epoch_end=True)
    assert steps == [4, 8]
    assert last["optimizer_states"] and last["epoch"] == 1  # the full training state


def test_every_n_steps_and_at_epoch_ends(tmp_path):
    steps, _ = _fit(tmp_path, every_minutes=None, every_n_train_steps=3, on_epoch_end=True)
    assert steps == [3, 4, 6, 8]


def test_by_the_clock(tmp_path, monkeypatch):
    """every_minutes: a write once that much training time has passed since the last one."""
    clock = iter(range(0, 10_000, 40))  # each look at the clock: 40 s later
    monkeypatch.setattr(module, "_now", lambda: float(next(clock)))
    steps, _ = _fit(tmp_path, every_minutes=1.0, on_epoch_end=False)
    # the clock starts at fit start (40 s); step 1 at 80 s (40 s: not yet), step 2 at 120 s
    # (80 s: written, the clock restarts at 160 s), step 3 at 200 s (40 s), step 4 at 240 s ...
    assert steps == [2, 4, 6, 8]


def test_a_request_outside_a_fit_does_nothing():
    assert checkpoint_requests.request_checkpoint() is None
    assert checkpoint_requests.active_checkpoint() is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_minutes": -1}, "every_minutes"),
        ({"every_n_train_steps": -2}, "every_n_train_steps"),
        ({"every_minutes": None, "on_epoch_end": False}, "no cadence"),
    ],
)
def test_bad_cadence_is_refused(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LastCheckpoint(tmp_path, **kwargs)


def test_the_default_config_writes_by_the_clock_and_at_epoch_ends():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train")
    GlobalHydra.instance().clear()
    last = cfg.callbacks.last_checkpoint
    assert last._target_ == "osteolightning.callbacks.LastCheckpoint"
    assert last.every_minutes == 5 and last.every_n_train_steps is None and last.on_epoch_end


def _fit_epochs(tmp_path: Path, max_epochs: int, max_steps: int = -1, **kwargs) -> list[int]:
    callback = LastCheckpoint(tmp_path / "checkpoints", **kwargs)
    recorder = Recorder(callback.path)
    trainer = fit_boring_model(tmp_path, [callback, recorder], max_epochs, max_steps=max_steps)
    recorder._check(trainer)  # a write at the very end (on_train_end)
    return recorder.steps


def test_short_epochs_write_at_most_every_epoch_end_minutes_and_at_the_end(tmp_path):
    """Epochs of seconds would write the full state every few seconds: an epoch end writes
    only once epoch_end_minutes have passed since the last write; the last epoch's end when
    the state is kept after the run (keep_after_finish), and not otherwise: a fit that short
    would write a state that is removed once it has been tested."""
    kept = _fit_epochs(tmp_path / "kept", 3, every_minutes=None, epoch_end_minutes=10,
                       keep_after_finish=True)  # fmt: skip
    assert kept == [12]
    released = _fit_epochs(tmp_path / "released", 3, every_minutes=None, epoch_end_minutes=10)
    assert released == []


def test_an_epoch_end_writes_once_its_minutes_have_passed(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 30))  # 30 s of training between two readings
    monkeypatch.setattr(module, "_now", lambda: float(next(clock)))
    steps = _fit_epochs(tmp_path, 3, every_minutes=None, epoch_end_minutes=0.5)
    assert steps == [4, 8, 12]


def test_training_stopped_early_writes_its_final_state(tmp_path, monkeypatch):
    steps = _fit_epochs(tmp_path / "kept", 5, max_steps=6, every_minutes=None,
                        epoch_end_minutes=10, keep_after_finish=True)  # fmt: skip
    assert steps == [6]  # stopped mid-epoch 2 by max_steps: on_train_end writes it
    # released after the run: written at the end only once epoch_end_minutes have passed
    assert _fit_epochs(tmp_path / "short", 5, max_steps=6, every_minutes=None,
                       epoch_end_minutes=10) == []  # fmt: skip
    clock = iter(range(0, 10_000, 400))  # 400 s of training between two readings
    monkeypatch.setattr(module, "_now", lambda: float(next(clock)))
    long = _fit_epochs(tmp_path / "long", 5, max_steps=6, every_minutes=None,
                       epoch_end_minutes=10)  # fmt: skip
    assert long[-1] == 6


def test_the_default_config_writes_at_most_once_a_minute_at_epoch_ends():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train")
    GlobalHydra.instance().clear()
    assert cfg.callbacks.last_checkpoint.epoch_end_minutes == 1
    assert cfg.trainer.num_sanity_val_steps == 1
    assert cfg.callbacks.progress_bar.refresh_rate == 2


# the policy once a run has finished


def test_a_finished_run_keeps_its_best_weights_and_drops_its_resumable_state(make_cfg):
    """By default, a finished run leaves its best checkpoint (weights only), predictions and
    metrics, and no last.ckpt; ``keep_after_finish=true`` keeps the full state."""
    from osteolightning.runs import lifecycle
    from osteolightning.train import train

    cfg = make_cfg("train", ["debug=tiny"], run="dropped")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert lifecycle.read_marker(run_dir)["state"] == "finished"
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(kept) == 1 and kept[0].startswith("epoch_"), kept
    best = torch.load(run_dir / "checkpoints" / kept[0], weights_only=True)
    assert "optimizer_states" not in best and best["state_dict"]
    assert (run_dir / "predictions.csv").is_file() and (run_dir / "metrics.json").is_file()

    cfg = make_cfg(
        "train", ["debug=tiny", "callbacks.last_checkpoint.keep_after_finish=true"], run="kept"
    )
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["optimizer_states"]


def test_release_removes_only_the_file_it_wrote_and_only_when_asked(tmp_path):
    callback = LastCheckpoint(tmp_path, every_minutes=None, on_epoch_end=True)
    trainer = fit_boring_model(
        tmp_path, [callback], max_epochs=1, limit_train_batches=2, limit_val_batches=0,
        accelerator="auto",
    )  # fmt: skip
    other = tmp_path / "epoch_000.ckpt"
    other.write_bytes(b"weights")
    size = callback.path.stat().st_size
    assert module.release_resume_state(trainer) == size
    assert not callback.path.exists() and other.read_bytes() == b"weights"
    assert module.release_resume_state(trainer) == 0  # nothing left to remove
    keeper = LastCheckpoint(tmp_path / "kept", on_epoch_end=True, keep_after_finish=True)
    keeper.path.parent.mkdir()
    keeper.path.write_bytes(b"state")
    assert keeper.release(trainer) == 0 and keeper.path.read_bytes() == b"state"


def test_keep_best_weights_ranks_finished_jobs_and_leaves_the_rest_alone(tmp_path):
    import json

    from osteolightning.runs import lifecycle
    from osteolightning.runs.sweep_disk import disk_use, keep_best_weights

    values = {"0": 0.5, "1": 0.9, "2": 0.7, "3": None, "4": 0.99}  # 4: killed, running
    for job, value in values.items():
        folder = tmp_path / job / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "epoch_001.ckpt").write_bytes(b"w" * 100)
        metrics = {} if value is None else {"val/kappa_best": value}
        (tmp_path / job / "metrics.json").write_text(json.dumps(metrics))
        lifecycle.update_marker(tmp_path / job, state="running" if job == "4" else "finished")
    (tmp_path / "4" / "checkpoints" / "last.ckpt").write_bytes(b"s" * 300)
    assert disk_use(tmp_path)["checkpoint_bytes"] == 5 * 100 + 300
    out = keep_best_weights(tmp_path, 2, "val/kappa_best", "max")
    assert out == {"kept": ["1", "2"], "removed": ["0"], "unranked": ["3"]}
    left = {p.parent.parent.name for p in tmp_path.glob("*/checkpoints/*.ckpt")}
    assert left == {"1", "2", "3", "4"}  # the unranked and the unfinished keep theirs
    # smaller is better: job 0 ranks first (its files are gone already); 1 and 2 lose theirs
    lower = keep_best_weights(tmp_path, 1, "val/kappa_best", "min")
    assert lower["kept"] == ["0"] and sorted(lower["removed"]) == ["1", "2"]
    with pytest.raises(ConfigError, match="keep_best_k"):
        keep_best_weights(tmp_path, 0, "val/kappa_best")
