"""Saliency maps for every backbone of osteolightning/conf/model/backbone (random weights, small
input)."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import create_backbone
from osteolightning.models.saliency import METHODS, SaliencyExplainer, cam_layer_of
from osteolightning.utils.config import CONFIG_DIR

BACKBONES = sorted(
    p
    for p in (Path(CONFIG_DIR) / "model" / "backbone").glob("*.yaml")
    if p.stem != "checkpoint"  # a trained run's network: its layer comes from the checkpoint
)
#: in the default suite (a ViT for the token grid among them); the large ones are `slow`
LIGHT = {"resnet10t", "resnet18", "tf_efficientnet_lite0", "alexnet", "vit_tiny_patch16_224"}


@pytest.mark.parametrize(
    "config",
    [p if p.stem in LIGHT else pytest.param(p, marks=pytest.mark.slow) for p in BACKBONES],
    ids=lambda p: p.stem,
)
def test_every_backbone_has_a_target_layer_and_finite_maps_of_the_input_size(config):
    cfg = OmegaConf.load(config)
    layer = cam_layer_of(cfg)  # the backbone registry's, or the file's override
    assert layer, f"{config.name} names a backbone without a cam_layer"
    torch.manual_seed(0)
    net = create_backbone(cfg.model.net.name, num_classes=3, in_chans=1).eval()
    size = int(cfg.get("image_size") or 64)  # fixed by the architecture: ViT 224, Inception 299
    x = torch.rand(2, 1, size, size)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for method in METHODS:
        maps, classes = SaliencyExplainer(net, layer, method)(x)
        assert maps.shape == (2, size, size)
        assert torch.isfinite(maps).all() and (maps >= 0).all()
        with torch.no_grad():
            assert classes.tolist() == net(x).argmax(1).tolist()
    # the explainer works on a copy: the trained network is left as it was
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net._forward_hooks and not net.get_submodule(layer)._forward_hooks


def test_each_image_is_explained_for_its_own_class_as_monai_does_one_at_a_time():
    """MONAI scores a batch with logits[:, class_idx] (mixing the images' classes); the maps of a
    batch here equal MONAI's own GradCAM run on each image alone (its reference behaviour)."""
    from monai.visualize import GradCAM

    torch.manual_seed(1)
    net = create_backbone("resnet10t", num_classes=3, in_chans=1).eval()
    x = torch.rand(4, 1, 96, 96)
    classes = torch.tensor([0, 2, 1, 2])
    maps, used = SaliencyExplainer(net, "layer4", "gradcam")(x, classes)
    assert used.tolist() == classes.tolist()
    reference = GradCAM(nn_module=net, target_layers="layer4", postprocessing=lambda m: m)
    for i in range(4):
        alone = reference(x[i : i + 1], class_idx=int(classes[i]))[0, 0].detach()
        assert torch.allclose(maps[i], alone, atol=1e-5 * float(alone.max() + 1e-12))


def test_a_missing_or_wrong_target_layer_names_the_option():
    net = create_backbone("resnet10t", num_classes=3, in_chans=1)
    with pytest.raises(ConfigError, match=r"backbone\.cam_layer.*not set"):
        SaliencyExplainer(net, None)
    with pytest.raises(ConfigError, match=r"backbone\.cam_layer.*'layer5'.*layer4"):
        SaliencyExplainer(net, "layer5")
    with pytest.raises(ConfigError, match=r"saliency\.method.*'gradcampp'"):
        SaliencyExplainer(net, "layer4", "gradcam++")
