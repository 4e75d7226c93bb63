"""Losses against hand-written torch references; mixup / cutmix soft targets."""

import pytest
import torch
import torch.nn.functional as F

from osteolightning.errors import ConfigError
from osteolightning.models.losses import MixupCutmix, cross_entropy, focal_loss, sample_weights

K = 3


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, K, generator=g) * 2
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])
    weight = torch.tensor([0.5, 1.2, 1.3])
    soft = torch.rand(8, K, generator=g).softmax(1)
    return logits, labels, weight, soft


def _reference_focal(logits, labels, weight, gamma):
    """Lin et al. (2017), alpha-balanced, normalised by the summed alpha of the targets."""
    log_p = logits.log_softmax(1).gather(1, labels[:, None]).squeeze(1)
    alpha = weight[labels]
    return -(alpha * (1 - log_p.exp()) ** gamma * log_p).sum() / alpha.sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_on_hard_targets_is_torch_cross_entropy(batch, smoothing):
    logits, labels, weight, _ = batch
    expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
    assert torch.equal(cross_entropy(logits, labels, weight, smoothing), expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_one_hot_soft_targets_equal_hard_targets(batch, smoothing):
    logits, labels, weight, _ = batch
    expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
    soft = F.one_hot(labels, K).float()
    torch.testing.assert_close(cross_entropy(logits, soft, weight, smoothing), expected)
    torch.testing.assert_close(focal_loss(logits, soft, weight, smoothing, gamma=0), expected)


def test_soft_cross_entropy_matches_reference(batch):
    logits, _, weight, soft = batch
    smoothed = soft * 0.9 + 0.1 / K
    expected = -(weight * smoothed * logits.log_softmax(1)).sum() / (soft @ weight).sum()
    torch.testing.assert_close(cross_entropy(logits, soft, weight, 0.1), expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_focal_with_gamma_zero_is_cross_entropy(batch, smoothing):
    logits, labels, weight, _ = batch
    expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
    torch.testing.assert_close(focal_loss(logits, labels, weight, smoothing, gamma=0.0), expected)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_matches_reference(batch, gamma):
    logits, labels, weight, _ = batch
    expected = _reference_focal(logits, labels, weight, gamma)
    torch.testing.assert_close(focal_loss(logits, labels, weight, gamma=gamma), expected)
    unweighted = _reference_focal(logits, labels, torch.ones(K), gamma)
    torch.testing.assert_close(focal_loss(logits, labels, gamma=gamma), unweighted)


def test_focal_soft_targets_match_reference(batch):
    logits, _, weight, soft = batch
    log_p = logits.log_softmax(1)
    terms = weight * soft * (1 - log_p.exp()) ** 2 * log_p
    expected = -terms.sum() / (soft @ weight).sum()
    torch.testing.assert_close(focal_loss(logits, soft, weight, gamma=2.0), expected)


def test_focal_down_weights_easy_examples():
    logits = torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])
    easy_share_ce = F.cross_entropy(logits, labels, reduction="none")
    easy_share_focal = [focal_loss(logits[i : i + 1], labels[i : i + 1]) for i in range(2)]
    assert easy_share_focal[0] / easy_share_focal[1] < easy_share_ce[0] / easy_share_ce[1]


def test_sample_weights_of_hard_and_soft_targets(batch):
    _, labels, weight, soft = batch
    assert torch.equal(sample_weights(labels, weight, K), weight[labels])
    torch.testing.assert_close(sample_weights(soft, weight, K), (soft * weight).sum(1))
    assert torch.equal(sample_weights(labels, None, K), torch.ones(8))


def test_negative_gamma_raises():
    with pytest.raises(ConfigError, match="`gamma`"):
        focal_loss(torch.zeros(1, K), torch.tensor([0]), gamma=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "batch_size"),
    [
        ({"mixup_alpha": 0.4}, 6),
        ({"cutmix_alpha": 1.0}, 5),  # odd batches work too
        ({"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "switch_prob": 0.5}, 4),
    ],
)
def test_mixup_cutmix_soft_targets_match_the_mixed_pixels(kwargs, batch_size):
    torch.manual_seed(0)
    mix = MixupCutmix(**kwargs)
    labels = torch.arange(batch_size) % K
    # each image is constant at its label value, so a mixed image's mean is the target mean
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 32, 32).contiguous()
    for _ in range(10):
        mixed, soft = mix(images, labels, K)
        assert mixed.shape == images.shape and soft.shape == (batch_size, K)
        torch.testing.assert_close(soft.sum(1), torch.ones(batch_size))
        torch.testing.assert_close(mixed.mean((1, 2, 3)), soft @ torch.arange(K).float())


def test_mixup_off_returns_the_batch_and_one_hot_targets():
    mix = MixupCutmix()
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    mixed, soft = mix(images, labels, K)
    assert not mix.enabled and mixed is images
    assert torch.equal(soft, F.one_hot(labels, K).float())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mixup_alpha": -1}, "mixup_alpha"),
        ({"cutmix_alpha": -0.1}, "cutmix_alpha"),
        ({"prob": 1.5}, "prob"),
        ({"switch_prob": -0.5}, "switch_prob"),
    ],
)
def test_bad_mixup_arguments_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MixupCutmix(**kwargs)
