"""Pairwise model comparison, each statistic checked against an independent reference."""

import math
import warnings

import numpy as np
import pytest
from matplotlib import pyplot as plt
from PIL import Image
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from osteolightning.errors import ConfigError
from osteolightning.metrics.compare import (
    corrected_resampled_ttest,
    delong_ovr,
    delong_test,
    friedman_critical_difference,
    holm,
    mcnemar_test,
    paired_bootstrap,
    paired_bootstrap_scores,
)
from osteolightning.metrics.compare_figures import plot_critical_difference
from osteolightning.metrics.report import cluster_resample_indices

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _pooled(n_images=40, seed=0, strength_a=1.5, strength_b=1.0):
    """Out-of-fold style rows: each image 1-3 times (seeds), one label per image."""
    rng = np.random.default_rng(seed)
    image_labels = rng.choice(3, size=n_images, p=[0.5, 0.3, 0.2])
    repeats = rng.integers(1, 4, size=n_images)
    clusters = np.repeat([f"img{i:03d}.png" for i in range(n_images)], repeats)
    labels = np.repeat(image_labels, repeats)
    onehot = np.eye(3)[labels]
    probs_a = _softmax(rng.normal(size=(len(labels), 3)) + strength_a * onehot)
    probs_b = _softmax(rng.normal(size=(len(labels), 3)) + strength_b * onehot)
    return labels, probs_a, probs_b, clusters


def _sklearn_metrics(y, p):
    pred = p.argmax(axis=1)
    return {
        "balanced_acc": balanced_accuracy_score(y, pred),
        "f1_macro": f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0),
        "auroc_macro": np.mean([roc_auc_score(y == c, p[:, c]) for c in range(3)]),
    }


def _bootstrap_p(diffs):
    tail = min((diffs <= 0).sum(), (diffs >= 0).sum())
    return min(1.0, 2 * (tail + 1) / (len(diffs) + 1))


# --- paired bootstrap -----------------------------------------------------------------------


def test_paired_bootstrap_equals_a_loop_over_sklearn():
    labels, pa, pb, clusters = _pooled()
    n_resamples = 100
    outs = [  # max_bytes=2000: many small chunks of resamples, same answer
        paired_bootstrap(labels, pa, pb, clusters, CLASSES, n_resamples=n_resamples, seed=3,
                         max_bytes=max_bytes)
        for max_bytes in (64 << 20, 2000)
    ]  # fmt: skip
    resamples = cluster_resample_indices(labels, clusters, n_resamples, seed=3)
    boot_a = [_sklearn_metrics(labels[i], pa[i]) for i in resamples]
    boot_b = [_sklearn_metrics(labels[i], pb[i]) for i in resamples]
    point_a, point_b = _sklearn_metrics(labels, pa), _sklearn_metrics(labels, pb)
    for name in ("balanced_acc", "f1_macro", "auroc_macro"):
        diffs = np.array([a[name] - b[name] for a, b in zip(boot_a, boot_b, strict=True)])
        for out in outs:
            got = out[name]
            assert got["a"] == pytest.approx(point_a[name], abs=1e-12)
            assert got["b"] == pytest.approx(point_b[name], abs=1e-12)
            assert got["diff"] == pytest.approx(point_a[name] - point_b[name], abs=1e-12)
            assert got["ci"] == pytest.approx(list(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
            assert got["p_value"] == pytest.approx(_bootstrap_p(diffs), abs=1e-12)
            assert got["n_defined"] == n_resamples


def test_paired_bootstrap_of_a_model_with_itself_and_with_a_clearly_better_one():
    labels, pa, pb, clusters = _pooled()
    same = paired_bootstrap(labels, pa, pa, clusters, CLASSES, n_resamples=200)
    for entry in same.values():
        assert entry["diff"] == 0 and entry["ci"] == [0.0, 0.0] and entry["p_value"] == 1.0
    perfect = 0.1 + 0.7 * np.eye(3)[labels]
    chance = np.full_like(pa, 1 / 3) + 1e-3 * np.eye(3)[(labels + 1) % 3]  # always wrong
    better = paired_bootstrap(labels, perfect, chance, clusters, CLASSES, n_resamples=200)
    assert better["balanced_acc"]["diff"] == 1.0
    assert better["balanced_acc"]["p_value"] == pytest.approx(2 / 201)  # the +1 correction


def test_paired_bootstrap_interval_holds_the_difference_and_shrinks_with_more_images():
    widths = {}
    for n_images in (40, 640):  # 16 times the images: about a quarter of the width
        labels, pa, pb, clusters = _pooled(n_images, seed=1, strength_a=2.5, strength_b=0.5)
        result = paired_bootstrap(labels, pa, pb, clusters, CLASSES, n_resamples=200)
        for name, entry in result.items():
            low, high = entry["ci"]
            assert low <= entry["diff"] <= high, (n_images, name)
            widths[(n_images, name)] = high - low
    for name in ("balanced_acc", "f1_macro", "auroc_macro"):
        assert widths[(640, name)] < 0.5 * widths[(40, name)], name


def test_paired_bootstrap_counts_an_image_once_however_many_rows_it_has():
    """An image predicted identically by three seeds must weigh what it weighs with one row."""
    labels, pa, pb, clusters = _pooled()
    first = np.unique(clusters, return_index=True)[1]
    single = paired_bootstrap(labels[first], pa[first], pb[first], clusters[first], CLASSES)
    triple = np.repeat(first, 3)
    tripled = paired_bootstrap(labels[triple], pa[triple], pb[triple], clusters[triple], CLASSES)
    for name, entry in single.items():
        assert tripled[name]["ci"] == pytest.approx(entry.pop("ci"), abs=1e-12)
        assert {key: tripled[name][key] for key in entry} == pytest.approx(entry, abs=1e-12)


def test_paired_bootstrap_reports_undefined_metrics_as_none():
    labels, pa, pb, clusters = _pooled()
    keep = labels != 2  # osteoporosis absent: its one-vs-rest AUROC is undefined
    out = paired_bootstrap(
        labels[keep], pa[keep], pb[keep], clusters[keep], CLASSES,
        metrics=["auroc_osteoporosis", "auroc_normal"], n_resamples=50,
    )  # fmt: skip
    assert out["auroc_osteoporosis"] == {
        "a": None, "b": None, "diff": None, "ci": None, "p_value": None, "n_defined": 0,
    }  # fmt: skip
    assert out["auroc_normal"]["p_value"] is not None and out["auroc_normal"]["n_defined"] == 50


def test_paired_bootstrap_scores_equals_a_loop_with_nanmean():
    rng = np.random.default_rng(1)
    clusters = np.repeat([f"img{i}" for i in range(30)], 2)
    a = rng.uniform(0.6, 0.95, size=60)
    b = np.clip(a - 0.03 + rng.normal(0, 0.05, size=60), 0, 1)
    a[[3, 17]] = np.nan  # Dice undefined (both masks empty) on some rows
    out = paired_bootstrap_scores(a, b, clusters, n_resamples=150, seed=2)
    resamples = cluster_resample_indices(np.zeros(60, int), clusters, 150, seed=2)
    diffs = np.array([np.nanmean(a[i]) - np.nanmean(b[i]) for i in resamples])
    assert out["a"] == pytest.approx(np.nanmean(a)) and out["b"] == pytest.approx(b.mean())
    assert out["diff"] == pytest.approx(np.nanmean(a) - b.mean())
    assert out["ci"] == pytest.approx(list(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
    assert out["p_value"] == pytest.approx(_bootstrap_p(diffs), abs=1e-12)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"metrics": ("f1_marco",)}, "did you mean 'f1_macro'"),
        ({"probs_b": np.ones((5, 3))}, "`probs_b`"),
        ({"clusters": ["x"] * 3}, "`clusters`"),
        ({"confidence": 1.5}, "`confidence`"),
        ({"n_resamples": 0}, "`n_resamples`"),
        ({"labels": np.full(60, 3)}, "`labels`"),
    ],
)
def test_paired_bootstrap_rejects_bad_arguments(change, match):
    labels, pa, pb, clusters = _pooled(n_images=60)
    kwargs = {"labels": labels[:60], "probs_a": pa[:60], "probs_b": pb[:60]}
    kwargs |= {"clusters": clusters[:60], "class_names": CLASSES, **change}
    with pytest.raises(ConfigError, match=match):
        paired_bootstrap(**kwargs)


def test_paired_bootstrap_scores_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="`scores_b`"):
        paired_bootstrap_scores([0.1, 0.2, 0.3], [0.1, 0.2], ["a", "b", "c"])
    with pytest.raises(ConfigError, match="`scores_a`"):
        paired_bootstrap_scores([0.1, np.inf], [0.1, 0.2], ["a", "b"])


# --- DeLong ---------------------------------------------------------------------------------


def delong_reference(y, a, b):
    """DeLong et al. (1988) from its definitions, O(m n): the kernel psi(x, y) = 1 if x > y,
    1/2 if x = y, 0 otherwise over every positive-negative pair; structural components
    V10(x_i) = mean_j psi(x_i, y_j), V01(y_j) = mean_i psi(x_i, y_j); S10, S01 their sample
    covariances between the two models; Var(A - B) = S10 / m + S01 / n contracted with (1, -1)."""
    y = np.asarray(y, dtype=bool)
    comps10, comps01, aucs = [], [], []
    for s in (a, b):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # (m, n)
        aucs.append(psi.mean())
        comps10.append(psi.mean(axis=1))
        comps01.append(psi.mean(axis=0))
    m, n = y.sum(), (~y).sum()

    def s_matrix(comps, size):
        centred = [c - c.mean() for c in comps]
        return np.array([[(u * v).sum() / (size - 1) for v in centred] for u in centred])

    s = s_matrix(comps10, m) / m + s_matrix(comps01, n) / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (aucs[0] - aucs[1]) / math.sqrt(var)
    return {"auc_a": aucs[0], "auc_b": aucs[1], "var_a": s[0, 0], "var_b": s[1, 1],
            "cov": s[0, 1], "se": math.sqrt(var), "z": z,
            "p_value": math.erfc(abs(z) / math.sqrt(2))}  # fmt: skip


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_equals_the_placement_value_reference(tied, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=90)
    a = y * 0.8 + rng.normal(size=90)
    b = 0.5 * a + y * 0.3 + rng.normal(size=90)  # correlated with a
    if tied:  # many tied scores, within and across the classes
        a, b = np.round(a, 0), np.round(b, 0)
    got, ref = delong_test(y, a, b), delong_reference(y, a, b)
    assert got["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert got["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-10), key
    assert got["diff"] == pytest.approx(ref["auc_a"] - ref["auc_b"], abs=1e-12)
    assert (got["n_pos"], got["n_neg"]) == (y.sum(), (1 - y).sum())


def test_delong_p_values_are_roughly_uniform_under_the_null():
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 40)
    p_values = []
    for _ in range(300):
        latent = y + rng.normal(size=80)  # shared signal: the AUROCs are correlated and equal
        a, b = latent + rng.normal(size=80), latent + rng.normal(size=80)
        p_values.append(delong_test(y, a, b)["p_value"])
    p_values = np.array(p_values)
    assert 0.02 <= (p_values < 0.05).mean() <= 0.09
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


def test_delong_degenerate_inputs():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    same = delong_test(y, s, s**2)  # a monotone transform ranks every pair identically
    assert same["diff"] == 0 and same["z"] == 0 and same["p_value"] == 1.0
    perfect, constant = y.astype(float), np.full(6, 0.5)
    sure = delong_test(y, perfect, constant)  # every structural component is constant
    assert sure["se"] == 0 and sure["z"] == math.inf and sure["p_value"] == 0.0
    for bad_y, match in [(np.zeros(6), "2 positives"), (np.array([1, 0, 0, 0, 0, 0]), "got 1")]:
        with pytest.raises(ConfigError, match=match):
            delong_test(bad_y, s, s)
    with pytest.raises(ConfigError, match="binary"):
        delong_test(np.array([0, 1, 2, 1, 0, 1]), s, s)
    with pytest.raises(ConfigError, match="`scores_b`"):
        delong_test(y, s, s[:5])


def test_delong_ovr_per_class_and_an_absent_class():
    labels, pa, pb, _ = _pooled(n_images=80)
    out = delong_ovr(labels, pa, pb, CLASSES)
    for c, name in enumerate(CLASSES):
        assert out[name] == delong_test((labels == c).astype(int), pa[:, c], pb[:, c])
    keep = labels != 1
    absent = delong_ovr(labels[keep], pa[keep], pb[keep], CLASSES)["osteopenia"]
    assert absent["p_value"] is None and absent["auc_a"] is None and absent["n_pos"] == 0


# --- McNemar --------------------------------------------------------------------------------


def _from_table(both, a_only, b_only, neither):
    """Labels and two prediction vectors realising a correctness table."""
    n = both + a_only + b_only + neither
    labels = np.zeros(n, dtype=int)
    ra = np.r_[np.ones(both + a_only), np.zeros(b_only + neither)].astype(bool)
    rb = np.r_[np.ones(both), np.zeros(a_only), np.ones(b_only), np.zeros(neither)].astype(bool)
    return labels, np.where(ra, 0, 1), np.where(rb, 0, 2)


def test_mcnemar_agresti_presidential_approval():
    """Agresti (1990), Categorical Data Analysis, p. 350 (also the example of R's
    ``mcnemar.test``): 1600 voters, approve/approve 794, approve/disapprove 150,
    disapprove/approve 86, disapprove/disapprove 570. With 236 discordant pairs the
    continuity-corrected chi-square is (|150 - 86| - 1)^2 / 236 = 3969 / 236 = 16.818,
    p = 4.115e-05 (as R prints)."""
    out = mcnemar_test(*_from_table(794, 150, 86, 570))
    assert out["table"] == [[794, 150], [86, 570]] and not out["exact"]
    assert (out["a_only"], out["b_only"]) == (150, 86)
    assert out["statistic"] == pytest.approx(3969 / 236, abs=1e-12)
    assert out["p_value"] == pytest.approx(4.115e-05, abs=5e-9)


def test_mcnemar_exact_binomial_for_few_discordant_pairs():
    """11 vs 3 discordant pairs (calcugator's death-penalty example): the exact two-sided
    p-value is 2 (C(14,0) + C(14,1) + C(14,2) + C(14,3)) / 2^14 = 940 / 16384."""
    out = mcnemar_test(*_from_table(1, 11, 3, 5))
    assert out["exact"] and out["statistic"] == 3
    assert out["p_value"] == pytest.approx(940 / 16384, abs=1e-15)


@pytest.mark.parametrize("n", [30, 400])  # exact and chi-square regimes
def test_mcnemar_equals_statsmodels(n):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 3, size=n)
    preds_a = np.where(rng.random(n) < 0.8, labels, (labels + 1) % 3)
    preds_b = np.where(rng.random(n) < 0.7, labels, (labels + 2) % 3)
    out = mcnemar_test(labels, preds_a, preds_b)
    ra, rb = preds_a == labels, preds_b == labels
    table = [[np.sum(ra & rb), np.sum(ra & ~rb)], [np.sum(~ra & rb), np.sum(~ra & ~rb)]]
    ref = mcnemar(table, exact=table[0][1] + table[1][0] < 25, correction=True)
    assert out["table"] == np.array(table).tolist()
    assert out["statistic"] == pytest.approx(ref.statistic, abs=1e-12)
    assert out["p_value"] == pytest.approx(ref.pvalue, abs=1e-12)
    assert mcnemar_test(labels, preds_a, preds_a)["p_value"] == 1.0
    with pytest.raises(ConfigError, match="`preds_b`"):
        mcnemar_test(labels, preds_a, preds_b[:-1])
    with pytest.raises(ConfigError, match="`labels` to hold finite integers"):
        mcnemar_test(labels + 0.5, preds_a, preds_b)


# --- corrected resampled t-test -------------------------------------------------------------


def test_corrected_ttest_worked_example():
    """d = 1..5 over J = 5 folds, n_test/n_train = 20/80: var = 2.5, se^2 = (1/5 + 1/4) 2.5 =
    9/8, t = 3 / sqrt(9/8) = 2 sqrt(2); with 4 df, 1 - F(t) has the closed form below."""
    out = corrected_resampled_ttest([1, 2, 3, 4, 5], n_train=80, n_test=20)
    assert out["t"] == pytest.approx(2 * math.sqrt(2), abs=1e-12)
    assert out["df"] == 4 and out["mean"] == 3 and out["std"] == pytest.approx(math.sqrt(2.5))
    assert out["p_value"] == pytest.approx(1 - 7 / 6 * math.sqrt(2 / 3), abs=1e-12)


def test_corrected_ttest_against_scipy():
    rng = np.random.default_rng(4)
    d = rng.normal(0.01, 0.02, size=(3, 5))  # seeds x folds
    plain = stats.ttest_1samp(d.ravel(), 0.0)
    nearly_plain = corrected_resampled_ttest(d, n_train=10**15, n_test=1)  # correction -> 0
    assert nearly_plain["t"] == pytest.approx(plain.statistic, rel=1e-9)
    assert nearly_plain["p_value"] == pytest.approx(plain.pvalue, rel=1e-9)
    out = corrected_resampled_ttest(d, n_train=400, n_test=100)
    j = d.size
    assert out["t"] == pytest.approx(plain.statistic * math.sqrt((1 / j) / (1 / j + 0.25)))
    assert out["p_value"] > plain.pvalue


def test_corrected_ttest_zero_variance_and_bad_arguments():
    assert corrected_resampled_ttest([0.0] * 4, 80, 20)["p_value"] == 1.0
    const = corrected_resampled_ttest([0.1] * 4, 80, 20)
    assert const["t"] == math.inf and const["p_value"] == 0.0
    for args, match in [(([0.1], 80, 20), "`differences`"), (([0.1, 0.2], 0, 20), "`n_train`"),
                        (([0.1, np.nan], 80, 20), "finite")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            corrected_resampled_ttest(*args)


# --- Holm -----------------------------------------------------------------------------------


def test_holm_hand_example_and_statsmodels():
    # sorted 0.01, 0.03, 0.04 over a family of 3: 0.03, 0.06, max(0.04, 0.06) = 0.06
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    p = list(np.random.default_rng(0).uniform(0, 0.2, size=12))
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-15)
    assert holm({"a-b": 0.2, "a-c": None, "b-c": 0.01}) == {"a-b": 0.2, "a-c": None, "b-c": 0.02}
    assert holm([None, None]) == [None, None] and holm([]) == []
    with pytest.raises(ConfigError, match="`pvalues`.*1.5"):
        holm([0.1, 1.5])


# --- Friedman, Nemenyi, CD diagram ----------------------------------------------------------


@pytest.mark.parametrize(("k", "q"), [(3, 2.343), (4, 2.569), (5, 2.728), (10, 3.164)])
def test_nemenyi_q_equals_demsar_table(k, q):
    """Demšar (2006), Table 5(a): critical values of the two-tailed Nemenyi test, alpha 0.05."""
    out = friedman_critical_difference(
        np.random.default_rng(k).random((14, k)), list("abcdefghij")[:k]
    )
    assert out["q_alpha"] == pytest.approx(q, abs=1e-3)  # the table rounds
    assert out["cd"] == pytest.approx(out["q_alpha"] * math.sqrt(k * (k + 1) / (6 * 14)))
    if k == 4:  # Demšar's worked example, section 3.2.4: 14 data sets, CD = 1.25
        assert out["cd"] == pytest.approx(1.25, abs=5e-3)


def test_friedman_ranks_and_statistic_against_scipy():
    rng = np.random.default_rng(5)
    scores = np.round(rng.random((12, 5)) + np.linspace(0, 0.5, 5), 1)  # ties
    names = ["alexnet", "resnet18", "densenet121", "effnet_b0", "convnext_tiny"]
    out = friedman_critical_difference(scores, names)
    ranks = np.mean([stats.rankdata(-row) for row in scores], axis=0)
    assert out["avg_ranks"] == pytest.approx(list(ranks), abs=1e-12)
    ref = stats.friedmanchisquare(*scores.T)
    assert out["statistic"] == pytest.approx(ref.statistic) and out["p_value"] == pytest.approx(
        ref.pvalue
    )
    n, k, chi2 = 12, 5, ref.statistic
    f = (n - 1) * chi2 / (n * (k - 1) - chi2)  # Iman & Davenport (1980), Demšar eq. (2)
    assert out["iman_davenport_f"] == pytest.approx(f)
    assert out["iman_davenport_p"] == pytest.approx(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


@pytest.mark.parametrize(
    ("n_blocks", "groups"),
    [
        (10, [["a", "b"], ["b", "c"], ["c", "d"]]),  # CD = 2.569 sqrt(20/60) = 1.483
        (4, [["a", "b", "c"], ["b", "c", "d"]]),  # CD = 2.569 sqrt(20/24) = 2.345
    ],
)
def test_nemenyi_groups_by_hand(n_blocks, groups):
    scores = np.tile([4.0, 3.0, 2.0, 1.0], (n_blocks, 1))  # ranks exactly 1, 2, 3, 4
    out = friedman_critical_difference(scores[:, [3, 0, 2, 1]], ["d", "a", "c", "b"])
    assert out["avg_ranks"] == [4, 1, 3, 2] and out["groups"] == groups


def test_friedman_all_ties_and_bad_arguments():
    out = friedman_critical_difference(np.ones((5, 3)), ["a", "b", "c"])
    assert out["statistic"] == 0 and out["p_value"] == 1 and out["groups"] == [["a", "b", "c"]]
    with pytest.raises(ConfigError, match="n_methods >= 3"):
        friedman_critical_difference(np.ones((5, 2)), ["a", "b"])
    with pytest.raises(ConfigError, match="`names`"):
        friedman_critical_difference(np.ones((5, 3)), ["a", "a", "b"])
    with pytest.raises(ConfigError, match="`scores`"):
        friedman_critical_difference(np.full((5, 3), np.nan), ["a", "b", "c"])


def test_critical_difference_diagram_is_a_valid_png(tmp_path):
    rng = np.random.default_rng(0)
    names = ["alexnet", "resnet18", "densenet121", "effnet_b0", "convnext_tiny", "vit_small"]
    result = friedman_critical_difference(rng.random((14, 6)) + np.arange(6) * 0.15, names)
    before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_critical_difference(result, tmp_path / "cd" / "diagram.png")
    assert path == tmp_path / "cd" / "diagram.png" and plt.get_fignums() == before
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 100
