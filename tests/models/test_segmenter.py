"""KneeSegmenter: the deep-supervision loss, inference modes and argument checks."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.segmenter import KneeSegmenter, side_output_weights


class SidesNet(nn.Module):
    """A 1x1-conv network with two side outputs in training (each a different 1x1 conv)."""

    deep_supervision = 2

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.heads = nn.ModuleList([nn.Conv2d(1, k, 1) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outs = [h(x) for h in self.heads]
        return outs if self.training else outs[0]


def test_side_output_weights_default_halving_and_errors():
    assert side_output_weights(2, None) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert side_output_weights(0, None) == [1.0]
    assert side_output_weights(1, [3, 1]) == pytest.approx([0.75, 0.25])
    with pytest.raises(ConfigError, match="3 non-negative weights"):
        side_output_weights(2, [1.0, 0.5])
    with pytest.raises(ConfigError, match="non-negative"):
        side_output_weights(1, [1.0, -1.0])


def test_deep_supervision_loss_is_the_weighted_sum_of_each_outputs_loss():
    torch.manual_seed(0)
    net = SidesNet()
    model = KneeSegmenter(net, ["background", "a", "b"], deep_supervision_weights=[1, 1, 2])
    x = torch.randn(2, 1, 16, 16)
    mask = torch.randint(0, 3, (2, 16, 16))
    outs = net.train()(x)
    reference = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    expected = sum(
        w * reference(o, mask.unsqueeze(1)) for w, o in zip([0.25, 0.25, 0.5], outs, strict=True)
    )
    torch.testing.assert_close(model.compute_loss(outs, mask), expected)
    # a network returning more outputs than weights is a clear error
    with pytest.raises(ConfigError, match="3 loss weights"):
        model.compute_loss([*outs, outs[0]], mask)


def test_sliding_window_equals_one_pass_for_a_pointwise_network():
    torch.manual_seed(0)
    net = SidesNet().eval()
    common = dict(net=net, class_names=["background", "a", "b"], image_size=16)
    whole = KneeSegmenter(**common, inference="resize").eval()
    tiled = KneeSegmenter(**common, inference="sliding_window", roi_size=16, sw_overlap=0.5).eval()
    x = torch.randn(1, 1, 40, 40)  # larger than the 16-pixel tiles
    with torch.no_grad():
        torch.testing.assert_close(tiled.infer_logits(x), whole.infer_logits(x), atol=1e-5, rtol=0)
    labels, probs = tiled.predict_masks(x)
    assert labels.shape == (1, 40, 40) and labels.dtype == torch.uint8
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 40, 40))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inference": "tiles"}, "inference"),
        ({"sw_overlap": 1.0}, "sw_overlap"),
        ({"class_names": ["bone"]}, "two mask classes"),
        ({"dice_weight": -1.0}, "dice_weight"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"net": SidesNet(), "class_names": ["background", "a", "b"], **kwargs}
    with pytest.raises(ConfigError, match=match):
        KneeSegmenter(**args)
