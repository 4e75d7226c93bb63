import numpy as np
import pytest

from osteolightning.errors import ConfigError
from osteolightning.metrics.report import percentile_interval
from osteolightning.metrics.saliency import (
    border_band,
    saliency_shares,
    shortcut_report,
    top_saliency,
)


def test_border_band_is_the_outer_ring_of_the_shorter_sides_fraction():
    band = border_band((20, 40), 0.1)  # 2 px of the 20-px side, on all four edges
    assert band.sum() == 20 * 40 - 16 * 36
    assert band[2:-2, 2:-2].sum() == 0 and band[0].all() and band[:, -1].all()
    with pytest.raises(ConfigError, match=r"saliency\.border_fraction.*0\.6"):
        border_band((20, 40), 0.6)


def test_shares_are_the_maps_mass_inside_the_region():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8))
    maps[2] = 0  # no evidence at all: no share
    region = np.zeros((8, 8))
    region[:2] = 1
    shares = saliency_shares(maps, region)
    assert shares[:2] == pytest.approx([m[:2].sum() / m.sum() for m in maps[:2]])
    assert np.isnan(shares[2])


def test_top_saliency_keeps_the_peaks_and_their_mass():
    m = np.arange(100, dtype=float).reshape(1, 10, 10)
    top = top_saliency(m, 0.1)
    assert (top > 0).sum() == 10 and top.max() == 99 and top[top > 0].min() == 90
    assert np.array_equal(top_saliency(m, 1.0), m)
    with pytest.raises(ConfigError, match="top_fraction"):
        top_saliency(m, 0)


def test_report_means_intervals_and_the_flag():
    rng = np.random.default_rng(1)
    border = rng.uniform(0.6, 0.9, 40)
    border[3] = np.nan
    report = shortcut_report(border, np.full(40, 0.36), rng.uniform(0, 0.2, 40), np.full(40, 0.3),
                             max_border_share=0.5, n_resamples=500, seed=0)  # fmt: skip
    finite = border[np.isfinite(border)]
    assert report["test/saliency_border_share"] == pytest.approx(finite.mean())
    low, high = report["test/saliency_border_share_ci95"]
    assert low < finite.mean() < high
    # the same percentile bootstrap as the rest of the report
    idx = np.random.default_rng(0).integers(0, len(finite), size=(500, len(finite)))
    assert [low, high] == pytest.approx(percentile_interval(finite[idx].mean(axis=1)))
    assert report["test/saliency_n"] == 39 and report["test/saliency_n_images"] == 40
    assert report["test/saliency_shortcut_warning"] is True
    calm = shortcut_report(np.full(5, 0.3), np.full(5, 0.36), max_border_share=0.5)
    assert calm["test/saliency_shortcut_warning"] is False
    assert calm["test/saliency_bone_share"] is None
    with pytest.raises(ConfigError, match="max_border_share"):
        shortcut_report(border, border, max_border_share=1.5)
