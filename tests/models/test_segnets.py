import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from osteolightning.errors import ConfigError
from osteolightning.models.components.backbone import package_state_dict
from osteolightning.models.components.segnets import (
    SEGNETS,
    AttentionUNetDS,
    EncoderUNet,
    create_segnet,
    segnet_defaults,
)

# Narrow variants: every network builds, runs and trains in well under a second at 64 px.
SMALL = {
    "unet": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1},
    "attention_unet": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2]},
    "attention_unet_ds": {"channels": [8, 16, 32, 64], "deep_supervision": 2},
    "unetr": {"feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4},
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3]},
    "encoder_unet": {
        "encoder": "resnet10t",
        "pretrained": False,
        "decoder_channels": [64, 32, 16, 16, 8],
    },
}
SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared CPU, spinning OpenMP workers make steps ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_net(name, in_chans=1, num_classes=3, image_size=SIZE, **overrides):
    return create_segnet(name, in_chans, num_classes, image_size, **{**SMALL[name], **overrides})


def outputs(y):
    return y if isinstance(y, list) else [y]


def discs(n=4, size=SIZE, seed=0):
    """Images of a bright disc of random centre and radius on noise; masks 1 inside the disc."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * size * 0.5 + size * 0.25).tolist()
        r = float(torch.rand(1, generator=g)) * size * 0.15 + size * 0.15
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).long()
        images.append(mask.float() * 0.6 + 0.3 * torch.randn(size, size, generator=g))
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)


def test_names_and_defaults_agree():
    assert set(SEGNETS) == {
        "unet",
        "attention_unet",
        "attention_unet_ds",
        "unetr",
        "swin_unetr",
        "encoder_unet",
    }
    assert segnet_defaults("attention_unet_ds") == {
        "channels": [16, 32, 64, 128, 256],
        "deep_supervision": 3,
        "dropout": 0.0,
    }


@pytest.mark.parametrize("name", SEGNETS)
def test_every_net_maps_images_to_full_size_logits(name):
    torch.manual_seed(0)
    net = small_net(name)
    x = torch.randn(2, 1, SIZE, SIZE)
    net.train()
    train_out = outputs(net(x))
    assert len(train_out) == 1 + net.deep_supervision
    assert all(o.shape == (2, 3, SIZE, SIZE) for o in train_out)
    # every parameter takes part (DDP with find_unused_parameters=False needs that)
    sum(o.float().mean() for o in train_out).backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert unused == []
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, SIZE, SIZE)
    assert torch.isfinite(y).all()
    assert isinstance(net.size_multiple, int) and SIZE % net.size_multiple == 0
    assert net.fixed_size == (SIZE if name == "unetr" else None)


def test_three_channel_input_and_batch_of_one():
    net = small_net("attention_unet_ds", in_chans=3, num_classes=2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_deep_supervision_contract():
    torch.manual_seed(0)
    net = create_segnet("attention_unet_ds", 1, 3, SIZE)  # default: 5 scales, 3 side outputs
    assert net.deep_supervision == 3
    x = torch.randn(2, 1, SIZE, SIZE)
    out = net.train()(x)
    assert isinstance(out, list) and len(out) == 4
    assert all(o.shape == (2, 3, SIZE, SIZE) for o in out)
    # distinct heads, coarser sides are smoother: the finest side varies most between pixels
    assert not torch.allclose(out[0], out[1])
    roughness = [(o[..., 1:, :] - o[..., :-1, :]).abs().mean().item() for o in out[1:]]
    assert roughness[0] > roughness[-1]
    assert isinstance(net.eval()(x), torch.Tensor)
    off = create_segnet("attention_unet_ds", 1, 3, SIZE, deep_supervision=0)
    assert off.deep_supervision == 0 and isinstance(off.train()(x), torch.Tensor)
    for other in ("unet", "unetr", "encoder_unet"):
        assert small_net(other).deep_supervision == 0


@pytest.mark.parametrize("name", SEGNETS)
def test_a_few_steps_learn_a_disc(name):
    torch.manual_seed(0)
    net = small_net(name, num_classes=2).train()
    images, masks = discs()
    lr = 3e-3 if name in ("unetr", "swin_unetr") else 1e-2
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        out = outputs(net(images))
        loss = sum(F.cross_entropy(o, masks) for o in out) / len(out)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize(
    ("name", "size", "accepted"),
    [
        ("unetr", 100, "16"),
        ("swin_unetr", 48, "32"),
        ("unet", 72, "16"),
        ("encoder_unet", 80, "32"),
    ],
)
def test_bad_image_size_names_it(name, size, accepted):
    with pytest.raises(ConfigError, match=rf"image_size must be a multiple of {accepted}") as err:
        create_segnet(name, 1, 3, size, **({"pretrained": False} if name == "encoder_unet" else {}))
    assert f"image_size={size}" in str(err.value)
    with pytest.raises(ConfigError, match="image_size must be a positive int"):
        create_segnet(name, 1, 3, "64")


def test_unet_multiple_follows_its_strides():
    net = create_segnet("unet", 1, 3, 24, channels=[8, 16, 32], strides=[2, 4])
    assert net.size_multiple == 8
    assert net.eval()(torch.zeros(1, 1, 24, 24)).shape == (1, 3, 24, 24)


@pytest.mark.parametrize("name", SEGNETS)
def test_input_that_does_not_fit_names_its_shape(name):
    net = small_net(name).eval()
    with pytest.raises(ConfigError, match=r"\(1, 1, 68, 68\)"):
        net(torch.zeros(1, 1, 68, 68))
    with pytest.raises(ConfigError, match=r"in_chans=1.*\(1, 3, 64, 64\)"):
        net(torch.zeros(1, 3, SIZE, SIZE))


def test_unetr_takes_only_its_image_size():
    net = small_net("unetr").eval()
    with pytest.raises(ConfigError, match=r"image_size=64.*\(1, 1, 128, 128\)"):
        net(torch.zeros(1, 1, 128, 128))  # a multiple of 16, but not the embedded size


def test_size_check_survives_deepcopy_and_pickle():
    net = small_net("unet")
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert clone.deep_supervision == 0 and clone.size_multiple == 8
        with pytest.raises(ConfigError, match="multiples of 8"):
            clone(torch.zeros(1, 1, 36, 36))


def test_unknown_name_and_options_list_what_is_accepted():
    with pytest.raises(ConfigError, match="Unknown segmentation network 'segformer'.*unetr"):
        create_segnet("segformer", 1, 3, SIZE)
    with pytest.raises(ConfigError, match=r"\['strides'\].*attention_unet_ds.*deep_supervision"):
        create_segnet("attention_unet_ds", 1, 3, SIZE, strides=[2, 2, 2, 2])
    with pytest.raises(ConfigError, match="hidden_size"):
        create_segnet("unet", 1, 3, SIZE, hidden_size=96)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("unet", {"channels": [16, 32, 64], "strides": [2, 2, 2]}, "len\\(channels\\) - 1 = 2"),
        ("unet", {"channels": "16,32"}, "list of at least 2 positive ints"),
        ("unet", {"norm": "group"}, "`norm` must be one of"),
        ("unet", {"dropout": 1.5}, "probability"),
        ("attention_unet_ds", {"deep_supervision": 4}, "between 0 and len\\(channels\\) - 2 = 3"),
        ("unetr", {"hidden_size": 100, "num_heads": 6}, "divisible by `num_heads`"),
        ("swin_unetr", {"feature_size": 20}, "multiple of 12"),
        ("swin_unetr", {"depths": [2, 2, 2]}, "at least 4"),
        ("swin_unetr", {"num_heads": [5, 6, 12, 24]}, "num_heads\\[0\\]=5"),
        ("swin_unetr", {"use_checkpoint": "yes"}, "true or false"),
        ("encoder_unet", {"pretrained": False, "decoder_channels": [8] * 6}, "1 to 5 stages"),
        ("encoder_unet", {"pretrained": False, "encoder": "resnet1"}, "Did you mean"),
        ("encoder_unet", {"encoder": "resnet18"}, "package"),  # no packaged resnet weights
        ("encoder_unet", {"pretrained": False, "encoder": "alexnet"}, "multi-scale features"),
    ],
)
def test_bad_options_are_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message):
        create_segnet(name, 1, 3, SIZE, **options)


def test_hydra_lists_are_accepted():
    options = OmegaConf.create({"channels": [8, 16, 32], "deep_supervision": 1})
    net = create_segnet("attention_unet_ds", 1, 2, 32, **options)
    assert net.channels == (8, 16, 32)


@pytest.mark.parametrize(
    "model", ["unet", "attention_unet", "attention_unet_ds", "unetr", "swin_unetr", "seg_tiny"]
)
def test_model_configs_instantiate_through_hydra(make_cfg, model):
    cfg = make_cfg("segment", [f"model={model}", "image_size=64"])
    net = instantiate(cfg.model.net)
    assert net.size_multiple and 64 % net.size_multiple == 0
    with torch.no_grad():
        y = net.eval()(torch.zeros(1, cfg.in_chans, 64, 64))
    assert y.shape == (1, len(cfg.class_names), 64, 64)


def test_encoder_unet_holds_the_packaged_imagenet_weights(make_cfg):
    cfg = make_cfg("segment", ["model=encoder_unet", "image_size=64"])
    net = instantiate(cfg.model.net)  # pretrained: package
    assert isinstance(net, EncoderUNet)
    packaged = package_state_dict("tf_efficientnet_lite0")
    encoder = net.encoder.state_dict()
    # the grayscale stem is the sum of the RGB kernels; every deeper tensor is the packaged one
    assert torch.equal(encoder["conv_stem.weight"], packaged["conv_stem.weight"].sum(1, True))
    shared = [k for k in encoder if k in packaged and k != "conv_stem.weight"]
    assert len(shared) > 100
    assert all(torch.equal(encoder[k], packaged[k]) for k in shared)
    assert "conv_head.weight" not in encoder and "classifier.weight" not in encoder  # pruned
    fresh = create_segnet("encoder_unet", 1, 3, 64, pretrained=False)
    key = "blocks.3.0.conv_pw.weight"
    assert not torch.equal(fresh.encoder.state_dict()[key], packaged[key])


def test_encoder_unet_loads_a_local_weights_file(tmp_path):
    torch.manual_seed(0)
    source = EncoderUNet(1, 3, encoder="resnet10t", pretrained=False).encoder
    path = tmp_path / "encoder.pth"
    torch.save(source.state_dict(), path)
    net = create_segnet("encoder_unet", 1, 3, SIZE, encoder="resnet10t", pretrained=str(path))
    assert torch.equal(
        net.encoder.state_dict()["layer3.0.conv1.weight"],
        source.state_dict()["layer3.0.conv1.weight"],
    )
    assert net.feature_reductions == [2, 4, 8, 16, 32]


def test_encoder_unet_with_a_shorter_decoder_upsamples_to_the_input():
    net = EncoderUNet(1, 2, encoder="resnet10t", pretrained=False, decoder_channels=[32, 16])
    assert len(net.decoder) == 2
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 64, 96)).shape == (1, 2, 64, 96)


def test_attention_unet_ds_direct_construction_checks_its_options():
    with pytest.raises(ConfigError, match="at least 2 scales"):
        AttentionUNetDS(1, 2, channels=[8])
    net = AttentionUNetDS(1, 2, channels=[8, 16], deep_supervision=0)
    assert net.size_multiple == 2
    assert net.eval()(torch.zeros(1, 1, 6, 10)).shape == (1, 2, 6, 10)
