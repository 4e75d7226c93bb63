"""What a training step reports: the loss on logging steps only, NaN named at its step."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from osteolightning.models.classifier import KneeClassifier
from osteolightning.models.step_logging import StepLosses
from osteolightning.train import train


def _module(logs: bool) -> SimpleNamespace:
    connector = SimpleNamespace(should_update_logs=logs)
    trainer = SimpleNamespace(_logger_connector=connector, fast_dev_run=False)
    return SimpleNamespace(global_step=0, current_epoch=1, _trainer=trainer, log=None)


def test_a_deferred_check_names_the_first_bad_step():
    watch = StepLosses("Check those images.", every_step=False)
    module = _module(logs=False)
    for step, value in enumerate([0.5, float("nan"), float("inf")]):
        module.global_step = step
        watch(module, torch.tensor(value), batch_idx=10 + step, files=[f"img{step}.png"])
    with pytest.raises(FloatingPointError, match=r"nan at step 1 \(epoch 1, batch 11.*img1\.png"):
        watch.check()
    watch.check()  # checked steps are forgotten


def test_the_loss_is_logged_on_logging_steps_only(make_cfg, monkeypatch):
    logged: list[str] = []
    original = KneeClassifier.log

    def log(self, name, value, *args, **kwargs):
        if name == "train/loss":
            logged.append(value.device.type)
        return original(self, name, value, *args, **kwargs)

    monkeypatch.setattr(KneeClassifier, "log", log)
    cfg = make_cfg("train", ["debug=tiny", "trainer.log_every_n_steps=2", "test=false"])
    _, objects = train(cfg)
    steps = objects["trainer"].global_step
    assert steps >= 4 and len(logged) == steps // 2
    assert set(logged) == {"cpu"}  # a host value: the progress bar never waits for a device
    with open(objects["trainer"].logger.log_dir + "/metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    assert len(rows) == steps // 2
