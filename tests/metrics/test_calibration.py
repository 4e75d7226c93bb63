import numpy as np
import pytest
from scipy.special import softmax

from osteolightning.errors import ConfigError
from osteolightning.metrics.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    probs_to_logits,
    reliability_bins,
)


def _overconfident(n=4000, true_t=2.5, seed=0):
    """Labels drawn from softmax(z); the model reports z * true_t (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 1.5
    labels = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])
    return z * true_t, labels


def test_fit_recovers_the_temperature_and_lowers_nll_and_ece():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.1)
    calibrated = apply_temperature(logits, t)
    raw = softmax(logits, axis=1)
    assert nll(logits, labels, t) < nll(logits, labels)
    assert expected_calibration_error(labels, calibrated) < expected_calibration_error(labels, raw)
    assert (calibrated.argmax(1) == raw.argmax(1)).all()  # predictions unchanged


def test_log_probs_give_the_same_temperature_as_logits():
    logits, labels = _overconfident(n=1000)
    from_probs = fit_temperature(probs_to_logits(softmax(logits, axis=1)), labels)
    assert from_probs == pytest.approx(fit_temperature(logits, labels), rel=1e-3)


def test_temperature_stays_in_bounds():
    logits = np.array([[0.0, 1e-3], [1e-3, 0.0]])  # perfect but timid: T wants to go to 0
    assert 0.05 <= fit_temperature(logits, np.array([1, 0])) <= 0.06


def test_reliability_bins_count_every_sample():
    logits, labels = _overconfident(n=300)
    bins = reliability_bins(labels, softmax(logits, axis=1))
    assert bins["count"].sum() == 300 and len(bins["edges"]) == 16


def test_bad_input_raises():
    with pytest.raises(ConfigError, match="Expected non-empty logits"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ConfigError, match="Expected labels in"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
