"""Every backbone of `osteolightning/conf/model/backbone/` composes, runs and trains: a new
backbone is a file.

The file name is the registry key everywhere; the yaml holds the real timm / torchvision name.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import hydra
import pytest
import timm
import torch
import torchvision
from omegaconf import OmegaConf

from osteolightning.backbones import backbone_facts
from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import create_backbone
from osteolightning.utils.config import CONFIG_DIR

BACKBONE_DIR = Path(CONFIG_DIR) / "model" / "backbone"
#: every architecture's config; `checkpoint` (a trained run's network, its facts read from the
#: checkpoint) needs a run and is tested in tests/models/test_checkpoint_backbone.py
BACKBONES = sorted(p.stem for p in BACKBONE_DIR.glob("*.yaml") if p.stem != "checkpoint")
#: light enough to fit + test in the default suite on a 2-core CPU; the rest are `slow`
LIGHT = {"resnet18", "tf_efficientnet_lite0", "alexnet"}


def _file(name: str):
    return OmegaConf.load(BACKBONE_DIR / f"{name}.yaml")


def test_the_registry_holds_the_papers_backbones():
    expected = {"alexnet", "vgg16", "vgg19", "resnet18", "inception_v3", "xception"}
    assert expected <= set(BACKBONES)


def test_default_is_lite0_with_packaged_weights_at_cpu_size(make_cfg):
    cfg = make_cfg("train")
    assert cfg.model.net.name == "tf_efficientnet_lite0"
    assert cfg.model.net.pretrained == "package"
    assert cfg.image_size == 160
    assert list(cfg.model.mean) == [0.5] and list(cfg.model.std) == [0.5]


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_composes_and_maps_a_grayscale_batch_to_logits(make_cfg, name):
    own = _file(name)
    cfg = make_cfg("train", [f"model/backbone={name}"])
    assert cfg.model.net.name == own.model.net.name
    assert cfg.model.net.pretrained == own.model.net.pretrained
    # a fixed-size architecture sets image_size; any-size ones keep the common default
    assert cfg.image_size == own.get("image_size", 160)
    # the normalisation is the backbone registry's (osteolightning/backbones.py), not the file's
    assert list(cfg.model.mean) == list(backbone_facts(name).mean)
    assert list(cfg.model.std) == list(backbone_facts(name).std)
    assert set(cfg.backbone) == {"input_size", "pretrained_source", "paper", "cam_layer"}
    model = hydra.utils.instantiate(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, cfg.in_chans, cfg.image_size, cfg.image_size))
    assert out.shape == (2, 3)


@pytest.mark.parametrize(
    "name", [n if n in LIGHT else pytest.param(n, marks=pytest.mark.slow) for n in BACKBONES]
)
def test_backbone_fits_and_tests_with_a_real_trainer(make_cfg, name):
    from osteolightning.train import train

    # `debug=tiny` picks model=tiny (resnet10t); the command-line group override wins over it
    cfg = make_cfg(
        "train",
        [
            "debug=tiny",
            f"model/backbone={name}",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
        ],
    )
    assert cfg.model.net.name == _file(name).model.net.name
    metrics, objects = train(cfg)
    assert "test/acc" in metrics
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_torchvision_alexnet_adapts_head_and_first_conv():
    net = create_backbone("alexnet", num_classes=3, in_chans=1, drop_rate=0.5)
    assert isinstance(net, torchvision.models.AlexNet)
    assert net.features[0].in_channels == 1
    assert net.classifier[-1].out_features == 3
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 3)


def test_torchvision_prefix_picks_torchvision_over_timm():
    net = create_backbone("torchvision.resnet18", num_classes=3, in_chans=1)
    assert isinstance(net, torchvision.models.ResNet)
    assert net.fc.out_features == 3 and net.conv1.in_channels == 1
    assert isinstance(create_backbone("resnet18", num_classes=3), timm.models.ResNet)


def test_rgb_torchvision_weights_file_adapts_to_grayscale(tmp_path):
    source = torchvision.models.alexnet(weights=None)  # ImageNet-shaped: RGB, 1000 classes
    path = tmp_path / "alexnet_rgb.pth"
    torch.save(source.state_dict(), path)
    gray = create_backbone("alexnet", num_classes=3, in_chans=1, pretrained=str(path))
    torch.testing.assert_close(
        gray.features[0].weight, source.features[0].weight.sum(1, keepdim=True)
    )
    torch.testing.assert_close(gray.features[3].weight, source.features[3].weight)
    assert gray.classifier[-1].out_features == 3  # the 1000-class head is skipped, not loaded


def test_torchvision_pretrained_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(ConfigError, match="torchvision's pretrained weights for `alexnet`"):
        create_backbone("alexnet", num_classes=3, pretrained=True)


def test_unknown_names_suggest_timm_and_torchvision_names():
    with pytest.raises(ConfigError, match="alexnet"):
        create_backbone("alexnt", num_classes=3)
    with pytest.raises(ConfigError, match="Did you mean"):
        create_backbone("torchvision.resnt18", num_classes=3)
