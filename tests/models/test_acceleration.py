"""GPU options on the CPU: torch.compile and channels_last give the plain network's answers,
and a fit with them (and the device data path) runs end to end with plain checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from osteolightning.errors import ConfigError
from osteolightning.models.acceleration import compile_kwargs
from osteolightning.models.classifier import KneeClassifier
from osteolightning.models.components.backbone import create_backbone
from osteolightning.train import train

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def _twin(reference: KneeClassifier, **options) -> KneeClassifier:
    model = KneeClassifier(create_backbone("resnet10t", num_classes=3), CLASSES, **options)
    model.load_state_dict(reference.state_dict())
    model.configure_model()
    return model.eval()


def _same_predictions(options: dict) -> None:
    torch.manual_seed(0)
    plain = KneeClassifier(create_backbone("resnet10t", num_classes=3), CLASSES).eval()
    model = _twin(plain, **options)
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints unchanged
    images = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_proba(images), plain.predict_proba(images))
    # and the gradients of a training step
    model.train(), plain.train()
    for m in (model, plain):
        m.zero_grad()
        m.model_step({"image": images, "label": torch.tensor([0, 1, 2, 1])})[0].backward()
    grads = [dict(m.net.named_parameters())["conv1.0.weight"].grad for m in (model, plain)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [{"channels_last": True}, {"compile": {"backend": "aot_eager"}}],
    ids=["channels_last", "compile-aot_eager"],
)
def test_gpu_options_give_the_plain_predictions(options):
    _same_predictions(options)


@pytest.mark.slow
def test_compile_with_inductor_gives_the_plain_predictions():
    """The default backend generates and compiles C++ on the CPU (about half a minute)."""
    _same_predictions({"compile": True, "channels_last": True})


def test_compile_arguments_are_checked():
    assert compile_kwargs(False) is None and compile_kwargs(True) == {}
    assert compile_kwargs({"mode": "max-autotune"}) == {"mode": "max-autotune"}
    with pytest.raises(ConfigError, match="torch.compile's arguments"):
        compile_kwargs({"mod": "max-autotune"})


def test_a_fit_with_every_gpu_option_writes_plain_checkpoints(make_cfg):
    cfg = make_cfg(
        "train",
        [
            "debug=tiny",
            "model.compile={backend:aot_eager}",
            "model.channels_last=true",
            "data.on_device=stream",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "test=false",
        ],
    )
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2 and "val/loss" in metrics
    best = Path(objects["trainer"].checkpoint_callback.best_model_path)
    state = torch.load(best, weights_only=True)["state_dict"]
    assert all("_orig_mod" not in key for key in state)  # loads into a plain network
