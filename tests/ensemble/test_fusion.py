"""Fusion rules: the fuzzy rank ensemble against values worked out here with plain ``math``
(never by calling the implementation), and the baselines on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from osteolightning.ensemble import (
    FUSIONS,
    fit_fusion_weights,
    fuse,
    fuzzy_rank_fusion,
    fuzzy_scores_to_probs,
    majority_vote_fusion,
    mean_probability_fusion,
    rank_score,
    weighted_mean_fusion,
)
from osteolightning.ensemble import PENALTY as LIB_PENALTY
from osteolightning.errors import ConfigError


def rs(p: float) -> float:
    """Manna et al. (2021): R1 = 1 - exp(-(p-1)^2/2), R2 = 1 - tanh((p-1)^2/2), RS = R1 * R2."""
    d = (p - 1.0) ** 2 / 2.0
    return (1.0 - math.exp(-d)) * (1.0 - math.tanh(d))


PENALTY = (1.0 - math.exp(-0.5)) * (1.0 - math.tanh(0.5))  # RS(0), the top-k penalty

# 3 models × 4 samples × 3 classes. Sample 3 is where fuzzy and mean fusion disagree: the mean
# follows model 0's lone 0.7 for class 1, the fuzzy ranks follow the two models backing class 2.
WORKED = [
    [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.3, 0.7, 0.0]],
    [[0.5, 0.4, 0.1], [0.4, 0.4, 0.2], [0.2, 0.5, 0.3], [0.2, 0.2, 0.6]],
    [[0.3, 0.6, 0.1], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]],
]


def expected_fuzzy(probs: list, top_k: int | None = None) -> tuple[list, list]:
    """The fused scores and argmins, written out sample by sample."""
    n, k = len(probs[0]), len(probs[0][0])
    scores = [[0.0] * k for _ in range(n)]
    for model in probs:
        for s, row in enumerate(model):
            top = sorted(range(k), key=lambda c: (-row[c], c))[: top_k or k]
            for c, p in enumerate(row):
                scores[s][c] += rs(p) if c in top else PENALTY
    return scores, [min(range(k), key=lambda c: (row[c], c)) for row in scores]


def random_probs(m: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=(m, n))


def test_rank_score_and_penalty():
    assert rs(1.0) == 0.0 and rs(0.0) == PENALTY
    assert pytest.approx(0.2116404, abs=1e-7) == PENALTY
    assert pytest.approx(PENALTY, abs=1e-15) == LIB_PENALTY
    grid = [i / 20 for i in range(21)]
    np.testing.assert_allclose(rank_score(np.array(grid)), [rs(p) for p in grid], atol=1e-15)
    assert all(rs(a) > rs(b) for a, b in zip(grid, grid[1:], strict=False))  # lower = better


def test_fuzzy_rank_matches_the_worked_example():
    scores, preds = fuzzy_rank_fusion(np.array(WORKED))
    want_scores, want_preds = expected_fuzzy(WORKED)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-12)
    assert preds.tolist() == want_preds == [0, 1, 0, 2]
    assert mean_probability_fusion(np.array(WORKED))[1].tolist()[3] == 1  # the mean disagrees
    assert scores.shape == (4, 3) and preds.dtype == np.int64


def test_fuzzy_ties_go_to_the_lowest_class_index():
    a, b, c = 0.5, 0.3, 0.2  # a Latin square: every class has the multiset {a, b, c}
    latin = np.array([[[a, b, c]], [[b, c, a]], [[c, a, b]]])  # unsorted sums differ in the ulp
    scores, preds = fuzzy_rank_fusion(latin)
    assert scores[0, 0] == scores[0, 1] == scores[0, 2]  # bit-identical whatever the order
    assert preds.tolist() == [0]
    # classes 1 and 2 tie below class 0 → class 1
    scores, preds = fuzzy_rank_fusion(np.array([[[0.2, 0.4, 0.4]], [[0.0, 0.5, 0.5]]]))
    assert scores[0, 1] == scores[0, 2] < scores[0, 0]
    assert preds.tolist() == [1]


def test_single_model_predicts_its_argmax():
    probs = random_probs(1, 50, 3, seed=1)
    scores, preds = fuzzy_rank_fusion(probs)
    assert preds.tolist() == probs[0].argmax(axis=1).tolist()
    np.testing.assert_allclose(scores, [[rs(p) for p in row] for row in probs[0]], atol=1e-12)


@pytest.mark.parametrize("top_k", [1, 2])
def test_top_k_gives_the_penalty_outside_each_models_top_k(top_k):
    scores, preds = fuzzy_rank_fusion(np.array(WORKED), top_k=top_k)
    want_scores, want_preds = expected_fuzzy(WORKED, top_k=top_k)
    np.testing.assert_allclose(scores, want_scores, atol=1e-12)
    assert preds.tolist() == want_preds
    if top_k == 1:  # sample 0: class 2 is no model's top class → 3 × RS(0) exactly
        assert scores[0, 2] == pytest.approx(3 * PENALTY, abs=1e-15)
        assert scores[0, 0] == pytest.approx(rs(0.7) + rs(0.5) + PENALTY, abs=1e-15)


def test_top_k_equal_to_the_classes_changes_nothing():
    probs = random_probs(3, 20, 3, seed=2)
    np.testing.assert_array_equal(fuzzy_rank_fusion(probs, 3)[0], fuzzy_rank_fusion(probs)[0])


def test_torch_in_torch_out():
    probs = torch.tensor(WORKED, dtype=torch.float32)
    scores, preds = fuzzy_rank_fusion(probs)
    assert isinstance(scores, torch.Tensor) and scores.dtype == torch.float32
    assert isinstance(preds, torch.Tensor) and preds.dtype == torch.int64
    assert preds.tolist() == [0, 1, 0, 2]
    np.testing.assert_allclose(scores.numpy(), expected_fuzzy(WORKED)[0], atol=1e-6)
    fused, _ = fuse("mean", probs)
    assert isinstance(fused, torch.Tensor) and fused.dtype == torch.float32


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.full((4, 3), 1 / 3), r"3-D .* but got shape \(4, 3\)"),
        (np.zeros((2, 0, 3)), "non-empty"),
        ([[[np.nan, 0.5, 0.5]]], "finite, but model 0, sample 0, class 0 is nan"),
        ([[[0.5, 0.5, 0.0]], [[-0.2, 0.6, 0.6]]], r"\[0, 1\], but model 1, sample 0, class 0"),
        ([[[0.5, 0.5], [0.2, 0.8]], [[0.5, 0.5], [0.2, 0.7]]], "model 1, sample 1 sums to 0.9"),
        ("not numbers", "numeric array"),
    ],
)
def test_invalid_probs_are_named(probs, match):
    with pytest.raises(ConfigError, match=match):
        fuzzy_rank_fusion(probs)


@pytest.mark.parametrize("top_k", [0, 4, 5, 1.5, True, "2"])
def test_invalid_top_k(top_k):
    with pytest.raises(
        ConfigError, match=r"Expected argument `top_k` to be an integer in \[1, 3\]"
    ):
        fuzzy_rank_fusion(np.array(WORKED), top_k=top_k)
    if top_k == 5:
        with pytest.raises(ConfigError) as err:
            fuzzy_rank_fusion(np.array(WORKED), top_k=top_k)
        assert str(err.value) == "Expected argument `top_k` to be an integer in [1, 3], but got 5."


def test_sums_within_tolerance_are_accepted():
    probs = np.array(WORKED)
    probs[0, 0] = [0.7004, 0.2, 0.1]  # sums to 1.0004 (CSV rounding)
    assert fuzzy_rank_fusion(probs)[1].tolist() == [0, 1, 0, 2]


def test_fuzzy_scores_to_probs_keeps_the_fuzzy_decision():
    probs = random_probs(3, 200, 3, seed=3)
    scores, preds = fuzzy_rank_fusion(probs)
    conf = fuzzy_scores_to_probs(scores, 3)
    np.testing.assert_allclose(conf.sum(axis=1), 1.0, atol=1e-12)
    assert (conf >= 0).all() and (conf <= 1).all()
    np.testing.assert_array_equal(conf.argmax(axis=1), preds)
    # monotone within a sample: ordering by confidence reverses ordering by score
    for s_row, c_row in zip(scores, conf, strict=True):
        assert (np.argsort(s_row, kind="stable") == np.argsort(-c_row, kind="stable")).all()
    # by hand: scores (0, RS(0)) of one model → confidences (1, 0); an all-penalty row → uniform
    np.testing.assert_allclose(fuzzy_scores_to_probs(np.array([[0.0, PENALTY]]), 1), [[1.0, 0.0]])
    np.testing.assert_allclose(fuzzy_scores_to_probs(np.full((1, 4), 2 * PENALTY), 2), [[0.25] * 4])
    with pytest.raises(ConfigError, match="`n_models` to be a positive integer"):
        fuzzy_scores_to_probs(scores, 0)


def test_mean_fusion():
    probs = np.array([[[0.9, 0.1], [0.4, 0.6]], [[0.2, 0.8], [0.3, 0.7]]])
    fused, preds = mean_probability_fusion(probs)
    np.testing.assert_allclose(fused, [[0.55, 0.45], [0.35, 0.65]])
    assert preds.tolist() == [0, 1]


def test_majority_vote_beats_the_mean_and_ties_go_by_the_mean():
    # two lukewarm votes for class 0 beat one certain vote for class 1 (whose mean is higher)
    probs = np.array([[[0.55, 0.45]], [[0.55, 0.45]], [[0.0, 1.0]]])
    fused, preds = majority_vote_fusion(probs)
    assert preds.tolist() == [0] and mean_probability_fusion(probs)[1].tolist() == [1]
    np.testing.assert_allclose(fused, [[(2 + 1.1 / 3) / 4, (1 + 1.9 / 3) / 4]])
    # one vote each for classes 0 and 2: the higher mean probability (class 2) wins
    tied = np.array([[[0.5, 0.1, 0.4]], [[0.1, 0.3, 0.6]]])
    fused, preds = majority_vote_fusion(tied)
    assert preds.tolist() == [2]
    np.testing.assert_allclose(fused.sum(axis=1), 1.0)
    # identical votes and means → lowest index
    assert majority_vote_fusion(np.array([[[0.5, 0.5]], [[0.5, 0.5]]]))[1].tolist() == [0]


def test_weighted_mean_fusion():
    probs = np.array([[[0.9, 0.1]], [[0.2, 0.8]]])
    fused, preds = weighted_mean_fusion(probs, [1, 3])  # normalised to 0.25 / 0.75
    np.testing.assert_allclose(fused, [[0.25 * 0.9 + 0.75 * 0.2, 0.25 * 0.1 + 0.75 * 0.8]])
    assert preds.tolist() == [1]
    np.testing.assert_allclose(weighted_mean_fusion(probs, [1, 0])[0], probs[0])
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0], [np.inf, 1.0]):
        with pytest.raises(ConfigError, match="Expected argument `weights` to be 2 finite"):
            weighted_mean_fusion(probs, bad)


def test_fit_fusion_weights_prefers_the_model_that_is_right():
    rng = np.random.default_rng(4)
    n, k = 120, 3
    labels = rng.integers(0, k, size=n)
    good = np.full((n, k), 0.1)
    good[np.arange(n), labels] = 0.8  # right on every sample
    noise = rng.dirichlet(np.ones(k), size=n)  # guesses
    weights = fit_fusion_weights(np.stack([noise, good]), labels)
    assert weights.shape == (2,) and (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0)
    assert weights[1] > 0.9 > weights[0]
    with pytest.raises(ConfigError, match="`val_labels` to be 120 class indices in"):
        fit_fusion_weights(np.stack([noise, good]), labels[:-1])
    assert isinstance(
        fit_fusion_weights(torch.tensor(np.stack([noise, good])), labels), torch.Tensor
    )


@pytest.mark.parametrize("method", sorted(FUSIONS))
def test_every_registered_method_fuses_to_probabilities(method):
    probs = random_probs(3, 40, 3, seed=5)
    weights = [0.2, 0.3, 0.5] if method == "weighted_mean" else None
    fused, preds = fuse(method, probs, weights=weights)
    assert fused.shape == (40, 3) and preds.shape == (40,)
    np.testing.assert_allclose(fused.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(fused.argmax(axis=1), preds)
    t_fused, t_preds = fuse(method, torch.from_numpy(probs), weights=weights)
    np.testing.assert_allclose(t_fused.numpy(), fused)
    np.testing.assert_array_equal(t_preds.numpy(), preds)


def test_fuse_checks_the_method_name_and_options(caplog):
    with pytest.raises(ConfigError, match="Did you mean `fuzzy_rank`"):
        fuse("fuzy_rank", np.array(WORKED))
    with pytest.raises(ConfigError, match="`weighted_mean` needs `weights`"):
        fuse("weighted_mean", np.array(WORKED))
    with caplog.at_level("WARNING"):
        fuse("mean", np.array(WORKED), top_k=2)
    assert "Ignoring `top_k=2`" in caplog.text
