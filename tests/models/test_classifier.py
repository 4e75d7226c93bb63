import pytest
import torch

from osteolightning.errors import ConfigError
from osteolightning.models.classifier import KneeClassifier
from osteolightning.models.components.backbone import create_backbone

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def _module(**kwargs):
    return KneeClassifier(create_backbone("resnet10t", num_classes=3), CLASSES, **kwargs)


def test_model_step_returns_loss_probs_targets():
    batch = {"image": torch.randn(4, 1, 64, 64), "label": torch.tensor([0, 1, 2, 1])}
    loss, probs, targets = _module().model_step(batch)
    assert loss.ndim == 0 and probs.shape == (4, 3)
    assert torch.allclose(probs.sum(1), torch.ones(4))
    assert torch.equal(targets, batch["label"])


def test_nan_loss_stops_training_naming_the_step():
    module = _module()
    batch = {
        "image": torch.full((2, 1, 64, 64), float("nan")),
        "label": torch.tensor([0, 1]),
        "index": torch.tensor([0, 1]),
        "path": ["/data/normal/a.png", "/data/osteopenia/b.png"],
    }
    with pytest.raises(FloatingPointError, match=r"step 0 .*batch 7.*/data/normal/a\.png"):
        module.training_step(batch, 7)


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float)


def test_hyperparameters_are_plain_types(tmp_path):
    module = _module()
    for value in module.hparams.values():
        assert _plain(value), value  # weights_only: plain values, lists and str-keyed dicts
    torch.save(dict(module.hparams), tmp_path / "hp.pt")
    assert torch.load(tmp_path / "hp.pt", weights_only=True) == dict(module.hparams)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_weighting": "inverse"}, "class_weighting"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _module(**kwargs)
