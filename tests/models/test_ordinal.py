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


# the cumulative link head (dlordinal's CLM behind the framework's output contract)


@pytest.mark.parametrize("link", ["logit", "probit", "cloglog"])
def test_the_cumulative_link_head_is_dlordinals_clm(link):
    from dlordinal.output_layers import CLM

    from osteolightning.models.components.heads import CumulativeLinkHead

    torch.manual_seed(0)
    head = CumulativeLinkHead(8, K, link)
    with torch.no_grad():  # thresholds away from dlordinal's start, so their order is tested
        head.clm.thresholds_a_.copy_(torch.tensor([0.5, 1.5, 0.8]))
        head.clm.thresholds_b_.fill_(-1.0)
    reference = CLM(K, link_function=link)
    reference.load_state_dict(head.clm.state_dict())
    x = torch.randn(16, 8) * 3
    expected = reference(head.proj(x))
    got = head(x)
    # its softmax is the CLM's probabilities; its cross-entropy is the CLM's likelihood
    torch.testing.assert_close(got.softmax(1), expected, atol=1e-6, rtol=1e-5)
    labels = torch.randint(0, K, (16,))
    nll = -expected.clamp_min(1e-7).log()[torch.arange(16), labels].mean()
    torch.testing.assert_close(cross_entropy(got, labels), nll, atol=1e-5, rtol=1e-5)
    # the cumulative probabilities P(y <= k) fall as the score f(x) grows: the grades in order
    score = head.proj(x).squeeze(1)
    order = score.argsort()
    cumulative = expected[order].cumsum(1)[:, :-1]
    assert bool((cumulative[1:] <= cumulative[:-1] + 1e-6).all())


def test_the_cumulative_link_head_replaces_the_linear_one_and_names_bad_choices():
    from osteolightning.models.components.backbone import classifier_head, create_backbone
    from osteolightning.models.components.heads import CumulativeLinkHead

    for name in ("resnet10t", "alexnet"):  # timm and torchvision
        net = create_backbone(name, num_classes=K, in_chans=1, head="clm", link="probit")
        assert isinstance(classifier_head(net), CumulativeLinkHead)
        assert torch.allclose(net(torch.zeros(2, 1, 64, 64)).exp().sum(1), torch.ones(2))
    with pytest.raises(ConfigError, match="Did you mean 'clm'"):
        create_backbone("resnet10t", num_classes=K, head="clmm")
    with pytest.raises(ConfigError, match="Did you mean 'logit'"):
        create_backbone("resnet10t", num_classes=K, head="clm", link="logits")
    with pytest.raises(ConfigError, match="at least 3 ordered classes"):
        create_backbone("resnet10t", num_classes=2, head="clm")


def test_a_classifier_fits_with_the_cumulative_link_head_and_reloads(make_cfg):
    from osteolightning.models.checkpointing import load_model
    from osteolightning.models.components.heads import CumulativeLinkHead

    cfg = make_cfg("train", ["debug=tiny", "model.net.head=clm", "model/loss=ordinal"])
    metrics, objects = train(cfg)
    assert isinstance(objects["model"].net.get_classifier(), CumulativeLinkHead)
    assert 0 <= metrics["test/grade_mae"] <= 2
    best = objects["trainer"].checkpoint_callback.best_model_path
    reloaded = load_model(best)
    assert isinstance(reloaded.net.get_classifier(), CumulativeLinkHead)
    x = torch.zeros(1, 1, cfg.image_size, cfg.image_size)
    reloaded.eval()
    assert torch.allclose(reloaded(x).exp().sum(1), torch.ones(1), atol=1e-5)
