"""Soft ordinal labels: the loss against dlordinal's own, its weighting and mixup targets, its
checks, and a real fit with it."""

from __future__ import annotations

import pytest
import torch
from dlordinal.losses import BetaLoss, ExponentialLoss, TriangularLoss
from torch import nn

from osteolightning.errors import ConfigError
from osteolightning.models.losses import cross_entropy
from osteolightning.models.ordinal import soft_label_matrix, soft_ordinal_loss
from osteolightning.train import train

K = 5


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, K, generator=g), torch.randint(0, K, (64,), generator=g)


@pytest.mark.parametrize(
    ("distribution", "reference", "params"),
    [("exponential", ExponentialLoss, {"p": 1.0, "tau": 1.0}),
     ("triangular", TriangularLoss, {"alpha2": 0.05}),
     ("beta", BetaLoss, {})],
)  # fmt: skip
@pytest.mark.parametrize("eta", [0.85, 1.0])
def test_the_loss_equals_dlordinals(distribution, reference, params, eta):
    logits, labels = _batch()
    ours = soft_ordinal_loss(logits, labels, distribution=distribution, eta=eta, **params)
    theirs = reference(base_loss=nn.CrossEntropyLoss(), num_classes=K, eta=eta, **params)
    torch.testing.assert_close(ours, theirs(logits, labels), rtol=1e-5, atol=1e-6)


def test_eta_zero_is_cross_entropy_and_weights_weigh_samples():
    logits, labels = _batch(1)
    plain = soft_ordinal_loss(logits, labels, eta=0.0)
    torch.testing.assert_close(plain, nn.functional.cross_entropy(logits, labels))
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    soft = (
        0.15 * nn.functional.one_hot(labels, K) + 0.85 * soft_label_matrix("exponential", K)[labels]
    )
    expected = -(soft * weight * logits.log_softmax(1)).sum() / (soft @ weight).sum()
    got = soft_ordinal_loss(logits, labels, weight=weight, eta=0.85)
    torch.testing.assert_close(got, expected)
    # soft targets (mixup) are used as given
    torch.testing.assert_close(soft_ordinal_loss(logits, soft), cross_entropy(logits, soft))


def test_soft_labels_are_unimodal_and_bad_options_are_named():
    matrix = soft_label_matrix("exponential", K)
    assert torch.equal(matrix.argmax(1), torch.arange(K))
    assert torch.allclose(matrix.sum(1), torch.ones(K))
    with pytest.raises(ConfigError, match="Did you mean 'triangular'"):
        soft_ordinal_loss(*_batch(), distribution="triangle")
    with pytest.raises(ConfigError, match="`eta`"):
        soft_ordinal_loss(*_batch(), eta=1.5)
    with pytest.raises(ConfigError, match="reject the arguments"):
        soft_ordinal_loss(*_batch(), distribution="exponential", sigma=2.0)


def test_a_classifier_fits_with_soft_ordinal_labels(make_cfg):
    cfg = make_cfg("train", ["debug=tiny", "model/loss=ordinal"])
    metrics, objects = train(cfg)
    assert objects["model"].loss_fn.func is soft_ordinal_loss
    assert 0 <= metrics["test/grade_mae"] <= 2 and "test/kappa_quadratic" in metrics
