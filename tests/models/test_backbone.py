import numpy as np
import pytest
import timm
import torch

from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import (
    PACKAGE_WEIGHTS,
    create_backbone,
    package_state_dict,
)


@pytest.mark.parametrize("name", sorted(PACKAGE_WEIGHTS))
def test_package_weights_map_every_tensor(name):
    model = timm.create_model(name, pretrained=False)
    missing, unexpected = model.load_state_dict(package_state_dict(name), strict=False)
    assert unexpected == []
    assert all(k.endswith("num_batches_tracked") for k in missing)


def test_packaged_lite0_calls_a_cat_a_cat():
    """The mapped ImageNet weights are the real ones: a cat photo is classified as a cat."""
    skimage_data = pytest.importorskip("skimage.data")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(package_state_dict("tf_efficientnet_lite0"), strict=False)
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = model((x - 0.5) / 0.5).argmax(1).item()
    assert top in range(281, 286)  # ImageNet's domestic cat classes (tabby … Egyptian cat)


def test_grayscale_stem_is_the_sum_of_the_rgb_kernels():
    rgb = package_state_dict("tf_efficientnet_lite0")["conv_stem.weight"]
    gray = create_backbone("tf_efficientnet_lite0", num_classes=3, in_chans=1, pretrained="package")
    assert torch.allclose(gray.conv_stem.weight, rgb.sum(dim=1, keepdim=True))
    # and the head is new: 3 classes, not ImageNet's 1000
    assert gray(torch.zeros(2, 1, 64, 64)).shape == (2, 3)


def test_local_weights_file_is_loaded_and_changes_outputs(tmp_path):
    torch.manual_seed(0)
    source = create_backbone("resnet10t", num_classes=3, in_chans=1)
    path = tmp_path / "weights.pth"
    torch.save(
        {f"net.{k}": v for k, v in source.state_dict().items()}, path
    )  # checkpoint-style keys
    x = torch.randn(2, 1, 64, 64)
    torch.manual_seed(1)
    fresh = create_backbone("resnet10t", num_classes=3, in_chans=1).eval()
    torch.manual_seed(1)
    loaded = create_backbone("resnet10t", num_classes=3, in_chans=1, pretrained=str(path)).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), loaded(x))
        assert torch.allclose(source.eval()(x), loaded(x), atol=1e-6)


def test_rgb_weights_file_adapts_to_grayscale(tmp_path):
    source = timm.create_model("resnet10t", num_classes=3, in_chans=3)
    path = tmp_path / "rgb.pth"
    torch.save(source.state_dict(), path)
    gray = create_backbone("resnet10t", num_classes=3, in_chans=1, pretrained=str(path))
    first = source.pretrained_cfg["first_conv"] + ".weight"
    np.testing.assert_allclose(
        gray.state_dict()[first].numpy(),
        source.state_dict()[first].sum(1, keepdim=True).numpy(),
        rtol=1e-6,
    )


def test_weights_that_match_nothing_are_an_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match="No tensor"):
        create_backbone("resnet10t", num_classes=3, pretrained=str(path))


def test_missing_file_and_unknown_names_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("resnet10t", num_classes=3, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="Did you mean"):
        create_backbone("resnet1", num_classes=3)
    with pytest.raises(ConfigError, match="package"):
        create_backbone("resnet18", num_classes=3, pretrained="package")
