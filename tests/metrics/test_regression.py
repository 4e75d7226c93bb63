import dataclasses
import math
import time

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from PIL import Image
from scipy import stats
from sklearn.metrics import mean_absolute_error, root_mean_squared_error
from sklearn.preprocessing import StandardScaler

from osteolightning.data.phantom import who_class
from osteolightning.errors import ConfigError
from osteolightning.metrics.regression import (
    SplitConformal,
    TargetScaler,
    average_ranks,
    conformal_rank,
    empirical_coverage,
    regression_report,
    who_category,
    who_one_hot,
)
from osteolightning.metrics.regression_figures import write_regression_figures
from osteolightning.metrics.report import evaluation_report

METRICS = ("mae", "rmse", "pearson_r", "spearman_rho", "ccc", "bias", "loa_low", "loa_high")
P = "test/t_score_"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _t_scores(n=200, seed=0, noise=0.6, shift=0.2, step=None):
    """T-scores of a cohort and a biased, noisy regressor (``step``: round both, many ties)."""
    rng = np.random.default_rng(seed)
    t = np.clip(rng.normal(-1.5, 1.3, n), -5, 3)
    p = 0.9 * t + shift + rng.normal(0, noise, n)
    if step:
        t, p = np.round(t / step) * step, np.round(p / step) * step
    return t, p


def _width(report, metric):
    low, high = report[f"{P}{metric}_ci95"]
    return high - low


def _ccc_direct(x, y):
    """Lin (1989), eq. 3: 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2), 1/n moments."""
    sxy = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * sxy / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def _ccc_lin_decomposition(x, y):
    """Lin (1989): rho_c = r * C_b, C_b = 2 / (v + 1/v + u^2), v = s_x/s_y, u = shift/sqrt(s_x s_y)."""
    r = stats.pearsonr(x, y).statistic
    sx, sy = x.std(), y.std()
    v, u = sx / sy, (x.mean() - y.mean()) / math.sqrt(sx * sy)
    return r * 2 / (v + 1 / v + u**2)


@pytest.mark.parametrize("step", [None, 0.5])
def test_point_metrics_equal_scikit_learn_and_scipy(step):
    t, p = _t_scores(step=step)
    r = regression_report(t, p, n_resamples=20)
    assert r[f"{P}n"] == len(t)
    assert r[f"{P}mae"] == pytest.approx(mean_absolute_error(t, p), rel=1e-12)
    assert r[f"{P}rmse"] == pytest.approx(root_mean_squared_error(t, p), rel=1e-12)
    assert r[f"{P}pearson_r"] == pytest.approx(stats.pearsonr(t, p).statistic, rel=1e-12)
    assert r[f"{P}spearman_rho"] == pytest.approx(stats.spearmanr(t, p).statistic, rel=1e-12)
    assert r[f"{P}ccc"] == pytest.approx(_ccc_direct(t, p), rel=1e-12)
    assert r[f"{P}ccc"] == pytest.approx(_ccc_lin_decomposition(t, p), rel=1e-12)
    d = p - t
    assert r[f"{P}bias"] == pytest.approx(d.mean(), rel=1e-12)
    assert r[f"{P}loa_low"] == pytest.approx(d.mean() - 1.96 * d.std(ddof=1), rel=1e-12)
    assert r[f"{P}loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1), rel=1e-12)


def test_ccc_properties_from_lin_1989():
    t, p = _t_scores()
    assert regression_report(t, t, n_resamples=5)[f"{P}ccc"] == pytest.approx(1.0)
    # same correlation, a location shift: CCC falls below r, r unchanged
    shifted = regression_report(t, t + 1.0, n_resamples=5)
    assert shifted[f"{P}pearson_r"] == pytest.approx(1.0)
    assert shifted[f"{P}ccc"] == pytest.approx(_ccc_direct(t, t + 1.0)) and shifted[f"{P}ccc"] < 1
    # equal means and variances: C_b = 1 and CCC equals Pearson's r
    z = (p - p.mean()) / p.std() * t.std() + t.mean()
    same = regression_report(t, z, n_resamples=5)
    assert same[f"{P}ccc"] == pytest.approx(same[f"{P}pearson_r"], rel=1e-12)
    # exact disagreement y = -x around 0: CCC = -1
    x = t - t.mean()
    assert regression_report(x, -x, n_resamples=5)[f"{P}ccc"] == pytest.approx(-1.0)


def test_average_ranks_equal_scipy_rankdata():
    rng = np.random.default_rng(1)
    values = np.round(rng.normal(size=(7, 50)), 1)  # many ties
    expected = np.stack([stats.rankdata(row) for row in values])
    np.testing.assert_array_equal(average_ranks(values), expected)


def test_report_keys_and_json_types():
    r = regression_report(*_t_scores(50), n_resamples=30)
    expected = {f"{P}n", f"{P}bootstrap_resamples"}
    expected |= {f"{P}{m}" for m in METRICS} | {f"{P}{m}_ci95" for m in METRICS}
    assert set(r) == expected
    assert r[f"{P}bootstrap_resamples"] == 30
    for m in METRICS:
        assert isinstance(r[f"{P}{m}"], float)
        assert isinstance(r[f"{P}{m}_ci95"], list) and len(r[f"{P}{m}_ci95"]) == 2
    custom = regression_report(*_t_scores(50), prefix="val/bmd_", n_resamples=5, confidence=0.9)
    assert "val/bmd_mae" in custom and "val/bmd_mae_ci90" in custom


def test_intervals_contain_the_point_estimate_and_shrink_with_n():
    small = regression_report(*_t_scores(80, seed=2), n_resamples=500)
    large = regression_report(*_t_scores(3000, seed=2), n_resamples=500)
    for m in METRICS:
        for r in (small, large):
            low, high = r[f"{P}{m}_ci95"]
            assert low <= r[f"{P}{m}"] <= high, m
        assert _width(large, m) < _width(small, m) / 3, m  # ~ sqrt(3000 / 80) ≈ 6 times narrower


def test_bootstrap_is_seeded():
    t, p = _t_scores(100)
    assert regression_report(t, p, n_resamples=50, seed=3) == regression_report(
        t, p, n_resamples=50, seed=3
    )
    assert regression_report(t, p, n_resamples=50, seed=3) != regression_report(
        t, p, n_resamples=50, seed=4
    )


def test_thousand_resamples_of_thousand_rows_are_fast():
    t, p = _t_scores(1000)
    regression_report(t[:20], p[:20], n_resamples=5)  # warm up imports
    start = time.perf_counter()
    regression_report(t, p, n_resamples=1000)
    assert time.perf_counter() - start < 1.5  # typically ~0.2 s; generous for a shared CPU


def test_undefined_values_are_none_never_nan_or_zero():
    r = regression_report([-1.0, -2.0, 0.5], [-1.5, -1.5, -1.5], n_resamples=50)
    for m in ("pearson_r", "spearman_rho"):
        assert r[f"{P}{m}"] is None and r[f"{P}{m}_ci95"] is None
    assert r[f"{P}ccc"] == 0.0  # a constant prediction has zero covariance: defined, 0
    assert r[f"{P}mae"] == pytest.approx(mean_absolute_error([-1, -2, 0.5], [-1.5] * 3))
    both = regression_report([0.1] * 4, [0.1] * 4, n_resamples=20)
    assert both[f"{P}ccc"] is None and both[f"{P}pearson_r"] is None
    one = regression_report([-2.0], [-1.0], n_resamples=20)
    assert one[f"{P}loa_low"] is None and one[f"{P}loa_high_ci95"] is None
    assert one[f"{P}bias"] == 1.0
    for value in [*r.values(), *both.values(), *one.values()]:
        flat = value if isinstance(value, list) else [value]
        assert not any(isinstance(v, float) and math.isnan(v) for v in flat)


def test_cluster_bootstrap_draws_an_images_rows_together():
    t, p = _t_scores(150, seed=5)
    rng = np.random.default_rng(0)
    rows_t = np.repeat(t, 3)  # each image predicted by three seeds
    rows_p = np.repeat(p, 3) + rng.normal(0, 0.05, 450)
    images = [f"img{i:03d}.png" for i in np.repeat(np.arange(150), 3)]
    clustered = regression_report(rows_t, rows_p, clusters=images, n_resamples=400)
    naive = regression_report(rows_t, rows_p, n_resamples=400)
    single = regression_report(t, p, n_resamples=400)
    assert clustered[f"{P}n"] == 450 and clustered[f"{P}n_clusters"] == 150
    assert clustered[f"{P}mae"] == naive[f"{P}mae"]  # the point estimate pools all rows
    # rows of one image are not independent: as wide as one row per image, not narrower
    assert _width(clustered, "mae") > 1.4 * _width(naive, "mae")
    assert _width(clustered, "mae") == pytest.approx(_width(single, "mae"), rel=0.3)
    # unequal cluster sizes take the per-resample path
    uneven = regression_report(rows_t[:-1], rows_p[:-1], clusters=images[:-1], n_resamples=50)
    assert uneven[f"{P}n_clusters"] == 150 and len(uneven[f"{P}mae_ci95"]) == 2


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"y_true": [1.0, 2.0], "y_pred": [1.0]}, "y_pred"),
        ({"y_true": [], "y_pred": []}, "y_true"),
        ({"y_true": [1.0, np.nan], "y_pred": [1.0, 2.0]}, "y_true"),
        ({"y_true": [1.0, 2.0], "y_pred": [1.0, np.inf]}, "y_pred"),
        ({"y_true": [[1.0, 2.0]], "y_pred": [[1.0, 2.0]]}, "y_true"),
        ({"y_true": ["a", "b"], "y_pred": [1.0, 2.0]}, "y_true"),
        ({"n_resamples": 0}, "n_resamples"),
        ({"n_resamples": 10.0}, "n_resamples"),
        ({"confidence": 1.5}, "confidence"),
        ({"clusters": ["a", "b"]}, "clusters"),
    ],
)
def test_bad_report_inputs_raise_config_error_naming_the_argument(kwargs, argument):
    args = {"y_true": [-1.0, -2.0, 0.0], "y_pred": [-1.2, -1.8, 0.3], "n_resamples": 10}
    with pytest.raises(ConfigError, match=f"`{argument}`"):
        regression_report(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("t", "expected"),
    [(-2.5, 2), (-2.50001, 2), (-5.0, 2), (-2.49999, 1), (-1.00001, 1), (-1.0, 0), (0.0, 0)],
)
def test_who_category_boundaries(t, expected):
    assert who_category([t]).tolist() == [expected]


def test_who_category_agrees_with_the_phantom_labels_and_keeps_shape():
    grid = np.round(np.arange(-5.0, 3.0, 0.01), 2)
    np.testing.assert_array_equal(who_category(grid), [who_class(float(t)) for t in grid])
    assert who_category(np.full((2, 3), -3.0)).shape == (2, 3)
    assert who_category([-2.0, -0.5], cutoffs=(-3.0, -1.0)).tolist() == [1, 0]


@pytest.mark.parametrize("cutoffs", [(-1.0, -2.5), (-1.0, -1.0), (np.nan, -1.0), (-2.5,), None])
def test_who_category_rejects_bad_cutoffs(cutoffs):
    with pytest.raises(ConfigError, match="`cutoffs`"):
        who_category([-1.0], cutoffs=cutoffs)
    with pytest.raises(ConfigError, match="`t_scores`"):
        who_category([-1.0, np.nan])


def test_who_one_hot_feeds_the_classification_report():
    t, p = _t_scores(120)
    truth, pred = who_category(t), who_category(p)
    probs = who_one_hot(pred)
    assert probs.shape == (120, 3) and (probs.sum(1) == 1).all()
    report = evaluation_report(
        truth, probs, ["normal", "osteopenia", "osteoporosis"], n_resamples=20
    )
    assert report["test/acc"] == pytest.approx((truth == pred).mean())
    for bad in ([0, 3], [0.0, 1.0], [[0, 1]]):
        with pytest.raises(ConfigError, match="`indices`"):
            who_one_hot(np.array(bad))


@pytest.mark.parametrize(
    ("n", "coverage"), [(9, 0.9), (10, 0.9), (99, 0.9), (2000, 0.8), (4, 0.8), (13, 0.7)]
)
def test_conformal_quantile_is_the_textbook_order_statistic(n, coverage):
    rng = np.random.default_rng(n)
    y, yhat = rng.normal(size=n), rng.normal(size=n)
    k = math.ceil(round((n + 1) * coverage, 9))  # (n + 1) * coverage is exactly 9, 8, 9.8 ...
    assert conformal_rank(n, coverage) == k
    conformal = SplitConformal.fit(y, yhat, coverage)
    assert conformal.quantile == np.sort(np.abs(y - yhat))[k - 1]
    assert conformal.n_calibration == n and conformal.coverage == coverage
    low, high = conformal.interval(np.array([0.0, 1.0]))
    np.testing.assert_allclose(high - low, 2 * conformal.quantile)


def test_conformal_matches_crepes_away_from_rounding_boundaries():
    crepes = pytest.importorskip("crepes")
    rng = np.random.default_rng(0)
    y, yhat = rng.normal(size=2000), rng.normal(size=2000)
    for coverage in (0.8, 0.9, 0.95):
        ours = SplitConformal.fit(y, yhat, coverage).interval(np.array([0.5]))
        theirs = (
            crepes.ConformalRegressor()
            .fit(y - yhat)
            .predict_int(np.array([0.5]), confidence=coverage)
        )
        np.testing.assert_allclose(np.column_stack(ours), theirs)


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_conformal_coverage_on_a_synthetic_regression(coverage):
    achieved = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x_cal, x_test = rng.uniform(-3, 3, 2000), rng.uniform(-3, 3, 5000)
        y_cal, y_test = x_cal + rng.normal(size=2000), x_test + rng.normal(size=5000)
        conformal = SplitConformal.fit(y_cal, x_cal, coverage)  # the predictor is y_hat = x
        achieved.append(empirical_coverage(y_test, *conformal.interval(x_test)))
        assert abs(achieved[-1] - coverage) < 0.03, (seed, achieved[-1])
    assert abs(np.mean(achieved) - coverage) < 0.015


def test_conformal_rejects_too_few_points_and_bad_coverage():
    SplitConformal.fit(np.zeros(9), np.ones(9), 0.9)  # n = 9 = 0.9 / 0.1: just enough
    with pytest.raises(ConfigError, match="at least 9 calibration points.*got 8"):
        SplitConformal.fit(np.zeros(8), np.ones(8), 0.9)
    with pytest.raises(ConfigError, match="at least 4 calibration points"):
        SplitConformal.fit(np.zeros(3), np.ones(3), 0.8)
    for bad in (0.0, 1.0, 1.2, True, "0.9"):
        with pytest.raises(ConfigError, match="`coverage`"):
            SplitConformal.fit(np.zeros(50), np.ones(50), bad)
    with pytest.raises(ConfigError, match="`y_pred`"):
        SplitConformal.fit(np.zeros(50), np.ones(49), 0.9)


def test_conformal_round_trips_through_a_checkpoint_dict():
    conformal = SplitConformal.fit(*_t_scores(100), coverage=0.9)
    state = dataclasses.asdict(conformal)
    assert all(type(v) in (float, int) for v in state.values())
    assert SplitConformal(**state) == conformal
    with pytest.raises(ConfigError, match="`quantile`"):
        SplitConformal(**{**state, "quantile": float("nan")})


def test_empirical_coverage_counts_closed_intervals():
    assert empirical_coverage([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0] * 4) == 0.5
    with pytest.raises(ConfigError, match="equal length"):
        empirical_coverage([0.0, 1.0], [0.0], [1.0])


def test_target_scaler_equals_standard_scaler_and_round_trips():
    t, _ = _t_scores(300)
    scaler = TargetScaler.fit(t, name="t_score")
    reference = StandardScaler().fit(t[:, None])
    assert scaler.mean == pytest.approx(reference.mean_[0], rel=1e-12)
    assert scaler.std == pytest.approx(reference.scale_[0], rel=1e-12)
    np.testing.assert_allclose(scaler.transform(t), reference.transform(t[:, None])[:, 0])
    np.testing.assert_allclose(scaler.inverse(scaler.transform(t)), t)
    tensor = scaler.transform(torch.tensor(t, dtype=torch.float32))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    state = dataclasses.asdict(scaler)
    assert state == {"name": "t_score", "mean": scaler.mean, "std": scaler.std}
    assert type(state["mean"]) is float and TargetScaler(**state) == scaler


def test_target_scaler_rejects_a_constant_or_broken_column():
    with pytest.raises(ConfigError, match="target column `bmd` to vary"):
        TargetScaler.fit([0.1, 0.1, 0.1], name="bmd")
    with pytest.raises(ConfigError, match="target column `bmd`"):
        TargetScaler.fit([0.9, np.nan], name="bmd")
    with pytest.raises(ConfigError, match="target column `bmd`"):
        TargetScaler.fit([], name="bmd")
    with pytest.raises(ConfigError, match="`bmd`"):
        TargetScaler(name="bmd", mean=1.0, std=0.0)


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_write_regression_figures_writes_valid_pngs(tmp_path):
    t, p = _t_scores(80)
    before = plt.get_fignums()
    low, high = SplitConformal.fit(t, p, 0.9).interval(p)
    paths = write_regression_figures(t, p, tmp_path / "fig", lower=low, upper=high)
    assert set(paths) == {"predicted_vs_true", "bland_altman"}
    for name, path in paths.items():
        assert path == tmp_path / "fig" / f"{name}.png"
        _assert_png(path)
    assert sorted(f.name for f in (tmp_path / "fig").iterdir()) == [
        "bland_altman.png",
        "predicted_vs_true.png",
    ]  # no temporary files left behind
    single = write_regression_figures([-2.0], [-1.5], tmp_path / "one", name="bmd")
    for path in single.values():
        _assert_png(path)
    assert plt.get_fignums() == before


def test_regression_figures_reject_bad_intervals(tmp_path):
    t, p = _t_scores(20)
    with pytest.raises(ConfigError, match="`lower` and `upper` to be given together"):
        write_regression_figures(t, p, tmp_path, lower=p - 1)
    with pytest.raises(ConfigError, match="`lower` and `upper` of shape"):
        write_regression_figures(t, p, tmp_path, lower=p[:5] - 1, upper=p[:5] + 1)
    with pytest.raises(ConfigError, match="`y_pred`"):
        write_regression_figures(t, p[:5], tmp_path)
