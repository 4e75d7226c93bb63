"""The stratified cluster bootstrap of pooled predictions (an image under several seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from osteolightning.errors import ConfigError
from osteolightning.metrics.report import (
    cluster_bootstrap_report,
    cluster_resample_indices,
    evaluation_report,
    metric_table,
)

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    probs = rng.dirichlet(np.ones(3), size=n)
    probs[np.arange(n), labels] += 0.4
    return labels, probs / probs.sum(axis=1, keepdims=True)


def test_resamples_draw_whole_clusters_within_each_class():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    clusters = ["a", "a", "b", "c", "c", "d", "d", "e", "e"]  # sizes 2, 1, 2, 2, 2
    resamples = cluster_resample_indices(labels, clusters, n_resamples=200, seed=1)
    assert len(resamples) == 200
    lengths = {len(r) for r in resamples}
    assert len(lengths) > 1  # "a" (2 rows) and "b" (1 row) drawn in varying numbers
    for rows in resamples:
        keys = [clusters[i] for i in rows]
        for key in set(keys):  # a drawn cluster comes with all its rows
            members = [i for i, c in enumerate(clusters) if c == key]
            assert keys.count(key) % len(members) == 0
        drawn = {c: keys.count(c) // clusters.count(c) for c in set(keys)}
        per_class = np.bincount(
            [labels[clusters.index(c)] for c, k in drawn.items() for _ in range(k)], minlength=3
        )
        assert per_class.tolist() == [2, 1, 2]  # clusters per class kept (stratified)


def test_an_image_under_three_seeds_counts_once():
    labels, probs = _data()
    paths = [f"img{i}" for i in range(len(labels))]
    single = cluster_bootstrap_report(labels, probs, paths, CLASSES, n_resamples=300)
    tripled = cluster_bootstrap_report(
        np.tile(labels, 3), np.tile(probs, (3, 1)), paths * 3, CLASSES, n_resamples=300
    )
    reference = evaluation_report(labels, probs, CLASSES, n_resamples=300)
    for key in ("acc", "f1_macro", "auroc_macro", "kappa_quadratic"):
        assert single[f"test/{key}"] == pytest.approx(reference[f"test/{key}"])
        assert tripled[f"test/{key}"] == pytest.approx(single[f"test/{key}"])
        # identical rows: the cluster interval is that of one copy, not three times narrower
        assert tripled[f"test/{key}_ci95"] == pytest.approx(single[f"test/{key}_ci95"])
        low, high = tripled[f"test/{key}_ci95"]
        assert low <= tripled[f"test/{key}"] <= high
    naive = evaluation_report(np.tile(labels, 3), np.tile(probs, (3, 1)), CLASSES, n_resamples=300)
    width = lambda r: r["test/acc_ci95"][1] - r["test/acc_ci95"][0]  # noqa: E731
    assert width(naive) < 0.75 * width(tripled)  # treating copies as images overstates certainty
    assert (tripled["test/n"], tripled["test/n_clusters"]) == (180, 60)


def test_unequal_cluster_sizes_and_point_estimates():
    labels, probs = _data(n=45, seed=2)
    rng = np.random.default_rng(3)
    other = rng.dirichlet(np.ones(3), size=45)
    keep = rng.random(45) < 0.6  # a second seed for some images only
    y = np.concatenate([labels, labels[keep]])
    p = np.concatenate([probs, other[keep]])
    clusters = [f"i{i}" for i in range(45)] + [f"i{i}" for i in np.flatnonzero(keep)]
    report = cluster_bootstrap_report(y, p, clusters, CLASSES, n_resamples=200, max_bytes=4096)
    point = metric_table(y[None], p[None], CLASSES)
    assert report["test/acc"] == pytest.approx(float(point["acc"][0]))
    assert report["test/n"] == len(y) and report["test/n_clusters"] == 45
    for key in ("acc", "f1_macro", "balanced_acc", "auroc_macro"):
        low, high = report[f"test/{key}_ci95"]
        assert low <= report[f"test/{key}"] <= high


def test_bad_input():
    with pytest.raises(ConfigError, match="'x' has rows with different labels"):
        cluster_resample_indices(np.array([0, 1]), ["x", "x"], 10, 0)
    with pytest.raises(ConfigError, match="one cluster key per label"):
        cluster_resample_indices(np.array([0, 1]), ["x"], 10, 0)
    with pytest.raises(ConfigError, match="zero samples"):
        cluster_bootstrap_report(np.zeros(0, int), np.zeros((0, 3)), [], CLASSES)
