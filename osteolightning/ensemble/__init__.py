"""Fusing several classifiers: the fuzzy rank-based ensemble (Manna et al. 2021) and baselines.

``osteo-ensemble runs=[RUN_DIR,...]`` (:mod:`osteolightning.ensemble.cli`) fuses the
``predictions.csv`` of finished runs.
"""

from osteolightning.utils.imports import lazy_exports

#: the public names, imported from their submodule on first use (importing the package, as
#: Hydra does for the leaderboard callback of every run, imports none of them)
_EXPORTS = {
    name: ".fusion"
    for name in (
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
    )
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
