"""Fusing several classifiers: the fuzzy rank-based ensemble (Manna et al. 2021) and baselines.

``osteo-ensemble runs=[RUN_DIR,...]`` (:mod:`osteolightning.ensemble.cli`) fuses the
``predictions.csv`` of finished runs.
"""

from osteolightning.ensemble.fusion import (
    FUSIONS,
    PENALTY,
    check_method,
    fit_fusion_weights,
    fuse,
    fuzzy_rank_fusion,
    fuzzy_scores_to_probs,
    majority_vote_fusion,
    mean_probability_fusion,
    rank_score,
    weighted_mean_fusion,
)

__all__ = [
    "FUSIONS",
    "PENALTY",
    "check_method",
    "fit_fusion_weights",
    "fuse",
    "fuzzy_rank_fusion",
    "fuzzy_scores_to_probs",
    "majority_vote_fusion",
    "mean_probability_fusion",
    "rank_score",
    "weighted_mean_fusion",
]
